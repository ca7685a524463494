"""Checks of request fields every service shares: times, durations, text and page tokens.

Handlers call them before any store is reached, so that a value a database or the
protobuf runtime would refuse (a NUL character, a time past year 9999, a duration of
2^63-1 seconds) comes back INVALID_ARGUMENT naming its field, never INTERNAL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.errors import FieldInvalid

MIN_TIMESTAMP_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest time a Timestamp may hold."""
MAX_TIMESTAMP_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest."""
MAX_DURATION = timedelta(days=3650)
"""The longest duration any field accepts unless it says less: ten years."""
MAX_TEXT_CHARS = 1024
"""The default length limit of names, ids, tenants and other short text."""
MAX_PAGE_TOKEN_CHARS = 1024
"""Every page token this runtime hands out is far shorter."""
_NANOS = 1_000_000_000


def timestamp(value: Timestamp, field: str) -> datetime:
    """The time as an aware UTC datetime; FieldInvalid unless nanos are in [0, 1e9) and
    the time is within years 1 to 9999."""
    if not 0 <= value.nanos < _NANOS:
        raise FieldInvalid(field, "nanos must be from 0 to 999999999")
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS:
        raise FieldInvalid(field, "must be within years 1 to 9999")
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (OverflowError, ValueError):
        # The earliest microseconds of year 1 in a zone west of UTC; none is ever sent.
        raise FieldInvalid(field, "must be within years 1 to 9999") from None


def optional_timestamp(message: Message, name: str, field: str = "") -> datetime | None:
    """`message.<name>` checked as by `timestamp`, or None when it is not set."""
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    assert isinstance(value, Timestamp)
    return timestamp(value, field or name)


def duration(
    value: Duration,
    field: str,
    maximum: timedelta = MAX_DURATION,
    minimum: timedelta = timedelta(0),
) -> timedelta:
    """The duration as a timedelta; FieldInvalid unless it is well formed (nanos of the
    seconds' sign, less than a second) and from `minimum` to `maximum`."""
    seconds, nanos = value.seconds, value.nanos
    if not -_NANOS < nanos < _NANOS or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise FieldInvalid(field, "nanos must be less than a second and of the seconds' sign")
    # Compared in whole seconds first: timedelta itself overflows at 10^9 days.
    if seconds + nanos / _NANOS > maximum.total_seconds():
        raise FieldInvalid(field, f"must be at most {maximum}")
    if seconds + nanos / _NANOS < minimum.total_seconds():
        raise FieldInvalid(field, f"must be at least {minimum}")
    return timedelta(seconds=seconds, microseconds=nanos // 1000)


def text(value: str, field: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """The text, if it holds no NUL character (PostgreSQL stores none) and at most
    `max_chars` characters; FieldInvalid otherwise."""
    if len(value) > max_chars:
        raise FieldInvalid(field, f"at most {max_chars} characters")
    if "\x00" in value:
        raise FieldInvalid(field, "must not contain NUL characters")
    return value


def printable(value: str, field: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """An id, name or key: at most `max_chars` printable characters (no control
    characters, NUL included); FieldInvalid otherwise."""
    if len(value) > max_chars or not value.isprintable():
        raise FieldInvalid(field, f"at most {max_chars} printable characters")
    return value


def page_token(value: str, field: str = "page_token") -> str:
    """A page token's outer form (short and printable), before it is decoded."""
    if len(value) > MAX_PAGE_TOKEN_CHARS or not value.isprintable():
        raise FieldInvalid(field, "not a token returned by this method")
    return value


def no_nul(message: Message, prefix: str = "") -> None:
    """FieldInvalid naming the first string field of `message` (nested messages, lists and
    map keys included) that holds a NUL character: for requests whose every string may
    reach a PostgreSQL text column."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(key, str):
                    text(key, f"{name}[{key[:40]!r}]", max_chars=len(key))
                _no_nul_value(item, f"{name}[{str(key)[:40]!r}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                _no_nul_value(item, f"{name}[{index}]")
        else:
            _no_nul_value(value, name)


def _no_nul_value(value: object, name: str) -> None:
    if isinstance(value, str):
        text(value, name, max_chars=len(value))
    elif isinstance(value, Message):
        no_nul(value, f"{name}.")
