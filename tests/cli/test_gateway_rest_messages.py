"""LAM messages and idempotency keys over REST/JSON through a real Envoy.

SendMessage at its three bindings (`/v1/messages:send` wraps the message, `/v1/lam/messages`
and `/lam/message` take it bare; all answer `{"reply": ...}`), and the `Idempotency-Key` header
of webhook callers, which the gateway forwards as gRPC metadata `idempotency-key`.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import scheduler_service_pb2 as svc
from cpa.scheduler.v1 import scheduler_service_pb2_grpc
from cpa_client import CpaError

from .rest_gateway import RestStack, labelled, new_label, rpc_status, todo, todos_job, wait_done


def _request(label: str, message_id: str | None = None) -> dict[str, Any]:
    """A LAM request whose work is one echo ToDo, labelled through its context-free todos."""
    message: dict[str, Any] = {
        "performative": "PERFORMATIVE_REQUEST",
        "sender": "agent://rest-test",
        "request": {"todos": [todo("lam", note=label)]},
    }
    if message_id is not None:
        message["id"] = message_id
    return message


def _agreed(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()["reply"]
    assert reply["performative"] == "PERFORMATIVE_AGREE", reply
    return reply


def test_send_message_at_its_three_bindings_makes_a_job(rest_stack: RestStack) -> None:
    """A LAM request is the fourth way to make a job; each binding answers the wrapped reply
    (Envoy ignores response_body on additional bindings, so the contract declares none)."""
    label = new_label("lam")
    with rest_stack.http() as http:
        replies = {}
        for path, wrap in (
            ("/v1/messages:send", True),
            ("/v1/lam/messages", False),
            ("/lam/message", False),
        ):
            message = _request(label, str(uuid.uuid4()))
            reply = _agreed(http.post(path, json={"message": message} if wrap else message))
            assert reply["correlation"]["in_reply_to"] == message["id"]
            assert reply["agree"]["duplicate"] is False
            replies[path] = (message, reply)

        job_id = replies["/v1/lam/messages"][1]["agree"]["job_id"]
        job = wait_done(http, job_id)
        assert job["state"] == "JOB_STATE_SUCCEEDED"
        assert job["tasks"][0]["outputs"] == {"note": label}
        assert job["conversation_id"] == replies["/v1/lam/messages"][0]["id"]

        # The message id is the idempotency key: the same message again makes no second job.
        message, first = replies["/lam/message"]
        repeat = _agreed(http.post("/v1/lam/messages", json=message))
        assert repeat["agree"] == {"job_id": first["agree"]["job_id"], "duplicate": True}

        # A malformed message is answered in LAM terms (not_understood), still HTTP 200.
        nobody = http.post(
            "/v1/lam/messages", json={"id": "x", "performative": "PERFORMATIVE_REQUEST"}
        )
        assert nobody.status_code == 200, nobody.text
        not_understood = nobody.json()["reply"]
        assert not_understood["performative"] == "PERFORMATIVE_NOT_UNDERSTOOD"
        assert not_understood["not_understood"]["field"] == "sender"
        # A body that is not a LAM message at all is the gateway's refusal.
        wrong = http.post("/v1/lam/messages", json={"performative": "PERFORMATIVE_GOSSIP"})
        rpc_status(wrong, 400, 3, "MALFORMED_BODY")


def test_idempotency_key_makes_a_webhook_retry_return_the_same_job(rest_stack: RestStack) -> None:
    label = new_label("idempotent")
    with rest_stack.http() as http:
        key = f"hook-{uuid.uuid4()}"
        body = todos_job(label, todo("t", "noop"), request_id="")
        first = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 200, first.text
        assert (first.json()["created"], first.json()["job"]["request_id"]) == (True, key)
        # The caller's retry, at the same path or at /schedule: the same job, created false.
        for path in ("/v1/jobs", "/schedule"):
            again = http.post(path, json=body, headers={"Idempotency-Key": key})
            assert again.status_code == 200, again.text
            assert again.json()["created"] is False
            assert again.json()["job"]["job_id"] == first.json()["job"]["job_id"]
        # The key in the body too: fine when equal.
        same = http.post(
            "/v1/jobs", json={**body, "request_id": key}, headers={"Idempotency-Key": key}
        )
        assert same.json()["job"]["job_id"] == first.json()["job"]["job_id"]

        # Another request under the key: REQUEST_ID_REUSED (ALREADY_EXISTS, HTTP 409).
        other = todos_job(label, todo("other", "noop"), request_id="")
        reused = http.post("/v1/jobs", json=other, headers={"Idempotency-Key": key})
        rpc_status(reused, 409, 6, "REQUEST_ID_REUSED", "request_id")
        # A key that differs from the body's request_id, and one that is too long.
        mismatch = http.post(
            "/v1/jobs", json={**body, "request_id": "another"}, headers={"Idempotency-Key": key}
        )
        rpc_status(mismatch, 400, 3, "IDEMPOTENCY_KEY_MISMATCH", "request_id")
        too_long = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 129})
        rpc_status(too_long, 400, 3, "INVALID_FIELD", "request_id")
        assert len(labelled(http, label)) == 1

        # A batch: requests without their own id get KEY/<index>; a repeat creates nothing.
        batch_key = f"batch-{uuid.uuid4()}"
        requests = [todos_job(label, todo(f"b{n}", "noop"), request_id="") for n in range(2)]
        made = http.post(
            "/v1/jobs:batchSchedule",
            json={"requests": requests},
            headers={"Idempotency-Key": batch_key},
        )
        assert made.status_code == 200, made.text
        answers = made.json()["responses"]
        assert [a["job"]["request_id"] for a in answers] == [f"{batch_key}/0", f"{batch_key}/1"]
        repeat = http.post(
            "/v1/jobs:batchSchedule",
            json={"requests": requests},
            headers={"Idempotency-Key": batch_key},
        )
        assert [a["created"] for a in repeat.json()["responses"]] == [False, False]
        assert len(labelled(http, label)) == 3

        # A LAM message without an id takes the key; one whose id differs is refused.
        lam_key = f"lam-{uuid.uuid4()}"
        keyed = _agreed(
            http.post(
                "/v1/lam/messages", json=_request(label), headers={"Idempotency-Key": lam_key}
            )
        )
        assert keyed["correlation"]["in_reply_to"] == lam_key
        retried = _agreed(
            http.post(
                "/v1/lam/messages", json=_request(label), headers={"Idempotency-Key": lam_key}
            )
        )
        assert retried["agree"] == {"job_id": keyed["agree"]["job_id"], "duplicate": True}
        differs = http.post(
            "/v1/messages:send",
            json={"message": _request(label, "id-1")},
            headers={"Idempotency-Key": lam_key},
        )
        rpc_status(differs, 400, 3, "IDEMPOTENCY_KEY_MISMATCH", "message.id")


def test_native_grpc_callers_send_the_key_as_metadata(rest_stack: RestStack) -> None:
    """The same key as gRPC metadata, through the gateway's native gRPC side."""
    label = new_label("metadata")
    key = f"grpc-{uuid.uuid4()}"
    request = svc.ScheduleJobRequest()
    request.spec.labels["run"] = label
    request.spec.todos.todos.add(id="t", custom_action="noop", action=todo_pb2.ACTION_TYPE_CUSTOM)
    with grpc.insecure_channel(rest_stack.address) as channel:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        metadata = (("idempotency-key", key),)
        first = stub.ScheduleJob(request, metadata=metadata, timeout=10)
        second = stub.ScheduleJob(request, metadata=metadata, timeout=10)
        assert (first.created, second.created) == (True, False)
        assert first.job.job_id == second.job.job_id
        assert first.job.request_id == key
        request.request_id = "not-the-key"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ScheduleJob(request, metadata=metadata, timeout=10)
        refused = CpaError.from_rpc_error(caught.value)
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "IDEMPOTENCY_KEY_MISMATCH",
        )
        assert refused.metadata["field"] == "request_id"
