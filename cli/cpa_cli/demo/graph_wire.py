"""Wire shapes of the loopback Graph and token endpoint: Graph's and Entra's error bodies,
the sendMail payload as Graph checks it, and $search's phrase syntax."""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .graph_mailboxes import FILE_ATTACHMENT, DeliveredAttachment, DeliveredMail


def graph_error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """Graph's error body, with the request id Graph adds."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": secrets.token_hex(16),
            },
        }
    }
    return web.json_response(body, status=status, headers=headers)


def invalid_token(message: str) -> web.Response:
    return graph_error(
        401,
        "InvalidAuthenticationToken",
        message,
        headers={"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
    )


def aad_error(
    status: int,
    error: str,
    description: str,
    *,
    codes: list[int] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Microsoft Entra's OAuth error body (RFC 6749 plus its own fields)."""
    trace = secrets.token_hex(16)
    body = {
        "error": error,
        "error_description": f"{description}\r\nTrace ID: {trace}\r\nTimestamp: "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%SZ')}",
        "error_codes": codes or [],
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "trace_id": trace,
        "correlation_id": secrets.token_hex(16),
    }
    return web.json_response(body, status=status, headers=headers)


def search_phrase(value: str) -> str | web.Response:
    """$search's value: a quoted phrase (quotes and backslashes escaped inside), or one bare
    word; anything else is a KQL syntax error, as Graph says."""
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        inner, out, escaped = value[1:-1], [], False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return _search_syntax_error(value)
            else:
                out.append(char)
        return "".join(out)
    if value and all(char.isalnum() or char in "-_.@" for char in value):
        return value
    return _search_syntax_error(value)


def _search_syntax_error(value: str) -> web.Response:
    return graph_error(
        400, "BadRequest", f"Syntax error: the $search value '{value[:80]}' is not valid KQL."
    )


def parse_mail(user: str, payload: Any) -> DeliveredMail | web.Response:
    """sendMail's body checked as Graph checks it; a DeliveredMail, or Graph's 400."""
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, dict):
        return graph_error(400, "ErrorInvalidRequest", "Empty Payload. JSON content expected.")
    recipients: dict[str, list[str]] = {}
    for key in ("toRecipients", "ccRecipients"):
        entries = message.get(key, [])
        addresses = [_address_of(entry) for entry in entries] if isinstance(entries, list) else []
        if not isinstance(entries, list) or not all(addresses):
            return graph_error(
                400,
                "ErrorInvalidRecipients",
                "At least one recipient isn't valid., A message can't be sent because it "
                "contains no recipients.",
            )
        recipients[key] = [a for a in addresses if a]
    if not recipients["toRecipients"]:
        return graph_error(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains "
            "no recipients.",
        )
    body = message.get("body", {"contentType": "Text", "content": ""})
    content_type = body.get("contentType", "Text") if isinstance(body, dict) else None
    if not isinstance(content_type, str) or content_type.lower() not in ("text", "html"):
        return graph_error(
            400, "RequestBodyRead", "Cannot convert the literal to the expected type 'bodyType'."
        )
    attachments = []
    for entry in message.get("attachments", []) or []:
        if not isinstance(entry, dict) or entry.get("@odata.type") != FILE_ATTACHMENT:
            return graph_error(
                400, "ErrorInvalidRequest", "Only #microsoft.graph.fileAttachment is accepted."
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            return graph_error(400, "ErrorInvalidRequest", "An attachment needs a name.")
        try:
            data = base64.b64decode(str(entry.get("contentBytes", "")), validate=True)
        except (binascii.Error, ValueError):
            return graph_error(
                400, "RequestBodyRead", "The attachment's contentBytes is not valid base64."
            )
        attachments.append(
            DeliveredAttachment(
                name=name,
                content_type=str(entry.get("contentType") or "application/octet-stream"),
                data=data,
            )
        )
    subject = message.get("subject", "")
    content = body.get("content", "") if isinstance(body, dict) else ""
    return DeliveredMail(
        mailbox=user,
        to=tuple(recipients["toRecipients"]),
        cc=tuple(recipients["ccRecipients"]),
        subject=subject if isinstance(subject, str) else "",
        body=content if isinstance(content, str) else "",
        content_type=content_type,
        attachments=tuple(attachments),
        saved_to_sent_items=payload.get("saveToSentItems", True) is not False,
        time=datetime.now(UTC),
    )


def _address_of(entry: Any) -> str | None:
    email = entry.get("emailAddress") if isinstance(entry, dict) else None
    address = email.get("address") if isinstance(email, dict) else None
    if isinstance(address, str) and "@" in address and not any(c.isspace() for c in address):
        return address
    return None
