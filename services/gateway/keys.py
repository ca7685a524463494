"""API keys: issuing them, recognising a presented key, revoking them.

A key reads `agk_<key id>_<secret>`: the key id is public (listings, revocation, logs),
the secret is 256 random bits shown once, at creation. Only the secret's SHA-256 is
stored: a secret this random cannot be guessed from its hash, so no slow password hash
is needed, and checking a key stays cheap enough to do on every call.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agentrt.common.v1.common_pb2 import ErrorReason

from services.gateway.store import ApiKeyRecord, ApiKeyStore
from services.kit.errors import FieldInvalid, NotFound, Unauthenticated

KEY_PREFIX = "agk_"
_KEY_ID_BYTES = 10
"""80 bits: 16 base32 characters, enough never to collide."""
_SECRET_BYTES = 32
"""256 bits: 52 base32 characters."""
_KEY = re.compile(r"agk_(?P<key_id>[a-z2-7]{16})_(?P<secret>[a-z2-7]{52})")
_KEY_ID = re.compile(r"[a-z2-7]{16}")
_NAME = re.compile(r"[a-z0-9_-]{1,63}")


@dataclass(frozen=True)
class Principal:
    """Who is calling, as established by their API key."""

    tenant: str
    """The tenant the call acts for."""
    principal: str
    """The key's owner."""
    key_id: str
    """The key used, for the record."""
    admin: bool = False
    """Whether the key is an operator's (admin) key; see ApiKeyRecord.admin."""


def validate_name(field: str, value: str) -> str:
    """A tenant or principal name: 1 to 63 lowercase letters, digits, '-' or '_'."""
    if not _NAME.fullmatch(value):
        raise FieldInvalid(field, f"{value[:80]!r} must be 1 to 63 of a-z, 0-9, '-', '_'")
    return value


def _random_base32(size: int) -> str:
    return base64.b32encode(secrets.token_bytes(size)).decode("ascii").rstrip("=").lower()


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _invalid_key() -> Unauthenticated:
    # The same answer whether the key is malformed, unknown or revoked: a caller learns
    # nothing about which keys exist.
    return Unauthenticated(
        "the API key is not valid (unknown, revoked or malformed)",
        ErrorReason.ERROR_REASON_API_KEY_INVALID,
    )


@dataclass(frozen=True)
class _Cached:
    record: ApiKeyRecord
    expires_at: float


class ApiKeys:
    """Issues, checks and revokes API keys over a store.

    Records of recently used keys are kept in memory for `cache_seconds`, so the hot
    path does not read the database on every call. The price: a key revoked through
    another process (or replica) keeps working here for up to `cache_seconds`.
    """

    def __init__(
        self,
        store: ApiKeyStore,
        cache_seconds: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`cache_seconds` 0 turns the cache off; `clock` is replaceable for tests."""
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must not be negative, got {cache_seconds}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._loading: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        self._revocations = 0
        """Counts revocations, so that a read begun before one is not cached after it."""

    async def create(
        self, tenant: str, principal: str, *, admin: bool = False
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for the principal of the tenant: its record and the plaintext key,
        which is never available again. An `admin` key may also call the admin APIs."""
        validate_name("tenant", tenant)
        validate_name("principal", principal)
        key_id = _random_base32(_KEY_ID_BYTES)
        secret = _random_base32(_SECRET_BYTES)
        record = ApiKeyRecord(
            key_id=key_id,
            tenant=tenant,
            principal=principal,
            secret_sha256=_digest(secret),
            create_time=datetime.now(UTC),
            admin=admin,
        )
        await self._store.insert(record)
        return record, f"{KEY_PREFIX}{key_id}_{secret}"

    async def authenticate(self, key: str) -> Principal:
        """Who the key belongs to; Unauthenticated(API_KEY_INVALID) unless it is a
        well-formed, known and unrevoked key."""
        match = _KEY.fullmatch(key)
        if match is None:
            raise _invalid_key()
        record = await self._record(match["key_id"])
        if (
            record is None
            or not hmac.compare_digest(record.secret_sha256, _digest(match["secret"]))
            or record.revoked
        ):
            raise _invalid_key()
        return Principal(record.tenant, record.principal, record.key_id, record.admin)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revokes the key at once in this process (within `cache_seconds` elsewhere);
        revoking a revoked key changes nothing. NotFound for an unknown key id."""
        if not _KEY_ID.fullmatch(key_id):
            raise FieldInvalid("key_id", f"{key_id[:80]!r} is not a key id (16 of a-z, 2-7)")
        record = await self._store.revoke(key_id, datetime.now(UTC))
        self._revocations += 1
        self._cache.pop(key_id, None)
        self._loading.pop(key_id, None)
        if record is None:
            raise NotFound(f"API key {key_id} not found", metadata={"key_id": key_id})
        return record

    async def list(self, tenant: str) -> builtins.list[ApiKeyRecord]:
        """The tenant's keys, revoked ones included, oldest first."""
        return await self._store.list_keys(validate_name("tenant", tenant))

    async def _record(self, key_id: str) -> ApiKeyRecord | None:
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires_at > self._clock():
            return cached.record
        revocations = self._revocations
        # Concurrent calls with the same uncached key share one read, which a cancelled
        # caller does not cancel for the others.
        loading = self._loading.get(key_id)
        if loading is None:
            loading = asyncio.ensure_future(self._store.get(key_id))
            self._loading[key_id] = loading
            loading.add_done_callback(lambda done: self._loaded(key_id, done))
        record = await asyncio.shield(loading)
        if record is not None and self._cache_seconds > 0 and revocations == self._revocations:
            self._remember(record)
        return record

    def _loaded(self, key_id: str, done: asyncio.Future[ApiKeyRecord | None]) -> None:
        if self._loading.get(key_id) is done:
            del self._loading[key_id]
        if not done.cancelled():
            # Marks a failure as seen even when every caller has gone away meanwhile.
            done.exception()

    def _remember(self, record: ApiKeyRecord) -> None:
        self._cache[record.key_id] = _Cached(record, self._clock() + self._cache_seconds)
        self._cache.move_to_end(record.key_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
