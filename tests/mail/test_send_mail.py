"""send_mail against the loopback Graph over HTTPS, with real MSAL: attachments arrive byte for
byte, throttling and expired tokens are survived, and every failure says what Graph said."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import os
from datetime import UTC, datetime, timedelta

import pytest

from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.mail import ATTACHMENTS_TOO_LARGE
from cpa_agent.executors.testing import MemoryArtifacts
from cpa_cli.demo.graph_server import LoopbackGraph

from .conftest import ACCOUNTING, MAILBOX, MakeMail, context


def invoice_pdf() -> bytes:
    """A small PDF whose content stream holds binary bytes (every byte value), so that base64
    and transport are really exercised."""
    stream = os.urandom(64 * 1024) + bytes(range(256))
    return (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
        + f"3 0 obj\n<< /Length {len(stream)} >>\nstream\n".encode()
        + stream
        + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


async def test_a_pdf_artifact_input_arrives_attached_with_identical_bytes(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    pdf = invoice_pdf()
    artifacts = MemoryArtifacts({"invoice": ("invoice-2026-11.pdf", "application/pdf", pdf)})
    mail = make_mail()

    outputs = await mail["send_mail"].run(
        context(
            "send_mail",
            {
                "to": [ACCOUNTING],
                "cc": "boss@acme.example, audit@acme.example",
                "subject": "Invoice November 2026",
                "body": "<p>Attached.</p>",
                "content_type": "html",
            },
            artifacts=artifacts,
            artifact_inputs={"invoice": "invoice-2026-11.pdf"},
        )
    )

    [delivered] = graph.delivered
    assert delivered.mailbox == MAILBOX
    assert delivered.to == (ACCOUNTING,)
    assert delivered.cc == ("boss@acme.example", "audit@acme.example")
    assert delivered.subject == "Invoice November 2026"
    assert (delivered.content_type, delivered.body) == ("HTML", "<p>Attached.</p>")
    [attachment] = delivered.attachments
    assert attachment.name == "invoice-2026-11.pdf"
    assert attachment.content_type == "application/pdf"
    assert attachment.sha256 == hashlib.sha256(pdf).hexdigest()
    assert attachment.data == pdf
    assert outputs["attachments"] == [
        {
            "input": "invoice",
            "name": "invoice-2026-11.pdf",
            "media_type": "application/pdf",
            "size_bytes": len(pdf),
            "sha256": hashlib.sha256(pdf).hexdigest(),
        }
    ]
    assert outputs["sent"] is True
    # The recipient's mailbox lives here too: the mail is in its inbox with the same bytes.
    [received] = graph.mailboxes.messages(ACCOUNTING, "inbox")
    assert received.attachments[0].data == pdf


async def test_attachments_up_to_the_default_limit_fit_into_one_graph_request(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    data = os.urandom(1_000_000)
    artifacts = MemoryArtifacts(
        {f"part{n}": (f"part{n}.bin", "application/octet-stream", data) for n in range(3)}
    )

    await make_mail()["send_mail"].run(
        context(
            "send_mail",
            {"to": ACCOUNTING},
            artifacts=artifacts,
            artifact_inputs={f"part{n}": f"part{n}.bin" for n in range(3)},
        )
    )

    [delivered] = graph.delivered
    assert [a.name for a in delivered.attachments] == ["part0.bin", "part1.bin", "part2.bin"]
    assert all(a.data == data for a in delivered.attachments)


async def test_the_token_is_cached_across_sends(graph: LoopbackGraph, make_mail: MakeMail) -> None:
    mail = make_mail()
    for n in range(3):
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING, "subject": f"{n}"}))

    assert [m.subject for m in graph.delivered] == ["0", "1", "2"]
    assert graph.tokens_issued == 1
    assert len(graph.calls("openid")) == 1


async def test_a_429_is_waited_out_per_retry_after_and_the_mail_delivered_once(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    graph.fail_next(2, status=429, retry_after=0.4, endpoint="sendMail")

    await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING, "subject": "s"}))

    assert len(graph.delivered) == 1
    calls = graph.calls("sendMail")
    assert [call.status for call in calls] == [429, 429, 202]
    # Each retry came after the Retry-After the previous answer named (monotonic clock).
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(calls)]
    assert all(gap >= 0.4 for gap in gaps), gaps


async def test_a_cancel_during_a_throttling_wait_stops_at_once_and_sends_nothing(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    graph.fail_next(1, status=429, retry_after=50, endpoint="sendMail")
    waiting = asyncio.Event()
    messages: list[str] = []

    async def on_progress(percent: float | None, message: str) -> None:
        messages.append(message)
        if "waiting" in message:
            waiting.set()

    ctx = dataclasses.replace(context("send_mail", {"to": ACCOUNTING}), on_progress=on_progress)
    attempt = asyncio.create_task(mail["send_mail"].run(ctx))
    await asyncio.wait_for(waiting.wait(), 10)
    attempt.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(attempt, 2)
    assert "Microsoft Graph throttles sendMail: waiting 50s" in messages
    assert graph.delivered == []
    assert len(graph.calls("sendMail")) == 1


async def test_throttling_beyond_the_retry_budget_fails_retryable_and_sends_nothing(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail(max_throttle_retries=2)
    graph.fail_next(
        10, status=429, code="ApplicationThrottled", message="Too many.", retry_after=0.05
    )

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    assert raised.value.code == "ApplicationThrottled"
    assert raised.value.retryable
    assert "after 2 waits" in raised.value.message
    assert len(graph.calls("sendMail")) == 3
    assert graph.delivered == []


async def test_a_retry_after_past_the_deadline_fails_at_once_retryable(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    graph.fail_next(1, status=429, retry_after=30, endpoint="sendMail")
    started = datetime.now(UTC)

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(
            context("send_mail", {"to": ACCOUNTING}, deadline=started + timedelta(seconds=10))
        )

    assert raised.value.code == "GRAPH_DEADLINE"
    assert raised.value.retryable
    assert datetime.now(UTC) - started < timedelta(seconds=5)
    assert graph.delivered == []


async def test_a_retry_after_longer_than_the_setting_fails_at_once_retryable(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail(max_retry_after_s=2)
    graph.fail_next(1, status=429, retry_after=120, endpoint="sendMail")

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    assert raised.value.retryable
    assert "CPA_MAIL_MAX_RETRY_AFTER_S" in raised.value.message
    assert raised.value.details["retry_after_s"] == 120


async def test_an_expired_token_is_refreshed_once_and_the_mail_delivered(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING, "subject": "first"}))
    # MSAL still holds the token (it believes an hour is left); Graph now calls it expired.
    graph.expire_tokens()

    await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING, "subject": "second"}))

    assert [m.subject for m in graph.delivered] == ["first", "second"]
    assert [call.status for call in graph.calls("sendMail")] == [202, 401, 202]
    assert graph.tokens_issued == 2


async def test_graph_refusing_the_refreshed_token_too_fails_not_retryable(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    graph.fail_next(
        5,
        status=401,
        code="InvalidAuthenticationToken",
        message="Access token validation failure.",
        endpoint="sendMail",
    )

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    assert raised.value.code == "InvalidAuthenticationToken"
    assert "Access token validation failure." in raised.value.message
    assert not raised.value.retryable
    # One refresh, one retry, no more.
    assert len(graph.calls("sendMail")) == 2
    assert graph.tokens_issued == 2


async def test_invalid_client_fails_with_the_aad_description_and_never_shows_the_secret(
    graph: LoopbackGraph, make_mail: MakeMail, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng~Secret.Value-8c1f3e"
    mail = make_mail(client_secret=wrong)

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    error = raised.value
    assert error.code == "invalid_client"
    assert "AADSTS7000215: Invalid client secret provided" in error.message
    assert not error.retryable
    assert error.details["error_codes"] == [7000215]
    everything = " ".join([str(error), error.message, repr(error.details), caplog.text])
    assert wrong not in everything
    assert graph.client_secret not in everything
    assert graph.calls("sendMail") == []
    assert graph.delivered == []


async def test_a_token_endpoint_outage_fails_retryable_and_the_next_attempt_sends(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    # Retry-After 0: MSAL itself holds a 5xx answer for its Retry-After (5 s without one).
    graph.fail_next(1, status=503, retry_after=0, endpoint="token")

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))
    assert raised.value.code == "MAIL_TOKEN_UNAVAILABLE"
    assert "503" in raised.value.message
    assert raised.value.retryable
    assert graph.calls("sendMail") == []

    await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))
    assert len(graph.delivered) == 1


async def test_an_unknown_client_id_and_an_unknown_tenant_fail_not_retryable(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail(client_id="not-registered")["send_mail"].run(
            context("send_mail", {"to": ACCOUNTING})
        )
    assert raised.value.code == "unauthorized_client"
    assert "AADSTS700016" in raised.value.message
    assert not raised.value.retryable

    with pytest.raises(ExecutorError) as raised:
        await make_mail(tenant_id="no-such-tenant")["send_mail"].run(
            context("send_mail", {"to": ACCOUNTING})
        )
    assert raised.value.code == "MAIL_AUTHORITY_INVALID"
    assert "AADSTS90002" in raised.value.message
    assert not raised.value.retryable


async def test_a_graph_400_fails_with_graphs_code_and_message_not_retryable(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    mail = make_mail()
    graph.fail_next(
        1,
        status=400,
        code="ErrorInvalidRecipients",
        message="At least one recipient isn't valid.",
        endpoint="sendMail",
    )

    with pytest.raises(ExecutorError) as raised:
        await mail["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    assert raised.value.code == "ErrorInvalidRecipients"
    assert "At least one recipient isn't valid." in raised.value.message
    assert raised.value.details["http_status"] == 400
    assert not raised.value.retryable
    assert graph.delivered == []


async def test_sending_from_a_mailbox_graph_does_not_know_fails_not_retryable(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail()["send_mail"].run(
            context("send_mail", {"to": ACCOUNTING, "mailbox": "nobody@acme.example"})
        )

    assert raised.value.code == "ErrorInvalidUser"
    assert "nobody@acme.example" in raised.value.message
    assert not raised.value.retryable


async def test_a_graph_503_fails_retryable(graph: LoopbackGraph, make_mail: MakeMail) -> None:
    graph.fail_next(1, status=503, message="Service is busy.", endpoint="sendMail")

    with pytest.raises(ExecutorError) as raised:
        await make_mail()["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    assert raised.value.code == "ServiceUnavailable"
    assert "Service is busy." in raised.value.message
    assert raised.value.retryable
    assert graph.delivered == []


async def test_attachments_over_the_limit_fail_clearly_and_nothing_is_sent(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    artifacts = MemoryArtifacts(
        {
            "a": ("a.pdf", "application/pdf", b"x" * 600),
            "b": ("b.pdf", "application/pdf", b"y" * 600),
        }
    )

    with pytest.raises(ExecutorError) as raised:
        await make_mail(max_send_attachment_bytes=1000)["send_mail"].run(
            context(
                "send_mail",
                {"to": ACCOUNTING},
                artifacts=artifacts,
                artifact_inputs={"a": "a.pdf", "b": "b.pdf"},
            )
        )

    assert raised.value.code == ATTACHMENTS_TOO_LARGE
    assert not raised.value.retryable
    assert "1000 bytes" in raised.value.message
    assert "'b.pdf'" in raised.value.message
    assert "nothing was sent" in raised.value.message
    # Not even a token was asked for: the check comes before any call.
    assert graph.requests == []


async def test_a_missing_artifact_input_fails_not_retryable_before_sending(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail()["send_mail"].run(
            context("send_mail", {"to": ACCOUNTING}, artifact_inputs={"invoice": "gone.pdf"})
        )

    assert raised.value.code == "INPUT_NOT_FOUND"
    assert not raised.value.retryable
    assert graph.calls("sendMail") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.to"),
        ({"to": []}, "params.to"),
        ({"to": "not-an-address"}, "params.to.0"),
        ({"to": ["a@b.example", "x@y.example>, evil@z.example"]}, "params.to.1"),
        ({"to": "a@b.example", "subject": "two\nlines"}, "params.subject"),
        ({"to": "a@b.example", "content_type": "rtf"}, "params.content_type"),
        ({"to": "a@b.example", "mailbox": "../../me"}, "params.mailbox"),
        ({"to": "a@b.example", "bcc": "x@y.example"}, "params.bcc"),
    ],
)
async def test_bad_params_are_refused_naming_the_field_and_nothing_is_sent(
    graph: LoopbackGraph, make_mail: MakeMail, params: dict[str, object], field: str
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail()["send_mail"].run(context("send_mail", params))

    assert raised.value.code == "INVALID_PARAMS"
    assert not raised.value.retryable
    assert raised.value.details["field"] == field
    assert raised.value.message.startswith(f"{field}:")
    assert graph.requests == []


async def test_proxies_and_ca_bundles_from_the_environment_are_not_used(
    graph: LoopbackGraph, make_mail: MakeMail, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both would break the call if honoured: a CA bundle without the loopback CA (it would
    # override MSAL's `verify`) and a proxy nobody listens on.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")

    await make_mail()["send_mail"].run(context("send_mail", {"to": ACCOUNTING}))

    assert len(graph.delivered) == 1
