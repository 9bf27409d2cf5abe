"""Load the test-vector files stored under ``tests/vectors`` (see each folder's README.md).

Tests read only these in-repository copies, never a shared or network location.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["VECTORS_DIR", "load_json"]

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
"""The root folder of the stored test vectors."""


def load_json(relative_path: str) -> Any:
    """Parse the JSON file at ``relative_path`` (relative to ``tests/vectors``).

    The path must stay inside ``tests/vectors``: absolute paths and ``..`` escapes are refused.
    """
    path = (VECTORS_DIR / relative_path).resolve()
    if not path.is_relative_to(VECTORS_DIR):
        raise ValueError(f"vector path escapes tests/vectors: {relative_path!r}")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)
