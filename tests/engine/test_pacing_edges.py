"""Spacing status checks, at its edges (survivors of the mutation run of 2026-12-07 at
5c20a93)."""

from __future__ import annotations

from listener.engine.pacing import HISTORY, Pacing


def test_only_the_last_hundred_generations_teach_the_spacing():
    """The provider's times change (load, a new model): what it took an hour ago is
    forgotten."""
    p = Pacing(interval=0.1)
    for _ in range(HISTORY):
        p.observe(100.0)
    for _ in range(HISTORY):
        p.observe(10.0)
    assert (p.median, p.observed) == (10.0, HISTORY)
    assert p.delay(2.0) == 8.0  # at the new median
