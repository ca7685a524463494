"""Exact money: US dollars as Decimal, stored as whole nano-dollars (1e-9 USD)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from agentrt.common.v1.common_pb2 import Usage

from services.kit.errors import FieldInvalid

NANO = Decimal("1e-9")
"""The quantum every cost is kept in."""

PRICE_QUANTUM = Decimal("1e-12")
"""Prices per million tokens keep up to 12 digits after the point."""

_PER_MILLION = Decimal(1_000_000)
_AMOUNT = re.compile(r"(?P<sign>-?)(?P<whole>[0-9]{1,12})(?:\.(?P<fraction>[0-9]{1,18}))?")


def parse_amount(
    text: str, field: str, *, allow_negative: bool = False, quantum: Decimal = NANO
) -> Decimal:
    """The decimal string `text` rounded to `quantum`; FieldInvalid(field) unless it is
    digits with at most one '.' (and a leading '-' only when allowed)."""
    match = _AMOUNT.fullmatch(text)
    if match is None or (match["sign"] and not allow_negative):
        raise FieldInvalid(
            field, f"expected a decimal amount of US dollars such as '2.50', got {text[:40]!r}"
        )
    return Decimal(text).quantize(quantum, rounding=ROUND_HALF_EVEN)


def to_nanos(amount: Decimal) -> int:
    """Whole nano-dollars in `amount` (already quantized)."""
    return int(amount.scaleb(9).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nanos(nanos: int) -> str:
    """Nano-dollars as the contract's decimal string, without trailing zeros past the point."""
    text = format(Decimal(nanos).scaleb(-9), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class ModelPrice:
    """A model's price in US dollars per million tokens."""

    input_per_million: Decimal
    """Input tokens neither read from nor written to the prompt cache."""
    output_per_million: Decimal
    cached_input_per_million: Decimal
    """Cached input tokens; the input price when the contract leaves it empty."""
    cache_write_per_million: Decimal
    """Input tokens written to the prompt cache; the input price when left empty."""


def parse_price(
    input_price: str, output_price: str, cached_input_price: str, cache_write_price: str
) -> ModelPrice:
    """A price from the contract's strings (fields named as in Price); FieldInvalid if malformed."""
    input_per_million = _parse_price(input_price, "input_price_per_million")
    return ModelPrice(
        input_per_million,
        _parse_price(output_price, "output_price_per_million"),
        _parse_price(cached_input_price, "cached_input_price_per_million")
        if cached_input_price
        else input_per_million,
        _parse_price(cache_write_price, "cache_write_price_per_million")
        if cache_write_price
        else input_per_million,
    )


def _parse_price(text: str, field: str) -> Decimal:
    return parse_amount(text, f"price.{field}", quantum=PRICE_QUANTUM)


def cost_of(price: ModelPrice, usage: Usage) -> Decimal:
    """What a model call cost: cache reads, cache writes, the rest of the input and the
    output, each at its price, rounded once to 1e-9 USD. The usage is a valid one: its cache
    reads and writes are parts of its input (the ledger refuses a record where they are not)."""
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_input_tokens
    # Enough digits for 64-bit token counts times 12+12-digit prices, so nothing rounds
    # before the final quantize.
    with localcontext(prec=60):
        total = (
            uncached * price.input_per_million
            + usage.cached_input_tokens * price.cached_input_per_million
            + usage.cache_write_input_tokens * price.cache_write_per_million
            + usage.output_tokens * price.output_per_million
        ) / _PER_MILLION
        return total.quantize(NANO, rounding=ROUND_HALF_EVEN)
