"""Resource ids: 26 lowercase Crockford base32 characters that sort by creation time."""

from __future__ import annotations

import secrets
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
"""Crockford's base32 alphabet, lowercase (no i, l, o, u)."""

ID_LENGTH = 26
"""128 bits in 5-bit characters; the first character carries only 3 bits."""

_RANDOM_BITS = 80
_TIME_BITS = 48
_CHARS = frozenset(ALPHABET)


def new_id() -> str:
    """A new id: 48 bits of Unix time in milliseconds, then 80 random bits.

    Ids made in different milliseconds sort by creation; within one millisecond their
    order is random, which is harmless for the ordering callers rely on.
    """
    millis = time.time_ns() // 1_000_000 & ((1 << _TIME_BITS) - 1)
    value = millis << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_valid_id(value: str) -> bool:
    """Whether `value` has the form of an id made by `new_id`."""
    return len(value) == ID_LENGTH and value[0] <= "7" and _CHARS.issuperset(value)
