"""The CLI's operator commands: `agentrt dev`, `serve`, `edge`, `migrate` and `keys`.

They run the services themselves, so `services` is imported inside each command: the
client package stays light for applications that only call a gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from agentrt.cli.console import CommandError, Console
from agentrt.cli.render import table
from agentrt.cli.target import data_dir

if TYPE_CHECKING:
    from services.kit.storage import StorageConfig

T = TypeVar("T")


def dev(args: argparse.Namespace, console: Console) -> int:
    """`agentrt dev`: every service in this process, until Ctrl-C."""
    with _service_errors():
        from services.dev import run_dev

        run_dev(args.data_dir or data_dir(os.environ), args.port)
    return 0


def serve(args: argparse.Namespace, console: Console) -> int:
    """`agentrt serve <service>`: one service, storage from the environment, until SIGTERM."""
    with _service_errors():
        from services.serve import run_service

        run_service(args.service)
    return 0


def edge(args: argparse.Namespace, console: Console) -> int:
    """`agentrt edge`: Envoy in front of the gateway, configured from AGENTRT_EDGE_*; with
    --print-config, only prints the configuration it would run."""
    with _service_errors():
        from services.edge.config import EdgeConfig
        from services.edge.envoy import render, run_edge

        if args.print_config:
            console.print(render(EdgeConfig.from_env()).rstrip("\n"))
            return 0
        run_edge(args.config_file or data_dir(os.environ) / "envoy.yaml")
    return 0


def migrate(args: argparse.Namespace, console: Console) -> int:
    """`agentrt migrate [service ...]`: applies pending migrations (all services by default)."""
    with _service_errors():
        from services.serve import migrate_services

        migrate_services(args.services)
    return 0


def create_key(args: argparse.Namespace, console: Console) -> int:
    """`agentrt keys create [--admin]`: prints a new API key, which is shown this once
    only; with --admin an operator's key, which may also call the admin APIs."""
    from services.gateway.admin import create_api_key

    key = _with_gateway_storage(
        lambda storage: create_api_key(storage, args.tenant, args.principal, admin=args.admin)
    )
    console.print(key)
    return 0


def list_keys(args: argparse.Namespace, console: Console) -> int:
    """`agentrt keys list`: the tenant's keys, revoked ones included, without secrets."""
    from services.gateway.admin import list_api_keys

    records = _with_gateway_storage(lambda storage: list_api_keys(storage, args.tenant))
    rows = [("KEY ID", "PRINCIPAL", "SCOPE", "CREATED", "REVOKED")] + [
        (
            record.key_id,
            record.principal,
            "admin" if record.admin else "tenant",
            _local(record.create_time),
            _local(record.revoke_time) if record.revoke_time else "-",
        )
        for record in records
    ]
    console.print(table(rows))
    return 0


def revoke_key(args: argparse.Namespace, console: Console) -> int:
    """`agentrt keys revoke`: the key stops working (within seconds on running gateways)."""
    from services.gateway.admin import revoke_api_key

    record = _with_gateway_storage(lambda storage: revoke_api_key(storage, args.key_id))
    console.print(f"revoked {record.key_id} ({record.tenant}/{record.principal})")
    return 0


def _local(moment: datetime) -> str:
    return f"{moment.astimezone():%Y-%m-%d %H:%M:%S}"


def _with_gateway_storage(action: Callable[[StorageConfig], Awaitable[T]]) -> T:
    """Runs an admin action on the gateway's storage as configured by AGENTRT_* variables."""

    async def run() -> T:
        from services.kit.config import RuntimeConfig
        from services.kit.infra import open_infrastructure

        infra = await open_infrastructure(RuntimeConfig.from_env())
        try:
            return await action(infra.storage("gateway"))
        finally:
            await infra.close()

    with _service_errors():
        return asyncio.run(run())


@contextmanager
def _service_errors() -> Iterator[None]:
    """Shows configuration mistakes and refusals of the services as one line."""
    from services.kit.errors import AgentrtError
    from services.kit.storage import SchemaNotFoundError, UnmigratedDatabaseError

    try:
        yield
    except AgentrtError as error:
        raise CommandError(f"{error.code} {error.reason_name}: {error.message}") from error
    except (UnmigratedDatabaseError, SchemaNotFoundError) as error:
        raise CommandError(str(error)) from error
    except ValueError as error:
        # A wrong AGENTRT_* variable (ConfigError) or an unknown service name.
        raise CommandError(str(error)) from error
    except OSError as error:
        raise CommandError(str(error)) from error
