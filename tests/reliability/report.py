"""Shared plumbing of the reliability suites (issue #5): run size and the report rows.

* ``FULL`` is true under ``make reliability`` (``LIAISON_RELIABILITY=full``): suites then run at
  the sizes the issue asks for; ``make test`` runs each at a small size so it stays fast.
* :func:`scaled` picks the fast or the full size.
* :func:`record` appends one scenario's counts and results to the JSON-lines file named by
  ``LIAISON_RELIABILITY_REPORT`` (nothing is written when it is unset);
  ``scripts/reliability_report.py`` turns that file into ``docs/reliability.md`` and prints it.

A row's ``counts`` say how much was exercised (messages sent, kills, faults injected, inputs
fuzzed, requests made); its ``results`` are the bad outcomes counted (lost, duplicated, forged
accepted, 5xx, ...) and must all be 0 for the test to pass: call :func:`record` only after the
test's own assertions, so a failing scenario is never reported as clean.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["FULL", "record", "scaled"]

FULL = os.environ.get("LIAISON_RELIABILITY", "") == "full"


def scaled(fast: int, full: int) -> int:
    """``full`` under ``make reliability``, else ``fast``."""
    return full if FULL else fast


def record(
    suite: str,
    scenario: str,
    counts: Mapping[str, int],
    results: Mapping[str, int],
) -> None:
    """Add one row to the reliability report (see the module docstring)."""
    target = os.environ.get("LIAISON_RELIABILITY_REPORT")
    if not target:
        return
    row = {
        "suite": suite,
        "scenario": scenario,
        "counts": dict(counts),
        "results": dict(results),
        "full": FULL,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with Path(target).open("a", encoding="utf-8") as out:
        out.write(json.dumps(row, sort_keys=True) + "\n")
