"""The version is written once per distribution (the package's __version__, which pyproject.toml
reads statically), and the daemon's pin on the client names that same version."""

from __future__ import annotations

import re
from pathlib import Path

import gpuos_client
import gpuos_hintd

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_files_take_the_version_from_the_package():
    for path, attr in (
        ("pyproject.toml", "gpuos_hintd.__version__"),
        ("client/pyproject.toml", "gpuos_client.__version__"),
    ):
        text = (REPO / path).read_text()
        assert not re.search(r"^version\s*=\s*\"", text, re.M), f"{path}: a literal version; use dynamic = ['version']"
        assert f'version = {{ attr = "{attr}" }}' in text, f"{path} must read its version from {attr}"


def test_the_daemon_pins_the_client_it_ships_with():
    pin = re.search(r'"gpuos-hint-client==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin gpuos-hint-client"
    assert pin.group(1) == gpuos_client.__version__ == gpuos_hintd.__version__, (
        "bump gpuos_client.__version__, gpuos_hintd.__version__ and the pin in pyproject.toml together"
    )
