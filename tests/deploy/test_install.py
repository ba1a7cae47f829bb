"""The image's install, replayed without Docker, and the installed `cpa` run in every role.

deploy/Dockerfile's build and runtime stages are replayed (tests/deploy/dockerfile.py): the
files its COPY lines name, then its install lines (deploy/install.sh: the wheels, then a fresh
virtualenv of them and their dependencies from the configured package index). The `cpa` of that
virtualenv, with nothing of this checkout on its path, then serves, runs an agent that runs a
job, and runs the gateway from the data files its wheel installed. The install takes about a
minute, hence the module-scoped fixture and the longer timeouts; it runs in `make test`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.conftest import (
    CONNECTED,
    GATEWAY,
    SERVING,
    START_TIMEOUT_S,
    CliProcess,
    StartCli,
    _kill_all,
    _start,
)

from .dockerfile import Replay, parse

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
INSTALL_TIMEOUT_S = 600
JOB_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
OUTCOME = re.compile(r"^job (?P<job_id>[0-9a-f]{32}) (?P<state>[A-Z_]+) in ")
# Nothing of this checkout may leak into the installed cpa's imports.
CLEAN_ENV = {"PYTHONPATH": ""}


@dataclass(frozen=True)
class Installed:
    venv: Path
    workdir: Path

    @property
    def cpa(self) -> Path:
        return self.venv / "bin" / "cpa"

    def run(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CPA_")}
        return subprocess.run(
            [str(self.cpa), *args],
            cwd=self.workdir,
            env={**env, **CLEAN_ENV},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def _install_env() -> dict[str, str]:
    """This environment, minus this checkout's sources and virtualenv (as in the base image)."""
    here = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CPA_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != here)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    stages = parse(DOCKERFILE)
    build, runtime = stages["build"], stages["runtime"]
    assert build.base == runtime.base, "the wheels are built on the runtime's Python"
    replay = Replay(context=REPO, root=tmp_path_factory.mktemp("image"), env=_install_env())
    replay.stage(build)
    replay.stage(runtime)
    assert [command[2] for command in replay.ran] == ["build", "install"], replay.ran
    venv_path = replay.ran[-1][-1]
    # The image runs `cpa` from that virtualenv: ENTRYPOINT ["cpa"] found on its PATH.
    assert runtime.all("ENTRYPOINT")[0].exec_form() == ["cpa"]
    assert any(f"PATH={venv_path}/bin:" in env.arguments for env in runtime.all("ENV"))
    workdir = tmp_path_factory.mktemp("run")
    yield Installed(venv=replay.inside(venv_path), workdir=workdir)
    shutil.rmtree(replay.root)  # a few hundred MB: not kept with pytest's last temp dirs


@pytest.fixture
def start_installed(installed: Installed) -> Iterator[StartCli]:
    processes: list[CliProcess] = []

    def start(*args: str) -> CliProcess:
        process = _start(
            args,
            workdir=installed.workdir,
            stderr_path=installed.workdir / f"stderr-{len(processes)}-{args[0]}.txt",
            env={**CLEAN_ENV, "CPA_AGENT_EXECUTORS": "builtin"},
            program=(str(installed.cpa),),
        )
        processes.append(process)
        return process

    yield start
    _kill_all(processes)


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_the_installed_cpa_runs_from_the_wheels_alone(installed: Installed) -> None:
    probe = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import cpa_cli, cpa_scheduler, cpa_agent, cpa_client, cpa.scheduler.v1 as v1\n"
            "for m in (cpa_cli, cpa_scheduler, cpa_agent, cpa_client, v1): print(m.__file__)",
        ],
        cwd=installed.workdir,
        env={**os.environ, **CLEAN_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    site_packages = str(installed.venv / "lib")
    assert all(line.startswith(site_packages) for line in probe.stdout.splitlines()), probe.stdout

    help_text = installed.run("--help")
    assert help_text.returncode == 0, help_text.stderr
    for command in ("serve", "agent", "gateway", "migrate", "health", "submit"):
        assert re.search(rf"^\s+{command}\s", help_text.stdout, re.MULTILINE), help_text.stdout


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_the_installed_cpa_serves_runs_a_job_on_its_agent_and_fronts_it_with_envoy(
    installed: Installed, start_installed: StartCli
) -> None:
    server = start_installed("serve", "--listen", "127.0.0.1:0", "--data-dir", "data")
    address = server.wait_for_line(SERVING, START_TIMEOUT_S)["address"]
    healthy = installed.run("health", "--server", address)
    assert (healthy.returncode, healthy.stdout) == (0, f"{address}: SERVING\n"), healthy.stderr

    agent = start_installed("agent", "--server", address, "--agent-id", "installed-agent")
    agent.wait_for_line(CONNECTED, START_TIMEOUT_S)
    (installed.workdir / "todos.yaml").write_text(
        "- {id: first, action: echo, params: {n: 1}}\n"
        "- {id: second, action: noop, depends_on: [first]}\n",
        encoding="utf-8",
    )
    submit = start_installed("submit", "--todos", "todos.yaml", "--watch", "--server", address)
    outcome = submit.wait_for_line(OUTCOME, JOB_TIMEOUT_S)
    assert outcome["state"] == "SUCCEEDED", submit.report()
    assert submit.exit_code(STOP_TIMEOUT_S) == 0, submit.report()

    # The gateway's template and descriptor set come from the wheel's data files.
    printed = installed.run("gateway", "--upstream", address, "--print-config")
    assert printed.returncode == 0, printed.stderr
    descriptor = installed.venv / "share" / "cpa-scheduler" / "deploy" / "api.binpb"
    assert f'proto_descriptor: "{descriptor}"' in printed.stdout
    gateway = start_installed("gateway", "--listen", "127.0.0.1:0", "--upstream", address)
    gateway_address = gateway.wait_for_line(GATEWAY, START_TIMEOUT_S)["address"]
    through = installed.run("health", "--server", gateway_address, "--agent-name", "installed")
    assert through.returncode == 1  # no agent of that name: the agent's name is its host's
    assert "no agent named 'installed' is connected" in through.stderr, through.stderr
    through = installed.run("health", "--server", gateway_address)
    assert (through.returncode, through.stdout) == (0, f"{gateway_address}: SERVING\n")

    for process in (gateway, agent, server):
        process.terminate()
        assert process.exit_code(STOP_TIMEOUT_S) == 0, process.report()
