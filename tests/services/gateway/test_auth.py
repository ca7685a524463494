"""Reading the API key from a call's metadata."""

from __future__ import annotations

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason

from services.gateway.auth import api_key_from_metadata
from services.kit.errors import Unauthenticated

KEY = "agk_aaaaaaaaaaaaaaaa_" + "b" * 52


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {KEY}")],
        [("authorization", f"bearer   {KEY} ")],
        [("authorization", f"BEARER {KEY}")],
        [("x-api-key", KEY)],
        [("x-api-key", f" {KEY}")],
        [("authorization", f"Bearer {KEY}"), ("x-api-key", KEY)],
        [("user-agent", "grpc-python"), ("x-api-key", KEY), ("authorization", "")],
    ],
)
def test_the_key_is_read_from_either_header(metadata: list[tuple[str, str]]) -> None:
    assert api_key_from_metadata(metadata) == KEY


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("user-agent", "grpc-python")],
        [("x-api-key", "")],
        [("authorization", "  ")],
        [("x-api-key-bin", b"binary")],
    ],
)
def test_no_key_is_missing(metadata: list[tuple[str, str | bytes]]) -> None:
    with pytest.raises(Unauthenticated) as error:
        api_key_from_metadata(metadata)
    assert error.value.reason == ErrorReason.ERROR_REASON_API_KEY_MISSING


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Basic {KEY}")],
        [("authorization", KEY)],
        [("authorization", "Bearer")],
        [("x-api-key", KEY), ("x-api-key", KEY)],
        [("authorization", f"Bearer {KEY}"), ("x-api-key", KEY + "x")],
    ],
)
def test_an_unusable_credential_is_invalid(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(Unauthenticated) as error:
        api_key_from_metadata(metadata)
    assert error.value.reason == ErrorReason.ERROR_REASON_API_KEY_INVALID
