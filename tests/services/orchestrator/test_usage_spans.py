"""Prompt-cache tokens on the spans of a job whose model reports them: a real Anthropic-style
server behind the engine, its answers counting cache reads and writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentrt.common.v1 import common_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.services.engine.anthropic_server import CACHE_READ, CACHE_WRITE, AnthropicServer, Reply

from .conftest import System, seconds_until, seconds_until_span

ENGINE_CONFIG = """
deployments:
  - {{name: claude, provider: anthropic, base_url: "{url}", api_key_env: CLAUDE_KEY,
     models: [claude-test]}}
models:
  claude-cached:
    - {{deployment: claude, model: claude-test}}
"""


@pytest.fixture
async def anthropic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AnthropicServer]:
    """The provider the engine of `system` routes `claude-cached` to."""
    server = AnthropicServer()
    await server.start()
    config = tmp_path / "engine.yaml"
    config.write_text(ENGINE_CONFIG.format(url=server.url))
    monkeypatch.setenv("AGENTRT_ENGINE_CONFIG", str(config))
    monkeypatch.setenv("CLAUDE_KEY", server.api_key)
    yield server
    await server.stop()


@pytest.fixture
async def system(anthropic: AnthropicServer, system: System) -> System:
    """The services of conftest's `system`, their engine configured once `anthropic` runs."""
    return system


async def test_cache_reads_and_writes_are_on_each_call_and_on_the_job(
    anthropic: AnthropicServer, system: System, spans: InMemorySpanExporter
) -> None:
    anthropic.replies.append(Reply(tool_uses=(("calculator", {"expression": "6 * 7"}),)))
    job = await system.create_job(
        prompt="what is 6 * 7?",
        model="claude-cached",
        tools=[common_pb2.ToolSpec(name="calculator")],
    )
    pool = system.pool("worker-a")
    await pool.start()

    assert (await system.end(job.name)).type == common_pb2.EVENT_TYPE_JOB_SUCCEEDED
    done = await system.get_job(job.name)
    assert (done.usage.model_calls, done.usage.cached_input_tokens) == (2, 2 * CACHE_READ)
    await seconds_until(pool.wait_idle())
    job_span = await seconds_until_span(spans, "agent.job")
    runs = [s for s in spans.get_finished_spans() if s.name == "agent.run"]

    assert len(runs) == 2
    for run in runs:
        assert run.attributes is not None
        assert run.attributes["gen_ai.usage.cache_read.input_tokens"] == CACHE_READ
        assert run.attributes["gen_ai.usage.cache_creation.input_tokens"] == CACHE_WRITE
        input_tokens = run.attributes["gen_ai.usage.input_tokens"]
        assert isinstance(input_tokens, int) and input_tokens > CACHE_READ + CACHE_WRITE, (
            "the cache counts are parts of the input tokens"
        )
    assert job_span.attributes is not None
    assert job_span.attributes["gen_ai.usage.input_tokens"] == done.usage.input_tokens
    assert job_span.attributes["gen_ai.usage.cache_read.input_tokens"] == 2 * CACHE_READ
    assert job_span.attributes["gen_ai.usage.cache_creation.input_tokens"] == 2 * CACHE_WRITE
