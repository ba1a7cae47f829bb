"""The outbox as callers see it (ListCallbacks, RetryCallbacks): the application layer between
the servicer and the store, tenant-scoped; re-driven deliveries wake the deliverer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cpa_scheduler.domain import AuditCall, FailedPrecondition, NotFound, Reason
from cpa_scheduler.storage import (
    CallbackDelivery,
    CallbackPosition,
    CallbackState,
    Store,
)


class CallbackOutbox:
    """List and re-drive a tenant's callback deliveries."""

    def __init__(
        self,
        *,
        store: Store,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._wake = wake
        self._clock = clock

    async def deliveries(
        self,
        tenant: str,
        *,
        state: CallbackState | None,
        job_id: str,
        after: CallbackPosition | None,
        limit: int,
    ) -> list[CallbackDelivery]:
        return await self._store.list_callbacks(
            tenant, state=state, job_id=job_id, after=after, limit=limit
        )

    async def retry(
        self, tenant: str, delivery_ids: Sequence[str], *, audit: AuditCall | None = None
    ) -> list[CallbackDelivery]:
        """Re-drive these DEAD deliveries, all or none: NotFound(CALLBACK_NOT_FOUND) for an id
        the tenant has no delivery under, FailedPrecondition(CALLBACK_NOT_DEAD) for one that is
        not DEAD, each naming `delivery_ids[i]`. A delivery that leaves DEAD between the check
        and the re-drive (another caller re-drove it) is left out of the answer. `audit`: the
        call whose entries (one per re-driven delivery) are written with the re-drive."""
        found = {d.delivery_id: d for d in await self._store.get_callbacks(tenant, delivery_ids)}
        for index, delivery_id in enumerate(delivery_ids):
            field = f"delivery_ids[{index}]"
            delivery = found.get(delivery_id)
            if delivery is None:
                raise NotFound(
                    f"no callback delivery {delivery_id!r}",
                    reason=Reason.CALLBACK_NOT_FOUND,
                    field=field,
                )
            if delivery.state is not CallbackState.DEAD:
                raise FailedPrecondition(
                    f"callback delivery {delivery_id!r} is {delivery.state.value}, not DEAD",
                    reason=Reason.CALLBACK_NOT_DEAD,
                    field=field,
                )
        redriven = await self._store.redrive_callbacks(
            tenant, list(delivery_ids), now=self._clock(), limit=len(delivery_ids), audit=audit
        )
        if redriven:
            self._wake()
        return redriven

    async def retry_all_dead(
        self, tenant: str, *, limit: int, audit: AuditCall | None = None
    ) -> list[CallbackDelivery]:
        """Re-drive the tenant's oldest `limit` DEAD deliveries (audited as `retry`)."""
        redriven = await self._store.redrive_callbacks(
            tenant, None, now=self._clock(), limit=limit, audit=audit
        )
        if redriven:
            self._wake()
        return redriven
