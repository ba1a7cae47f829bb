"""Hostile protobuf messages for hypothesis, derived from the message descriptors.

`message_of(descriptor)` draws a random message of any type: every field kind, nested messages,
maps, oneofs, enums with unknown numbers, Struct/Value (NaN, infinities, deep nesting, huge
strings), Timestamp/Duration (in and out of range). `mutated(template)` takes a valid request
and gives one field a hostile value. Strings are biased towards ids the server knows (`Known`),
so random requests reach real jobs, tasks and attempts, including other tenants'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import descriptor as d
from google.protobuf import duration_pb2, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

FD = d.FieldDescriptor
# Descriptors as the upb runtime hands them out; their stubs type every nested descriptor as
# optional and mix the upb and pure-Python classes, so the walkers here take them untyped.
FieldDesc = Any
Desc = Any

# Sizes of "huge" strings: past the 16 KiB a client accepts in error trailers, near and past the
# server's request cap (the arena runs with 256 KiB).
HUGE_SIZES = (17_000, 100_000, 300_000)
# Struct nesting around the depths where replies stop decoding (protobuf stops at 100 levels,
# a Struct level costs two, a Job adds about six) and well past them.
DEEP_LEVELS = (20, 30, 32, 33, 40, 45, 49, 50, 51, 64, 99, 120)
# Nested messages in random messages stop here (Struct values have their own bound).
MAX_MESSAGE_DEPTH = 4


@dataclass
class Known:
    """Ids the server knows, filled in by the arena: random strings pick from them often."""

    strings: list[str] = field(default_factory=list)
    attempts: list[tuple[str, str, int]] = field(default_factory=list)
    """(job_id, task_id, attempt) of real attempts: the normal job's and the hostile tenants'."""

    def pick(self, index: int) -> str:
        return self.strings[index % len(self.strings)] if self.strings else ""

    def pick_attempt(self, index: int) -> tuple[str, str, int]:
        return self.attempts[index % len(self.attempts)] if self.attempts else ("", "", 0)

    def latest_attempt(self, _: object = None) -> tuple[str, str, int]:
        """The attempt added last: the normal job running now."""
        return self.attempts[-1] if self.attempts else ("", "", 0)


KNOWN = Known()

# --- scalars -------------------------------------------------------------------------------------

_INVALID_TEXT = (
    "",
    " ",
    "\n",
    "\x00",
    "a\x00b",
    "../../etc/passwd",
    "'; DROP TABLE jobs; --",
    "%s%n{0}{job_id}",
    "\u202e\u0645\u0631\u062d\u0628\u0627",  # right-to-left override
    "e\u0301\u0301\u0301",  # combining marks
    "\U0001f4a9" * 4,
    "\ufeff",
    "${jndi:ldap://x}",
    "*",
    "%",
    "null",
    # Odd code points PostgreSQL and SQLite may treat differently: DEL, C1 controls, line and
    # paragraph separators, noncharacters, the last code point, private use.
    "\x7f\x85\x9f",
    "\u2028\u2029",
    "\ufffe\uffff",
    "\U0010ffff",
    "\ue000\U000f0000",
    "\x00" * 3,
)


def _known_or_suffixed() -> st.SearchStrategy[str]:
    """A known id, or one with a trailing newline/space (ids must match in full)."""
    index = st.integers(min_value=0, max_value=1_000)
    return st.one_of(
        index.map(KNOWN.pick),
        st.tuples(index, st.sampled_from(["\n", " ", "\x00", "/..", "%"])).map(
            lambda pair: KNOWN.pick(pair[0]) + pair[1]
        ),
    )


def huge_text() -> st.SearchStrategy[str]:
    return st.tuples(
        st.sampled_from(["x", "é", "\U0001f4a9", "a\n"]), st.sampled_from(HUGE_SIZES)
    ).map(lambda pair: pair[0] * (pair[1] // len(pair[0].encode())))


def hostile_text() -> st.SearchStrategy[str]:
    """Known ids (suffixed too), the odd texts above (U+0000 among them: PostgreSQL cannot store
    it, SQLite can), any code point but surrogates (which UTF-8 cannot carry), huge texts."""
    return st.one_of(
        _known_or_suffixed(),
        st.sampled_from(_INVALID_TEXT),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
        huge_text(),
    )


def int_value(bits: int, *, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted(
        {v for v in (0, 1, -1, 2, high, low, high - 1, 2**31 - 1, 2**53) if low <= v <= high}
    )
    return st.one_of(st.sampled_from(edges), st.integers(min_value=low, max_value=high))


def float_value(width: Literal[32, 64]) -> st.SearchStrategy[float]:
    edges = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-45, -1.0]
    if width == 64:
        edges += [1.7976931348623157e308, 5e-324, 2.0**63, -(2.0**63)]
    else:
        edges += [3.4028234663852886e38, -3.4028234663852886e38]
    return st.one_of(st.sampled_from(edges), st.floats(width=width))


_SCALARS: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
    FD.TYPE_INT32: lambda: int_value(32, signed=True),
    FD.TYPE_SINT32: lambda: int_value(32, signed=True),
    FD.TYPE_SFIXED32: lambda: int_value(32, signed=True),
    FD.TYPE_INT64: lambda: int_value(64, signed=True),
    FD.TYPE_SINT64: lambda: int_value(64, signed=True),
    FD.TYPE_SFIXED64: lambda: int_value(64, signed=True),
    FD.TYPE_UINT32: lambda: int_value(32, signed=False),
    FD.TYPE_FIXED32: lambda: int_value(32, signed=False),
    FD.TYPE_UINT64: lambda: int_value(64, signed=False),
    FD.TYPE_FIXED64: lambda: int_value(64, signed=False),
    FD.TYPE_DOUBLE: lambda: float_value(64),
    FD.TYPE_FLOAT: lambda: float_value(32),
    FD.TYPE_BOOL: st.booleans,
    FD.TYPE_STRING: hostile_text,
    FD.TYPE_BYTES: lambda: st.one_of(
        st.binary(max_size=64), st.sampled_from([b"\xff" * 17_000, b"\x00" * 100_000])
    ),
}


def enum_value(enum: Desc) -> st.SearchStrategy[int]:
    """Every declared number, and numbers the contract does not declare."""
    declared = [v.number for v in enum.values]
    unknown = [max(declared) + 1, 99, -1, 2**31 - 1, -(2**31)]
    return st.one_of(st.sampled_from(declared), st.sampled_from(unknown))


def enum_values(enum: Desc) -> list[int]:
    """Every declared number and a few undeclared ones (for exhaustive loops)."""
    declared = [v.number for v in enum.values]
    return [*declared, max(declared) + 1, -1, 2**31 - 1]


# --- well-known types ----------------------------------------------------------------------------


def nested_value(levels: int, leaf: Any = 1.0) -> Any:
    """A JSON value `levels` objects deep."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def json_value() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        float_value(64),
        hostile_text(),
    )
    shallow = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(hostile_text(), children, max_size=4),
        ),
        max_leaves=12,
    )
    deep = st.tuples(st.sampled_from(DEEP_LEVELS), leaves).map(lambda p: nested_value(*p))
    wide = st.sampled_from([10_000, 60_000]).map(lambda n: [1.5] * n)
    return st.one_of(shallow, deep, wide)


def _struct() -> st.SearchStrategy[Message]:
    def build(content: dict[str, Any]) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.update(content)
        return struct

    deep = st.tuples(st.sampled_from(DEEP_LEVELS), st.sampled_from([1.0, math.nan, "x"])).map(
        lambda p: {"a": nested_value(p[0] - 1, p[1])}
    )
    return st.one_of(st.dictionaries(hostile_text(), json_value(), max_size=4), deep).map(build)


def _value() -> st.SearchStrategy[Message]:
    def build(content: Any) -> struct_pb2.Value:
        struct = struct_pb2.Struct()
        struct.update({"v": content})
        value = struct_pb2.Value()
        value.CopyFrom(struct.fields["v"])
        return value

    return json_value().map(build)


def _list_value() -> st.SearchStrategy[Message]:
    def build(items: list[Any]) -> struct_pb2.ListValue:
        listed = struct_pb2.ListValue()
        listed.extend(items)
        return listed

    return st.lists(json_value(), max_size=4).map(build)


_SECONDS = st.one_of(
    st.sampled_from(
        [
            0,
            -1,
            1_700_000_000,
            -62_135_596_801,  # one second before 0001-01-01
            253_402_300_800,  # 10000-01-01
            315_576_000_001,  # past the largest Duration
            2**62,
            2**63 - 1,
            -(2**63),
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
_NANOS = st.one_of(
    st.sampled_from([0, 1, -1, 999_999_999, 1_000_000_000, 2_000_000_000, 2**31 - 1, -(2**31)]),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)


def _timestamp() -> st.SearchStrategy[Message]:
    return st.builds(timestamp_pb2.Timestamp, seconds=_SECONDS, nanos=_NANOS)


def _duration() -> st.SearchStrategy[Message]:
    return st.builds(duration_pb2.Duration, seconds=_SECONDS, nanos=_NANOS)


_WELL_KNOWN: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
    "google.protobuf.Struct": _struct,
    "google.protobuf.Value": _value,
    "google.protobuf.ListValue": _list_value,
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
}

# --- messages ------------------------------------------------------------------------------------


def message_class(descriptor: Desc) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def value_of(fd: FieldDesc, depth: int) -> st.SearchStrategy[Any]:
    """A hostile value for one (non-repeated) field."""
    if fd.type == FD.TYPE_ENUM:
        return enum_value(fd.enum_type)
    if fd.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
        return message_of(fd.message_type, depth + 1)
    return _SCALARS[fd.type]()


def _short_value(fd: FieldDesc) -> st.SearchStrategy[Any]:
    if fd.type == FD.TYPE_STRING:
        return st.one_of(_known_or_suffixed(), st.text(max_size=8))
    if fd.type == FD.TYPE_BYTES:
        return st.binary(max_size=8)
    return value_of(fd, MAX_MESSAGE_DEPTH)


def _is_map(fd: FieldDesc) -> bool:
    return bool(fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry)


def _is_repeated(fd: FieldDesc) -> bool:
    return bool(fd.is_repeated)


def field_contents(fd: FieldDesc, depth: int) -> st.SearchStrategy[Any]:
    """What a field may hold: a value, a list (repeated) or a dict (map)."""
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        return st.dictionaries(value_of(key_fd, depth), value_of(value_fd, depth), max_size=3)
    if _is_repeated(fd):
        many = st.lists(value_of(fd, depth), max_size=3)
        if fd.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            return many
        # Huge repeated fields: thousands of copies of one short element (huge elements times
        # thousands would only measure the client's memory).
        return st.one_of(
            many,
            st.tuples(_short_value(fd), st.sampled_from([5_000, 50_000])).map(
                lambda p: [p[0]] * p[1]
            ),
        )
    return value_of(fd, depth)


def set_field(message: Message, fd: FieldDesc, contents: Any) -> None:
    """Puts `contents` (as `field_contents` draws it) into the field, replacing what it held."""
    try:
        _set(message, fd, contents)
    except DecodeError:
        # The value nests past what protobuf copies (it re-parses on copy): the field stays
        # unset; deep values still reach the server where they fit in the message.
        message.ClearField(fd.name)


def _set(message: Message, fd: FieldDesc, contents: Any) -> None:
    target = getattr(message, fd.name)
    if _is_map(fd):
        target.clear()
        message_values = fd.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE
        for key, value in contents.items():
            if message_values:
                target[key].CopyFrom(value)
            else:
                target[key] = value
    elif _is_repeated(fd):
        del target[:]
        if fd.type == FD.TYPE_MESSAGE:
            for value in contents:
                target.add().CopyFrom(value)
        else:
            target.extend(contents)
    elif fd.type == FD.TYPE_MESSAGE:
        target.CopyFrom(contents)
    else:
        setattr(message, fd.name, contents)


def message_of(descriptor: Desc, depth: int = 0) -> st.SearchStrategy[Message]:
    """A random message of the type: each field set or not, at most one member per oneof."""
    well_known = _WELL_KNOWN.get(descriptor.full_name)
    if well_known is not None:
        return well_known()
    cls = message_class(descriptor)
    members = {fd.name for oneof in descriptor.oneofs for fd in oneof.fields}

    @st.composite
    def draw(draw_: st.DrawFn) -> Message:
        message = cls()
        chosen = {
            draw_(st.sampled_from([None, *[fd.name for fd in oneof.fields]]))
            for oneof in descriptor.oneofs
        }
        for fd in descriptor.fields:
            if fd.name in members and fd.name not in chosen:
                continue
            is_message = fd.type == FD.TYPE_MESSAGE and not _is_map(fd)
            if is_message and depth >= MAX_MESSAGE_DEPTH and fd.name not in chosen:
                continue
            if fd.name in chosen or draw_(st.booleans()):
                set_field(message, fd, draw_(field_contents(fd, depth)))
        return message

    return draw()


# --- mutation of valid requests -----------------------------------------------------------------


def field_paths(message: Message, prefix: str = "") -> list[tuple[str, Message, FieldDesc]]:
    """Every field of the message and of the messages it holds (set ones), with their parent:
    the places a mutation may hit. Well-known types are replaced whole, not entered."""
    paths: list[tuple[str, Message, FieldDesc]] = []
    descriptor: Desc = message.DESCRIPTOR
    for fd in descriptor.fields:
        name = f"{prefix}{fd.name}"
        paths.append((name, message, fd))
        if fd.type != FD.TYPE_MESSAGE or fd.message_type.full_name in _WELL_KNOWN:
            continue
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.type == FD.TYPE_MESSAGE:
                for key, value in getattr(message, fd.name).items():
                    paths += field_paths(value, f"{name}[{key!r}].")
        elif _is_repeated(fd):
            for index, item in enumerate(getattr(message, fd.name)):
                paths += field_paths(item, f"{name}[{index}].")
        elif message.HasField(fd.name):
            paths += field_paths(getattr(message, fd.name), f"{name}.")
    return paths


@dataclass(frozen=True)
class Mutation:
    """A valid request with one field replaced (the path says which)."""

    message: Message
    path: str


def mutated(templates: Sequence[Message]) -> st.SearchStrategy[Mutation]:
    """One of the templates with one field (anywhere in it) given a hostile value."""

    @st.composite
    def draw(draw_: st.DrawFn) -> Mutation:
        template = draw_(st.sampled_from(templates))
        message = type(template)()
        message.CopyFrom(template)
        paths = field_paths(message)
        name, parent, fd = draw_(st.sampled_from(paths))
        set_field(parent, fd, draw_(field_contents(fd, depth=2)))
        return Mutation(message, name)

    return draw()


def enum_paths(message: Message) -> list[tuple[str, Message, FieldDesc]]:
    """The enum fields among `field_paths` (for the every-enum-value sweep)."""
    return [p for p in field_paths(message) if p[2].type == FD.TYPE_ENUM]
