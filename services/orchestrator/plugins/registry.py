"""The plugin registry: registering plugins, checking their health, and offering the tools
of the healthy ones to jobs.

Every orchestrator replica runs one over the shared store. Each replica checks every plugin
periodically (the checks are idempotent writes, so replicas need no coordination). Each
worker offers jobs the tools of every registered plugin as stored, and runs a call only
while its plugin was HEALTHY at the worker's latest refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from agentrt.common.v1.common_pb2 import ToolSpec
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest, Tool

from services.kit.channels import open_channel
from services.kit.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from services.kit.periodic import run_every
from services.orchestrator.plugins.client import PluginSource, PluginUnreachable, bounded_probe
from services.orchestrator.plugins.config import PluginConfig
from services.orchestrator.plugins.manifest import check_served_tools, request_hash
from services.orchestrator.plugins.names import plugin_name
from services.orchestrator.plugins.store import HealthCheck, NewPlugin, PluginStore
from services.orchestrator.tools.base import ToolSource

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _storable(error: str) -> str:
    """A check's error text as PostgreSQL can store it: it quotes what the plugin sent,
    which may hold NUL characters."""
    return error.replace("\x00", "\\0")


class PluginRegistry:
    """Plugins of the shared store, their channels, and their health."""

    def __init__(
        self,
        store: PluginStore,
        config: PluginConfig | None = None,
        builtin: ToolSource | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`builtin` is the orchestrator's built-in tools: their names are taken, and
        ListTools lists them."""
        self._store = store
        self._config = config or PluginConfig()
        self._builtin = builtin
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.tools = PluginTools(self, self._config.refresh_seconds)

    async def register(
        self, plugin_id: str, manifest: PluginManifest, request_id: str = ""
    ) -> Plugin:
        """Probes the plugin, checks its tools against the manifest and stores it HEALTHY.

        A retry with the request_id of an earlier registration returns that plugin without
        probing again. Tool names are checked against the other plugins here, not by the
        database: two registrations racing for one tool name on two replicas may both pass.
        """
        digest = request_hash(plugin_id, manifest)
        try:
            existing = await self._store.get(plugin_id)
        except NotFound:
            pass
        else:
            # A retry of the request that made it returns it; anything else fails.
            retry = NewPlugin(plugin_id, manifest, existing.tools, request_id, digest)
            return (await self._store.create(retry, self._clock()))[0]
        await self._check_names_free(plugin_id, manifest.tools)
        tools = await self._probe_new(plugin_id, manifest)
        new = NewPlugin(plugin_id, manifest, tools, request_id, digest)
        created, _ = await self._store.create(new, self._clock())
        self.tools.invalidate()
        return created

    async def get(self, plugin_id: str) -> Plugin:
        return self._as_seen_now(await self._store.get(plugin_id))

    async def list_plugins(self) -> list[Plugin]:
        """Every plugin, sorted by id, with its state as of now."""
        return [self._as_seen_now(plugin) for plugin in await self._store.list_all()]

    async def delete(self, plugin_id: str) -> None:
        """Removes the plugin; this replica stops offering its tools at once, the others
        at their next refresh."""
        endpoint = (await self._store.get(plugin_id)).manifest.endpoint
        await self._store.delete(plugin_id)
        self.tools.invalidate()
        await self._release_channel(endpoint)

    async def list_tools(self) -> list[Tool]:
        """The built-in tools and every plugin's, sorted by name; a plugin's are available
        while it is HEALTHY."""
        tools = []
        if self._builtin is not None:
            tools = [Tool(spec=spec, available=True) for spec in await self._builtin.list_tools()]
        for plugin in await self.list_plugins():
            healthy = plugin.state == Plugin.STATE_HEALTHY
            tools.extend(
                Tool(spec=spec, plugin=plugin.name, available=healthy) for spec in plugin.tools
            )
        return sorted(tools, key=lambda tool: tool.spec.name)

    async def check_all(self) -> None:
        """Checks every plugin at once and records the outcomes."""
        plugins = await self._store.list_all()
        await asyncio.gather(*(self.check(plugin) for plugin in plugins))
        self.tools.invalidate()

    async def check(self, plugin: Plugin) -> HealthCheck:
        """Probes one plugin and records HEALTHY with its tools' current schemas, or
        UNHEALTHY with why: unreachable, unhealthy, or serving other tools than declared."""
        try:
            served = await bounded_probe(
                self._channel(plugin.manifest.endpoint), self._config.check_timeout_seconds
            )
            check = HealthCheck(
                Plugin.STATE_HEALTHY,
                self._clock(),
                tools=check_served_tools(plugin.manifest, served),
            )
        except PluginUnreachable as error:
            check = HealthCheck(Plugin.STATE_UNHEALTHY, self._clock(), error=_storable(str(error)))
        except FailedPrecondition as error:
            check = HealthCheck(
                Plugin.STATE_UNHEALTHY, self._clock(), error=_storable(error.message)
            )
        if check.state != plugin.state:
            log.info(
                "plugin %s is %s%s",
                plugin.name,
                Plugin.State.Name(check.state),
                f": {check.error}" if check.error else "",
            )
        await self._store.record_check(plugin, check)
        return check

    async def run_checks(self) -> None:
        """Checks every plugin every `check_seconds`, until cancelled."""
        await run_every(self._config.check_seconds, self.check_all)

    async def registered_sources(self) -> list[PluginSource]:
        """A source for each registered plugin with its state as of now, read from the
        store. Those not HEALTHY still list their tools as stored, so that a job that
        names one is offered it while its plugin misses a health check; a call of it
        answers "not available now" (PluginSource.call) instead of failing the job."""
        return [
            PluginSource(plugin, self._channel(plugin.manifest.endpoint))
            for plugin in await self.list_plugins()
        ]

    async def close(self) -> None:
        """Closes the channels to the plugins and the store."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)
        await self._store.close()

    async def _check_names_free(self, plugin_id: str, names: Sequence[str]) -> None:
        """AlreadyExists, naming the tool, when a built-in tool or another plugin has it."""
        taken: dict[str, str] = {}
        if self._builtin is not None:
            taken = {spec.name: "the built-in tools" for spec in await self._builtin.list_tools()}
        for plugin in await self._store.list_all():
            taken.update((tool, f"plugin {plugin.name}") for tool in plugin.manifest.tools)
        for name in names:
            if name in taken:
                raise AlreadyExists(
                    f"plugin {plugin_name(plugin_id)} declares tool {name!r}, which is "
                    f"already served by {taken[name]}",
                    metadata={"tool": name},
                )

    async def _probe_new(self, plugin_id: str, manifest: PluginManifest) -> list[ToolSpec]:
        """The plugin's tools, checked against its manifest; Unavailable when it cannot be
        probed, FailedPrecondition (TOOL_ERROR) when its tools are not the manifest's."""
        # A channel of its own, closed when the probe ends: a shared one would be closed
        # under the probes of concurrent registrations when the first of them fails,
        # and calls on a closed channel never answer.
        channel = self._open(manifest.endpoint)
        try:
            served = await bounded_probe(channel, self._config.check_timeout_seconds)
        except PluginUnreachable as error:
            raise Unavailable(
                f"plugin {plugin_name(plugin_id)} at {manifest.endpoint}: {error}",
                metadata={"endpoint": manifest.endpoint},
            ) from error
        finally:
            await channel.close(None)
        return check_served_tools(manifest, served)

    async def _release_channel(self, endpoint: str) -> None:
        """Closes the channel to an endpoint that no registered plugin uses any more."""
        if any(p.manifest.endpoint == endpoint for p in await self._store.list_all()):
            return
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            await channel.close(None)

    def _as_seen_now(self, plugin: Plugin) -> Plugin:
        """The plugin with state UNKNOWN when no replica has checked it for a while."""
        checked = plugin.last_check_time.ToDatetime(tzinfo=UTC)
        if self._clock() - checked > timedelta(seconds=self._config.stale_seconds):
            plugin.state = Plugin.STATE_UNKNOWN
        return plugin

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        """The channel to an endpoint, shared by every plugin served there."""
        if endpoint not in self._channels:
            self._channels[endpoint] = self._open(endpoint)
        return self._channels[endpoint]

    def _open(self, endpoint: str) -> grpc.aio.Channel:
        """A channel that calls the plugin whatever it says of its health: the registry's
        checks ask and judge that themselves, and mark it UNHEALTHY for the tool runner."""
        return open_channel(endpoint, self._config.call_timeout_seconds, health_checked=False)


class PluginTools:
    """The tool sources of the registered plugins, for the ToolRunner: re-read from the
    store at most every `refresh_seconds`, and at once after a change made in this
    process."""

    def __init__(self, registry: PluginRegistry, refresh_seconds: float) -> None:
        self._registry = registry
        self._refresh_seconds = refresh_seconds
        self._sources: list[PluginSource] = []
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def sources(self) -> Sequence[ToolSource]:
        """The current plugin sources, healthy or not."""
        async with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self._refresh_seconds:
                self._sources = await self._registry.registered_sources()
                self._read_at = now
            return list(self._sources)

    def invalidate(self) -> None:
        """The next `sources()` reads the store again."""
        self._read_at = None
