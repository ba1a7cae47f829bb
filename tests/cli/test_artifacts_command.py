"""`cpa artifacts list` and `cpa artifacts get` against the shared server, on artifacts a
hand-driven agent stream uploaded through the real UploadArtifact call."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import grpc
import pytest

from cpa.common.v1 import artifact_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_event_pb2, job_pb2
from cpa_cli.main import main
from cpa_cli.output import event_text
from cpa_client import SchedulerClient
from tests.e2e.raw_agent import RawAgentStream

PDF = b"%PDF-1.7 the report"
SHOT_A, SHOT_B = b"\x89PNG page of a", b"\x89PNG page of b"


def cpa(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


async def _job_with_artifacts(address: str) -> str:
    """A job of two tasks, both run by a raw agent stream that uploads page.png from each and
    report.pdf from task a, then reports both succeeded."""
    action = f"artifacts-{uuid.uuid4().hex[:8]}"  # no other agent of the server takes it
    stream = RawAgentStream(address)
    try:
        welcome = await stream.hello(action, actions=(action,), slots=2)
        stream.send(ex.ConnectRequest(credit=ex.Credit(slots=2)))
        todos = [
            todo_pb2.ToDo(id=task_id, action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action=action)
            for task_id in ("a", "b")
        ]
        channel = grpc.aio.insecure_channel(address)
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        async with SchedulerClient(address) as client:
            job_id = (
                await client.schedule_job(job_pb2.JobSpec(todos=job_pb2.TodoList(todos=todos)))
            ).job.job_id
            for _ in range(2):
                await stream.read_until("assignment")
            for task_id, name, data in (
                ("a", "page.png", SHOT_A),
                ("b", "page.png", SHOT_B),
                ("a", "report.pdf", PDF),
            ):
                header = ex.UploadArtifactHeader(
                    job_id=job_id,
                    task_id=task_id,
                    attempt=1,
                    session_id=welcome.session_id,
                    name=name,
                    media_type="application/octet-stream",
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
                await stub.UploadArtifact(
                    iter(
                        [
                            ex.UploadArtifactRequest(header=header),
                            ex.UploadArtifactRequest(chunk=data),
                        ]
                    )
                )
            for report_id, task_id in enumerate(("a", "b"), start=1):
                result = ex.Result(job_id=job_id, task_id=task_id, attempt=1)
                result.outputs.update({})
                stream.send(ex.ConnectRequest(report_id=report_id, result=result))
            async for event in client.watch_job(job_id):
                if event.terminal:
                    break
        await channel.close(grace=None)
    finally:
        await stream.close()
    return job_id


def test_list_and_get_with_a_task_qualifier_when_two_tasks_share_a_name(
    capsys: pytest.CaptureFixture[str], server_address: str, tmp_path: Path
) -> None:
    job_id = asyncio.run(_job_with_artifacts(server_address))

    code, out, err = cpa(capsys, "artifacts", "list", job_id)
    assert (code, err) == (0, "")
    assert out[0].split() == ["TASK", "ATTEMPT", "NAME", "TYPE", "SIZE", "SHA256"]
    assert [line.split()[:3] for line in out[1:]] == [
        ["a", "1", "page.png"],
        ["a", "1", "report.pdf"],
        ["b", "1", "page.png"],
    ]

    target = tmp_path / "report.pdf"
    code, out, err = cpa(capsys, "artifacts", "get", job_id, "report.pdf", "-o", str(target))
    assert (code, err) == (0, "")
    assert target.read_bytes() == PDF
    assert out == [
        f"{target}: report.pdf from task a attempt 1, {len(PDF)} bytes, "
        f"sha256 {hashlib.sha256(PDF).hexdigest()}"
    ]

    # Two tasks stored page.png: the bare name is refused, naming them; TASK/NAME picks one.
    code, out, err = cpa(capsys, "artifacts", "get", job_id, "page.png", "-o", str(tmp_path / "x"))
    assert code == 2
    assert "stored by tasks a, b; name one as TASK/NAME (e.g. a/page.png)" in err
    assert not (tmp_path / "x").exists()
    code, out, err = cpa(
        capsys, "artifacts", "get", job_id, "b/page.png", "-o", str(tmp_path / "b.png")
    )
    assert (code, err) == (0, "")
    assert (tmp_path / "b.png").read_bytes() == SHOT_B

    code, out, err = cpa(capsys, "artifacts", "get", job_id, "nothing.txt")
    assert code == 2
    assert "no artifact 'nothing.txt' (the job has: a/page.png, a/report.pdf, b/page.png)" in err

    code, out, err = cpa(capsys, "artifacts", "list", "0" * 32)
    assert code == 2
    assert err.startswith("cpa: NOT_FOUND: JOB_NOT_FOUND:")


def test_watch_prints_each_stored_artifact_as_a_line(
    capsys: pytest.CaptureFixture[str], server_address: str
) -> None:
    job_id = asyncio.run(_job_with_artifacts(server_address))

    code, out, err = cpa(capsys, "watch", job_id)

    assert (code, err) == (0, "")
    stored = [line.split(None, 2)[2] for line in out if " artifact " in line]
    assert stored == [
        f"a     artifact page.png (application/octet-stream, {len(SHOT_A)} B)  attempt 1",
        f"b     artifact page.png (application/octet-stream, {len(SHOT_B)} B)  attempt 1",
        f"a     artifact report.pdf (application/octet-stream, {len(PDF)} B)  attempt 1",
    ], out
    assert not any("task_artifact_stored" in line for line in out)


def test_artifact_and_session_restart_events_read_as_sentences() -> None:
    event = job_event_pb2.JobEvent(
        task_artifact_stored=job_event_pb2.TaskArtifactStored(
            task_id="download",
            attempt=2,
            artifact=artifact_pb2.Artifact(
                name="invoice.pdf", media_type="application/pdf", size_bytes=3 * 1024 * 1024
            ),
        )
    )
    assert event_text(event) == (
        "download",
        "artifact invoice.pdf (application/pdf, 3.0 MiB)  attempt 2",
    )
    restart = job_event_pb2.JobEvent(
        session_restarted=job_event_pb2.SessionRestarted(
            session="browser",
            reason="agent 'a' stopped renewing the lease",
            from_agent="a",
            task_ids=["login", "download"],
        )
    )
    assert event_text(restart) == (
        "job",
        "session browser restarts: login, download run again (was on a): "
        "agent 'a' stopped renewing the lease",
    )
