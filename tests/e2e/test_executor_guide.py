"""docs/EXECUTOR_GUIDE.md stays true: its example package is the file under examples/, it works
alone with the testing helpers, pip installs it from its pyproject, and an agent started from
the installed entry point runs it against a real scheduler."""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_agent import ExecutorError, entry_point_registry
from cpa_agent.executors.discovery import discover
from cpa_agent.executors.testing import MemoryArtifacts, StaticSecrets, run_alone
from cpa_client import SchedulerClient

from .conftest import Agents, finished, todo, todos_spec

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "EXECUTOR_GUIDE.md"
PACKAGE = ROOT / "examples" / "executor_package"
MODULE = PACKAGE / "cpa_example_executors" / "__init__.py"


def _fenced_blocks(text: str, info: str) -> list[str]:
    return re.findall(rf"^```{info}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_guides_example_is_the_shipped_package() -> None:
    guide = GUIDE.read_text(encoding="utf-8")

    assert MODULE.read_text(encoding="utf-8") in _fenced_blocks(guide, "python")
    assert (PACKAGE / "pyproject.toml").read_text(encoding="utf-8") in _fenced_blocks(guide, "toml")


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.syspath_prepend(str(PACKAGE))
    import cpa_example_executors

    yield cpa_example_executors
    sys.modules.pop("cpa_example_executors", None)


async def test_the_example_runs_alone_with_the_testing_helpers(
    example: object, tmp_path: Path
) -> None:
    from cpa_example_executors import FileDrop

    drop = FileDrop(tmp_path)
    artifacts = MemoryArtifacts()
    secrets = StaticSecrets({"env:SIGNING_KEY": "k3y"})

    outputs = await run_alone(
        drop,
        params={"name": "report.txt", "lines": ["a", "b"], "sign": True, "keep_copy": True},
        credential_refs={"signing": "env:SIGNING_KEY"},
        secrets=secrets,
        artifacts=artifacts,
    )

    signature = hmac.new(b"k3y", b"a\nb\n", hashlib.sha256).hexdigest()
    data = (tmp_path / "report.txt").read_bytes()
    assert data == f"a\nb\nsignature: {signature}\n".encode()
    assert outputs["sha256"] == hashlib.sha256(data).hexdigest()
    assert artifacts.saved["report.txt"][1] == data
    # Run again (a retry): the same content is success, not a conflict.
    again = await run_alone(
        drop,
        params={"name": "report.txt", "lines": ["a", "b"], "sign": True, "keep_copy": True},
        credential_refs={"signing": "env:SIGNING_KEY"},
        secrets=secrets,
        artifacts=artifacts,
    )
    assert again == outputs


async def test_the_examples_params_and_verify_refuse_what_they_should(
    example: object, tmp_path: Path
) -> None:
    from cpa_example_executors import FileDrop

    drop = FileDrop(tmp_path)

    with pytest.raises(ExecutorError) as caught:
        await run_alone(drop, params={"name": "../escape", "lines": ["x"]})
    assert (caught.value.code, caught.value.details["field"]) == ("INVALID_PARAMS", "params.name")

    outputs = await run_alone(drop, params={"name": "a.txt", "lines": ["x"]})
    (tmp_path / "a.txt").write_text("tampered\n", encoding="utf-8")
    with pytest.raises(ExecutorError) as caught:
        await drop.verify(None, outputs)  # type: ignore[arg-type]
    assert caught.value.code == "DROP_CHANGED"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The example installed by pip from a copy of its directory (the build writes beside its
    sources) into a target directory put on sys.path."""
    source = shutil.copytree(PACKAGE, tmp_path / "source")
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--no-index", "--target", str(target), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.syspath_prepend(str(target))
    yield target
    sys.modules.pop("cpa_example_executors", None)


@pytest.mark.timeout(180)
async def test_pip_installs_the_entry_point_and_an_agent_runs_it(
    installed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client: SchedulerClient,
    agents: Agents,
) -> None:
    points = importlib.metadata.entry_points(group="cpa.executors", name="example")
    assert [point.value for point in points] == ["cpa_example_executors:executors"]
    # Without its setting the factory declines, and the agent says why.
    unavailable = discover(["example"]).unavailable
    assert [(u.name, u.reason) for u in unavailable] == [
        ("example", "CPA_EXAMPLE_DROP_DIR is not set")
    ]

    drop_dir = tmp_path / "drop"
    drop_dir.mkdir()
    monkeypatch.setenv("CPA_EXAMPLE_DROP_DIR", str(drop_dir))
    await agents.start("dropper", registry=entry_point_registry(["builtin", "example"]))
    [agent] = [agent async for agent in client.list_agents()]
    assert "file_drop" in agent.capabilities.actions
    assert "drop:local" in agent.capabilities.capabilities

    spec = todos_spec(
        todo(
            "drop",
            "file_drop",
            params={"name": "out.txt", "lines": ["hello"]},
            required_capabilities=["drop:local"],
        )
    )
    job = await finished(client, (await client.schedule_job(spec)).job.job_id)

    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    assert (drop_dir / "out.txt").read_text(encoding="utf-8") == "hello\n"
