"""Executors from the `cpa.executors` entry points of installed distributions, and what the
hello offers of them (available actions, the union of capabilities)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpa_agent import ExecutionContext, ExecutorRegistry, builtin_registry
from cpa_agent.executors.discovery import discover
from tests.fixtures.dists import make_shout_distribution

from .conftest import StartAgent
from .scripted_scheduler import ScriptedScheduler, todo


@pytest.fixture
def shout_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = make_shout_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("shout_executors", None)


def test_discovery_loads_every_entry_point_and_names_the_unavailable(
    shout_installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    found = discover()

    # Other installed packages (ours: browser, mail) may offer entry points too, available or
    # not depending on this machine: look only at the ones this test installed.
    ours = {"builtin", "shout", "desktop"}
    assert {"echo", "fail", "noop", "shout", "wait"} <= set(found.registry.actions())
    assert [name for name in found.loaded if name in ours] == ["builtin", "shout"]
    assert [(u.name, u.reason) for u in found.unavailable if u.name in ours] == [
        ("desktop", "UI Automation needs Windows")
    ]
    assert "executors 'desktop' unavailable: UI Automation needs Windows" in caplog.text


def test_the_setting_chooses_entry_points_by_name(shout_installed: Path) -> None:
    assert discover(["shout"]).registry.actions() == ["shout"]
    assert discover(["builtin"]).registry.actions() == ["echo", "fail", "noop", "wait"]


def test_an_entry_point_nobody_offers_stops_the_agent_at_start(shout_installed: Path) -> None:
    with pytest.raises(ValueError, match=r"names browsr, which no installed package offers"):
        discover(["builtin", "browsr"])


class _Later:
    """Unavailable until told otherwise, as a browser whose binary is being installed."""

    action = "later"
    capabilities = ("later:v1",)

    def __init__(self) -> None:
        self.reason: str | None = "Chromium not found"

    def unavailable_reason(self) -> str | None:
        return self.reason

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {}


def test_an_unavailable_executor_is_registered_but_not_advertised() -> None:
    later = _Later()
    registry = ExecutorRegistry(executors=[later])

    assert "later" in registry
    assert registry.advertised_actions() == []
    later.reason = None
    assert registry.advertised_actions() == ["later"]
    assert registry.capabilities(["later"]) == ["later:v1"]


async def test_the_hello_offers_available_actions_and_their_capabilities(
    scheduler: ScriptedScheduler, start_agent: StartAgent, shout_installed: Path
) -> None:
    later = _Later()
    registry = builtin_registry()
    registry.register(later)
    start_agent(scheduler.port, registry=registry, capabilities=["site:berlin"])

    hello = (await scheduler.next_session()).hello

    assert list(hello.capabilities.actions) == ["echo", "fail", "noop", "wait"]
    assert list(hello.capabilities.capabilities) == ["site:berlin"]


async def test_an_agent_without_a_registry_runs_the_entry_points_executors(
    scheduler: ScriptedScheduler, start_agent: StartAgent, shout_installed: Path
) -> None:
    # Named, as CPA_AGENT_EXECUTORS would: the browser's entry point, available where Chromium
    # is, would add its actions.
    start_agent(scheduler.port, capabilities=["site:berlin"], executors=["builtin", "shout"])
    session = await scheduler.next_session()
    hello = session.hello
    assert list(hello.capabilities.actions) == ["echo", "fail", "noop", "shout", "wait"]
    assert list(hello.capabilities.capabilities) == ["site:berlin", "voice:loud"]
    session.welcome(heartbeat_interval_s=0.1)
    await session.expect("credit")

    session.assign("job-1", todo("shout", params={"word": "hey"}))

    result = (await session.expect("result", ignore=("heartbeat", "progress"))).result
    assert dict(result.outputs) == {"shouted": "HEY!"}
