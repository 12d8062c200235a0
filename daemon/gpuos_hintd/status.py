"""The daemon's status as a typed snapshot: what `HintService.status()` returns.

One value, built on the daemon thread, read by every consumer: the control
socket (``to_dict()``, the wire form that ``gpuos-hintctl status``/``top`` and
tests read), the Prometheus exporter (metrics.py, which reads the dataclasses
and never the service's dicts), and the CLI (``Status.from_dict()`` turns a
reply back into the same types, tolerating keys an older or newer daemon
leaves out or adds).

The wire form is a contract: ``to_dict()`` produces exactly the dict the
daemon has always sent (same keys, same order).  Fields that exist only
in-process (``ClientStatus.pid_start``, ``ClientStatus.open_count`` of a
client the viewer may see in full) are not on the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def _d(m: Any) -> dict[str, Any]:
    return m if isinstance(m, dict) else {}


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonInfo:
    version: str
    pid: int
    uptime_s: float
    started_wall_ns: int
    endpoint: str
    control: str
    state_dir: str
    sample_hz: float
    protocol: int
    metrics_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DaemonInfo:
        return cls(
            version=str(d.get("version", "")),
            pid=int(d.get("pid", 0)),
            uptime_s=float(d.get("uptime_s", 0.0)),
            started_wall_ns=int(d.get("started_wall_ns", 0)),
            endpoint=str(d.get("endpoint", "")),
            control=str(d.get("control", "")),
            state_dir=str(d.get("state_dir", "")),
            sample_hz=float(d.get("sample_hz", 0.0)),
            protocol=int(d.get("protocol", 0)),
            metrics_url=d.get("metrics_url"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class OpenPhase:
    path: str
    tid: int
    age_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class ClientStatus:
    """One connected client.  ``redacted``: another uid's client, shown in summary only."""

    pid: int
    uid: int
    comm: str
    events: int
    batches: int
    dropped: int
    last_seen_s: float
    open_count: int
    redacted: bool = False
    workload_class: str | None = None
    open_phases: tuple[OpenPhase, ...] = ()
    ns_pid: int | None = None
    cmdline: tuple[str, ...] = ()
    unit: str | None = None
    cgroup: str = ""
    seq_gaps: int = 0
    buffered: int = 0
    client_version: str | None = None
    #: In-process only (the wire has no start time): with pid, the process identity.
    pid_start: int = 0

    def to_dict(self) -> dict[str, Any]:
        phases = [{"path": p.path, "tid": p.tid, "age_s": p.age_s} for p in self.open_phases]
        if self.redacted:
            return {
                "pid": self.pid,
                "uid": self.uid,
                "comm": self.comm,
                "redacted": True,
                "workload_class": None,
                "events": self.events,
                "batches": self.batches,
                "dropped": self.dropped,
                "open_phases": [],
                "open_count": self.open_count,
                "last_seen_s": self.last_seen_s,
            }
        return {
            "pid": self.pid,
            "ns_pid": self.ns_pid,
            "comm": self.comm,
            "cmdline": list(self.cmdline),
            "uid": self.uid,
            "unit": self.unit,
            "cgroup": self.cgroup,
            "workload_class": self.workload_class,
            "events": self.events,
            "batches": self.batches,
            "seq_gaps": self.seq_gaps,
            "dropped": self.dropped,
            "buffered": self.buffered,
            "open_phases": phases,
            "last_seen_s": self.last_seen_s,
            "client_version": self.client_version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientStatus:
        phases = tuple(
            OpenPhase(str(p.get("path", "")), int(p.get("tid", 0)), float(p.get("age_s", 0.0)))
            for p in d.get("open_phases") or []
            if isinstance(p, Mapping)
        )
        return cls(
            pid=int(d.get("pid", 0)),
            uid=int(d.get("uid", -1)),
            comm=str(d.get("comm") or ""),
            events=int(d.get("events", 0)),
            batches=int(d.get("batches", 0)),
            dropped=int(d.get("dropped", 0)),
            last_seen_s=float(d.get("last_seen_s", 0.0)),
            open_count=int(d.get("open_count", len(phases))),
            redacted=bool(d.get("redacted", False)),
            workload_class=d.get("workload_class"),
            open_phases=phases,
            ns_pid=d.get("ns_pid"),
            cmdline=tuple(str(a) for a in d.get("cmdline") or ()),
            unit=d.get("unit"),
            cgroup=str(d.get("cgroup") or ""),
            seq_gaps=int(d.get("seq_gaps", 0)),
            buffered=int(d.get("buffered", 0)),
            client_version=d.get("client_version"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ExitedClient:
    pid: int
    uid: int
    comm: str
    reason: str
    abandoned_spans: int
    events: int
    dropped: int
    wall_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExitedClient:
        return cls(
            pid=int(d.get("pid", 0)),
            uid=int(d.get("uid", -1)),
            comm=str(d.get("comm") or ""),
            reason=str(d.get("reason", "")),
            abandoned_spans=int(d.get("abandoned_spans", 0)),
            events=int(d.get("events", 0)),
            dropped=int(d.get("dropped", 0)),
            wall_ns=int(d.get("wall_ns", 0)),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Counters:
    """The service's counters by name (an open set: new ones need no change here) and two totals."""

    values: Mapping[str, int]
    rejected_total: int = 0
    client_dropped_total: int = 0

    def get(self, name: str) -> int:
        return int(self.values.get(name, 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.values,
            "rejected_total": self.rejected_total,
            "client_dropped_total": self.client_dropped_total,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Counters:
        rest = {k: v for k, v in d.items() if k not in ("rejected_total", "client_dropped_total")}
        return cls(rest, int(d.get("rejected_total", 0)), int(d.get("client_dropped_total", 0)))


@dataclasses.dataclass(frozen=True, slots=True)
class Quotas:
    max_clients: int
    max_clients_per_uid: int
    max_open_spans_per_client: int
    max_open_spans_per_uid: int
    max_depth: int

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Quotas:
        return cls(*(int(d.get(f.name, 0)) for f in dataclasses.fields(cls)))


@dataclasses.dataclass(frozen=True, slots=True)
class SamplerStatus:
    name: str
    available: bool
    reason: str | None
    metrics: int
    ticks: int
    errors: int
    last_ms: float
    max_ms: float
    total_ms: float
    last_error: str | None
    #: What the sampler reports about itself (free-form; {"error": ...} if that raised).
    health: Any = None
    #: Sampler.devices(): a list of per-device dicts, or {"error": ...} if that raised.
    devices: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def device_list(self) -> list[dict[str, Any]]:
        """The devices, [] where there are none or reading them failed."""
        return [d for d in self.devices if isinstance(d, dict)] if isinstance(self.devices, list) else []

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplerStatus:
        return cls(
            name=str(d.get("name", "")),
            available=bool(d.get("available", False)),
            reason=d.get("reason"),
            metrics=int(d.get("metrics", 0)),
            ticks=int(d.get("ticks", 0)),
            errors=int(d.get("errors", 0)),
            last_ms=float(d.get("last_ms", 0.0)),
            max_ms=float(d.get("max_ms", 0.0)),
            total_ms=float(d.get("total_ms", 0.0)),
            last_error=d.get("last_error"),
            health=d.get("health"),
            devices=d.get("devices"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StoreHealth:
    """The store writer's health (Store.health()); keys it adds later are kept in ``extra``."""

    path: str = ""
    written: Mapping[str, int] = dataclasses.field(default_factory=dict)
    write_errors: int = 0
    backlog_batches: int = 0
    shed_rows: int = 0
    shed_by_kind: Mapping[str, int] = dataclasses.field(default_factory=dict)
    bad_rows: int = 0
    span_conflicts: int = 0
    queued_rows: int = 0
    max_queue_rows: int = 0
    writer_alive: bool = True
    writer_crashes: int = 0
    writer_restarts: int = 0
    last_crash: str | None = None
    reopened: int = 0
    last_error: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The keys the store reported, in its order (to_dict gives back exactly those).
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.keys:
            out[k] = self.extra[k] if k in self.extra else getattr(self, k)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoreHealth:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "keys"}
        return cls(
            **{k: v for k, v in d.items() if k in known},
            extra={k: v for k, v in d.items() if k not in known},
            keys=tuple(d),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PhaseStatus:
    """Live figures of one phase path (phase_stats.PhaseStats.top)."""

    path: str
    workload_class: str | None
    count: int
    abandoned: int
    total_s: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    energy_j: float
    cpu_s: float
    signals: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["signals"] = dict(self.signals)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhaseStatus:
        return cls(
            path=str(d.get("path", "")),
            workload_class=d.get("workload_class"),
            count=int(d.get("count", 0)),
            abandoned=int(d.get("abandoned", 0)),
            total_s=float(d.get("total_s", 0.0)),
            mean_ms=float(d.get("mean_ms", 0.0)),
            stdev_ms=float(d.get("stdev_ms", 0.0)),
            min_ms=float(d.get("min_ms", 0.0)),
            max_ms=float(d.get("max_ms", 0.0)),
            energy_j=float(d.get("energy_j", 0.0)),
            cpu_s=float(d.get("cpu_s", 0.0)),
            signals=_d(d.get("signals")),
        )


_CORE_KEYS = (
    "daemon",
    "counters",
    "rejected",
    "clients",
    "exited",
    "quotas",
    "samplers",
    "store",
    "connections",
    "phases",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """The whole snapshot.  ``sections``: extra blocks by name (e.g. "otlp", "reload")."""

    daemon: DaemonInfo
    counters: Counters
    rejected: Mapping[str, int]
    clients: tuple[ClientStatus, ...]
    exited: tuple[ExitedClient, ...]
    quotas: Quotas
    samplers: tuple[SamplerStatus, ...]
    store: StoreHealth | None
    connections: Mapping[str, Any]
    phases: tuple[PhaseStatus, ...]
    sections: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: False for a summary (status(detail=False)): open_phases and phases left empty.
    detail: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The wire form (control socket, ``gpuos-hintctl status --json``)."""
        return {
            "daemon": self.daemon.to_dict(),
            "counters": self.counters.to_dict(),
            "rejected": dict(self.rejected),
            "clients": [c.to_dict() for c in self.clients],
            "exited": [e.to_dict() for e in self.exited],
            "quotas": self.quotas.to_dict(),
            "samplers": [s.to_dict() for s in self.samplers],
            "store": self.store.to_dict() if self.store is not None else None,
            "connections": dict(self.connections),
            "phases": [p.to_dict() for p in self.phases],
            **self.sections,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Status:
        """A reply read back into types; missing blocks become empty ones (older daemons)."""

        def items(key: str) -> list[Mapping[str, Any]]:
            v = d.get(key)
            return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []

        daemon = _d(d.get("daemon"))
        if "metrics_url" in d and "metrics_url" not in daemon:  # an early daemon put it at the top
            daemon = {**daemon, "metrics_url": d["metrics_url"]}
        store = d.get("store")
        return cls(
            daemon=DaemonInfo.from_dict(daemon),
            counters=Counters.from_dict(_d(d.get("counters"))),
            rejected=_d(d.get("rejected")),
            clients=tuple(ClientStatus.from_dict(c) for c in items("clients")),
            exited=tuple(ExitedClient.from_dict(e) for e in items("exited")),
            quotas=Quotas.from_dict(_d(d.get("quotas"))),
            samplers=tuple(SamplerStatus.from_dict(s) for s in items("samplers")),
            store=StoreHealth.from_dict(store) if isinstance(store, Mapping) else None,
            connections=_d(d.get("connections")),
            phases=tuple(PhaseStatus.from_dict(p) for p in items("phases")),
            sections={k: v for k, v in d.items() if k not in _CORE_KEYS and k != "metrics_url"},
        )

    @property
    def open_spans(self) -> int:
        """Spans open now, over every client (a redacted client's count included)."""
        return sum(c.open_count for c in self.clients)
