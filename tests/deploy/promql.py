"""The PromQL of deploy/observability (dashboard panels, alert rules) and the metric names it
reads, for the checks of tests/deploy/test_observability.py and tests/e2e (exported names)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "cpa-scheduler.json"
ALERTS = OBSERVABILITY / "alerts.yml"

# Series Prometheus makes itself, not read from /metrics.
SYNTHETIC = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and"}
_KEYWORDS |= {"or", "unless", "offset", "inf", "nan"}
_STRIPPED = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings (label values, label_replace's arguments)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # ranges
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # label lists
)
_IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def dashboard_expressions() -> dict[str, str]:
    """Each panel target's expression, named "panel title/refId"."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    }


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def metric_names(expression: str) -> set[str]:
    """The metric names `expression` selects (functions, keywords and label names left out)."""
    text = expression
    for pattern in _STRIPPED:
        text = pattern.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}
