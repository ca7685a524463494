"""The services this release runs, and how to build each one's unit."""

from __future__ import annotations

import importlib
from pathlib import Path

from services.kit.infra import Infrastructure
from services.kit.server import ServiceUnit

SERVICES: tuple[str, ...] = (
    "jobs",
    "policy",
    "ledger",
    "engine",
    "gateway",
    "orchestrator",
    "replay",
)
"""In start order: a service comes after the ones it calls at start-up."""

SERVICES_DIR = Path(__file__).resolve().parent


def sql_directory(service: str) -> Path:
    """The service's `sql/` folder (migrations and queries)."""
    return SERVICES_DIR / service / "sql"


def has_storage(service: str) -> bool:
    return sql_directory(service).is_dir()


def check_known(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    return names


async def create_unit(service: str, infra: Infrastructure) -> ServiceUnit:
    """Builds the service's unit from its `services/<service>/server.py`."""
    module = importlib.import_module(f"services.{check_known([service])[0]}.server")
    unit: ServiceUnit = await module.create_unit(infra)
    return unit
