"""Hypothesis profiles: ``fast`` (default, part of every test run) and ``deep`` (run on its own:
``python -m pytest tests/test_fuzz.py --hypothesis-profile=deep``); and, around every test, the
check that no exchange took a transition its table does not have."""

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile("fast")


@pytest.fixture(autouse=True)
def _exchange_transitions_in_the_table() -> Iterator[None]:
    """Every transition an exchange takes in any test is a row of the transition table
    (proxycore.exchange_states): the table refuses any other and records it in VIOLATIONS,
    even where the refusal itself was caught (a phase error, the engine's containment)."""
    from proxycore import exchange_states

    exchange_states.VIOLATIONS.clear()
    yield
    refused = list(exchange_states.VIOLATIONS)
    exchange_states.VIOLATIONS.clear()
    assert not refused, f"transitions not in the table: {refused}"
