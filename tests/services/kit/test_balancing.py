"""Kit channels spread calls over every replica a target names, and servers age their
connections out so that clients find replicas added since, without cutting event streams."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentrt.policy.v1 import policy_pb2, policy_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.channels import open_channel
from services.kit.config import ConfigError
from services.kit.interceptors import LONG_LIVED
from services.kit.server import Server, ServiceUnit
from services.kit.storage import StorageConfig, migrate
from services.policy.server import PolicyUnit
from services.policy.store import SQL_DIRECTORY, open_policy_store
from tests.services.kit.dns import dns_server

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
"""Three addresses of the loopback device: three replicas on one port, as pods are."""
POLICY = "agentrt.policy.v1.PolicyService"
WHO = "policySets/replica"
"""A policy set each replica's own database holds, described by the replica's address."""


class Replicas:
    """Policy servers on one port, one per host, each on a database of its own."""

    def __init__(self, data: Path) -> None:
        self._data = data
        self.port = 0
        self.servers: dict[str, Server] = {}

    async def start(self, host: str, *more: ServiceUnit) -> Server:
        storage = StorageConfig("sqlite", self._data / f"{host}.db", None, "policy")
        await migrate(storage, SQL_DIRECTORY)
        server = Server(f"{host}:{self.port}", "policy")
        self.port = server.port
        await server.start([PolicyUnit(await open_policy_store(storage)), *more])
        self.servers[host] = server
        async with grpc.aio.insecure_channel(f"{host}:{self.port}") as channel:
            await policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicySet(
                policy_pb2.CreatePolicySetRequest(
                    policy_set_id="replica", policy_set=policy_pb2.PolicySet(description=host)
                ),
                timeout=5,
            )
        return server

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop(grace=1.0) for server in self.servers.values()))


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    started = Replicas(tmp_path)
    yield started
    await started.stop()


def ipv4_target(hosts: tuple[str, ...], port: int) -> str:
    """Every host as one target, with no name to resolve."""
    return "ipv4:" + ",".join(f"{host}:{port}" for host in hosts)


def dns_target(dns_port: int, port: int) -> str:
    """A name the test's DNS server resolves, as a headless Service's name is: its answer
    changes when a pod is added."""
    return f"dns://127.0.0.1:{dns_port}/policy-pods.test:{port}"


async def who_answers(channel: grpc.aio.Channel) -> str:
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    policy_set = await stub.GetPolicySet(policy_pb2.GetPolicySetRequest(name=WHO), timeout=5)
    return str(policy_set.description)


async def answers(channel: grpc.aio.Channel, calls: int) -> Counter[str]:
    """How many of `calls` calls, made one after another, each replica answered."""
    return Counter([await who_answers(channel) for _ in range(calls)])


async def test_calls_spread_over_every_replica_of_the_target(replicas: Replicas) -> None:
    for host in HOSTS:
        await replicas.start(host)
    channel = open_channel(ipv4_target(HOSTS, replicas.port), 5.0)
    try:
        await channel.channel_ready()
        answered = await answers(channel, 60)
    finally:
        await channel.close(None)
    assert set(answered) == set(HOSTS), answered
    assert min(answered.values()) >= 10, answered


class SlowToStop:
    """A unit whose background work takes until `stopped` is set to stop: the server it
    is in drains meanwhile, NOT_SERVING but still answering."""

    name = "slow"
    service_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    def register(self, server: grpc.aio.Server) -> None:
        pass  # no servicer: it only holds the drain up

    async def start(self) -> None:
        pass  # no background work to start: only its stop takes time

    async def stop(self) -> None:
        await self.stopped.wait()

    async def close(self) -> None:
        pass  # nothing to close


async def test_a_draining_replica_gets_no_new_calls(replicas: Replicas) -> None:
    slow = SlowToStop()
    draining = await replicas.start(HOSTS[0], slow)
    for host in HOSTS[1:]:
        await replicas.start(host)
    channel = open_channel(ipv4_target(HOSTS, replicas.port), 5.0)
    try:
        assert set(await answers(channel, 30)) == set(HOSTS)
        stopping = asyncio.create_task(draining.stop(grace=1.0))
        async with grpc.aio.insecure_channel(f"{HOSTS[0]}:{replicas.port}") as direct:
            watch = health_pb2_grpc.HealthStub(direct).Watch(health_pb2.HealthCheckRequest())
            async for reply in watch:
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
            watch.cancel()
            # It still answers a caller that asks it alone.
            assert await who_answers(direct) == HOSTS[0]
        await asyncio.sleep(0.2)  # the health watch streams carry the change
        answered = await answers(channel, 30)
        assert set(answered) == set(HOSTS[1:]), answered
        slow.stopped.set()
        await stopping
    finally:
        await channel.close(None)


async def test_pick_first_keeps_every_call_on_one_replica(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_GRPC_LB_POLICY", "pick_first")
    for host in HOSTS:
        await replicas.start(host)
    channel = open_channel(ipv4_target(HOSTS, replicas.port), 5.0)
    try:
        assert len(await answers(channel, 20)) == 1
    finally:
        await channel.close(None)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTRT_GRPC_LB_POLICY", "least_request"),
        ("AGENTRT_GRPC_DNS_MIN_INTERVAL_SECONDS", "-1"),
    ],
)
def test_a_bad_channel_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        open_channel("127.0.0.1:1", 5.0)


@pytest.mark.parametrize(
    "variable",
    ["AGENTRT_GRPC_MAX_CONNECTION_AGE_SECONDS", "AGENTRT_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS"],
)
def test_a_bad_connection_age_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "soon")
    with pytest.raises(ConfigError, match=variable):
        Server("127.0.0.1:0", "policy")


@pytest.fixture
def short_connection_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections live a second, and a channel may look its name up again at once."""
    monkeypatch.setenv("AGENTRT_GRPC_MAX_CONNECTION_AGE_SECONDS", "1")
    monkeypatch.setenv("AGENTRT_GRPC_DNS_MIN_INTERVAL_SECONDS", "0.1")


@pytest.mark.usefixtures("short_connection_age")
async def test_a_replica_started_later_gets_calls_once_connections_age_out(
    replicas: Replicas,
) -> None:
    for host in HOSTS[:2]:
        await replicas.start(host)
    async with dns_server(list(HOSTS[:2])) as (dns, dns_port):
        channel = open_channel(dns_target(dns_port, replicas.port), 5.0)
        try:
            assert set(await answers(channel, 20)) == set(HOSTS[:2])
            await replicas.start(HOSTS[2])
            dns.addresses.append(HOSTS[2])
            answered: Counter[str] = Counter()
            deadline = time.monotonic() + 10
            while HOSTS[2] not in answered and time.monotonic() < deadline:
                answered[await who_answers(channel)] += 1
                await asyncio.sleep(0.05)
        finally:
            await channel.close(None)
    assert HOSTS[2] in answered, answered


async def watch_health(channel: grpc.aio.Channel) -> Any:
    """A long-lived stream: the policy service's health, SERVING until the server drains."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=POLICY), metadata=LONG_LIVED
    )
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    return watch


async def statuses_until_it_ends(watch: Any) -> list[int]:
    """What the stream delivers until it ends or breaks (a drain cuts what is left)."""
    statuses = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        while (reply := await watch.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            statuses.append(reply.status)
    return statuses


@pytest.mark.usefixtures("short_connection_age")
async def test_a_stream_outlives_the_age_of_its_connection(replicas: Replicas) -> None:
    server = await replicas.start(HOSTS[0])
    async with dns_server([HOSTS[0]]) as (dns, dns_port):
        channel = open_channel(dns_target(dns_port, replicas.port), 5.0)
        try:
            watch = await watch_health(channel)
            looked_up = dns.queries
            # Calls go on over the connections that replace the aged ones, none failing.
            for _ in range(30):
                assert await who_answers(channel) == HOSTS[0]
                await asyncio.sleep(0.1)
            assert dns.queries > looked_up, "no connection was aged out"
            # The stream opened before those age-outs still delivers what happens now.
            await server.stop(grace=1.0)
            assert health_pb2.HealthCheckResponse.NOT_SERVING in await statuses_until_it_ends(watch)
        finally:
            await channel.close(None)


@pytest.mark.usefixtures("short_connection_age")
async def test_a_stream_longer_than_age_and_grace_is_cut_unavailable(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a watcher resumes from (the Python client reopens WatchJob after its last
    event on UNAVAILABLE)."""
    monkeypatch.setenv("AGENTRT_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", "0.5")
    await replicas.start(HOSTS[0])
    channel = open_channel(f"{HOSTS[0]}:{replicas.port}", 5.0)
    try:
        watch = await watch_health(channel)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await asyncio.wait_for(watch.read(), 10)
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close(None)
