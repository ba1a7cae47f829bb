"""U+0000 (NUL) in every text of a request: PostgreSQL's text and jsonb cannot hold it, SQLite can,
so a NUL the server does not refuse answers INTERNAL in one store and is stored in the other.

`nul_cases` makes, from a valid request, one copy per text it holds with NUL put in there: every
string field (a repeated field's entry, a map's key and value) and every JSON value (a string in
it and a key), each with the field the server must name in its INVALID_FIELD answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import scheduler_service_pb2 as svc

from .calls import Outcome, error_details
from .strategies import FD, field_paths

NUL_TEXT = "a\x00b"
JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


@dataclass(frozen=True)
class NulCase:
    request: Message
    field: str
    """The field the answer must name."""


def _server_path(path: str) -> str:
    """A field_paths path (map entries as `[<repr of key>]`) as the server names it."""
    return re.sub(r"\['([^']*)'\]", r"[\1]", path)


def _json(content: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(content)
    return struct


def nul_cases(template: Message) -> Iterator[NulCase]:
    """Copies of the template, each with NUL in one of its texts (see the module doc)."""
    for index, (path, _, fd) in enumerate(field_paths(template)):
        name = _server_path(path)
        is_map = fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry
        if fd.type == FD.TYPE_STRING:
            value: object = [NUL_TEXT] if fd.is_repeated else NUL_TEXT
            yield _case(template, index, value, f"{name}[0]" if fd.is_repeated else name)
        elif is_map:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.type == FD.TYPE_STRING:
                yield _case(template, index, {"k": NUL_TEXT}, f"{name}[k]")
            if key_fd.type == FD.TYPE_STRING and value_fd.type == FD.TYPE_STRING:
                yield _case(template, index, {NUL_TEXT: "v"}, name)
        elif fd.type == FD.TYPE_MESSAGE and fd.message_type.full_name == "google.protobuf.Struct":
            where = f"{name}[0]" if fd.is_repeated else name
            cases: tuple[tuple[dict[str, Any], str], ...] = (
                ({"x": NUL_TEXT}, f"{where}.x"),
                ({"x": [1, {"y": NUL_TEXT}]}, f"{where}.x[1].y"),
                ({NUL_TEXT: 1}, where),
            )
            for content, field in cases:
                struct = _json(content)
                yield _case(template, index, [struct] if fd.is_repeated else struct, field)


def _case(template: Message, index: int, value: object, field: str) -> NulCase:
    request = type(template)()
    request.CopyFrom(template)
    _, parent, fd = field_paths(request)[index]
    target = getattr(parent, fd.name)
    if fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        target.clear()
        target.update(value)
    elif fd.is_repeated:
        del target[:]
        if fd.type == FD.TYPE_MESSAGE:
            for item in value:  # type: ignore[attr-defined]
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif fd.type == FD.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(parent, fd.name, value)
    return NulCase(request, field)


# The LAM envelope's identifiers: refused as ids are, MALFORMED_MESSAGE (lam.py).
LAM_IDS = frozenset(
    {
        "id",
        "sender",
        "correlation.conversation_id",
        "correlation.reply_with",
        "correlation.in_reply_to",
    }
)


def nul_answer_problem(case: NulCase, outcome: Outcome) -> str | None:
    """Why the answer is not INVALID_ARGUMENT, INVALID_FIELD naming the case's field (or None).
    A LAM message (SendMessage) is answered as any malformed one: a NOT_UNDERSTOOD reply naming
    the field inside the message."""
    if isinstance(case.request, svc.SendMessageRequest):
        return _lam_problem(case, outcome)
    info, bad = error_details(outcome)
    fields = [v.field for v in bad.field_violations]
    invalid = outcome.code.name == "INVALID_ARGUMENT" and info.reason == "INVALID_FIELD"
    if invalid and fields == [case.field]:
        return None
    return f"{case.field}: {outcome.describe()} (reason {info.reason or '-'}, fields {fields})"


def _lam_problem(case: NulCase, outcome: Outcome) -> str | None:
    field = case.field.removeprefix("message.")
    if outcome.code.name != "OK":
        return f"{field}: {outcome.describe()}, not a NOT_UNDERSTOOD reply"
    reply = outcome.responses[0].reply
    reason = (
        error_pb2.ERROR_REASON_MALFORMED_MESSAGE
        if field in LAM_IDS
        else (error_pb2.ERROR_REASON_INVALID_FIELD)
    )
    got = (reply.performative, reply.not_understood.reason, reply.not_understood.field)
    if got == (lam.PERFORMATIVE_NOT_UNDERSTOOD, reason, field):
        return None
    return f"{field}: replied {lam.Performative.Name(reply.performative)} {reply.not_understood}"
