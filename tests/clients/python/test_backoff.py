"""The one backoff of the client and the services: doubling from a base, capped, jittered."""

from __future__ import annotations

import pytest
from agentrt import RetryPolicy
from agentrt.retries import backoff_delay

DRAWS = 2000
"""Enough draws that a jitter stuck at one end of its range cannot pass by chance."""


def test_without_jitter_a_pause_doubles_from_its_base_up_to_its_cap() -> None:
    pauses = [backoff_delay(n, base=0.1, cap=5.0, jitter=False) for n in range(1, 11)]
    assert pauses == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])


def test_without_a_cap_a_pause_keeps_doubling() -> None:
    assert backoff_delay(1, base=0.5, jitter=False) == 0.5
    assert backoff_delay(11, base=0.5, jitter=False) == 512.0


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 0.2), (3, 0.8), (5, 2.0), (40, 2.0)])
def test_a_jittered_pause_spreads_over_the_upper_half_of_its_ceiling(
    failures: int, ceiling: float
) -> None:
    pauses = [backoff_delay(failures, base=0.2, cap=2.0) for _ in range(DRAWS)]
    assert all(ceiling / 2 <= pause <= ceiling for pause in pauses)
    assert min(pauses) < ceiling * 0.55
    assert max(pauses) > ceiling * 0.95


def test_a_very_long_run_of_failures_stays_at_the_cap() -> None:
    assert backoff_delay(100_000, base=0.2, cap=5.0, jitter=False) == 5.0
    assert 2.5 <= RetryPolicy(initial_backoff=0.2, max_backoff=5.0).backoff(100_000) <= 5.0


def test_a_zero_base_never_waits() -> None:
    assert backoff_delay(7, base=0.0, cap=5.0) == 0.0
