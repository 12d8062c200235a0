"""A simulated CUDA device whose events complete the moment they are recorded.

It stands for a synchronous phase on an idle GPU: every event is done at once, on the host's
CLOCK_MONOTONIC, so a device interval equals its host interval.  Used in-process by the collector
tests and, through ``CHILD_IMPORT``, by client processes that tests start against a real daemon.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gpuos_client import device

#: Prepend to a client process's code: makes ``Instant`` importable there.
CHILD_IMPORT = (
    f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\nfrom instant_device import Instant\n"
)


class Instant(device._Backend):
    name = "instant"

    def record(self) -> Any:
        return time.monotonic_ns()

    def done(self, ev: Any) -> bool:
        return True

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return (b - a) / 1e6

    def anchor_event(self) -> Any:
        return time.monotonic_ns()
