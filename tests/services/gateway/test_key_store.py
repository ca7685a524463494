"""The API key store conformance suite, run against SQLite and PostgreSQL, through ApiKeys."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason

from services.gateway.keys import ApiKeys, Principal
from services.gateway.store import SQL_DIRECTORY, ApiKeyStore, open_key_store
from services.kit.errors import FieldInvalid, NotFound, Unauthenticated
from services.kit.storage import StorageConfig, UnmigratedDatabaseError, migrate


def storage_config(backend: str, sqlite_path: Path, pg_dsn: str | None) -> StorageConfig:
    if backend == "postgres":
        return StorageConfig("postgres", None, pg_dsn, "gateway")
    return StorageConfig("sqlite", sqlite_path, None, "gateway")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_config(request: pytest.FixtureRequest, sqlite_path: Path) -> StorageConfig:
    pg_dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    return storage_config(request.param, sqlite_path, pg_dsn)


@pytest.fixture
async def store(store_config: StorageConfig) -> AsyncIterator[ApiKeyStore]:
    await migrate(store_config, SQL_DIRECTORY)
    opened = await open_key_store(store_config)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def keys(store: ApiKeyStore) -> ApiKeys:
    return ApiKeys(store)


def uncached(store: ApiKeyStore) -> ApiKeys:
    """A second view of the same store, as another process would have."""
    return ApiKeys(store, cache_seconds=0)


async def test_a_created_key_authenticates_as_its_tenant_and_principal(
    keys: ApiKeys, store: ApiKeyStore
) -> None:
    record, plaintext = await keys.create("acme", "billing-bot")

    assert re.fullmatch(r"agk_[a-z2-7]{16}_[a-z2-7]{52}", plaintext)
    assert plaintext.split("_")[1] == record.key_id
    assert plaintext.split("_")[2].encode() not in record.secret_sha256
    assert not record.revoked
    expected = Principal("acme", "billing-bot", record.key_id)
    assert await keys.authenticate(plaintext) == expected
    assert await uncached(store).authenticate(plaintext) == expected
    assert await store.get(record.key_id) == record


async def test_every_key_is_different(keys: ApiKeys) -> None:
    created = [await keys.create("acme", "app") for _ in range(5)]
    assert len({plaintext for _, plaintext in created}) == 5
    assert len({record.key_id for record, _ in created}) == 5


def assert_invalid(error: pytest.ExceptionInfo[Unauthenticated]) -> None:
    assert error.value.reason == ErrorReason.ERROR_REASON_API_KEY_INVALID
    assert error.value.code == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "agk_",
        "Bearer agk_aaaaaaaaaaaaaaaa_" + "a" * 52,
        "agk_aaaaaaaaaaaaaaaa_" + "a" * 51,
        "agk_aaaaaaaaaaaaaaaa_" + "a" * 53,
        "agk_AAAAAAAAAAAAAAAA_" + "a" * 52,
        "agk_aaaaaaaaaaaaaaa1_" + "a" * 52,
        "xyz_aaaaaaaaaaaaaaaa_" + "a" * 52,
        "agk_aaaaaaaaaaaaaaaa_" + "a" * 52 + "\n",
    ],
)
async def test_a_malformed_key_is_invalid(keys: ApiKeys, malformed: str) -> None:
    with pytest.raises(Unauthenticated) as error:
        await keys.authenticate(malformed)
    assert_invalid(error)


async def test_an_unknown_key_or_a_wrong_secret_is_invalid(keys: ApiKeys) -> None:
    _, plaintext = await keys.create("acme", "app")
    prefix, key_id, secret = plaintext.split("_")
    wrong_secret = f"{prefix}_{key_id}_{'a' * 52}"
    unknown_id = f"{prefix}_{'a' * 16}_{secret}"
    for key in (wrong_secret, unknown_id):
        with pytest.raises(Unauthenticated) as error:
            await keys.authenticate(key)
        assert_invalid(error)
    await keys.authenticate(plaintext)


async def test_a_revoked_key_is_invalid_at_once_and_for_other_readers(
    keys: ApiKeys, store: ApiKeyStore
) -> None:
    record, plaintext = await keys.create("acme", "app")
    _, other = await keys.create("acme", "app")
    await keys.authenticate(plaintext)

    revoked = await keys.revoke(record.key_id)

    assert revoked.revoked
    assert revoked.key_id == record.key_id
    for reader in (keys, uncached(store)):
        with pytest.raises(Unauthenticated) as error:
            await reader.authenticate(plaintext)
        assert_invalid(error)
    assert (await keys.authenticate(other)).tenant == "acme"
    again = await keys.revoke(record.key_id)
    assert again.revoke_time == revoked.revoke_time


async def test_revoking_an_unknown_or_malformed_key_id_fails_and_changes_nothing(
    keys: ApiKeys,
) -> None:
    record, _ = await keys.create("acme", "app")
    with pytest.raises(NotFound):
        await keys.revoke("a" * 16)
    with pytest.raises(FieldInvalid):
        await keys.revoke("not a key id")
    assert [listed.revoked for listed in await keys.list("acme")] == [False]
    assert (await keys.list("acme"))[0] == record


async def test_list_shows_only_the_tenants_keys_oldest_first(keys: ApiKeys) -> None:
    first, _ = await keys.create("acme", "app")
    await keys.create("globex", "app")
    second, _ = await keys.create("acme", "ops")
    await keys.revoke(first.key_id)

    listed = await keys.list("acme")

    assert [record.key_id for record in listed] == [first.key_id, second.key_id]
    assert [record.revoked for record in listed] == [True, False]
    assert await keys.list("initech") == []


@pytest.mark.parametrize(
    ("tenant", "principal", "field"),
    [
        ("", "app", "tenant"),
        ("Acme", "app", "tenant"),
        ("a" * 64, "app", "tenant"),
        ("acme corp", "app", "tenant"),
        ("acme", "", "principal"),
        ("acme", "app/1", "principal"),
    ],
)
async def test_bad_tenant_or_principal_names_are_refused_and_create_nothing(
    keys: ApiKeys, tenant: str, principal: str, field: str
) -> None:
    with pytest.raises(FieldInvalid) as error:
        await keys.create(tenant, principal)
    assert error.value.metadata == {"field": field}
    assert await keys.list("acme") == []


async def test_names_at_the_limits_are_accepted(keys: ApiKeys) -> None:
    record, plaintext = await keys.create("a" * 63, "a-b_c9")
    assert (await keys.authenticate(plaintext)).tenant == "a" * 63
    assert record.principal == "a-b_c9"


async def test_the_store_refuses_to_open_on_an_unmigrated_database(
    store_config: StorageConfig,
) -> None:
    with pytest.raises(UnmigratedDatabaseError):
        await open_key_store(store_config)


async def test_an_admin_key_keeps_its_scope_and_others_stay_tenant_keys(
    keys: ApiKeys, store: ApiKeyStore
) -> None:
    admin_record, admin_key = await keys.create("acme", "ops", admin=True)
    tenant_record, tenant_key = await keys.create("acme", "app")

    assert (admin_record.admin, tenant_record.admin) == (True, False)
    assert await uncached(store).authenticate(admin_key) == Principal(
        "acme", "ops", admin_record.key_id, admin=True
    )
    assert not (await uncached(store).authenticate(tenant_key)).admin
    listed = {record.key_id: record.admin for record in await keys.list("acme")}
    assert listed == {admin_record.key_id: True, tenant_record.key_id: False}
    revoked = await keys.revoke(admin_record.key_id)
    assert revoked.admin and revoked.revoked
