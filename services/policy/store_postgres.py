"""The policy set store on PostgreSQL, in the policy service's own schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from agentrt.policy.v1.policy_pb2 import PolicySet

from services.kit.errors import AlreadyExists, RequestIdReused
from services.kit.storage import create_pool, load_queries
from services.policy.names import policy_set_name
from services.policy.store import (
    SQL_DIRECTORY,
    NewPolicySet,
    PolicySetChange,
    Stamp,
    decode_page_token,
    encode_page_token,
    etag_mismatch,
    from_micros,
    micros,
    not_found,
    parse_etag,
    serialize_rules,
    to_policy_set,
)

_QUERIES = load_queries(SQL_DIRECTORY / "postgres" / "queries.sql")


class PostgresPolicySetStore:
    """Policy sets in the `policy` schema (or the one configured)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, schema: str, max_connections: int = 8) -> PostgresPolicySetStore:
        """Opens a pool on the migrated schema."""
        return cls(await create_pool(dsn, schema, min_size=1, max_size=max_connections))

    async def create(self, new: NewPolicySet, now: datetime) -> tuple[PolicySet, bool]:
        row = await self._pool.fetchrow(
            _QUERIES["insert_policy_set"],
            new.policy_set_id,
            new.description,
            serialize_rules(new.rules),
            new.request_id,
            new.request_hash,
            now,
        )
        if row is not None:
            return _policy_set(row), True
        # The insert lost to an existing row: one with this request_id (a retry, or a
        # reuse) or, failing that, one with this id.
        if new.request_id:
            row = await self._pool.fetchrow(_QUERIES["policy_set_by_request_id"], new.request_id)
            if row is not None:
                if bytes(row["request_hash"]) != new.request_hash:
                    raise RequestIdReused(new.request_id)
                return _policy_set(row), False
        name = policy_set_name(new.policy_set_id)
        raise AlreadyExists(f"policy set {name} already exists", metadata={"name": name})

    async def get(self, policy_set_id: str) -> PolicySet:
        row = await self._pool.fetchrow(_QUERIES["get_policy_set"], policy_set_id)
        if row is None:
            raise not_found(policy_set_id)
        return _policy_set(row)

    async def list(self, page_size: int, page_token: str) -> tuple[list[PolicySet], str]:
        after = decode_page_token(page_token)
        rows = await self._pool.fetch(_QUERIES["list_policy_sets"], after, page_size + 1)
        page = [_policy_set(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return page, encode_page_token(rows[page_size - 1]["id"]) if more else ""

    async def update(
        self, policy_set_id: str, change: PolicySetChange, etag: str, now: datetime
    ) -> PolicySet:
        row = await self._pool.fetchrow(
            _QUERIES["update_policy_set"],
            policy_set_id,
            change.description is not None,
            change.description or "",
            change.rules is not None,
            b"" if change.rules is None else serialize_rules(change.rules),
            *_etag_args(etag),
            now,
        )
        if row is None:
            raise await self._why_unchanged(policy_set_id, etag)
        return _policy_set(row)

    async def delete(self, policy_set_id: str, etag: str) -> None:
        status = await self._pool.execute(
            _QUERIES["delete_policy_set"], policy_set_id, *_etag_args(etag)
        )
        if status == "DELETE 0":
            raise await self._why_unchanged(policy_set_id, etag)

    async def close(self) -> None:
        await self._pool.close()

    async def _why_unchanged(self, policy_set_id: str, etag: str) -> Exception:
        # Only explains the failure: the change itself was one statement.
        found = await self._pool.fetchrow(_QUERIES["get_policy_set"], policy_set_id)
        return not_found(policy_set_id) if found is None else etag_mismatch(policy_set_id, etag)


def _etag_args(etag: str) -> tuple[Any, ...]:
    # An etag this store never made matches no version (-1), so it fails the check.
    stamp = parse_etag(etag) or Stamp(-1, 0)
    return bool(etag), stamp.version, from_micros(stamp.create_micros)


def _policy_set(row: asyncpg.Record) -> PolicySet:
    return to_policy_set(
        row["id"],
        row["description"],
        bytes(row["rules"]),
        Stamp(row["version"], micros(row["create_time"])),
        row["update_time"],
    )
