"""Prints what routing text and rendering templates cost the event loop, for hostile inputs.

Routing: the shipped catalog's patterns (RE2) on "get from portal " repeated (the shape that made
Python's backtracking `re` take 20 s at 8 KiB), and the whole route() of unmatched text, whose
ranking of candidate intents compares words with difflib. Templates: a render that runs into
each of the default render limits.

Run: PYTHONPATH=server .venv/bin/python bench/bench_routing.py
"""

from __future__ import annotations

import contextlib
import functools
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # the attack texts: tests/fixtures

from cpa_scheduler.domain import InvalidArgument  # noqa: E402
from cpa_scheduler.planning import (  # noqa: E402
    Pattern,
    RenderLimits,
    RuleIntentRouter,
    load_default_catalog,
    parse_catalog,
)
from tests.fixtures.routing_attacks import attack, near_misses  # noqa: E402

REPEATS = 5


def best_ms(work: Callable[[], object]) -> float:
    """The fastest of REPEATS runs, in milliseconds (the least disturbed by the rest of the box)."""
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        runs.append(time.perf_counter() - start)
    return min(runs) * 1000


def search_all(patterns: list[Pattern], text: str) -> None:
    for pattern in patterns:
        pattern.search(text)


def routing() -> None:
    router = RuleIntentRouter(load_default_catalog(), max_text_bytes=64 * 1024)
    patterns = [pattern for intent in router.catalog.intents for pattern in intent.patterns]
    for size in (1024, 4096, 8192, 65536):
        text = attack(size)
        match_ms = best_ms(functools.partial(search_all, patterns, text))
        print(f"all {len(patterns)} patterns on {size:>6} B of the attack: {match_ms:8.3f} ms")
    for name, shape in (("attack", attack), ("near-miss words", near_misses)):
        text = shape(1024)
        route_ms = best_ms(functools.partial(router.route, text))
        print(f"route() of 1 KiB of {name:<15} (unmatched, ranked): {route_ms:8.3f} ms")


def templates() -> None:
    limits = RenderLimits()
    for name, template in (
        ("steps: range(100000)", "{% for i in range(100000) %}{{ i }}{% endfor %}"),
        ("steps: method calls", "{% for i in range(100000) %}{{ text.upper() }}{% endfor %}"),
        ("bytes: 100 B per step", "{% for i in range(100000) %}{{ text }}{% endfor %}"),
    ):
        catalog = parse_catalog(
            textwrap.dedent(
                """\
                intents:
                  - name: x
                    description: x.
                    parameters: {text: {}}
                    tasks: [{id: a, action: echo, params: {body: '%s'}}]
                """
            )
            % template
        )
        router = RuleIntentRouter(catalog, render_limits=limits)

        def render(router: RuleIntentRouter = router) -> None:
            # TEMPLATE_LIMIT_EXCEEDED: what is measured is how soon it comes.
            with contextlib.suppress(InvalidArgument):
                router.expand("x", {"text": "y" * 100})

        print(f"render to the limit ({name:<22}): {best_ms(render):8.3f} ms")


if __name__ == "__main__":
    routing()
    templates()
