"""Skip reasons for the tests that need the real ML libraries (installed by scripts/setup-ml-test.sh)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def need(*modules: str) -> None:
    """Skip the calling test, with the reason, unless every module is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    why = ""
    marker = REPO / ".venv" / ".ml-test-skip"
    if marker.exists():
        why = ": " + marker.read_text().strip()
    pytest.skip(f"{', '.join(missing)} not installed (scripts/setup-ml-test.sh{why})")
