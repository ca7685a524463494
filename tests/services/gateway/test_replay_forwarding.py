"""ReplayService through the gateway: a tenant key sees, exports and plays its own
tenant's recordings only; import and re-execution need an admin key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from agentrt.client import Client
from agentrt.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from agentrt.replay.v1 import replay_pb2
from agentrt.replay.v1.replay_pb2 import StepRecordingRequest as Step

from services.dev import DEV_TENANT, LocalSystem
from services.gateway.admin import create_api_key
from tests.services.gateway.forwarding import forwarding_gateway

R = replay_pb2


@pytest.fixture
async def endpoint(system: LocalSystem) -> AsyncIterator[str]:
    async with forwarding_gateway(system) as forwarding:
        yield forwarding


async def key(system: LocalSystem, tenant: str) -> str:
    return await create_api_key(system.infra.storage("gateway"), tenant, "app")


async def recorded_run(system: LocalSystem, api_key: str) -> R.Recording:
    """A run of the key's tenant, made on the system's own gateway (the forwarding one
    watches an in-process event channel of its own under the embedded backends)."""
    async with Client(system.endpoint, api_key) as client:
        job = await client.run("hello", model="local")
        async with asyncio.timeout(10):
            while True:
                try:
                    found = await client.recordings.get(job.name)
                    if found.state == R.Recording.STATE_COMPLETE:
                        return found
                except NotFoundError:
                    pass
                await asyncio.sleep(0.05)


async def steps(count: int) -> AsyncIterator[Step.Advance]:
    for _ in range(count):
        yield Step.Advance(events=2)


async def test_a_tenant_key_reads_exports_and_plays_its_own_recordings(
    system: LocalSystem, endpoint: str
) -> None:
    mine = await key(system, DEV_TENANT)
    recording = await recorded_run(system, mine)
    async with Client(endpoint, mine) as client:
        assert recording.tenant == DEV_TENANT
        listed = await client.recordings.list()
        assert [found.name for found in listed] == [recording.name]
        data = b"".join([piece async for piece in client.recordings.export(recording.name)])
        assert data.startswith(b'{"format":"agentrt.recording"')
        played = [event async for event in client.recordings.play(recording.name)]
        assert len(played) == recording.event_count
        stepped = [step async for step in client.recordings.step(recording.name, steps(2))]
        assert [step.position for step in stepped] == [0, 2, 4]
        with pytest.raises(PermissionDeniedError):
            await client.recordings.import_file(data, recording_id="copy")
        with pytest.raises(PermissionDeniedError):
            await client.recordings.reexecute(recording.name)
        with pytest.raises(PermissionDeniedError):
            await client.recordings.list(tenant="globex")
    async with Client(endpoint, system.api_key) as admin:
        copy = await admin.recordings.import_file(data, recording_id="copy")
        assert copy.tenant == DEV_TENANT
        diff = await admin.recordings.reexecute(recording.name)
        assert diff.identical


async def test_another_tenants_recordings_are_not_found(system: LocalSystem, endpoint: str) -> None:
    recording = await recorded_run(system, await key(system, DEV_TENANT))
    async with Client(endpoint, await key(system, "globex")) as other:
        assert await other.recordings.list() == []
        with pytest.raises(NotFoundError):
            await other.recordings.get(recording.name)
        with pytest.raises(NotFoundError):
            [piece async for piece in other.recordings.export(recording.name)]
        with pytest.raises(NotFoundError):
            [event async for event in other.recordings.play(recording.name)]
        with pytest.raises(NotFoundError):
            [step async for step in other.recordings.step(recording.name, steps(1))]
    async with Client(endpoint, "agk_not_a_key") as nobody:
        with pytest.raises(UnauthenticatedError):
            await nobody.recordings.list()
