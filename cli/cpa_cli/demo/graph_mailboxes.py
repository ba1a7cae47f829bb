"""The mailboxes behind the loopback Graph: stored messages, delivered mail, and the message
resource shapes Graph answers with. No HTTP here: graph_server.py serves it."""

from __future__ import annotations

import base64
import hashlib
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

WELL_KNOWN_FOLDERS = ("inbox", "sentitems", "drafts", "deleteditems", "archive", "junkemail")
FILE_ATTACHMENT = "#microsoft.graph.fileAttachment"


@dataclass(frozen=True)
class DeliveredAttachment:
    """One file attachment as it arrived: name, media type and the decoded bytes."""

    name: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class DeliveredMail:
    """One accepted sendMail: who sent it to whom, what it said, what was attached."""

    mailbox: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    body: str
    content_type: str
    attachments: tuple[DeliveredAttachment, ...]
    saved_to_sent_items: bool
    time: datetime


@dataclass
class StoredMessage:
    id: str
    folder: str
    subject: str
    body: str
    content_type: str
    sender: str
    sender_name: str
    to: tuple[str, ...]
    received: datetime
    is_read: bool
    attachments: list[DeliveredAttachment] = field(default_factory=list)

    def resource(self, select: set[str] | None) -> dict[str, Any]:
        """The message as Graph's `message` resource, limited to `select` (plus id)."""
        address = {
            "emailAddress": {"name": self.sender_name or self.sender, "address": self.sender}
        }
        full: dict[str, Any] = {
            "id": self.id,
            "createdDateTime": _iso(self.received),
            "receivedDateTime": _iso(self.received),
            "subject": self.subject,
            "bodyPreview": self.body[:255],
            "body": {"contentType": self.content_type.lower(), "content": self.body},
            "from": address,
            "sender": address,
            "toRecipients": [{"emailAddress": {"address": a, "name": a}} for a in self.to],
            "isRead": self.is_read,
            "hasAttachments": bool(self.attachments),
            "parentFolderId": self.folder,
        }
        if select is None:
            return full
        return {key: value for key, value in full.items() if key in select or key == "id"}

    def matches(self, phrase: str) -> bool:
        """$search as a phrase: in the subject, body or sender, case-insensitively."""
        needle = phrase.lower()
        haystacks = (self.subject, self.body, self.sender, self.sender_name)
        return any(needle in text.lower() for text in haystacks)


def attachment_resource(index: int, attachment: DeliveredAttachment) -> dict[str, Any]:
    return {
        "@odata.type": FILE_ATTACHMENT,
        "id": f"att{index}",
        "name": attachment.name,
        "contentType": attachment.content_type,
        "size": attachment.size,
        "isInline": False,
        "contentBytes": base64.b64encode(attachment.data).decode("ascii"),
    }


class Mailboxes:
    """Mailboxes by lower-cased address; messages kept newest first when listed."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._boxes: dict[str, list[StoredMessage]] = {}
        self._ids = itertools.count(1)
        for address in addresses:
            self.add(address)

    def add(self, address: str) -> None:
        self._boxes.setdefault(address.lower(), [])

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.lower() in self._boxes

    def store(
        self,
        mailbox: str,
        *,
        folder: str,
        subject: str,
        body: str,
        sender: str,
        sender_name: str = "",
        to: tuple[str, ...] = (),
        content_type: str = "Text",
        is_read: bool = False,
        attachments: tuple[DeliveredAttachment, ...] = (),
        received: datetime | None = None,
    ) -> str:
        self.add(mailbox)
        message = StoredMessage(
            id=f"AAMk{next(self._ids):08d}",
            folder=folder,
            subject=subject,
            body=body,
            content_type=content_type,
            sender=sender,
            sender_name=sender_name,
            to=to,
            received=received or datetime.now(UTC),
            is_read=is_read,
            attachments=list(attachments),
        )
        self._boxes[mailbox.lower()].append(message)
        return message.id

    def deliver(self, mail: DeliveredMail) -> None:
        """Puts a sent mail in the recipients' inboxes (those that live here) and, when asked,
        in the sender's sent items."""
        for recipient in (*mail.to, *mail.cc):
            if recipient in self:
                self.store(
                    recipient,
                    folder="inbox",
                    subject=mail.subject,
                    body=mail.body,
                    sender=mail.mailbox,
                    to=mail.to,
                    content_type=mail.content_type,
                    attachments=mail.attachments,
                    received=mail.time,
                )
        if mail.saved_to_sent_items:
            self.store(
                mail.mailbox,
                folder="sentitems",
                subject=mail.subject,
                body=mail.body,
                sender=mail.mailbox,
                to=mail.to,
                content_type=mail.content_type,
                is_read=True,
                attachments=mail.attachments,
                received=mail.time,
            )

    def messages(self, mailbox: str, folder: str | None) -> list[StoredMessage]:
        """A folder's messages (every folder's when None), newest first."""
        found = [m for m in self._boxes[mailbox.lower()] if folder is None or m.folder == folder]
        return sorted(found, key=lambda m: (m.received, m.id), reverse=True)

    def message(self, mailbox: str, message_id: str) -> StoredMessage | None:
        return next((m for m in self._boxes[mailbox.lower()] if m.id == message_id), None)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
