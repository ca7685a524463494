"""Generated requests on every RPC of every contract: none may end UNKNOWN or INTERNAL.

The services come from the generated descriptors, so a new RPC is covered as soon as a
unit serves it. Each backend's whole system runs in a thread of its own (as `agentrt dev`
does), so that Hypothesis drives plain blocking calls. A streaming RPC is judged by its
first response. In CI the examples are derandomized, so that a run is repeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dev import local_system
from tests.conftest import PG_ADMIN_DSN, REDIS_URL, _admin, _with_database
from tests.rpc_fuzz.messages import contract_methods, messages

CALL_SECONDS = 5.0
"""Every call's deadline: a call still running then counts as answered (DEADLINE_EXCEEDED)."""

FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)

METHODS = contract_methods()

# The services' own thread draws jitter from `random` while Hypothesis draws a request;
# the strategies themselves do not use it.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=os.environ.get("CI") == "true",
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@dataclass
class RunningSystem:
    """A whole system served by a thread's event loop, and what the fuzzer knows of it."""

    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    served: frozenset[str]
    plausible: list[str]


def _serve_in_thread(data_dir: Path, ready: Future[Any], urls: dict[str, Any]) -> None:
    """Runs the system until the event handed out with it is set from another thread."""

    async def main() -> None:
        stop = asyncio.Event()
        async with local_system(data_dir, **urls) as system:
            ready.set_result((system, asyncio.get_running_loop(), stop))
            await stop.wait()

    try:
        asyncio.run(main())
    except BaseException as error:
        if not ready.done():
            ready.set_exception(error)
        raise


@contextlib.contextmanager
def running_system(data_dir: Path, **urls: str) -> Iterator[RunningSystem]:
    """Starts every service in a thread, seeds a job, and stops it all on exit."""
    ready: Future[Any] = Future()
    thread = threading.Thread(target=_serve_in_thread, args=(data_dir, ready, urls), daemon=True)
    thread.start()
    system, loop, stop = ready.result(timeout=60)
    channel = grpc.insecure_channel(system.endpoint)
    try:
        metadata = (("authorization", f"Bearer {system.api_key}"),)
        served = _served_services(channel)
        job = _call(channel, _method("agentrt.gateway.v1.RuntimeService.Execute"), metadata)(
            gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="hello")), CALL_SECONDS
        )
        plausible = [
            *("", "dev", "x", "fuzz-1", job.name, job.spec.model, f"{job.name}/actions/x"),
            *("prices/" + job.spec.model, "budgets/fuzz-1", "policySets/fuzz-1", "plugins/fuzz-1"),
            *("127.0.0.1:1", "1.5", "0.000001", "USD"),
        ]
        yield RunningSystem(channel, metadata, served, plausible)
    finally:
        channel.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)


def _served_services(channel: grpc.Channel) -> frozenset[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=CALL_SECONDS)))
    return frozenset(service.name for service in answer.list_services_response.service)


def _method(full_name: str) -> MethodDescriptor:
    return next(method for method in METHODS if method.full_name == full_name)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _call(channel: grpc.Channel, method: MethodDescriptor, metadata: Any) -> Any:
    """A blocking callable for any method; streams give their first response."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    deserialize = response_class.FromString
    if not method.client_streaming and not method.server_streaming:
        unary = channel.unary_unary(path, _serialize, deserialize)
        return lambda request, timeout: unary(request, timeout=timeout, metadata=metadata)
    if method.client_streaming and method.server_streaming:
        both = channel.stream_stream(path, _serialize, deserialize)
        return lambda request, timeout: _first(
            both(iter([request]), timeout=timeout, metadata=metadata)
        )
    if method.client_streaming:
        upload = channel.stream_unary(path, _serialize, deserialize)
        return lambda request, timeout: upload(iter([request]), timeout=timeout, metadata=metadata)
    stream = channel.unary_stream(path, _serialize, deserialize)
    return lambda request, timeout: _first(stream(request, timeout=timeout, metadata=metadata))


def _first(responses: Any) -> Any:
    try:
        return next(iter(responses), None)
    finally:
        responses.cancel()


@pytest.fixture(scope="module")
def sqlite_fuzz_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with running_system(tmp_path_factory.mktemp("fuzz-sqlite")) as system:
        yield system


@pytest.fixture(scope="module")
def pg_fuzz_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    database = f"agentrt_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f"CREATE DATABASE {database} TEMPLATE template0"))
    prefix = f"agentrt-test:{secrets.token_hex(6)}:"
    try:
        with running_system(
            tmp_path_factory.mktemp("fuzz-pg"),
            database_url=_with_database(PG_ADMIN_DSN, database),
            redis_url=REDIS_URL,
            redis_prefix=prefix,
        ) as system:
            yield system
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        asyncio.run(_unlink_prefix(prefix))


async def _unlink_prefix(prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


def _check(system: RunningSystem, method: MethodDescriptor, data: st.DataObject) -> None:
    if method.containing_service.full_name not in system.served:
        pytest.skip(f"no unit of this release serves {method.containing_service.full_name}")
    request = data.draw(messages(method.input_type, system.plausible), label="request")
    call = _call(system.channel, method, system.metadata)
    try:
        call(request, CALL_SECONDS)
    except grpc.RpcError as error:
        code = error.code()
        assert code not in FORBIDDEN, f"{method.full_name} answered {code.name}: {error.details()}"


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.full_name)
@given(data=st.data())
@_fuzz_settings(examples=6)
def test_no_request_fails_unknown_or_internal(
    sqlite_fuzz_system: RunningSystem, method: MethodDescriptor, data: st.DataObject
) -> None:
    _check(sqlite_fuzz_system, method, data)


@pytest.mark.integration
@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.full_name)
@given(data=st.data())
@_fuzz_settings(examples=3)
def test_no_request_fails_unknown_or_internal_on_postgres(
    pg_fuzz_system: RunningSystem, method: MethodDescriptor, data: st.DataObject
) -> None:
    """PostgreSQL refuses what SQLite stores (NUL characters), so it has a run of its own."""
    _check(pg_fuzz_system, method, data)
