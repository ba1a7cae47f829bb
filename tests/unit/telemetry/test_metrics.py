"""The replica's metrics module: bounded labels, settings, hooks off until enabled, Redis
failures counted, and the /metrics endpoint serving a replica's registry (garbage too)."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from cpa_scheduler.dispatch import SessionRegistry
from cpa_scheduler.redis_support import log_background_error
from cpa_scheduler.settings import Settings
from cpa_scheduler.telemetry import metrics, timed
from cpa_scheduler.telemetry.metrics_http import serve_metrics, split_address


def test_a_bounded_label_keeps_its_first_values_then_says_other() -> None:
    label = metrics.BoundedLabel(cap=2)
    seen = [label(v) for v in ("a", "b", "c", "a", "d", "b")]
    assert seen == ["a", "b", "other", "a", "other", "b"]


@pytest.mark.parametrize("bad", ["9464", "host:", "host:http", "[::1]:65536", ":-1"])
def test_a_metrics_address_that_is_not_host_port_stops_the_start(bad: str) -> None:
    with pytest.raises(ValidationError, match="metrics_address"):
        Settings(metrics_address=bad)


def test_addresses_split_with_all_interfaces_for_an_empty_host() -> None:
    assert split_address(":9464") == ("0.0.0.0", 9464)
    assert split_address("[::1]:0") == ("::1", 0)
    assert Settings(metrics_address="").metrics_address == ""


def test_hooks_count_nothing_until_a_replica_enables_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "ENABLED", False)
    before = metrics.REDIS_ERRORS.labels("unit test")._value.get()
    metrics.redis_error("unit test")
    with metrics.store_transaction("unit_test"):
        pass
    assert metrics.REDIS_ERRORS.labels("unit test")._value.get() == before
    monkeypatch.setattr(metrics, "ENABLED", True)
    metrics.redis_error("unit test")
    assert metrics.REDIS_ERRORS.labels("unit test")._value.get() == before + 1


def test_the_endpoint_serves_the_replica_registry_and_llm_calls_from_the_hooks() -> None:
    metrics.enable()
    with timed("llm_call", "embed", provider="unit", model="unit-model") as call:
        call.counts["prompt_tokens"] = 3
    with pytest.raises(TimeoutError), timed("llm_call", "embed", provider="unit", model="m2"):
        raise TimeoutError
    endpoint = serve_metrics("127.0.0.1:0", metrics.replica_registry(SessionRegistry()))
    try:
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    finally:
        endpoint.close()
    assert "agents_connected 0.0" in text
    assert (
        'llm_call_duration_seconds_count{model="unit-model",operation="embed",outcome="ok",'
        'provider="unit"} 1.0'
    ) in text
    assert 'outcome="TimeoutError",provider="unit"} 1.0' in text
    assert 'llm_tokens_total{kind="prompt_tokens",model="unit-model",provider="unit"} 3.0' in text


def test_redis_failures_of_background_loops_are_counted_others_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "ENABLED", True)
    counter = metrics.REDIS_ERRORS.labels("unit loop")
    before = counter._value.get()
    log = logging.getLogger("unit")
    log_background_error(log, "unit loop", RedisConnectionError("refused"), 0.1)
    log_background_error(log, "unit loop", ConnectionResetError("reset"), 0.1)
    log_background_error(log, "unit loop", ValueError("a bug, not Redis"), 0.1)
    assert counter._value.get() == before + 2


def test_garbage_on_the_endpoint_leaves_it_serving() -> None:
    endpoint = serve_metrics("127.0.0.1:0", metrics.replica_registry(SessionRegistry()))
    try:
        for garbage in (b"\x00\xff" * 512 + b"\r\n\r\n", b"GET /" + b"a" * 70_000 + b"\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as raw:
                raw.sendall(garbage)
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(65536):
                    pass
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
            assert b"agents_connected" in answer.read()
    finally:
        endpoint.close()
