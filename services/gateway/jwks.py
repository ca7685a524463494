"""The signing keys of an identity provider: a JWKS read from a file or a URL, kept fresh."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx
import jwt

from services.kit.errors import Unavailable

log = logging.getLogger(__name__)

Fetch = Callable[[], Awaitable[bytes]]
"""Reads the JWKS document as it is now."""


def jwks_fetcher(source: str, timeout: float = 5.0) -> Fetch:
    """A reader of the JWKS at `source`: an http(s) URL or a file path."""
    if source.startswith(("https://", "http://")):

        async def fetch_url() -> bytes:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
                response = await client.get(source, headers={"accept": "application/json"})
                response.raise_for_status()
                return response.content

        return fetch_url
    path = Path(source)

    async def fetch_file() -> bytes:
        return await asyncio.to_thread(path.read_bytes)

    return fetch_file


def parse_jwks(document: bytes) -> dict[str, jwt.PyJWK]:
    """The signature keys of a JWKS by key id (a key without `kid` is filed under "").

    Keys of other uses (`use` other than `sig`) and of kinds this verifier does not know
    are left out, as RFC 7517 lets a set hold keys a reader cannot use."""
    data = json.loads(document)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('a JWKS is a JSON object with a "keys" array')
    keys: dict[str, jwt.PyJWK] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue
        keys[str(entry.get("kid", ""))] = key
    return keys


class KeySet:
    """The keys of one JWKS, re-read every `refresh_seconds`, and at once (but at most once
    every `cooldown_seconds`) when a token names a key id it does not hold: that is how a
    provider's key rotation is seen before the next refresh.

    A refresh that fails keeps the keys read before; only when no read has ever worked
    is a call refused, with UNAVAILABLE."""

    def __init__(
        self,
        fetch: Fetch,
        refresh_seconds: float = 300.0,
        cooldown_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self._cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._keys: Mapping[str, jwt.PyJWK] | None = None
        self._read_at = float("-inf")
        self._tried_at = float("-inf")
        self._lock = asyncio.Lock()
        self.reads = 0
        """How many times the JWKS was read, for tests and metrics."""
        self.attempts = 0
        """How many times a read was tried, successful or not."""

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with id `kid` ("" for a token that names none: the set's only key)."""
        if self._keys is None or self._clock() - self._read_at >= self._refresh_seconds:
            await self._refresh(self._clock())
        found = self._find(kid)
        if found is None:
            await self._refresh(self._clock())
            found = self._find(kid)
        return found

    def _find(self, kid: str) -> jwt.PyJWK | None:
        keys = self._keys or {}
        if kid:
            return keys.get(kid)
        return next(iter(keys.values())) if len(keys) == 1 else None

    async def _refresh(self, now: float) -> None:
        """Reads the JWKS unless it was tried less than a cooldown ago (by this caller's
        clock reading, so a caller that waited for another's read does not read again):
        neither unknown key ids nor an unreachable provider make a read on every call."""
        async with self._lock:
            if now - self._tried_at < self._cooldown_seconds:
                if self._keys is None:
                    raise self._unavailable()
                return
            self._tried_at = self._clock()
            self.attempts += 1
            try:
                keys = parse_jwks(await self._fetch())
            except (OSError, ValueError, httpx.HTTPError) as error:
                if self._keys is None:
                    log.error("JWKS cannot be read: %s", error)
                    raise self._unavailable() from error
                log.warning("JWKS refresh failed, keeping the keys read before: %s", error)
                return
            self._keys = keys
            self._read_at = self._tried_at
            self.reads += 1

    @staticmethod
    def _unavailable() -> Unavailable:
        # The caller learns that, not where the keys are looked for or why.
        return Unavailable("the identity provider's keys cannot be read; try again later")
