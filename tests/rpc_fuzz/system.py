"""A whole agentrt system served by a thread of its own (as `agentrt dev` runs it), and
blocking calls of any contract method on it, for the fuzz tests: Hypothesis drives plain
blocking calls while the services run on their own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from agentrt.gateway.v1 import gateway_pb2
from agentrt.jobs.v1 import jobs_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, settings

from services.dev import local_system
from tests.rpc_fuzz.messages import contract_methods

CALL_SECONDS = 5.0
"""Every call's deadline: a call still running then counts as answered (DEADLINE_EXCEEDED)."""

FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def expect_clear_status(method: str, error: grpc.RpcError) -> None:
    """Fails on UNKNOWN or INTERNAL, and on a status the transport dropped because the
    server made its headers too large (an error quoting a long value): the caller then
    sees RESOURCE_EXHAUSTED instead of the status the server meant."""
    code, details = error.code(), error.details() or ""
    assert code not in FORBIDDEN, f"{method} answered {code.name}: {details}"
    assert "metadata size exceeds" not in details, f"{method}: {details}"


METHODS = contract_methods()


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for calls on a running system; derandomized in CI."""
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
        job = call_method(
            channel, method_named("agentrt.gateway.v1.RuntimeService.Execute"), metadata
        )(gateway_pb2.ExecuteRequest(spec=jobs_pb2.JobSpec(prompt="hello")), CALL_SECONDS)
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


def method_named(full_name: str) -> MethodDescriptor:
    return next(method for method in METHODS if method.full_name == full_name)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def call_method(channel: grpc.Channel, method: MethodDescriptor, metadata: Any) -> Any:
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
