"""`cpa callbacks` as processes: a receiver that is down longer than the retry budget leaves a
dead-lettered delivery that `cpa callbacks list --state dead` shows, and `cpa callbacks retry
--all-dead` re-drives it once the receiver is up; the receiver then gets it, signed, under the
same delivery id."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import callback_pb2, job_pb2
from cpa_client import SchedulerClient
from cpa_scheduler.callbacks.keys import SECRET_FILE
from tests.fixtures.webhook import LOOPBACK_NETWORKS, WebhookReceiver, free_port, receiver_tls

from .conftest import CONNECTED, SERVING, START_TIMEOUT_S, CliProcess, StartCli

WAIT_S = 30.0


async def _output(process: CliProcess) -> tuple[int, list[str]]:
    lines = await asyncio.to_thread(process.rest_of_output, WAIT_S)
    return await asyncio.to_thread(process.exit_code, WAIT_S), lines


async def _dead(client: SchedulerClient, count: int) -> list[callback_pb2.Callback]:
    async with asyncio.timeout(WAIT_S):  # polls the listing until the retries are spent
        while True:
            dead = [d async for d in client.list_callbacks(state=callback_pb2.CALLBACK_STATE_DEAD)]
            if len(dead) >= count:
                return dead
            await asyncio.sleep(0.05)


async def test_a_dead_letter_is_listed_and_re_driven_once_the_receiver_is_up(
    start_cli: StartCli, tmp_path: Path
) -> None:
    tls = receiver_tls(tmp_path / "tls")
    port = free_port()  # nobody listens here yet: the receiver is down
    server = start_cli(
        *("serve", "--listen", "127.0.0.1:0", "--data-dir", "data", "--with-agent"),
        env={
            "CPA_AGENT_EXECUTORS": "builtin",
            "CPA_CALLBACK_CA_FILE": str(tls.ca_file),
            "CPA_CALLBACK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
            "CPA_CALLBACK_MAX_ATTEMPTS": "3",
            "CPA_CALLBACK_BACKOFF_INITIAL_S": "0.05",
            "CPA_CALLBACK_BACKOFF_MAX_S": "0.1",
            "CPA_CALLBACK_POLL_INTERVAL_S": "0.05",
        },
    )
    address = (await asyncio.to_thread(server.wait_for_line, SERVING, START_TIMEOUT_S))["address"]
    await asyncio.to_thread(server.wait_for_line, CONNECTED, START_TIMEOUT_S)
    noop = todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="noop")
    spec = job_pb2.JobSpec(
        todos=job_pb2.TodoList(todos=[noop]), callback_url=f"https://localhost:{port}/hook"
    )
    async with SchedulerClient(address) as client:
        job_id = (await client.schedule_job(spec)).job.job_id
        dead = await _dead(client, 2)  # the inform of RUNNING, then the done
        assert {(d.job_id, d.attempts) for d in dead} == {(job_id, 3)}
        assert all("ClientConnectorError" in d.last_error for d in dead), dead

        listing = start_cli("callbacks", "list", "--state", "dead", "--server", address)
        code, lines = await _output(listing)
        assert code == 0, listing.report()
        shown = {line.split()[0]: line for line in lines[1:]}
        assert set(shown) == {d.delivery_id for d in dead}
        assert all(
            re.search(rf"{job_id} +(inform|done) +DEAD +3 ", line) for line in shown.values()
        )

        receiver = WebhookReceiver(tls=tls, port=port)
        receiver.secret = (tmp_path / "data" / SECRET_FILE).read_text().strip().encode()
        await receiver.start()
        try:
            retry = start_cli("callbacks", "retry", "--all-dead", "--server", address)
            code, lines = await _output(retry)
            assert (code, lines[0]) == (0, "re-driven: 2"), retry.report()
            await receiver.wait_for(lambda got: len(got) == 2, WAIT_S)
            assert [r.headers["cpa-event-type"] for r in receiver.received] == ["inform", "done"]
            assert {r.delivery_id for r in receiver.received} == {d.delivery_id for d in dead}
            assert all(r.verified and r.headers["cpa-attempt"] == "1" for r in receiver.received)
        finally:
            await receiver.stop()
        delivered = [d async for d in client.list_callbacks(job_id=job_id)]
        assert {d.state for d in delivered} == {callback_pb2.CALLBACK_STATE_DELIVERED}

        again = start_cli("callbacks", "retry", dead[0].delivery_id, "--server", address)
        code, _ = await _output(again)
        assert code != 0, again.report()
        assert "CALLBACK_NOT_DEAD" in again.stderr(), again.report()
