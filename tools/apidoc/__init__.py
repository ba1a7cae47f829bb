"""OpenAPI 3.1 document and HTML reference page of the REST/JSON gateway, generated from the
descriptor set (deploy/api.binpb). `python -m tools.apidoc` writes them; tools/codegen.py runs it
after building the descriptor set, so `make codegen-check` catches drift. docs/GATEWAY.md."""

from __future__ import annotations

from pathlib import Path

from .descriptors import Descriptors
from .document import build_document, render_json
from .html import render_html

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "deploy" / "api.binpb"
OUT_DIR = ROOT / "deploy" / "openapi"
OPENAPI_FILE = "cpa-scheduler.openapi.json"
REFERENCE_FILE = "cpa-scheduler.html"


def generate(descriptor_set: Path = DESCRIPTOR_SET) -> dict[str, str]:
    """File name -> text of every generated file, from the descriptor set."""
    document = build_document(Descriptors.load(descriptor_set))
    return {OPENAPI_FILE: render_json(document), REFERENCE_FILE: render_html(document)}


__all__ = [
    "DESCRIPTOR_SET",
    "OPENAPI_FILE",
    "OUT_DIR",
    "REFERENCE_FILE",
    "build_document",
    "generate",
    "render_html",
    "render_json",
]
