"""The policy set store on SQLite, the embedded default of `agentrt dev`.

Writes run inside one BEGIN IMMEDIATE transaction on the database's single thread, so a
compare-and-set and the read that explains its failure see the same state.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from agentrt.policy.v1.policy_pb2 import PolicySet

from services.kit.errors import AlreadyExists, RequestIdReused
from services.kit.storage import SqliteDatabase, load_queries
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

_QUERIES = load_queries(SQL_DIRECTORY / "sqlite" / "queries.sql")


class SqlitePolicySetStore:
    """Policy sets in the policy service's SQLite file."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    @classmethod
    async def open(cls, path: Path) -> SqlitePolicySetStore:
        """Opens the migrated database file."""
        return cls(await SqliteDatabase.open(path))

    async def create(self, new: NewPolicySet, now: datetime) -> tuple[PolicySet, bool]:
        def create(connection: sqlite3.Connection) -> tuple[PolicySet, bool]:
            if new.request_id:
                by_request = {"request_id": new.request_id}
                row = connection.execute(
                    _QUERIES["policy_set_by_request_id"], by_request
                ).fetchone()
                if row is not None:
                    if bytes(row["request_hash"]) != new.request_hash:
                        raise RequestIdReused(new.request_id)
                    return _policy_set(row), False
            params: dict[str, Any] = {
                "id": new.policy_set_id,
                "description": new.description,
                "rules": serialize_rules(new.rules),
                "request_id": new.request_id,
                "request_hash": new.request_hash,
                "now": micros(now),
            }
            row = connection.execute(_QUERIES["insert_policy_set"], params).fetchone()
            if row is None:
                name = policy_set_name(new.policy_set_id)
                raise AlreadyExists(f"policy set {name} already exists", metadata={"name": name})
            return _policy_set(row), True

        return await self._db.transaction(create)

    async def get(self, policy_set_id: str) -> PolicySet:
        row = await self._db.fetchone(_QUERIES["get_policy_set"], {"id": policy_set_id})
        if row is None:
            raise not_found(policy_set_id)
        return _policy_set(row)

    async def list(self, page_size: int, page_token: str) -> tuple[list[PolicySet], str]:
        params = {"after": decode_page_token(page_token), "limit": page_size + 1}
        rows = await self._db.fetchall(_QUERIES["list_policy_sets"], params)
        page = [_policy_set(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return page, encode_page_token(rows[page_size - 1]["id"]) if more else ""

    async def update(
        self, policy_set_id: str, change: PolicySetChange, etag: str, now: datetime
    ) -> PolicySet:
        params: dict[str, Any] = {
            "id": policy_set_id,
            "set_description": change.description is not None,
            "description": change.description,
            "set_rules": change.rules is not None,
            "rules": None if change.rules is None else serialize_rules(change.rules),
            "now": micros(now),
            **_etag_params(etag),
        }

        def update(connection: sqlite3.Connection) -> PolicySet:
            row = connection.execute(_QUERIES["update_policy_set"], params).fetchone()
            if row is None:
                raise _why_unchanged(connection, policy_set_id, etag)
            return _policy_set(row)

        return await self._db.transaction(update)

    async def delete(self, policy_set_id: str, etag: str) -> None:
        params = {"id": policy_set_id, **_etag_params(etag)}

        def delete(connection: sqlite3.Connection) -> None:
            if connection.execute(_QUERIES["delete_policy_set"], params).rowcount == 0:
                raise _why_unchanged(connection, policy_set_id, etag)

        await self._db.transaction(delete)

    async def close(self) -> None:
        await self._db.close()


def _etag_params(etag: str) -> dict[str, Any]:
    # An etag this store never made matches no version (-1), so it fails the check.
    stamp = parse_etag(etag) or Stamp(-1, 0)
    return {
        "check_etag": bool(etag),
        "version": stamp.version,
        "create_time": stamp.create_micros,
    }


def _why_unchanged(connection: sqlite3.Connection, policy_set_id: str, etag: str) -> Exception:
    found = connection.execute(_QUERIES["get_policy_set"], {"id": policy_set_id}).fetchone()
    return not_found(policy_set_id) if found is None else etag_mismatch(policy_set_id, etag)


def _policy_set(row: sqlite3.Row) -> PolicySet:
    return to_policy_set(
        row["id"],
        row["description"],
        bytes(row["rules"]),
        Stamp(row["version"], row["create_time"]),
        from_micros(row["update_time"]),
    )
