"""The plugin and tool RPCs of OrchestratorService: validate, then delegate to the registry."""

from __future__ import annotations

from typing import Any

import grpc
from agentrt.orchestrator.v1 import orchestrator_pb2
from google.protobuf.empty_pb2 import Empty

from services.kit.errors import FieldRequired
from services.kit.paging import decode_offset, encode_offset, page_size
from services.orchestrator.plugins.manifest import check_manifest, check_request_id
from services.orchestrator.plugins.names import check_plugin_id, parse_plugin_name
from services.orchestrator.plugins.registry import PluginRegistry

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PLUGIN_PAGE_SIZE = 50
MAX_PLUGIN_PAGE_SIZE = 500
DEFAULT_TOOL_PAGE_SIZE = 100
MAX_TOOL_PAGE_SIZE = 1000


class PluginRpcs:
    """RegisterPlugin, GetPlugin, ListPlugins, DeletePlugin and ListTools, for mixing into
    the OrchestratorService servicer ahead of the generated base class; the servicer sets
    `plugins`."""

    plugins: PluginRegistry

    async def RegisterPlugin(
        self, request: orchestrator_pb2.RegisterPluginRequest, context: Context
    ) -> orchestrator_pb2.Plugin:
        if not request.plugin_id:
            raise FieldRequired("plugin_id")
        plugin_id = check_plugin_id(request.plugin_id)
        if not request.HasField("plugin"):
            raise FieldRequired("plugin")
        if not request.plugin.HasField("manifest"):
            raise FieldRequired("plugin.manifest")
        check_manifest(request.plugin.manifest)
        check_request_id(request.request_id)
        return await self.plugins.register(plugin_id, request.plugin.manifest, request.request_id)

    async def GetPlugin(
        self, request: orchestrator_pb2.GetPluginRequest, context: Context
    ) -> orchestrator_pb2.Plugin:
        return await self.plugins.get(parse_plugin_name(request.name))

    async def ListPlugins(
        self, request: orchestrator_pb2.ListPluginsRequest, context: Context
    ) -> orchestrator_pb2.ListPluginsResponse:
        size = page_size(request.page_size, DEFAULT_PLUGIN_PAGE_SIZE, MAX_PLUGIN_PAGE_SIZE)
        start = decode_offset(request.page_token)
        plugins = await self.plugins.list_plugins()
        token = encode_offset(start + size) if start + size < len(plugins) else ""
        return orchestrator_pb2.ListPluginsResponse(
            plugins=plugins[start : start + size], next_page_token=token
        )

    async def DeletePlugin(
        self, request: orchestrator_pb2.DeletePluginRequest, context: Context
    ) -> Empty:
        await self.plugins.delete(parse_plugin_name(request.name))
        return Empty()

    async def ListTools(
        self, request: orchestrator_pb2.ListToolsRequest, context: Context
    ) -> orchestrator_pb2.ListToolsResponse:
        size = page_size(request.page_size, DEFAULT_TOOL_PAGE_SIZE, MAX_TOOL_PAGE_SIZE)
        start = decode_offset(request.page_token)
        tools = await self.plugins.list_tools()
        token = encode_offset(start + size) if start + size < len(tools) else ""
        return orchestrator_pb2.ListToolsResponse(
            tools=tools[start : start + size], next_page_token=token
        )
