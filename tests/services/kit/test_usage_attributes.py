"""A usage as span attributes: the GenAI convention's names, and nothing for what is zero."""

from __future__ import annotations

from agentrt.common.v1.common_pb2 import Usage

from services.kit.usage_attributes import usage_attributes


def test_prompt_cache_reads_writes_and_cost_are_named_by_the_conventions() -> None:
    usage = Usage(
        input_tokens=100,
        output_tokens=7,
        cached_input_tokens=60,
        cache_write_input_tokens=30,
        cost="0.000125",
    )
    assert usage_attributes(usage) == {
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.usage.cache_read.input_tokens": 60,
        "gen_ai.usage.cache_creation.input_tokens": 30,
        "agentrt.usage.cost": "0.000125",
    }


def test_a_usage_without_cache_or_price_has_only_its_token_counts() -> None:
    assert usage_attributes(Usage(input_tokens=3)) == {
        "gen_ai.usage.input_tokens": 3,
        "gen_ai.usage.output_tokens": 0,
    }
