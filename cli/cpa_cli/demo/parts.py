"""What the full demo is made of, checked before it starts, and its agents as real processes.

The forward_invoice demo needs the browser executor (and Chromium), the mail executor, the
loopback Graph, artifacts in the contract and the forward_invoice intent. `missing_parts` says,
part by part, what is not there, so `cpa demo` can name it instead of failing half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_scheduler.planning import load_default_catalog

DEMO_INTENT = "forward_invoice"
# `make chromium` installs Debian's package (apt-get as root); docs/DEMO.md says what else works.
CHROMIUM_COMMAND = "make chromium"
# serve_command.AGENT_CONNECTED_LINE, as `cpa agent` prints it.
_CONNECTED = re.compile(r"^cpa agent (?P<agent_id>\S+) connected to (?P<address>\S+)$")
# An agent that drains takes this long at most before it is killed.
_AGENT_STOP_S = 15.0


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing_parts() -> list[str]:
    """One line per part the full demo needs and this installation lacks; [] when complete."""
    missing = []
    if not _module_present("cpa_agent.executors.browser"):
        missing.append("the browser executor (cpa_agent.executors.browser) is not installed")
    else:
        reason = chromium_missing()
        if reason is not None:
            missing.append(f"{reason}; install it with `{CHROMIUM_COMMAND}`")
    if not _module_present("cpa_agent.executors.mail"):
        missing.append("the mail executor (cpa_agent.executors.mail) is not installed")
    if not _module_present("cpa_cli.demo.graph_server"):
        missing.append("the loopback Graph (cpa_cli.demo.graph_server) is not installed")
    if not hasattr(scheduler_service_pb2, "ListArtifactsRequest"):
        missing.append("the scheduler has no artifacts (SchedulerService.ListArtifacts)")
    if load_default_catalog().get(DEMO_INTENT) is None:
        missing.append(f"the intent catalog has no {DEMO_INTENT!r} intent")
    return missing


def chromium_missing() -> str | None:
    """Why the browser agent could not launch Chromium, in the browser executor's own words."""
    browser = importlib.import_module("cpa_agent.executors.browser")
    reason: str | None = browser.chromium_missing(browser.BrowserSettings())
    return None if reason is None else reason.split(";")[0]


@dataclass
class AgentProcess:
    """`cpa agent` in a process of its own; stdout read until it is connected, stderr in a log."""

    agent_id: str
    process: asyncio.subprocess.Process
    log_path: Path

    @classmethod
    async def start(
        cls,
        *,
        agent_id: str,
        server: str,
        executors: str,
        env: dict[str, str],
        log_dir: Path,
        timeout_s: float,
    ) -> AgentProcess:
        """Starts the agent and returns once the scheduler welcomed it; RuntimeError (naming
        its log) if it exits or does not connect within `timeout_s`."""
        log_path = log_dir / f"{agent_id}.log"
        # The demo's own settings stay out of the agents' environment; theirs come from `env`.
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CPA_")}
        environment.update(env)
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cpa_cli",
                "agent",
                *("--server", server, "--agent-id", agent_id, "--executors", executors),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=environment,
            )
        agent = cls(agent_id=agent_id, process=process, log_path=log_path)
        try:
            await asyncio.wait_for(agent._connected(), timeout_s)
        except TimeoutError:
            await agent.stop()
            raise RuntimeError(
                f"agent {agent_id} did not connect within {timeout_s:g}s (log: {log_path})"
            ) from None
        except RuntimeError:
            await agent.stop()
            raise
        return agent

    async def _connected(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            if _CONNECTED.match(line.decode(errors="replace").rstrip()):
                # Keep reading, so a chatty agent never blocks on a full pipe.
                asyncio.get_running_loop().create_task(self._drain_stdout())
                return
        code = await self.process.wait()
        raise RuntimeError(f"agent {self.agent_id} exited with {code} (log: {self.log_path})")

    async def _drain_stdout(self) -> None:
        assert self.process.stdout is not None
        while await self.process.stdout.readline():
            pass

    async def stop(self) -> None:
        """SIGTERM (the agent drains and exits), then SIGKILL after _AGENT_STOP_S."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), _AGENT_STOP_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
