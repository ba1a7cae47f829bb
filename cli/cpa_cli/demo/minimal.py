"""`cpa demo --minimal`: submit → dispatch → result on the embedded scheduler and one local agent.

Everything runs in this process: a scheduler on 127.0.0.1 (a free port) with a temporary store,
one agent with the built-in actions, and a client that submits a portal-style job with two
parallel branches and a join, follows its events live and prints where every task ended. No
browser, no mail: it needs nothing but this package.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from ..common import CliError, emit
from ..embedded import LocalStack
from ..jobs_command import exit_code_of
from ..live import follow
from ..output import render_job, render_outcome

DEMO_AGENT_ID = "demo-agent"
DEMO_LABELS = {"example": "portal-invoice"}


def _todo(
    task_id: str, action: str, description: str, after: tuple[str, ...] = (), **params: Any
) -> todo_pb2.ToDo:
    return todo_pb2.ToDo(
        id=task_id,
        action=todo_pb2.ACTION_TYPE_CUSTOM,
        custom_action=action,
        description=description,
        depends_on=after,
        params=_struct(params),
    )


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def demo_todos() -> list[todo_pb2.ToDo]:
    """Open the portal; fetch invoice and contract side by side, each filed by an echo; merge
    both into one PDF; notify accounts payable. The `wait` steps stand in for slow downloads."""
    return [
        _todo(
            "open_portal",
            "echo",
            "Open the supplier portal",
            url="https://portal.example.com",
        ),
        _todo("fetch_invoice", "wait", "Download invoice 42", ("open_portal",), seconds=0.3),
        _todo("fetch_contract", "wait", "Download contract 7", ("open_portal",), seconds=0.3),
        _todo(
            "file_invoice",
            "echo",
            "File invoice 42",
            ("fetch_invoice",),
            document="invoice 42",
            file="invoice-42.pdf",
        ),
        _todo(
            "file_contract",
            "echo",
            "File contract 7",
            ("fetch_contract",),
            document="contract 7",
            file="contract-7.pdf",
        ),
        _todo(
            "merge",
            "echo",
            "Merge invoice and contract into one PDF",
            ("file_invoice", "file_contract"),
            file="invoice-42+contract-7.pdf",
            pages=3,
        ),
        _todo(
            "notify",
            "echo",
            "Mail the merged PDF to ap@example.com",
            ("merge",),
            to="ap@example.com",
            subject="Invoice 42 with contract 7",
        ),
    ]


def run_minimal(*, timeout_s: float, keep_data: bool) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="cpa-demo-"))
    try:
        return asyncio.run(_demo(data_dir, timeout_s=timeout_s))
    finally:
        if keep_data:
            emit(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _demo(data_dir: Path, *, timeout_s: float) -> int:
    settings = Settings(
        # The demo's own throwaway server on loopback: authentication off (docs/SECURITY.md).
        data_dir=data_dir,
        listen_address="127.0.0.1:0",
        insecure_local=True,
    )
    stack = LocalStack(
        settings, agent={"agent_id": DEMO_AGENT_ID, "name": "demo agent", "slots": 4}
    )
    try:
        address = await stack.start()
        emit(f"scheduler  serving on {address} (store {data_dir / 'cpa.sqlite3'})")
        try:
            await asyncio.wait_for(stack.agent_connected(), timeout_s)
        except TimeoutError:
            raise CliError(f"demo: the local agent did not connect within {timeout_s:g}s") from None
        emit(f"agent      {DEMO_AGENT_ID} connected (actions: noop, echo, wait, fail)")
        async with SchedulerClient(address) as client:
            spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=demo_todos()), labels=DEMO_LABELS)
            job = (await client.schedule_job(spec, request_id="cpa-demo")).job
            emit(f"job        {job.job_id} submitted with {len(job.tasks)} tasks")
            emit()
            try:
                job = await asyncio.wait_for(follow(client, job), timeout_s)
            except TimeoutError:
                job = await client.get_job(job.job_id)
                emit(f"the job did not end within {timeout_s:g}s")
            emit()
            for line in render_job(job):
                emit(line)
            emit()
            emit(render_outcome(job))
            return exit_code_of(job)
    finally:
        await stack.stop(grace_s=1.0)
