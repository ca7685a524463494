"""The in-process idempotency tracker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace

import pytest

from services.engine.errors import IdempotencyConflict, ProviderUnavailable
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import (
    ChatMessage,
    Completion,
    CompletionChunk,
    IdempotencyHook,
    TokenUsage,
    closing_chunk,
)


def answer(text: str) -> Completion:
    return Completion(
        message=ChatMessage("assistant", text),
        finish_reason="stop",
        usage=TokenUsage(1, 1),
        model="local",
        provider="local",
    )


def made(text: str) -> Completion:
    """The answer of a call the tracker made (hooks start, complete)."""
    return replace(answer(text), idempotency_hooks=("start", "complete"))


def replayed(text: str) -> Completion:
    """The answer of a call the tracker answered from its record or a call in flight."""
    return replace(answer(text), replayed=True, idempotency_hooks=("hit",))


class CountingCall:
    """A model call that counts its runs and can be held until a gate opens."""

    def __init__(self, text: str = "done", gate: asyncio.Event | None = None) -> None:
        self.runs = 0
        self.text = text
        self.gate = gate
        self.started = asyncio.Event()

    async def __call__(self) -> Completion:
        self.runs += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return answer(f"{self.text} #{self.runs}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_calls_with_one_key_run_once() -> None:
    tracker = IdempotencyTracker()
    gate = asyncio.Event()
    call = CountingCall(gate=gate)

    async def open_gate() -> None:
        gate.set()

    # Tasks start in order: the first runs the call and parks at the gate, the others
    # find the call in flight and wait for it, and only then does the gate open.
    results = await asyncio.gather(*(tracker.run("k", "fp", call) for _ in range(5)), open_gate())

    assert call.runs == 1
    assert results[0] == made("done #1")
    assert results[1:5] == [replayed("done #1")] * 4
    assert tracker.counts == {"start": 1, "complete": 1, "hit": 4}


async def test_completed_key_returns_the_recorded_result() -> None:
    tracker = IdempotencyTracker()
    call = CountingCall()

    first = await tracker.run("k", "fp", call)
    second = await tracker.run("k", "fp", call)

    assert first == made("done #1")
    assert second == replayed("done #1")
    assert call.runs == 1


async def test_same_key_with_another_request_conflicts() -> None:
    tracker = IdempotencyTracker()
    gate = asyncio.Event()
    held = CountingCall(gate=gate)
    running = asyncio.create_task(tracker.run("k", "fp-1", held))
    await held.started.wait()

    with pytest.raises(IdempotencyConflict):
        await tracker.run("k", "fp-2", CountingCall())
    gate.set()
    await running
    with pytest.raises(IdempotencyConflict) as conflict:
        await tracker.run("k", "fp-2", CountingCall())
    assert conflict.value.key == "k"
    assert not conflict.value.retryable
    assert conflict.value.idempotency_hooks == ("conflict",)


async def test_a_failed_call_is_not_recorded() -> None:
    tracker = IdempotencyTracker()
    attempts = 0

    async def flaky() -> Completion:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ProviderUnavailable("p", "down")
        return answer("recovered")

    with pytest.raises(ProviderUnavailable) as failed:
        await tracker.run("k", "fp", flaky)
    assert failed.value.idempotency_hooks == ("start", "fail")
    recovered = await tracker.run("k", "fp", flaky)
    assert recovered == made("recovered")
    assert attempts == 2
    assert len(tracker) == 1


async def test_waiters_get_the_error_of_the_call_they_waited_for() -> None:
    tracker = IdempotencyTracker()
    gate = asyncio.Event()
    runs = 0

    async def failing() -> Completion:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise ProviderUnavailable("p", "down")

    async def open_gate() -> None:
        gate.set()

    outcomes = await asyncio.gather(
        tracker.run("k", "fp", failing),
        tracker.run("k", "fp", failing),
        open_gate(),
        return_exceptions=True,
    )

    assert runs == 1
    leader, joiner = outcomes[:2]
    assert isinstance(leader, ProviderUnavailable) and isinstance(joiner, ProviderUnavailable)
    assert (leader.idempotency_hooks, joiner.idempotency_hooks) == (("start", "fail"), ("hit",))
    assert len(tracker) == 0


async def test_waiters_take_over_when_the_running_caller_is_cancelled() -> None:
    tracker = IdempotencyTracker()
    never = CountingCall(gate=asyncio.Event())
    leader = asyncio.create_task(tracker.run("k", "fp", never))
    await never.started.wait()
    waiter = asyncio.create_task(tracker.run("k", "fp", CountingCall("second")))
    await asyncio.sleep(0)  # let the waiter find the call in flight

    leader.cancel()

    # It joined (hit), then made the call itself when the leader went away.
    hooks: tuple[IdempotencyHook, ...] = ("hit", "start", "complete")
    assert await waiter == replace(answer("second #1"), idempotency_hooks=hooks)
    assert never.runs == 1


async def test_each_chunk_of_a_stream_carries_the_hooks_fired_since_the_one_before() -> None:
    tracker = IdempotencyTracker()

    async def words() -> AsyncGenerator[CompletionChunk, None]:
        yield CompletionChunk(text_delta="a ")
        yield CompletionChunk(text_delta="b")
        yield closing_chunk(answer("a b"), "a b")

    first = [chunk async for chunk in tracker.stream("k", "fp", words)]
    again = [chunk async for chunk in tracker.stream("k", "fp", words)]

    assert [c.idempotency_hooks for c in first] == [("start",), (), ("complete",)]
    assert [(c.idempotency_hooks, c.replayed) for c in again] == [(("hit",), True)]


async def test_results_expire_after_the_ttl() -> None:
    clock = FakeClock()
    tracker = IdempotencyTracker(ttl_seconds=60, clock=clock)
    call = CountingCall()
    await tracker.run("k", "fp", call)

    clock.now += 59
    assert (await tracker.run("k", "fp", call)).message == answer("done #1").message
    clock.now += 2
    assert await tracker.run("k", "fp", call) == made("done #2")


async def test_at_most_max_entries_are_kept_oldest_first_out() -> None:
    tracker = IdempotencyTracker(max_entries=2)
    calls = {key: CountingCall(key) for key in "abc"}
    for key, call in calls.items():
        await tracker.run(key, "fp", call)

    assert len(tracker) == 2
    assert await tracker.run("c", "fp", calls["c"]) == replayed("c #1")
    assert await tracker.run("a", "fp", calls["a"]) == made("a #2")


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        IdempotencyTracker(ttl_seconds=0)
    with pytest.raises(ValueError, match="max_entries"):
        IdempotencyTracker(max_entries=0)


async def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="key"):
        await IdempotencyTracker().run("", "fp", CountingCall())
