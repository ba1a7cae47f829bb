"""The loopback Graph and token endpoint on the wire, without our executor: what a client that
does not behave gets (as Microsoft's services answer), and the TLS files it is served with."""

from __future__ import annotations

import base64
import io
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cpa_cli.demo.graph_server import SEND_MAIL_MAX_BYTES, LoopbackGraph
from cpa_cli.demo.tls import ensure_tls_files

from .conftest import ACCOUNTING, MAILBOX


@pytest.fixture
async def http(graph: LoopbackGraph) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(graph.ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def token(graph: LoopbackGraph, http: aiohttp.ClientSession, **form: str) -> Any:
    data = {
        "grant_type": "client_credentials",
        "client_id": graph.client_id,
        "client_secret": graph.client_secret,
        "scope": "https://graph.microsoft.com/.default",
        **form,
    }
    async with http.post(f"{graph.authority}/oauth2/v2.0/token", data=data) as response:
        return response.status, await response.json()


async def test_the_token_endpoint_answers_as_entra_does(
    graph: LoopbackGraph, http: aiohttp.ClientSession
) -> None:
    status, body = await token(graph, http)
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0

    status, body = await token(graph, http, client_secret="wrong")
    assert (status, body["error"]) == (401, "invalid_client")
    assert body["error_codes"] == [7000215]
    status, body = await token(graph, http, grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = await token(graph, http, scope="Mail.Send")
    assert (status, body["error"]) == (400, "invalid_scope")
    assert graph.tokens_issued == 1


async def graph_call(
    graph: LoopbackGraph,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    bearer: str | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    async with http.request(method, f"{graph.graph_url}/{path}", headers=headers, **kwargs) as r:
        return r.status, (await r.json()) if r.content_length else None


async def test_graph_checks_the_bearer_token_and_the_message(
    graph: LoopbackGraph, http: aiohttp.ClientSession
) -> None:
    _, body = await token(graph, http)
    bearer = body["access_token"]
    send = f"users/{MAILBOX}/sendMail"

    status, error = await graph_call(graph, http, "POST", send, json={"message": {}})
    assert (status, error["error"]["code"]) == (401, "InvalidAuthenticationToken")
    status, error = await graph_call(graph, http, "POST", send, bearer="forged", json={})
    assert (status, error["error"]["code"]) == (401, "InvalidAuthenticationToken")
    status, error = await graph_call(
        graph, http, "POST", send, bearer=bearer, json={"message": {"subject": "x"}}
    )
    assert (status, error["error"]["code"]) == (400, "ErrorInvalidRecipients")
    to = [{"emailAddress": {"address": ACCOUNTING}}]
    bad_attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "a",
        "contentBytes": "!!",
    }
    status, error = await graph_call(
        graph,
        http,
        "POST",
        send,
        bearer=bearer,
        json={"message": {"toRecipients": to, "attachments": [bad_attachment]}},
    )
    assert (status, error["error"]["code"]) == (400, "RequestBodyRead")
    huge = base64.b64encode(b"x" * SEND_MAIL_MAX_BYTES).decode()
    oversized = {
        "message": {"toRecipients": to, "attachments": [{**bad_attachment, "contentBytes": huge}]}
    }
    status, error = await graph_call(
        graph,
        http,
        "POST",
        send,
        bearer=bearer,
        data=io.BytesIO(json.dumps(oversized).encode()),
        headers={"Content-Type": "application/json"},
    )
    assert (status, error["error"]["code"]) == (413, "ErrorRequestEntityTooLarge")
    assert graph.delivered == []

    status, _ = await graph_call(
        graph, http, "POST", send, bearer=bearer, json={"message": {"toRecipients": to}}
    )
    assert status == 202
    assert len(graph.delivered) == 1


async def test_search_must_be_a_quoted_phrase_or_one_word(
    graph: LoopbackGraph, http: aiohttp.ClientSession
) -> None:
    _, body = await token(graph, http)
    bearer = body["access_token"]
    graph.seed_message(MAILBOX, subject="Invoice November", sender="a@x.example")
    messages = f"users/{MAILBOX}/messages"

    status, error = await graph_call(
        graph, http, "GET", messages, bearer=bearer, params={"$search": "Invoice November"}
    )
    assert (status, error["error"]["code"]) == (400, "BadRequest")
    status, error = await graph_call(
        graph,
        http,
        "GET",
        messages,
        bearer=bearer,
        params={"$search": '"invoice"', "$filter": "isRead eq false"},
    )
    assert (status, error["error"]["code"]) == (400, "ErrorInvalidUrlQuery")
    status, found = await graph_call(
        graph, http, "GET", messages, bearer=bearer, params={"$search": '"invoice november"'}
    )
    assert status == 200
    assert [m["subject"] for m in found["value"]] == ["Invoice November"]


def test_tls_files_are_reused_while_valid_and_the_key_is_private(tmp_path: Path) -> None:
    first = ensure_tls_files(tmp_path / "tls")
    ca = first.ca_file.read_bytes()

    second = ensure_tls_files(tmp_path / "tls")

    assert second.ca_file.read_bytes() == ca
    assert first.key_file.stat().st_mode & 0o077 == 0
    # Asking for another host name makes new files that name it.
    third = ensure_tls_files(tmp_path / "tls", hosts=("graph.test",))
    assert third.ca_file.read_bytes() != ca
    context = ssl.create_default_context(cafile=str(third.ca_file))
    context.load_cert_chain(third.cert_file, third.key_file)
