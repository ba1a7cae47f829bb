"""The hot path's plain metrics expose what prometheus_client's own Counter and Histogram would
after the same events: names, types, help, labels, buckets, values (`_created` timestamps
aside), and a scrape while they are incremented is safe."""

from __future__ import annotations

import re
import threading
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cpa_scheduler.telemetry import metrics
from cpa_scheduler.telemetry.plain_metrics import PlainCollector, PlainCounter, PlainHistogram

BUCKETS = (0.001, 0.01, 0.1, 1)


class State(StrEnum):
    RUNNING = "RUNNING"
    FAILED = "FAILED"


def text(registry: CollectorRegistry) -> str:
    """The exposition with `_created` values (creation timestamps) masked."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


def test_the_exposition_is_prometheus_clients_after_the_same_events() -> None:
    reference, plain = CollectorRegistry(), CollectorRegistry()
    counter = Counter("jobs", "Jobs by state.", ["state"], registry=reference)
    unlabelled = Counter("dead_letters", "Dead letters.", registry=reference)
    histogram = Histogram(
        "rpc_duration_seconds", "Calls.", ["method"], buckets=BUCKETS, registry=reference
    )
    latency = Histogram("dispatch_latency_seconds", "Waits.", buckets=BUCKETS, registry=reference)
    plain_counter = PlainCounter("jobs", "Jobs by state.", ["state"])
    plain_unlabelled = PlainCounter("dead_letters", "Dead letters.")
    plain_histogram = PlainHistogram("rpc_duration_seconds", "Calls.", ["method"], buckets=BUCKETS)
    plain_latency = PlainHistogram("dispatch_latency_seconds", "Waits.", buckets=BUCKETS)
    plain.register(
        PlainCollector((plain_counter, plain_unlabelled, plain_histogram, plain_latency))
    )
    assert text(plain) == text(reference)  # before any event: unlabelled series at zero

    for state in (State.RUNNING, "RUNNING", State.FAILED, "PENDING"):
        counter.labels(state).inc()
        plain_counter.inc(state)
    unlabelled.inc()
    plain_unlabelled.inc()
    # On a bound (le: in that bucket), between bounds, past the last (+Inf), zero.
    for method, seconds in (("/a", 0.01), ("/a", 0.05), ("/b", 7.5), ("/a", 0.0), ("/b", 1)):
        histogram.labels(method).observe(seconds)
        plain_histogram.observe(seconds, method)
        latency.observe(seconds)
        plain_latency.observe(seconds)

    assert text(plain) == text(reference)
    assert 'jobs_total{state="RUNNING"} 2.0' in text(plain)
    assert 'rpc_duration_seconds_bucket{le="0.01",method="/a"} 2.0' in text(plain)


def test_a_replica_registry_exports_every_hot_metric() -> None:
    registry = CollectorRegistry()
    registry.register(PlainCollector(metrics.HOT_METRICS))
    exported = {family.name for family in registry.collect()}
    assert exported == {metric.name for metric in metrics.HOT_METRICS}
    assert {"jobs", "tasks", "store_transaction_seconds", "rpc_requests"} <= exported


def test_a_scrape_while_new_series_are_counted_is_consistent() -> None:
    counter = PlainCounter("calls", "Calls.", ["method"])
    histogram = PlainHistogram("call_seconds", "Calls.", ["method"], buckets=BUCKETS)
    registry = CollectorRegistry()
    registry.register(PlainCollector((counter, histogram)))
    done = threading.Event()
    failures: list[BaseException] = []

    def scrape() -> None:
        while not done.is_set():
            try:
                generate_latest(registry)
            except BaseException as error:  # reported by the assertion below
                failures.append(error)
                return

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for n in range(20_000):
            counter.inc(f"/m{n % 500}")
            histogram.observe(0.005, f"/m{n % 500}")
    finally:
        done.set()
        scraper.join()
    assert failures == []
    assert 'calls_total{method="/m499"} 40.0' in generate_latest(registry).decode()
