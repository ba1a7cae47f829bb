"""The schemas structured calls send are in the subset OpenAI's strict structured outputs accept.

The rules are OpenAI's (Structured Outputs guide, "Supported schemas"): the root an object and
not anyOf; every object closed (`additionalProperties: false`) with every property in
`required`; only the listed keywords (string: pattern, format; number: multipleOf, minimum,
maximum, exclusive ones; array: minItems, maxItems; no `default`, `minLength`, `maxLength`,
`allOf`, `not`, `if`...); size limits. The guide allows 5 000 properties and 10 levels of
nesting; it allowed 100 and 5 when strict mode came out, and those are checked, the stricter,
since servers that speak OpenAI's API may follow the older rules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel

import cpa_scheduler
from cpa_scheduler.llm import LLMBadAnswerError, Message
from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.llm.strict_schema import strict_response_format, strict_schema
from cpa_scheduler.planning.llm_router import IntentChoice
from cpa_scheduler.planning.task_plan import TaskPlan
from tests.support.openai_server import OpenAIServer, json_reply

# Every model a structured call is answered in (test_every_structured_call_is_listed keeps the
# list whole).
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (TaskPlan, IntentChoice)

_STRUCTURE = {"type", "properties", "required", "additionalProperties", "items", "anyOf"}
_VALUES = {"enum", "const", "$ref", "$defs", "title", "description"}
_STRING = {"pattern", "format"}
_NUMBER = {"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_ARRAY = {"minItems", "maxItems"}
SUPPORTED = _STRUCTURE | _VALUES | _STRING | _NUMBER | _ARRAY
FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
MAX_PROPERTIES = 100
MAX_DEPTH = 5
MAX_NAMES_CHARS = 120_000  # property and definition names, enum and const values
MAX_ENUM_VALUES = 1_000


def violations(schema: dict[str, Any]) -> list[str]:
    """Every way `schema` breaks the rules, as `<path>: <rule>`."""
    found: list[str] = []
    if schema.get("type") != "object" or "anyOf" in schema:
        found.append("<root>: must be an object, not anyOf")
    counts = {"properties": 0, "chars": 0, "enum": 0}
    for path, node in _nodes(schema, "<root>"):
        found.extend(_node_violations(path, node, counts))
    if counts["properties"] > MAX_PROPERTIES:
        found.append(f"<root>: {counts['properties']} properties, at most {MAX_PROPERTIES}")
    if counts["chars"] > MAX_NAMES_CHARS:
        found.append(f"<root>: names and values of {counts['chars']} characters")
    if counts["enum"] > MAX_ENUM_VALUES:
        found.append(f"<root>: {counts['enum']} enum values, at most {MAX_ENUM_VALUES}")
    depth = _depth(schema, schema, ())
    if depth > MAX_DEPTH:
        found.append(f"<root>: objects nested {depth} levels deep, at most {MAX_DEPTH}")
    return found


def _nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema in `node` with its path, definitions once each."""
    yield path, node
    for name, child in node.get("$defs", {}).items():
        yield from _nodes(child, f"{path}.$defs.{name}")
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.properties.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}.items")
    for index, child in enumerate(node.get("anyOf", [])):
        yield from _nodes(child, f"{path}.anyOf[{index}]")


def _node_violations(path: str, node: dict[str, Any], counts: dict[str, int]) -> Iterator[str]:
    for keyword in sorted(set(node) - SUPPORTED):
        yield f"{path}: keyword {keyword!r} is not supported in strict mode"
    if not {"type", "anyOf", "$ref", "enum", "const"} & set(node):
        yield f"{path}: no type"
    if "format" in node and node["format"] not in FORMATS:
        yield f"{path}: format {node['format']!r} is not supported"
    ref = node.get("$ref")
    if ref is not None and not str(ref).startswith("#/$defs/"):
        yield f"{path}: $ref {ref!r} is not a local definition"
    counts["chars"] += sum(len(name) for name in node.get("$defs", {}))
    enum = node.get("enum", [])
    counts["enum"] += len(enum)
    counts["chars"] += sum(len(str(v)) for v in [*enum, *(["const"] if "const" in node else [])])
    if node.get("type") != "object" and "object" not in (node.get("type") or []):
        return
    properties = node.get("properties", {})
    counts["properties"] += len(properties)
    counts["chars"] += sum(len(name) for name in properties)
    if node.get("additionalProperties") is not False:
        yield f"{path}: additionalProperties must be false"
    missing = [name for name in properties if name not in node.get("required", [])]
    if missing:
        yield (
            f"{path}: {', '.join(missing)} not in required (an optional field must be required "
            "and allow null)"
        )


def _depth(node: dict[str, Any], root: dict[str, Any], seen: tuple[str, ...]) -> int:
    """How many object schemas deep `node` nests, following references (a recursive one
    counts as too deep)."""
    ref = node.get("$ref")
    if ref is not None:
        if ref in seen:
            return MAX_DEPTH + 1
        return _depth(root["$defs"][ref.removeprefix("#/$defs/")], root, (*seen, ref))
    children = [*node.get("properties", {}).values(), *node.get("anyOf", [])]
    if isinstance(node.get("items"), dict):
        children.append(node["items"])
    below = max((_depth(child, root, seen) for child in children), default=0)
    return below + (1 if node.get("type") == "object" else 0)


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


@pytest.mark.parametrize("model", RESPONSE_MODELS, ids=lambda m: m.__name__)
def test_the_schema_sent_keeps_to_strict_mode(model: type[BaseModel]) -> None:
    problems = violations(strict_schema(model))
    assert not problems, f"{model.__name__}'s strict schema:\n" + "\n".join(problems)


def test_the_sdks_conversion_alone_would_be_refused() -> None:
    """Why strict_schema strips: the SDK leaves pydantic's defaults and length bounds."""
    problems = violations(to_strict_json_schema(TaskPlan))
    assert "<root>.properties.reasoning: keyword 'default' is not supported in strict mode" in (
        problems
    )
    assert (
        "<root>.$defs.PlannedTask.properties.id: keyword 'maxLength' is not supported in strict "
        "mode"
    ) in problems


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "<root>: additionalProperties must be false",
            id="open-object",
        ),
        pytest.param(
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            "<root>: b not in required (an optional field must be required and allow null)",
            id="optional-by-omission",
        ),
        pytest.param(
            {"anyOf": [{"type": "object"}]},
            "<root>: must be an object, not anyOf",
            id="root-anyof",
        ),
        pytest.param(
            _closed({"a": {"type": "string", "format": "uri"}}),
            "<root>.properties.a: format 'uri' is not supported",
            id="format",
        ),
        pytest.param(
            _closed({"a": {"type": "string", "default": ""}}),
            "<root>.properties.a: keyword 'default' is not supported in strict mode",
            id="default",
        ),
    ],
)
def test_the_checker_names_the_offending_path(schema: dict[str, Any], expected: str) -> None:
    assert expected in violations(schema)


def test_the_checker_counts_nesting_through_references() -> None:
    level: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_DEPTH + 1):
        level = {
            "type": "object",
            "properties": {"next": {"type": "array", "items": level}},
            "required": ["next"],
            "additionalProperties": False,
        }
    schema = {"$defs": {"Deep": level}, **_closed({"deep": {"$ref": "#/$defs/Deep"}})}
    assert violations(schema) == [
        f"<root>: objects nested {MAX_DEPTH + 2} levels deep, at most {MAX_DEPTH}"
    ]


def test_every_structured_call_is_listed() -> None:
    """A model passed to generate_structured anywhere in the server is in RESPONSE_MODELS."""
    called: set[str] = set()
    for source in Path(cpa_scheduler.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "generate_structured"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Name)
            ):
                called.add(node.args[1].id)
    assert called == {model.__name__ for model in RESPONSE_MODELS}


PROMPT = [Message("user", "forward the March invoice")]


async def test_the_provider_sends_that_schema(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(json_reply({"reasoning": "", "tasks": []}))
    await provider.generate_structured(PROMPT, TaskPlan)
    (request,) = openai_server.chat_requests
    assert request.json["response_format"] == strict_response_format(TaskPlan)


async def test_a_bound_the_schema_only_describes_is_still_enforced(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    intent = strict_schema(IntentChoice)["properties"]["intent"]
    assert "maxLength" not in intent
    assert intent["description"] == "At most 128 characters."
    openai_server.chat.push(json_reply({"intent": "x" * 129, "confidence": 1, "parameters": []}))
    with pytest.raises(LLMBadAnswerError, match="not a IntentChoice"):
        await provider.generate_structured(PROMPT, IntentChoice)
