"""The plugin side of OrchestratorService, fuzzed from both ends: registrations of a plugin
whose ListTools answers generated tools (JSON Schemas with odd keywords and values, NaN and
infinities included), and jobs that call a tool of it while its CallTool answers generated
output. No RPC may end UNKNOWN or INTERNAL, and every job that calls the plugin ends.

The plugin is a real agentrt.plugin.v1 server in this process, answering what the current
example drew; the system runs in a thread of its own (tests/rpc_fuzz/system.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from agentrt.common.v1 import common_pb2
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2
from agentrt.orchestrator.v1 import orchestrator_pb2
from agentrt.plugin.v1 import plugin_pb2, plugin_pb2_grpc
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.jobs.states import TERMINAL
from tests.rpc_fuzz.messages import messages, texts
from tests.rpc_fuzz.system import (
    CALL_SECONDS,
    RunningSystem,
    call_method,
    expect_clear_status,
    fuzz_settings,
    method_named,
)

pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")

JOB_SECONDS = 30.0
"""How long a job that calls the plugin may take to end before the test fails."""

TOOL_NAMES = ["fz_alpha", "fz_beta", "fz-gamma"]
SCHEMA_KEYWORDS = [
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "multipleOf",
    "additionalProperties",
    "$ref",
    "allOf",
]

_example = itertools.count()


class DrawnPlugin(plugin_pb2_grpc.ToolProviderServiceServicer):
    """A plugin that answers ListTools and CallTool with what the test set last."""

    def __init__(self) -> None:
        self.tools = plugin_pb2.ListToolsResponse()
        self.reply = plugin_pb2.CallToolResponse()

    def ListTools(self, request: plugin_pb2.ListToolsRequest, context: Any) -> Any:
        return self.tools

    def CallTool(self, request: plugin_pb2.CallToolRequest, context: Any) -> Any:
        return self.reply


@pytest.fixture(scope="module")
def plugin() -> Iterator[tuple[DrawnPlugin, str]]:
    """The drawn plugin, served on a port of its own, and its endpoint."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    drawn = DrawnPlugin()
    plugin_pb2_grpc.add_ToolProviderServiceServicer_to_server(drawn, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield drawn, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON-like value a Struct holds, NaN and infinities included."""
    odd_numbers = st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.5, 1e308])
    return st.recursive(
        st.none()
        | st.booleans()
        | odd_numbers
        | st.floats()
        | st.sampled_from(["object", "string", "(["]),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["a", "type", "$ref"]), inner, max_size=3)
        ),
        max_leaves=6,
    )


def schemas() -> st.SearchStrategy[struct_pb2.Struct]:
    """JSON Schemas of tool arguments: mostly objects, with odd keywords and values."""
    keywords = st.dictionaries(
        st.sampled_from(SCHEMA_KEYWORDS), json_values(), min_size=1, max_size=3
    )
    objects = keywords.map(lambda extra: {**extra, "type": "object"})
    return st.one_of(objects, objects, keywords).map(_struct)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def tool_specs() -> st.SearchStrategy[common_pb2.ToolSpec]:
    return st.builds(
        common_pb2.ToolSpec,
        name=st.sampled_from(TOOL_NAMES),
        description=texts(["does a thing"]),
        parameters=st.one_of(schemas(), st.just(struct_pb2.Struct())),
        idempotent=st.booleans(),
    )


def replies() -> st.SearchStrategy[plugin_pb2.CallToolResponse]:
    structured = st.dictionaries(st.sampled_from(["a", "b"]), json_values(), min_size=1, max_size=3)
    return st.one_of(
        st.builds(
            plugin_pb2.CallToolResponse,
            text=texts(["", "done"]),
            structured=structured.map(_struct),
            is_error=st.booleans(),
        ),
        messages(plugin_pb2.CallToolResponse.DESCRIPTOR, ["", "done"]),
    )


def _answer(system: RunningSystem, method: str, request: Any) -> Any:
    """The method's answer, or None for a status that is not forbidden."""
    try:
        return call_method(system.channel, method_named(method), system.metadata)(
            request, CALL_SECONDS
        )
    except grpc.RpcError as error:
        expect_clear_status(method, error)
        return None


ORCHESTRATOR = "agentrt.orchestrator.v1.OrchestratorService"


def _register(system: RunningSystem, endpoint: str, tools: list[str]) -> Any:
    manifest = orchestrator_pb2.PluginManifest(version="1.0.0", endpoint=endpoint, tools=tools)
    request = orchestrator_pb2.RegisterPluginRequest(
        plugin_id=f"fuzz-plugin-{next(_example)}", plugin=orchestrator_pb2.Plugin(manifest=manifest)
    )
    return _answer(system, f"{ORCHESTRATOR}.RegisterPlugin", request)


def _ended(system: RunningSystem, name: str) -> jobs_pb2.Job:
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        job = _answer(
            system, "agentrt.gateway.v1.RuntimeService.GetJob", gateway_pb2.GetJobRequest(name=name)
        )
        if job is not None and job.state in TERMINAL:
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{name} did not end within {JOB_SECONDS:g} s")


def _check(system: RunningSystem, plugin: tuple[DrawnPlugin, str], data: st.DataObject) -> None:
    drawn, endpoint = plugin
    # Valid, distinct names, so that most registrations reach the schemas (the generic fuzz
    # test sends bad manifests).
    served = data.draw(
        st.lists(tool_specs(), min_size=1, max_size=3, unique_by=lambda tool: tool.name),
        label="served tools",
    )
    drawn.tools = plugin_pb2.ListToolsResponse(tools=served)
    declared = list(dict.fromkeys(tool.name for tool in served))
    registered = _register(system, endpoint, declared)
    if registered is None:
        return
    try:
        _answer(system, f"{ORCHESTRATOR}.ListTools", orchestrator_pb2.ListToolsRequest())
        _answer(
            system,
            f"{ORCHESTRATOR}.GetPlugin",
            orchestrator_pb2.GetPluginRequest(name=registered.name),
        )
        drawn.reply = data.draw(replies(), label="reply")
        tool = registered.tools[0].name
        spec = jobs_pb2.JobSpec(prompt=f"call {tool} {{}}", tools=[common_pb2.ToolSpec(name=tool)])
        job = _answer(
            system,
            "agentrt.gateway.v1.RuntimeService.Execute",
            gateway_pb2.ExecuteRequest(spec=spec),
        )
        if job is not None:
            ended = _ended(system, job.name)
            assert ended.state == common_pb2.JOB_STATE_SUCCEEDED, ended.failure
    finally:
        _answer(
            system,
            f"{ORCHESTRATOR}.DeletePlugin",
            orchestrator_pb2.DeletePluginRequest(name=registered.name),
        )


@given(data=st.data())
@fuzz_settings(examples=40)
def test_no_plugin_answer_fails_a_call_unknown_or_internal(
    sqlite_fuzz_system: RunningSystem, plugin: tuple[DrawnPlugin, str], data: st.DataObject
) -> None:
    _check(sqlite_fuzz_system, plugin, data)


@pytest.mark.integration
@given(data=st.data())
@fuzz_settings(examples=15)
def test_no_plugin_answer_fails_a_call_unknown_or_internal_on_postgres(
    pg_fuzz_system: RunningSystem, plugin: tuple[DrawnPlugin, str], data: st.DataObject
) -> None:
    """PostgreSQL refuses NUL characters that SQLite stores, so it has a run of its own."""
    _check(pg_fuzz_system, plugin, data)
