"""Every RPC of SchedulerService has a method in the Python SDK, async and sync: a new RPC in
proto/ without one fails here."""

from __future__ import annotations

import inspect
import re

import pytest

from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_client import SchedulerClient, SyncSchedulerClient

SERVICE = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("rpc", [m.name for m in SERVICE.methods])
def test_every_rpc_has_an_async_and_a_sync_method(rpc: str) -> None:
    name = _snake(rpc)
    method = getattr(SchedulerClient, name, None)
    assert method is not None, f"SchedulerClient has no {name}() for {rpc}"
    # A streaming RPC is an async iterator (or gathered by the method); a unary one a coroutine.
    assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)
    sync = getattr(SyncSchedulerClient, name, None)
    assert sync is not None, f"SyncSchedulerClient has no {name}() for {rpc}"
    assert not inspect.iscoroutinefunction(sync)
    assert sync.__doc__ == method.__doc__


def test_the_sync_client_wraps_every_public_method_of_the_async_one() -> None:
    public = {
        name
        for name, member in vars(SchedulerClient).items()
        if not name.startswith("_") and callable(member)
    }
    assert public <= set(dir(SyncSchedulerClient))
