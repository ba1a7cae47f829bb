"""The descriptor set (deploy/api.binpb) as the OpenAPI generator reads it: messages, enums and
services by full name, each with the comment that precedes it in its .proto file.

The set is what `buf build` writes (imports and source info included), so the comments here are
the proto's own: the one place the API is described.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

# Paths into FileDescriptorProto / DescriptorProto (descriptor.proto field numbers) that
# SourceCodeInfo.Location.path uses.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _SERVICE_METHOD = 2, 2

FieldDescriptor = descriptor_pb2.FieldDescriptorProto
REQUIRED = field_behavior_pb2.REQUIRED
OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY


@dataclass(frozen=True)
class Message:
    full_name: str
    proto: descriptor_pb2.DescriptorProto
    comment: str
    field_comments: tuple[str, ...]
    oneof_comments: tuple[str, ...]

    @property
    def is_map_entry(self) -> bool:
        return self.proto.options.map_entry

    def field(self, name: str) -> FieldDescriptor:
        for field in self.proto.field:
            if field.name == name:
                return field
        raise KeyError(f"{self.full_name} has no field {name!r}")


@dataclass(frozen=True)
class Enum:
    full_name: str
    proto: descriptor_pb2.EnumDescriptorProto
    comment: str
    value_comments: tuple[str, ...]


@dataclass(frozen=True)
class Method:
    name: str
    proto: descriptor_pb2.MethodDescriptorProto
    comment: str

    @property
    def http(self) -> http_pb2.HttpRule | None:
        if not self.proto.options.HasExtension(annotations_pb2.http):
            return None
        rule: http_pb2.HttpRule = self.proto.options.Extensions[annotations_pb2.http]
        return rule


@dataclass(frozen=True)
class Service:
    full_name: str
    comment: str
    methods: tuple[Method, ...]


class Descriptors:
    """Every message, enum and service of a FileDescriptorSet, by full name (no leading dot)."""

    def __init__(self, file_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, Message] = {}
        self.enums: dict[str, Enum] = {}
        self.services: dict[str, Service] = {}
        for file in file_set.file:
            comments = _comments(file)
            prefix = file.package
            for index, message in enumerate(file.message_type):
                self._add_message(message, prefix, (_FILE_MESSAGE, index), comments)
            for index, enum in enumerate(file.enum_type):
                self._add_enum(enum, prefix, (_FILE_ENUM, index), comments)
            for index, service in enumerate(file.service):
                path = (_FILE_SERVICE, index)
                methods = tuple(
                    Method(m.name, m, comments.get((*path, _SERVICE_METHOD, i), ""))
                    for i, m in enumerate(service.method)
                )
                name = f"{prefix}.{service.name}"
                self.services[name] = Service(name, comments.get(path, ""), methods)

    @classmethod
    def load(cls, path: Path) -> Descriptors:
        # annotations_pb2 and field_behavior_pb2 are imported above, so their option extensions
        # (google.api.http, google.api.field_behavior) are parsed, not left as unknown fields.
        return cls(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()))

    def _add_message(
        self,
        proto: descriptor_pb2.DescriptorProto,
        prefix: str,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        name = f"{prefix}.{proto.name}"
        self.messages[name] = Message(
            full_name=name,
            proto=proto,
            comment=comments.get(path, ""),
            field_comments=tuple(
                comments.get((*path, _MESSAGE_FIELD, i), "") for i in range(len(proto.field))
            ),
            oneof_comments=tuple(
                comments.get((*path, _MESSAGE_ONEOF, i), "") for i in range(len(proto.oneof_decl))
            ),
        )
        for index, nested in enumerate(proto.nested_type):
            self._add_message(nested, name, (*path, _MESSAGE_NESTED, index), comments)
        for index, enum in enumerate(proto.enum_type):
            self._add_enum(enum, name, (*path, _MESSAGE_ENUM, index), comments)

    def _add_enum(
        self,
        proto: descriptor_pb2.EnumDescriptorProto,
        prefix: str,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        name = f"{prefix}.{proto.name}"
        values = tuple(comments.get((*path, _ENUM_VALUE, i), "") for i in range(len(proto.value)))
        self.enums[name] = Enum(name, proto, comments.get(path, ""), values)


def type_name(field: FieldDescriptor) -> str:
    """A message or enum field's type as a key of Descriptors.messages / .enums."""
    return field.type_name.removeprefix(".")


def behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comments by source path, each line without the one space after `//`."""
    found: dict[tuple[int, ...], str] = {}
    for location in file.source_code_info.location:
        if location.leading_comments:
            lines = [line.removeprefix(" ") for line in location.leading_comments.splitlines()]
            found[tuple(location.path)] = "\n".join(lines).strip()
    return found
