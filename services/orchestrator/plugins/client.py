"""Talking to one plugin: probing its tools and health, and calling its tools for jobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import grpc
from agentrt.common.v1.common_pb2 import ToolSpec
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin
from agentrt.plugin.v1 import plugin_pb2, plugin_pb2_grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.orchestrator.tools.base import ToolFailed, ToolInvocation, ToolOutput

PLUGIN_SERVICE = plugin_pb2.DESCRIPTOR.services_by_name["ToolProviderService"].full_name
"""The service name a plugin's grpc.health.v1 Health reports on."""

MAX_TOOL_PAGES = 100
"""ListTools pages read at most, so that a plugin whose tokens never end cannot hang a probe."""

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
"""Statuses after which the same call may succeed: the plugin was unreachable or busy."""


class PluginUnreachable(Exception):
    """A probe of a plugin failed: its ListTools or its health check did not succeed."""


async def probe(channel: grpc.aio.Channel, timeout: float) -> list[ToolSpec]:
    """The tools the plugin serves, if it answers ListTools and its health service (when it
    has one) says SERVING; PluginUnreachable saying why otherwise.

    A plugin without grpc.health.v1 is judged by ListTools alone: answering it shows that
    the server is up and serves the contract, which is all a health check could add.
    """
    tools = await list_tools(channel, timeout)
    try:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=PLUGIN_SERVICE), timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        if error.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
            raise PluginUnreachable(f"health check failed: {_describe(error)}") from error
        return tools
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        raise PluginUnreachable(f"health check answered {status}")
    return tools


async def bounded_probe(channel: grpc.aio.Channel, timeout: float) -> list[ToolSpec]:
    """`probe`, answered within its two calls' timeouts whatever the channel does: a check
    that hung would hold up every later round of checks, and a registration its caller."""
    try:
        async with asyncio.timeout(2 * timeout):
            return await probe(channel, timeout)
    except TimeoutError:
        raise PluginUnreachable(f"no answer within {2 * timeout:g} s") from None


async def list_tools(channel: grpc.aio.Channel, timeout: float) -> list[ToolSpec]:
    """Every page of the plugin's ListTools."""
    stub = plugin_pb2_grpc.ToolProviderServiceStub(channel)
    tools: list[ToolSpec] = []
    token = ""
    for _ in range(MAX_TOOL_PAGES):
        try:
            page = await stub.ListTools(
                plugin_pb2.ListToolsRequest(page_token=token), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise PluginUnreachable(f"ListTools failed: {_describe(error)}") from error
        tools.extend(page.tools)
        token = page.next_page_token
        if not token:
            return tools
    raise PluginUnreachable(f"ListTools returned more than {MAX_TOOL_PAGES} pages")


class PluginSource:
    """The tools of one registered plugin, called over a channel to its endpoint while the
    plugin is HEALTHY."""

    def __init__(self, plugin: Plugin, channel: grpc.aio.Channel) -> None:
        self._plugin = plugin
        self._stub = plugin_pb2_grpc.ToolProviderServiceStub(channel)

    @property
    def name(self) -> str:
        return self._plugin.name

    @property
    def plugin(self) -> Plugin:
        """The plugin as registered and last checked."""
        return self._plugin

    async def list_tools(self) -> Sequence[ToolSpec]:
        """The tools as stored at registration and refreshed by health checks."""
        return list(self._plugin.tools)

    async def call(self, invocation: ToolInvocation, timeout: float | None) -> ToolOutput:
        """CallTool with the call's id as idempotency key. A status error becomes ToolFailed,
        retryable when the plugin was unreachable or busy; a tool that ran and failed
        (is_error) is an ordinary output with is_error set. A plugin that is not HEALTHY
        is not called: the call fails as "not available now" (not retried here; the
        model may try again later)."""
        if self._plugin.state != Plugin.STATE_HEALTHY:
            state = Plugin.State.Name(self._plugin.state).removeprefix("STATE_")
            why = f": {self._plugin.last_check_error}" if self._plugin.last_check_error else ""
            raise ToolFailed(
                f"tool {invocation.call.name!r} is not available now: plugin {self.name} "
                f"is {state}{why}"
            )
        arguments = struct_pb2.Struct()
        try:
            arguments.update(dict(invocation.arguments))
        except (TypeError, ValueError) as error:
            raise ToolFailed(f"arguments cannot be sent to the plugin: {error}") from error
        request = plugin_pb2.CallToolRequest(
            tool=invocation.call.name,
            arguments=arguments,
            call_id=invocation.call.id,
            job=invocation.job.name,
            tenant=invocation.job.tenant,
        )
        try:
            response = await self._stub.CallTool(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise ToolFailed(
                f"plugin {self.name} could not run {invocation.call.name}: {_describe(error)}",
                retryable=error.code() in RETRYABLE,
            ) from error
        try:
            text = output_text(response)
        except ValueError as error:
            raise ToolFailed(
                f"plugin {self.name} answered {invocation.call.name} with structured output "
                f"that is not JSON: {error}"
            ) from error
        return ToolOutput(text=text, is_error=response.is_error)


def output_text(response: plugin_pb2.CallToolResponse) -> str:
    """What the model reads: the text, or the structured output as JSON when text is empty.
    ValueError when that holds NaN or an infinity, which JSON cannot."""
    if response.text or not response.HasField("structured"):
        return response.text
    return json.dumps(json_format.MessageToDict(response.structured), sort_keys=True)


def _describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or 'no details'}"
