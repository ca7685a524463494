"""OrchestratorService's plugin RPCs through a real server: validation, idempotency, errors,
listing and paging, against real Python plugin servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from agentrt.orchestrator.v1 import orchestrator_pb2 as o
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest

from tests.services.kit.status import error_info
from tests.services.orchestrator.plugins.conftest import Stub
from tests.services.orchestrator.plugins.python_plugin import EchoTools, PythonPlugin, spec

TOOLS = ("echo", "refuse", "shout")
NAN = float("nan")


def register_request(
    endpoint: str,
    plugin_id: str = "echoes",
    tools: tuple[str, ...] = TOOLS,
    request_id: str = "",
    **manifest: Any,
) -> o.RegisterPluginRequest:
    fields: dict[str, Any] = {"version": "1.0.0", "endpoint": endpoint, "tools": tools}
    fields.update(manifest)
    return o.RegisterPluginRequest(
        plugin_id=plugin_id, plugin=Plugin(manifest=PluginManifest(**fields)), request_id=request_id
    )


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def assert_fails(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str, **metadata: str
) -> str:
    """Asserts the status, the ErrorInfo reason and metadata; returns the message."""
    error = await failure(call)
    info = error_info(error)
    assert (error.code(), info.reason) == (code, reason), error.details()
    for key, value in metadata.items():
        assert info.metadata[key] == value
    return error.details() or ""


@pytest.fixture
async def other_plugin() -> AsyncIterator[PythonPlugin]:
    """A second plugin, serving the tool `other`."""
    running = PythonPlugin(EchoTools([spec("other")]))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_register_lists_the_tools_and_starts_healthy(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    request = register_request(plugin.endpoint, permissions=["network"], description="echoes")
    created = await orchestrator.RegisterPlugin(request)

    assert created.name == "plugins/echoes"
    assert created.manifest == request.plugin.manifest
    assert [t.name for t in created.tools] == list(TOOLS)
    assert {t.kind for t in created.tools} == {2}  # TOOL_KIND_PLUGIN
    assert created.tools[0].parameters["type"] == "object"
    assert created.state == Plugin.STATE_HEALTHY
    assert created.HasField("create_time") and created.HasField("last_check_time")
    assert await orchestrator.GetPlugin(o.GetPluginRequest(name="plugins/echoes")) == created


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"plugin_id": ""}, "FIELD_REQUIRED", "plugin_id"),
        ({"plugin_id": "Echoes"}, "FIELD_INVALID", "plugin_id"),
        ({"plugin_id": "x" * 64}, "FIELD_INVALID", "plugin_id"),
        ({"version": ""}, "FIELD_REQUIRED", "plugin.manifest.version"),
        ({"version": "1 0"}, "FIELD_INVALID", "plugin.manifest.version"),
        ({"endpoint": ""}, "FIELD_REQUIRED", "plugin.manifest.endpoint"),
        ({"endpoint": "http://tools:80"}, "FIELD_INVALID", "plugin.manifest.endpoint"),
        ({"endpoint": "tools"}, "FIELD_INVALID", "plugin.manifest.endpoint"),
        ({"endpoint": "tools:70000"}, "FIELD_INVALID", "plugin.manifest.endpoint"),
        ({"tools": ()}, "FIELD_REQUIRED", "plugin.manifest.tools"),
        ({"tools": ("echo", "bad name")}, "FIELD_INVALID", "plugin.manifest.tools[1]"),
        ({"tools": ("echo", "echo")}, "FIELD_INVALID", "plugin.manifest.tools[1]"),
        (
            {"permissions": ["network", "Root Access"]},
            "FIELD_INVALID",
            "plugin.manifest.permissions[1]",
        ),
        ({"request_id": "r" * 129}, "FIELD_INVALID", "request_id"),
    ],
)
async def test_register_refuses_a_malformed_request_naming_the_field(
    orchestrator: Stub, plugin: PythonPlugin, change: dict[str, Any], reason: str, field: str
) -> None:
    fields = {"endpoint": plugin.endpoint, **change}
    request = register_request(**fields)

    await assert_fails(
        orchestrator.RegisterPlugin(request), grpc.StatusCode.INVALID_ARGUMENT, reason, field=field
    )


async def test_register_without_a_manifest_is_field_required(orchestrator: Stub) -> None:
    request = o.RegisterPluginRequest(plugin_id="echoes", plugin=Plugin(name="plugins/echoes"))
    await assert_fails(
        orchestrator.RegisterPlugin(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_REQUIRED",
        field="plugin.manifest",
    )


async def test_register_refuses_tools_that_differ_from_the_manifest(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    missing = register_request(plugin.endpoint, tools=("echo", "refuse", "shout", "whisper"))
    message = await assert_fails(
        orchestrator.RegisterPlugin(missing),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOOL_ERROR",
        tool="whisper",
    )
    assert "declared but not served: whisper" in message

    extra = register_request(plugin.endpoint, tools=("echo",))
    message = await assert_fails(
        orchestrator.RegisterPlugin(extra), grpc.StatusCode.FAILED_PRECONDITION, "TOOL_ERROR"
    )
    assert "served but not declared: refuse, shout" in message
    await assert_fails(
        orchestrator.GetPlugin(o.GetPluginRequest(name="plugins/echoes")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


async def test_register_refuses_a_schema_that_is_not_an_object_schema(orchestrator: Stub) -> None:
    broken = PythonPlugin(EchoTools([spec("listy", schema={"type": "array"})]))
    await broken.start()
    try:
        request = register_request(broken.endpoint, tools=("listy",))
        await assert_fails(
            orchestrator.RegisterPlugin(request),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TOOL_ERROR",
            tool="listy",
        )
    finally:
        await broken.stop()


async def test_register_refuses_a_schema_json_cannot_express(orchestrator: Stub) -> None:
    broken = PythonPlugin(EchoTools([spec("odd", schema={"type": "object", "minimum": NAN})]))
    await broken.start()
    try:
        request = register_request(broken.endpoint, tools=("odd",))
        await assert_fails(
            orchestrator.RegisterPlugin(request),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TOOL_ERROR",
            tool="odd",
        )
    finally:
        await broken.stop()


async def test_register_of_an_unreachable_plugin_is_unavailable(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    endpoint = plugin.endpoint
    await plugin.stop()

    await assert_fails(
        orchestrator.RegisterPlugin(register_request(endpoint)),
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        endpoint=endpoint,
    )


async def test_a_retry_with_the_same_request_id_returns_the_same_plugin(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    request = register_request(plugin.endpoint, request_id="reg-1")
    first = await orchestrator.RegisterPlugin(request)
    # Even once the plugin is down: a retry is answered from the registry.
    await plugin.stop()

    assert await orchestrator.RegisterPlugin(request) == first


async def test_a_request_id_reused_for_another_plugin_is_refused(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    await orchestrator.RegisterPlugin(register_request(plugin.endpoint, request_id="reg-1"))
    changed = register_request(plugin.endpoint, request_id="reg-1", description="changed")

    await assert_fails(
        orchestrator.RegisterPlugin(changed),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
        request_id="reg-1",
    )


async def test_a_taken_plugin_id_is_already_exists(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    await orchestrator.RegisterPlugin(register_request(plugin.endpoint))

    await assert_fails(
        orchestrator.RegisterPlugin(register_request(plugin.endpoint)),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        name="plugins/echoes",
    )


async def test_a_tool_name_taken_by_a_builtin_or_another_plugin_is_already_exists(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    await orchestrator.RegisterPlugin(register_request(plugin.endpoint))
    again = register_request(plugin.endpoint, plugin_id="echoes-two")
    message = await assert_fails(
        orchestrator.RegisterPlugin(again),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        tool="echo",
    )
    assert "plugins/echoes" in message

    builtin = PythonPlugin(EchoTools([spec("calculator")]))
    await builtin.start()
    try:
        request = register_request(builtin.endpoint, plugin_id="calc", tools=("calculator",))
        await assert_fails(
            orchestrator.RegisterPlugin(request),
            grpc.StatusCode.ALREADY_EXISTS,
            "ALREADY_EXISTS",
            tool="calculator",
        )
    finally:
        await builtin.stop()


async def test_list_plugins_pages_by_name(
    orchestrator: Stub, plugin: PythonPlugin, other_plugin: PythonPlugin
) -> None:
    await orchestrator.RegisterPlugin(register_request(plugin.endpoint, plugin_id="zeta"))
    await orchestrator.RegisterPlugin(
        register_request(other_plugin.endpoint, plugin_id="alpha", tools=("other",))
    )

    first = await orchestrator.ListPlugins(o.ListPluginsRequest(page_size=1))
    second = await orchestrator.ListPlugins(
        o.ListPluginsRequest(page_size=1, page_token=first.next_page_token)
    )
    whole = await orchestrator.ListPlugins(o.ListPluginsRequest())

    assert [p.name for p in first.plugins] == ["plugins/alpha"] and first.next_page_token
    assert [p.name for p in second.plugins] == ["plugins/zeta"]
    assert second.next_page_token == ""
    assert [p.name for p in whole.plugins] == ["plugins/alpha", "plugins/zeta"]
    await assert_fails(
        orchestrator.ListPlugins(o.ListPluginsRequest(page_token="nonsense")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        field="page_token",
    )
    await assert_fails(
        orchestrator.ListPlugins(o.ListPluginsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        field="page_size",
    )


async def test_delete_removes_the_plugin_and_its_tools(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    await orchestrator.RegisterPlugin(register_request(plugin.endpoint))

    await orchestrator.DeletePlugin(o.DeletePluginRequest(name="plugins/echoes"))

    await assert_fails(
        orchestrator.GetPlugin(o.GetPluginRequest(name="plugins/echoes")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    await assert_fails(
        orchestrator.DeletePlugin(o.DeletePluginRequest(name="plugins/echoes")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    tools = (await orchestrator.ListTools(o.ListToolsRequest())).tools
    assert not [t for t in tools if t.plugin]


@pytest.mark.parametrize("name", ["", "echoes", "plugins/", "plugins/Echoes", "jobs/echoes"])
async def test_a_malformed_plugin_name_is_name_invalid(orchestrator: Stub, name: str) -> None:
    await assert_fails(
        orchestrator.GetPlugin(o.GetPluginRequest(name=name)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NAME_INVALID",
    )
    await assert_fails(
        orchestrator.DeletePlugin(o.DeletePluginRequest(name=name)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NAME_INVALID",
    )


async def test_list_tools_lists_builtin_and_plugin_tools_by_name(
    orchestrator: Stub, plugin: PythonPlugin
) -> None:
    await orchestrator.RegisterPlugin(register_request(plugin.endpoint))

    tools = (await orchestrator.ListTools(o.ListToolsRequest())).tools

    names = [t.spec.name for t in tools]
    assert names == sorted(names)
    by_name = {t.spec.name: t for t in tools}
    assert (by_name["calculator"].plugin, by_name["calculator"].available) == ("", True)
    assert (by_name["echo"].plugin, by_name["echo"].available) == ("plugins/echoes", True)
    first = await orchestrator.ListTools(o.ListToolsRequest(page_size=2))
    rest = await orchestrator.ListTools(
        o.ListToolsRequest(page_size=1000, page_token=first.next_page_token)
    )
    assert [t.spec.name for t in [*first.tools, *rest.tools]] == names
