"""Regenerate everything derived from proto/: Python code (messages, gRPC stubs, type stubs)
under clients/python/, TypeScript code under clients/typescript/src/gen (buf.gen.ts.yaml, with
the package's own protoc-gen-es: `npm ci` in clients/typescript first), the descriptor set Envoy
and grpcurl read, and from that set the gateway's OpenAPI document and reference page
(deploy/openapi/, by tools/apidoc).

Run `python tools/codegen.py`; CI runs it and fails when the tree changes afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
VENDORED_ROOT = ROOT / "third_party" / "googleapis"
PYTHON_OUT = ROOT / "clients" / "python"
GENERATED_PACKAGE = PYTHON_OUT / "cpa"
DESCRIPTOR_SET = ROOT / "deploy" / "api.binpb"
TYPESCRIPT_TEMPLATE = ROOT / "buf.gen.ts.yaml"
TYPESCRIPT_PLUGIN = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "protoc-gen-es"


def _proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def _tool_env() -> dict[str, str]:
    # protoc finds its mypy plugins on PATH; put this interpreter's scripts first.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def generate_python(files: list[str]) -> None:
    from grpc_tools import protoc  # a dev dependency, only needed here

    shutil.rmtree(GENERATED_PACKAGE, ignore_errors=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{VENDORED_ROOT}",
        f"-I{well_known}",
        f"--python_out={PYTHON_OUT}",
        f"--grpc_python_out={PYTHON_OUT}",
        f"--mypy_out={PYTHON_OUT}",
        f"--mypy_grpc_out={PYTHON_OUT}",
        *files,
    ]
    result = subprocess.run(
        [sys.executable, "-m", *args], env=_tool_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"protoc failed:\n{result.stderr}")
    _remove_empty_grpc_modules(files)
    # Explicit packages (not namespace packages) so type checkers and setuptools agree.
    for directory in [GENERATED_PACKAGE, *GENERATED_PACKAGE.rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").write_text('"""Generated from proto/; do not edit."""\n')
    (GENERATED_PACKAGE / "py.typed").write_text("")


def _remove_empty_grpc_modules(files: list[str]) -> None:
    # grpc_tools writes a *_pb2_grpc module for every file; only files with services need one.
    for name in files:
        if "\nservice " in (PROTO_ROOT / name).read_text():
            continue
        stem = PYTHON_OUT / name.removesuffix(".proto")
        for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
            Path(f"{stem}{suffix}").unlink(missing_ok=True)


def _buf() -> str:
    buf = shutil.which("buf", path=_tool_env()["PATH"])
    if buf is None:
        raise SystemExit("buf not found: install the dev extras (pip install -e '.[dev]')")
    return buf


def generate_typescript() -> None:
    # The plugin's version is pinned by clients/typescript/package-lock.json, so the output is
    # the same on every machine (the drift check compares it with the committed code).
    if not TYPESCRIPT_PLUGIN.exists():
        raise SystemExit(
            f"{TYPESCRIPT_PLUGIN.relative_to(ROOT)} is missing: run `npm ci` in clients/typescript"
        )
    subprocess.run(
        [_buf(), "generate", "--template", str(TYPESCRIPT_TEMPLATE.relative_to(ROOT))],
        cwd=ROOT,
        check=True,
    )


def build_descriptor_set() -> None:
    DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)
    buf = _buf()
    # Includes imports and source info, so Envoy can transcode and grpcurl can describe.
    subprocess.run([buf, "build", "-o", str(DESCRIPTOR_SET)], cwd=ROOT, check=True)


def generate_api_docs() -> None:
    # A module of its own (python -m tools.apidoc), run from the root like buf.
    subprocess.run([sys.executable, "-m", "tools.apidoc"], cwd=ROOT, check=True)


def main() -> None:
    files = _proto_files()
    generate_python(files)
    generate_typescript()
    build_descriptor_set()
    generate_api_docs()
    print(
        f"generated {len(files)} proto files into {PYTHON_OUT.relative_to(ROOT)}/cpa, "
        f"clients/typescript/src/gen and {DESCRIPTOR_SET.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
