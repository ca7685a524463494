"""The ledger's metrics: tokens (and their prompt-cache part) and cost spent by tenant and
model, and budget denials."""

from __future__ import annotations

from collections.abc import Iterable

from services.kit.metrics import meter
from services.ledger.records import UsageEntry

_tokens = meter().create_counter(
    "agentrt.ledger.tokens",
    unit="{token}",
    description="Tokens recorded, by tenant, model and direction (input, output)",
)
_cache_tokens = meter().create_counter(
    "agentrt.ledger.prompt_cache.tokens",
    unit="{token}",
    description="Input tokens read from or written to a provider's prompt cache, by tenant, "
    "model and use (read, write): a part of the input tokens, not tokens besides them",
)
_cost = meter().create_counter(
    "agentrt.ledger.cost",
    unit="USD",
    description="Cost recorded as its callers reported it, by tenant and model",
)
_denials = meter().create_counter(
    "agentrt.ledger.budget.denials",
    unit="{reservation}",
    description="Reservations refused because a budget could not take them, by tenant",
)


def count_recorded(entries: Iterable[UsageEntry]) -> None:
    """Adds usage that was just stored (not a retried record) to the counters."""
    for entry in entries:
        where = {"tenant": entry.tenant, "model": entry.model or "-"}
        _tokens.add(entry.input_tokens, {**where, "direction": "input"})
        _tokens.add(entry.output_tokens, {**where, "direction": "output"})
        if entry.cached_input_tokens:
            _cache_tokens.add(entry.cached_input_tokens, {**where, "use": "read"})
        if entry.cache_write_input_tokens:
            _cache_tokens.add(entry.cache_write_input_tokens, {**where, "use": "write"})
        if entry.cost_nanos:
            _cost.add(entry.cost_nanos / 1e9, where)


def count_denial(tenant: str) -> None:
    _denials.add(1, {"tenant": tenant})
