"""The arena (a real embedded server, a real agent, a normal job running) for the whole module:
hostile traffic and the normal job run at the same time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .arena import Arena, running_arena


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    with running_arena(tmp_path_factory.mktemp("hostile")) as running:
        yield running
