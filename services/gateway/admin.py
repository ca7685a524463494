"""API key administration straight on the gateway's store, for `agentrt keys` and `agentrt dev`.

These bypass the RPC API on purpose: they are how the first key comes to exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.gateway.keys import ApiKeys, Principal
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


async def create_api_key(
    storage: StorageConfig, tenant: str, principal: str, *, admin: bool = False
) -> str:
    """A new key for the principal of the tenant; the plaintext is shown only now. An
    `admin` key may also call the admin APIs the gateway forwards (docs/admin.md)."""
    async with _keys(storage) as keys:
        _, plaintext = await keys.create(tenant, principal, admin=admin)
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


async def key_principal(storage: StorageConfig, key: str) -> Principal | None:
    """Who a valid key belongs to (and whether it is an admin key); None for a key that
    is malformed, unknown or revoked."""
    async with _keys(storage) as keys:
        try:
            return await keys.authenticate(key)
        except Unauthenticated:
            return None
