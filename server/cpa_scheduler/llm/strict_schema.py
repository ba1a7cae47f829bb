"""The response format a structured call sends: the model's JSON schema in the subset OpenAI's
strict structured outputs accept.

The SDK's own conversion (`to_strict_json_schema`: every property required, objects closed, refs
inlined where they have siblings) keeps keywords strict mode refuses: `default` (a field with a
default), `minLength`/`maxLength` (a `max_length`). Those are dropped here; the length bounds are
said in the description instead, so the model still knows them. The answer is validated against
the pydantic model itself, so what the schema no longer says is still enforced (a too long value
is a bad answer).
"""

from __future__ import annotations

from typing import Any

from openai.lib._pydantic import to_strict_json_schema
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel

# Keywords strict mode refuses that a pydantic model's schema carries.
_DROPPED = ("default",)
_LENGTHS = (("minLength", "at least {} characters"), ("maxLength", "at most {} characters"))


def strict_response_format(model: type[BaseModel]) -> ResponseFormatJSONSchema:
    """The `response_format` of a structured call answered as `model`."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": model.__name__,
            "schema": strict_schema(model),
            "strict": True,
        },
    }


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema as strict mode accepts it (see the module doc)."""
    schema = to_strict_json_schema(model)
    _strip(schema)
    return schema


def _strip(node: object) -> None:
    """Removes the refused keywords from every schema under `node`, in place."""
    if isinstance(node, list):
        for item in node:
            _strip(item)
        return
    if not isinstance(node, dict):
        return
    for key in _DROPPED:
        node.pop(key, None)
    bounds = [text.format(node.pop(key)) for key, text in _LENGTHS if key in node]
    if bounds:
        said = node.get("description", "")
        node["description"] = f"{said} {' and '.join(bounds).capitalize()}.".strip()
    for key, value in node.items():
        # Under `properties` and `$defs` the keys are names, not keywords: walk their values.
        if key in ("properties", "$defs"):
            for child in value.values():
                _strip(child)
        elif key in ("items", "anyOf"):
            _strip(value)
