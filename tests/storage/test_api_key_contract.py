"""The API key part of the Store contract, against both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.security import Role
from cpa_scheduler.security.api_keys import ApiKey, new_secret, parse_key
from cpa_scheduler.storage import Store

from .conftest import OpenStore

T0 = datetime(2027, 1, 10, 12, 0, 0, 123456, tzinfo=UTC)


def new_api_key(tenant: str, *, at: datetime = T0, roles: frozenset[Role] | None = None) -> ApiKey:
    key_id, _, digest = new_secret()
    return ApiKey(
        key_id=key_id,
        tenant=tenant,
        roles=roles or frozenset({Role.SUBMITTER, Role.VIEWER}),
        secret_sha256=digest,
        description=f"key of {tenant}",
        created_by="local",
        create_time=at,
        agent_actions=("browser.*", "noop"),
        agent_capabilities=("chromium",),
    )


async def check_tables_added_by_upgrades(store: Store) -> None:
    """The tables the latest schema versions added (callback outbox, API keys) work on a store
    upgraded from an older schema."""
    key = new_api_key("acme")
    await store.create_api_key(key)
    assert await store.get_api_key(key.key_id) == key
    assert await store.list_callbacks("acme", state=None, job_id="", after=None, limit=5) == []


async def test_a_created_key_reads_back_whole(store: Store) -> None:
    key = new_api_key("acme")
    await store.create_api_key(key)
    assert await store.get_api_key(key.key_id) == key
    assert await store.get_api_key("0123456789ab") is None


async def test_keys_list_per_tenant_newest_first(store: Store) -> None:
    older, newer = new_api_key("acme"), new_api_key("acme", at=T0 + timedelta(seconds=1))
    other = new_api_key("globex")
    for key in (older, other, newer):
        await store.create_api_key(key)
    assert await store.list_api_keys("acme") == [newer, older]
    assert await store.list_api_keys("globex") == [other]
    assert {k.key_id for k in await store.list_api_keys(None)} == {
        older.key_id,
        newer.key_id,
        other.key_id,
    }


async def test_keys_page_after_a_place_without_missing_or_repeating_one(store: Store) -> None:
    # Two keys share a creation time: the key id orders them (descending, as the time).
    keys = [new_api_key("acme", at=T0 + timedelta(seconds=n // 2)) for n in range(5)]
    await store.create_api_key(new_api_key("globex", at=T0 + timedelta(seconds=1)))
    for key in keys:
        await store.create_api_key(key)
    everything = await store.list_api_keys("acme")
    assert everything == sorted(keys, key=lambda k: (k.create_time, k.key_id), reverse=True)
    pages: list[list[ApiKey]] = []
    after = None
    while True:
        page = await store.list_api_keys("acme", after=after, limit=2)
        if not page:
            break
        pages.append(page)
        after = (page[-1].create_time, page[-1].key_id)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [key for page in pages for key in page] == everything
    assert await store.list_api_keys(None, limit=1) == [everything[0]]


async def test_revocation_is_kept_and_scoped_to_the_tenant(store: Store) -> None:
    key = new_api_key("acme")
    await store.create_api_key(key)
    # Another tenant cannot revoke it, nor learn that it exists.
    assert await store.revoke_api_key("globex", key.key_id, T0) is None
    assert (await store.get_api_key(key.key_id)) == key
    revoked = await store.revoke_api_key("acme", key.key_id, T0 + timedelta(minutes=1))
    assert revoked is not None
    assert revoked.revoke_time == T0 + timedelta(minutes=1)
    # A second revocation keeps the first time.
    again = await store.revoke_api_key("acme", key.key_id, T0 + timedelta(hours=1))
    assert again == revoked
    assert (await store.get_api_key(key.key_id)) == revoked


async def test_keys_survive_a_reopening(open_store: OpenStore) -> None:
    store = await open_store()
    key = new_api_key("acme", roles=frozenset({Role.AGENT}))
    await store.create_api_key(key)
    await store.close()
    assert await (await open_store()).get_api_key(key.key_id) == key


async def test_a_duplicate_key_id_is_refused(store: Store) -> None:
    key = new_api_key("acme")
    await store.create_api_key(key)
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver has its own integrity error
        await store.create_api_key(key)


def test_secrets_parse_to_their_key_id_and_nothing_else_does() -> None:
    key_id, secret, _ = new_secret()
    assert parse_key(secret) == key_id
    assert parse_key(secret + "!") is None
    assert parse_key("cpa_XYZ_" + secret[17:]) is None
    assert parse_key("") is None
