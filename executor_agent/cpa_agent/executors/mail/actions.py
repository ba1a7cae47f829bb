"""The mail actions: send_mail (ACTION_TYPE_SEND_MAIL), read_mail and search_mail (custom).

They share one MailService (settings, MSAL token provider, Graph client); the Graph rules
(refresh on 401, Retry-After on 429, Graph's errors) live in graph.py.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any
from urllib.parse import quote

import yarl

from cpa_agent.executors.base import ExecutionContext, ExecutorError
from cpa_agent.executors.mail.graph import GraphClient
from cpa_agent.executors.mail.params import (
    INVALID_PARAMS,
    ReadMailParams,
    SearchMailParams,
    SendMailParams,
    parse_params,
)
from cpa_agent.executors.mail.settings import MailSettings
from cpa_agent.executors.mail.token import TokenProvider

logger = logging.getLogger(__name__)

ATTACHMENTS_TOO_LARGE = "ATTACHMENTS_TOO_LARGE"
"""The artifacts to attach are larger than CPA_MAIL_MAX_SEND_ATTACHMENT_BYTES: not retryable."""

_FILE_ATTACHMENT = "#microsoft.graph.fileAttachment"
_MESSAGE_FIELDS = "id,subject,from,receivedDateTime,isRead,hasAttachments"
# Pages followed per listing at most: `top` is reached long before with Graph's page sizes.
_MAX_PAGES = 50
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class MailService:
    """What the three actions share; closed once by whichever executor the agent closes."""

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings
        self.tokens = TokenProvider(settings)
        self.graph = GraphClient(settings, self.tokens)

    def mailbox_path(self, mailbox: str | None) -> str:
        user = mailbox or self.settings.mailbox
        if not user:
            raise ExecutorError(
                INVALID_PARAMS,
                "params.mailbox is required: this agent has no default mailbox (CPA_MAIL_MAILBOX)",
                retryable=False,
                details={"field": "params.mailbox"},
            )
        return f"users/{quote(user, safe='@')}"

    def check_top(self, top: int) -> None:
        if top > self.settings.max_read_messages:
            raise ExecutorError(
                INVALID_PARAMS,
                f"params.top: at most {self.settings.max_read_messages} messages "
                "(CPA_MAIL_MAX_READ_MESSAGES)",
                retryable=False,
                details={"field": "params.top"},
            )

    async def list_messages(
        self,
        ctx: ExecutionContext,
        url: yarl.URL,
        query: dict[str, str],
        *,
        top: int,
        what: str,
    ) -> list[dict[str, Any]]:
        """Up to `top` messages of a listing, following @odata.nextLink on Graph only."""
        messages: list[dict[str, Any]] = []
        params: dict[str, str] | None = query
        for _ in range(_MAX_PAGES):
            response = await self.graph.call("GET", url, params=params, ctx=ctx, what=what)
            page = response.body if isinstance(response.body, dict) else {}
            values = page.get("value")
            if not isinstance(values, list):
                raise ExecutorError(
                    "GRAPH_BAD_RESPONSE",
                    f"{what}: the answer has no message list",
                    retryable=True,
                )
            messages.extend(m for m in values if isinstance(m, dict))
            next_link = page.get("@odata.nextLink")
            if len(messages) >= top or not isinstance(next_link, str):
                break
            url = yarl.URL(next_link, encoded=True)
            if not self.graph.same_origin(url):
                # The bearer token goes to Graph only.
                raise ExecutorError(
                    "GRAPH_BAD_RESPONSE",
                    f"{what}: @odata.nextLink points away from {self.graph.base_url}",
                    retryable=False,
                )
            params = None  # the link carries the query
        return messages[:top]

    async def aclose(self) -> None:
        await self.graph.aclose()
        self.tokens.close()


class SendMailExecutor:
    """Sends a mail from the mailbox, with the task's artifact inputs attached."""

    action = "send_mail"
    params_model = SendMailParams

    def __init__(self, service: MailService) -> None:
        self._mail = service

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params = parse_params(ctx, SendMailParams)
        mailbox = self._mail.mailbox_path(params.mailbox)
        attachments, listed = await self._attachments(ctx)
        message: dict[str, Any] = {
            "subject": params.subject,
            "body": {
                "contentType": "HTML" if params.content_type == "html" else "Text",
                "content": params.body,
            },
            "toRecipients": [_recipient(address) for address in params.to],
            "ccRecipients": [_recipient(address) for address in params.cc],
        }
        if attachments:
            message["attachments"] = attachments
        await ctx.progress(None, f"sending mail to {len(params.to) + len(params.cc)} recipients")
        await self._mail.graph.call(
            "POST",
            self._mail.graph.url(f"{mailbox}/sendMail"),
            body={"message": message, "saveToSentItems": params.save_to_sent_items},
            ctx=ctx,
            what="sendMail",
        )
        logger.info(
            "mail: sent a message to %d recipients with %d attachments",
            len(params.to) + len(params.cc),
            len(attachments),
        )
        return {
            "sent": True,
            "mailbox": params.mailbox or self._mail.settings.mailbox,
            "to": list(params.to),
            "cc": list(params.cc),
            "subject": params.subject,
            "attachments": listed,
        }

    async def _attachments(
        self, ctx: ExecutionContext
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every artifact input, read (checked by sha256 by the artifact access) and encoded;
        all are read before anything is sent, so an oversized set sends nothing."""
        limit = self._mail.settings.max_send_attachment_bytes
        total = 0
        attachments: list[dict[str, Any]] = []
        listed: list[dict[str, Any]] = []
        for input_name in sorted(ctx.todo.inputs):
            if ctx.todo.inputs[input_name].WhichOneof("target") != "artifact_name":
                continue
            info, data = await ctx.artifacts.read_input(input_name)
            total += len(data)
            if total > limit:
                raise ExecutorError(
                    ATTACHMENTS_TOO_LARGE,
                    f"the attachments come to more than {limit} bytes (input {input_name!r}, "
                    f"artifact {info.name!r}, {info.size_bytes} bytes, passes it; "
                    "CPA_MAIL_MAX_SEND_ATTACHMENT_BYTES); nothing was sent",
                    retryable=False,
                    details={"input": input_name, "limit_bytes": limit},
                )
            attachments.append(
                {
                    "@odata.type": _FILE_ATTACHMENT,
                    "name": info.name,
                    "contentType": info.media_type or "application/octet-stream",
                    "contentBytes": base64.b64encode(data).decode("ascii"),
                }
            )
            listed.append(
                {
                    "input": input_name,
                    "name": info.name,
                    "media_type": info.media_type,
                    "size_bytes": info.size_bytes,
                    "sha256": info.sha256,
                }
            )
        return attachments, listed

    async def aclose(self) -> None:
        await self._mail.aclose()


class ReadMailExecutor:
    """Reads the newest messages of a folder; file attachments become artifacts."""

    action = "read_mail"
    params_model = ReadMailParams

    def __init__(self, service: MailService) -> None:
        self._mail = service

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params = parse_params(ctx, ReadMailParams)
        self._mail.check_top(params.top)
        mailbox = self._mail.mailbox_path(params.mailbox)
        query = {"$top": str(params.top), "$select": _MESSAGE_FIELDS}
        if params.unread_only:
            query["$filter"] = "isRead eq false"
        folder = quote(params.folder, safe="")
        messages = await self._mail.list_messages(
            ctx,
            self._mail.graph.url(f"{mailbox}/mailFolders/{folder}/messages"),
            query,
            top=params.top,
            what=f"listing folder {params.folder!r}",
        )
        summaries = []
        for index, message in enumerate(messages, start=1):
            summary = _summary(message)
            if params.save_attachments and message.get("hasAttachments") is True:
                saved, skipped = await self._save_attachments(ctx, mailbox, index, summary["id"])
                summary["attachments"] = saved
                if skipped:
                    summary["skipped_attachments"] = skipped
            summaries.append(summary)
        return {"folder": params.folder, "count": len(summaries), "messages": summaries}

    async def _save_attachments(
        self, ctx: ExecutionContext, mailbox: str, index: int, message_id: str
    ) -> tuple[list[str], list[dict[str, str]]]:
        response = await self._mail.graph.call(
            "GET",
            self._mail.graph.url(f"{mailbox}/messages/{quote(message_id, safe='')}/attachments"),
            ctx=ctx,
            what="listing attachments",
        )
        body = response.body if isinstance(response.body, dict) else {}
        values = body.get("value")
        saved: list[str] = []
        skipped: list[dict[str, str]] = []
        limit = self._mail.settings.max_read_attachment_bytes
        for attachment in values if isinstance(values, list) else []:
            if not isinstance(attachment, dict):
                continue
            name = str(attachment.get("name") or "attachment")
            if attachment.get("@odata.type") != _FILE_ATTACHMENT:
                skipped.append({"name": name, "reason": "not a file attachment"})
                continue
            try:
                data = base64.b64decode(str(attachment.get("contentBytes", "")), validate=True)
            except (binascii.Error, ValueError):
                skipped.append({"name": name, "reason": "contentBytes is not base64"})
                continue
            if len(data) > limit:
                skipped.append(
                    {"name": name, "reason": f"larger than {limit} bytes (max_read_attachment)"}
                )
                continue
            artifact = f"mail{index}-{len(saved) + 1}-{_safe_name(name)}"
            media_type = str(attachment.get("contentType") or "application/octet-stream")
            await ctx.artifacts.save(artifact, media_type, data)
            saved.append(artifact)
        return saved, skipped

    async def aclose(self) -> None:
        await self._mail.aclose()


class SearchMailExecutor:
    """Searches the mailbox with Graph's $search; lists what it found."""

    action = "search_mail"
    params_model = SearchMailParams

    def __init__(self, service: MailService) -> None:
        self._mail = service

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params = parse_params(ctx, SearchMailParams)
        self._mail.check_top(params.top)
        mailbox = self._mail.mailbox_path(params.mailbox)
        query = {
            "$search": kql_phrase(params.query),
            "$top": str(params.top),
            "$select": _MESSAGE_FIELDS,
        }
        messages = await self._mail.list_messages(
            ctx,
            self._mail.graph.url(f"{mailbox}/messages"),
            query,
            top=params.top,
            what="searching messages",
        )
        summaries = [_summary(message) for message in messages]
        return {"query": params.query, "count": len(summaries), "messages": summaries}

    async def aclose(self) -> None:
        await self._mail.aclose()


def kql_phrase(query: str) -> str:
    """`query` as one quoted $search phrase: Graph wants the value in double quotes, and a
    quote or backslash inside escaped, or it reads the text as KQL syntax."""
    escaped = query.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _recipient(address: str) -> dict[str, Any]:
    return {"emailAddress": {"address": address}}


def _summary(message: dict[str, Any]) -> dict[str, Any]:
    sender = message.get("from")
    address = sender.get("emailAddress") if isinstance(sender, dict) else None
    address = address if isinstance(address, dict) else {}
    return {
        "id": str(message.get("id", "")),
        "subject": str(message.get("subject") or ""),
        "from": str(address.get("address") or ""),
        "from_name": str(address.get("name") or ""),
        "received": str(message.get("receivedDateTime") or ""),
        "is_read": bool(message.get("isRead", False)),
        "attachments": [],
    }


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE_NAME.sub("_", name).strip("._") or "attachment"
    return cleaned[-80:]
