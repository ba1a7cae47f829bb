"""The gateway and TLS, with real processes: Envoy speaks TLS to a TLS scheduler (verifying its
certificate against the CA and the required name) and serves its own callers over TLS (HTTPS for
REST, TLS for native gRPC). A scheduler certificate without the required name is refused."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cpa_cli.common import CliError
from cpa_cli.gateway import GatewayConfig, render_envoy_config
from cpa_cli.gateway.envoy import validate
from cpa_scheduler.settings import Settings
from tests.fixtures.tls import Pki

from .conftest import CONNECTED, START_TIMEOUT_S, StartCli, start_gateway, start_server

DEADLINE_S = 30.0


def _upstream_env(pki: Pki, server_name: str) -> dict[str, str]:
    return {
        "CPA_GATEWAY_UPSTREAM_TLS_CA_FILE": str(pki.ca_file),
        "CPA_GATEWAY_UPSTREAM_TLS_SERVER_NAME": server_name,
        "CPA_GATEWAY_HEALTH_INTERVAL_S": "0.3",
    }


def test_the_gateway_speaks_tls_to_the_scheduler_and_to_its_callers(
    start_cli: StartCli, tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path / "pki")
    gateway_cert, gateway_key = tmp_path / "gateway.pem", tmp_path / "gateway-key.pem"
    pki.issue_server(gateway_cert, gateway_key)
    server_env = {
        **pki.server_env(),
        "CPA_AGENT_TLS_CA_FILE": str(pki.ca_file),  # the local agent verifies the server too
        "CPA_AGENT_EXECUTORS": "builtin",
    }
    server, address = start_server(start_cli, "--with-agent", "--agent-id", "local", env=server_env)
    server.wait_for_line(CONNECTED, START_TIMEOUT_S)
    _, line = start_gateway(
        start_cli,
        address,
        env={
            **_upstream_env(pki, "localhost"),
            "CPA_GATEWAY_TLS_CERT_FILE": str(gateway_cert),
            "CPA_GATEWAY_TLS_KEY_FILE": str(gateway_key),
        },
    )
    gateway = line["address"]
    verify = ssl.create_default_context(cafile=str(pki.ca_file))
    with httpx.Client(base_url=f"https://{gateway}", verify=verify, trust_env=False) as http:
        deadline = time.monotonic() + DEADLINE_S
        while (answer := http.get("/v1/agents")).status_code != 200:
            assert time.monotonic() < deadline, answer.text  # the first health check pending
        assert [agent["agent_id"] for agent in answer.json()["agents"]] == ["local"]
    # Native gRPC through the gateway's TLS listener, to the scheduler's.
    agents = start_cli("agents", "--server", gateway, "--ca-file", str(pki.ca_file))
    assert agents.exit_code(DEADLINE_S) == 0, agents.report()
    assert agents.rest_of_output(DEADLINE_S)[1].split()[0] == "local"


def test_the_gateway_refuses_a_scheduler_certificate_without_the_required_name(
    start_cli: StartCli, tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path / "pki")
    _, address = start_server(start_cli, env=pki.server_env())
    _, line = start_gateway(start_cli, address, env=_upstream_env(pki, "scheduler.example"))
    admin = f"http://{line['admin']}"
    with httpx.Client(trust_env=False) as http:
        deadline = time.monotonic() + DEADLINE_S
        # Envoy's own count of upstream handshakes refused for their names (health checks).
        while "cluster.cpa_scheduler.ssl.fail_verify_san: 0" in (
            stats := http.get(f"{admin}/stats?filter=ssl.fail_verify_san").text
        ):
            assert time.monotonic() < deadline, stats
        assert "cluster.cpa_scheduler.ssl.fail_verify_san: " in stats
        assert http.get(f"http://{line['address']}/v1/agents").status_code == 503


def test_mutual_tls_to_the_schedulers_renders_a_client_certificate_envoy_validates(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path / "pki")
    settings = Settings(
        gateway_upstream_tls_ca_file=pki.ca_file,
        gateway_upstream_tls_server_name="localhost",
        gateway_upstream_tls_cert_file=pki.client_cert_file,
        gateway_upstream_tls_key_file=pki.client_key_file,
    )
    rendered = render_envoy_config(GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], settings))
    path = tmp_path / "envoy.yaml"
    path.write_text(rendered, encoding="utf-8")
    validate(path)
    (cluster,) = yaml.safe_load(rendered)["static_resources"]["clusters"]
    context = cluster["transport_socket"]["typed_config"]
    assert context["sni"] == "localhost"
    (certificate,) = context["common_tls_context"]["tls_certificates"]
    assert certificate["certificate_chain"]["filename"] == str(pki.client_cert_file.resolve())
    # Half a client certificate is refused by name, before Envoy sees it.
    with pytest.raises(CliError, match="CPA_GATEWAY_UPSTREAM_TLS_KEY_FILE go together"):
        GatewayConfig.build(
            "127.0.0.1:0",
            ["127.0.0.1:1"],
            Settings(
                gateway_upstream_tls_ca_file=pki.ca_file,
                gateway_upstream_tls_cert_file=pki.client_cert_file,
            ),
        )
