"""Browsers through the gateway: gRPC-web (Envoy's grpc_web filter) and CORS for the origins of
CPA_GATEWAY_CORS_ALLOWED_ORIGINS. The config is loaded by a real Envoy; the live tests call a
real `cpa gateway` in front of `cpa serve` with raw HTTP, as a browser would, so the headers a
page depends on are checked byte for byte. The TypeScript web client drives the same path in
clients/typescript/test/web.test.ts (schedule, live watch, errors)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_cli.common import CliError
from cpa_cli.gateway import GatewayConfig, render_envoy_config
from cpa_cli.gateway.envoy import validate
from cpa_scheduler.settings import Settings

from .conftest import StartCli, start_server
from .rest_gateway import UNKNOWN_JOB, start_gateway

PAGE = "http://app.example:3000"
GET_JOB = "/cpa.scheduler.v1.SchedulerService/GetJob"
# What a page needs to read of a gRPC-web answer (connect-web reads them as headers).
EXPOSED = {"grpc-status", "grpc-message", "grpc-status-details-bin"}


def _cors_policy(origins: str, tmp_path: Path) -> dict[str, Any] | None:
    settings = Settings(gateway_cors_allowed_origins=origins)
    config = GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], settings)
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(config), encoding="utf-8")
    validate(path)
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    manager = loaded["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (host,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    policy: dict[str, Any] | None = host.get("typed_per_filter_config", {}).get(
        "envoy.filters.http.cors"
    )
    return policy


def test_allowed_origins_become_the_cors_policy_envoy_loads(tmp_path: Path) -> None:
    policy = _cors_policy(f" {PAGE}, https://[::1]:8443 ", tmp_path)
    assert policy is not None
    assert policy["allow_origin_string_match"] == [{"exact": PAGE}, {"exact": "https://[::1]:8443"}]
    assert {h.strip() for h in policy["expose_headers"].split(",")} >= EXPOSED
    assert {"authorization", "x-grpc-web", "grpc-timeout"} <= {
        h.strip() for h in policy["allow_headers"].split(",")
    }
    assert _cors_policy("*", tmp_path)["allow_origin_string_match"] == [  # type: ignore[index]
        {"safe_regex": {"regex": ".*"}}
    ]
    assert _cors_policy("", tmp_path) is None  # no origins: no CORS answers at all


@pytest.mark.parametrize(
    "origins", ["app.example", "http://app.example/", "http://app.example/page", "*, " + PAGE]
)
def test_an_origin_no_browser_sends_is_refused(origins: str) -> None:
    settings = Settings(gateway_cors_allowed_origins=origins)
    with pytest.raises(CliError, match="CPA_GATEWAY_CORS_ALLOWED_ORIGINS"):
        GatewayConfig.build("127.0.0.1:0", ["127.0.0.1:1"], settings)


@pytest.fixture
def gateway(start_cli: StartCli) -> Iterator[httpx.Client]:
    """An HTTP/1.1 client (as fetch in a browser) of a gateway that allows PAGE."""
    _, upstream = start_server(start_cli)
    _, address, _ = start_gateway(
        start_cli, upstream, env={"CPA_GATEWAY_CORS_ALLOWED_ORIGINS": PAGE}
    )
    with httpx.Client(base_url=f"http://{address}", timeout=10.0, trust_env=False) as http:
        yield http


def _preflight(http: httpx.Client, path: str, origin: str) -> httpx.Response:
    return http.options(
        path,
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-grpc-web",
        },
    )


def _frame(message: bytes) -> bytes:
    """One gRPC(-web) data frame: flag 0 (uncompressed), big-endian length, the message."""
    return struct.pack(">BI", 0, len(message)) + message


def _grpc_web_trailers(body: bytes) -> dict[str, str]:
    """The trailers of a gRPC-web response: its frame with flag 0x80, as `name: value` lines."""
    trailers: dict[str, str] = {}
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            for line in frame.decode().split("\r\n"):
                if line:
                    name, value = line.split(":", 1)
                    trailers[name.strip().lower()] = value.strip()
    return trailers


def test_a_preflight_from_an_allowed_origin_is_answered(gateway: httpx.Client) -> None:
    # A gRPC-web path and a REST one (where the 405 route would otherwise answer OPTIONS).
    for path in (GET_JOB, "/v1/jobs"):
        answer = _preflight(gateway, path, PAGE)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        assert answer.headers["access-control-allow-origin"] == PAGE
        allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-grpc-web"} <= allowed
        assert "POST" in answer.headers["access-control-allow-methods"]


def test_another_origin_gets_no_cors_answer(gateway: httpx.Client) -> None:
    answer = _preflight(gateway, GET_JOB, "http://evil.example")
    assert "access-control-allow-origin" not in answer.headers
    call = gateway.get(f"/v1/jobs/{UNKNOWN_JOB}", headers={"origin": "http://evil.example"})
    assert call.status_code == 404
    assert "access-control-allow-origin" not in call.headers


def test_a_grpc_web_call_reaches_the_scheduler_and_its_error_is_readable(
    gateway: httpx.Client,
) -> None:
    request = scheduler_service_pb2.GetJobRequest(job_id=UNKNOWN_JOB)
    answer = gateway.post(
        GET_JOB,
        content=_frame(request.SerializeToString()),
        headers={
            "origin": PAGE,
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/grpc-web")
    # The scheduler's status, wherever Envoy put it (trailers-only: headers; else body frame).
    status = {**_grpc_web_trailers(answer.content), **answer.headers}
    assert status["grpc-status"] == "5"  # NOT_FOUND from the scheduler itself
    assert status["grpc-status-details-bin"]  # ErrorInfo JOB_NOT_FOUND, for the page to decode
    assert answer.headers["access-control-allow-origin"] == PAGE
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert exposed >= EXPOSED
