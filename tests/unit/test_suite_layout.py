"""The test suite's own layout: what would stop ``make test`` at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    # The tiers have no __init__.py, so pytest imports each module by its basename alone:
    # a second module of the same name fails collection, and with it the whole run.
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1]
