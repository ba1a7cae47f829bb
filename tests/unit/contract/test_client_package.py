"""The Python client (generated contract + SDK) builds as a wheel of its own, complete."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = ROOT / "proto"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    client_source = str(ROOT / "clients" / "python")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(out),
            client_source,
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("cpa_client-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_every_generated_module_and_the_sdk(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for proto in PROTO_ROOT.rglob("*.proto"):
        module = str(proto.relative_to(PROTO_ROOT)).removesuffix(".proto")
        assert f"{module}_pb2.py" in names
        assert f"{module}_pb2.pyi" in names
    assert "cpa/scheduler/v1/scheduler_service_pb2_grpc.py" in names
    assert "cpa/executor/v1/executor_service_pb2_grpc.py" in names
    assert {"cpa/py.typed", "cpa_client/__init__.py", "cpa_client/py.typed"} <= names
    # Nothing of the server or the agent leaks into the client package.
    assert not any(n.startswith(("cpa_scheduler/", "cpa_agent/", "cpa_cli/")) for n in names)


def test_wheel_declares_its_runtime_dependencies(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    required: set[str] = set()
    extras: dict[str, set[str]] = {}
    for line in wheel.read(metadata_name).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement, _, marker = line.split(":", 1)[1].partition(";")
        name = requirement.strip().split(">")[0].split("<")[0].split("=")[0].strip()
        if "extra ==" in marker:
            extras.setdefault(marker.split("==")[1].strip().strip("'\""), set()).add(name)
        else:
            required.add(name)
    assert required == {"grpcio", "protobuf", "googleapis-common-protos"}
    # Structured, PII-redacted logs (cpa_client.telemetry) only for who asks: cpa-client[logs].
    assert extras == {"logs": {"structlog", "google-re2"}}
