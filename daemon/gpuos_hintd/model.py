"""The daemon's nouns, in one place: what a process, a sample, a metric and a span *are*.

Every other module - the core (service, correlate, clients, sampling), the plugins
(samplers/), persistence (store/) and the edges (server, metrics, export) - stands on
this module and on nothing of each other's to name things.  So a sampler needs no
store, the store needs no sampler, and a newcomer finds the vocabulary in one file.

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal, NamedTuple

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


class ProcKey(NamedTuple):
    """A process identity that survives pid reuse: pid + start time.

    ``start`` is field 22 of /proc/PID/stat (clock ticks since boot), the same
    identity psutil builds from pid + create_time.  A NamedTuple, not a frozen
    dataclass: it keys every per-process dict on the ingest path (about four lookups
    per event), and a tuple hashes and compares in C where the dataclass ran Python.
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


# ------------------------------------------------------------------ span statuses
#: A span the program has not ended yet (live state only; never stored).
STATUS_OPEN: Final = "open"
#: The statuses a stored span can have: the client's two, and the daemon's three.
#: ``abandoned``: the process went away with the span open; ``lost_end``: the client said
#: (in a heartbeat) that the span is no longer open but its end never arrived;
#: ``interrupted``: the daemon stopped while the span was open.
SPAN_STATUSES: Final = ("ok", "error", "abandoned", "lost_end", "interrupted")


# ------------------------------------------------------------------ records
@dataclasses.dataclass(slots=True)
class ProcessRow:
    boot_id: str
    pid: int
    pid_start: int
    uid: int | None
    gid: int | None
    comm: str
    cmdline: str
    cgroup: str
    unit: str | None
    workload_class: str | None
    first_seen_wall_ns: int
    last_seen_wall_ns: int
    exit_reason: str | None = None
    events: int = 0
    client_dropped: int = 0


@dataclasses.dataclass(slots=True)
class SpanRow:
    boot_id: str
    pid: int
    pid_start: int
    span_id: int
    parent_span_id: int
    tid: int
    name: str
    path: str
    depth: int
    workload_class: str | None
    attrs: dict[str, Any] | None
    start_ns: int
    end_ns: int
    start_wall_ns: int
    status: str
    recovered: bool = False
    dev_start_ns: int | None = None
    dev_end_ns: int | None = None
    dev_busy_ns: int | None = None  # GPU busy time inside the device interval (client CUPTI tracer)
    dev_busy_err_ns: int | None = None  # its bound (the tracer's clock map and the device clock anchor)
    samples: int = 0
    estimated: bool = False
    signals: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0)


@dataclasses.dataclass(slots=True)
class MarkRow:
    boot_id: str
    pid: int
    pid_start: int
    tid: int
    t_ns: int
    wall_ns: int
    name: str
    attrs: dict[str, Any] | None


@dataclasses.dataclass(slots=True)
class SampleRow:
    boot_id: str
    pid: int
    pid_start: int
    tid: int
    t_ns: int
    wall_ns: int
    signals: dict[str, Any]


@dataclasses.dataclass(slots=True)
class DeviceInterval:
    boot_id: str
    pid: int
    pid_start: int
    span_id: int
    dev_start_ns: int
    dev_end_ns: int
    signals: dict[str, Any] | None = None
