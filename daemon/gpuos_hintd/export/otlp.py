"""OTLP/HTTP trace export of finalised spans (opt-in: ``[otlp] endpoint = "http://..."``).

Two halves, so a slow or dead backend never reaches ingest:

* **Daemon thread** (a span sink, run where spans are finalised): for each
  span, work out its trace context (which trace, which parent: this needs the
  correlator's open spans, so it must happen here) and its process identity,
  and append a small tuple to a bounded deque.  No encoding, no I/O, no lock:
  one producer, one consumer, and ``deque.append``/``popleft`` are atomic.  A
  full queue drops the span and counts it (``queue_full``).
* **Exporter thread**: takes up to ``batch_spans`` spans, encodes one
  ``ExportTraceServiceRequest`` with the generated classes of the
  ``opentelemetry-proto`` package, and POSTs it (``application/x-protobuf``).
  Connection errors, timeouts, 429 and 5xx are retried with exponential
  backoff and jitter (honouring a bounded ``Retry-After``) until
  ``max_retry_s`` has passed, then the batch is dropped as
  ``retries_exhausted``; other 4xx drop it as ``rejected_by_backend``, as do
  the spans a backend reports in ``partial_success``.

Every span offered is accounted for: ``offered = exported + dropped + queued +
in_flight`` at all times (``status()["otlp"]`` and /metrics show each term).
"""

from __future__ import annotations

import collections
import http.client
import itertools
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from .. import __version__
from ..identity import Identity, IdentityCache
from ..model import ProcKey
from .tracecontext import TRACEPARENT_ATTR, Remote, parse_traceparent, span_id_for, trace_id_for

if TYPE_CHECKING:
    from ..config import Config
    from ..model import SpanRow
    from ..service import HintService

log = structlog.get_logger("gpuos_hintd.otlp")

INSTALL_HINT = "OTLP export needs opentelemetry-proto: the otlp extra, from the checkout (pip install 'CHECKOUT[otlp]')"
SCOPE_NAME = "gpuos-hintd"
#: Trace ids of recent spans, so a child finalised after its top-level phase still finds its trace.
TRACE_CACHE = 65_536
#: How far up a parent chain to walk (phases nest at most P.LIMITS.max_depth deep anyway).
MAX_WALK = 64
DROP_REASONS = ("queue_full", "retries_exhausted", "rejected_by_backend", "encode_error", "shutdown")
_RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_STATUS_OK = "ok"


class OtlpUnavailable(RuntimeError):
    """The opentelemetry-proto package is missing, or the endpoint is not an http(s) URL."""


def _pb() -> Any:
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2
    except ImportError as exc:
        raise OtlpUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return trace_service_pb2, common_pb2, resource_pb2, trace_pb2


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces``; a URL with a path is kept as given."""
    u = urllib.parse.urlsplit(endpoint)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise OtlpUnavailable(f"otlp endpoint {endpoint!r}: must be http(s)://HOST[:PORT][/PATH]")
    if u.path in ("", "/"):
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/v1/traces", "", ""))
    return endpoint


#: Which trace a span is in: (a client's trace id, or None: derive it from the top-level span id;
#: that top-level span id; trace flags).
TraceRef = tuple[bytes | None, int, int]
# An exported span, as queued: (row, its trace, remote parent span id or b"", its process's resource
# attributes: a dict never changed once made, so the exporter thread may read it).
Item = tuple["SpanRow", TraceRef, bytes, dict[str, Any]]


class OtlpExporter:
    """Span sink + tick hook on the daemon thread; one exporter thread for encoding and delivery."""

    def __init__(
        self,
        service: HintService,
        endpoint: str,
        *,
        queue_spans: int = 8192,
        batch_spans: int = 512,
        timeout_s: float = 5.0,
        max_retry_s: float = 60.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 10.0,
        flush_interval_s: float = 0.5,
        service_name: str = "",
        headers: Mapping[str, str] | None = None,
        host_name: str | None = None,
        resource: Mapping[str, str] | None = None,
    ) -> None:
        self._pb = _pb()
        self.service = service
        self.url = traces_url(endpoint)
        self.queue_spans = max(1, queue_spans)
        self.batch_spans = max(1, batch_spans)
        self.timeout_s = timeout_s
        self.max_retry_s = max_retry_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.flush_interval_s = flush_interval_s
        self.service_name = service_name
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.host_name = host_name or socket.gethostname()
        self.extra_resource = dict(resource or {})  # OTEL_RESOURCE_ATTRIBUTES: the node's own (k8s.node.name, ...)
        self.identities = IdentityCache()
        # daemon thread -> exporter thread
        self._queue: collections.deque[Item] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resources: dict[tuple[int, int], dict[str, Any]] = {}  # written by the daemon thread only
        self._gpu_uuids: tuple[str, ...] = ()
        self._trace_cache: dict[tuple[int, int, int], TraceRef] = {}  # (pid, start, span id) -> trace, FIFO
        # Held by the exporter thread while spans move between queued, in flight and delivered/dropped,
        # and by status(), so the four always add up; never taken by the span sink.
        self._books = threading.Lock()
        # counters: offered/queue_full/traceparent_* by the daemon thread, the rest by the exporter thread
        self.offered = 0
        self.queue_full = 0  # the sink's own drop counter (daemon thread); the rest are the exporter thread's
        self.exported = 0
        self.in_flight = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.traceparent_joined = 0
        self.traceparent_invalid = 0
        self.requests = 0
        self.failed_attempts = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_success_wall_ns: int | None = None
        self.backend_up = False
        self.backoff_s = 0.0
        self._thread = threading.Thread(target=self._run, name="gpuos-otlp", daemon=True)

    # ------------------------------------------------------------------ wiring
    def attach(self) -> OtlpExporter:
        svc = self.service
        svc.sinks.append(self.on_spans)
        svc.tick_hooks.append(self.on_tick)
        svc.status_sections["otlp"] = self.status
        self.on_tick(svc)
        self._thread.start()
        log.info("otlp_exporting", url=self.url, queue_spans=self.queue_spans, batch_spans=self.batch_spans)
        return self

    # ----------------------------------------------------------- daemon thread
    def on_tick(self, svc: HintService) -> None:
        """Learn new clients' identities while they are alive; refresh the GPU list."""
        self.identities.learn(svc.clients)
        uuids: list[str] = []
        for st in svc.samplers:
            if not st.available:
                continue
            try:
                uuids.extend(str(d["uuid"]) for d in st.sampler.devices() if d.get("uuid"))
            except Exception:
                continue
        self._gpu_uuids = tuple(sorted(set(uuids)))

    def on_spans(self, rows: list[SpanRow]) -> None:
        """Queue finalised spans with their trace context (a span sink: never blocks, never raises).

        This runs on the daemon thread for every span, so it is kept to dict look-ups on
        int tuples; hashing ids and encoding happen on the exporter thread.
        """
        if not rows:
            return
        queue, room = self._queue, self.queue_spans - len(self._queue)
        self.offered += len(rows)
        if room < len(rows):
            self.queue_full += len(rows) - max(room, 0)
            rows = rows[: max(room, 0)]
        batch: dict[tuple[int, int, int], SpanRow] | None = None
        cache, resources = self._trace_cache, self._resources
        for row in rows:
            key = (row.pid, row.pid_start)
            ctx = cache.get((row.pid, row.pid_start, row.span_id))
            if ctx is None:
                parent_ctx = cache.get((row.pid, row.pid_start, row.parent_span_id)) if row.parent_span_id else None
                if parent_ctx is not None:
                    ctx = cache[(row.pid, row.pid_start, row.span_id)] = parent_ctx
                else:
                    if batch is None:
                        batch = {(r.pid, r.pid_start, r.span_id): r for r in rows}
                    ctx = self._trace_of(row, batch)
            remote_parent = b""  # a local parent's id is derived on the exporter thread
            if not row.parent_span_id and row.attrs:
                value = row.attrs.get(TRACEPARENT_ATTR)
                if value is not None:
                    remote = parse_traceparent(value)
                    if remote is not None:
                        remote_parent = remote.span_id
                        self.traceparent_joined += 1
                    else:
                        self.traceparent_invalid += 1
            res = resources.get(key)
            if res is None:
                res = resources[key] = self._resource(ProcKey(*key), row)
            queue.append((row, ctx, remote_parent, res))
        if len(cache) > TRACE_CACHE:
            for old in list(itertools.islice(cache, len(cache) - TRACE_CACHE)):
                del cache[old]
        self._wake.set()

    def _remote(self, row: SpanRow) -> Remote | None:
        value = (row.attrs or {}).get(TRACEPARENT_ATTR)
        return parse_traceparent(value) if value is not None else None

    def _trace_of(self, row: SpanRow, batch: Mapping[tuple[int, int, int], SpanRow]) -> TraceRef:
        """The trace ``row`` belongs to, found by walking up to its top-level phase (in this batch,
        among the correlator's open spans, or in the cache); cached for every span on the way."""
        cache = self._trace_cache
        pid, start = row.pid, row.pid_start
        chain: list[int] = []
        cur: SpanRow | None = row
        cur_id = row.span_id
        found: TraceRef | None = None
        for _ in range(MAX_WALK):
            found = cache.get((pid, start, cur_id))
            if found is not None:
                break
            chain.append(cur_id)
            if cur is None:  # an ancestor no longer known: its id stands in for the root
                found = (None, cur_id, 1)
                break
            if not cur.parent_span_id:  # the top-level phase
                remote = self._remote(cur)
                found = (remote.trace_id, cur_id, remote.flags) if remote is not None else (None, cur_id, 1)
                break
            cur_id = cur.parent_span_id
            nxt = batch.get((pid, start, cur_id))
            if nxt is None:
                open_span = self.service.correlator.get(ProcKey(pid, start), cur_id)
                nxt = open_span.row if open_span is not None else None
            cur = nxt
        if found is None:
            found = (None, cur_id, 1)
        for sid in chain:
            cache[(pid, start, sid)] = found
        return found

    def _resource(self, key: ProcKey, row: SpanRow) -> dict[str, Any]:
        svc = self.service
        client = svc.clients.get(key)
        ident: Identity = self.identities.get(key, svc.clients)
        comm = client.comm if client is not None else ""
        attrs: dict[str, Any] = {
            **self.extra_resource,
            "service.name": self.service_name or comm or "unknown_service",
            "host.name": self.host_name,
            "gpuos.host.boot_id": row.boot_id,
            "process.pid": key.pid,
            "gpuos.process.start_ticks": key.start,
        }
        if comm:
            attrs["process.executable.name"] = comm
        if client is not None and client.ns_pid:
            attrs["gpuos.process.ns_pid"] = client.ns_pid
        if client is not None and client.uid is not None and client.uid >= 0:
            attrs["gpuos.process.uid"] = client.uid
        if self._gpu_uuids:
            attrs["gpuos.gpu.uuids"] = list(self._gpu_uuids)
        attrs.update(ident.resource_attributes())
        if len(self._resources) >= 4096:  # bounded like the identity cache
            self._resources.pop(next(iter(self._resources)))
        return attrs

    # -------------------------------------------------------- exporter thread
    def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stop.is_set():
                    return
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                continue
            batch = self._take()
            self._deliver(batch)

    def _take(self) -> list[Item]:
        q = self._queue
        with self._books:
            out = [q.popleft() for _ in range(min(len(q), self.batch_spans))]
            self.in_flight = len(out)
        return out

    def _deliver(self, batch: list[Item]) -> None:
        try:
            body = self.encode(batch)
        except Exception as exc:
            self._drop(batch, "encode_error", f"encode: {type(exc).__name__}: {exc}")
            return
        first = time.monotonic()
        attempt = 0
        while True:
            self.requests += 1
            ok, retryable, rejected, wait_hint, err = self._post(body)
            if ok:
                self.backend_up = True
                self.backoff_s = 0.0
                self.last_success_wall_ns = time.time_ns()
                with self._books:
                    self.exported += len(batch) - rejected
                    if rejected:
                        self.dropped["rejected_by_backend"] += rejected
                    self.in_flight = 0
                return
            self.backend_up = False
            self.failed_attempts += 1
            self.last_error = err
            if not retryable:
                self._drop(batch, "rejected_by_backend", err)
                return
            delay = min(self.backoff_initial_s * (2**attempt), self.backoff_max_s)
            delay = delay * (0.5 + random.random() / 2)
            if wait_hint is not None:
                delay = max(delay, min(wait_hint, self.backoff_max_s))
            if time.monotonic() - first + delay > self.max_retry_s:
                self._drop(batch, "retries_exhausted", err)
                return
            if attempt == 0:
                log.warning("otlp_export_failed", url=self.url, error=err, spans=len(batch), retrying=True)
            self.backoff_s = delay
            attempt += 1
            self.retries += 1
            if self._stop.wait(delay):
                self._drop(batch, "shutdown", err)
                return

    def _drop(self, batch: list[Item], reason: str, err: str | None) -> None:
        with self._books:
            self.dropped[reason] += len(batch)
            self.in_flight = 0
            total = sum(self.dropped.values()) + self.queue_full
        log.warning("otlp_spans_dropped", reason=reason, spans=len(batch), total=total, error=err)

    def _post(self, body: bytes) -> tuple[bool, bool, int, float | None, str | None]:
        """One POST: (ok, retryable, spans the backend rejected, Retry-After seconds, error text)."""
        u = urllib.parse.urlsplit(self.url)
        conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        path = u.path + (f"?{u.query}" if u.query else "")
        conn = conn_cls(u.hostname or "", u.port, timeout=self.timeout_s)
        try:
            conn.request("POST", path, body=body, headers=self.headers)
            resp = conn.getresponse()
            data = resp.read(1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            return False, True, 0, None, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            conn.close()
        if 200 <= resp.status < 300:
            return True, False, self._rejected_in(data), None, None
        retry_after = _retry_after(resp.getheader("Retry-After"))
        err = f"HTTP {resp.status} {resp.reason}"[:300]
        return False, resp.status in _RETRYABLE_HTTP, 0, retry_after, err

    def _rejected_in(self, data: bytes) -> int:
        if not data:
            return 0
        try:
            resp = self._pb[0].ExportTraceServiceResponse.FromString(data)
        except Exception:
            return 0  # a JSON or empty answer from a lenient backend: nothing to learn
        return int(resp.partial_success.rejected_spans) if resp.HasField("partial_success") else 0

    # --------------------------------------------------------------- encoding
    def encode(self, batch: list[Item]) -> bytes:
        """One ExportTraceServiceRequest: a ResourceSpans per process, one ScopeSpans each."""
        svc_pb, common_pb, resource_pb, trace_pb = self._pb
        req = svc_pb.ExportTraceServiceRequest()
        groups: dict[int, Any] = {}
        for row, (client_trace, root_id, flags), remote_parent, res in batch:
            scope = groups.get(id(res))
            if scope is None:
                rs = req.resource_spans.add()
                rs.resource.CopyFrom(resource_pb.Resource(attributes=_kvs(common_pb, res)))
                scope = rs.scope_spans.add()
                scope.scope.name = SCOPE_NAME
                scope.scope.version = __version__
                groups[id(res)] = scope
            sp = scope.spans.add()
            sp.trace_id = client_trace or trace_id_for(row.boot_id, row.pid, row.pid_start, root_id)
            sp.span_id = span_id_for(row.boot_id, row.pid, row.pid_start, row.span_id)
            if remote_parent:
                sp.parent_span_id = remote_parent
            elif row.parent_span_id:
                sp.parent_span_id = span_id_for(row.boot_id, row.pid, row.pid_start, row.parent_span_id)
            # bit 8: "is the parent remote" is known; bit 9: it is (a client's traceparent)
            sp.flags = 0x100 | (0x200 if remote_parent else 0) | (flags & 0xFF)
            sp.name = row.name
            sp.kind = trace_pb.Span.SPAN_KIND_INTERNAL
            sp.start_time_unix_nano = row.start_wall_ns
            sp.end_time_unix_nano = row.start_wall_ns + row.duration_ns
            sp.attributes.extend(_kvs(common_pb, span_attributes(row)))
            if row.status == _STATUS_OK:
                sp.status.code = trace_pb.Status.STATUS_CODE_OK
            else:
                sp.status.code = trace_pb.Status.STATUS_CODE_ERROR
                sp.status.message = row.status
        return bytes(req.SerializeToString())

    # ---------------------------------------------------------------- control
    def status(self) -> dict[str, Any]:
        with self._books:
            return self._status()

    def _status(self) -> dict[str, Any]:
        queued = len(self._queue)
        dropped = {r: self.dropped.get(r, 0) for r in DROP_REASONS}
        dropped["queue_full"] += self.queue_full
        return {
            "endpoint": self.url,
            "backend_up": self.backend_up,
            "offered": self.offered,
            "exported": self.exported,
            "queued": queued,
            "in_flight": self.in_flight,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "queue_capacity": self.queue_spans,
            "requests": self.requests,
            "failed_attempts": self.failed_attempts,
            "retries": self.retries,
            "backoff_s": round(self.backoff_s, 3),
            "traceparent_joined": self.traceparent_joined,
            "traceparent_invalid": self.traceparent_invalid,
            "last_success_wall_ns": self.last_success_wall_ns,
            "last_error": self.last_error,
        }

    def close(self, timeout_s: float = 3.0) -> None:
        """Deliver what is queued for up to ``timeout_s``, then count the rest as dropped (``shutdown``)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while (self._queue or self.in_flight) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        left = len(self._queue)
        if left:
            with self._books:
                self._queue.clear()
                self.dropped["shutdown"] += left
        log.info("otlp_stopped", **{k: v for k, v in self.status().items() if k in ("exported", "dropped_total")})


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


# ----------------------------------------------------------------- attributes
def span_attributes(row: SpanRow) -> dict[str, Any]:
    """The ``gpuos.*`` attributes of one span (the convention is documented in docs/fleet.md)."""
    a: dict[str, Any] = {
        "gpuos.phase.path": row.path,
        "gpuos.phase.depth": row.depth,
        "gpuos.phase.status": row.status,
        "gpuos.phase.span_id": row.span_id,
        "thread.id": row.tid,
        "gpuos.host.duration_ns": row.duration_ns,
        "gpuos.span.samples": row.samples,
        "gpuos.span.estimated": bool(row.estimated),
    }
    if row.parent_span_id:
        a["gpuos.phase.parent_span_id"] = row.parent_span_id
    if row.workload_class:
        a["gpuos.workload_class"] = row.workload_class
    if row.recovered:
        a["gpuos.span.recovered"] = True
    if row.dev_start_ns is not None and row.dev_end_ns is not None:
        offset = row.dev_start_ns - row.start_ns
        a["gpuos.device.start_time_unix_nano"] = row.start_wall_ns + offset
        a["gpuos.device.end_time_unix_nano"] = row.start_wall_ns + (row.dev_end_ns - row.start_ns)
        a["gpuos.device.duration_ns"] = max(row.dev_end_ns - row.dev_start_ns, 0)
        a["gpuos.device.offset_ns"] = offset
    for name, value in (row.signals or {}).items():
        if isinstance(value, bool | int | float | str):
            a[f"gpuos.signal.{name}"] = value
    for name, value in (row.attrs or {}).items():
        if name == TRACEPARENT_ATTR:
            continue
        if isinstance(value, bytes):
            value = value.hex()
        if isinstance(value, bool | int | float | str):
            a[f"gpuos.phase.attr.{name}"] = value
    return a


def _kvs(common_pb: Any, attrs: Mapping[str, Any]) -> list[Any]:
    out = []
    for k, v in attrs.items():
        kv = common_pb.KeyValue(key=k)
        _set_value(common_pb, kv.value, v)
        out.append(kv)
    return out


def _set_value(common_pb: Any, target: Any, v: Any) -> None:
    if isinstance(v, bool):
        target.bool_value = v
    elif isinstance(v, int):
        if -(2**63) <= v < 2**63:
            target.int_value = v
        else:
            target.string_value = str(v)
    elif isinstance(v, float):
        target.double_value = v
    elif isinstance(v, list | tuple):
        for item in v:
            _set_value(common_pb, target.array_value.values.add(), item)
    else:
        target.string_value = str(v)


# ------------------------------------------------------------------ start-up
def start_otlp(service: HintService, cfg: Config) -> OtlpExporter | None:
    """Attach an exporter when ``otlp_endpoint`` is set; None (and a logged reason) otherwise."""
    if not cfg.otlp_endpoint:
        return None
    exporter = OtlpExporter(
        service,
        cfg.otlp_endpoint,
        queue_spans=cfg.otlp_queue_spans,
        batch_spans=cfg.otlp_batch_spans,
        timeout_s=cfg.otlp_timeout_s,
        max_retry_s=cfg.otlp_max_retry_s,
        backoff_max_s=cfg.otlp_backoff_max_s,
        service_name=cfg.otlp_service_name or os.environ.get("OTEL_SERVICE_NAME", ""),
        resource=parse_resource_env(os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")),
    )
    return exporter.attach()


def parse_resource_env(value: str, max_items: int = 64) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded values) -> dict; bad items are skipped."""
    out: dict[str, str] = {}
    for item in value.split(",")[:max_items]:
        k, sep, v = item.partition("=")
        k = k.strip()
        if sep and k and len(k) <= 255:
            out[k] = urllib.parse.unquote(v.strip())[:1024]
    return out
