"""read_mail and search_mail against the loopback Graph: folders, unread filter, paging through
@odata.nextLink, attachments saved as artifacts, and $search sent as a quoted phrase."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yarl

from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.mail import MailSettings, executors, kql_phrase
from cpa_agent.executors.mail.graph import GraphClient
from cpa_agent.executors.mail.token import TokenProvider
from cpa_agent.executors.testing import MemoryArtifacts
from cpa_cli.demo.graph_server import LoopbackGraph

from .conftest import MAILBOX, MakeMail, context, settings_for

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def seed_inbox(graph: LoopbackGraph) -> dict[str, str]:
    ids = {
        "old": graph.seed_message(
            MAILBOX, subject="Old news", sender="a@x.example", is_read=True, received=T0
        ),
        "invoice": graph.seed_message(
            MAILBOX,
            subject="Invoice November",
            sender="billing@supplier.example",
            body="Please find the invoice attached.",
            attachments=[
                ("invoice 11/2026.pdf", "application/pdf", b"%PDF-1.7 invoice" + bytes(range(256))),
                ("terms.txt", "text/plain", b"net 30"),
            ],
            received=T0 + timedelta(hours=1),
        ),
        "hello": graph.seed_message(
            MAILBOX, subject="Hello", sender="c@x.example", received=T0 + timedelta(hours=2)
        ),
        "archived": graph.seed_message(
            MAILBOX,
            subject="Invoice October",
            sender="billing@supplier.example",
            folder="archive",
            received=T0 - timedelta(days=30),
        ),
    }
    return ids


async def test_read_mail_lists_unread_messages_and_saves_their_attachments(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    ids = seed_inbox(graph)
    artifacts = MemoryArtifacts()

    outputs = await make_mail()["read_mail"].run(
        context(
            "read_mail", {"folder": "inbox", "top": 10, "unread_only": True}, artifacts=artifacts
        )
    )

    assert outputs["count"] == 2
    newest, invoice = outputs["messages"]
    assert (newest["id"], newest["subject"], newest["attachments"]) == (ids["hello"], "Hello", [])
    assert invoice["id"] == ids["invoice"]
    assert invoice["from"] == "billing@supplier.example"
    assert invoice["received"] == "2026-11-30T10:00:00Z"
    assert invoice["is_read"] is False
    assert invoice["attachments"] == ["mail2-1-invoice_11_2026.pdf", "mail2-2-terms.txt"]
    info, data = artifacts.saved["mail2-1-invoice_11_2026.pdf"]
    assert data == b"%PDF-1.7 invoice" + bytes(range(256))
    assert info.media_type == "application/pdf"
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert artifacts.saved["mail2-2-terms.txt"][1] == b"net 30"
    [listing] = graph.calls("messages")
    assert listing.param("$filter") == "isRead eq false"
    assert listing.path == f"/v1.0/users/{MAILBOX}/mailFolders/inbox/messages"


async def test_read_mail_follows_next_links_up_to_top(tmp_path: object) -> None:

    assert isinstance(tmp_path, Path)
    async with LoopbackGraph(tmp_path / "tls", mailboxes=(MAILBOX,), max_page_size=2) as graph:
        for n in range(7):
            graph.seed_message(
                MAILBOX, subject=f"m{n}", sender="a@x.example", received=T0 + timedelta(n)
            )
        read = executors(settings_for(graph))[1]
        try:
            outputs = await read.run(context("read_mail", {"top": 5}))
        finally:
            await read.aclose()  # type: ignore[attr-defined]

    assert [m["subject"] for m in outputs["messages"]] == ["m6", "m5", "m4", "m3", "m2"]
    assert [call.param("$skip") for call in graph.calls("messages")] == [None, "2", "4"]


async def test_read_mail_of_another_folder_without_saving_attachments(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    seed_inbox(graph)
    artifacts = MemoryArtifacts()

    outputs = await make_mail()["read_mail"].run(
        context("read_mail", {"folder": "archive", "save_attachments": False}, artifacts=artifacts)
    )

    assert [m["subject"] for m in outputs["messages"]] == ["Invoice October"]
    assert artifacts.saved == {}
    assert graph.calls("attachments") == []


async def test_read_mail_of_a_folder_graph_does_not_know_fails_with_graphs_error(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail()["read_mail"].run(context("read_mail", {"folder": "nosuchfolder"}))

    assert raised.value.code == "ErrorItemNotFound"
    assert not raised.value.retryable


async def test_read_mail_refuses_a_top_over_the_setting(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail(max_read_messages=5)["read_mail"].run(context("read_mail", {"top": 6}))

    assert raised.value.code == "INVALID_PARAMS"
    assert raised.value.details["field"] == "params.top"
    assert graph.requests == []


async def test_read_mail_skips_attachments_over_the_read_limit(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    graph.seed_message(
        MAILBOX,
        subject="big",
        sender="a@x.example",
        attachments=[
            ("big.bin", "application/octet-stream", b"z" * 2048),
            ("s.txt", "text/plain", b"s"),
        ],
    )
    artifacts = MemoryArtifacts()

    outputs = await make_mail(max_read_attachment_bytes=1024)["read_mail"].run(
        context("read_mail", {}, artifacts=artifacts)
    )

    [message] = outputs["messages"]
    assert message["attachments"] == ["mail1-1-s.txt"]
    assert message["skipped_attachments"][0]["name"] == "big.bin"
    assert list(artifacts.saved) == ["mail1-1-s.txt"]


async def test_search_mail_sends_a_quoted_search_and_lists_the_matches(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    ids = seed_inbox(graph)

    outputs = await make_mail()["search_mail"].run(
        context("search_mail", {"query": "invoice", "top": 5})
    )

    assert {m["id"] for m in outputs["messages"]} == {ids["invoice"], ids["archived"]}
    [call] = graph.calls("messages")
    assert call.path == f"/v1.0/users/{MAILBOX}/messages"
    assert call.param("$search") == '"invoice"'
    assert call.param("$top") == "5"


async def test_search_mail_escapes_quotes_and_spaces_into_one_phrase(
    graph: LoopbackGraph, make_mail: MakeMail
) -> None:
    graph.seed_message(MAILBOX, subject='The "Q4" report: final', sender="a@x.example")
    graph.seed_message(MAILBOX, subject="The Q4 report", sender="a@x.example")

    outputs = await make_mail()["search_mail"].run(
        context("search_mail", {"query": 'the "Q4" report: final'})
    )

    assert [m["subject"] for m in outputs["messages"]] == ['The "Q4" report: final']
    assert graph.calls("messages")[0].param("$search") == '"the \\"Q4\\" report: final"'


def test_kql_phrase_quotes_and_escapes() -> None:
    assert kql_phrase("a b") == '"a b"'
    assert kql_phrase('say "hi"') == '"say \\"hi\\""'
    assert kql_phrase("back\\slash") == '"back\\\\slash"'


async def test_search_mail_in_another_mailbox(graph: LoopbackGraph, make_mail: MakeMail) -> None:
    graph.seed_message("shared@acme.example", subject="Shared invoice", sender="a@x.example")

    outputs = await make_mail()["search_mail"].run(
        context("search_mail", {"query": "invoice", "mailbox": "shared@acme.example"})
    )

    assert [m["subject"] for m in outputs["messages"]] == ["Shared invoice"]


@pytest.mark.parametrize(
    ("action", "params", "field"),
    [
        ("search_mail", {}, "params.query"),
        ("search_mail", {"query": "a\nb"}, "params.query"),
        ("search_mail", {"query": "x", "top": 0}, "params.top"),
        ("read_mail", {"top": 1.5}, "params.top"),
        ("read_mail", {"folder": "../users"}, "params.folder"),
        ("read_mail", {"unread_only": "yes please"}, "params.unread_only"),
    ],
)
async def test_bad_read_and_search_params_are_refused_naming_the_field(
    graph: LoopbackGraph,
    make_mail: MakeMail,
    action: str,
    params: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(ExecutorError) as raised:
        await make_mail()[action].run(context(action, params))

    assert raised.value.code == "INVALID_PARAMS"
    assert raised.value.details["field"] == field
    assert graph.requests == []


@pytest.mark.parametrize(
    ("link", "followed"),
    [
        ("https://graph.example/v1.0/users/u/messages?$skip=2", True),
        ("https://evil.example/v1.0/users/u/messages?$skip=2", False),
        ("http://graph.example/v1.0/users/u/messages", False),
        ("https://graph.example:8443/v1.0/users/u/messages", False),
        ("https://graph.example/v1.0evil/users/u/messages", False),
        ("https://graph.example/beta/users/u/messages", False),
    ],
)
def test_next_links_are_followed_on_graph_only(link: str, followed: bool) -> None:
    # The bearer token goes with every followed link: never to another host, scheme or API.
    settings = MailSettings(graph_url="https://graph.example/v1.0/")
    client = GraphClient(settings, TokenProvider(settings))

    assert client.same_origin(yarl.URL(link)) is followed
