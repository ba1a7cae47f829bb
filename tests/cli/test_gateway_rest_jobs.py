"""Every job RPC of SchedulerService over REST/JSON through a real Envoy, at the paths of its
google.api.http bindings: what a webhook caller or curl sends, and what it gets back.

One `cpa serve --with-agent` and one `cpa gateway` serve the module (conftest `rest_stack`);
each test labels its jobs and lists only those.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .rest_gateway import (
    UNKNOWN_JOB,
    RestStack,
    labelled,
    new_label,
    rpc_status,
    todo,
    todos_job,
    wait_done,
)

MAIL_TEXT = "send an email to ops@example.com about the invoices"


def test_schedule_job_from_text_intent_and_todos_and_at_schedule(rest_stack: RestStack) -> None:
    """JobSpec's three sources (text routed to an intent, an intent by name, explicit ToDos),
    at POST /v1/jobs and at the `/schedule` binding; the answer is the job in the BASIC view."""
    label = new_label("sources")
    with rest_stack.http() as http:
        by_text = http.post(
            "/v1/jobs", json={"spec": {"text": MAIL_TEXT, "labels": {"run": label}}}
        )
        assert by_text.status_code == 200, by_text.text
        assert by_text.json()["created"] is True
        job = by_text.json()["job"]
        assert (job["intent"], job["spec"]["text"]) == ("send_mail", MAIL_TEXT)
        assert [t["todo"]["action"] for t in job["tasks"]] == ["ACTION_TYPE_SEND_MAIL"]
        assert "params" not in job["tasks"][0]["todo"]  # BASIC: no JSON payloads

        intent = {"name": "send_mail", "parameters": {"recipient": "a@example.com"}}
        by_intent = http.post(
            "/v1/jobs",
            json={"spec": {"intent": intent, "labels": {"run": label}}, "view": "JOB_VIEW_FULL"},
        )
        assert by_intent.status_code == 200, by_intent.text
        full = by_intent.json()["job"]
        assert full["intent"] == "send_mail"
        assert full["spec"]["intent"] == intent  # FULL: intent parameters included
        assert full["tasks"][0]["todo"]["params"]["to"] == "a@example.com"

        by_todos = http.post("/schedule", json=todos_job(label, todo("a"), todo("b", "noop")))
        assert by_todos.status_code == 200, by_todos.text
        todos_id = by_todos.json()["job"]["job_id"]
        assert [t["todo"]["id"] for t in by_todos.json()["job"]["tasks"]] == ["a", "b"]
        assert wait_done(http, todos_id)["state"] == "JOB_STATE_SUCCEEDED"

        ids = {by_text.json()["job"]["job_id"], full["job_id"], todos_id}
        assert {j["job_id"] for j in labelled(http, label)} == ids

        # Each source's own refusals arrive as JSON Status with the field at fault.
        nothing = http.post("/v1/jobs", json={"spec": {"text": "water the plants"}})
        rpc_status(nothing, 400, 3, "UNKNOWN_INTENT", "spec.text")
        typo = http.post("/v1/jobs", json={"spec": {"intent": {"name": "send_mial"}}})
        rpc_status(typo, 400, 3, "UNKNOWN_INTENT", "spec.intent.name")
        cycle = todos_job(
            label, {**todo("a"), "depends_on": ["b"]}, {**todo("b"), "depends_on": ["a"]}
        )
        rpc_status(http.post("/schedule", json=cycle), 400, 3, "GRAPH_CYCLE", None)
        rpc_status(http.post("/v1/jobs", json={}), 400, 3, "MISSING_FIELD", "spec")
        assert {j["job_id"] for j in labelled(http, label)} == ids  # nothing refused was made


def test_get_job_in_both_views_and_an_unknown_one(rest_stack: RestStack) -> None:
    label = new_label("views")
    with rest_stack.http() as http:
        created = http.post("/v1/jobs", json=todos_job(label, todo("t", note="payload")))
        job_id = created.json()["job"]["job_id"]
        done = wait_done(http, job_id)  # GetJob's default view is FULL
        assert done["tasks"][0]["todo"]["params"] == {"note": "payload"}
        assert done["tasks"][0]["outputs"] == {"note": "payload"}
        assert done["tasks"][0]["attempts"][0]["agent_id"] == rest_stack.agent_id

        basic = http.get(f"/v1/jobs/{job_id}", params={"view": "JOB_VIEW_BASIC"})
        assert basic.status_code == 200, basic.text
        task = basic.json()["job"]["tasks"][0]
        assert "params" not in task["todo"]
        assert "outputs" not in task
        assert task["state"] == "TASK_STATE_SUCCEEDED"
        # An enum by number, as proto3 JSON allows in a query.
        by_number = http.get(f"/v1/jobs/{job_id}", params={"view": "1"})
        assert by_number.json() == basic.json()

        missing = http.get(f"/v1/jobs/{UNKNOWN_JOB}")
        rpc_status(missing, 404, 5, "JOB_NOT_FOUND", "job_id")
        too_long = http.get(f"/v1/jobs/{'j' * 129}")
        rpc_status(too_long, 400, 3, "INVALID_FIELD", "job_id")


def test_list_jobs_pages_through_a_filter_sent_with_plus_and_with_percent_20(
    rest_stack: RestStack,
) -> None:
    label = new_label("pages")
    with rest_stack.http() as http:
        made = []
        for n in range(5):
            created = http.post("/v1/jobs", json=todos_job(label, todo(f"t{n}", "noop")))
            assert created.status_code == 200, created.text
            made.append(created.json()["job"]["job_id"])
        expression = f'labels.run = "{label}"'

        def pages(send: Any) -> list[list[str]]:
            seen: list[list[str]] = []
            token = ""
            while True:
                response = send(token)
                assert response.status_code == 200, response.text
                body = response.json()
                seen.append([j["job_id"] for j in body["jobs"]])
                token = body["next_page_token"]
                if not token:
                    return seen

        # httpx encodes spaces as '+' (as browsers and curl --data-urlencode do) ...
        as_plus = pages(
            lambda token: http.get(
                "/v1/jobs", params={"filter": expression, "page_size": "2", "page_token": token}
            )
        )
        # ... a hand-built URL as %20.
        as_percent = pages(
            lambda token: http.get(
                f"/v1/jobs?filter={quote(expression, safe='')}&page_size=2"
                + (f"&page_token={quote(token, safe='')}" if token else "")
            )
        )
        assert as_plus == as_percent
        assert [len(page) for page in as_plus] == [2, 2, 1]
        assert [job for page in as_plus for job in page] == made[::-1]  # newest first

        # A token is bound to its filter: another filter with it is refused, naming the field.
        first = http.get("/v1/jobs", params={"filter": expression, "page_size": "2"}).json()
        other = http.get(
            "/v1/jobs",
            params={"filter": 'labels.run = "x"', "page_token": first["next_page_token"]},
        )
        rpc_status(other, 400, 3, "INVALID_PAGE_TOKEN", "page_token")
        rpc_status(
            http.get("/v1/jobs", params={"filter": "colour = red"}),
            400,
            3,
            "INVALID_FILTER",
            "filter",
        )


def test_cancel_job_with_a_reason_and_by_delete(rest_stack: RestStack) -> None:
    """POST /v1/jobs/{id}:cancel with a body (reason, view) and DELETE /jobs/{id}; both reach
    CancelJob. Jobs of the send_mail intent wait for an agent that can send mail, which the
    local agent (built-in actions only) cannot: they stay pending until cancelled."""
    label = new_label("cancel")
    with rest_stack.http() as http:
        spec = {"spec": {"text": MAIL_TEXT, "labels": {"run": label}}}
        first = http.post("/v1/jobs", json=spec).json()["job"]["job_id"]
        second = http.post("/v1/jobs", json=spec).json()["job"]["job_id"]

        cancelled = http.post(
            f"/v1/jobs/{first}:cancel", json={"reason": "changed my mind", "view": "JOB_VIEW_FULL"}
        )
        assert cancelled.status_code == 200, cancelled.text
        job = cancelled.json()["job"]
        assert (job["cancel_requested"], job["cancel_reason"]) == (True, "changed my mind")
        assert wait_done(http, first)["state"] == "JOB_STATE_CANCELLED"

        deleted = http.delete(f"/jobs/{second}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["job"]["cancel_requested"] is True
        assert wait_done(http, second)["state"] == "JOB_STATE_CANCELLED"

        # Again: nothing changes, the first reason stays.
        again = http.post(f"/v1/jobs/{first}:cancel", json={"reason": "twice"})
        assert again.json()["job"]["cancel_reason"] == "changed my mind"
        rpc_status(http.delete(f"/jobs/{UNKNOWN_JOB}"), 404, 5, "JOB_NOT_FOUND", "job_id")
        long_reason = http.post(f"/v1/jobs/{first}:cancel", json={"reason": "r" * 2000})
        rpc_status(long_reason, 400, 3, "PAYLOAD_TOO_LARGE", "reason")

        # A job that already succeeded cannot be cancelled: FAILED_PRECONDITION is HTTP 400.
        done = http.post("/v1/jobs", json=todos_job(label, todo("t", "noop"))).json()["job"]
        wait_done(http, done["job_id"])
        late = http.post(f"/v1/jobs/{done['job_id']}:cancel", json={})
        rpc_status(late, 400, 9, "ILLEGAL_TRANSITION")


def test_retry_job_and_retry_jobs_by_filter(rest_stack: RestStack) -> None:
    """`fail` with until_attempt 1 fails the job's first run for good (not retryable) and lets
    a re-driven run succeed."""
    label = new_label("retry")
    flaky = todo("flaky", "fail", until_attempt=1, retryable=False)
    with rest_stack.http() as http:
        ids = [
            http.post("/v1/jobs", json=todos_job(label, flaky)).json()["job"]["job_id"]
            for _ in range(3)
        ]
        for job_id in ids:
            failed = wait_done(http, job_id)
            assert failed["state"] == "JOB_STATE_FAILED", failed
            assert failed["dead_lettered"] is True

        retried = http.post(f"/v1/jobs/{ids[0]}:retry", json={})
        assert retried.status_code == 200, retried.text
        assert retried.json()["job"]["retry_count"] == 1
        assert wait_done(http, ids[0])["state"] == "JOB_STATE_SUCCEEDED"
        # Retrying a job that succeeded: FAILED_PRECONDITION, HTTP 400.
        rpc_status(http.post(f"/v1/jobs/{ids[0]}:retry", json={}), 400, 9, "ILLEGAL_TRANSITION")
        rpc_status(
            http.post(f"/v1/jobs/{UNKNOWN_JOB}:retry", json={}), 404, 5, "JOB_NOT_FOUND", "job_id"
        )

        selection = {"filter": f'labels.run = "{label}" AND state = FAILED'}
        dry = http.post("/v1/jobs:retry", json={**selection, "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert sorted(dry.json()["job_ids"]) == sorted(ids[1:])
        bulk = http.post("/v1/jobs:retry", json={**selection, "max_jobs": 1})
        assert bulk.json()["job_ids"] == [ids[2]]  # newest first, at most max_jobs
        rest = http.post("/v1/jobs:retry", json=selection)
        assert rest.json()["job_ids"] == [ids[1]]
        for job_id in ids[1:]:
            assert wait_done(http, job_id)["state"] == "JOB_STATE_SUCCEEDED"
        assert http.post("/v1/jobs:retry", json=selection).json()["job_ids"] == []

        succeeded_only = {"filter": f'labels.run = "{label}" AND state = SUCCEEDED'}
        rpc_status(
            http.post("/v1/jobs:retry", json=succeeded_only), 400, 3, "INVALID_FILTER", "filter"
        )
        rpc_status(
            http.post("/v1/jobs:retry", json={"max_jobs": -1}), 400, 3, "INVALID_FIELD", "max_jobs"
        )


def test_batch_schedule_jobs_all_or_none(rest_stack: RestStack) -> None:
    label = new_label("batch")
    with rest_stack.http() as http:
        requests = [todos_job(label, todo(f"t{n}", "noop")) for n in range(3)]
        batch = http.post("/v1/jobs:batchSchedule", json={"requests": requests})
        assert batch.status_code == 200, batch.text
        answers = batch.json()["responses"]
        assert [a["created"] for a in answers] == [True, True, True]
        again = http.post("/v1/jobs:batchSchedule", json={"requests": requests})
        assert [a["created"] for a in again.json()["responses"]] == [False, False, False]
        assert [a["job"]["job_id"] for a in again.json()["responses"]] == [
            a["job"]["job_id"] for a in answers
        ]

        broken = [todos_job(label, todo("ok", "noop")), {"spec": {"text": "water the plants"}}]
        refused = http.post("/v1/jobs:batchSchedule", json={"requests": broken})
        rpc_status(refused, 400, 3, "UNKNOWN_INTENT", "requests[1].spec.text")
        rpc_status(
            http.post("/v1/jobs:batchSchedule", json={}), 400, 3, "MISSING_FIELD", "requests"
        )
        assert len(labelled(http, label)) == 3  # the refused batch made none


def test_preview_plan_list_agents_and_artifacts(rest_stack: RestStack) -> None:
    label = new_label("misc")
    with rest_stack.http() as http:
        preview = http.post("/v1/plans:preview", json={"spec": {"text": MAIL_TEXT}})
        assert preview.status_code == 200, preview.text
        plan = preview.json()
        assert plan["intent"] == "send_mail"
        assert plan["parameters"]["recipient"] == "ops@example.com"
        assert [t["id"] for t in plan["todos"]] == ["send"]
        assert plan["batches"] == [{"task_ids": ["send"]}]
        # Text nothing matches: a plan of nothing, intent "unknown" (ScheduleJob refuses it).
        unknown = http.post("/v1/plans:preview", json={"spec": {"text": "water the plants"}})
        assert (unknown.json()["intent"], unknown.json()["todos"]) == ("unknown", [])
        empty = http.post("/v1/plans:preview", json={"spec": {"todos": {"todos": []}}})
        rpc_status(empty, 400, 3, "EMPTY_GRAPH")
        assert labelled(http, label) == []  # a preview creates no job

        agents = http.get("/v1/agents", params={"filter": 'actions = "echo"'})
        assert agents.status_code == 200, agents.text
        (agent,) = agents.json()["agents"]
        assert agent["agent_id"] == rest_stack.agent_id
        assert "echo" in agent["capabilities"]["actions"]
        none = http.get("/v1/agents", params={"filter": 'actions = "no_such_action"'})
        assert none.json()["agents"] == []
        rpc_status(
            http.get("/v1/agents", params={"filter": "((("}), 400, 3, "INVALID_FILTER", "filter"
        )

        job_id = http.post("/v1/jobs", json=todos_job(label)).json()["job"]["job_id"]
        wait_done(http, job_id)
        artifacts = http.get(f"/v1/jobs/{job_id}/artifacts")
        assert artifacts.status_code == 200, artifacts.text
        # The built-in actions store none: one page, the last.
        assert artifacts.json() == {"artifacts": [], "next_page_token": ""}
        paged = http.get(f"/v1/jobs/{job_id}/artifacts", params={"page_size": 1, "page_token": "x"})
        rpc_status(paged, 400, 3, "INVALID_PAGE_TOKEN", "page_token")
        no_task = http.get(f"/v1/jobs/{job_id}/artifacts", params={"task_id": "nope"})
        rpc_status(no_task, 404, 5, "TASK_NOT_FOUND", "task_id")
        download = http.get(f"/v1/jobs/{job_id}/artifacts/nope:download")
        rpc_status(download, 404, 5, "ARTIFACT_NOT_FOUND", "artifact_id")
        rpc_status(http.get(f"/v1/jobs/{UNKNOWN_JOB}/artifacts"), 404, 5, "JOB_NOT_FOUND", None)
