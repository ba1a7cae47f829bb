"""Page tokens over real sockets: forged, altered, borrowed (another tenant's) and cross-list tokens
are refused with INVALID_ARGUMENT / INVALID_PAGE_TOKEN; the server's own tokens page as before."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import grpc
import pytest

from cpa.scheduler.v1 import scheduler_service_pb2 as pb
from cpa.scheduler.v1 import scheduler_service_pb2_grpc
from cpa_client import CpaError

from .conftest import Agents, Scheduler, todo, todos_spec

TENANT_A = (("x-cpa-tenant", "tenant-a"),)
TENANT_B = (("x-cpa-tenant", "tenant-b"),)


def _payload(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


def _token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forged(payload: dict[str, Any], secret: bytes) -> str:
    """`payload` signed as the server signs, but with a secret the server does not have."""
    body = {key: value for key, value in payload.items() if key != "m"}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return _token({**body, "m": hmac.new(secret, raw, hashlib.sha256).hexdigest()[:32]})


async def _refusal(call: Any, request: Any, metadata: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=metadata)
    error = CpaError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert [v.field for v in error.field_violations] == ["page_token"]
    return error.message


@pytest.fixture
async def stub(scheduler: Scheduler) -> Any:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        yield scheduler_service_pb2_grpc.SchedulerServiceStub(channel)


async def _jobs_token(stub: Any) -> str:
    for _ in range(3):
        await stub.ScheduleJob(
            pb.ScheduleJobRequest(spec=todos_spec(todo("a", "noop"))), metadata=TENANT_A
        )
    first = await stub.ListJobs(pb.ListJobsRequest(page_size=1), metadata=TENANT_A)
    assert first.next_page_token
    return str(first.next_page_token)


async def test_the_servers_own_tokens_page_through_every_job(stub: Any) -> None:
    token = await _jobs_token(stub)
    second = await stub.ListJobs(
        pb.ListJobsRequest(page_size=1, page_token=token), metadata=TENANT_A
    )
    third = await stub.ListJobs(
        pb.ListJobsRequest(page_size=1, page_token=second.next_page_token), metadata=TENANT_A
    )
    assert len({j.job_id for j in (*second.jobs, *third.jobs)}) == 2
    assert not third.next_page_token


async def test_a_token_of_another_tenant_is_refused(stub: Any) -> None:
    token = await _jobs_token(stub)
    message = await _refusal(stub.ListJobs, pb.ListJobsRequest(page_token=token), TENANT_B)
    assert "issued to another tenant" in message


@pytest.mark.parametrize("change", [{"id": "0" * 32}, {"t": 0}, {"n": "0" * 16}, {"k": "agents"}])
async def test_an_altered_token_is_refused(stub: Any, change: dict[str, Any]) -> None:
    token = await _jobs_token(stub)
    altered = _token({**_payload(token), **change})
    message = await _refusal(stub.ListJobs, pb.ListJobsRequest(page_token=altered), TENANT_A)
    assert "signature mismatch" in message


async def test_a_forged_token_is_refused(stub: Any) -> None:
    token = await _jobs_token(stub)
    # The whole format is known; only the server's secret is not.
    forged = _forged({**_payload(token), "id": "f" * 32}, b"a guess at the secret key")
    message = await _refusal(stub.ListJobs, pb.ListJobsRequest(page_token=forged), TENANT_A)
    assert "signature mismatch" in message


async def test_each_list_refuses_the_other_lists_token(stub: Any, agents: Agents) -> None:
    for agent_id in ("agent-1", "agent-2", "agent-3"):
        await agents.start(agent_id)
    agents_page = await stub.ListAgents(pb.ListAgentsRequest(page_size=1))
    assert [a.agent_id for a in agents_page.agents] == ["agent-1"]
    agents_token = agents_page.next_page_token
    following = await stub.ListAgents(pb.ListAgentsRequest(page_size=1, page_token=agents_token))
    assert [a.agent_id for a in following.agents] == ["agent-2"]
    jobs_page_token = await _jobs_token(stub)

    message = await _refusal(stub.ListJobs, pb.ListJobsRequest(page_token=agents_token), ())
    assert "issued by ListAgents, not ListJobs" in message
    message = await _refusal(
        stub.ListAgents, pb.ListAgentsRequest(page_token=jobs_page_token), TENANT_A
    )
    assert "issued by ListJobs, not ListAgents" in message
