"""A real agentrt.plugin.v1 tool provider in Python, served by the kit's server (so it has
grpc.health.v1 too), for the registry and PluginSource tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from agentrt.common.v1.common_pb2 import ToolSpec
from agentrt.plugin.v1 import plugin_pb2, plugin_pb2_grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2

from services.kit.server import Server
from services.orchestrator.plugins.client import PLUGIN_SERVICE

Context = grpc.aio.ServicerContext[Any, Any]


def spec(name: str, idempotent: bool = True, schema: dict[str, Any] | None = None) -> ToolSpec:
    parameters = struct_pb2.Struct()
    parameters.update(
        schema
        if schema is not None
        else {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    )
    return ToolSpec(
        name=name, description=f"the {name} tool", parameters=parameters, idempotent=idempotent
    )


class EchoTools(plugin_pb2_grpc.ToolProviderServiceServicer):
    """`echo` answers with its text and the call's context; `refuse` runs and fails
    (is_error); `shout` answers with structured output only; `measure` (served but never
    listed) with structured output JSON cannot express (an infinity). Records every call."""

    def __init__(self, tools: Sequence[ToolSpec] | None = None) -> None:
        self.tools = list(tools or [spec("echo"), spec("refuse"), spec("shout")])
        self.calls: list[plugin_pb2.CallToolRequest] = []

    async def ListTools(
        self, request: plugin_pb2.ListToolsRequest, context: Context
    ) -> plugin_pb2.ListToolsResponse:
        # Two pages, so that the registry's paging is exercised.
        if not request.page_token:
            return plugin_pb2.ListToolsResponse(tools=self.tools[:1], next_page_token="rest")
        return plugin_pb2.ListToolsResponse(tools=self.tools[1:])

    async def CallTool(
        self, request: plugin_pb2.CallToolRequest, context: Context
    ) -> plugin_pb2.CallToolResponse:
        self.calls.append(request)
        text = json_format.MessageToDict(request.arguments).get("text", "")
        if request.tool == "echo":
            return plugin_pb2.CallToolResponse(
                text=f"{text} (call {request.call_id}, {request.job}, {request.tenant})"
            )
        if request.tool == "refuse":
            return plugin_pb2.CallToolResponse(text=f"cannot {text}", is_error=True)
        if request.tool == "shout":
            structured = struct_pb2.Struct()
            structured.update({"loud": text.upper()})
            return plugin_pb2.CallToolResponse(structured=structured)
        if request.tool == "measure":
            structured = struct_pb2.Struct()
            structured.update({"size": float("inf")})
            return plugin_pb2.CallToolResponse(structured=structured)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no tool {request.tool}")
        raise AssertionError("abort raises")


class PluginUnit:
    """The tool provider as a kit ServiceUnit: health reports it SERVING while it runs."""

    name = "python-plugin"
    service_names = (PLUGIN_SERVICE,)

    def __init__(self, tools: EchoTools) -> None:
        self.tools = tools

    def register(self, server: grpc.aio.Server) -> None:
        plugin_pb2_grpc.add_ToolProviderServiceServicer_to_server(self.tools, server)

    async def start(self) -> None:
        """No background work."""

    async def stop(self) -> None:
        """No background work."""

    async def close(self) -> None:
        """Nothing to close."""


class PythonPlugin:
    """A plugin server that a test can stop and start again on the same port."""

    def __init__(self, tools: EchoTools | None = None) -> None:
        self.tools = tools or EchoTools()
        self._server: Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = Server(f"127.0.0.1:{self.port}", "python-plugin")
        await server.start([PluginUnit(self.tools)])
        self._server, self.port = server, server.port

    async def report_not_serving(self) -> None:
        """Its health service answers NOT_SERVING, as while a server drains."""
        assert self._server is not None
        # The kit's server keeps its health servicer to itself; tests may reach in.
        await self._server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None
