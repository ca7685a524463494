"""Exact money: parsing the contract's decimal strings and pricing model calls."""

from __future__ import annotations

from decimal import Decimal

import pytest
from agentrt.common.v1.common_pb2 import Usage

from services.kit.errors import FieldInvalid
from services.kit.money import cost_of, from_nanos, parse_amount, parse_price, to_nanos


@pytest.mark.parametrize(
    ("text", "nanos"),
    [("2.50", 2_500_000_000), ("0", 0), ("0.000000001", 1), ("0.0000000015", 2), ("7", 7 * 10**9)],
)
def test_amounts_are_exact_to_the_nano_dollar(text: str, nanos: int) -> None:
    assert to_nanos(parse_amount(text, "cost")) == nanos


@pytest.mark.parametrize(
    "text", ["", "-1", "1.", ".5", "1e3", "1,5", " 1", "1 ", "NaN", "Infinity", "1.2.3", "+1"]
)
def test_a_malformed_amount_names_its_field(text: str) -> None:
    with pytest.raises(FieldInvalid) as error:
        parse_amount(text, "usage.cost")
    assert error.value.metadata == {"field": "usage.cost"}


def test_a_negative_amount_is_accepted_only_where_allowed() -> None:
    assert parse_amount("-0.5", "remaining", allow_negative=True) == Decimal("-0.5")


def test_nanos_format_without_trailing_zeros() -> None:
    assert [from_nanos(n) for n in (0, 1, 2_500_000_000, 10**9, -50_000_000)] == [
        "0",
        "0.000000001",
        "2.5",
        "1",
        "-0.05",
    ]


def test_a_call_costs_its_cached_input_uncached_input_and_output_at_their_prices() -> None:
    price = parse_price("3", "15", "0.3", "")
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=400_000, output_tokens=2_000)

    assert cost_of(price, usage) == Decimal("1.8") + Decimal("0.12") + Decimal("0.03")


def test_cached_input_defaults_to_the_input_price_and_tiny_costs_round_to_nanos() -> None:
    price = parse_price("0.000000000001", "0", "", "")

    assert price.cached_input_per_million == price.input_per_million
    assert price.cache_write_per_million == price.input_per_million
    assert cost_of(price, Usage(input_tokens=1)) == Decimal("0E-9")


def test_a_call_costs_its_cache_writes_at_the_cache_write_price() -> None:
    price = parse_price("3", "15", "0.3", "3.75")
    usage = Usage(
        input_tokens=1_000_000,
        cached_input_tokens=400_000,
        cache_write_input_tokens=100_000,
        output_tokens=2_000,
    )

    # 500k fresh at 3, 400k read at 0.3, 100k written at 3.75, 2k out at 15.
    assert cost_of(price, usage) == Decimal("1.5") + Decimal("0.12") + Decimal("0.375") + Decimal(
        "0.03"
    )


def test_cache_writes_cost_the_input_price_when_the_price_has_no_cache_write_price() -> None:
    price = parse_price("3", "15", "0.3", "")
    written = Usage(input_tokens=1_000_000, cache_write_input_tokens=1_000_000)

    assert cost_of(price, written) == cost_of(price, Usage(input_tokens=1_000_000)) == Decimal(3)


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        (("1", "ten", "", ""), "price.output_price_per_million"),
        (("1", "1", "-1", ""), "price.cached_input_price_per_million"),
        (("1", "1", "", "-1.25"), "price.cache_write_price_per_million"),
        (("1", "1", "", "1.25x"), "price.cache_write_price_per_million"),
    ],
)
def test_a_malformed_price_names_its_field(prices: tuple[str, str, str, str], field: str) -> None:
    with pytest.raises(FieldInvalid) as error:
        parse_price(*prices)
    assert error.value.metadata == {"field": field}
