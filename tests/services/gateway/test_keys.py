"""The verified-key cache of ApiKeys: the hot path reads the database once per key per period."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from services.gateway.keys import ApiKeys
from services.gateway.store import SQL_DIRECTORY, ApiKeyRecord, ApiKeyStore, open_key_store
from services.kit.errors import Unauthenticated
from services.kit.storage import StorageConfig, migrate


class CountingStore:
    """A real store that counts the reads reaching it."""

    def __init__(self, store: ApiKeyStore) -> None:
        self.store = store
        self.reads = 0

    async def insert(self, record: ApiKeyRecord) -> None:
        await self.store.insert(record)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        self.reads += 1
        return await self.store.get(key_id)

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord | None:
        return await self.store.revoke(key_id, now)

    async def list_keys(self, tenant: str) -> list[ApiKeyRecord]:
        return await self.store.list_keys(tenant)

    async def close(self) -> None:
        await self.store.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(sqlite_path: Path) -> AsyncIterator[CountingStore]:
    config = StorageConfig("sqlite", sqlite_path, None, "gateway")
    await migrate(config, SQL_DIRECTORY)
    counting = CountingStore(await open_key_store(config))
    try:
        yield counting
    finally:
        await counting.close()


async def test_a_verified_key_is_read_once_per_cache_period(store: CountingStore) -> None:
    clock = Clock()
    keys = ApiKeys(store, cache_seconds=5.0, clock=clock)
    _, plaintext = await keys.create("acme", "app")

    for _ in range(10):
        await keys.authenticate(plaintext)
    assert store.reads == 1

    clock.now += 5.0
    await keys.authenticate(plaintext)
    assert store.reads == 2


async def test_concurrent_lookups_of_an_uncached_key_share_one_read(store: CountingStore) -> None:
    keys = ApiKeys(store)
    _, plaintext = await keys.create("acme", "app")

    principals = await asyncio.gather(*(keys.authenticate(plaintext) for _ in range(20)))

    assert {principal.tenant for principal in principals} == {"acme"}
    assert store.reads == 1


async def test_a_wrong_secret_is_refused_even_when_the_key_is_cached(store: CountingStore) -> None:
    keys = ApiKeys(store)
    _, plaintext = await keys.create("acme", "app")
    await keys.authenticate(plaintext)
    forged = plaintext[: -len("a")] + ("b" if plaintext[-1] == "a" else "a")

    with pytest.raises(Unauthenticated):
        await keys.authenticate(forged)


async def test_a_revocation_elsewhere_takes_effect_when_the_cache_period_ends(
    store: CountingStore,
) -> None:
    clock = Clock()
    keys = ApiKeys(store, cache_seconds=5.0, clock=clock)
    record, plaintext = await keys.create("acme", "app")
    await keys.authenticate(plaintext)

    await ApiKeys(store.store).revoke(record.key_id)
    await keys.authenticate(plaintext)
    clock.now += 5.0

    with pytest.raises(Unauthenticated):
        await keys.authenticate(plaintext)


async def test_a_zero_cache_period_reads_every_time(store: CountingStore) -> None:
    keys = ApiKeys(store, cache_seconds=0)
    _, plaintext = await keys.create("acme", "app")
    for _ in range(3):
        await keys.authenticate(plaintext)
    assert store.reads == 3
