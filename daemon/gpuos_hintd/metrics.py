"""Prometheus /metrics for gpuos-hintd (the optional ``metrics`` extra: prometheus-client).

Threading.  The daemon is single-threaded (server.py); the HTTP server that
answers scrapes runs in its own thread.  That thread never touches a daemon
dict: everything it shows comes from an immutable `Snapshot` that the daemon
thread publishes at the end of each sampling tick (a tick hook) by swapping one
reference.  Finalised spans are folded into per-phase aggregates by a span sink,
also on the daemon thread.  So a scrape costs the daemon nothing, and a tick
costs it one small snapshot (measured in tests/test_metrics.py and exported as
``gpuos_hintd_metrics_hook_seconds``).

Label cardinality.  Phase metrics carry ``phase`` (the phase path, e.g.
``decode/sample``) and ``workload_class``.  Both come from clients, so they are
bounded: at most ``top_k`` (phase, workload_class) keys keep their labels, and
everything else is counted under ``phase="__other__", workload_class="__other__"``,
so a scrape has at most top_k + 1 phase series per metric.  The policy:

* A key is *labelled* from its first span while fewer than top_k keys are.
* Once top_k keys are labelled, a new key's spans go to ``__other__``, while
  its own span count is still tracked (for up to MAX_TRACKED keys).  At every
  tick the keys are ranked by (cumulative span count, descending; then phase
  and class, ascending - so ties never depend on arrival or hash order), and
  an unlabelled key that now ranks in the top_k takes the place of the lowest
  labelled one.
* A span is attributed to the series its key had when it closed, so every
  series only ever goes up: a promoted key's series starts at its promotion,
  and a demoted key's accumulated figures are added to ``__other__`` as it
  leaves.  The sum over all phase series therefore always equals the number
  of spans the daemon closed, and ``rate()`` stays correct across changes.
"""

from __future__ import annotations

import dataclasses
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog

from .errors import GpuosError
from .label_view import MAX_TRACKED, OTHER, LabelView, cumulative_buckets, frozen  # noqa: F401 - re-exported
from .status import Status, StoreHealth

if TYPE_CHECKING:
    from .service import HintService

log = structlog.get_logger("gpuos_hintd.metrics")


INSTALL_HINT = (
    "Prometheus metrics need the prometheus-client package: "
    "install gpuos-hint's metrics extra (in the checkout: pip install -e '.[metrics]'; "
    "or apt install python3-prometheus-client)"
)


class MetricsUnavailable(GpuosError):
    """prometheus-client is not installed, or the port cannot be bound."""


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MetricsUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return prometheus_client


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What a scrape shows; built on the daemon thread, read (only) by the HTTP thread."""

    phases: tuple[tuple[str, str, tuple[int, int, float, tuple[int, ...], float, float]], ...] = ()
    counters: tuple[tuple[str, str, float], ...] = ()  # (name, help, value)
    gauges: tuple[tuple[str, str, float], ...] = ()
    rejected: tuple[tuple[str, int], ...] = ()
    samplers: tuple[tuple[str, bool, float, int, int], ...] = ()  # name, up, last_s, ticks, errors
    gpus: tuple[tuple[str, tuple[str, str, str, str], float], ...] = ()  # metric, labels, value
    version: str = ""


#: Device fields of Sampler.devices() -> (metric, help, scale).  The energy
#: counter is a counter (since driver load); the rest are gauges.
GPU_FIELDS: tuple[tuple[str, str, str, float], ...] = (
    ("util_gpu_pct", "gpuos_gpu_utilization_percent", "GPU (SM) utilisation, percent", 1.0),
    ("util_mem_pct", "gpuos_gpu_memory_utilization_percent", "memory-controller utilisation", 1.0),
    ("mem_used_bytes", "gpuos_gpu_memory_used_bytes", "device memory in use", 1.0),
    ("mem_total_bytes", "gpuos_gpu_memory_total_bytes", "device memory size", 1.0),
    ("power_mw", "gpuos_gpu_power_watts", "power draw (NVML's averaged figure)", 1e-3),
    ("sm_clock_mhz", "gpuos_gpu_sm_clock_hertz", "SM clock", 1e6),
    ("energy_mj", "gpuos_gpu_energy_joules_total", "energy counter since driver load", 1e-3),
)


# ------------------------------------------------------------------ exporter
class MetricsExporter:
    """A tick hook on the daemon thread; a custom collector for the HTTP thread.

    Phase series come from the service's one aggregator (``service.phase_stats``)
    through a LabelView; everything else from the tick's status snapshot.
    """

    def __init__(self, service: HintService, top_k: int = 50) -> None:
        pc = _prometheus()
        self._pc = pc
        self.service = service
        self.series = LabelView(service.phase_stats, top_k)
        self.registry = pc.CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.hook_s = 0.0
        self.hook_max_s = 0.0
        self._dropped_live: dict[Any, int] = {}
        self._dropped_retired = 0
        self._phase_snap: tuple[Any, ...] = ()
        self._snap = Snapshot()
        #: The status snapshot of the last tick (daemon thread; export/prom.py reads it too).
        self.status: Status | None = None
        self.server: MetricsHTTPServer | None = None

    def attach(self) -> MetricsExporter:
        self.service.tick_hooks.append(self.on_tick)
        self.on_tick(self.service)
        return self

    # -- daemon thread --------------------------------------------------------
    def on_tick(self, svc: HintService) -> None:
        t0 = time.perf_counter()
        series = self.series
        series.rerank()
        if series.changed():
            rows = series.series()
            phases = [(k[0], k[1], f) for k, f in rows[:-1]]
            phases.append((OTHER, OTHER, rows[-1][1]))
            self._phase_snap = tuple(phases)
        self.status = svc.status(detail=False)
        self._snap = self._build(self.status)
        self.hook_s = time.perf_counter() - t0
        self.hook_max_s = max(self.hook_max_s, self.hook_s)

    def _client_dropped(self, st: Status) -> int:
        """Monotonic: drops of live clients plus those of clients that have gone."""
        live = self._dropped_live
        now = {(c.pid, c.pid_start): c.dropped for c in st.clients}
        for key in live.keys() - now.keys():
            self._dropped_retired += live[key]
        self._dropped_live = now
        return self._dropped_retired + sum(now.values())

    def _build(self, st: Status) -> Snapshot:
        c = st.counters.get
        store = st.store if st.store is not None else StoreHealth()
        counters = (
            ("gpuos_hintd_messages", "hint messages received", c("messages")),
            ("gpuos_hintd_events", "hint events accepted", c("events")),
            (
                "gpuos_hintd_client_dropped",
                "events clients dropped before sending",
                self._client_dropped(st),
            ),
            ("gpuos_hintd_clients_seen", "client processes seen", c("clients_seen")),
            ("gpuos_hintd_clients_exited", "client processes gone", c("clients_exited")),
            ("gpuos_hintd_spans_closed", "spans finalised", c("spans_closed")),
            ("gpuos_hintd_spans_abandoned", "spans closed because their process died", c("spans_abandoned")),
            ("gpuos_hintd_spans_lost_end", "spans whose end the client dropped", c("spans_lost_end")),
            ("gpuos_hintd_spans_recovered", "spans rebuilt from heartbeats", c("spans_recovered")),
            ("gpuos_hintd_orphan_ends", "phase ends without a known begin", c("orphan_ends")),
            ("gpuos_hintd_store_write_errors", "failed SQLite write batches", store.write_errors),
            ("gpuos_hintd_store_shed_rows", "rows shed (writes failing or queue full)", store.shed_rows),
            ("gpuos_hintd_store_bad_rows", "rows the writer could not store, dropped", store.bad_rows),
            ("gpuos_hintd_store_writer_crashes", "store writer rounds that raised", store.writer_crashes),
            ("gpuos_hintd_store_span_conflicts", "spans not stored over an existing one", store.span_conflicts),
            (
                "gpuos_hintd_metrics_phase_promotions",
                "phase keys promoted into the top-K",
                self.series.promotions,
            ),
            (
                "gpuos_hintd_metrics_untracked_spans",
                f"spans of (phase, class) keys beyond the {MAX_TRACKED} tracked",
                self.series.untracked_spans,
            ),
        )
        gauges = (
            ("gpuos_hintd_clients", "client processes connected now", len(st.clients)),
            ("gpuos_hintd_open_spans", "spans open now", st.open_spans),
            ("gpuos_hintd_start_time_seconds", "daemon start, unix time", st.daemon.started_wall_ns / 1e9),
            ("gpuos_hintd_store_queued_rows", "rows waiting for the store writer", store.queued_rows),
            ("gpuos_hintd_store_writer_alive", "1 while the store writer runs", int(bool(store.writer_alive))),
            ("gpuos_hintd_store_backlog_batches", "write batches held for retry", store.backlog_batches),
            (
                "gpuos_hintd_metrics_phase_keys",
                "distinct (phase, class) keys tracked",
                len(self.series.stats.entries),
            ),
            ("gpuos_hintd_metrics_top_k", "phase keys that keep their labels", self.series.top_k),
            ("gpuos_hintd_metrics_hook_seconds", "cost of the last metrics tick hook", self.hook_s),
        )
        samplers = tuple((s.name, s.available, s.last_ms / 1000.0, s.ticks, s.errors) for s in st.samplers)
        gpus: list[tuple[str, tuple[str, str, str, str], float]] = []
        for sampler in st.samplers:
            if not sampler.available:
                continue
            for d in sampler.device_list():
                labels = (
                    str(d.get("index", "")),
                    str(d.get("uuid", "")),
                    str(d.get("name", "")),
                    sampler.name,
                )
                for field, metric, _help, scale in GPU_FIELDS:
                    v = d.get(field)
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        gpus.append((metric, labels, v * scale))
                if "lost" in d:
                    gpus.append(("gpuos_gpu_lost", labels, 1.0 if d["lost"] else 0.0))
        return Snapshot(
            phases=self._phase_snap,
            counters=counters,
            gauges=gauges,
            rejected=tuple(sorted(st.rejected.items())),
            samplers=samplers,
            gpus=tuple(gpus),
            version=st.daemon.version,
        )

    # -- HTTP thread ----------------------------------------------------------
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        snap = self._snap  # one read of an immutable object: nothing else is shared
        m = self._pc.metrics_core
        yield m.InfoMetricFamily("gpuos_hintd_build", "daemon version", value={"version": snap.version})
        spans = m.CounterMetricFamily(
            "gpuos_phase_spans", "spans closed, by phase path (top-K, rest __other__)", labels=LABELS
        )
        not_ok = m.CounterMetricFamily(
            "gpuos_phase_spans_not_ok", "spans that did not end ok (error, abandoned, ...)", labels=LABELS
        )
        dur = m.HistogramMetricFamily("gpuos_phase_duration_seconds", "host-side span duration", labels=LABELS)
        cpu = m.CounterMetricFamily(
            "gpuos_phase_cpu_seconds", "process CPU time (user+sys) during spans", labels=LABELS
        )
        energy = m.CounterMetricFamily("gpuos_phase_gpu_energy_joules", "GPU energy attributed to spans", labels=LABELS)
        for phase, cls, (n, bad, dsum, buckets, cpu_s, e_j) in snap.phases:
            labels = [phase, cls]
            spans.add_metric(labels, n)
            not_ok.add_metric(labels, bad)
            dur.add_metric(labels, cumulative_buckets(buckets), dsum)
            cpu.add_metric(labels, cpu_s)
            energy.add_metric(labels, e_j)
        yield from (spans, not_ok, dur, cpu, energy)
        for name, help_text, value in snap.counters:
            yield m.CounterMetricFamily(name, help_text, value=value)
        for name, help_text, value in snap.gauges:
            yield m.GaugeMetricFamily(name, help_text, value=value)
        rej = m.CounterMetricFamily("gpuos_hintd_rejected", "rejected messages/events", labels=["reason"])
        for reason, n in snap.rejected:
            rej.add_metric([reason], n)
        yield rej
        up = m.GaugeMetricFamily("gpuos_hintd_sampler_up", "1 if the sampler runs here", labels=["sampler"])
        last = m.GaugeMetricFamily(
            "gpuos_hintd_sampler_last_duration_seconds", "duration of its last sample", labels=["sampler"]
        )
        ticks = m.CounterMetricFamily("gpuos_hintd_sampler_ticks", "samples taken", labels=["sampler"])
        errs = m.CounterMetricFamily("gpuos_hintd_sampler_errors", "failed samples", labels=["sampler"])
        for name, ok, last_s, n, e in snap.samplers:
            up.add_metric([name], 1.0 if ok else 0.0)
            last.add_metric([name], last_s)
            ticks.add_metric([name], n)
            errs.add_metric([name], e)
        yield from (up, last, ticks, errs)
        families: dict[str, Any] = {}
        for metric, labels, value in snap.gpus:
            fam = families.get(metric)
            if fam is None:
                help_text = next((h for _f, mm, h, _s in GPU_FIELDS if mm == metric), "GPU lost (1) or present")
                cls_ = m.CounterMetricFamily if metric.endswith("_total") else m.GaugeMetricFamily
                name = metric[: -len("_total")] if metric.endswith("_total") else metric
                fam = families[metric] = cls_(name, help_text, labels=GPU_LABELS)
            fam.add_metric(list(labels), value)
        yield from families.values()

    # -- HTTP server ----------------------------------------------------------
    def serve(self, port: int, addr: str = "127.0.0.1") -> MetricsHTTPServer:
        app = self._pc.make_wsgi_app(self.registry)
        try:
            httpd = make_server(addr, port, app, MetricsHTTPServer, handler_class=_QuietHandler)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot listen on {addr}:{port} for /metrics: {exc}") from None
        thread = threading.Thread(target=httpd.serve_forever, name="gpuos-metrics", daemon=True)
        thread.start()
        self.server = httpd
        return httpd


LABELS = ["phase", "workload_class"]
GPU_LABELS = ["gpu", "uuid", "name", "sampler"]


class MetricsHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
        pass


def start_metrics_server(service: HintService, port: int, top_k: int = 50, addr: str = "127.0.0.1") -> MetricsExporter:
    """Attach the exporter to the service and serve /metrics on addr:port (0 = any free port).

    The real port is logged ("metrics_listening") and given to the service (status shows it).
    """
    exporter = MetricsExporter(service, top_k).attach()
    httpd = exporter.serve(port, addr)
    url = f"http://{addr}:{httpd.port}/metrics"
    service.set_metrics_url(url)
    # ---- fleet metrics (export/prom.py): pod/container/unit series and the OTLP exporter's counters
    from .export.prom import FleetCollector

    FleetCollector(service, top_k, lambda: exporter.status).attach(exporter.registry)
    # ---- end of fleet metrics
    log.info("metrics_listening", url=url, port=httpd.port, top_k=top_k)
    return exporter
