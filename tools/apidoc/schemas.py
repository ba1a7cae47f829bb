"""JSON Schemas of protobuf messages as Envoy's transcoder writes and reads them: the proto3 JSON
mapping with `preserve_proto_field_names` (field names as in the .proto), int64 as strings, enums
by name, well-known types in their JSON forms (Timestamp and Duration strings, Struct an object,
Value any JSON).

Our messages and enums become components (`#/components/schemas/<full name>`); well-known types
are written inline, where they are used, as the JSON they are.
"""

from __future__ import annotations

from typing import Any

from .descriptors import (
    OUTPUT_ONLY,
    REQUIRED,
    Descriptors,
    FieldDescriptor,
    Message,
    behaviors,
    type_name,
)

Schema = dict[str, Any]
REF_PREFIX = "#/components/schemas/"

_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_BYTES = {"type": "string", "contentEncoding": "base64"}
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: _BYTES,
}
# The proto3 JSON forms of the well-known types (google.protobuf.*).
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "examples": ["1.5s"],
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.NullValue": {"type": "null"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "uint32", "minimum": 0},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": _BYTES,
}


def ref(full_name: str) -> Schema:
    return {"$ref": REF_PREFIX + full_name}


class SchemaBuilder:
    """Component schemas for the messages and enums reached from the roots it is asked for."""

    def __init__(self, descriptors: Descriptors) -> None:
        self.descriptors = descriptors
        self.components: dict[str, Schema] = {}

    def use(self, full_name: str) -> Schema:
        """The schema of a message or enum where it is used: a well-known type inline, any other
        a reference to its component (built, with everything it reaches, on first use)."""
        if full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[full_name])
        if full_name not in self.components:
            self.components[full_name] = {}  # reserved first: messages may refer to themselves
            if full_name in self.descriptors.enums:
                self.components[full_name] = self._enum(full_name)
            else:
                self.components[full_name] = self.message_schema(
                    self.descriptors.messages[full_name]
                )
        return ref(full_name)

    def field_schema(self, message: Message, field: FieldDescriptor) -> Schema:
        """A field's schema with its comment as description (repeated, map, scalar or type)."""
        index = list(message.proto.field).index(field)
        entry = self._map_entry(field)
        schema: Schema
        if entry is not None:  # a map: its entry message is no component of its own
            schema = {"type": "object", "additionalProperties": self._value_schema(entry)}
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            schema = {"type": "array", "items": self._value_schema(field)}
        else:
            schema = self._value_schema(field)
        description = message.field_comments[index]
        if description:
            schema["description"] = description
        if OUTPUT_ONLY in behaviors(field):
            schema["readOnly"] = True  # OUTPUT_ONLY: set by the server
        return schema

    def message_schema(self, message: Message, *, without: frozenset[str] = frozenset()) -> Schema:
        """The object a message is in JSON; fields named in `without` (bound elsewhere, e.g. in
        the URL path) are left out."""
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.proto.field:
            if field.name in without:
                continue
            properties[field.name] = self.field_schema(message, field)
            if REQUIRED in behaviors(field):
                required.append(field.name)
        schema: Schema = {"type": "object"}
        description = "\n\n".join(p for p in (message.comment, _oneofs(message, without)) if p)
        if description:
            schema["description"] = description
        schema["properties"] = properties
        if required:
            schema["required"] = required
        return schema

    def _value_schema(self, field: FieldDescriptor) -> Schema:
        if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM):
            return self.use(type_name(field))
        return dict(_SCALARS[field.type])

    def _map_entry(self, field: FieldDescriptor) -> FieldDescriptor | None:
        """The value field of a map's entry message, or None for any other field."""
        if (
            field.label != FieldDescriptor.LABEL_REPEATED
            or field.type != FieldDescriptor.TYPE_MESSAGE
        ):
            return None
        entry = self.descriptors.messages.get(type_name(field))
        if entry is None or not entry.is_map_entry:
            return None
        return entry.field("value")  # JSON map keys are strings whatever the key type

    def _enum(self, full_name: str) -> Schema:
        enum = self.descriptors.enums[full_name]
        names = [value.name for value in enum.proto.value]
        schema: Schema = {"type": "string"}
        if enum.comment:
            schema["description"] = enum.comment
        schema["enum"] = names
        # Each value's comment, for readers (the reference page lists them); JSON Schema
        # validators ignore unknown keywords.
        schema["x-enum-descriptions"] = dict(zip(names, enum.value_comments, strict=True))
        return schema


def _oneofs(message: Message, without: frozenset[str]) -> str:
    """A sentence per real oneof (not proto3 `optional`): which members exclude each other."""
    members: dict[int, list[str]] = {}
    for field in message.proto.field:
        real = field.HasField("oneof_index") and not field.proto3_optional
        if real and field.name not in without:
            members.setdefault(field.oneof_index, []).append(f"`{field.name}`")
    sentences = []
    for index, names in sorted(members.items()):
        name = message.proto.oneof_decl[index].name
        comment = message.oneof_comments[index]
        about = f" ({comment.rstrip('.')})" if comment else ""
        sentences.append(f"Oneof `{name}`{about}: at most one of {', '.join(names)} is set.")
    return "\n".join(sentences)
