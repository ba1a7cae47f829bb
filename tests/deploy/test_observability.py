"""deploy/observability checked with the real tools: promtool checks the alert rules and runs
their unit tests, checks the compose Prometheus config and every PromQL expression of the
Grafana dashboard; amtool checks the Alertmanager example. (That the metric names they read are
the ones the server exports is tests/e2e/test_metrics_prometheus.py's, with a live replica.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.e2e.prometheus import AMTOOL, PROMTOOL, tool

from .promql import ALERTS, DASHBOARD, OBSERVABILITY, alert_expressions, dashboard_expressions


def run(*argv: str, cwd: Path = OBSERVABILITY) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_checks_the_alert_rules_and_passes_their_unit_tests() -> None:
    promtool = tool(PROMTOOL)
    assert "SUCCESS: 6 rules found" in run(promtool, "check", "rules", ALERTS.name)
    run(promtool, "test", "rules", "alerts_test.yml")


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((OBSERVABILITY / "alerts_test.yml").read_text(encoding="utf-8"))
    tested = {
        case["alertname"] for group in tests["tests"] for case in group.get("alert_rule_test", ())
    }
    assert tested == set(alert_expressions())


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = tool(PROMTOOL)
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    # promtool parses expressions in rule files: each panel's becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{n}", "expr": expr}
                    for n, expr in enumerate(expressions.values())
                ],
            }
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    out = run(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(expressions)} rules found" in out


def test_an_invalid_expression_is_caught_by_the_same_check(tmp_path: Path) -> None:
    promtool = tool(PROMTOOL)
    rules = {"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]}
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    done = subprocess.run(
        [promtool, "check", "rules", "bad.yml"], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode != 0


def test_the_dashboard_reads_the_provisioned_data_source() -> None:
    source = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text("utf-8")
    )["datasources"][0]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    uids = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    }
    assert uids == {source["uid"]}
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_promtool_checks_the_compose_prometheus_config() -> None:
    run(tool(PROMTOOL), "check", "config", "prometheus.yml")


def test_amtool_checks_the_alertmanager_example() -> None:
    out = run(tool(AMTOOL), "check-config", "alertmanager.yml")
    assert "1 receivers" in out
