"""Page sizes and offset page tokens for List methods over small, stable collections."""

from __future__ import annotations

import base64
import binascii

from services.kit.errors import FieldInvalid


def page_size(requested: int, default: int, maximum: int) -> int:
    """AIP-158: 0 means the default, more than the maximum is capped, negative is invalid."""
    if requested < 0:
        raise FieldInvalid("page_size", "must not be negative")
    return min(requested or default, maximum)


def encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def decode_offset(token: str) -> int:
    """The offset a token from `encode_offset` stands for; 0 for an empty token."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if raw.startswith("o") and raw[1:].isdigit():
            return int(raw[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise FieldInvalid("page_token", "not a token returned by this method")
