"""The OpenAPI 3.1 document of SchedulerService's REST/JSON surface, as Envoy's
grpc_json_transcoder serves it (deploy/envoy/envoy.yaml.j2, docs/GATEWAY.md).

Each google.api.http binding of an RPC (the rule and its additional_bindings) is one operation:
- path variables (`{job_id}`) are path parameters, taken from the request message;
- `body: "*"` takes the rest of the request as the JSON body, `body: "<field>"` that field;
- the request fields that neither the path nor the body binds are query parameters (nested
  message fields as `a.b`; maps, Struct and repeated messages cannot be given in a query);
- server streams answer `text/event-stream`, one `data: <JSON message>` line each;
- errors are a JSON google.rpc.Status (ErrorInfo and BadRequest details) with the HTTP status
  of the gRPC code.
`response_body` is honoured on the main rule only: Envoy ignores it on additional bindings.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .descriptors import Descriptors, FieldDescriptor, Message, Method, type_name
from .schemas import WELL_KNOWN, Schema, SchemaBuilder

SERVICE = "cpa.scheduler.v1.SchedulerService"
TITLE = "CPA Scheduler REST API"
API_VERSION = "v1"
TENANT_HEADER = "x-cpa-tenant"
ERROR_DETAILS = ("google.rpc.ErrorInfo", "google.rpc.BadRequest")
# Well-known types a query parameter can carry (one string or number); others cannot be queried.
_QUERYABLE_WELL_KNOWN = frozenset(
    name for name, schema in WELL_KNOWN.items() if schema.get("type") in ("string", "number")
) | {"google.protobuf.Int32Value", "google.protobuf.UInt32Value", "google.protobuf.BoolValue"}
_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")
_VERBS = ("get", "put", "post", "delete", "patch")
_QUERY_DEPTH = 3

_INTRO = """\
REST/JSON for `{service}`, served by the gateway (Envoy's gRPC-JSON transcoder in front of the
scheduler, `cpa gateway`); generated from the proto's `google.api.http` rules and comments by
`tools/apidoc` (never edit this document: `make codegen` rewrites it).

- JSON is the proto3 JSON mapping with the proto's field names (`job_id`): 64-bit integers are
  strings, enums are value names, `Timestamp`s RFC 3339 strings, `Duration`s `"1.5s"`, `Struct`
  fields plain JSON objects. Answers carry every field without presence (zero values included);
  unset messages are left out.
- Server streams (`WatchJob`, `DownloadArtifact`) answer `text/event-stream`: one
  `data: <message JSON>` line per message, each followed by a blank line.
- An error is a JSON `google.rpc.Status` (`code`, `message`, `details` with a
  `google.rpc.ErrorInfo` whose `reason` says why, and for bad input a `google.rpc.BadRequest`
  naming the field), with the HTTP status of its gRPC code (INVALID_ARGUMENT 400,
  NOT_FOUND 404, ALREADY_EXISTS 409, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...).
- The same RPCs are served as native gRPC on the same port.

{comment}"""
_ERROR = """\
A `google.rpc.Status`. `details` holds a `google.rpc.ErrorInfo` (domain `cpa.scheduler`,
`reason` a `cpa.common.v1.ErrorReason` name without its `ERROR_REASON_` prefix, or one of the
gateway's own: `UNKNOWN_METHOD` (404), `INVALID_QUERY_PARAMETER` and `MALFORMED_BODY` (400),
`PAYLOAD_TOO_LARGE` (413)) and, for bad input, a `google.rpc.BadRequest` naming the field."""
_SSE = """\
Server-Sent Events: one `data: <JSON>` line per message, each followed by a blank line; the JSON
of each is a `{message}` (see `x-sse-data-schema`). The response ends after the last message."""


def build_document(descriptors: Descriptors) -> dict[str, Any]:
    service = descriptors.services[SERVICE]
    builder = SchemaBuilder(descriptors)
    paths: dict[str, dict[str, Any]] = {}
    for method in service.methods:
        for operation_id, verb, path, operation in _operations(descriptors, builder, method):
            if verb in paths.setdefault(path, {}):
                raise ValueError(f"{verb.upper()} {path} is bound twice ({operation_id})")
            paths[path][verb] = operation
    error_schema = _error_schema(builder)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": _INTRO.format(service=SERVICE, comment=service.comment),
        },
        "tags": [{"name": m.name, "description": m.comment} for m in service.methods if m.http],
        "paths": {path: _ordered(paths[path], _VERBS) for path in sorted(paths)},
        "components": {
            "schemas": {name: builder.components[name] for name in sorted(builder.components)},
            "parameters": {
                "Tenant": {
                    "name": TENANT_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "With authentication off (CPA_INSECURE_LOCAL): the tenant "
                    "the call acts for (its jobs, agents and artifacts); without it, the "
                    "server's CPA_DEFAULT_TENANT. With authentication on, the tenant is the "
                    "credential's (header authorization: Bearer <API key or JWT>, or "
                    "x-api-key), and naming another one is PERMISSION_DENIED.",
                    "schema": {"type": "string"},
                }
            },
            "responses": {
                "Error": {
                    "description": _ERROR,
                    "content": {"application/json": {"schema": error_schema}},
                }
            },
        },
    }


def render_json(document: dict[str, Any]) -> str:
    """The document as committed: indented, UTF-8, key order as built (paths and components
    sorted, properties in proto order), one trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def http_bindings(method: Method) -> list[tuple[str, str, str, str]]:
    """(verb, path template, body, response_body) of the rule and its additional bindings."""
    rule = method.http
    if rule is None:
        return []
    found = []
    for index, binding in enumerate([rule, *rule.additional_bindings]):
        pattern = binding.WhichOneof("pattern")
        if pattern == "custom":
            verb, path = binding.custom.kind.lower(), binding.custom.path
        elif pattern in _VERBS:
            verb, path = pattern, getattr(binding, pattern)
        else:
            raise ValueError(f"{method.name}: binding {index} has no pattern")
        # Envoy honours response_body on the main rule only.
        found.append((verb, path, binding.body, rule.response_body))
    return found


def _operations(
    descriptors: Descriptors, builder: SchemaBuilder, method: Method
) -> list[tuple[str, str, str, dict[str, Any]]]:
    request = descriptors.messages[method.proto.input_type.removeprefix(".")]
    response = method.proto.output_type.removeprefix(".")
    bindings = http_bindings(method)
    found = []
    for index, (verb, template, body, response_body) in enumerate(bindings):
        operation_id = method.name if index == 0 else f"{method.name}_{index + 1}"
        path_fields = _VARIABLE.findall(template)
        parameters: list[Schema] = [
            _path_parameter(descriptors, builder, request, name) for name in path_fields
        ]
        if body != "*":
            skip = {*path_fields, body}
            parameters += _query_parameters(descriptors, builder, request, "", skip, ())
        parameters.append({"$ref": "#/components/parameters/Tenant"})
        description = method.comment
        if index:
            main_verb, main_path = bindings[0][0], bindings[0][1]
            description += (
                f"\n\nAnother binding of `{method.name}` (`{main_verb.upper()} {main_path}`)."
            )
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "summary": _summary(method.comment),
            "description": description,
            "tags": [method.name],
            "x-grpc-method": f"/{SERVICE}/{method.name}",
            "parameters": parameters,
        }
        if body:
            operation["requestBody"] = _request_body(builder, request, body, path_fields)
        operation["responses"] = {
            "200": _success(descriptors, builder, method, response, response_body),
            "4XX": {"$ref": "#/components/responses/Error"},
            "5XX": {"$ref": "#/components/responses/Error"},
        }
        found.append((operation_id, verb, _VARIABLE.sub(r"{\1}", template), operation))
    return found


def _path_parameter(
    descriptors: Descriptors, builder: SchemaBuilder, request: Message, dotted: str
) -> Schema:
    message, field = _resolve(descriptors, request, dotted)
    schema = builder.field_schema(message, field)
    description = schema.pop("description", "")
    schema.pop("readOnly", None)
    return {
        "name": dotted,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query_parameters(
    descriptors: Descriptors,
    builder: SchemaBuilder,
    message: Message,
    prefix: str,
    skip: set[str],
    seen: tuple[str, ...],
) -> list[Schema]:
    """The request fields a query may set: scalars, enums and scalar-like well-known types, each
    possibly repeated (`?x=1&x=2`), and the fields of nested messages as `a.b`."""
    parameters: list[Schema] = []
    for field in message.proto.field:
        name = prefix + field.name
        if name in skip:
            continue
        nested = type_name(field) if field.type == FieldDescriptor.TYPE_MESSAGE else ""
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if nested and nested not in _QUERYABLE_WELL_KNOWN:
            inner = descriptors.messages.get(nested)
            if (
                inner is None
                or repeated
                or inner.full_name in WELL_KNOWN
                or nested in seen
                or len(seen) >= _QUERY_DEPTH
            ):
                continue  # maps, repeated messages, Struct/Value/Any: not expressible in a query
            parameters += _query_parameters(
                descriptors, builder, inner, f"{name}.", skip, (*seen, message.full_name)
            )
            continue
        schema = builder.field_schema(message, field)
        description = schema.pop("description", "")
        schema.pop("readOnly", None)
        parameter: Schema = {"name": name, "in": "query", "required": False}
        if description:
            parameter["description"] = description
        parameter["schema"] = schema
        if repeated:
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _request_body(
    builder: SchemaBuilder, request: Message, body: str, path_fields: list[str]
) -> dict[str, Any]:
    if body == "*":
        if path_fields:  # the path binds some fields: the body is the rest
            schema = builder.message_schema(request, without=frozenset(path_fields))
        else:
            schema = builder.use(request.full_name)
    else:
        schema = builder.field_schema(request, request.field(body))
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _success(
    descriptors: Descriptors,
    builder: SchemaBuilder,
    method: Method,
    response: str,
    response_body: str,
) -> dict[str, Any]:
    message = descriptors.messages[response]
    schema = (
        builder.field_schema(message, message.field(response_body))
        if response_body
        else builder.use(response)
    )
    if method.proto.server_streaming:
        stream: dict[str, Any] = {
            "schema": {"type": "string", "description": _SSE.format(message=response)},
            "x-sse-data-schema": schema,
        }
        return {"description": message.comment, "content": {"text/event-stream": stream}}
    return {"description": message.comment, "content": {"application/json": {"schema": schema}}}


def _error_schema(builder: SchemaBuilder) -> Schema:
    """google.rpc.Status whose details are ErrorInfo, BadRequest or another Any."""
    status = builder.use("google.rpc.Status")
    kinds: list[Schema] = [
        {
            "allOf": [
                builder.use(detail),
                {
                    "type": "object",
                    "properties": {"@type": {"const": f"type.googleapis.com/{detail}"}},
                    "required": ["@type"],
                },
            ]
        }
        for detail in ERROR_DETAILS
    ]
    # Any other detail type, so that an ErrorInfo or BadRequest must have its own shape.
    known = [f"type.googleapis.com/{detail}" for detail in ERROR_DETAILS]
    other: Schema = {
        "type": "object",
        "properties": {"@type": {"type": "string", "not": {"enum": known}}},
        "required": ["@type"],
    }
    details = builder.components["google.rpc.Status"]["properties"]["details"]
    details["items"] = {"anyOf": [*kinds, other]}
    return status


def _resolve(descriptors: Descriptors, request: Message, dotted: str) -> tuple[Message, Any]:
    message = request
    *parents, leaf = dotted.split(".")
    for part in parents:
        message = descriptors.messages[type_name(message.field(part))]
    return message, message.field(leaf)


def _summary(comment: str) -> str:
    """The comment's first sentence, on one line."""
    text = " ".join(comment.split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def _ordered(operations: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    def rank(verb: str) -> tuple[int, str]:
        return (order.index(verb) if verb in order else len(order), verb)

    return {verb: operations[verb] for verb in sorted(operations, key=rank)}
