"""A usage as span attributes, named by the OpenTelemetry GenAI semantic conventions."""

from __future__ import annotations

from agentrt.common.v1.common_pb2 import Usage

INPUT_TOKENS = "gen_ai.usage.input_tokens"
"""Prompt tokens, the cached ones included (as `Usage.input_tokens` counts them)."""
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
"""The part of the input tokens served from the provider's prompt cache."""
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
"""The part of the input tokens written to the provider's prompt cache."""
COST = "agentrt.usage.cost"
"""US dollars as the exact decimal string of `Usage.cost`; the conventions name no cost."""


def usage_attributes(usage: Usage) -> dict[str, str | int]:
    """The token counts and cost of `usage`. Input and output tokens are always there;
    prompt-cache reads and writes, and the cost, only when the usage has them, so a
    provider without a prompt cache (or a price) adds no zeros to every span."""
    attributes: dict[str, str | int] = {
        INPUT_TOKENS: usage.input_tokens,
        OUTPUT_TOKENS: usage.output_tokens,
    }
    if usage.cached_input_tokens:
        attributes[CACHE_READ_TOKENS] = usage.cached_input_tokens
    if usage.cache_write_input_tokens:
        attributes[CACHE_WRITE_TOKENS] = usage.cache_write_input_tokens
    if usage.cost:
        attributes[COST] = usage.cost
    return attributes
