"""API key administration straight on the gateway's store, for `agentrt keys` and `agentrt dev`.

These bypass the RPC API on purpose: they are how the first key comes to exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.gateway.keys import ApiKeys
from services.gateway.store import ApiKeyRecord, open_key_store
from services.kit.errors import Unauthenticated
from services.kit.storage import StorageConfig


@asynccontextmanager
async def _keys(storage: StorageConfig) -> AsyncIterator[ApiKeys]:
    store = await open_key_store(storage)
    try:
        yield ApiKeys(store, cache_seconds=0)
    finally:
        await store.close()


async def create_api_key(storage: StorageConfig, tenant: str, principal: str) -> str:
    """A new key for the principal of the tenant; the plaintext is shown only now."""
    async with _keys(storage) as keys:
        _, plaintext = await keys.create(tenant, principal)
    return plaintext


async def list_api_keys(storage: StorageConfig, tenant: str) -> list[ApiKeyRecord]:
    """The tenant's keys, revoked ones included, oldest first."""
    async with _keys(storage) as keys:
        return await keys.list(tenant)


async def revoke_api_key(storage: StorageConfig, key_id: str) -> ApiKeyRecord:
    """Revokes a key (running gateways notice within their key cache period); NotFound
    for an unknown key id."""
    async with _keys(storage) as keys:
        return await keys.revoke(key_id)


async def verify_api_key(storage: StorageConfig, key: str) -> bool:
    """Whether the key is valid: well-formed, known and not revoked."""
    async with _keys(storage) as keys:
        try:
            await keys.authenticate(key)
        except Unauthenticated:
            return False
        return True
