"""One Connect stream as the agent writes it: its outgoing queue, report ids, what the server
said in its welcome, and the byte budget every request must fit.

A request larger than the server's receive limit would end the stream, and the agent would send
it again after every reconnect: so reports are measured before they are queued (the connection
replaces a result that does not fit, see runner.result_too_large), and requests waiting together
go in batches that each fit the budget.
"""

from __future__ import annotations

import asyncio
import logging

import grpc.aio

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent.runner import AttemptKey
from cpa_client.agent_stream import batches

logger = logging.getLogger(__name__)

# Used when a Welcome carries no heartbeat interval.
DEFAULT_HEARTBEAT_INTERVAL_S = 10.0
# What the report id adds to a report: the field's one-byte tag and a varint of at most 10 bytes.
_REPORT_ID_BYTES = 11

ConnectCall = grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse]


def _batch(requests: list[pb.ConnectRequest]) -> pb.ConnectRequest:
    return pb.ConnectRequest(batch=pb.RequestBatch(requests=requests))


class StreamSession:
    """One stream: its outgoing queue, its report ids and what the server said on it.

    `default_report_bytes` is the budget of a request while the welcome names none (before it
    arrives, or from a server older than Welcome.max_report_bytes).
    """

    def __init__(self, *, default_report_bytes: int) -> None:
        # None ends the request stream (half-close).
        self.outgoing: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self.welcome: pb.Welcome | None = None
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        # While no attempt runs (Welcome.idle_heartbeat_interval); never below the other.
        self.idle_heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        self.last_received_s = 0.0
        self.server_drain: pb.ServerDrain | None = None
        # Results sent on this stream and not yet acked, by report id.
        self.pending_results: dict[int, AttemptKey] = {}
        self._last_report_id = 0
        self._default_report_bytes = default_report_bytes

    @property
    def max_report_bytes(self) -> int:
        """Largest request the server takes on this stream (a report, a batch)."""
        if self.welcome is not None and self.welcome.max_report_bytes > 0:
            return self.welcome.max_report_bytes
        return self._default_report_bytes

    @staticmethod
    def report_size(request: pb.ConnectRequest) -> int:
        """Encoded size of a report (a request without its report id yet) once it carries one."""
        return request.ByteSize() + _REPORT_ID_BYTES

    def send(self, request: pb.ConnectRequest) -> None:
        self.outgoing.put_nowait(request)

    def send_report(self, request: pb.ConnectRequest) -> int:
        """Sends a progress or result with the next report id of this stream; returns the id.
        The caller has checked its size (report_size) against max_report_bytes."""
        self._last_report_id += 1
        request.report_id = self._last_report_id
        self.send(request)
        return self._last_report_id

    def close_requests(self) -> None:
        self.outgoing.put_nowait(None)

    def _batch_bytes(self) -> int:
        """The budget of a batch; 0 until the welcome says the server reads batches."""
        if self.welcome is None or not self.welcome.accepts_batches:
            return 0
        return self.max_report_bytes

    async def write_loop(self, call: ConnectCall) -> None:
        """The stream's only writer, so concurrent senders never interleave; None half-closes.
        Requests that wait together go as RequestBatches within the budget once the welcome
        says the server reads batches (a busy agent: one gRPC message per result costs more
        than the result)."""
        # Not gRPC's request-iterator style: its consumer task outlives a call the server ended.
        try:
            async for request in batches(self.outgoing, batch_bytes=self._batch_bytes, wrap=_batch):
                await call.write(request)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            # The reader sees the same end of the call and reports it.
            logger.debug("stream writer stopped: %s", error)
