"""The policy set store contract, the values it deals in, and opening the configured one.

A set's etag is derived from its version and its creation time, so that an etag of a
deleted set never matches a set created again under the same name.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from agentrt.policy.v1.policy_pb2 import PolicySet, Rule

from services.kit.errors import Aborted, FieldInvalid, NotFound
from services.kit.storage import StorageConfig, open_store
from services.policy.names import policy_set_name

SQL_DIRECTORY = Path(__file__).resolve().parent / "sql"
"""The policy service's `sql/` folder: migrations and named queries per backend."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class NewPolicySet:
    """A validated policy set to create."""

    policy_set_id: str
    description: str
    rules: Sequence[Rule]
    request_id: str
    """Idempotency key; empty for none."""
    request_hash: bytes
    """Hash of the id and the set; a reused request_id must come with the same hash."""


@dataclass(frozen=True)
class PolicySetChange:
    """What an update replaces; None leaves a field as it is."""

    description: str | None = None
    rules: Sequence[Rule] | None = None


@dataclass(frozen=True)
class Stamp:
    """What an etag stands for: one version of one incarnation of a set."""

    version: int
    create_micros: int
    """The set's creation time in microseconds since the epoch."""


class PolicySetStore(Protocol):
    """Policy sets on one backend.

    Errors: NotFound for an unknown set; Aborted (ETAG_MISMATCH) when a non-empty etag is
    not the set's current one.
    """

    async def create(self, new: NewPolicySet, now: datetime) -> tuple[PolicySet, bool]:
        """Create the set at version 1, or return the set created earlier with the same
        request_id and hash with created=False (RequestIdReused when the hash differs);
        AlreadyExists when the id is taken."""
        ...

    async def get(self, policy_set_id: str) -> PolicySet:
        """The set."""
        ...

    async def list(self, page_size: int, page_token: str) -> tuple[list[PolicySet], str]:
        """A page of sets by name and the next page's token ("" on the last page);
        FieldInvalid("page_token") for a token this store did not make."""
        ...

    async def update(
        self, policy_set_id: str, change: PolicySetChange, etag: str, now: datetime
    ) -> PolicySet:
        """Apply the change and increment the version, in one compare-and-set statement:
        of concurrent updates presenting the same etag, exactly one succeeds."""
        ...

    async def delete(self, policy_set_id: str, etag: str) -> None:
        """Delete the set."""
        ...

    async def close(self) -> None:
        """Release the database."""
        ...


def micros(time: datetime) -> int:
    """Microseconds since the epoch."""
    return (time - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The UTC time `micros` made."""
    return _EPOCH + value * _MICROSECOND


def etag_of(stamp: Stamp) -> str:
    """The etag of a set's version."""
    return f"{stamp.version}-{stamp.create_micros}"


def parse_etag(etag: str) -> Stamp | None:
    """What an etag from `etag_of` stands for; None for any other text, which then matches
    no set."""
    version, _, created = etag.partition("-")
    if not (version.isdigit() and created.isdigit()):
        return None
    return Stamp(int(version), int(created))


def to_policy_set(
    policy_set_id: str,
    description: str,
    rules: bytes,
    stamp: Stamp,
    update_time: datetime,
) -> PolicySet:
    """The PolicySet of a stored row; `rules` is a serialized PolicySet holding only rules."""
    policy_set = PolicySet.FromString(rules)
    policy_set.name = policy_set_name(policy_set_id)
    policy_set.description = description
    policy_set.version = stamp.version
    policy_set.etag = etag_of(stamp)
    policy_set.create_time.FromDatetime(from_micros(stamp.create_micros))
    policy_set.update_time.FromDatetime(update_time)
    return policy_set


def serialize_rules(rules: Sequence[Rule]) -> bytes:
    """The stored form of a set's rules (see `to_policy_set`)."""
    return PolicySet(rules=rules).SerializeToString(deterministic=True)


def encode_page_token(last_id: str) -> str:
    """The token of the page after the set `last_id`."""
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The id a page starts after; "" for the first page."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith("after:") or len(raw) == len("after:"):
        raise FieldInvalid("page_token", "not a token returned by this method")
    return raw.removeprefix("after:")


def not_found(policy_set_id: str) -> NotFound:
    name = policy_set_name(policy_set_id)
    return NotFound(f"policy set {name} not found", metadata={"name": name})


def etag_mismatch(policy_set_id: str, etag: str) -> Aborted:
    name = policy_set_name(policy_set_id)
    return Aborted(
        f"policy set {name} has changed since etag {etag!r}; read it again",
        metadata={"name": name, "etag": etag},
    )


async def open_policy_store(config: StorageConfig) -> PolicySetStore:
    """The configured backend's store; UnmigratedDatabaseError unless `agentrt migrate` ran."""
    store: PolicySetStore = await open_store(
        config,
        SQL_DIRECTORY,
        "services.policy.store_postgres:PostgresPolicySetStore",
        "services.policy.store_sqlite:SqlitePolicySetStore",
    )
    return store
