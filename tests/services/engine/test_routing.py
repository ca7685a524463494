"""Routing across two real OpenAI-compatible upstreams: fallback at once, weights, Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.engine.breaker import BreakerSettings, InProcessBreakers
from services.engine.catalog import ModelCatalog
from services.engine.completion import CompletionEngine
from services.engine.deployments import RouteTarget
from services.engine.errors import ProviderRejected, RateLimited
from services.engine.idempotency import IdempotencyTracker
from services.engine.model import ChatMessage

from .openai_server import Failure, Reply
from .upstreams import Upstreams

HELLO = [ChatMessage("user", "hello")]
HANG = 5.0
"""How long the first upstream hangs; a fallback must land far sooner."""
AT_ONCE = 1.0
"""A generous ceiling for "at once" on a shared machine: a fifth of the hang."""


def engine_of(catalog: ModelCatalog, threshold: int = 5, rounds: int = 3) -> CompletionEngine:
    breakers = InProcessBreakers(BreakerSettings(failure_threshold=threshold))
    return CompletionEngine(
        catalog, IdempotencyTracker(), max_attempts=rounds, backoff_base=0.01, breakers=breakers
    )


@pytest.mark.parametrize(
    "failure",
    [Failure(429, retry_after="30"), Failure(500), Failure(503)],
    ids=["429-with-retry-after", "500", "503"],
)
async def test_a_failing_first_deployment_falls_over_to_the_second_at_once(
    upstreams: Upstreams, failure: Failure
) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.fail_next(1, failure)

    started = time.monotonic()
    completion = await engine.complete("fast", HELLO)
    elapsed = time.monotonic() - started

    assert completion.message.content == "echo: hello"
    assert completion.provider == "second"
    assert [(a.deployment, a.outcome) for a in completion.attempts] == [
        ("first", "rate_limited" if failure.status == 429 else "unavailable"),
        ("second", "ok"),
    ]
    # No sleep between: the Retry-After of 30 s is not waited for while "second" can serve.
    assert elapsed < AT_ONCE
    assert len(upstreams.first.chat_requests) == len(upstreams.second.chat_requests) == 1


async def test_a_hanging_first_deployment_times_out_and_the_second_answers(
    upstreams: Upstreams,
) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.reply_next(Reply(text="too late", response_delay=HANG))

    started = time.monotonic()
    completion = await engine.complete("fast", HELLO)
    elapsed = time.monotonic() - started

    assert completion.provider == "second"
    assert [a.outcome for a in completion.attempts] == ["timeout", "ok"]
    assert 0.3 <= completion.attempts[0].seconds < AT_ONCE
    assert elapsed < AT_ONCE


async def test_a_stream_falls_over_before_its_first_chunk(upstreams: Upstreams) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.fail_next(1, Failure(500))

    started = time.monotonic()
    chunks = [c async for c in engine.stream("fast", HELLO)]

    assert time.monotonic() - started < AT_ONCE
    assert "".join(c.text_delta for c in chunks) == "echo: hello"
    last = chunks[-1]
    assert (last.provider, last.model) == ("second", "gpt-test")
    assert [(a.deployment, a.outcome) for a in last.attempts] == [
        ("first", "unavailable"),
        ("second", "ok"),
    ]


async def test_a_rejection_is_not_fallen_over(upstreams: Upstreams) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.fail_next(1, Failure(400, "bad request"))

    with pytest.raises(ProviderRejected):
        await engine.complete("fast", HELLO)
    assert upstreams.second.chat_requests == []


async def test_retry_after_is_honoured_when_nothing_else_can_serve(upstreams: Upstreams) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.fail_next(1, Failure(429, retry_after="0.4"))
    upstreams.second.fail_next(1, Failure(429, retry_after="0.3"))

    started = time.monotonic()
    completion = await engine.complete("fast", HELLO)

    assert time.monotonic() - started >= 0.3
    assert [a.outcome for a in completion.attempts] == ["rate_limited", "rate_limited", "ok"]


async def test_retry_after_beyond_the_deadline_is_passed_on_at_once(
    upstreams: Upstreams,
) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.fail_next(1, Failure(429, retry_after="2"))
    upstreams.second.fail_next(1, Failure(429, retry_after="2"))

    started = time.monotonic()
    with pytest.raises(RateLimited):
        await engine.complete("fast", HELLO, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - started < 0.5


async def test_equal_priorities_share_calls_by_weight(upstreams: Upstreams) -> None:
    targets = [RouteTarget("first", "gpt-test", weight=3), RouteTarget("second", "gpt-test")]
    catalog = await upstreams.catalog(targets)

    firsts = Counter(catalog.plan("fast")[0].provider.name for _ in range(4000))

    assert 0.70 < firsts["first"] / 4000 < 0.80
    # Whichever comes first, the other is its fallback.
    assert {r.provider.name for r in catalog.plan("fast")} == {"first", "second"}


async def test_every_attempt_is_an_event_on_the_span(upstreams: Upstreams) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = engine_of(await upstreams.catalog())
    upstreams.first.fail_next(1, Failure(503))

    with provider.get_tracer("test").start_as_current_span("call"):
        await engine.complete("fast", HELLO)

    [span] = exporter.get_finished_spans()
    events = [e for e in span.events if e.name == "engine.attempt"]
    assert [(e.attributes or {})["agentrt.deployment"] for e in events] == ["first", "second"]
    assert [(e.attributes or {})["agentrt.attempt.outcome"] for e in events] == [
        "unavailable",
        "ok",
    ]


async def test_concurrent_calls_fall_over_independently(upstreams: Upstreams) -> None:
    engine = engine_of(await upstreams.catalog(), threshold=100)
    upstreams.first.fail_next(4, Failure(500))

    answers = await asyncio.gather(*(engine.complete("fast", HELLO) for _ in range(8)))

    assert Counter(a.provider for a in answers) == {"second": 4, "first": 4}


async def test_a_stream_whose_first_deployment_hangs_lands_on_the_second(
    upstreams: Upstreams,
) -> None:
    engine = engine_of(await upstreams.catalog())
    upstreams.first.reply_next(Reply(text="too late", response_delay=HANG))

    started = time.monotonic()
    chunks = [c async for c in engine.stream("fast", HELLO)]

    assert time.monotonic() - started < AT_ONCE
    assert "".join(c.text_delta for c in chunks) == "echo: hello"
    assert [a.outcome for a in chunks[-1].attempts] == ["timeout", "ok"]
