"""Hypothesis settings shared by the fuzz tests: TVMLM_FUZZ_EXAMPLES examples (200 by default,
derandomized so CI runs are repeatable; more for a local soak run), no deadline, no database."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("TVMLM_FUZZ_EXAMPLES", "200"))


def fuzz_settings(*allow: HealthCheck) -> settings:
    """The settings, with `allow` health checks suppressed besides too_slow and data_too_large."""
    return settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, *allow])
