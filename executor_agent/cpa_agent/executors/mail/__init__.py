"""Mail on Microsoft Graph through MSAL: send_mail, read_mail and search_mail.

`executors()` is the entry point (group `cpa.executors`, name `mail`): it reads CPA_MAIL_* and
raises ExecutorUnavailable, saying what is missing, when the agent is not configured for mail.
See docs/MAIL.md.
"""

from __future__ import annotations

from cpa_agent.executors.base import Executor
from cpa_agent.executors.discovery import ExecutorUnavailable
from cpa_agent.executors.mail.actions import (
    ATTACHMENTS_TOO_LARGE,
    MailService,
    ReadMailExecutor,
    SearchMailExecutor,
    SendMailExecutor,
    kql_phrase,
)
from cpa_agent.executors.mail.params import ReadMailParams, SearchMailParams, SendMailParams
from cpa_agent.executors.mail.settings import MailSettings, load_settings


def executors(settings: MailSettings | None = None) -> list[Executor]:
    """The three mail executors sharing one MSAL application and Graph client. Without
    `settings`, read from CPA_MAIL_*; raises ExecutorUnavailable when they are incomplete or
    malformed (the message names the variables, never a secret)."""
    if settings is None:
        try:
            settings = load_settings()
        except ValueError as error:
            raise ExecutorUnavailable(str(error)) from None
    missing = settings.missing()
    if missing:
        raise ExecutorUnavailable(f"mail is not configured: set {', '.join(missing)}")
    service = MailService(settings)
    return [SendMailExecutor(service), ReadMailExecutor(service), SearchMailExecutor(service)]


__all__ = [
    "executors",
    "MailSettings",
    "MailService",
    "SendMailExecutor",
    "ReadMailExecutor",
    "SearchMailExecutor",
    "SendMailParams",
    "ReadMailParams",
    "SearchMailParams",
    "ATTACHMENTS_TOO_LARGE",
    "kql_phrase",
]
