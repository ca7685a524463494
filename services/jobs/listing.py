"""Keyset pagination of a tenant's jobs, newest first, shared by the job stores.

A page token is the (create_time, id) of the last job of the previous page; the next page
holds the jobs strictly before it in (create_time, id) order, so pages neither skip nor
repeat jobs however many are created meanwhile.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime

from agentrt.jobs.v1.jobs_pb2 import Job

from services.jobs.records import JobRecord, to_job
from services.jobs.store import JobFilter
from services.kit.errors import FieldInvalid
from services.kit.ids import is_valid_id

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PageBounds:
    """Which jobs a page may hold, besides the filter's state and session."""

    before: tuple[datetime, str]
    """Only jobs strictly before this (create_time, id)."""
    created_after: datetime
    """Only jobs created at or after this time."""


def page_bounds(job_filter: JobFilter, page_token: str) -> PageBounds:
    """The bounds of the page that `page_token` asks for within the filter's time range."""
    # (created_before, "") precedes every job created at created_before, as "" is less
    # than every id, so the time filter and the token combine into one upper bound.
    before = (job_filter.created_before or LATEST, "")
    if page_token:
        before = min(before, decode_page_token(page_token))
    return PageBounds(before, job_filter.created_after or EARLIEST)


def list_query(job_filter: JobFilter) -> str:
    """The named query of a store that lists the jobs the filter asks for: a job's
    children and a tree's jobs have their own, each served by its own index."""
    if job_filter.parent:
        return "list_children"
    return "list_tree" if job_filter.root else "list_jobs"


def page_of(rows: list[JobRecord], page_size: int) -> tuple[list[Job], str]:
    """The jobs of a page and the next page's token, from up to page_size + 1 rows."""
    page = rows[:page_size]
    token = encode_page_token(page[-1]) if len(rows) > page_size else ""
    return [to_job(record) for record in page], token


def encode_page_token(record: JobRecord) -> str:
    """An opaque token for the page that follows `record`."""
    return encode_position(record.create_time, record.id)


def decode_page_token(token: str) -> tuple[datetime, str]:
    """The (create_time, id) a page token continues after; FieldInvalid if malformed."""
    return decode_position(token, "ListJobs")


def encode_position(create_time: datetime, resource_id: str) -> str:
    """An opaque page token holding a resource's (create_time, id)."""
    position = f"{create_time.isoformat()}|{resource_id}".encode()
    return base64.urlsafe_b64encode(position).decode().rstrip("=")


def decode_position(token: str, method: str) -> tuple[datetime, str]:
    """The (create_time, id) in a token of `encode_position`; FieldInvalid("page_token")
    naming `method` if malformed."""
    try:
        position = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        time, resource_id = position.split("|")
        create_time = datetime.fromisoformat(time)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise FieldInvalid("page_token", f"not a token returned by {method}") from None
    if create_time.tzinfo is None or not is_valid_id(resource_id):
        raise FieldInvalid("page_token", f"not a token returned by {method}")
    return create_time, resource_id
