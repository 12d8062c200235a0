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
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, ClassVar, Literal

Value = float | int | None
Kind = Literal["counter", "gauge"]
Scope = Literal["process", "thread"]


@dataclasses.dataclass(frozen=True, slots=True)
class Metric:
    """What one metric means: unit, how it aggregates over a span, its scope."""

    unit: str
    kind: Kind
    scope: Scope = "process"
    help: str = ""


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class ProcKey:
    """A process identity that survives pid reuse: pid + start time.

    ``start`` is field 22 of /proc/PID/stat (clock ticks since boot), the same
    identity psutil builds from pid + create_time.
    """

    pid: int
    start: int


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One process to sample, with the threads that have phases open or recent."""

    key: ProcKey
    tids: frozenset[int] = frozenset()


@dataclasses.dataclass(slots=True)
class ProcSample:
    """One tick's values of one process: process-scope values and per-thread ones."""

    values: dict[str, Value] = dataclasses.field(default_factory=dict)
    threads: dict[int, dict[str, Value]] = dataclasses.field(default_factory=dict)
    #: Timestamped readings finer than the tick, new since the last tick, per name
    #: (e.g. ``gpu_power_mw@0``: the driver's power samples, (CLOCK_MONOTONIC ns, mW)).
    #: The correlator integrates them over each span's own interval.
    series: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)


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
