"""AIP-160 list filters, a small validated subset, parsed into JobFilter and AgentFilter (and back).

One hand-written tokenizer and recursive-descent parser serve both lists; each list names its
fields, the operators they take and how their values convert. Positions are 0-based offsets.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum, StrEnum
from typing import Final, TypeVar

from cpa_scheduler.domain import InvalidArgument, JobFilter, JobState, Reason
from cpa_scheduler.domain.agent_query import AgentFilter, AgentState

__all__ = [
    "MAX_FILTER_LENGTH",
    "format_agent_filter",
    "format_job_filter",
    "parse_agent_filter",
    "parse_job_filter",
]

MAX_FILTER_LENGTH: Final = 2048

_LABELS_PREFIX = "labels."
_LABEL_FIELD = "labels.<key>"
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_LABEL_KEY_CHARS = frozenset(string.ascii_lowercase + string.digits + "_.-")
# Longest first, so "<=" is not read as "<" followed by "=".
_OPERATORS = ("<=", ">=", "!=", "=", "<", ">", ":")
_ONE_MICROSECOND = timedelta(microseconds=1)


def _error(message: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {message}", reason=Reason.INVALID_FILTER, field="filter")


# -- tokenizer ------------------------------------------------------------------------------------


class _Kind(Enum):
    WORD = "word"
    STRING = "string"
    OPERATOR = "operator"
    OPEN = "("
    CLOSE = ")"
    END = "end"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # a string token's text is already unescaped
    position: int

    def is_keyword(self, keyword: str) -> bool:
        return self.kind is _Kind.WORD and self.text.upper() == keyword


def _read_string(text: str, start: int) -> tuple[str, int]:
    """The unescaped content of the string opening at `start`, and the offset after it."""
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == '"':
            return "".join(chars), index + 1
        if char == "\\" and index + 1 < len(text):
            escaped = text[index + 1]
            if escaped not in ('"', "\\"):
                raise _error(
                    f"invalid escape \\{escaped} at position {index} "
                    '(only \\" and \\\\ are allowed)'
                )
            chars.append(escaped)
            index += 2
            continue
        chars.append(char)
        index += 1
    raise _error(f"unterminated string starting at position {start}")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif char in "()":
            tokens.append(_Token(_Kind.OPEN if char == "(" else _Kind.CLOSE, char, index))
            index += 1
        elif char == '"':
            value, end = _read_string(text, index)
            tokens.append(_Token(_Kind.STRING, value, index))
            index = end
        elif char in _WORD_CHARS:
            end = index
            while end < len(text) and text[end] in _WORD_CHARS:
                end += 1
            tokens.append(_Token(_Kind.WORD, text[index:end], index))
            index = end
        else:
            operator = next((op for op in _OPERATORS if text.startswith(op, index)), None)
            if operator is not None:
                tokens.append(_Token(_Kind.OPERATOR, operator, index))
                index += len(operator)
            elif char == "'":
                raise _error(f"strings take double quotes, found ' at position {index}")
            else:
                raise _error(f"unexpected character {char!r} at position {index}")
    tokens.append(_Token(_Kind.END, "", len(text)))
    return tokens


# -- parser ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Comparison:
    """`field operator value`; `field` is as written (`labels.team`), `position` is its offset."""

    field: str
    operator: str
    value: _Token
    position: int

    @property
    def label_key(self) -> str:
        return self.field.removeprefix(_LABELS_PREFIX)

    def expected(self, what: str) -> InvalidArgument:
        # Written as the filter would be: `intent =`, but `actions:` (AIP-160 writes ':' tight).
        spacer = "" if self.operator == ":" else " "
        return _error(
            f"expected {what} after '{self.field}{spacer}{self.operator}' "
            f"at position {self.value.position}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Grammar:
    """The fields of one list, in the order error messages name them, and their operators."""

    operators: Mapping[str, tuple[str, ...]]  # `labels.<key>` stands for every label key
    or_field: str  # the one field that may be ORed, inside parentheses

    @property
    def field_names(self) -> str:
        return ", ".join(self.operators)


def _one_of(operators: Sequence[str]) -> str:
    quoted = [f"'{operator}'" for operator in operators]
    return quoted[0] if len(quoted) == 1 else "one of " + ", ".join(quoted)


class _Parser:
    """filter := [term {AND term}] END; term := comparison | '(' comparison {OR comparison} ')'."""

    def __init__(self, text: str, grammar: _Grammar) -> None:
        self._tokens = _tokenize(text)
        self._index = 0
        self._grammar = grammar

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind is not _Kind.END:
            self._index += 1
        return token

    def _accept_keyword(self, keyword: str) -> bool:
        if self._peek().is_keyword(keyword):
            self._index += 1
            return True
        return False

    def parse(self) -> list[list[_Comparison]]:
        """The ANDed terms; each term is one comparison or several ORed ones."""
        if self._peek().kind is _Kind.END:
            return []
        terms = [self._term()]
        while self._accept_keyword("AND"):
            terms.append(self._term())
        token = self._peek()
        if token.is_keyword("OR"):
            field = self._grammar.or_field
            raise _error(
                f"OR needs parentheses, e.g. ({field} = A OR {field} = B), "
                f"at position {token.position}"
            )
        if token.kind is not _Kind.END:
            raise _error(f"expected AND or end of filter at position {token.position}")
        return terms

    def _term(self) -> list[_Comparison]:
        if self._peek().kind is not _Kind.OPEN:
            return [self._comparison()]
        self._next()
        alternatives = [self._comparison()]
        while self._accept_keyword("OR"):
            alternatives.append(self._comparison())
        closing = self._next()
        if closing.kind is not _Kind.CLOSE:
            raise _error(f"expected OR or ')' at position {closing.position}")
        if len(alternatives) > 1:
            for comparison in alternatives:
                if comparison.field != self._grammar.or_field:
                    raise _error(
                        f"OR is only supported between {self._grammar.or_field} conditions, "
                        f"found '{comparison.field}' at position {comparison.position}"
                    )
        return alternatives

    def _field_operators(self, token: _Token) -> tuple[str, ...]:
        name = token.text
        operators = self._grammar.operators
        if name.startswith(_LABELS_PREFIX) and _LABEL_FIELD in operators:
            key = name.removeprefix(_LABELS_PREFIX)
            key_position = token.position + len(_LABELS_PREFIX)
            if not key:
                raise _error(f"expected a label key after 'labels.' at position {key_position}")
            if not set(key) <= _LABEL_KEY_CHARS:
                raise _error(
                    f"invalid label key '{key}' at position {key_position} "
                    "(keys use a-z, 0-9, _, . and -)"
                )
            return operators[_LABEL_FIELD]
        if name not in operators or name == _LABEL_FIELD:
            raise _error(
                f"unknown field '{name}' at position {token.position} "
                f"(fields: {self._grammar.field_names})"
            )
        return operators[name]

    def _comparison(self) -> _Comparison:
        field = self._next()
        if field.kind is not _Kind.WORD or field.is_keyword("AND") or field.is_keyword("OR"):
            raise _error(
                f"expected a field name at position {field.position} "
                f"(fields: {self._grammar.field_names})"
            )
        allowed = self._field_operators(field)
        operator = self._next()
        if operator.kind is not _Kind.OPERATOR or operator.text not in allowed:
            raise _error(
                f"expected {_one_of(allowed)} after '{field.text}' at position {operator.position}"
            )
        value = self._next()
        comparison = _Comparison(field.text, operator.text, value, field.position)
        if value.kind not in (_Kind.WORD, _Kind.STRING):
            raise comparison.expected("a value")
        return comparison


def _parse(text: str, grammar: _Grammar) -> list[list[_Comparison]]:
    if len(text) > MAX_FILTER_LENGTH:
        raise _error(f"longer than {MAX_FILTER_LENGTH} characters ({len(text)})")
    return _Parser(text, grammar).parse()


class _Seen:
    """Conditions already given: the same condition twice is a mistake, never a refinement."""

    def __init__(self) -> None:
        self._slots: set[str] = set()

    def add(self, slot: str, comparison: _Comparison, what: str = "condition") -> None:
        if slot in self._slots:
            raise _error(
                f"duplicate {what} on '{comparison.field}' at position {comparison.position}"
            )
        self._slots.add(slot)


# -- values ---------------------------------------------------------------------------------------

E = TypeVar("E", bound=StrEnum)


def _string_value(comparison: _Comparison) -> str:
    if comparison.value.kind is not _Kind.STRING:
        raise comparison.expected("a double-quoted string")
    return comparison.value.text


def _bool_value(comparison: _Comparison) -> bool:
    word = comparison.value.text.lower()
    if word not in ("true", "false"):
        raise comparison.expected("true or false")
    return word == "true"


def _enum_value(comparison: _Comparison, enum: type[E], *, prefix: str, what: str) -> E:
    """Case-insensitive, with or without the proto prefix (`failed`, `JOB_STATE_FAILED`)."""
    name = comparison.value.text.upper().removeprefix(prefix)
    member = enum.__members__.get(name)
    if member is None:
        names = ", ".join(known.value for known in enum)
        raise _error(
            f"unknown {what} '{comparison.value.text}' at position {comparison.value.position} "
            f"({what}s: {names})"
        )
    return member


# RFC 3339 (a profile of ISO 8601): the offset is required, the fraction may be any length.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def _timestamp_value(comparison: _Comparison) -> tuple[datetime, bool]:
    """The time in UTC truncated to microseconds, and whether that truncation dropped anything."""
    if comparison.value.kind is not _Kind.STRING:
        raise comparison.expected('a double-quoted RFC 3339 timestamp, e.g. "2026-01-01T00:00:00Z"')
    text = comparison.value.text
    invalid = _error(
        f'invalid timestamp "{text}" at position {comparison.value.position} '
        '(expected RFC 3339, e.g. "2026-01-01T00:00:00Z")'
    )
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise invalid
    year, month, day, hour, minute, second, fraction, sign, offset_h, offset_m = match.groups()
    fraction = fraction or ""
    offset = timedelta(hours=int(offset_h or 0), minutes=int(offset_m or 0))
    try:
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(fraction[:6].ljust(6, "0")),
            tzinfo=timezone(-offset if sign == "-" else offset),
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        # Out-of-range parts (month 13, second 60, offset 24:00) or a year beyond 1..9999 in UTC.
        raise invalid from None
    return parsed, fraction[6:].strip("0") != ""


def _shifted(moment: datetime, delta: timedelta) -> datetime | None:
    try:
        return moment + delta
    except OverflowError:
        # One microsecond beyond the representable range: the bound excludes nothing.
        return None


def _exclusive_bound(comparison: _Comparison) -> datetime | None:
    """The filter's bound as an exclusive one (JobFilter's bounds are exclusive).

    Stored times have microsecond resolution, so `>= t` equals `> t - 1us` and `<= t` equals
    `< t + 1us`; a sub-microsecond fraction rounds towards the side that keeps the meaning.
    """
    floor, truncated = _timestamp_value(comparison)
    match comparison.operator:
        case ">":
            return floor
        case ">=":
            return floor if truncated else _shifted(floor, -_ONE_MICROSECOND)
        case "<":
            return _shifted(floor, _ONE_MICROSECOND) if truncated else floor
        case _:  # "<="
            return _shifted(floor, _ONE_MICROSECOND)


# -- jobs -----------------------------------------------------------------------------------------

_JOB_GRAMMAR = _Grammar(
    operators={
        "state": ("=",),
        "intent": ("=",),
        _LABEL_FIELD: ("=",),
        "create_time": ("<", "<=", ">", ">="),
        "dead_lettered": ("=",),
    },
    or_field="state",
)


def parse_job_filter(text: str) -> JobFilter:
    """The JobFilter of a ListJobs `filter`; InvalidArgument(INVALID_FILTER) says what is wrong.

    `state = FAILED`, `(state = FAILED OR state = CANCELLED)`, `intent = "send_mail"`,
    `labels.team = "ops"`, `create_time >= "2026-01-01T00:00:00Z"` (also >, <, <=),
    `dead_lettered = true`, joined by AND. Each condition may appear once (create_time once
    per direction).
    """
    states: frozenset[JobState] = frozenset()
    intent: str | None = None
    labels: dict[str, str] = {}
    created_after: datetime | None = None
    created_before: datetime | None = None
    dead_lettered: bool | None = None
    seen = _Seen()
    for term in _parse(text, _JOB_GRAMMAR):
        first = term[0]
        match first.field:
            case "state":
                seen.add("state", first)
                states = frozenset(
                    _enum_value(c, JobState, prefix="JOB_STATE_", what="state") for c in term
                )
            case "intent":
                seen.add("intent", first)
                intent = _string_value(first)
            case "create_time" if first.operator.startswith(">"):
                seen.add("create_time >", first, "lower bound")
                created_after = _exclusive_bound(first)
            case "create_time":
                seen.add("create_time <", first, "upper bound")
                created_before = _exclusive_bound(first)
            case "dead_lettered":
                seen.add("dead_lettered", first)
                dead_lettered = _bool_value(first)
            case _:
                seen.add(first.field, first)
                labels[first.label_key] = _string_value(first)
    return JobFilter(
        states=states,
        intent=intent,
        labels=labels,
        created_after=created_after,
        created_before=created_before,
        dead_lettered=dead_lettered,
    )


# -- agents ---------------------------------------------------------------------------------------

_AGENT_GRAMMAR = _Grammar(
    operators={
        "state": ("=",),
        # ':' is AIP-160's "has" for repeated fields; '=' reads naturally too.
        "actions": (":", "="),
        "capabilities": (":", "="),
        _LABEL_FIELD: ("=",),
    },
    or_field="state",
)


def parse_agent_filter(text: str) -> AgentFilter:
    """The AgentFilter of a ListAgents `filter`; InvalidArgument(INVALID_FILTER) says what is wrong.

    `state = CONNECTED`, `(state = CONNECTED OR state = DRAINING)`, `actions:"echo"`,
    `capabilities:"browser:chromium"`, `labels.site = "berlin"`, joined by AND. actions and
    capabilities may repeat (the agent must have all of them).
    """
    states: frozenset[AgentState] = frozenset()
    actions: set[str] = set()
    capabilities: set[str] = set()
    labels: dict[str, str] = {}
    seen = _Seen()
    for term in _parse(text, _AGENT_GRAMMAR):
        first = term[0]
        match first.field:
            case "state":
                seen.add("state", first)
                states = frozenset(
                    _enum_value(c, AgentState, prefix="AGENT_STATE_", what="state") for c in term
                )
            case "actions":
                actions.add(_string_value(first))
            case "capabilities":
                capabilities.add(_string_value(first))
            case _:
                seen.add(first.field, first)
                labels[first.label_key] = _string_value(first)
    return AgentFilter(
        states=states,
        actions=frozenset(actions),
        capabilities=frozenset(capabilities),
        labels=labels,
    )


# -- canonical text -------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _timestamp_text(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _states_text(states: Iterable[StrEnum]) -> list[str]:
    conditions = [f"state = {state.value}" for state in states]
    if len(conditions) > 1:
        return ["(" + " OR ".join(conditions) + ")"]
    return conditions


def _labels_text(labels: Mapping[str, str]) -> list[str]:
    return [f"labels.{key} = {_quote(labels[key])}" for key in sorted(labels)]


def format_job_filter(job_filter: JobFilter) -> str:
    """The canonical filter text of `job_filter`: equal filters give equal text, and it parses back.

    Page tokens fingerprint this text, so `state=failed` and `state = FAILED` page alike.
    """
    conditions = _states_text(s for s in JobState if s in job_filter.states)
    if job_filter.intent is not None:
        conditions.append(f"intent = {_quote(job_filter.intent)}")
    conditions += _labels_text(job_filter.labels)
    if job_filter.created_after is not None:
        conditions.append(f'create_time > "{_timestamp_text(job_filter.created_after)}"')
    if job_filter.created_before is not None:
        conditions.append(f'create_time < "{_timestamp_text(job_filter.created_before)}"')
    if job_filter.dead_lettered is not None:
        conditions.append(f"dead_lettered = {str(job_filter.dead_lettered).lower()}")
    return " AND ".join(conditions)


def format_agent_filter(agent_filter: AgentFilter) -> str:
    """The canonical filter text of `agent_filter` (see format_job_filter)."""
    conditions = _states_text(s for s in AgentState if s in agent_filter.states)
    conditions += [f"actions:{_quote(action)}" for action in sorted(agent_filter.actions)]
    conditions += [
        f"capabilities:{_quote(capability)}" for capability in sorted(agent_filter.capabilities)
    ]
    conditions += _labels_text(agent_filter.labels)
    return " AND ".join(conditions)
