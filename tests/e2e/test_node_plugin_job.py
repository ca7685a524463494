"""End to end: a job calls a tool of the Node.js plugin in clients/node, registered with the
orchestrator, through the Python client and the local model (which asks for the tool calls
named on `call <tool> <arguments>` lines of the prompt)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agentrt import Client, job_spec
from agentrt.common.v1.common_pb2 import JobState, ToolSpec
from agentrt.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest

from services.dev import LocalSystem
from tests.services.orchestrator.plugins.node_plugin import NODE_TOOLS, node_plugin

pytestmark = pytest.mark.e2e


@pytest.fixture
async def text_tools(system: LocalSystem, tmp_path: Path) -> AsyncIterator[Plugin]:
    """The Node plugin, running and registered as an operator would register it."""
    async with (
        node_plugin(tmp_path) as endpoint,
        grpc.aio.insecure_channel(system.endpoint) as channel,
    ):
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        manifest = PluginManifest(
            version="0.1.0", endpoint=endpoint, tools=NODE_TOOLS, permissions=["none"]
        )
        request = orchestrator_pb2.RegisterPluginRequest(
            plugin_id="text-tools", plugin=Plugin(manifest=manifest), request_id="reg-1"
        )
        yield await orchestrator.RegisterPlugin(request)


async def test_a_job_calls_the_node_plugin_tool(system: LocalSystem, text_tools: Plugin) -> None:
    assert text_tools.state == Plugin.STATE_HEALTHY
    spec = job_spec('call slugify {"text": "Hello, Node World!"}', model="local")
    spec.tools.append(ToolSpec(name="slugify"))

    async with Client(system.endpoint, system.api_key) as client:
        job = await client.result(await client.execute_spec(spec))

    assert job.state == JobState.JOB_STATE_SUCCEEDED, job.failure
    assert "hello-node-world" in job.result.output
