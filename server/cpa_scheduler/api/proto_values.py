"""Protobuf's well-known value types (Struct, Timestamp, Duration) read from callers, checked.

Part of the conversion layer (convert.py uses it; it knows no contract type). Every value a
caller or agent sends is checked here before it is stored, because a stored value that cannot be
written back into a reply poisons every later read of the job:
- numbers in a Struct must be finite (JSON has no NaN or Infinity; json_format raises on them);
- a Struct may nest at most MAX_JSON_DEPTH objects and arrays (see below);
- no string in a Struct, value or key, may hold U+0000 (NUL): PostgreSQL's text and jsonb cannot
  store it, SQLite can, and the API must not answer differently by store (check_text applies the
  same rule to every string of a request);
- a Timestamp or Duration must be in the range protobuf defines (0001-01-01 to 9999-12-31;
  +-10 000 years), its nanos within one second and, for a Duration, of the seconds' sign.
Errors are INVALID_ARGUMENT naming the field by its request path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from cpa_scheduler.domain import InvalidArgument, Reason

# Protobuf's decoders stop at 100 levels of message nesting, and each JSON object costs three
# (Struct -> fields entry -> Value) and each array two (Value -> ListValue -> Value). The deepest
# reply that carries a caller's Struct holds it 6 messages down (BatchScheduleJobsResponse ->
# ScheduleJobResponse -> Job -> Task -> ToDo -> params): objects nested 32 deep still decode
# there, 33 do not (tests/unit/api/test_proto_values.py finds the number). 24 keeps 8 levels of
# margin for replies that wrap a job once more.
MAX_JSON_DEPTH: Final = 24

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Protobuf's ranges: Timestamp 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z,
# Duration +-315 576 000 000 s (10 000 years).
_MIN_TIMESTAMP_S: Final = -62_135_596_800
_MAX_TIMESTAMP_S: Final = 253_402_300_799
_MAX_DURATION_S: Final = 315_576_000_000
_NANOS_PER_S: Final = 1_000_000_000


# -- Struct -----------------------------------------------------------------------------------


def _too_deep(field: str) -> InvalidArgument:
    return InvalidArgument(
        f"nests deeper than {MAX_JSON_DEPTH} levels of objects and arrays",
        reason=Reason.NESTING_TOO_DEEP,
        field=field,
    )


NUL: Final = "\x00"


def holds_nul(field: str, *, key: bool = False) -> InvalidArgument:
    """The error for a text (or, with `key`, a key of the map or object) `field` holding NUL."""
    what = "a key of this object or map" if key else "the text"
    return InvalidArgument(
        f"{what} holds U+0000 (NUL), which no text sent to the server may contain",
        reason=Reason.INVALID_FIELD,
        field=field,
    )


def _value(value: struct_pb2.Value, field: str, depth: int) -> Any:
    """The Python value of `value`, a member of a container at `depth` (1: the top object)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{number} is not a JSON number (finite only)", field=field)
        return number
    if kind == "string_value":
        if NUL in value.string_value:
            raise holds_nul(field)
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _object(value.struct_value, field, depth + 1)
    if kind == "list_value":
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep(field)
        items = value.list_value.values
        return [_value(item, f"{field}[{i}]", depth + 1) for i, item in enumerate(items)]
    return None  # null_value, or unset (which JSON writes as null too)


def _object(struct: struct_pb2.Struct, field: str, depth: int) -> dict[str, Any]:
    if depth > MAX_JSON_DEPTH:
        raise _too_deep(field)
    fields = struct.fields
    if any(NUL in key for key in fields):
        raise holds_nul(field, key=True)
    return {key: _value(item, f"{field}.{key}", depth) for key, item in fields.items()}


def struct_to_dict(struct: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A JSON object as plain Python, checked (finite numbers, depth, no NUL in a string or
    key); numbers come back as floats (JSON has one number type). Errors name the member under
    `field` (a key holding NUL: the object)."""
    return _object(struct, field, 1)


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(dict(values))
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"not representable as JSON: {error}") from None
    return struct


# -- Timestamp and Duration -------------------------------------------------------------------


def time_from_proto(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    """The instant, checked against protobuf's range; errors name `field`."""
    if not _MIN_TIMESTAMP_S <= message.seconds <= _MAX_TIMESTAMP_S:
        raise InvalidArgument(
            f"seconds {message.seconds} is outside 0001-01-01 to 9999-12-31",
            field=f"{field}.seconds",
        )
    if not 0 <= message.nanos < _NANOS_PER_S:
        raise InvalidArgument(
            f"nanos {message.nanos} must be 0 to 999999999", field=f"{field}.nanos"
        )
    return message.ToDatetime(tzinfo=UTC)


def duration_s(message: duration_pb2.Duration, field: str) -> float:
    """The duration in seconds, checked against protobuf's range; errors name `field`."""
    seconds, nanos = message.seconds, message.nanos
    if not -_MAX_DURATION_S <= seconds <= _MAX_DURATION_S:
        raise InvalidArgument(
            f"seconds {seconds} is outside +-{_MAX_DURATION_S} (10 000 years)",
            field=f"{field}.seconds",
        )
    mixed_signs = seconds and nanos and (seconds < 0) != (nanos < 0)
    if not -_NANOS_PER_S < nanos < _NANOS_PER_S or mixed_signs:
        raise InvalidArgument(
            f"nanos {nanos} must be within one second and of the sign of seconds",
            field=f"{field}.nanos",
        )
    return seconds + nanos / 1e9


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    # Timestamp.FromDatetime is pure Python and showed in profiles of ScheduleJob.
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def set_time(message: Any, name: str, value: datetime | None) -> None:
    if value is not None:
        getattr(message, name).CopyFrom(timestamp(value))


# -- any message ------------------------------------------------------------------------------


# What check_text does with a field, by descriptor (worked out once per message type).
_SKIP, _TEXT, _TEXTS, _MESSAGE, _MESSAGES, _TEXT_MAP, _MESSAGE_MAP, _OTHER_MAP = range(8)
_PLANS: dict[Any, dict[int, int]] = {}


def _plan(descriptor: Any) -> dict[int, int]:
    plan = _PLANS.get(descriptor)
    if plan is not None:
        return plan
    plan = {}
    for item in descriptor.fields:
        kind = _SKIP
        if item.type == item.TYPE_STRING:
            kind = _TEXTS if item.is_repeated else _TEXT
        elif item.message_type is None or item.message_type.full_name in _JSON_TYPES:
            kind = _SKIP  # JSON values: struct_to_dict refuses NUL where it converts them
        elif item.message_type.GetOptions().map_entry:
            value = item.message_type.fields_by_name["value"]
            if value.type == value.TYPE_STRING:
                kind = _TEXT_MAP
            elif value.message_type is not None:
                kind = _MESSAGE_MAP
            else:
                kind = _OTHER_MAP
        else:
            kind = _MESSAGES if item.is_repeated else _MESSAGE
        plan[item.number] = kind
    _PLANS[descriptor] = plan
    return plan


_JSON_TYPES: Final = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


def check_text(message: Message, field: str = "") -> None:
    """No string anywhere in `message` holds U+0000 (NUL): fields, repeated entries, map keys
    and values. PostgreSQL's text and jsonb cannot store NUL while SQLite can; refusing it
    everywhere keeps the two stores alike. JSON values (Struct) are left to struct_to_dict,
    which every request's Struct goes through and which refuses NUL in their strings and keys:
    walking them twice cost more than the rest of a ScheduleJob's check.

    INVALID_FIELD naming the first offending field under `field` (`spec.todos.todos[0].text`,
    `spec.labels[team]`; a key holding NUL: the map)."""
    found = _nul_at(message)
    if found is not None:
        path, key = found
        raise holds_nul(f"{field}.{path}" if field else path, key=key)


def _nul_at(message: Message) -> tuple[str, bool] | None:
    """Where in `message` a string holds NUL (its path, and whether it is a map key), or None.
    Paths are built only on the way back from a find: most requests have none."""
    plan = _plan(message.DESCRIPTOR)
    for descriptor, value in message.ListFields():
        kind = plan[descriptor.number]
        if kind == _SKIP:
            continue
        name = descriptor.name
        if kind == _TEXT:
            if NUL in value:
                return name, False
        elif kind == _MESSAGE:
            if (inner := _nul_at(value)) is not None:
                return f"{name}.{inner[0]}", inner[1]
        elif kind == _TEXTS:
            for i, item in enumerate(value):
                if NUL in item:
                    return f"{name}[{i}]", False
        elif kind == _MESSAGES:
            for i, item in enumerate(value):
                if (inner := _nul_at(item)) is not None:
                    return f"{name}[{i}].{inner[0]}", inner[1]
        else:  # a map
            if any(isinstance(key, str) and NUL in key for key in value):
                return name, True
            if kind == _TEXT_MAP:
                for key, item in value.items():
                    if NUL in item:
                        return f"{name}[{key}]", False
            elif kind == _MESSAGE_MAP:
                for key, item in value.items():
                    if (inner := _nul_at(item)) is not None:
                        return f"{name}[{key}].{inner[0]}", inner[1]
    return None


def check_message(message: Message, field: str) -> None:
    """Check every Struct, Timestamp and Duration set anywhere inside `message`.

    For messages that are stored or forwarded as they are (a LAM message), not only converted
    field by field; errors name the offending field under `field`.
    """
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Struct":
        struct_to_dict(message, field)  # type: ignore[arg-type]
        return
    if name == "google.protobuf.Timestamp":
        time_from_proto(message, field)  # type: ignore[arg-type]
        return
    if name == "google.protobuf.Duration":
        duration_s(message, field)  # type: ignore[arg-type]
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        path = f"{field}.{descriptor.name}" if field else descriptor.name
        if descriptor.message_type.GetOptions().map_entry:
            value_type = descriptor.message_type.fields_by_name["value"]
            if value_type.message_type is not None:
                for key, item in value.items():
                    check_message(item, f"{path}[{key}]")
        elif descriptor.is_repeated:
            for i, item in enumerate(value):
                check_message(item, f"{path}[{i}]")
        else:
            check_message(value, path)
