"""Fixtures of the replay tests: a migrated RecordingStore on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.kit.storage import StorageConfig, migrate
from services.replay.store import SQL_DIRECTORY, RecordingStore, open_recording_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def storage_config(request: pytest.FixtureRequest, sqlite_path: Path) -> StorageConfig:
    if request.param == "postgres":
        return StorageConfig("postgres", None, request.getfixturevalue("pg_dsn"), "replay")
    return StorageConfig("sqlite", sqlite_path, None, "replay")


@pytest.fixture
async def store(storage_config: StorageConfig) -> AsyncIterator[RecordingStore]:
    await migrate(storage_config, SQL_DIRECTORY)
    opened = await open_recording_store(storage_config)
    try:
        yield opened
    finally:
        await opened.close()
