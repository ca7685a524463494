"""Tests of load_queries, the loader of `-- name:` blocks from `.sql` files."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kit.storage import QueryFileError, SqliteDatabase, load_queries

GOOD_FILE = """\
-- Queries of the items store.

-- name: insert_item
-- Adds one item.
-- The id is chosen by SQLite.
INSERT INTO items (label) VALUES (:label);

-- name: list_items
SELECT id, label
FROM items
-- newest first
ORDER BY id DESC;
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "queries.sql"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file_yields_each_query_without_its_description(tmp_path: Path) -> None:
    queries = load_queries(write(tmp_path, GOOD_FILE))
    assert list(queries) == ["insert_item", "list_items"]
    assert queries["insert_item"] == "INSERT INTO items (label) VALUES (:label);"
    assert (
        queries["list_items"] == "SELECT id, label\nFROM items\n-- newest first\nORDER BY id DESC;"
    )


async def test_loaded_queries_run_as_written(tmp_path: Path, sqlite_path: Path) -> None:
    queries = load_queries(write(tmp_path, GOOD_FILE))
    async with await SqliteDatabase.open(sqlite_path) as database:
        await database.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")
        for label in ("first", "second"):
            await database.execute(queries["insert_item"], {"label": label})
        rows = await database.fetchall(queries["list_items"])
    assert [row["label"] for row in rows] == ["second", "first"]


def test_a_missing_query_raises_key_error_naming_it_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_FILE)
    queries = load_queries(path)
    with pytest.raises(KeyError, match=f"delete_item.*{path.name}"):
        queries["delete_item"]
    assert "delete_item" not in queries
    assert queries.get("delete_item") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "-- name: one\nSELECT 1;\n-- name: two\nSELECT 2;\n-- name: one\nSELECT 3;\n",
            r":5: duplicate query name 'one' \(first defined on line 1\)",
            id="duplicate",
        ),
        pytest.param("-- name:\nSELECT 1;\n", ":1: `-- name:` header without a name", id="empty"),
        pytest.param(
            "-- name: Lease-Job\nSELECT 1;\n", ":1: invalid query name 'Lease-Job'", id="invalid"
        ),
        pytest.param(
            "-- name: one\n-- only a description\n\n-- name: two\nSELECT 2;\n",
            ":1: query 'one' has no SQL",
            id="no-sql",
        ),
        pytest.param(
            "SELECT 0;\n-- name: one\nSELECT 1;\n",
            ":1: SQL before the first `-- name:` header",
            id="sql-before-header",
        ),
    ],
)
def test_a_malformed_file_is_rejected_at_load_time(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(QueryFileError, match=f"{path.name}{message}"):
        load_queries(path)
