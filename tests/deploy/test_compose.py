"""docker-compose.yml and deploy/Dockerfile against the code they run (no Docker engine here).

Every `cpa` command line of the two (service commands, health checks, the image's CMD and
HEALTHCHECK) must parse with the real CLI parser, every CPA_* variable must be a setting some
part reads, the gateway service's flags must render a config Envoy loads, and the start order
(migration first, replicas after it) must hold. The compose schema itself is `make lint`'s.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpa_agent import AgentSettings
from cpa_agent.executors.browser.settings import BrowserSettings
from cpa_agent.executors.mail.settings import MailSettings
from cpa_cli.common import SERVER_ENV
from cpa_cli.credentials import API_KEY_ENV, API_KEY_FILE_ENV
from cpa_cli.gateway import GatewayConfig, render_envoy_config
from cpa_cli.gateway.envoy import validate
from cpa_cli.main import build_parser
from cpa_scheduler.settings import Settings

from .dockerfile import parse

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IMAGE = parse(REPO / "deploy" / "Dockerfile")
# Services that run our image (ENTRYPOINT ["cpa"]): their command is cpa's arguments.
CPA_SERVICES = sorted(
    name
    for name, service in SERVICES.items()
    if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
)


def _parse_cpa(argv: list[str], where: str) -> None:
    """argparse on `cpa ARGV`: an unknown subcommand, flag or bad value fails the test."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `cpa {shlex.join(argv)}` does not parse: {errors.getvalue()}")


def _health_check_argv(service: dict[str, Any]) -> list[str]:
    test: list[str] = service["healthcheck"]["test"]
    if test[0] == "CMD":
        return test[1:]
    assert test[0] == "CMD-SHELL", test
    # Compose turns $$ into $; the shell then expands the variable, any word will do here.
    return shlex.split(test[1].replace("$$", "$"))


def test_the_compose_file_runs_our_image_for_every_cpa_role() -> None:
    assert CPA_SERVICES == [
        "admin-key",
        "agent",
        "agent-browser",
        "agent-token",
        "gateway",
        "health-key",
        "migrate",
        "scheduler",
    ]
    targets = {SERVICES[name]["build"]["target"] for name in CPA_SERVICES}
    assert targets <= set(IMAGE), f"build targets {targets} not all stages of the Dockerfile"


@pytest.mark.parametrize("name", CPA_SERVICES)
def test_each_service_command_parses_with_the_cli(name: str) -> None:
    _parse_cpa(SERVICES[name]["command"], f"service {name}")


# Services that run once and exit (the migration, the first credentials).
ONE_SHOTS = sorted(name for name, service in SERVICES.items() if service.get("restart") == "no")


def test_the_one_shots_are_the_migration_and_the_first_credentials() -> None:
    assert ONE_SHOTS == ["admin-key", "agent-token", "health-key", "migrate"]


@pytest.mark.parametrize("name", [n for n in SERVICES if n not in ONE_SHOTS])
def test_every_long_running_service_has_a_health_check(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert not check.get("disable"), name
    if name in CPA_SERVICES:
        argv = _health_check_argv(SERVICES[name])
        assert argv[:2] == ["cpa", "health"], argv
        _parse_cpa(argv[1:], f"health check of {name}")


def test_the_image_default_command_and_health_check_parse() -> None:
    runtime = IMAGE["runtime"]
    assert runtime.all("ENTRYPOINT")[0].exec_form() == ["cpa"]
    _parse_cpa(runtime.all("CMD")[-1].exec_form(), "Dockerfile CMD")
    health = runtime.all("HEALTHCHECK")[-1].exec_form()
    assert health[:2] == ["cpa", "health"]
    _parse_cpa(health[1:], "Dockerfile HEALTHCHECK")
    _parse_cpa(IMAGE["agent-browser"].all("CMD")[-1].exec_form(), "agent-browser CMD")


def test_replicas_start_after_the_migration_succeeded() -> None:
    assert SERVICES["migrate"]["command"][0] == "migrate"
    depends = SERVICES["scheduler"]["depends_on"]
    assert depends["migrate"] == {"condition": "service_completed_successfully"}
    assert SERVICES["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert SERVICES["scheduler"]["deploy"]["replicas"] >= 2
    # A replica's stop drains its agents (CPA_SHUTDOWN_DRAIN_S) before calls get --grace.
    grace = SERVICES["scheduler"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > Settings().shutdown_drain_s + 5


def test_the_first_credentials_are_made_after_the_migration_and_kept_apart() -> None:
    """The key services write into volumes; agents wait for theirs and read them, read-only;
    the admin key's volume is mounted by its own service only. tests/deploy/
    test_compose_credentials.py runs these commands."""
    for name in ("admin-key", "agent-token", "health-key"):
        service = SERVICES[name]
        assert service["command"][:3] == ["keys", "create", "--bootstrap"], name
        assert "--secret-file" in service["command"], name
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    mounts = {
        name: [volume.split(":")[0] for volume in service.get("volumes", [])]
        for name, service in SERVICES.items()
    }
    assert [name for name, volumes in mounts.items() if "admin-keys" in volumes] == ["admin-key"]
    for agent in ("agent", "agent-browser"):
        service = SERVICES[agent]
        assert service["volumes"] == ["agent-keys:/var/lib/cpa-keys:ro"]
        for one_shot in ("agent-token", "health-key"):
            assert service["depends_on"][one_shot] == {
                "condition": "service_completed_successfully"
            }
        assert set(service["environment"]) == {
            "CPA_AGENT_TOKEN_FILE",
            API_KEY_FILE_ENV,
            "CPA_AGENT_METRICS_ADDRESS",
            "CPA_AGENT_TRACING_ENABLED",
            "CPA_AGENT_TRACING_ENDPOINT",
        }


def _known_variables() -> set[str]:
    known = {SERVER_ENV, API_KEY_ENV, API_KEY_FILE_ENV}
    for settings, prefix in (
        (Settings, "CPA_"),
        (AgentSettings, "CPA_AGENT_"),
        (BrowserSettings, "CPA_BROWSER_"),
        (MailSettings, "CPA_MAIL_"),
    ):
        known |= {prefix + name.upper() for name in settings.model_fields}
    return known


@pytest.mark.parametrize("name", CPA_SERVICES)
def test_every_cpa_variable_is_a_setting(name: str) -> None:
    """The scheduler ignores CPA_* keys it does not know: a misspelt one would be lost."""
    variables = {k for k in SERVICES[name].get("environment", {}) if k.startswith("CPA_")}
    assert variables <= _known_variables(), variables - _known_variables()


def test_the_gateway_service_renders_a_config_envoy_loads(tmp_path: Path) -> None:
    arguments = build_parser().parse_args(SERVICES["gateway"]["command"])
    config = GatewayConfig.build(arguments.listen, arguments.upstream, Settings())
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(config), encoding="utf-8")

    validate(path)

    (cluster,) = yaml.safe_load(path.read_text(encoding="utf-8"))["static_resources"]["clusters"]
    # One name for every replica: Envoy resolves it to all of them, again and again (--scale).
    assert cluster["type"] == "STRICT_DNS"
    upstreams = [f"{u.host}:{u.port}" for u in config.upstreams]
    assert upstreams == ["scheduler:50051"]
    assert SERVICES["scheduler"]["command"][:3] == ["serve", "--listen", "0.0.0.0:50051"]
    for agent in ("agent", "agent-browser"):
        assert SERVICES[agent]["command"][1:3] == ["--server", "gateway:8080"]
