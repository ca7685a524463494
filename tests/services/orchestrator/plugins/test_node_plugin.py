"""The Node.js plugin of clients/node, registered and called as an operator and a job would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentrt.common.v1.common_pb2 import ToolCall
from agentrt.jobs.v1.jobs_pb2 import Job
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest

from services.orchestrator.plugins import PluginRegistry
from services.orchestrator.tools.base import ToolInvocation
from tests.services.orchestrator.plugins.node_plugin import NODE_TOOLS, node_plugin


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[str]:
    async with node_plugin(tmp_path) as running:
        yield running


def invocation(tool: str, arguments: dict[str, object]) -> ToolInvocation:
    call = ToolCall(id="call-1", name=tool, arguments=json.dumps(arguments))
    return ToolInvocation(Job(name="jobs/j1", tenant="acme"), call, arguments)


async def test_the_node_plugin_registers_healthy_with_object_schemas(
    registry: PluginRegistry, endpoint: str
) -> None:
    manifest = PluginManifest(
        version="0.1.0", endpoint=endpoint, tools=NODE_TOOLS, permissions=["none"]
    )
    plugin = await registry.register("text-tools", manifest)

    assert plugin.state == Plugin.STATE_HEALTHY
    assert [t.name for t in plugin.tools] == list(NODE_TOOLS)
    assert all(t.idempotent and t.parameters["type"] == "object" for t in plugin.tools)
    # Its own grpc.health.v1 answers SERVING.
    assert (await registry.check(plugin)).state == Plugin.STATE_HEALTHY


async def test_the_node_plugin_tools_are_called_through_plugin_source(
    registry: PluginRegistry, endpoint: str
) -> None:
    manifest = PluginManifest(version="0.1.0", endpoint=endpoint, tools=NODE_TOOLS)
    await registry.register("text-tools", manifest)
    (source,) = await registry.tools.sources()

    slug = await source.call(invocation("slugify", {"text": "Crème Brûlée, à la carte!"}), 10.0)
    counted = await source.call(
        invocation("word_frequency", {"text": "the cat and the hat", "top": 2}), 10.0
    )
    empty = await source.call(invocation("slugify", {"text": "!!!"}), 10.0)

    assert (slug.text, slug.is_error) == ("creme-brulee-a-la-carte", False)
    assert json.loads(counted.text) == {
        "total_words": 5,
        "distinct_words": 4,
        "words": [{"word": "the", "count": 2}, {"word": "and", "count": 1}],
    }
    assert empty.is_error and "no letters or digits" in empty.text


async def test_a_stopped_node_plugin_turns_unhealthy(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    async with node_plugin(tmp_path) as endpoint:
        manifest = PluginManifest(version="0.1.0", endpoint=endpoint, tools=NODE_TOOLS)
        plugin = await registry.register("text-tools", manifest)

    check = await registry.check(plugin)

    assert check.state == Plugin.STATE_UNHEALTHY and "UNAVAILABLE" in check.error
