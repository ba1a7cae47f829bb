"""Hostile REST callers through a real Envoy: hypothesis-made query strings, path segments,
headers and JSON (or not-JSON) bodies for several endpoints. Every answer is a 2xx or a 4xx with
a JSON body (a google.rpc.Status for a 4xx), never a 5xx and never a hang (the client's timeout
bounds each call); jobs exist only for calls that answered with one, and the gateway still serves
afterwards. The hostile values come from the gRPC hostile suite (tests/hostile/strategies.py).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ..hostile.strategies import hostile_text, json_value
from .rest_gateway import RestStack, todos_job

HOSTILE_REST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
    max_examples=120,
    print_blob=False,
)
QUERY_KEYS = ("filter", "page_size", "page_token", "view", "after_sequence", "task_id", "colour")
POST_PATHS = (
    "/v1/jobs",
    "/schedule",
    "/v1/jobs:batchSchedule",
    "/v1/jobs:retry",
    "/v1/plans:preview",
    "/v1/messages:send",
    "/v1/lam/messages",
    "/lam/message",
)


class Ledger:
    """The jobs answers named, per hostile tenant: all that may exist afterwards."""

    def __init__(self) -> None:
        self.tenant = f"hostile-rest-{uuid.uuid4().hex[:8]}"
        self.job_ids: set[str] = set()

    def judge(self, response: httpx.Response, what: str) -> None:
        assert response.status_code < 500, (what, response.status_code, response.text[:500])
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json"), what
            status = response.json()
            assert isinstance(status["code"], int), (what, status)
            assert 0 < status["code"] < 17, (what, status)
            assert status["message"], (what, status)
            return
        if response.headers.get("content-type", "").startswith("application/json"):
            self.job_ids |= _job_ids(response.json())


def _job_ids(value: Any) -> set[str]:
    """Every job id a success answer names (a job, jobs of a batch, a LAM agree)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "job_id" and isinstance(item, str) and item:
                found.add(item)
            found |= _job_ids(item)
    elif isinstance(value, list):
        for item in value:
            found |= _job_ids(item)
    return found


def _body() -> st.SearchStrategy[bytes]:
    as_json = json_value().map(lambda v: json.dumps(v).encode())
    shaped = st.fixed_dictionaries(
        {},
        optional={
            "spec": json_value(),
            "request_id": hostile_text(),
            "requests": st.lists(json_value(), max_size=3),
            "message": json_value(),
            "filter": hostile_text(),
            "max_jobs": st.integers(),
            "performative": st.sampled_from(["PERFORMATIVE_REQUEST", "PERFORMATIVE_INFORM", "x"]),
            "sender": hostile_text(),
        },
    ).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, shaped, st.binary(max_size=200))


def _send(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return http.request(method, url, **kwargs)
    except httpx.TimeoutException as error:  # a hang: the one answer never acceptable
        raise AssertionError(f"{method} {url} hung: {error}") from None


def test_hostile_queries_paths_and_bodies_get_4xx_json_never_5xx(rest_stack: RestStack) -> None:
    ledger = Ledger()
    with rest_stack.http(timeout_s=15.0) as http:
        tenant = {"x-cpa-tenant": ledger.tenant}

        @HOSTILE_REST
        @given(
            path=st.sampled_from(["/v1/jobs", "/v1/agents", "/v1/jobs/{}", "/v1/jobs/{}:watch"]),
            query=st.dictionaries(
                st.one_of(st.sampled_from(QUERY_KEYS), hostile_text()), hostile_text(), max_size=3
            ),
            segment=hostile_text(),
        )
        def queries(path: str, query: dict[str, str], segment: str) -> None:
            try:
                escaped = httpx.URL("/" + segment.replace("/", "%2F")).raw_path.decode()[1:]
                request = http.build_request(
                    "GET", path.format(escaped), params=query, headers=tenant
                )
            except (httpx.InvalidURL, UnicodeEncodeError):
                return  # not sendable as HTTP at all
            try:
                response = http.send(request)
            except httpx.TimeoutException as error:
                raise AssertionError(f"GET {request.url} hung: {error}") from None
            ledger.judge(response, f"GET {request.url}")

        @HOSTILE_REST
        @given(path=st.sampled_from(POST_PATHS), body=_body(), key=st.none() | hostile_text())
        def bodies(path: str, body: bytes, key: str | None) -> None:
            headers = {**tenant, "content-type": "application/json"}
            if key is not None and key.isascii() and key.isprintable():
                headers["idempotency-key"] = key.strip()
            response = _send(http, "POST", path, content=body, headers=headers)
            ledger.judge(response, f"POST {path} {body[:200]!r}")

        queries()
        bodies()

        # Only the jobs some answer named exist for the hostile tenant; the gateway serves.
        listed = http.get("/v1/jobs", params={"page_size": "1000"}, headers=tenant)
        assert listed.status_code == 200, listed.text
        assert {j["job_id"] for j in listed.json()["jobs"]} <= ledger.job_ids
        ok = http.post("/v1/jobs", json=todos_job("after hostile"))
        assert ok.status_code == 200, ok.text
