"""The policy service's unit: its store and servicer; no background work.

Writes are announced on the wake-up topic `policy.changed` (services/policy/names.py)."""

from __future__ import annotations

import grpc
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc

from services.kit.events import Wakeups
from services.kit.infra import Infrastructure
from services.policy.handlers import PolicyServicer
from services.policy.store import PolicySetStore, open_policy_store


class PolicyUnit:
    """Policy sets and decisions."""

    name = "policy"
    service_names = (policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,)

    def __init__(self, store: PolicySetStore, wakeups: Wakeups | None = None) -> None:
        self._store = store
        self._servicer = PolicyServicer(store, wakeups=wakeups)

    def register(self, server: grpc.aio.Server) -> None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        """No background work: policy is read and written only through its RPCs."""

    async def stop(self) -> None:
        """No background work to stop."""

    async def close(self) -> None:
        await self._store.close()


async def create_unit(infra: Infrastructure) -> PolicyUnit:
    """The unit on the process's storage; its writes wake the orchestrators through the
    process's wake-ups (in-process under `agentrt dev`, Redis across processes)."""
    return PolicyUnit(await open_policy_store(infra.storage("policy")), infra.wakeups)
