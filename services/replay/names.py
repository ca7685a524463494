"""Recording resource names, "recordings/{recording}", and the ids an import may choose."""

from __future__ import annotations

import re
import secrets
import string

from services.kit.errors import FieldInvalid, NameInvalid

COLLECTION = "recordings"
FORM = "recordings/{recording}"
_RECORDING_ID = re.compile(r"[a-z0-9-]{1,63}")
_RANDOM_ALPHABET = string.ascii_lowercase + string.digits
RANDOM_ID_LENGTH = 26


def recording_name(recording_id: str) -> str:
    """The resource name of a recording."""
    return f"{COLLECTION}/{recording_id}"


def parse_recording_name(name: str, field: str = "name") -> str:
    """The id in a recording's name; NameInvalid(field) for anything else."""
    match name.split("/"):
        case ["recordings", recording_id] if _RECORDING_ID.fullmatch(recording_id):
            return recording_id
    raise NameInvalid(field, name, FORM)


def check_recording_id(recording_id: str, field: str = "recording_id") -> str:
    """An id chosen at import: 1 to 63 lowercase letters, digits and '-'."""
    if not _RECORDING_ID.fullmatch(recording_id):
        raise FieldInvalid(field, "must be 1 to 63 lowercase letters, digits and '-'")
    return recording_id


def random_recording_id() -> str:
    """An id for an import that chose none: 26 random lowercase letters and digits."""
    return "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(RANDOM_ID_LENGTH))
