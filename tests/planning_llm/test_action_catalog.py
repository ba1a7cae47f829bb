"""The action catalog the server ships (planning/actions.json) is the executors' own schemas."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cpa_scheduler.planning.actions import ACTIONS_PATH, ActionCatalog

TOOL = Path(__file__).resolve().parents[2] / "tools" / "action_catalog.py"


def test_shipped_catalog_matches_the_executors() -> None:
    spec = importlib.util.spec_from_file_location("action_catalog", TOOL)
    assert spec is not None
    assert spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert ACTIONS_PATH.read_text(encoding="utf-8") == tool.render(), (
        "planning/actions.json is stale: run python tools/action_catalog.py"
    )


def test_connected_agents_add_their_capabilities_and_keep_shipped_schemas() -> None:
    catalog = ActionCatalog.build([(["wait", "erp.post"], ["app:erp"]), (["wait"], ["gpu"])])
    assert catalog.names == ["erp.post", "wait"]
    wait = catalog.get("wait")
    assert wait is not None
    assert wait.params_schema is not None
    assert wait.capabilities == {"app:erp", "gpu"}
    erp = catalog.get("erp.post")
    assert erp is not None
    assert erp.params_schema is None
