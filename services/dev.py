"""`agentrt dev`: every service in one process on one port, SQLite and in-process events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from services.gateway.admin import create_api_key, key_principal
from services.kit.config import RuntimeConfig
from services.kit.infra import Infrastructure, open_infrastructure
from services.kit.logs import configure_logging
from services.kit.loop import freeze_startup_objects, run_main
from services.kit.server import Server
from services.serve import migrate_all
from services.units import SERVICES, create_unit

DEV_TENANT = "dev"
DEV_PRINCIPAL = "dev"
STATE_FILE = "dev.json"
DEV_HTTP_ADDRESS = "127.0.0.1:50080"
"""Where `agentrt dev` serves the OpenAI-compatible API unless AGENTRT_HTTP_LISTEN_ADDRESS
says otherwise."""


@dataclass(frozen=True)
class LocalSystem:
    """Every service running in this process behind one endpoint."""

    endpoint: str
    api_key: str
    infra: Infrastructure
    http_url: str = ""
    """The OpenAI-compatible API's base (`http://host:port`), when AGENTRT_HTTP_LISTEN_ADDRESS
    turned it on."""


def local_config(
    data_dir: Path, port: int, database_url: str = "", redis_url: str = "", redis_prefix: str = ""
) -> RuntimeConfig:
    """Every service at one address; SQLite and in-process events unless told otherwise."""
    base = RuntimeConfig.from_env({"AGENTRT_DATA_DIR": str(data_dir)})
    return dataclasses.replace(
        base,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix or base.redis_prefix,
        addresses=dict.fromkeys(base.addresses, f"127.0.0.1:{port}"),
    )


def previous_api_key(data_dir: Path) -> str:
    """The dev key written by the last `agentrt dev` in this data directory, if any."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        return str(json.loads((data_dir / STATE_FILE).read_text())["api_key"])
    return ""


async def dev_api_key(infra: Infrastructure, previous: str) -> str:
    """The previous key if it still works and is an admin key, else a new admin key of
    the dev tenant: the one developer of a dev deployment is also its operator, so the
    same key runs jobs and calls the admin APIs (budgets, policies, plugins)."""
    if previous:
        owner = await key_principal(infra.storage("gateway"), previous)
        if owner is not None and owner.admin:
            return previous
    return await create_api_key(infra.storage("gateway"), DEV_TENANT, DEV_PRINCIPAL, admin=True)


@contextlib.asynccontextmanager
async def local_system(
    data_dir: Path,
    port: int = 0,
    database_url: str = "",
    redis_url: str = "",
    redis_prefix: str = "",
    previous_key: str = "",
) -> AsyncIterator[LocalSystem]:
    """Migrates, starts every service in one server, and stops them all on exit.

    `agentrt dev` runs it on the embedded defaults; tests and benchmarks also run it
    on PostgreSQL and Redis by passing their URLs.
    """
    server = Server(f"127.0.0.1:{port}", "agentrt-dev")
    config = local_config(data_dir, server.port, database_url, redis_url, redis_prefix)
    infra = await open_infrastructure(config)
    infra.serve_locally(server, SERVICES)
    try:
        await migrate_all(infra, list(SERVICES))
        units = [await create_unit(name, infra) for name in SERVICES]
        await server.start(units)
        try:
            key = await dev_api_key(infra, previous_key)
            http_url = next((url for unit in units if (url := getattr(unit, "http_url", ""))), "")
            yield LocalSystem(f"127.0.0.1:{server.port}", key, infra, http_url)
        finally:
            await server.stop(grace=5.0)
    finally:
        await infra.close()


async def _run_dev(data_dir: Path, port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    os.environ.setdefault("AGENTRT_HTTP_LISTEN_ADDRESS", _dev_http_address())
    async with local_system(data_dir, port, previous_key=previous_api_key(data_dir)) as system:
        state_file = data_dir / STATE_FILE
        write_state(state_file, system)
        freeze_startup_objects()
        print(f"agentrt dev: all services on {system.endpoint}")
        print(f"  services:  {', '.join(SERVICES)} (gRPC reflection and health enabled)")
        print(f"  storage:   SQLite under {data_dir}/; events in-process")
        print(f"  dev key:   {system.api_key}  (tenant {DEV_TENANT!r}; also in {state_file})")
        if system.http_url:
            print(f"  OpenAI:    {system.http_url}/v1  (the dev key is its API key)", flush=True)
        print('  try:       agentrt run "hello"    (in another shell)')
        await stopping.wait()
        print("agentrt dev: draining")


def _dev_http_address() -> str:
    """DEV_HTTP_ADDRESS, or any free port when another program holds it: dev always
    serves the OpenAI-compatible API, and prints where."""
    host, _, port = DEV_HTTP_ADDRESS.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return f"{host}:0"
    return DEV_HTTP_ADDRESS


def write_state(state_file: Path, system: LocalSystem) -> None:
    """Where the client commands find the endpoint and the key; readable by the owner only."""
    state_file.touch(mode=0o600)
    state_file.chmod(0o600)
    state_file.write_text(
        json.dumps({"endpoint": system.endpoint, "api_key": system.api_key}, indent=2) + "\n"
    )


def run_dev(data_dir: Path, port: int) -> None:
    """Runs `agentrt dev` until Ctrl-C or SIGTERM."""
    configure_logging(request_log=False)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    run_main(_run_dev(data_dir, port))
