"""The arena (a real server, a real agent, a normal job running) for the whole module, once per
store: embedded (SQLite) and distributed (PostgreSQL and Redis). Hostile traffic and the normal
job run at the same time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.fixtures.cluster import fresh_backends

from .arena import Arena, running_arena

STORES = ("embedded", "postgres")


@pytest.fixture(scope="module", params=STORES)
def arena(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Arena]:
    with contextlib.ExitStack() as stack:
        backends = None
        if request.param == "postgres":
            backends = stack.enter_context(
                fresh_backends(
                    request.getfixturevalue("postgres_server_url"),
                    request.getfixturevalue("redis_server_url"),
                    prefix="cpa_hostile",
                )
            )
        yield stack.enter_context(
            running_arena(tmp_path_factory.mktemp("hostile"), backends=backends)
        )
