"""The replay service's unit: its store, servicer and the recorder that feeds the store."""

from __future__ import annotations

import grpc
from agentrt.policy.v1 import policy_pb2_grpc
from agentrt.replay.v1 import replay_pb2, replay_pb2_grpc

from services.kit.infra import Infrastructure
from services.orchestrator.policy import CachedPolicy, PolicyCacheConfig
from services.replay.handlers import ReplayServicer
from services.replay.history import JobsServiceHistory
from services.replay.recorder import Recorder
from services.replay.reexecutor import Reexecutor
from services.replay.store import RecordingStore, open_recording_store


class ReplayUnit:
    """Recordings of every run, and the recorder that makes them."""

    name = "replay"
    service_names = (replay_pb2.DESCRIPTOR.services_by_name["ReplayService"].full_name,)

    def __init__(self, store: RecordingStore, recorder: Recorder, reexecutor: Reexecutor) -> None:
        self._store = store
        self._recorder = recorder
        self._servicer = ReplayServicer(store, reexecutor)

    def register(self, server: grpc.aio.Server) -> None:
        replay_pb2_grpc.add_ReplayServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        self._recorder.start()

    async def stop(self) -> None:
        await self._recorder.stop()

    async def close(self) -> None:
        await self._store.close()


async def create_unit(infra: Infrastructure) -> ReplayUnit:
    """The unit on the process's storage, recording the process's event channel: a Redis
    stream outlives the process, so its position is resumed; the in-process stream of
    `agentrt dev` does not, so it is read from its start."""
    store = await open_recording_store(infra.storage("replay"))
    recorder = Recorder(
        store,
        infra.events,
        JobsServiceHistory(infra.channel("jobs")),
        durable_position=infra.redis is not None,
    )
    # Re-execution decides on the policy as it stands: no cached set is trusted.
    policy = CachedPolicy(
        policy_pb2_grpc.PolicyServiceStub(infra.channel("policy")),
        infra.wakeups,
        PolicyCacheConfig(revalidate_seconds=0),
    )
    reexecutor = Reexecutor(store, policy, infra.channel("jobs"), infra.channel("engine"))
    return ReplayUnit(store, recorder, reexecutor)
