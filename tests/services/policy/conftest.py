"""Fixtures of the policy tests: a migrated PolicySetStore on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.kit.storage import StorageConfig, migrate
from services.policy.store import SQL_DIRECTORY, PolicySetStore, open_policy_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def storage_config(request: pytest.FixtureRequest, sqlite_path: Path) -> StorageConfig:
    if request.param == "postgres":
        return StorageConfig("postgres", None, request.getfixturevalue("pg_dsn"), "policy")
    return StorageConfig("sqlite", sqlite_path, None, "policy")


@pytest.fixture
async def store(storage_config: StorageConfig) -> AsyncIterator[PolicySetStore]:
    await migrate(storage_config, SQL_DIRECTORY)
    opened = await open_policy_store(storage_config)
    try:
        yield opened
    finally:
        await opened.close()
