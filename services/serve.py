"""`agentrt serve` and `agentrt migrate`: one service per process, storage from the environment."""

from __future__ import annotations

import asyncio
import logging

from services.kit.config import RuntimeConfig
from services.kit.infra import Infrastructure, open_infrastructure
from services.kit.logs import configure_logging
from services.kit.loop import run_main
from services.kit.server import Server
from services.kit.storage import migrate
from services.units import SERVICES, check_known, create_unit, has_storage, sql_directory

log = logging.getLogger(__name__)


async def migrate_all(infra: Infrastructure, names: list[str]) -> dict[str, list[int]]:
    """Applies the pending migrations of the named services; returns the versions applied."""
    applied = {}
    for name in check_known(names):
        if has_storage(name):
            applied[name] = await migrate(infra.storage(name), sql_directory(name))
    return applied


async def _migrate(names: list[str]) -> None:
    infra = await open_infrastructure(RuntimeConfig.from_env())
    try:
        for name, versions in (await migrate_all(infra, names or list(SERVICES))).items():
            done = ", ".join(map(str, versions)) if versions else "up to date"
            print(f"{name}: {done}")
    finally:
        await infra.close()


def migrate_services(names: list[str]) -> None:
    asyncio.run(_migrate(names))


async def _serve(name: str) -> None:
    config = RuntimeConfig.from_env()
    infra = await open_infrastructure(config)
    try:
        server = Server(config.listen_address(name), name)
        await server.serve_until_signalled([await create_unit(name, infra)])
    finally:
        await infra.close()


EXPORTER = "exporter"
"""Not a gRPC service: the process that exports the global event stream (services/export)."""


def run_service(name: str) -> None:
    """Runs one service until SIGTERM; its database must be migrated already."""
    if name == EXPORTER:
        from services.export import run_exporter

        configure_logging(request_log=False)
        run_main(run_exporter())
        return
    check_known([name])
    configure_logging(request_log=True)
    run_main(_serve(name))
