"""What a running service shares with its process: config, events, wake-ups, channels."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import redis.asyncio as redis

from services.kit.channels import open_channel
from services.kit.config import RuntimeConfig
from services.kit.events import (
    EventChannel,
    InMemoryEventChannel,
    InMemoryWakeups,
    RedisEventChannel,
    RedisWakeups,
    Wakeups,
)
from services.kit.server import Server
from services.kit.storage import StorageConfig


@dataclass
class Infrastructure:
    """The event channel, wake-ups and client channels of one process.

    `agentrt dev` builds one for all its services (in-process events, SQLite);
    `agentrt serve <service>` builds one from the environment (Redis, PostgreSQL).
    """

    config: RuntimeConfig
    events: EventChannel
    wakeups: Wakeups
    redis: redis.Redis | None = None
    """The Redis client the events and wake-ups use, for other shared state (None in dev)."""
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _local: set[str] = field(default_factory=set)

    def channel(self, service: str) -> grpc.aio.Channel:
        """The shared channel to a service (opened on first use)."""
        if service not in self._channels:
            self._channels[service] = open_channel(
                self.config.addresses[service], self.config.call_timeout
            )
        return self._channels[service]

    def serve_locally(self, server: Server, services: Iterable[str]) -> None:
        """Calls to `services`, which `server` hosts in this process, skip the network.
        Called before any channel to them is opened."""
        channel = server.local_channel(self.config.call_timeout)
        for service in services:
            self._channels[service] = channel
            self._local.add(service)

    def hosts_locally(self, service: str) -> bool:
        """Whether this process's server hosts the service itself (`agentrt dev`), so that
        another unit must not serve it again (the gateway's admin forwarding)."""
        return service in self._local

    def storage(self, service: str) -> StorageConfig:
        """Where the service keeps its data: AGENTRT_<SERVICE>_DATABASE_URL or
        AGENTRT_DATABASE_URL (schema named after the service), else SQLite."""
        dsn = os.environ.get(f"AGENTRT_{service.upper()}_DATABASE_URL") or self.config.database_url
        if dsn:
            return StorageConfig("postgres", None, dsn, service)
        return StorageConfig("sqlite", self.config.data_dir / f"{service}.db", None, service)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        await self.events.close()
        await self.wakeups.close()
        if self.redis is not None:
            await self.redis.aclose()


async def open_infrastructure(config: RuntimeConfig) -> Infrastructure:
    """Redis-backed events and wake-ups when AGENTRT_REDIS_URL is set, in-process otherwise."""
    if not config.redis_url:
        return Infrastructure(config, InMemoryEventChannel(), InMemoryWakeups())
    client = redis.Redis.from_url(config.redis_url)
    return Infrastructure(
        config,
        RedisEventChannel(client, prefix=config.redis_prefix),
        RedisWakeups(client, prefix=config.redis_prefix),
        client,
    )
