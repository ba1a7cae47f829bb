"""The REST half of the tenant-isolation matrix (the gRPC half is test_tenant_matrix.py): through
the real Envoy gateway (`cpa gateway`) in front of a scheduler with authentication on, in each
store, tenant acme's API key (`x-api-key`, or `authorization: Bearer`) aimed at tenant globex's
resources gets the answer a resource that does not exist gets: HTTP 404 with a JSON
google.rpc.Status for single resources, nothing of globex's in lists.

Every HTTP binding of SchedulerService (google.api.http, additional bindings included) has a
probe here or a reason why it touches no tenant's resource: a new binding without one fails
`test_every_rest_binding_has_a_probe`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cpa_cli.gateway.http_rules import rest_paths
from tests.cli.conftest import StartCli
from tests.cli.rest_gateway import rpc_status, todo

from .conftest import gateway_in_front
from .tenant_world import SHARED_AGENT_ID, World

DESCRIPTORS = Path(__file__).parents[2] / "deploy" / "api.binpb"
SERVICE = "cpa.scheduler.v1.SchedulerService"
NOOP = todo("a", "noop")

Outcome = Any
Probe = Callable[[httpx.AsyncClient, World, str], Awaitable[Outcome]]

# Bindings that touch no tenant's stored resource, and why.
NO_TENANT_RESOURCE = {"POST /v1/plans:preview": "plans only; reads and stores nothing"}


def _outcome(response: httpx.Response, resource: str) -> Outcome:
    """An answer with `resource` (the id probed) blotted out: a refusal's HTTP status, gRPC
    code, reasons and message; a success's status and body."""
    if response.status_code == 200:
        return (200, response.text.replace(resource, "<id>"))
    status = response.json()
    reasons = [d.get("reason") for d in status.get("details", [])]
    return (
        response.status_code,
        status["code"],
        reasons,
        status["message"].replace(resource, "<id>"),
    )


def _get(path: str) -> Probe:
    async def probe(http: httpx.AsyncClient, world: World, resource: str) -> Outcome:
        return _outcome(await http.get(path.format(id=resource)), resource)

    return probe


def _post(path: str) -> Probe:
    async def probe(http: httpx.AsyncClient, world: World, resource: str) -> Outcome:
        return _outcome(await http.post(path.format(id=resource), json={}), resource)

    return probe


async def _retry_callbacks(http: httpx.AsyncClient, world: World, delivery_id: str) -> Outcome:
    response = await http.post("/v1/callbacks:retry", json={"delivery_ids": [delivery_id]})
    return _outcome(response, delivery_id)


async def _delete_job(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    return _outcome(await http.delete(f"/jobs/{job_id}"), job_id)


def _lam_cancel(path: str, *, wrapped: bool) -> Probe:
    """A LAM cancel of the job: a 200 whose reply refuses it, as for a job that does not exist."""

    async def probe(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
        message = {
            "id": uuid.uuid4().hex,
            "performative": "PERFORMATIVE_CANCEL",
            "sender": "acme-agent",
            "cancel": {"job_id": job_id},
        }
        response = await http.post(path, json={"message": message} if wrapped else message)
        assert response.status_code == 200, response.text
        reply = response.json()["reply"]
        refuse = reply.get("refuse", {})
        return (
            reply["performative"],
            refuse.get("reason"),
            refuse.get("message", "").replace(job_id, "<id>"),
        )

    return probe


def _schedule(path: str) -> Probe:
    """acme's job under globex's request id is acme's own, new job."""

    async def probe(http: httpx.AsyncClient, world: World, request_id: str) -> Outcome:
        body = {"request_id": request_id, "spec": {"todos": {"todos": [NOOP]}}}
        response = await http.post(path, json=body)
        assert response.status_code == 200, response.text
        made = response.json()
        return (made["created"], made["job"]["job_id"] != world.globex_job)

    return probe


async def _batch_schedule(http: httpx.AsyncClient, world: World, request_id: str) -> Outcome:
    body = {"requests": [{"request_id": request_id, "spec": {"todos": {"todos": [NOOP]}}}]}
    response = await http.post("/v1/jobs:batchSchedule", json=body)
    assert response.status_code == 200, response.text
    return [
        (r["created"], r["job"]["job_id"] != world.globex_job) for r in response.json()["responses"]
    ]


async def _listed(
    http: httpx.AsyncClient, path: str, field: str, **params: str
) -> list[dict[str, Any]]:
    response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json().get(field, [])
    return found


async def _list_jobs(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    return job_id in {job["job_id"] for job in await _listed(http, "/v1/jobs", "jobs")}


async def _retry_jobs(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    response = await http.post("/v1/jobs:retry", json={"dry_run": True})
    assert response.status_code == 200, response.text
    return job_id in response.json().get("job_ids", [])


async def _list_agents(http: httpx.AsyncClient, world: World, _: str) -> Outcome:
    return SHARED_AGENT_ID in {a["agent_id"] for a in await _listed(http, "/v1/agents", "agents")}


async def _list_callbacks(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    return [
        c["delivery_id"] for c in await _listed(http, "/v1/callbacks", "callbacks", job_id=job_id)
    ]


async def _list_audit(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    """acme's own refused probes of the id are its entries; globex's ScheduleJob (OK) must not
    show."""
    entries = await _listed(http, "/v1/audit", "entries", job_id=job_id)
    return sorted(e["action"] for e in entries if e.get("result_code") == "OK")


async def _search_memory(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    """The job's id as the text: no hit may name another tenant's job (or memory at all)."""
    response = await http.post("/v1/memory:search", json={"text": f"job {job_id}", "k": 100})
    assert response.status_code == 200, response.text
    return [hit["record"].get("job_id") for hit in response.json().get("hits", [])]


async def _put_memory(http: httpx.AsyncClient, world: World, job_id: str) -> Outcome:
    """A record naming another tenant's job is acme's own record (job_id is not checked)."""
    response = await http.post("/v1/memory", json={"text": f"job {job_id}", "job_id": job_id})
    assert response.status_code == 200, response.text
    return response.json()["record"]["job_id"] == job_id


async def _delete_memories(http: httpx.AsyncClient, world: World, memory_id: str) -> Outcome:
    """Another tenant's record id deletes nothing, as an id that does not exist."""
    response = await http.post("/v1/memory:delete", json={"memory_id": memory_id})
    assert response.status_code == 200, response.text
    return response.json().get("deleted_count", "0")


# "VERB template" of each binding: the probe, and the kind of globex's resource it takes.
PROBES: dict[str, tuple[Probe, str]] = {
    "GET /v1/jobs/{job_id}": (_get("/v1/jobs/{id}"), "job"),
    "POST /v1/jobs/{job_id}:cancel": (_post("/v1/jobs/{id}:cancel"), "job"),
    "DELETE /jobs/{job_id}": (_delete_job, "job"),
    "POST /v1/jobs/{job_id}:retry": (_post("/v1/jobs/{id}:retry"), "job"),
    "GET /v1/jobs/{job_id}:watch": (_get("/v1/jobs/{id}:watch"), "job"),
    "GET /v1/jobs/{job_id}/artifacts": (_get("/v1/jobs/{id}/artifacts"), "job"),
    "GET /v1/jobs/{job_id}/artifacts/{artifact_id}:download": (
        _get("/v1/jobs/{id}/artifacts/" + "0" * 32 + ":download"),
        "job",
    ),
    "POST /v1/messages:send": (_lam_cancel("/v1/messages:send", wrapped=True), "job"),
    "POST /v1/lam/messages": (_lam_cancel("/v1/lam/messages", wrapped=False), "job"),
    "POST /lam/message": (_lam_cancel("/lam/message", wrapped=False), "job"),
    "GET /v1/jobs": (_list_jobs, "job"),
    "POST /v1/jobs:retry": (_retry_jobs, "job"),
    "GET /v1/agents": (_list_agents, "job"),
    "GET /v1/callbacks": (_list_callbacks, "job"),
    "POST /v1/callbacks:retry": (_retry_callbacks, "delivery"),
    "GET /v1/audit": (_list_audit, "job"),
    "POST /v1/memory:search": (_search_memory, "job"),
    "POST /v1/memory": (_put_memory, "job"),
    "POST /v1/memory:delete": (_delete_memories, "memory"),
    "POST /v1/jobs": (_schedule("/v1/jobs"), "request_id"),
    "POST /schedule": (_schedule("/schedule"), "legacy_request_id"),
    "POST /v1/jobs:batchSchedule": (_batch_schedule, "batch_request_id"),
}
# Single resources: globex's answers 404 (NOT_FOUND) with this reason, exactly as a missing one.
NOT_FOUND = {
    "GET /v1/jobs/{job_id}": "JOB_NOT_FOUND",
    "POST /v1/jobs/{job_id}:cancel": "JOB_NOT_FOUND",
    "DELETE /jobs/{job_id}": "JOB_NOT_FOUND",
    "POST /v1/jobs/{job_id}:retry": "JOB_NOT_FOUND",
    "GET /v1/jobs/{job_id}:watch": "JOB_NOT_FOUND",
    "GET /v1/jobs/{job_id}/artifacts": "JOB_NOT_FOUND",
    "GET /v1/jobs/{job_id}/artifacts/{artifact_id}:download": "JOB_NOT_FOUND",
    "POST /v1/callbacks:retry": "CALLBACK_NOT_FOUND",
}


def _bindings() -> set[str]:
    return {
        f"{verb} {path.template}"
        for path in rest_paths(DESCRIPTORS, [SERVICE])
        for verb in path.methods
    }


def test_every_rest_binding_has_a_probe() -> None:
    assert _bindings() - set(PROBES) - set(NO_TENANT_RESOURCE) == set()
    assert set(PROBES) <= _bindings()  # no probe of a binding that is gone


@pytest.fixture
async def gateway(world: World, start_cli: StartCli) -> str:
    return await gateway_in_front(start_cli, world.scheduler.target)


def _acme(gateway: str, world: World, *, bearer: bool) -> httpx.AsyncClient:
    header = (
        {"authorization": f"Bearer {world.acme_key}"} if bearer else {"x-api-key": world.acme_key}
    )
    return httpx.AsyncClient(base_url=gateway, headers=header, timeout=20.0, trust_env=False)


async def test_another_tenants_resources_look_like_missing_ones_over_rest(
    world: World, gateway: str
) -> None:
    theirs = world.theirs()
    for n, (binding, (probe, kind)) in enumerate(PROBES.items()):
        # Both ways of presenting the key, alternately.
        async with _acme(gateway, world, bearer=n % 2 == 1) as http:
            missing = world.missing()
            seen_for_theirs = await probe(http, world, theirs[kind])
            seen_for_missing = await probe(http, world, missing)
            assert seen_for_theirs == seen_for_missing, binding
            if binding in NOT_FOUND:
                assert seen_for_theirs[:3] == (404, 5, [NOT_FOUND[binding]]), (
                    binding,
                    seen_for_theirs,
                )
    async with _acme(gateway, world, bearer=False) as http:
        # And the probes observe something: the answers are JSON Statuses in our domain.
        response = await http.get(f"/v1/jobs/{world.globex_job}")
        status = rpc_status(response, 404, 5, "JOB_NOT_FOUND")
        assert world.globex_job not in str(status.get("details"))
        assert await _list_jobs(http, world, world.globex_job) is False
        assert await _list_agents(http, world, "") is False
        assert await _list_callbacks(http, world, world.globex_job) == []
        assert await _delete_memories(http, world, world.globex_memory) == "0"
    assert await world.globex_memory_kept()
