"""Health that means something: a background probe turns grpc.health.v1 NOT_SERVING while the
store or Redis does not answer, and SERVING again once they do (docs/RELIABILITY.md, "Health").

The checks are cheap (SELECT 1, PING) on connections of their own, once per interval, never on
the hot path. A stopping server's NOT_SERVING wins: grpc's HealthServicer ignores every set()
after enter_graceful_shutdown(), so the probe cannot turn a stopping replica SERVING again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

Check = Callable[[], Coroutine[Any, Any, None]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthProbe:
    """Runs `checks` (name -> a call that raises when its dependency is sick) every
    `interval_s`; any failure or a check slower than `timeout_s` sets every one of `services`
    NOT_SERVING, all passing sets them SERVING. Changes are logged, not every round."""

    def __init__(
        self,
        health: health_aio.HealthServicer,
        services: Sequence[str],
        checks: Mapping[str, Check],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._health = health
        self._services = tuple(services)
        self._checks = dict(checks)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self.failures: dict[str, str] = {}
        """What failed in the last round: check name -> why (empty while healthy)."""
        self._pending: dict[str, asyncio.Task[None]] = {}

    async def run_forever(self) -> None:
        try:
            while True:
                await self.probe_once()
                await asyncio.sleep(self._interval_s)
        finally:
            for task in self._pending.values():
                task.cancel()

    async def probe_once(self) -> None:
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._run(name) for name in names))
        failures = {name: why for name, why in zip(names, outcomes, strict=True) if why}
        if failures == self.failures:
            return
        if failures:
            log.warning(
                "health: NOT_SERVING (%s)",
                "; ".join(f"{name}: {why}" for name, why in failures.items()),
            )
        else:
            log.warning("health: SERVING again (%s answer)", ", ".join(names))
        if bool(failures) != bool(self.failures):
            status = NOT_SERVING if failures else SERVING
            for service in self._services:
                await self._health.set(service, status)
        self.failures = failures

    async def _run(self, name: str) -> str:
        """ "" when check `name` passed, else why it failed (one line).

        Waited for at most timeout_s, but not cancelled-and-awaited: a driver may take long to
        give up (psycopg tries to cancel the query over the same dead network). A check still
        running is waited for again next round instead of starting another."""
        task = self._pending.get(name)
        if task is None or task.done():  # one given up on earlier that ended since: stale
            task = self._pending[name] = asyncio.create_task(
                self._checks[name](), name=f"health-check-{name}"
            )
        done, _ = await asyncio.wait({task}, timeout=self._timeout_s)
        if not done:
            if not task.cancelling():
                task.cancel()
            return f"no answer within {self._timeout_s:g}s"
        del self._pending[name]
        if task.cancelled():
            return "check cancelled"
        error = task.exception()
        if error is None:
            return ""
        text = str(error).strip().splitlines()
        return text[0] if text else type(error).__name__
