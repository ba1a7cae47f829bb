"""The gateway's OpenAPI document and reference page (deploy/openapi/, made by tools/apidoc from
deploy/api.binpb): committed as generated, valid OpenAPI 3.1, one operation per google.api.http
binding of every SchedulerService RPC (read here from the generated Python descriptors, not from
the generator's own reading), and schemas that the real proto3 JSON of our messages validates
against, while JSON of another shape does not."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from cpa.common.v1 import artifact_pb2, error_pb2, todo_pb2
from cpa.scheduler.v1 import job_event_pb2, job_pb2, scheduler_service_pb2
from tools.apidoc import DESCRIPTOR_SET, OPENAPI_FILE, OUT_DIR, REFERENCE_FILE, generate

SERVICE = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"]
DOC_URI = "urn:cpa-scheduler-openapi"
VERBS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((OUT_DIR / OPENAPI_FILE).read_text(encoding="utf-8"))
    return loaded


def test_committed_files_are_what_the_descriptor_set_generates() -> None:
    for name, text in generate(DESCRIPTOR_SET).items():
        assert (OUT_DIR / name).read_text(encoding="utf-8") == text, f"run make codegen: {name}"
    # Deterministic: a second run gives the same bytes.
    assert generate(DESCRIPTOR_SET) == generate(DESCRIPTOR_SET)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises with the validator's words
    broken = json.loads(json.dumps(document))
    broken["paths"]["/v1/jobs"]["get"]["parameters"][0]["in"] = "cookie-jar"
    with pytest.raises(Exception, match="cookie-jar"):
        validate(broken)


def _bindings() -> list[tuple[str, str, str, str]]:
    """(rpc, verb, path, body) of every binding, from the generated module's options."""
    found = []
    for method in SERVICE.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            verb = binding.WhichOneof("pattern")
            found.append((method.name, verb, getattr(binding, verb), binding.body))
    return found


def test_every_binding_of_every_rpc_is_an_operation(document: dict[str, Any]) -> None:
    bindings = _bindings()
    assert {rpc for rpc, *_ in bindings} == {m.name for m in SERVICE.methods}
    operations = {
        (verb, path): op for path, verbs in document["paths"].items() for verb, op in verbs.items()
    }
    assert set(operations) == {(verb, path) for _, verb, path, _ in bindings}
    assert [t["name"] for t in document["tags"]] == [m.name for m in SERVICE.methods]
    for rpc, verb, path, body in bindings:
        operation = operations[(verb, path)]
        method = SERVICE.methods_by_name[rpc]
        request = method.input_type
        assert operation["tags"] == [rpc]
        assert operation["x-grpc-method"] == f"/{SERVICE.full_name}/{rpc}"
        assert operation["description"].startswith(_comment_start(document, rpc))
        path_fields = re.findall(r"\{(\w+)\}", path)
        parameters = [p for p in operation["parameters"] if "name" in p]
        assert [p["name"] for p in parameters if p["in"] == "path"] == path_fields
        assert all(p["required"] for p in parameters if p["in"] == "path")
        query = [p["name"] for p in parameters if p["in"] == "query"]
        if body:
            # The body takes what the path does not bind: nothing is left for the query.
            assert query == []
            content = operation["requestBody"]["content"]["application/json"]["schema"]
            if body == "*" and path_fields:
                expected = [f.name for f in request.fields if f.name not in path_fields]
                assert list(content["properties"]) == expected
            elif body == "*":
                assert content == {"$ref": f"#/components/schemas/{request.full_name}"}
            else:
                body_type = request.fields_by_name[body].message_type
                assert body_type is not None
                assert content["$ref"].endswith(body_type.full_name)
        else:
            assert "requestBody" not in operation
            assert query == [f.name for f in request.fields if f.name not in path_fields]
        answer = operation["responses"]["200"]["content"]
        response_ref = {"$ref": f"#/components/schemas/{method.output_type.full_name}"}
        if method.server_streaming:
            assert answer["text/event-stream"]["x-sse-data-schema"] == response_ref
        else:
            assert answer["application/json"]["schema"] == response_ref
        for status in ("4XX", "5XX"):
            assert operation["responses"][status] == {"$ref": "#/components/responses/Error"}


def _comment_start(document: dict[str, Any], rpc: str) -> str:
    # The RPC's proto comment (its tag's description) opens each of its operations' text.
    text: str = next(t["description"] for t in document["tags"] if t["name"] == rpc)
    assert len(text) > 20, rpc
    return text


def test_component_fields_are_the_proto_field_names(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    pool = scheduler_service_pb2.DESCRIPTOR.pool
    for name, schema in schemas.items():
        if "enum" in schema:
            enum = pool.FindEnumTypeByName(name)
            assert schema["enum"] == [v.name for v in enum.values]
            assert set(schema["x-enum-descriptions"]) == set(schema["enum"])
            continue
        message = pool.FindMessageTypeByName(name)
        assert list(schema["properties"]) == [f.name for f in message.fields], name
        for field in message.fields:
            if field.is_repeated and not _is_map(field):
                assert schema["properties"][field.name]["type"] == "array", (name, field.name)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _validator(document: dict[str, Any], component: str) -> Any:
    """A validator of the OpenAPI 3.1 schema dialect (formats checked) for one component."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
    schema = {"$ref": f"{DOC_URI}#/components/schemas/{component}"}
    return OAS31Validator(schema, registry=registry, format_checker=oas31_format_checker)


def _as_envoy_prints(message: Message) -> Any:
    # preserve_proto_field_names + always_print_primitive_fields, as the gateway's transcoder.
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _sample_job() -> job_pb2.Job:
    job = job_pb2.Job(
        job_id="j1", state=job_pb2.JOB_STATE_RUNNING, last_event_sequence=12345678901234
    )
    job.create_time.FromSeconds(1_767_225_600)
    job.spec.labels["team"] = "ops"
    job.spec.context.update({"a": [1, "two", None, {"b": True}]})
    job.spec.deadline.FromSeconds(1_767_229_200)
    todo = todo_pb2.ToDo(id="t", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="echo")
    todo.params.update({"x": 1.5})
    todo.timeout.FromMilliseconds(1500)
    todo.inputs["doc"].task_id = "up"
    todo.inputs["doc"].artifact_name = "a.pdf"
    task = job.tasks.add(todo=todo, state=job_pb2.TASK_STATE_RUNNING)
    task.attempts.add(
        number=1, agent_id="a1", state=job_pb2.ATTEMPT_STATE_FAILED
    ).error.reason = error_pb2.ERROR_REASON_TASK_TIMEOUT
    task.artifacts.add(artifact_id="x", size_bytes=2**40, name="a.pdf")
    return job


def _response(job: job_pb2.Job) -> scheduler_service_pb2.GetJobResponse:
    return scheduler_service_pb2.GetJobResponse(job=job)


def _status() -> status_pb2.Status:
    status = status_pb2.Status(code=3, message="bad")
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason="INVALID_FIELD", domain="cpa.scheduler")
    )
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field="spec.todos", description="empty")
    status.details.add().Pack(bad)
    return status


def test_proto3_json_of_our_messages_validates_against_their_schemas(
    document: dict[str, Any],
) -> None:
    event = job_event_pb2.JobEvent(job_id="j1", sequence=7, terminal=True)
    event.task_progress.percent = 50.0
    event.create_time.GetCurrentTime()
    samples: list[tuple[str, Message]] = [
        ("cpa.scheduler.v1.GetJobResponse", _response(_sample_job())),
        ("cpa.scheduler.v1.WatchJobResponse", scheduler_service_pb2.WatchJobResponse(event=event)),
        (
            "cpa.scheduler.v1.DownloadArtifactResponse",
            scheduler_service_pb2.DownloadArtifactResponse(chunk=b"\x00\xffbytes"),
        ),
        (
            "cpa.scheduler.v1.DownloadArtifactResponse",
            scheduler_service_pb2.DownloadArtifactResponse(
                artifact=artifact_pb2.Artifact(artifact_id="a", size_bytes=3)
            ),
        ),
        ("google.rpc.Status", _status()),
    ]
    for component, message in samples:
        _validator(document, component).validate(_as_envoy_prints(message))

    # And the schemas are not vacuous: other shapes are refused.
    job = _as_envoy_prints(_response(_sample_job()))
    wrong: list[tuple[str, Any]] = [
        ("int64 as a JSON number", {"job": {**job["job"], "last_event_sequence": 5}}),
        ("enum as a number", {"job": {**job["job"], "state": 2}}),
        ("unknown enum name", {"job": {**job["job"], "state": "JOB_STATE_ASLEEP"}}),
        ("Timestamp as seconds", {"job": {**job["job"], "create_time": 1_767_225_600}}),
        ("Timestamp not RFC 3339", {"job": {**job["job"], "create_time": "yesterday"}}),
        ("map value not a string", {"job": {**job["job"], "spec": {"labels": {"a": 1}}}}),
        ("Struct not an object", {"job": {**job["job"], "spec": {"context": [1]}}}),
        ("repeated not an array", {"job": {**job["job"], "tasks": {}}}),
        ("Duration without s", {"job": {"tasks": [{"todo": {"timeout": "1.5"}}]}}),
    ]
    validator = _validator(document, "cpa.scheduler.v1.GetJobResponse")
    for what, instance in wrong:
        assert not validator.is_valid(instance), what
    details = _as_envoy_prints(_status())
    details["details"][0]["reason"] = 7  # ErrorInfo.reason is a string
    assert not _validator(document, "google.rpc.Status").is_valid(details)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.ids.update(value for key, value in attrs if key == "id" and value)
        self.links += [value or "" for key, value in attrs if key in ("href", "src")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_reference_page_shows_every_operation_and_schema_escaped(
    document: dict[str, Any],
) -> None:
    page = (OUT_DIR / REFERENCE_FILE).read_text(encoding="utf-8")
    parser = _Text()
    parser.feed(page)
    text = "".join(parser.text)
    for path, verbs in document["paths"].items():
        for verb, operation in verbs.items():
            assert f"op-{operation['operationId']}" in parser.ids
            assert f"{verb.upper()} {path}" in text
    for name in document["components"]["schemas"]:
        assert f"schema-{name}" in parser.ids
    # Proto comment text reaches the page as text: `<` in "after_sequence < 0" is escaped in
    # the file and reads back as `<`, not as a tag.
    assert "INVALID_FIELD job_id over 128 characters or after_sequence < 0" in " ".join(
        text.split()
    )
    assert "after_sequence &lt; 0" in page
    assert set(parser.tags) <= {
        *("html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4"),
        *("h5", "div", "nav", "strong", "ul", "li", "a", "main", "section", "p", "article"),
        *("span", "code", "table", "tr", "th", "td"),
    }
    # Self-contained: no script, nothing loaded, links only within the gateway.
    assert parser.links
    assert all(link == "/openapi.json" or link.startswith("#") for link in parser.links)
    for link in parser.links:
        assert link.removeprefix("#") in parser.ids or not link.startswith("#"), link
