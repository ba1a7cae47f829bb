"""`cpa serve` (embedded, a fresh data dir, any free port) that reports its cyclic garbage
collections on stderr every 5 s: collections, total and longest pause per generation, and the
objects the collector tracks. For bench_watchers.py's `--serve-script`, to see whether pauses of
the whole loop come from the collector.

    python bench/bench_watchers.py --watchers 10000 --serve-script bench/serve_gc_stats.py
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
from typing import Any

from cpa_cli.main import main

_started = [0.0]
_counts = [0, 0, 0]
_total_s = [0.0, 0.0, 0.0]
_longest_s = [0.0, 0.0, 0.0]
_collected = [0, 0, 0]  # cyclic garbage each generation's collections freed


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _started[0]
    generation = info["generation"]
    _counts[generation] += 1
    _total_s[generation] += pause
    _longest_s[generation] = max(_longest_s[generation], pause)
    _collected[generation] += info["collected"]


def _report(count_objects: bool) -> None:
    rounds = 0
    while True:
        time.sleep(5)
        line = (
            f"gc: collections {_counts}, total {[round(t, 3) for t in _total_s]} s, "
            f"longest {[round(t * 1000, 1) for t in _longest_s]} ms, garbage freed {_collected}"
        )
        # Counting walks every object with the loop stopped (~0.1 s at a million): on request.
        if count_objects and rounds % 3 == 0:
            line += f", objects tracked {len(gc.get_objects())}"
        rounds += 1
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    gc.callbacks.append(_timed)
    count = os.environ.get("CPA_BENCH_GC_COUNT_OBJECTS", "") == "1"
    threading.Thread(target=_report, args=(count,), daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="cpa-bench-gc-") as data_dir:
        code = main(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir])
    raise SystemExit(code)
