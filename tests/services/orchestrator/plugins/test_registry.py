"""The registry's health checks and the PluginSource, against real Python plugin servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentrt.common.v1.common_pb2 import ToolCall, ToolKind, ToolSpec
from agentrt.jobs.v1.jobs_pb2 import Job, JobSpec
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest
from agentrt.plugin.v1 import plugin_pb2_grpc

from services.kit.periodic import cancel_all
from services.kit.storage import StorageConfig, migrate
from services.orchestrator.plugins import (
    PluginConfig,
    PluginRegistry,
    PluginSource,
    PluginStore,
    open_plugin_store,
)
from services.orchestrator.plugins.store import SQL_DIRECTORY
from services.orchestrator.tools.base import ToolFailed, ToolInvocation
from services.orchestrator.tools.runner import ToolRunner
from tests.services.orchestrator.plugins.python_plugin import EchoTools, PythonPlugin, spec

WAIT = 30.0
"""Seconds a test waits for the checker to notice a change, before it fails."""

MANIFEST_TOOLS = ("echo", "refuse", "shout")


def manifest(endpoint: str) -> PluginManifest:
    return PluginManifest(version="1.0.0", endpoint=endpoint, tools=MANIFEST_TOOLS)


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.05)


def invocation(tool: str, arguments: dict[str, Any]) -> ToolInvocation:
    call = ToolCall(id="call-7", name=tool, arguments=json.dumps(arguments))
    return ToolInvocation(Job(name="jobs/j1", tenant="acme"), call, arguments)


@pytest.fixture
async def checking(registry: PluginRegistry) -> AsyncIterator[PluginRegistry]:
    """The registry with its periodic checks running."""
    task = asyncio.create_task(registry.run_checks())
    try:
        yield registry
    finally:
        await cancel_all([task])


async def source_names(registry: PluginRegistry) -> list[str]:
    return [source.name for source in await registry.tools.sources()]


async def unavailable_call(registry: PluginRegistry) -> str:
    """What a call of `echo` through the registry's source answers: the plugin is not
    called, the call fails as not available now."""
    (source,) = await registry.tools.sources()
    with pytest.raises(ToolFailed) as failed:
        await source.call(invocation("echo", {"text": "hi"}), timeout=5.0)
    assert not failed.value.retryable
    return str(failed.value)


async def test_the_checker_marks_a_stopped_plugin_unhealthy_and_a_restarted_one_healthy(
    checking: PluginRegistry, plugin: PythonPlugin
) -> None:
    await checking.register("echoes", manifest(plugin.endpoint))
    assert await source_names(checking) == ["plugins/echoes"]

    await plugin.stop()

    async def unhealthy() -> bool:
        return (await checking.get("echoes")).state == Plugin.STATE_UNHEALTHY

    await eventually(unhealthy, "the stopped plugin is UNHEALTHY")
    down = await checking.get("echoes")
    assert "UNAVAILABLE" in down.last_check_error
    # Still offered from its stored spec, so that jobs naming it go on; its calls answer
    # that it is not available now.
    assert await source_names(checking) == ["plugins/echoes"]
    assert "is not available now: plugin plugins/echoes is UNHEALTHY" in (
        await unavailable_call(checking)
    )
    # A job started now is offered the tool and runs; the model is told it is down.
    runner = ToolRunner(checking.tools.sources)
    job = Job(name="jobs/j1", tenant="acme", spec=JobSpec(tools=[ToolSpec(name="echo")]))
    (offered,) = await runner.offer(job)
    assert offered.kind == ToolKind.TOOL_KIND_PLUGIN
    call = ToolCall(id="c1", name="echo", arguments='{"text": "hi"}')
    output = await runner.run(job, call, 0, offered)
    assert output.is_error and "not available now" in output.text
    tools = {t.spec.name: t for t in await checking.list_tools()}
    assert not tools["echo"].available and tools["calculator"].available

    await plugin.start()

    async def healthy() -> bool:
        return (await checking.get("echoes")).state == Plugin.STATE_HEALTHY

    await eventually(healthy, "the restarted plugin is HEALTHY")
    up = await checking.get("echoes")
    assert up.last_check_error == ""
    assert up.last_check_time.ToDatetime(tzinfo=UTC) > down.last_check_time.ToDatetime(tzinfo=UTC)
    assert await source_names(checking) == ["plugins/echoes"]


async def test_a_plugin_serving_other_tools_than_declared_turns_unhealthy(
    registry: PluginRegistry, plugin: PythonPlugin
) -> None:
    registered = await registry.register("echoes", manifest(plugin.endpoint))
    plugin.tools.tools = plugin.tools.tools[:2]

    check = await registry.check(registered)

    assert check.state == Plugin.STATE_UNHEALTHY
    assert "declared but not served: shout" in check.error
    assert (await registry.get("echoes")).state == Plugin.STATE_UNHEALTHY


async def test_a_health_service_answering_not_serving_makes_the_plugin_unhealthy(
    registry: PluginRegistry, plugin: PythonPlugin
) -> None:
    registered = await registry.register("echoes", manifest(plugin.endpoint))
    await plugin.report_not_serving()

    check = await registry.check(registered)

    assert (check.state, check.error) == (
        Plugin.STATE_UNHEALTHY,
        "health check answered NOT_SERVING",
    )


async def test_a_plugin_without_a_health_service_is_judged_by_list_tools(
    registry: PluginRegistry,
) -> None:
    server = grpc.aio.server()
    plugin_pb2_grpc.add_ToolProviderServiceServicer_to_server(EchoTools(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        registered = await registry.register("bare", manifest(f"127.0.0.1:{port}"))
        assert registered.state == Plugin.STATE_HEALTHY
        assert (await registry.check(registered)).state == Plugin.STATE_HEALTHY
    finally:
        await server.stop(None)


async def test_a_plugin_nobody_checked_lately_shows_unknown_and_is_not_called(
    sqlite_path: Path, plugin: PythonPlugin
) -> None:
    config = StorageConfig("sqlite", sqlite_path, None, "orchestrator")
    await migrate(config, SQL_DIRECTORY)
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    settings = PluginConfig(check_seconds=10, check_timeout_seconds=5, refresh_seconds=0)
    registry = PluginRegistry(await open_plugin_store(config), settings, clock=lambda: now[0])
    try:
        await registry.register("echoes", manifest(plugin.endpoint))
        now[0] += timedelta(seconds=settings.stale_seconds + 1)

        assert (await registry.get("echoes")).state == Plugin.STATE_UNKNOWN
        assert "is not available now: plugin plugins/echoes is UNKNOWN" in (
            await unavailable_call(registry)
        )
    finally:
        await registry.close()


async def test_sources_follow_registrations_made_in_this_process(
    registry: PluginRegistry, plugin: PythonPlugin
) -> None:
    assert await source_names(registry) == []
    await registry.register("echoes", manifest(plugin.endpoint))
    assert await source_names(registry) == ["plugins/echoes"]
    await registry.delete("echoes")
    assert await source_names(registry) == []


@pytest.fixture
async def echo_source(registry: PluginRegistry, plugin: PythonPlugin) -> PluginSource:
    await registry.register("echoes", manifest(plugin.endpoint))
    (source,) = await registry.tools.sources()
    assert isinstance(source, PluginSource)
    return source


async def test_a_call_carries_the_call_id_job_and_tenant(
    echo_source: PluginSource, plugin: PythonPlugin
) -> None:
    output = await echo_source.call(invocation("echo", {"text": "hi"}), timeout=5.0)

    assert (output.text, output.is_error) == ("hi (call call-7, jobs/j1, acme)", False)
    (request,) = plugin.tools.calls
    assert (request.tool, request.call_id, request.job, request.tenant) == (
        "echo",
        "call-7",
        "jobs/j1",
        "acme",
    )
    assert [t.name for t in await echo_source.list_tools()] == list(MANIFEST_TOOLS)


async def test_a_tool_that_ran_and_failed_is_an_error_output(echo_source: PluginSource) -> None:
    output = await echo_source.call(invocation("refuse", {"text": "fly"}), timeout=5.0)

    assert (output.text, output.is_error) == ("cannot fly", True)


async def test_structured_output_reaches_the_model_as_json(echo_source: PluginSource) -> None:
    output = await echo_source.call(invocation("shout", {"text": "hey"}), timeout=5.0)

    assert json.loads(output.text) == {"loud": "HEY"}


async def test_structured_output_json_cannot_express_is_a_tool_failure(
    echo_source: PluginSource,
) -> None:
    with pytest.raises(ToolFailed) as failed:
        await echo_source.call(invocation("measure", {}), timeout=5.0)

    assert "answered measure with structured output that is not JSON" in failed.value.message
    assert "Infinity" in failed.value.message and not failed.value.retryable


async def test_a_status_error_is_a_tool_failure_that_is_not_retried(
    echo_source: PluginSource,
) -> None:
    with pytest.raises(ToolFailed) as failed:
        await echo_source.call(invocation("vanished", {"text": "x"}), timeout=5.0)

    assert not failed.value.retryable
    assert "NOT_FOUND" in failed.value.message


async def test_an_unreachable_plugin_is_a_retryable_tool_failure(
    echo_source: PluginSource, plugin: PythonPlugin
) -> None:
    await plugin.stop()

    with pytest.raises(ToolFailed) as failed:
        await echo_source.call(invocation("echo", {"text": "x"}), timeout=5.0)

    assert failed.value.retryable
    assert "plugins/echoes" in failed.value.message and "UNAVAILABLE" in failed.value.message


async def test_a_healthy_check_refreshes_the_tool_schemas(
    registry: PluginRegistry, plugin: PythonPlugin
) -> None:
    registered = await registry.register("echoes", manifest(plugin.endpoint))
    plugin.tools.tools[0].description = "echoes, now louder"

    await registry.check_all()

    stored = await registry.get("echoes")
    assert stored.state == Plugin.STATE_HEALTHY
    assert stored.tools[0].description == "echoes, now louder"
    assert stored.last_check_time.ToDatetime() >= registered.last_check_time.ToDatetime()


async def test_a_check_error_quoting_a_nul_from_the_plugin_is_stored(
    store: PluginStore, plugin: PythonPlugin
) -> None:
    """PostgreSQL stores no NUL; a plugin's tool names reach the check's error text."""
    registry = PluginRegistry(store, PluginConfig(check_timeout_seconds=2.0, refresh_seconds=0))
    registered = await registry.register("echoes", manifest(plugin.endpoint))
    plugin.tools.tools = [*plugin.tools.tools, spec("odd\x00name")]

    check = await registry.check(registered)

    assert check.state == Plugin.STATE_UNHEALTHY
    assert "odd\\0name" in check.error
    assert (await registry.get("echoes")).last_check_error == check.error
