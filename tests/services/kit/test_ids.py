"""Resource ids: form, uniqueness and creation order."""

from __future__ import annotations

import itertools
import time

import pytest

from services.kit.ids import ALPHABET, is_valid_id, new_id


def test_an_id_is_26_lowercase_crockford_characters() -> None:
    ids = {new_id() for _ in range(1000)}

    assert len(ids) == 1000
    for value in ids:
        assert len(value) == 26 and set(value) <= set(ALPHABET) and is_valid_id(value)


def test_an_id_starts_with_its_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000

    number = 0
    for char in value:
        number = number * 32 + ALPHABET.index(char)
    assert before <= number >> 80 <= after


def test_ids_of_later_milliseconds_sort_after_earlier_ones() -> None:
    ids = [new_id() for _ in range(2000)]

    assert all(a[:10] <= b[:10] for a, b in itertools.pairwise(ids))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "01arz3ndektsv4rrffq69g5fa",  # 25 characters
        "01arz3ndektsv4rrffq69g5favx",  # 27
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # uppercase
        "01arz3ndektsv4rrffq69g5fau",  # u is not in the alphabet
        "81arz3ndektsv4rrffq69g5fav",  # more than 128 bits
        "jobs/01arz3ndektsv4rrffq69",
    ],
)
def test_malformed_ids_are_invalid(value: str) -> None:
    assert not is_valid_id(value)
