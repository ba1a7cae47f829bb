"""Every `cpa` command that calls the scheduler reports a failed call (code, reason, message) on
stderr and exits 2: also when the answer cannot be decoded, which grpc.aio hands over as a call
that "succeeded" with no message (`cpa jobs list` used to die with an AttributeError on it).

The scheduler here is a stand-in speaking the real wire protocol, so it can give answers the
real one does not: undecodable bytes, or a bare status without details."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa_cli.main import main

SERVICE = "cpa.scheduler.v1.SchedulerService"
UNARY = (
    "ScheduleJob",
    "BatchScheduleJobs",
    "GetJob",
    "ListJobs",
    "CancelJob",
    "RetryJob",
    "RetryJobs",
)
# Field 1 (length-delimited) claiming 100 bytes that are not there: no message decodes it.
GARBAGE = b"\x0a\x64"


def _identity(data: bytes) -> bytes:
    return data


def _serve(unary: Callable[[bytes, grpc.ServicerContext], bytes]) -> Iterator[str]:
    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield unary(request, context)

    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity
        )
        for name in UNARY
    }
    handlers["WatchJob"] = grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=_identity, response_serializer=_identity
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def garbage_server() -> Iterator[str]:
    yield from _serve(lambda request, context: GARBAGE)


@pytest.fixture
def bare_error_server() -> Iterator[str]:
    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.DATA_LOSS, "disk on fire")

    yield from _serve(fail)


def _commands(tmp_path: Path) -> list[tuple[str, ...]]:
    todos = tmp_path / "todos.yaml"
    todos.write_text("- id: a\n  action: echo\n", encoding="utf-8")
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"spec": {"text": "x"}}\n', encoding="utf-8")
    return [
        ("jobs", "list"),
        ("jobs", "list", "--json"),
        ("jobs", "get", "j1"),
        ("jobs", "cancel", "j1"),
        ("jobs", "retry", "j1"),
        ("jobs", "retry", "--filter", "state = FAILED"),
        ("watch", "j1"),
        ("submit", "--todos", str(todos)),
        ("submit", "--todos", str(todos), "--watch"),
        ("submit", "--batch", str(batch)),
    ]


def _run(capsys: pytest.CaptureFixture[str], args: tuple[str, ...], server: str) -> Any:
    code = main([*args, "--server", server])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_undecodable_answer_is_reported_by_every_command(
    capsys: pytest.CaptureFixture[str], garbage_server: str, tmp_path: Path
) -> None:
    for args in _commands(tmp_path):
        code, out, err = _run(capsys, args, garbage_server)
        assert code == 2, (args, err)
        assert out == "", args
        assert err.startswith(
            "cpa: INTERNAL: UNDECODABLE_RESPONSE: the scheduler's answer could not be decoded"
        ), (args, err)
        assert "Traceback" not in err


def test_a_status_without_details_is_reported_by_every_command(
    capsys: pytest.CaptureFixture[str], bare_error_server: str, tmp_path: Path
) -> None:
    for args in _commands(tmp_path):
        code, out, err = _run(capsys, args, bare_error_server)
        assert (code, out) == (2, ""), (args, err)
        assert err == "cpa: DATA_LOSS: disk on fire\n", args
