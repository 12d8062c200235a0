"""Fleet metrics on /metrics: spans by Kubernetes pod / container / systemd unit, and OTLP delivery.

Same threading as metrics.py: a span sink and a tick hook on the daemon thread
build an immutable snapshot; the scrape thread only reads that snapshot.

Cardinality.  The (pod_uid, container, unit) labels come from cgroup paths,
i.e. from whoever starts processes on the node, so they are bounded exactly
like the phase labels: a phase_stats.PhaseStats keyed by the identity triple under a
metrics.LabelView, at
most ``top_k`` labelled keys plus one ``__other__`` series, ranked by span
count with the same deterministic promotion policy.  Container ids are cut to
their 12-character short form (what ``crictl ps`` shows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..identity import IdentityCache, short_container_id
from ..label_view import OTHER, LabelView, cumulative_buckets
from ..model import ProcKey
from ..phase_stats import PhaseStats

if TYPE_CHECKING:
    from ..model import SpanRow
    from ..service import HintService
    from ..status import ClientStatus, Status

IDENTITY_LABELS = ["pod_uid", "container", "unit"]
_OTHER_KEY = (OTHER, OTHER, OTHER)


class _LiveClients:
    """What IdentityCache.get asks of a clients mapping, answered by the service's accessor."""

    def __init__(self, service: HintService) -> None:
        self.service = service

    def get(self, key: ProcKey, default: ClientStatus | None = None) -> ClientStatus | None:
        return self.service.client_status(key) or default


class FleetCollector:
    """Identity-labelled span series + OTLP exporter counters, for one service's registry."""

    def __init__(
        self, service: HintService, top_k: int = 50, latest: Callable[[], Status | None] | None = None
    ) -> None:
        self.service = service
        #: The tick's status snapshot, when another hook already built it (metrics.MetricsExporter).
        self._latest = latest or (lambda: None)
        self._live = _LiveClients(service)
        self.stats = PhaseStats(signals=())
        self.series = LabelView(self.stats, top_k)
        self.identities = IdentityCache()
        self._snap: tuple[tuple[Any, ...], dict[str, Any] | None] = ((), None)

    def attach(self, registry: Any) -> FleetCollector:
        self.service.sinks.append(self.on_spans)
        self.service.tick_hooks.append(self.on_tick)
        registry.register(self)
        self.on_tick(self.service)
        return self

    # -- daemon thread --------------------------------------------------------
    def on_spans(self, rows: list[SpanRow]) -> None:
        live, get = self._live, self.identities.get
        keys = []
        for row in rows:
            ident = get(ProcKey(row.pid, row.pid_start), live)
            keys.append((ident.pod_uid or "", short_container_id(ident.container_id), ident.systemd_unit or ""))
        self.stats.add_many(rows, keys)

    def on_tick(self, svc: HintService) -> None:
        st = self._latest() or svc.status(detail=False)
        self.identities.learn({ProcKey(c.pid, c.pid_start): c for c in st.clients})
        series = self.series
        series.rerank()
        phases = self._snap[0]
        if series.changed():
            rows = series.series()
            rows[-1] = (_OTHER_KEY, rows[-1][1])
            phases = tuple(rows)
        otlp = st.sections.get("otlp")
        if not isinstance(otlp, dict) or "error" in otlp:
            otlp = None
        self._snap = (phases, otlp)

    # -- HTTP thread ----------------------------------------------------------
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client import metrics_core as m

        phases, otlp = self._snap
        lab = IDENTITY_LABELS
        spans = m.CounterMetricFamily(
            "gpuos_workload_spans", "spans closed, by pod/container/unit (top-K, rest __other__)", labels=lab
        )
        dur = m.HistogramMetricFamily(
            "gpuos_workload_span_duration_seconds", "host-side span duration by pod/container/unit", labels=lab
        )
        cpu = m.CounterMetricFamily(
            "gpuos_workload_cpu_seconds", "process CPU time (user+sys) during spans", labels=IDENTITY_LABELS
        )
        energy = m.CounterMetricFamily(
            "gpuos_workload_gpu_energy_joules", "GPU energy attributed to spans", labels=IDENTITY_LABELS
        )
        for key, (n, _bad, dsum, buckets, cpu_s, e_j) in phases:
            labels = list(key)
            spans.add_metric(labels, n)
            dur.add_metric(labels, cumulative_buckets(buckets), dsum)
            cpu.add_metric(labels, cpu_s)
            energy.add_metric(labels, e_j)
        yield from (spans, dur, cpu, energy)
        if otlp is None:
            return
        gauge, counter = m.GaugeMetricFamily, m.CounterMetricFamily
        yield gauge("gpuos_hintd_otlp_up", "1 if the last OTLP export succeeded", value=otlp["backend_up"])
        yield counter("gpuos_hintd_otlp_spans_offered", "spans given to the exporter", value=otlp["offered"])
        yield counter("gpuos_hintd_otlp_spans_exported", "spans the backend accepted", value=otlp["exported"])
        dropped = counter("gpuos_hintd_otlp_spans_dropped", "spans not delivered, by reason", labels=["reason"])
        for reason, n in otlp["dropped"].items():
            dropped.add_metric([reason], n)
        yield dropped
        yield gauge("gpuos_hintd_otlp_queue_spans", "spans waiting for export", value=otlp["queued"])
        yield gauge("gpuos_hintd_otlp_queue_capacity_spans", "bound of the export queue", value=otlp["queue_capacity"])
        yield counter("gpuos_hintd_otlp_requests", "export POSTs made", value=otlp["requests"])
        yield counter("gpuos_hintd_otlp_failed_requests", "export POSTs that failed", value=otlp["failed_attempts"])
        joined = otlp["traceparent_joined"]
        yield counter("gpuos_hintd_otlp_traceparent_joined", "top-level phases joined to a client trace", value=joined)
