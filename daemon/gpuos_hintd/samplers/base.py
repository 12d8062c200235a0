"""The sampler interface every signal source implements.

A sampler turns one source (/proc, NVML, sysfs, eBPF, ...) into per-process
numbers at each tick.  The correlator never knows which source a number came
from: it only reads each metric's *kind* (a cumulative counter, whose span
aggregate is a delta, or a gauge, whose aggregate is mean and max) and *scope*
(the whole process, or the thread that opened the span).  So a new source is
one module and no change to correlation, storage or export.

Conventions (shared/STYLE.md sections 6, 7 and 11):
* metric names carry their unit (``cpu_ns``, ``rss_bytes``, ``gpu_energy_mj``);
* a value the source cannot give (not supported, forbidden) is ``None``,
  never an exception and never a made-up 0;
* a process that vanished is simply left out of that tick's result.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

# The vocabulary lives in ..model; these names stay importable from here.
from ..model import Kind, Metric, ProcKey, ProcSample, Scope, Target, Value  # noqa: F401


class Sampler(abc.ABC):
    """A source of per-process signals.  Subclasses set ``name`` and ``metrics``."""

    name: ClassVar[str]
    metrics: ClassVar[Mapping[str, Metric]]
    #: Run at most this often (seconds); 0 = every tick.  For signals that change slowly and
    #: cost much to read - the daemon's CPU budget is ~1 ms per tick for all processes.
    interval_s: ClassVar[float] = 0.0

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") if this host can serve the sampler, else (False, why).

        Must be cheap and must not raise: it is asked at start-up and on reload.
        """

    @abc.abstractmethod
    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        """Read every target once.  Missing processes are left out; unsupported
        fields are None.  May raise only for a failure of the whole source (the
        daemon counts it and skips this sampler for the tick)."""

    def devices(self) -> list[dict[str, Any]]:
        """Host-level figures for status/top/metrics (e.g. one dict per GPU).

        Values come from the last sample() call; no extra reads happen here.
        """
        return []

    def health(self) -> dict[str, Any]:
        """Extra, sampler-specific health details shown by `gpuos-hintctl status`."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release handles (NVML shutdown, eBPF programs, open files)."""


class NullSampler(Sampler):
    """Stands in for a sampler that this host cannot run, and keeps the reason.

    `gpuos-hintctl status` shows it as unavailable with that reason, the way
    zeus's EmptyGPUs stands in when there is no GPU.
    """

    metrics: ClassVar[Mapping[str, Metric]] = {}

    def __init__(self, name: str, reason: str) -> None:
        self.name = name  # type: ignore[misc]  # instance-level on purpose
        self.reason = reason

    def available(self) -> tuple[bool, str]:
        return False, self.reason

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        return {}
