"""A short soak (``bench.soak``, whose full run is `python -m bench soak`): one protocol-level session through 120
changes and 20 sessions opened and closed against a server with a 64 MB byte budget; resident memory must grow under
10% from the warm-up's, threads and open files must come back to the warm-up's counts, and every answer must be the
session's own."""

from __future__ import annotations

import pytest

from bench.soak import GROWTH_LIMIT, Sample, measure, passed

pytestmark = pytest.mark.slow


def test_a_short_soak_leaks_nothing():
    result, failures = measure(changes=120, sessions=20, cache_mb=64, warm_changes=60, warm_sessions=40)
    assert failures == []
    long, many = result["phases"][1:]
    assert (long.changes, len(many.visits)) == (120, 20)
    assert result["growth"] < GROWTH_LIMIT  # what `passed` checked, measured on the server's /proc


def test_the_verdict_names_what_grew():
    baseline = Sample(1000.0, 11, 40)
    result = {"baseline": baseline, "settled": Sample(1150.0, 12, 52), "growth": 0.15, "phases": []}
    assert passed(result) == ["resident memory grew 15.0% (limit 10%)", "threads 11 -> 12", "open files 40 -> 52"]
    assert passed({**result, "settled": baseline, "growth": 0.02}) == []
