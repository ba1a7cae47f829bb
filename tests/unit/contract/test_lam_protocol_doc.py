"""Checks docs/LAM_PROTOCOL.md against the LAM contract (cpa.lam.v1.LamMessage).

Every fenced block with the info string `json lam` must be a valid LAM message in protobuf's
canonical JSON form whose body matches its performative, and the conversations it shows must be
correlated the way the page says (the complete conversation, the contract net, the proposal).
The field tables must list exactly the fields of the contract. Plain `json` blocks are not
checked.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
from google.api import field_behavior_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# Registers google.rpc.ErrorInfo, so `status.details` entries (Any) can be parsed.
from google.rpc import error_details_pb2  # noqa: F401

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2

DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "LAM_PROTOCOL.md"
LAM_INFO_STRING = "json lam"
CONVERSATION_HEADING = "A complete conversation"
CONTRACT_NET_HEADING = "Contract net: discover, offer, accept_proposal, assign"
PROPOSALS_HEADING = "Proposals"
PERFORMATIVES_HEADING = "Performatives"
ERROR_REASONS_HEADING = "Error reasons"
MINIMUM_EXAMPLE_COUNT = 8

PERFORMATIVE_PREFIX = "PERFORMATIVE_"
ERROR_REASON_PREFIX = "ERROR_REASON_"

# Performative -> name of the body field it carries, derived from the enum so it cannot drift:
# PERFORMATIVE_NOT_UNDERSTOOD -> "not_understood".
BODY_FIELD_BY_PERFORMATIVE: dict[int, str] = {
    value.number: value.name.removeprefix(PERFORMATIVE_PREFIX).lower()
    for value in lam_message_pb2.Performative.DESCRIPTOR.values
    if value.number != lam_message_pb2.PERFORMATIVE_UNSPECIFIED
}

# Message types whose JSON form is not an object of their own fields (well-known types).
_OPAQUE_JSON_TYPES = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Duration",
        "google.protobuf.ListValue",
        "google.protobuf.Struct",
        "google.protobuf.Timestamp",
        "google.protobuf.Value",
    }
)
_FENCE = re.compile(r"^```(?P<info>.*)$")
_BACKTICKED_FIRST_CELL = re.compile(r"^\|\s*`(?P<name>[^`]+)`\s*\|")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocExample:
    """One `json lam` block of the page: where it is and what it says."""

    index: int
    heading: str
    line_number: int
    text: str

    def parse(self) -> lam_message_pb2.LamMessage:
        message = lam_message_pb2.LamMessage()
        json_format.Parse(self.text, message, ignore_unknown_fields=False)
        return message

    @property
    def test_id(self) -> str:
        try:
            performative = json.loads(self.text).get("performative", "none")
        except (json.JSONDecodeError, AttributeError):
            performative = "invalid-json"
        if isinstance(performative, int) and performative in BODY_FIELD_BY_PERFORMATIVE:
            performative = lam_message_pb2.Performative.DESCRIPTOR.values_by_number[
                performative
            ].name
        return f"{str(performative).removeprefix(PERFORMATIVE_PREFIX).lower()}-{self.index}"


@cache
def _doc_text() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def _fenced_blocks() -> list[tuple[str, str, int, str]]:
    """Every fenced block as (info string, enclosing `##` heading, first line number, text)."""
    blocks: list[tuple[str, str, int, str]] = []
    heading = ""
    open_info: str | None = None
    open_line = 0
    body: list[str] = []
    for line_number, line in enumerate(_doc_text().splitlines(), start=1):
        fence = _FENCE.match(line)
        if open_info is not None:
            if fence is not None and fence["info"].strip() == "":
                blocks.append((open_info, heading, open_line, "\n".join(body)))
                open_info = None
            else:
                body.append(line)
        elif fence is not None:
            open_info, open_line, body = fence["info"], line_number, []
        elif line.startswith("## "):
            heading = line.removeprefix("## ").strip()
    assert open_info is None, f"fenced block opened at line {open_line} is never closed"
    return blocks


def _examples() -> list[DocExample]:
    blocks = [block for block in _fenced_blocks() if block[0] == LAM_INFO_STRING]
    return [
        DocExample(index=index, heading=heading, line_number=line_number, text=text)
        for index, (_, heading, line_number, text) in enumerate(blocks)
    ]


def _section(heading: str) -> str:
    """The text under one `##` heading, up to the next `##` heading."""
    match = re.search(
        rf"^## {re.escape(heading)}\n(?P<body>.*?)(?=^## |\Z)", _doc_text(), re.M | re.S
    )
    assert match is not None, f"docs/LAM_PROTOCOL.md has no section '## {heading}'"
    return match["body"]


def _first_cell_names(section_text: str) -> list[str]:
    """Backticked names in the first cell of each table row of a section."""
    names: list[str] = []
    for line in section_text.splitlines():
        match = _BACKTICKED_FIRST_CELL.match(line)
        if match is not None:
            names.append(match["name"])
    return names


def _section_messages(heading: str) -> list[lam_message_pb2.LamMessage]:
    """The `json lam` examples under one `##` heading, parsed, in page order."""
    messages = [example.parse() for example in EXAMPLES if example.heading == heading]
    assert messages, f"section '## {heading}' shows no ```{LAM_INFO_STRING} example"
    return messages


def _reply_key(message: lam_message_pb2.LamMessage) -> str:
    """What a reply to `message` must carry as in_reply_to."""
    return message.correlation.reply_with or message.id


def _is_required(field: FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


def _is_set(message: Message, field: FieldDescriptor) -> bool:
    value = getattr(message, field.name)
    if field.is_repeated:
        return len(value) > 0
    if field.message_type is not None:
        return message.HasField(field.name)
    return bool(value != field.default_value)


def _missing_required_fields(message: Message, path: str) -> list[str]:
    """Paths of fields marked (google.api.field_behavior) = REQUIRED that are not set."""
    # Generated messages have a Descriptor; the generic stub also allows upb's, with the same API.
    message_type = cast(Descriptor, message.DESCRIPTOR)
    missing = [
        f"{path}{field.name}"
        for field in message_type.fields
        if _is_required(field) and not _is_set(message, field)
    ]
    for field, value in message.ListFields():
        nested_type = field.message_type
        if nested_type is None or nested_type.full_name.startswith("google."):
            continue
        if nested_type.GetOptions().map_entry:
            if nested_type.fields_by_name["value"].message_type is None:
                continue
            nested = [(f"{field.name}[{key!r}]", value[key]) for key in value]
        elif field.is_repeated:
            nested = [(f"{field.name}[{index}]", item) for index, item in enumerate(value)]
        else:
            nested = [(field.name, value)]
        for nested_path, nested_message in nested:
            missing.extend(_missing_required_fields(nested_message, f"{path}{nested_path}."))
    return missing


def _non_canonical_json(value: Any, message_type: Descriptor, path: str) -> list[str]:
    """Where a JSON object departs from the form MessageToJson would give it."""
    if not isinstance(value, dict):
        return [f"{path}: expected a JSON object for {message_type.full_name}"]
    fields_by_json_name = {field.json_name: field for field in message_type.fields}
    problems: list[str] = []
    for key, item in value.items():
        field = fields_by_json_name.get(key)
        if field is None:
            problems.append(
                f"{path}.{key}: not the JSON name of a field of {message_type.full_name} "
                f"(expected one of {sorted(fields_by_json_name)})"
            )
            continue
        field_path = f"{path}.{key}"
        entry_type = field.message_type
        if entry_type is not None and entry_type.GetOptions().map_entry:
            value_field = entry_type.fields_by_name["value"]
            for map_key, map_value in item.items():
                problems.extend(
                    _non_canonical_value(map_value, value_field, f"{field_path}.{map_key}")
                )
        elif field.is_repeated:
            if not isinstance(item, list):
                problems.append(f"{field_path}: expected a JSON array")
                continue
            for index, element in enumerate(item):
                problems.extend(_non_canonical_value(element, field, f"{field_path}[{index}]"))
        else:
            problems.extend(_non_canonical_value(item, field, field_path))
    return problems


def _non_canonical_value(value: Any, field: FieldDescriptor, path: str) -> list[str]:
    if field.enum_type is not None:
        if not isinstance(value, str):
            return [f"{path}: enum values are written by name, not {value!r}"]
        return []
    message_type = field.message_type
    if message_type is None:
        return []
    if message_type.full_name == "google.protobuf.Timestamp":
        if not (isinstance(value, str) and value.endswith("Z")):
            return [f"{path}: timestamps are written in UTC with a 'Z', not {value!r}"]
        return []
    if message_type.full_name in _OPAQUE_JSON_TYPES:
        return []
    return _non_canonical_json(value, message_type, path)


EXAMPLES = _examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.test_id for example in EXAMPLES])
def test_example_is_a_valid_lam_message(example: DocExample) -> None:
    where = f"docs/LAM_PROTOCOL.md:{example.line_number}"
    try:
        message = example.parse()
    except json_format.ParseError as error:
        pytest.fail(f"{where}: not a cpa.lam.v1.LamMessage: {error}")

    assert _missing_required_fields(message, "") == [], f"{where}: required fields missing"

    body = message.WhichOneof("body")
    assert body is not None, f"{where}: every example shows its typed body"
    performative_name = lam_message_pb2.Performative.Name(message.performative)
    expected_body = BODY_FIELD_BY_PERFORMATIVE.get(message.performative)
    assert body == expected_body, (
        f"{where}: a {performative_name} carries the body '{expected_body}', not '{body}'"
    )

    written = json.loads(example.text)
    problems = _non_canonical_json(written, message.DESCRIPTOR, "$")
    assert problems == [], f"{where}: not in canonical JSON form: {problems}"
    # Also catches what the walk cannot: default values written out, "1.5s" for "1.500s".
    printed = json.loads(json_format.MessageToJson(message))
    assert written == printed, f"{where}: MessageToJson prints this message differently"


# Section whose first field table must list exactly the fields of a message (outside any oneof).
FIELD_TABLES: dict[str, Descriptor] = {
    "Envelope fields": lam_message_pb2.LamMessage.DESCRIPTOR,
    "Correlation and conversations": lam_message_pb2.Correlation.DESCRIPTOR,
    "Expectations: deadline, reply_by, reply_to": lam_message_pb2.Expectation.DESCRIPTOR,
    "Security": lam_message_pb2.Security.DESCRIPTOR,
}


@pytest.mark.parametrize("heading", sorted(FIELD_TABLES))
def test_field_table_lists_exactly_the_fields_of_the_contract(heading: str) -> None:
    message_type = FIELD_TABLES[heading]
    fields = {field.name for field in message_type.fields if field.containing_oneof is None}
    listed = _first_cell_names(_section(heading))
    assert sorted(listed) == sorted(fields), (
        f"'## {heading}' lists {sorted(listed)}, {message_type.full_name} has {sorted(fields)}"
    )


def test_body_table_covers_exactly_the_body_oneof() -> None:
    oneof = lam_message_pb2.LamMessage.DESCRIPTOR.oneofs_by_name["body"]
    assert {field.name for field in oneof.fields} == set(BODY_FIELD_BY_PERFORMATIVE.values())


def test_page_has_enough_examples() -> None:
    assert len(EXAMPLES) >= MINIMUM_EXAMPLE_COUNT, (
        f"found {len(EXAMPLES)} ```{LAM_INFO_STRING} blocks, want at least {MINIMUM_EXAMPLE_COUNT}"
    )


def test_no_block_is_skipped_by_a_misspelled_info_string() -> None:
    misspelled = [
        (line_number, info)
        for info, _, line_number, _ in _fenced_blocks()
        if "lam" in info.lower() and info != LAM_INFO_STRING
    ]
    assert misspelled == [], f"use exactly ```{LAM_INFO_STRING}: {misspelled}"


def test_every_performative_is_shown_or_listed() -> None:
    shown = {example.parse().performative for example in EXAMPLES}
    listed = set(_first_cell_names(_section(PERFORMATIVES_HEADING)))
    known = set(BODY_FIELD_BY_PERFORMATIVE.values())
    assert listed <= known, f"the performative table names unknown performatives: {listed - known}"
    missing = [
        name
        for number, name in BODY_FIELD_BY_PERFORMATIVE.items()
        if number not in shown and name not in listed
    ]
    assert missing == [], f"performatives neither in an example nor in the table: {missing}"


def test_error_reason_table_names_real_reasons() -> None:
    listed = _first_cell_names(_section(ERROR_REASONS_HEADING))
    assert listed, "the error reason table is empty"
    known = {
        value.name.removeprefix(ERROR_REASON_PREFIX)
        for value in error_pb2.ErrorReason.DESCRIPTOR.values
        if value.number != error_pb2.ERROR_REASON_UNSPECIFIED
    }
    assert [name for name in listed if name not in known] == []


def test_complete_conversation_is_correlated() -> None:
    messages = [example.parse() for example in EXAMPLES if example.heading == CONVERSATION_HEADING]
    performatives = [message.performative for message in messages[:4]]
    assert performatives == [
        lam_message_pb2.PERFORMATIVE_REQUEST,
        lam_message_pb2.PERFORMATIVE_AGREE,
        lam_message_pb2.PERFORMATIVE_INFORM,
        lam_message_pb2.PERFORMATIVE_DONE,
    ]
    request, *replies = messages
    assert request.intent == "portal_download_and_mail"
    assert request.request.text
    assert request.request.HasField("parameters")

    conversation_id = request.correlation.conversation_id
    assert conversation_id
    assert {message.correlation.conversation_id for message in messages} == {conversation_id}
    for reply in replies:
        assert reply.correlation.in_reply_to == _reply_key(request), reply.id

    job_ids = {messages[1].agree.job_id, messages[2].inform.job_id, messages[3].done.job_id}
    assert len(job_ids) == 1, f"agree, inform and done name different jobs: {sorted(job_ids)}"
    assert job_ids != {""}, "agree, inform and done name no job"


def test_every_later_message_answers_an_earlier_one_of_its_conversation() -> None:
    conversations: defaultdict[str, list[lam_message_pb2.LamMessage]] = defaultdict(list)
    for example in EXAMPLES:
        message = example.parse()
        assert message.correlation.conversation_id, f"{message.id}: no conversation_id"
        conversations[message.correlation.conversation_id].append(message)

    for conversation_id, messages in conversations.items():
        # The first message shown may answer one the page does not show.
        for position, message in enumerate(messages[1:], start=1):
            earlier = {_reply_key(previous) for previous in messages[:position]}
            assert message.correlation.in_reply_to in earlier, (
                f"{conversation_id}: {message.id} replies to "
                f"'{message.correlation.in_reply_to}', which is none of {sorted(earlier)}"
            )


def test_contract_net_accepts_the_cheapest_offer_before_assigning() -> None:
    messages = _section_messages(CONTRACT_NET_HEADING)
    by_performative: defaultdict[int, list[lam_message_pb2.LamMessage]] = defaultdict(list)
    for message in messages:
        by_performative[message.performative].append(message)
    [discover] = by_performative[lam_message_pb2.PERFORMATIVE_DISCOVER]
    offers = by_performative[lam_message_pb2.PERFORMATIVE_OFFER]
    [accept] = by_performative[lam_message_pb2.PERFORMATIVE_ACCEPT_PROPOSAL]
    rejects = by_performative[lam_message_pb2.PERFORMATIVE_REJECT_PROPOSAL]
    [assign] = by_performative[lam_message_pb2.PERFORMATIVE_ASSIGN]
    [result] = [
        *by_performative[lam_message_pb2.PERFORMATIVE_DONE],
        *by_performative[lam_message_pb2.PERFORMATIVE_FAILURE],
    ]
    assert messages[0] is discover
    assert discover.expected.HasField("reply_by"), "a discover says by when offers must arrive"

    assert len(offers) >= 2, "the contract net shows a choice between offers"
    for offer in offers:
        assert offer.correlation.in_reply_to == _reply_key(discover), offer.id
        assert offer.correlation.reply_with, f"{offer.id}: an offer is answered, so it names a key"
    winner = min(offers, key=lambda offer: offer.offer.cost)
    losers = [offer for offer in offers if offer is not winner]

    assert accept.correlation.in_reply_to == _reply_key(winner)
    assert list(accept.receivers) == [winner.sender]
    decided = sorted(reject.correlation.in_reply_to for reject in rejects)
    assert decided == sorted(_reply_key(offer) for offer in losers)
    for reject in rejects:
        [loser] = [offer for offer in losers if _reply_key(offer) == reject.correlation.in_reply_to]
        assert list(reject.receivers) == [loser.sender], reject.id

    assert messages.index(accept) < messages.index(assign), "accept_proposal comes before assign"
    assert list(assign.receivers) == [winner.sender]
    assert assign.correlation.in_reply_to == _reply_key(winner)
    assert assign.assign.todo == discover.discover.todo
    assert assign.security.credential_refs, "the assign shows the credential references"

    assert result.sender == winner.sender
    assert result.correlation.in_reply_to == _reply_key(assign)
    body = result.WhichOneof("body")
    assert body is not None
    assert getattr(result, body).job_id == assign.assign.job_id


def test_proposal_is_answered_by_accept_proposal() -> None:
    messages = _section_messages(PROPOSALS_HEADING)
    performatives = [message.performative for message in messages[:2]]
    assert performatives == [
        lam_message_pb2.PERFORMATIVE_PROPOSE,
        lam_message_pb2.PERFORMATIVE_ACCEPT_PROPOSAL,
    ]
    proposal, acceptance = messages[:2]
    assert acceptance.correlation.in_reply_to == _reply_key(proposal)
    assert acceptance.sender in proposal.receivers
    assert list(acceptance.receivers) == [proposal.sender]
    assert proposal.propose.HasField("conditions")
    assert acceptance.accept_proposal.conditions == proposal.propose.conditions, (
        "accept_proposal echoes the conditions it accepts"
    )
    assert lam_message_pb2.PERFORMATIVE_CONFIRM not in {
        message.performative for message in messages
    }, "a confirm is not the answer to a proposal"
