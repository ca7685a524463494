"""The PluginStore conformance suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from agentrt.common.v1.common_pb2 import ToolKind, ToolSpec
from agentrt.orchestrator.v1.orchestrator_pb2 import Plugin, PluginManifest

from services.kit.errors import AlreadyExists, NotFound, RequestIdReused
from services.orchestrator.plugins.store import HealthCheck, NewPlugin, PluginStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def manifest(tools: tuple[str, ...] = ("slugify",)) -> PluginManifest:
    return PluginManifest(
        version="1.2.0",
        endpoint="tools.internal:50061",
        tools=tools,
        permissions=["network"],
        description="text tools",
    )


def tool(name: str, description: str = "v1") -> ToolSpec:
    return ToolSpec(name=name, description=description, kind=ToolKind.TOOL_KIND_PLUGIN)


def new_plugin(
    plugin_id: str = "text", request_id: str = "", request_hash: bytes = b"hash-1"
) -> NewPlugin:
    return NewPlugin(plugin_id, manifest(), [tool("slugify")], request_id, request_hash)


async def create(store: PluginStore, plugin_id: str = "text") -> Plugin:
    created, fresh = await store.create(new_plugin(plugin_id), T0)
    assert fresh
    return created


async def test_create_stores_a_healthy_plugin_with_its_manifest_and_tools(
    store: PluginStore,
) -> None:
    created = await create(store)

    assert created.name == "plugins/text"
    assert created.manifest == manifest()
    assert [(t.name, t.kind) for t in created.tools] == [("slugify", ToolKind.TOOL_KIND_PLUGIN)]
    assert created.state == Plugin.STATE_HEALTHY
    assert created.create_time.ToDatetime(tzinfo=UTC) == T0
    assert created.last_check_time.ToDatetime(tzinfo=UTC) == T0
    assert created.last_check_error == ""
    assert await store.get("text") == created


async def test_create_with_a_taken_id_is_already_exists(store: PluginStore) -> None:
    await create(store)
    other = NewPlugin("text", manifest(("other",)), [tool("other")], "", b"hash-2")
    with pytest.raises(AlreadyExists):
        await store.create(other, later(1))
    assert list((await store.get("text")).manifest.tools) == ["slugify"]


async def test_create_with_a_seen_request_id_returns_the_first_plugin(store: PluginStore) -> None:
    first, created = await store.create(new_plugin(request_id="req-1"), T0)
    again, created_again = await store.create(new_plugin(request_id="req-1"), later(1))

    assert created and not created_again
    assert again == first


async def test_a_request_id_reused_with_another_body_is_refused(store: PluginStore) -> None:
    await store.create(new_plugin(request_id="req-1"), T0)
    with pytest.raises(RequestIdReused):
        await store.create(new_plugin("other", "req-1", b"hash-2"), later(1))
    with pytest.raises(NotFound):
        await store.get("other")


async def test_concurrent_creates_with_one_request_id_make_one_plugin(store: PluginStore) -> None:
    results = await asyncio.gather(
        *(store.create(new_plugin(request_id="req-1"), T0) for _ in range(8))
    )

    assert sum(created for _, created in results) == 1
    assert len({plugin.SerializeToString(deterministic=True) for plugin, _ in results}) == 1
    assert [p.name for p in await store.list_all()] == ["plugins/text"]


async def test_list_all_sorts_by_id(store: PluginStore) -> None:
    for plugin_id in ("b-two", "a-one", "c-three", "a-one-b"):
        await create(store, plugin_id)

    assert [p.name for p in await store.list_all()] == [
        "plugins/a-one",
        "plugins/a-one-b",
        "plugins/b-two",
        "plugins/c-three",
    ]


async def test_get_and_delete_of_an_unknown_plugin_are_not_found(store: PluginStore) -> None:
    with pytest.raises(NotFound):
        await store.get("missing")
    with pytest.raises(NotFound):
        await store.delete("missing")


async def test_delete_removes_the_plugin_and_frees_its_id(store: PluginStore) -> None:
    await create(store)
    await store.delete("text")

    with pytest.raises(NotFound):
        await store.get("text")
    assert await store.list_all() == []
    again, created = await store.create(new_plugin(), later(1))
    assert created and again.create_time.ToDatetime(tzinfo=UTC) == later(1)


async def test_record_check_stores_the_state_error_and_time(store: PluginStore) -> None:
    created = await create(store)
    failed = HealthCheck(Plugin.STATE_UNHEALTHY, later(5), "ListTools failed: UNAVAILABLE")

    assert await store.record_check(created, failed)

    stored = await store.get("text")
    assert stored.state == Plugin.STATE_UNHEALTHY
    assert stored.last_check_time.ToDatetime(tzinfo=UTC) == later(5)
    assert stored.last_check_error == "ListTools failed: UNAVAILABLE"
    assert [t.description for t in stored.tools] == ["v1"]


async def test_a_healthy_check_refreshes_the_tools(store: PluginStore) -> None:
    created = await create(store)
    await store.record_check(created, HealthCheck(Plugin.STATE_UNHEALTHY, later(1), "down"))
    healthy = HealthCheck(Plugin.STATE_HEALTHY, later(2), tools=[tool("slugify", "v2")])

    assert await store.record_check(created, healthy)

    stored = await store.get("text")
    assert (stored.state, stored.last_check_error) == (Plugin.STATE_HEALTHY, "")
    assert [t.description for t in stored.tools] == ["v2"]


async def test_a_check_of_a_deleted_plugin_changes_nothing(store: PluginStore) -> None:
    old = await create(store)
    await store.delete("text")
    again, _ = await store.create(new_plugin(), later(1))

    down = HealthCheck(Plugin.STATE_UNHEALTHY, later(2), "down")
    assert not await store.record_check(old, down)
    assert await store.get("text") == again
