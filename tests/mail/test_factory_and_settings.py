"""The entry-point factory: unavailable (saying what is missing) until CPA_MAIL_* is complete,
the secret read from the environment or a file, and never shown by settings or errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cpa_agent.executors.discovery import ExecutorUnavailable
from cpa_agent.executors.mail import MailSettings, executors
from cpa_cli.demo.graph_server import LoopbackGraph

from .conftest import ACCOUNTING, context


@pytest.fixture(autouse=True)
def _clean_mail_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CPA_MAIL_"):
            monkeypatch.delenv(key)


def test_without_configuration_the_factory_says_what_is_missing() -> None:
    with pytest.raises(ExecutorUnavailable) as raised:
        executors()

    message = str(raised.value)
    for variable in ("CPA_MAIL_TENANT_ID", "CPA_MAIL_CLIENT_ID", "CPA_MAIL_MAILBOX"):
        assert variable in message
    assert "CPA_MAIL_CLIENT_SECRET or CPA_MAIL_CLIENT_SECRET_FILE" in message


def test_malformed_settings_make_the_factory_unavailable_without_echoing_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CPA_MAIL_CLIENT_SECRET", "s3cret-value-not-to-echo")
    monkeypatch.setenv("CPA_MAIL_GRAPH_URL", "http://graph.example/v1.0")

    with pytest.raises(ExecutorUnavailable) as raised:
        executors()

    assert "graph_url must be an https URL" in str(raised.value)
    assert "s3cret-value-not-to-echo" not in str(raised.value)


def test_both_secret_sources_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CPA_MAIL_CLIENT_SECRET", "one")
    monkeypatch.setenv("CPA_MAIL_CLIENT_SECRET_FILE", str(tmp_path / "two"))

    with pytest.raises(ExecutorUnavailable, match="not both"):
        executors()


def test_settings_never_show_the_secret() -> None:
    settings = MailSettings(client_secret="hunter2-secret")

    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings.model_dump())


async def test_from_the_environment_with_a_secret_file_the_executors_send_mail(
    graph: LoopbackGraph, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in graph.agent_environment(secret_file=tmp_path / "secret").items():
        monkeypatch.setenv(key, value)
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0

    built = executors()
    try:
        assert sorted(executor.action for executor in built) == [
            "read_mail",
            "search_mail",
            "send_mail",
        ]
        send = next(executor for executor in built if executor.action == "send_mail")
        await send.run(context("send_mail", {"to": ACCOUNTING, "subject": "via file"}))
    finally:
        for executor in built:
            await executor.aclose()  # type: ignore[attr-defined]

    assert [mail.subject for mail in graph.delivered] == ["via file"]


async def test_an_unreadable_secret_file_fails_not_retryable_naming_the_file(
    graph: LoopbackGraph, tmp_path: Path
) -> None:
    from cpa_agent.executors.base import ExecutorError

    from .conftest import settings_for

    missing = tmp_path / "no-such-secret"
    [send, *_others] = executors(
        settings_for(graph, client_secret=None, client_secret_file=missing)
    )
    try:
        with pytest.raises(ExecutorError) as raised:
            await send.run(context("send_mail", {"to": ACCOUNTING}))
    finally:
        await send.aclose()  # type: ignore[attr-defined]

    assert raised.value.code == "MAIL_SECRET_UNAVAILABLE"
    assert str(missing) in raised.value.message
    assert not raised.value.retryable
    assert graph.requests == []


def test_every_mail_setting_is_documented_and_only_those() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"
    documented = set(re.findall(r"`(CPA_MAIL_[A-Z_]+)`", doc.read_text()))
    assert documented == {f"CPA_MAIL_{name.upper()}" for name in MailSettings.model_fields}
