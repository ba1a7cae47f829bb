"""Errors echo caller input bounded, and names are matched whole (no trailing newline)."""

from __future__ import annotations

import re

import pytest
from google.rpc import error_details_pb2

from cpa_scheduler.api.errors import status_for
from cpa_scheduler.domain import (
    IDENTIFIER_PATTERN,
    INPUT_NAME_PATTERN,
    MAX_ECHO_BYTES,
    MAX_FIELD_BYTES,
    MAX_MESSAGE_BYTES,
    TASK_ID_PATTERN,
    DomainError,
    InvalidArgument,
    Reason,
    TaskError,
    TaskGraph,
    ToDo,
    clip,
    echo,
)
from cpa_scheduler.domain.events import MAX_TASK_ERROR_CODE_BYTES, MAX_TASK_ERROR_MESSAGE_BYTES
from cpa_scheduler.domain.task_graph import cycle_text


@pytest.mark.parametrize("limit", [64, 80, 256, 1024])
@pytest.mark.parametrize("length", [0, 63, 64, 65, 1000, 1_000_000])
def test_clip_keeps_head_and_tail_within_the_limit(limit: int, length: int) -> None:
    text = ("abcdefghijklmnopqrstuvwxyz" * (length // 26 + 1))[:length]
    clipped = clip(text, limit)
    assert len(clipped) <= limit
    if length <= limit:
        assert clipped == text
    else:
        assert clipped.startswith(text[:10])
        assert clipped.endswith(text[-10:])
        assert f"({length} chars)" in clipped


def test_echo_quotes_and_bounds_a_value() -> None:
    assert echo("abc") == "'abc'"
    long = echo("x" * 100_000)
    assert len(long) <= MAX_ECHO_BYTES
    assert long.startswith("'xxx")
    assert long.endswith("xxx'")


def test_every_domain_error_bounds_its_message_and_field_even_when_re_rooted() -> None:
    error = InvalidArgument("bad " + "m" * 100_000, field="f" * 100_000)
    assert len(error.message) <= MAX_MESSAGE_BYTES
    assert len(str(error)) <= MAX_MESSAGE_BYTES
    assert len(error.field) <= MAX_FIELD_BYTES
    error.field = "requests[3]." + error.field
    assert len(error.field) <= MAX_FIELD_BYTES
    assert error.field.startswith("requests[3].fff")


def test_a_status_stays_far_below_the_16_kib_trailer_limit() -> None:
    error = DomainError("x" * 1_000_000, reason=Reason.INVALID_FIELD, field="y" * 1_000_000)
    _, status = status_for(error)
    assert len(status.SerializeToString()) < 4096
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert len(info.metadata["field"]) <= MAX_FIELD_BYTES


def test_a_long_cycle_names_its_ends_and_length() -> None:
    ids = (*(f"t{i}" for i in range(5000)), "t0")
    assert (
        cycle_text(ids)
        == "t0 -> t1 -> t2 -> t3 -> ... -> t4997 -> t4998 -> t4999 -> t0 (5000 tasks)"
    )
    assert cycle_text(("a", "b", "a")) == "a -> b -> a"


def test_a_cycle_through_a_whole_graph_is_reported_bounded() -> None:
    count = 5000
    todos = [
        ToDo(id=f"t{i}", action="noop", depends_on=(f"t{(i + 1) % count}",)) for i in range(count)
    ]
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos(todos)
    assert caught.value.reason is Reason.GRAPH_CYCLE
    assert caught.value.message.endswith(f"({count} tasks)")


@pytest.mark.parametrize(
    ("pattern", "good"),
    [
        (TASK_ID_PATTERN, "Task-1.a_b"),
        (IDENTIFIER_PATTERN, "my.action-1"),
        (INPUT_NAME_PATTERN, "in_1"),
    ],
)
def test_name_patterns_match_the_whole_name(pattern: object, good: str) -> None:
    assert isinstance(pattern, re.Pattern)
    assert pattern.fullmatch(good)
    for bad in (good + "\n", good + "\nx", "\n" + good, good + " "):
        assert not pattern.fullmatch(bad), repr(bad)


@pytest.mark.parametrize(
    ("todo", "field"),
    [
        (ToDo(id="a\n", action="noop"), "t.id"),
        (ToDo(id="a", action="my_action\n"), "t.action"),
    ],
)
def test_a_trailing_newline_is_refused(todo: ToDo, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        todo.validate("t")
    assert caught.value.field == field


@pytest.mark.parametrize("char", ["ü", "€", "😀"])
def test_clip_bounds_utf8_bytes_and_never_splits_a_character(char: str) -> None:
    text = "a" + char * 100_000 + "z"
    for limit in (MAX_ECHO_BYTES, MAX_FIELD_BYTES, MAX_MESSAGE_BYTES):
        clipped = clip(text, limit)
        assert len(clipped.encode()) <= limit
        assert clipped.startswith("a" + char)
        assert clipped.endswith(char + "z")
    short = char * (MAX_ECHO_BYTES // 2)  # few characters, more bytes than the limit
    assert len(clip(short, MAX_ECHO_BYTES).encode()) <= MAX_ECHO_BYTES


def test_a_task_error_bounds_its_message_and_code() -> None:
    error = TaskError(code="C" * 10_000, message="declined by the agent: " + "r" * 1_000_000)
    assert len(error.code.encode()) <= MAX_TASK_ERROR_CODE_BYTES
    assert len(error.message.encode()) <= MAX_TASK_ERROR_MESSAGE_BYTES
    assert error.message.startswith("declined by the agent: rrr")
    assert TaskError(code="E", message="short") == TaskError(code="E", message="short")


def test_a_task_error_keeps_an_agents_nul_as_u_fffd() -> None:
    # A decline's reason or an agent's error text: kept, but PostgreSQL's text cannot hold NUL.
    error = TaskError(code="E\x00", message="declined by the agent: r\x00")
    assert (error.code, error.message) == ("E\ufffd", "declined by the agent: r\ufffd")
