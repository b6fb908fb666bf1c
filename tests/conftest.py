"""Hypothesis profiles: ``fast`` (default, part of every test run) and ``deep`` (run on its own:
``python -m pytest tests/test_fuzz.py --hypothesis-profile=deep``)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile("fast")
