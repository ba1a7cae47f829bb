"""Ends long-lived calls (agent Connect streams, WatchJob and DownloadArtifact streams) once
their credential stops being valid: an API key or agent token revoked or deleted, a JWT past its
expiry. A credential is checked when a call starts; a stream that outlives its credential must
not go on serving.

One per replica. A stream registers its principal with a callback. One loop looks every half
auth cache TTL at each distinct credential with streams open (not at each stream), reusing what
the replica read of the key within that half TTL (Authenticator.still_valid), so a revocation
made on any replica ends its streams on every replica within one TTL, the bound a new call has;
on the replica that revoked it, at once (`forget`). A JWT's streams end when its `exp` plus the
clock skew passes (one timer per stream, no polling): a call made then would be refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from cpa_scheduler.domain import DomainError, Reason

from .authenticator import Authenticator
from .principal import CredentialKind, Principal, current_principal

log = logging.getLogger(__name__)

OnEnd = Callable[[DomainError], None]
_STORED = (CredentialKind.API_KEY, CredentialKind.AGENT_TOKEN)


@dataclass(frozen=True, slots=True)
class _Watcher:
    principal: Principal
    on_end: OnEnd


def _revoked(principal: Principal) -> DomainError:
    return DomainError(
        f"{principal.subject}'s credential was revoked while this stream was open",
        reason=Reason.CREDENTIAL_REVOKED,
    )


def _expired(principal: Principal) -> DomainError:
    return DomainError(
        f"{principal.subject}'s credential expired while this stream was open",
        reason=Reason.CREDENTIAL_EXPIRED,
    )


def until_credential_ends(
    credentials: CredentialWatch | None,
) -> contextlib.AbstractAsyncContextManager[None]:
    """`credentials.ending_with` the current call's principal: what a server stream's handler
    (a coroutine writing with context.write, so the cancellation lands in its body) runs in.
    With authentication off (no watch) there is no credential to end."""
    if credentials is None:
        return contextlib.nullcontext()
    return credentials.ending_with(current_principal())


class CredentialWatch:
    """See the module's doc."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._authenticator = authenticator
        self._interval_s = interval_s
        self._clock = clock  # wall time, as a JWT's exp
        self._ids = itertools.count()
        # credential_id -> the streams of that credential (registration number -> watcher).
        self._open: dict[str, dict[int, _Watcher]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    def watch(self, principal: Principal, on_end: OnEnd) -> Callable[[], None]:
        """Calls `on_end` (once, on the event loop) when `principal`'s credential ends; returns
        what stops watching. A credential that cannot end (authentication off) is not watched."""
        if principal.valid_until is not None:
            delay_s = max(0.0, principal.valid_until - self._clock())
            handle = asyncio.get_running_loop().call_later(delay_s, on_end, _expired(principal))
            return handle.cancel
        if principal.kind not in _STORED:
            return lambda: None
        number = next(self._ids)
        self._open.setdefault(principal.credential_id, {})[number] = _Watcher(principal, on_end)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._look_every_interval())

        def stop() -> None:
            streams = self._open.get(principal.credential_id)
            if streams is not None:
                streams.pop(number, None)
                if not streams:
                    del self._open[principal.credential_id]

        return stop

    @contextlib.asynccontextmanager
    async def ending_with(self, principal: Principal | None) -> AsyncIterator[None]:
        """Runs the body (a stream's whole serving) until it ends or the credential does: then
        the body is cancelled and the credential's DomainError (UNAUTHENTICATED,
        CREDENTIAL_REVOKED or CREDENTIAL_EXPIRED) raised in its place."""
        task = asyncio.current_task()
        if principal is None or task is None:
            yield
            return
        ended: list[DomainError] = []

        def end(error: DomainError) -> None:
            if not ended:
                ended.append(error)
                task.cancel()

        stop = self.watch(principal, end)
        try:
            yield
        except asyncio.CancelledError:
            # Ours (as asyncio.timeout does): the stream ends with the credential's error; a
            # cancellation from elsewhere (the client went away) stays one.
            if ended and task.uncancel() == 0:
                raise ended[0] from None
            raise
        finally:
            stop()

    def forget(self, key_id: str) -> None:
        """A key was revoked on this replica: drop what was read of it and end its streams now
        (AdminService's RevokeApiKey calls this)."""
        self._authenticator.forget(key_id)
        if key_id in self._open:
            check = asyncio.create_task(self._check(key_id))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)

    async def close(self) -> None:
        """Stops looking (the server stops; its streams are gone): before the store closes."""
        tasks = [*self._checks, *([self._loop] if self._loop is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._open.clear()

    async def _look_every_interval(self) -> None:
        while self._open:
            for credential_id in list(self._open):
                await self._check(credential_id)
            await asyncio.sleep(self._interval_s)

    async def _check(self, credential_id: str) -> None:
        streams = self._open.get(credential_id)
        if not streams:
            return
        principal = next(iter(streams.values())).principal
        try:
            valid = await self._authenticator.still_valid(principal, max_age_s=self._interval_s)
        except Exception as error:  # the store is away: look again next time
            log.info("cannot check %s's credential: %s", principal.subject, error)
            return
        if valid:
            return
        ended = self._open.pop(credential_id, {})
        log.warning(
            "%s's credential was revoked: ending its %d open streams", principal.subject, len(ended)
        )
        for watcher in ended.values():
            watcher.on_end(_revoked(watcher.principal))
