"""Hot-path counters and histograms as plain Python numbers, turned into Prometheus metric
families only when /metrics is scraped (ADR 0003).

A prometheus_client metric takes a lock per increment (two per histogram observation, which
also walks the buckets one by one) and finds its child per label values; these keep a dict entry
per label values, incremented in place, and a histogram's bucket counts in a list (`bisect`).
They are written from the event loop's thread only (every hot path runs on it); the /metrics
thread reads copies (`dict.copy()`, `list()`: one C call each, atomic under the GIL), so a scrape
may see an observation's count without its sum, one observation apart, as prometheus_client's
separate locks allow too.

The exposition is prometheus_client's for the same metrics: names, types, help, label names and
values, bucket bounds, `_created` samples (tests/unit/telemetry/test_plain_metrics.py compares
the two after the same events).
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from prometheus_client import Metric

Labels = tuple[str, ...]


class PlainCounter:
    """A counter family: `inc(*label_values)` adds one to that series."""

    __slots__ = ("_created", "_values", "documentation", "labelnames", "name")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._values: dict[Labels, float] = {}
        self._created: dict[Labels, float] = {}
        if not self.labelnames:  # exported at 0 from the start, as prometheus_client does
            self._first(())

    def _first(self, labels: Labels) -> Labels:
        key = tuple(map(str, labels))  # a StrEnum is equal to its text, and hashes as it
        self._created[key] = time.time()  # before the value: a scrape reads values first
        self._values[key] = 0.0
        return key

    def inc(self, *labels: str) -> None:
        try:
            self._values[labels] += 1.0
        except KeyError:
            self._values[self._first(labels)] += 1.0

    def family(self) -> Metric:
        values, created = self._values.copy(), self._created.copy()
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in values.items():
            family.add_metric(labels, value, created=created[labels])
        return family


class PlainHistogram:
    """A histogram family: `observe(value, *label_values)`."""

    __slots__ = ("_bounds", "_created", "_les", "_series", "documentation", "labelnames", "name")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        # Bucket names as prometheus_client writes them (Go float format; it is untyped).
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        # Per label values: the count of each bucket (not cumulative; the last is +Inf's),
        # then the sum.
        self._series: dict[Labels, list[float]] = {}
        self._created: dict[Labels, float] = {}
        if not self.labelnames:
            self._first(())

    def _first(self, labels: Labels) -> list[float]:
        key = tuple(map(str, labels))
        self._created[key] = time.time()
        series = self._series[key] = [0] * (len(self._bounds) + 1) + [0.0]
        return series

    def observe(self, value: float, *labels: str) -> None:
        try:
            series = self._series[labels]
        except KeyError:
            series = self._first(labels)
        # bisect_left: the first bound >= value, Prometheus' `le`; past the last, +Inf's slot.
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def family(self) -> Metric:
        series_copy, created = self._series.copy(), self._created.copy()
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, live in series_copy.items():
            *counts, total = list(live)
            family.add_metric(
                labels, list(zip(self._les, itertools.accumulate(counts), strict=True)), total
            )
            family.samples.append(
                Sample(
                    f"{self.name}_created",
                    dict(zip(self.labelnames, labels, strict=True)),
                    created[labels],
                )
            )
        return family


class PlainCollector(Collector):
    """The families of some plain metrics, built at each scrape."""

    def __init__(self, metrics: Iterable[PlainCounter | PlainHistogram]) -> None:
        self._metrics = tuple(metrics)

    def collect(self) -> Iterable[Metric]:
        return [metric.family() for metric in self._metrics]
