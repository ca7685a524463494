"""Named SQL queries loaded from a `.sql` file, each block headed by `-- name: <name>`.

A file looks like::

    -- name: lease_next_job
    -- Leases the oldest queued job to a worker.
    SELECT ...;

    -- name: heartbeat
    UPDATE ...;

The `-- ` lines right after a header describe the query and are not part of its text.
Only blank lines and comments may come before the first header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

_HEADER = re.compile(r"--\s*name:(?P<name>.*)")
_QUERY_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class QueryFileError(ValueError):
    """A query file is malformed: a bad, empty or duplicate name, or a query with no SQL."""


class Queries(Mapping[str, str]):
    """The queries of one file by name; a missing name raises KeyError naming the file."""

    def __init__(self, path: Path, queries: dict[str, str]):
        self._path = path
        self._queries = queries

    @property
    def path(self) -> Path:
        """The file the queries were loaded from."""
        return self._path

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {self._path}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def load_queries(path: str | Path) -> Queries:
    """Read and check every named query of a `.sql` file; raises QueryFileError if malformed."""
    path = Path(path)
    return Queries(path, _parse_queries(path.read_text(encoding="utf-8"), str(path)))


def _parse_queries(text: str, source: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    header_lines: dict[str, int] = {}
    name: str | None = None
    body: list[str] = []
    in_description = False
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.fullmatch(line.strip())
        if header:
            if name is not None:
                queries[name] = _query_text(name, body, source, header_lines[name])
            name = _query_name(header["name"].strip(), source, number, header_lines)
            header_lines[name] = number
            body = []
            in_description = True
        elif name is None:
            if line.strip() and not line.lstrip().startswith("--"):
                raise QueryFileError(f"{source}:{number}: SQL before the first `-- name:` header")
        elif in_description and line.lstrip().startswith("--"):
            continue
        else:
            in_description = False
            body.append(line)
    if name is not None:
        queries[name] = _query_text(name, body, source, header_lines[name])
    return queries


def _query_name(name: str, source: str, number: int, seen: dict[str, int]) -> str:
    if not name:
        raise QueryFileError(f"{source}:{number}: `-- name:` header without a name")
    if not _QUERY_NAME.fullmatch(name):
        raise QueryFileError(
            f"{source}:{number}: invalid query name {name!r} (expected a lowercase identifier)"
        )
    if name in seen:
        raise QueryFileError(
            f"{source}:{number}: duplicate query name {name!r} (first defined on line {seen[name]})"
        )
    return name


def _query_text(name: str, body: list[str], source: str, number: int) -> str:
    if not any(line.strip() and not line.lstrip().startswith("--") for line in body):
        raise QueryFileError(f"{source}:{number}: query {name!r} has no SQL")
    return "\n".join(body).strip()
