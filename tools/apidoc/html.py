"""The browsable reference page, rendered from the OpenAPI document alone: one self-contained
HTML file (inline CSS, no script, nothing fetched) that the gateway serves at GET /docs.

Operations are grouped by RPC (the document's tags), each with its method and path, gRPC method,
the proto comment, parameters, request body and answer; then every schema with its fields or
enum values. Every text from the document is HTML-escaped before `code` spans are marked up.
"""

from __future__ import annotations

import html
import re
from typing import Any

from .schemas import REF_PREFIX, Schema

_CODE = re.compile(r"`([^`]+)`")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2430;background:#fff}
header{background:#1d2430;color:#fff;padding:1rem 2rem}header h1{margin:0;font-size:1.5rem}
.layout{display:flex;align-items:flex-start}
nav{position:sticky;top:0;max-height:100vh;overflow:auto;flex:none;width:19rem;padding:1rem;
border-right:1px solid #dde;overflow-wrap:anywhere}
nav ul{list-style:none;padding-left:.5rem;margin:.2rem 0}
nav a{text-decoration:none;color:#245}main{padding:1rem 2rem;max-width:70rem;min-width:0}
code{background:#f2f4f8;padding:0 .2em;border-radius:3px;font-size:.92em}
.operation,.schema{border:1px solid #dde;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.verb{display:inline-block;min-width:4.2em;text-align:center;color:#fff;border-radius:4px;
padding:0 .4em;font-size:.85em;font-weight:600}.verb-get{background:#2b7a3d}
.verb-post{background:#245ea8}.verb-delete{background:#a83232}.verb-put,.verb-patch{background:#8a5a00}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #dde;
padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f6f7fa}
.badge{font-size:.75em;border:1px solid #889;border-radius:3px;padding:0 .3em;margin-left:.3em}
.muted{color:#667}
"""


def render_html(document: dict[str, Any]) -> str:
    info = document["info"]
    tags = [tag["name"] for tag in document["tags"]]
    operations = _operations_by_tag(document)
    schemas: dict[str, Schema] = document["components"]["schemas"]
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(info['title'])} {_e(info['version'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(info['title'])}</h1>",
        f"<div>version {_e(info['version'])} · OpenAPI {_e(document['openapi'])} document: "
        '<a style="color:#cde" href="/openapi.json">/openapi.json</a></div></header>',
        '<div class="layout"><nav><strong>Operations</strong><ul>',
    ]
    for tag in tags:
        out.append(f'<li><a href="#tag-{_e(tag)}">{_e(tag)}</a><ul>')
        for verb, path, operation in operations.get(tag, []):
            out.append(
                f'<li><a href="#op-{_e(operation["operationId"])}">'
                f"{_e(verb.upper())} {_e(path)}</a></li>"
            )
        out.append("</ul></li>")
    out.append('</ul><strong><a href="#schemas">Schemas</a></strong></nav><main>')
    out.append(f'<section id="intro">{_text(info["description"])}</section>')
    error = document["components"]["responses"]["Error"]
    out.append(f'<section id="errors"><h2>Errors</h2>{_text(error["description"])}')
    out.append(f"<p>Schema: {_type(error['content']['application/json']['schema'])}</p>")
    out.append('</section><section id="operations"><h2>Operations</h2>')
    for tag in tags:
        description = next(t.get("description", "") for t in document["tags"] if t["name"] == tag)
        out.append(f'<section id="tag-{_e(tag)}"><h3>{_e(tag)}</h3>')
        for verb, path, operation in operations.get(tag, []):
            out += _operation(verb, path, operation, description)
        out.append("</section>")
    out.append('</section><section id="schemas"><h2>Schemas</h2>')
    for name, schema in schemas.items():
        out += _schema(name, schema)
    out.append("</section></main></div></body></html>")
    return "\n".join(out) + "\n"


def _operations_by_tag(document: dict[str, Any]) -> dict[str, list[tuple[str, str, Any]]]:
    """Each tag's operations, its main binding first (operation ids `Name`, `Name_2`, ...)."""
    grouped: dict[str, list[tuple[str, str, Any]]] = {}
    for path, verbs in document["paths"].items():
        for verb, operation in verbs.items():
            for tag in operation.get("tags", []):
                grouped.setdefault(tag, []).append((verb, path, operation))
    for entries in grouped.values():
        entries.sort(key=lambda e: (len(e[2]["operationId"]), e[2]["operationId"]))
    return grouped


def _operation(verb: str, path: str, operation: dict[str, Any], tag_text: str) -> list[str]:
    out = [
        f'<article class="operation" id="op-{_e(operation["operationId"])}">',
        f'<h4><span class="verb verb-{_e(verb)}">{_e(verb.upper())}</span> '
        f"<code>{_e(path)}</code></h4>",
        f'<div class="muted">operation <code>{_e(operation["operationId"])}</code> · gRPC '
        f"<code>{_e(operation.get('x-grpc-method', ''))}</code></div>",
        _text(operation.get("description", tag_text)),
    ]
    parameters = [p for p in operation.get("parameters", []) if "$ref" not in p]
    if parameters:
        out.append("<h5>Parameters</h5><table><tr><th>name</th><th>in</th><th>type</th>")
        out.append("<th>description</th></tr>")
        for parameter in parameters:
            badge = '<span class="badge">required</span>' if parameter.get("required") else ""
            out.append(
                f"<tr><td><code>{_e(parameter['name'])}</code>{badge}</td>"
                f"<td>{_e(parameter['in'])}</td><td>{_type(parameter['schema'])}</td>"
                f"<td>{_text(parameter.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    out.append(
        '<p class="muted">Credential: header <code>authorization: Bearer &lt;API key or '
        "JWT&gt;</code> or <code>x-api-key</code> (401 without one, 403 without the "
        "permission); header <code>x-cpa-tenant</code> names the tenant only on a server "
        "with authentication off.</p>"
    )
    body = operation.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        out.append("<h5>Request body</h5><p><code>application/json</code>: ")
        out.append(f"{_type(schema)}</p>")
        if "properties" in schema:  # the request less its path fields, written out here
            out += _properties(schema)
    out.append("<h5>Answer</h5>")
    for status, response in operation["responses"].items():
        if "$ref" in response:
            out.append(
                f"<p><strong>{_e(status)}</strong>: <code>application/json</code> "
                '<a href="#errors">an error</a> (<code>google.rpc.Status</code>)</p>'
            )
            continue
        for media_type, content in response["content"].items():
            schema = content.get("x-sse-data-schema", content["schema"])
            stream = " (Server-Sent Events, one <code>data:</code> line per message of)"
            out.append(
                f"<p><strong>{_e(status)}</strong>: <code>{_e(media_type)}</code>"
                f"{stream if 'x-sse-data-schema' in content else ''} {_type(schema)}</p>"
            )
    out.append("</article>")
    return out


def _schema(name: str, schema: Schema) -> list[str]:
    out = [
        f'<article class="schema" id="schema-{_e(name)}"><h3><code>{_e(name)}</code></h3>',
        _text(schema.get("description", "")),
    ]
    if "enum" in schema:
        descriptions = schema.get("x-enum-descriptions", {})
        out.append("<table><tr><th>value</th><th>description</th></tr>")
        for value in schema["enum"]:
            out.append(
                f"<tr><td><code>{_e(value)}</code></td>"
                f"<td>{_text(descriptions.get(value, ''))}</td></tr>"
            )
        out.append("</table>")
    else:
        out += _properties(schema)
    out.append("</article>")
    return out


def _properties(schema: Schema) -> list[str]:
    properties: dict[str, Schema] = schema.get("properties", {})
    if not properties:
        return ['<p class="muted">No fields.</p>']
    required = set(schema.get("required", []))
    out = ["<table><tr><th>field</th><th>type</th><th>description</th></tr>"]
    for name, field in properties.items():
        badges = '<span class="badge">required</span>' if name in required else ""
        if field.get("readOnly"):
            badges += '<span class="badge">output only</span>'
        out.append(
            f"<tr><td><code>{_e(name)}</code>{badges}</td><td>{_type(field)}</td>"
            f"<td>{_text(field.get('description', ''))}</td></tr>"
        )
    out.append("</table>")
    return out


def _type(schema: Schema) -> str:
    """A schema as a short type phrase, linking to components."""
    if "$ref" in schema:
        target = schema["$ref"].removeprefix(REF_PREFIX)
        short = target.rsplit(".", 1)[-1]
        return f'<a href="#schema-{_e(target)}" title="{_e(target)}">{_e(short)}</a>'
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if "allOf" in schema:
        return _type(schema["allOf"][0])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of string to {_type(schema['additionalProperties'])}"
    if kind == "object":
        return "object" if "properties" in schema else "object (any JSON object)"
    if kind is None:
        return "any JSON value"
    details = [
        schema.get("format", ""),
        "base64" if schema.get("contentEncoding") == "base64" else "",
        f"e.g. {schema['examples'][0]}" if schema.get("examples") else "",
    ]
    extra = ", ".join(d for d in details if d)
    return _e(str(kind)) + (f" ({_e(extra)})" if extra else "")


def _text(text: str) -> str:
    """Comment text as HTML: blank lines part paragraphs, `- ` lines make a list, `x` code."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if lines[0].startswith("- "):
            items: list[str] = []
            for line in lines:
                if line.startswith("- ") or not items:
                    items.append(line.removeprefix("- "))
                else:
                    items[-1] += " " + line.strip()
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return "".join(out)


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", _e(text))


def _e(text: str) -> str:
    return html.escape(text, quote=True)
