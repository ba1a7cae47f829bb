"""The deliverer: one per replica, a background task of the server. It claims due rows of the
outbox (no other replica gets them while the claim lasts), POSTs each, signed, and records how
it went: delivered, due again after a backoff, or dead-lettered (docs/CALLBACKS.md)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp

from cpa_scheduler.background import Backoff, wait_event
from cpa_scheduler.storage import CallbackDelivery, CallbackOutcome, CallbackState, Store
from cpa_scheduler.telemetry import metrics

from . import signing
from .backoff import BackoffPolicy, Verdict, parse_retry_after, verdict_of
from .keys import SigningKeys
from .sender import AddressRefusedError, CallbackSender, refused

log = logging.getLogger(__name__)

USER_AGENT = "cpa-scheduler-callbacks/1"
# last_error is shown by `cpa callbacks list`: bounded.
_MAX_ERROR_CHARS = 500


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CallbackDeliverer:
    """Claims and delivers callbacks until cancelled (`run`); `wake()` when new ones are due."""

    def __init__(
        self,
        *,
        store: Store,
        sender: CallbackSender,
        keys: SigningKeys,
        backoff: BackoffPolicy,
        max_attempts: int,
        claim_s: float,
        poll_interval_s: float,
        concurrency: int,
        claimer: str = "",
        clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._keys = keys
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._claim = timedelta(seconds=claim_s)
        self._poll_interval_s = poll_interval_s
        self._concurrency = concurrency
        self._claimer = claimer
        self._clock = clock
        self._rng = rng or random.Random()
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        failing = Backoff()
        try:
            while True:
                self._woken.clear()
                try:
                    claimed = await self.deliver_due()
                except Exception as error:  # the store is away: try again, later and later
                    log.warning("callback deliverer: %s", error)
                    await asyncio.sleep(failing.take())
                    continue
                failing.reset()
                if not claimed:
                    await wait_event(self._woken, self._poll_interval_s)
        finally:
            await self._sender.close()

    async def deliver_due(self) -> int:
        """One round: claim what is due (at most `concurrency`), deliver it all at once, record
        the outcomes. Returns how many were claimed."""
        now = self._clock()
        # Who holds a claim, readable in the table (the replica's id), made unique per round.
        token = f"{self._claimer}/{uuid.uuid4().hex}"
        claimed = await self._store.claim_callbacks(
            now, limit=self._concurrency, claim_until=now + self._claim, claim_token=token
        )
        if claimed:
            await asyncio.gather(*(self._deliver(delivery, token) for delivery in claimed))
        return len(claimed)

    async def _deliver(self, delivery: CallbackDelivery, token: str) -> None:
        outcome = await self._attempt(delivery)
        await self._store.record_callback_attempt(
            delivery.delivery_id, claim_token=token, now=self._clock(), outcome=outcome
        )
        metrics.callback_finished(outcome.state.value.lower())
        if outcome.state is CallbackState.DEAD:
            log.warning(
                "callback %s of job %s dead-lettered: %s",
                delivery.delivery_id,
                delivery.job_id,
                outcome.last_error,
            )

    async def _attempt(self, delivery: CallbackDelivery) -> CallbackOutcome:
        attempt = delivery.attempts + 1
        body = delivery.body_json.encode()
        key = self._keys.of(delivery.tenant)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            signing.DELIVERY_ID_HEADER: delivery.delivery_id,
            signing.EVENT_TYPE_HEADER: delivery.event_type,
            signing.ATTEMPT_HEADER: str(attempt),
            signing.KEY_ID_HEADER: key.key_id,
            signing.SIGNATURE_HEADER: signing.signature(key.secret, int(time.time()), body),
        }
        try:
            answer = await self._sender.post(delivery.url, body, headers)
        except AddressRefusedError as error:
            return self._dead(f"refused: {error}")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            if (refusal := refused(error)) is not None:
                return self._dead(f"refused: {refusal}")
            return self._again(delivery, attempt, f"{type(error).__name__}: {error}", None)
        verdict = verdict_of(answer.status)
        if verdict is Verdict.DELIVERED:
            return CallbackOutcome(state=CallbackState.DELIVERED)
        if verdict is Verdict.PERMANENT:
            return self._dead(f"HTTP {answer.status}: the receiver refused it (not retried)")
        retry_after = None
        if answer.status in (429, 503):
            retry_after = parse_retry_after(answer.retry_after, now=self._clock())
        return self._again(delivery, attempt, f"HTTP {answer.status}", retry_after)

    def _again(
        self, delivery: CallbackDelivery, attempt: int, error: str, retry_after_s: float | None
    ) -> CallbackOutcome:
        if attempt >= self._max_attempts:
            return self._dead(f"{error} (attempt {attempt} of {self._max_attempts}: gave up)")
        delay_s = self._backoff.delay_s(attempt, self._rng, retry_after_s=retry_after_s)
        return CallbackOutcome(
            state=CallbackState.PENDING,
            next_attempt_time=self._clock() + timedelta(seconds=delay_s),
            last_error=error[:_MAX_ERROR_CHARS],
        )

    @staticmethod
    def _dead(error: str) -> CallbackOutcome:
        return CallbackOutcome(state=CallbackState.DEAD, last_error=error[:_MAX_ERROR_CHARS])
