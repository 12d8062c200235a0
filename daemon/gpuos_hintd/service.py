"""HintService: the transport-free core of the daemon (dynolog's ServiceHandler idea).

It takes decoded bytes plus the peer's credentials, returns replies, samples on
`tick()`, reaps dead clients on `reap()`, and answers `status()`.  It knows no
socket, so tests and benchmarks drive it directly, and the ZeroMQ server
(server.py) stays a thin loop.  Everything here runs on one thread.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from gpuos_client import protocol as P

from . import __version__, procfs
from .clients import Client, Rejected, TokenBucket, describe_process, is_alive, ns_to_host_tid, verify_peer
from .config import Config
from .correlate import Correlator
from .model import DeviceInterval, MarkRow, Metric, ProcessRow, ProcKey, SampleRow, SpanRow, Target
from .phase_energy import MARK_NAME as PHASE_ENERGY_MARK
from .phase_energy import PhaseEnergy, SpanIv
from .phase_stats import PhaseStats
from .samplers.base import NullSampler, Sampler
from .sampling import SampleResult, SamplerState, SamplingWorker
from .status import (
    ClientStatus,
    Counters,
    DaemonInfo,
    ExitedClient,
    OpenPhase,
    Quotas,
    SamplerStatus,
    Status,
    StoreHealth,
)
from .store import Store

log = structlog.get_logger("gpuos_hintd.service")

RECENT_EXITED = 32
#: GPUOS_HINTD_PURE=1: check events in Python only, even where the compiled checker is built.
ENV_PURE = "GPUOS_HINTD_PURE"
#: Keys of reaped clients remembered, so a late batch of an exited process is refused
#: (counted once) instead of re-creating the client at every reap cycle.
REAPED_MEMORY = 4096
#: A client found dead is reaped at the next reap cycle, not at once: its last batches
#: (flushed at exit, bye included) are usually still in flight when it dies.
REAP_GRACE_NS = 1_000_000_000
#: Reply sent to a peer refused at admission, so it can tell why (at most once per reason).
SpanSink = Callable[[list[SpanRow]], None]


def _span_iv(row: SpanRow, ended: bool) -> SpanIv:
    """A span's interval for the phase-energy fit: device interval if recorded, else host; open: None end."""
    if row.dev_start_ns is not None and row.dev_end_ns is not None:
        return SpanIv(row.span_id, row.parent_span_id, row.path, row.dev_start_ns, row.dev_end_ns)
    return SpanIv(row.span_id, row.parent_span_id, row.path, row.start_ns, row.end_ns if ended else None)


def _edge_ru(c: Client, ev: list[Any], index: int, tid: int) -> tuple[int, ...] | None:
    """The edge reading of a phase event (already checked by protocol.check_ru).

    A nil reading from a thread that sent one before stands for that last reading (the client
    reads at most once per GPUOS_HINT_RUSAGE_MIN_US per thread); from a thread that never sent
    one (an old client, or reads off) it means no reading.
    """
    if len(ev) > index and ev[index] is not None:
        ru = tuple(ev[index][:7])
        if len(c.last_ru) < 4096 or tid in c.last_ru:  # bounded per client
            c.last_ru[tid] = ru
        return ru
    return c.last_ru.get(tid)


class HintService:
    def __init__(
        self,
        config: Config,
        store: Store | None,
        samplers: Iterable[Sampler] = (),
        procfs_root: Path = procfs.PROCFS,
    ) -> None:
        self.config = config
        self.store = store
        self.procfs = procfs_root
        self.boot_id = procfs.boot_id(procfs_root)
        self.limits = P.LIMITS
        self.started_mono = time.monotonic()
        self.started_wall_ns = time.time_ns()
        self.clients: dict[ProcKey, Client] = {}
        self.by_routing: dict[bytes, ProcKey] = {}
        self.exited: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EXITED)
        self.rejected: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()
        self.samplers: list[SamplerState] = []
        self.metrics: dict[str, Metric] = {}
        self.sinks: list[SpanSink] = []
        self.metrics_url: str | None = None  # set by metrics.start_metrics_server
        #: Called on the daemon's thread after every sampling tick (metrics, exporters).
        self.tick_hooks: list[Callable[[HintService], None]] = []
        #: Extra blocks of status() by name (e.g. "otlp": the exporter's counters).
        self.status_sections: dict[str, Callable[[], Any]] = {}
        self.phase_stats = PhaseStats()
        self.phase_energy = PhaseEnergy()
        self.correlator = Correlator({}, self._on_spans)
        self.correlator.defer = True  # one finalisation pass per tick (_apply calls end_tick)
        for s in samplers:
            self.add_sampler(s)
        self.worker = SamplingWorker(self.samplers)
        self._handlers: dict[int, Callable[[Client, list[Any], int, int], list[bytes] | None]] = {
            P.HELLO: self._on_hello,
            P.PHASE_BEGIN: self._on_begin,
            P.PHASE_END: self._on_end,
            P.MARK: self._on_mark,
            P.CLASS: self._on_class,
            P.HEARTBEAT: self._on_heartbeat,
            P.BYE: self._on_bye,
        }
        self._marks: list[MarkRow] = []
        #: The batch checker that vouches for the common events: the compiled one
        #: (gpuos_client._cproto), or its pure-Python twin without it or with GPUOS_HINTD_PURE=1.
        compiled = None if os.environ.get(ENV_PURE) == "1" else P.fast_checker()
        self._fast_check: Callable[[list[Any], P.Limits], bytes | bytearray] = compiled or P.check_events_py
        self.compiled_checker = compiled is not None
        #: wall - monotonic clock, read once per message: a span's wall start is its t plus this.
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self._baseline_due: list[Client] = []
        # Samples go to the store at most store_samples_hz (the correlator uses every one):
        # ~0.75 KB per process and tick would be ~10 GB a day for 16 processes at 10 Hz.
        hz = config.store_samples_hz
        self._store_every_ns = int(1e9 / hz) - 1_000_000 if hz > 0 else 0  # 1 ms of slack for tick jitter
        self._stored_at: dict[ProcKey, int] = {}
        self._procs_dirty: set[ProcKey] = set()
        self._reaped: collections.OrderedDict[ProcKey, None] = collections.OrderedDict()
        self._uid_clients: collections.Counter[int] = collections.Counter()
        #: Heartbeats waiting for their lost_end sweep, the newest per client (one sweep
        #: per client per tick, however many heartbeats a message carries).
        self._sweeps: dict[ProcKey, tuple[int, set[int]]] = {}
        self._uid_open_now: dict[int, int] = {}  # per-uid open spans, valid for the message at hand
        self.syncs_applied = 0  # sampling syncs whose results were applied (sync requests wait on it)
        #: The server's hint-connection counts (set by server.Server; {} without one).
        self.connections: Callable[[], dict[str, Any]] = dict
        if store is not None:
            store.max_queue_rows = config.store_queue_rows

    # ------------------------------------------------------------ samplers
    def add_sampler(self, sampler: Sampler) -> None:
        """Register a sampler; an unavailable one is kept (as a NullSampler) with its reason."""
        ok, reason = sampler.available()
        if not ok:
            sampler.close()
            sampler = NullSampler(sampler.name, reason)
        for name in sampler.metrics:
            if name in self.metrics:
                raise ValueError(f"metric {name!r} of sampler {sampler.name!r} is already declared")
        self.metrics.update(sampler.metrics)
        self.samplers.append(SamplerState(sampler, ok, reason))
        self.correlator.set_metrics(self.metrics)
        if self.store is not None:
            self.store.register_metrics(self.metrics)  # the catalogue readers use instead of the samplers
        log.info("sampler", name=sampler.name, available=ok, reason=reason or None)

    # --------------------------------------------------------------- ingest
    def ingest(self, data: bytes, peer: tuple[int, int, int] | None, routing_id: bytes = b"") -> list[bytes]:
        """Handle one message; return replies for the sender (possibly none).

        Never raises: a bad message is counted under its reason and logged
        (rate-limited by reason), and everything the daemon already holds stays.
        A bug of ours that an input reaches is caught here too, counted as
        ``internal_error`` and logged with its traceback: one message must never
        stop the service (systemd's start limit would then keep it down).
        """
        self.counters["messages"] += 1
        try:
            return self._ingest(data, peer, routing_id)
        except Exception as exc:
            self.reject("internal_error", f"{type(exc).__name__}: {exc}", peer, n=1, exc=exc)
            return []

    def _ingest(self, data: bytes, peer: tuple[int, int, int] | None, routing_id: bytes) -> list[bytes]:
        self._uid_open_now.clear()
        try:
            batch = P.decode_batch(data, self.limits)
        except P.ProtocolError as exc:
            self.reject(exc.reason, exc.detail, peer, n=1)
            return []
        try:
            client = self._admit(batch, peer, routing_id)
        except P.ProtocolError as exc:  # the wire's reasons and the daemon's (Refused)
            self.reject(exc.reason, exc.detail, peer, n=1)
            # The sender learns that (and why) its events were refused: its stats count them as
            # rejected by reason ("too_many_clients_for_uid" instead of nothing).
            return [P.encode_ack(batch.seq, 0, len(batch.events), exc.reason)]
        replies: list[bytes] = []
        if batch.seq != client.last_seq + 1 and client.last_seq:
            client.seq_gaps += 1
        client.last_seq = batch.seq
        client.batches += 1
        client.client_dropped = max(client.client_dropped, batch.dropped)
        client.last_seen_mono_ns = time.monotonic_ns()
        events = batch.events
        # One call vets the common events of the whole batch; what it does not vouch for
        # (ASK_PYTHON) is checked, and refused by reason, by protocol.check_event/check_fields.
        verdicts = self._fast_check(events, self.limits)
        handlers = self._handlers
        check_event, check_fields = P.check_event, P.check_fields
        limits = self.limits
        ask = P.ASK_PYTHON
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        nev = 0
        why = None
        for i, ev in enumerate(events):
            try:
                kind = verdicts[i]
                if kind != ask:
                    out = handlers[kind](client, ev, ev[1], ev[2])
                else:
                    kind, t_ns, tid = check_event(ev, limits)
                    check_fields(kind, ev, limits)
                    out = handlers[kind](client, ev, t_ns, tid)
            except P.ProtocolError as exc:  # the wire's reasons and the daemon's (Refused)
                self.reject(exc.reason, exc.detail, peer, n=1, unit="event")
                why = exc.reason
                continue
            except Exception as exc:  # a bug reached by this event: count it, keep the rest
                self.reject("internal_error", f"{type(exc).__name__}: {exc}", peer, n=1, unit="event", exc=exc)
                continue
            nev += 1
            if out:
                replies.extend(out)
        client.events += nev
        self.counters["events"] += nev
        if self._baseline_due:
            # A new client's first sample right after its first batch (so its phase
            # threads are known), not up to a tick later; likewise a client saying bye.
            due, self._baseline_due = self._baseline_due, []
            self._sample_now(due)
        if client.hello is None and client.batches == 1:
            # A client we never greeted: the daemon restarted under it.  Ask it to resync.
            replies.append(P.encode_resync())
            self.counters["resync_requests"] += 1
        replies.append(P.encode_ack(batch.seq, nev, len(batch.events) - nev, why))
        return replies

    def _admit(self, batch: P.Batch, peer: tuple[int, int, int] | None, routing_id: bytes) -> Client:
        if peer is None:
            if not self.config.allow_unauthenticated:
                raise Rejected("no_credentials", "transport has no peer credentials (TCP?)")
            peer = (batch.pid, -1, -1)
        peer_pid, uid, gid = peer
        key_hint = self.by_routing.get(routing_id) if routing_id else None
        if key_hint is not None:
            # A connection speaks for one process for its whole life: the one it proved to be.
            client = self.clients.get(key_hint)
            if (
                client is not None
                and key_hint.pid == peer_pid
                and key_hint.start == batch.pid_start
                and (client.ns_pid or client.key.pid) == batch.pid
            ):
                return self._charge(client, batch)
            if client is not None:
                raise Rejected("identity_changed", f"connection of pid {key_hint.pid} claims {batch.pid}")
        key = ProcKey(peer_pid, batch.pid_start)
        if key in self._reaped:
            raise Rejected("client_exited", f"pid {peer_pid} was already reaped")
        client = self.clients.get(key)
        if client is None or client.uid != uid or (client.ns_pid or client.key.pid) != batch.pid:
            # Acceptance needs the live process: pid and start time now, and the same uid as
            # the socket's peer.  A batch queued by a process that exited is refused here,
            # so a new process that reuses the pid can never inherit it.
            host_pid, ns_pid = verify_peer(peer_pid, batch.pid, batch.pid_start, self.procfs, uid)
            key = ProcKey(host_pid, batch.pid_start)
            client = self.clients.get(key)
        else:
            ns_pid = client.ns_pid
        if client is None:
            if len(self.clients) >= self.config.max_clients:
                raise Rejected("too_many_clients", f"limit {self.config.max_clients}")
            if uid != 0 and self._uid_clients[uid] >= self.config.max_clients_per_uid:
                raise Rejected("too_many_clients_for_uid", f"uid {uid} has {self._uid_clients[uid]} clients")
            client = self._new_client(key, uid, gid, ns_pid)
        elif client.uid != uid:
            raise Rejected("uid_mismatch", f"pid {key.pid} belongs to uid {client.uid}, peer is uid {uid}")
        if routing_id:
            if client.routing_id and client.routing_id != routing_id:
                self.by_routing.pop(client.routing_id, None)
            client.routing_id = routing_id
            self.by_routing[routing_id] = key
        return self._charge(client, batch)

    def _charge(self, client: Client, batch: P.Batch) -> Client:
        if not client.bucket.take(len(batch.events), time.monotonic()):
            raise Rejected("rate_limited", f"pid {client.key.pid} over {self.config.rate_events_per_s:.0f} ev/s")
        return client

    def _new_client(self, key: ProcKey, uid: int, gid: int, ns_pid: int | None) -> Client:
        comm, cmdline, cgroup, unit = describe_process(key.pid, self.procfs)
        now = time.monotonic_ns()
        client = Client(
            key=key,
            uid=uid,
            gid=gid,
            comm=comm,
            cmdline=cmdline,
            cgroup=cgroup,
            unit=unit,
            first_seen_wall_ns=time.time_ns(),
            last_seen_mono_ns=now,
            bucket=TokenBucket(self.config.rate_events_per_s, self.config.rate_burst_events),
            ns_pid=ns_pid,
        )
        self.clients[key] = client
        self._uid_clients[uid] += 1
        self._procs_dirty.add(key)
        self.counters["clients_seen"] += 1
        log.info("client_connected", pid=key.pid, comm=comm, uid=uid, unit=unit, ns_pid=ns_pid)
        self._baseline_due.append(client)
        return client

    def reject(
        self,
        reason: str,
        detail: str,
        peer: tuple[int, int, int] | None = None,
        n: int = 1,
        unit: str = "message",
        exc: BaseException | None = None,
    ) -> None:
        """Count ``n`` refused units under ``reason`` and log it (the first 10, then at powers of two).

        Public: the server refuses frames and connections through it, so every
        refusal in the daemon lands in one counter with one log policy.
        """
        self.rejected[reason] += n
        total = self.rejected[reason]
        if total <= 10 or total & (total - 1) == 0:  # log the first 10, then at powers of two
            fields: dict[str, Any] = {
                "reason": reason,
                "unit": unit,
                "detail": detail[:200],
                "peer_pid": peer[0] if peer else None,
                "peer_uid": peer[1] if peer else None,
                "count": total,
            }
            if exc is not None:
                log.error("internal_error", exc_info=exc, **fields)
            else:
                log.warning("rejected", **fields)

    # ------------------------------------------------------------ handlers
    def _on_hello(self, c: Client, ev: list[Any], t: int, tid: int) -> list[bytes]:
        c.hello = _bounded_hello(ev[3], self.limits.max_hello_bytes)
        return [P.encode_welcome(__version__)]

    def _on_begin(self, c: Client, ev: list[Any], t: int, tid: int) -> None:
        corr = self.correlator
        span_id, parent_id, name, cls, attrs = ev[3], ev[4], ev[5], ev[6], ev[7]
        if corr.get(c.key, span_id) is not None:
            return  # already known (recovered from a heartbeat that overtook it)
        self._open_span(c, span_id, parent_id, tid, t, name, cls, attrs, recovered=False, ru=_edge_ru(c, ev, 8, tid))

    def _open_span(
        self,
        c: Client,
        span_id: int,
        parent_id: int,
        tid: int,
        t: int,
        name: str,
        cls: str | None,
        attrs: dict[str, Any] | None,
        recovered: bool,
        ru: tuple[int, ...] | None = None,
    ) -> None:
        n_open = self.correlator.n_open.get(c.key, 0)
        if n_open >= self.config.max_open_spans_per_client:
            raise Rejected("too_many_open_spans", f"pid {c.key.pid} has {n_open} open")
        if c.uid != 0 and self._uid_open(c.uid) >= self.config.max_open_spans_per_uid:
            raise Rejected("too_many_open_spans_for_uid", f"uid {c.uid} is at {self.config.max_open_spans_per_uid}")
        parent = self.correlator.get(c.key, parent_id) if parent_id else None
        depth = parent.row.depth + 1 if parent else 1
        if depth > self.limits.max_depth:
            # Paths grow with depth (depth x name length): the bound on one keeps the other.
            raise Rejected("too_deep", f"depth {depth} > {self.limits.max_depth}")
        path = f"{parent.row.path}/{name}" if parent else name
        tid = self._host_tid(c, tid)
        row = SpanRow(
            boot_id=self.boot_id,
            pid=c.key.pid,
            pid_start=c.key.start,
            span_id=span_id,
            parent_span_id=parent_id,
            tid=tid,
            name=name,
            path=path,
            depth=depth,
            workload_class=cls or c.workload_class,
            attrs=attrs,
            start_ns=t,
            end_ns=t,
            start_wall_ns=t + self._wall_offset_ns,
            status="open",
            recovered=recovered,
        )
        if tid not in c.tids:
            c.tids.add(tid)
        self.correlator.begin(c.key, row, ru)  # type: ignore[arg-type]  # check_ru made it 7 ints
        if c.uid in self._uid_open_now:
            self._uid_open_now[c.uid] += 1

    def _uid_open(self, uid: int) -> int:
        """Open spans of every client of a uid: counted once per message, then kept up to date.

        Counting per begin would be O(clients) per event; per message it is O(clients)
        once, and ends within the message are not subtracted (errs towards refusing).
        """
        n = self._uid_open_now.get(uid)
        if n is None:
            n_open = self.correlator.n_open
            n = self._uid_open_now[uid] = sum(n_open.get(c.key, 0) for c in self.clients.values() if c.uid == uid)
        return n

    def _host_tid(self, c: Client, tid: int) -> int:
        """A container client's thread id as the host sees it (the samplers read host /proc)."""
        if c.ns_pid is None:
            return tid
        host = c.ns_tids.get(tid)
        if host is None:
            if len(c.ns_tids) >= 4096:
                c.ns_tids.clear()
            host = c.ns_tids[tid] = ns_to_host_tid(c.key.pid, tid, self.procfs)
        return host

    def _on_end(self, c: Client, ev: list[Any], t: int, tid: int) -> None:
        row = self.correlator.end(c.key, ev[3], t, ev[4], _edge_ru(c, ev, 6, tid))  # type: ignore[arg-type]
        if row is None:
            self.counters["orphan_ends"] += 1
        elif ev[5]:
            row.attrs = {**(row.attrs or {}), **ev[5]}

    def _on_mark(self, c: Client, ev: list[Any], t: int, tid: int) -> None:
        name, attrs = ev[3], ev[4]
        if name == P.DEVICE_MARK and attrs:
            self._device_interval(c, attrs)
            return
        self._marks.append(MarkRow(self.boot_id, c.key.pid, c.key.start, tid, t, t + self._wall_offset_ns, name, attrs))

    def _device_interval(self, c: Client, attrs: dict[str, Any]) -> None:
        span_id, begin, end = attrs.get("span"), attrs.get("dev_begin_ns"), attrs.get("dev_end_ns")
        if not all(type(v) is int for v in (span_id, begin, end)):
            raise Rejected("bad_device_mark", f"{attrs!r}")
        busy, busy_err = attrs.get("busy_ns"), attrs.get("busy_err_ns")
        if busy is not None and not (type(busy) is int and 0 <= busy <= max(end - begin, 0)):
            # Busy time is inside the device interval by definition: anything else is a bad client.
            raise Rejected("bad_device_mark", f"busy_ns {busy!r} not an int within the interval of {end - begin} ns")
        if busy_err is not None and not (type(busy_err) is int and busy_err >= 0 and busy is not None):
            raise Rejected("bad_device_mark", f"busy_err_ns {busy_err!r}")
        open_span = self.correlator.get(c.key, span_id)
        if open_span is not None:
            row = open_span.row
            row.dev_start_ns, row.dev_end_ns, row.dev_busy_ns, row.dev_busy_err_ns = begin, end, busy, busy_err
            return
        self.counters["device_intervals_late"] += 1
        self.phase_energy.device(c.key, span_id, begin, end)
        if self.store is not None:
            sig = self.correlator.device_signals(c.key, begin, end, busy, busy_err)
            self.store.submit(
                "device", [DeviceInterval(self.boot_id, c.key.pid, c.key.start, span_id, begin, end, sig)]
            )

    def _on_class(self, c: Client, ev: list[Any], t: int, tid: int) -> None:
        c.workload_class = ev[3]
        self._procs_dirty.add(c.key)
        wall = t + self._wall_offset_ns
        self._marks.append(MarkRow(self.boot_id, c.key.pid, c.key.start, tid, t, wall, "__class__", {"class": ev[3]}))

    def _on_heartbeat(self, c: Client, ev: list[Any], t: int, tid: int) -> None:
        if len(ev[3]) > 1 and not c.bucket.take(len(ev[3]) - 1, time.monotonic()):
            raise Rejected("rate_limited", f"pid {c.key.pid}: heartbeat of {len(ev[3])} spans over the rate")
        stats = ev[4]
        if isinstance(stats.get("dropped"), int):
            c.client_dropped = max(c.client_dropped, stats["dropped"])
        if isinstance(stats.get("buffered"), int):
            c.client_buffered = stats["buffered"]
        if "cls" in stats and (stats["cls"] is None or isinstance(stats["cls"], str)):
            if stats["cls"] != c.workload_class:
                c.workload_class = stats["cls"]
                self._procs_dirty.add(c.key)
        listed = set()
        for span_id, parent_id, stid, t_begin, name, cls, attrs in (s[: P.OPEN_SPAN_LEN] for s in ev[3]):
            listed.add(span_id)
            if self.correlator.get(c.key, span_id) is None:
                # The daemon restarted, or the begin was dropped: rebuild the span.  A span
                # refused here is counted like its begin was; the rest of the heartbeat stands.
                try:
                    self._open_span(c, span_id, parent_id, stid, t_begin, name, cls, attrs, recovered=True)
                except Rejected as exc:
                    self.reject(exc.reason, exc.detail, None, n=1, unit="recovered span")
                    continue
                self.counters["spans_recovered"] += 1
        # Spans the daemon holds open that the client no longer has lost their end
        # (dropped from a full buffer).  The sweep is O(open spans): it runs once per
        # client per tick for the newest heartbeat, not once per heartbeat.
        self._sweeps[c.key] = (t, listed)

    def _sweep_lost_ends(self) -> None:
        sweeps, self._sweeps = self._sweeps, {}
        for key, (t, listed) in sweeps.items():
            if key not in self.clients:
                continue
            for span in list(self.correlator.open_spans(key)):
                if span.row.span_id not in listed and span.row.start_ns <= t:
                    self.correlator.end(key, span.row.span_id, t, "lost_end")
                    self.counters["spans_lost_end"] += 1

    def _on_bye(self, c: Client, ev: list[Any], t: int, tid: int) -> None:
        c.said_bye = True
        self._baseline_due.append(c)  # a last sample while the process still exists

    def _wall(self, c: Client, t_mono: int) -> int:
        """Wall-clock ns of a monotonic timestamp, via the daemon's own clocks."""
        return time.time_ns() - (time.monotonic_ns() - t_mono)

    # ------------------------------------------------------------- sampling
    def request_tick(self) -> bool:
        """Post a sampling tick to the worker; skipped (and counted) while the last one runs."""
        if self.worker.outstanding:
            self.counters["ticks_skipped"] += 1
            return False
        self.worker.submit("tick", self._targets(self.clients.values()))
        return True

    def apply_samples(self, results: list[SampleResult] | None = None) -> None:
        """Feed finished samples to the correlator and the store (on the daemon thread)."""
        for res in self.worker.ready() if results is None else results:
            self._apply(res)

    def tick(self, timeout: float = 5.0) -> None:
        """Sample every live client now and wait for it (sync requests, tests, shutdown)."""
        self.worker.submit("sync", self._targets(self.clients.values()))
        for res in self.worker.wait("sync", timeout):
            self._apply(res)

    def _targets(self, clients: Iterable[Client]) -> list[Target]:
        return [Target(c.key, frozenset(c.tids)) for c in clients]

    def _sample_now(self, clients: list[Client]) -> None:
        if clients:
            self.worker.submit("baseline", self._targets(clients))

    def _apply(self, res: SampleResult) -> None:
        if self._sweeps:
            self._sweep_lost_ends()
        now, wall = res.t_ns, time.time_ns() - (time.monotonic_ns() - res.t_ns)
        rows: list[SampleRow] = []
        sampled = [(key, ps) for key, ps in res.samples.items() if key in self.clients]  # not reaped meanwhile
        for key, ps in sampled:
            self.correlator.on_sample(key, now, ps)
        self.correlator.end_tick()  # every process's due spans in one columnar pass
        for key, ps in sampled:
            series = self.correlator.series.get(key)
            if series:
                live = (_span_iv(sp.row, sp.ended) for sp in self.correlator.spans.get(key, {}).values())
                attrs = self.phase_energy.advance(key, now, series, live)
                if attrs:
                    mark = MarkRow(self.boot_id, key.pid, key.start, 0, now, wall, PHASE_ENERGY_MARK, attrs)
                    self._marks.append(mark)
            if self.config.store_samples and now - self._stored_at.get(key, 0) >= self._store_every_ns:
                self._stored_at[key] = now
                rows.append(SampleRow(self.boot_id, key.pid, key.start, 0, now, wall, ps.values))
                rows.extend(
                    SampleRow(self.boot_id, key.pid, key.start, tid, now, wall, vals)
                    for tid, vals in ps.threads.items()
                )
        if rows and self.store is not None:
            self.store.submit("samples", rows)
        if res.tag == "baseline":
            return
        if res.tag == "sync":
            self.syncs_applied += 1
        self.counters["ticks"] += 1
        self.flush_rows()
        for hook in self.tick_hooks:
            try:
                hook(self)
            except Exception as exc:
                log.warning("tick_hook_failed", hook=repr(hook), error=str(exc))

    def flush_rows(self) -> None:
        if self.store is None:
            self._marks.clear()
            self._procs_dirty.clear()
            return
        if self._marks:
            self.store.submit("marks", self._marks)
            self._marks = []
        if self._procs_dirty:
            rows = [self._process_row(self.clients[k]) for k in self._procs_dirty if k in self.clients]
            self._procs_dirty.clear()
            if rows:
                self.store.submit("processes", rows)

    def _process_row(self, c: Client, exit_reason: str | None = None) -> ProcessRow:
        return ProcessRow(
            boot_id=self.boot_id,
            pid=c.key.pid,
            pid_start=c.key.start,
            uid=c.uid,
            gid=c.gid,
            comm=c.comm,
            cmdline=" ".join(c.cmdline)[:1024],
            cgroup=c.cgroup,
            unit=c.unit,
            workload_class=c.workload_class,
            first_seen_wall_ns=c.first_seen_wall_ns,
            last_seen_wall_ns=time.time_ns(),
            exit_reason=exit_reason,
            events=c.events,
            client_dropped=c.client_dropped,
        )

    def _on_spans(self, rows: list[SpanRow]) -> None:
        self.counters["spans_closed"] += len(rows)
        self.phase_stats.add_many(rows)
        for row in rows:
            if row.signals.get("gpu_energy_source") == "power_samples":
                iv = _span_iv(row, True)
                self.phase_energy.on_span(
                    ProcKey(row.pid, row.pid_start), row.span_id, row.parent_span_id, row.path, iv.a, iv.b or iv.a
                )
        if self.store is not None:
            self.store.submit("spans", rows)
        for sink in self.sinks:
            try:
                sink(rows)
            except Exception as exc:
                log.warning("span_sink_failed", sink=repr(sink), error=str(exc))

    # --------------------------------------------------------------- reaper
    def reap(self, force: bool = False) -> list[ProcKey]:
        """Close the spans of clients whose process is gone ("abandoned" if still open).

        A client found dead is reaped one grace period later (its last batches are
        still being read), and then exactly once: its key is remembered, so a batch
        that arrives later is refused as ``client_exited`` instead of re-creating it.
        """
        now = time.monotonic_ns()
        gone = []
        for k, c in self.clients.items():
            if is_alive(k, self.procfs):
                c.dead_since_ns = 0
            elif not c.dead_since_ns:
                c.dead_since_ns = now
                if force:
                    gone.append(k)
            elif now - c.dead_since_ns >= REAP_GRACE_NS or force:
                gone.append(k)
        for key in gone:
            c = self.clients.pop(key)
            self._reaped[key] = None
            while len(self._reaped) > REAPED_MEMORY:
                self._reaped.popitem(last=False)
            self._uid_clients[c.uid] -= 1
            if self._uid_clients[c.uid] <= 0:
                del self._uid_clients[c.uid]
            self._sweeps.pop(key, None)
            self._stored_at.pop(key, None)
            if c.routing_id:
                self.by_routing.pop(c.routing_id, None)
            last = self.correlator.prev.get(key)
            at = max(c.last_seen_mono_ns, last.t_ns if last else 0)
            closed = self.correlator.close_process(key, "abandoned", at)
            attrs = self.phase_energy.forget(key)
            if attrs:
                mono = time.monotonic_ns()
                self._marks.append(
                    MarkRow(self.boot_id, key.pid, key.start, 0, mono, self._wall(c, mono), PHASE_ENERGY_MARK, attrs)
                )
            abandoned = sum(1 for r in closed if r.status == "abandoned")
            reason = "exited" if c.said_bye else "died"
            self.counters["clients_exited"] += 1
            self.counters["spans_abandoned"] += abandoned
            if self.store is not None:
                self.store.submit("processes", [self._process_row(c, reason)])
            self.exited.append(
                {
                    "pid": key.pid,
                    "uid": c.uid,
                    "comm": c.comm,
                    "reason": reason,
                    "abandoned_spans": abandoned,
                    "events": c.events,
                    "dropped": c.client_dropped,
                    "wall_ns": time.time_ns(),
                }
            )
            log.info("client_gone", pid=key.pid, comm=c.comm, reason=reason, abandoned_spans=abandoned)
        return gone

    # ------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Close every open span as "interrupted" (a restarted daemon recovers them from heartbeats)."""
        self.apply_samples()
        self.tick()
        for key in list(self.clients):
            self.correlator.close_process(key, "interrupted")
        self.flush_rows()
        self.worker.close()
        for st in self.samplers:
            try:
                st.sampler.close()
            except Exception as exc:
                log.warning("sampler_close_failed", sampler=st.sampler.name, error=str(exc))

    # --------------------------------------------------------------- status
    def set_metrics_url(self, url: str | None) -> None:
        """Where /metrics is served (shown in status; set by whoever starts the exporter)."""
        self.metrics_url = url

    def client_status(self, key: ProcKey) -> ClientStatus | None:
        """One live client as status() shows it to root (None if it is not connected)."""
        c = self.clients.get(key)
        return self._client_status(c, time.monotonic_ns(), True, True) if c is not None else None

    def _client_status(self, c: Client, now: int, full: bool, detail: bool) -> ClientStatus:
        n_open = self.correlator.n_open.get(c.key, 0)
        common = {
            "pid": c.key.pid,
            "uid": c.uid,
            "comm": c.comm,
            "events": c.events,
            "batches": c.batches,
            "dropped": c.client_dropped,
            "last_seen_s": round((now - c.last_seen_mono_ns) / 1e9, 3),
            "open_count": n_open,
            "pid_start": c.key.start,
        }
        if not full:
            return ClientStatus(**common, redacted=True)
        phases: tuple[OpenPhase, ...] = ()
        if detail:
            spans = sorted((s.row.start_ns, s.row.path, s.row.tid) for s in self.correlator.open_spans(c.key))
            phases = tuple(OpenPhase(p, tid, round((now - t) / 1e9, 3)) for t, p, tid in spans)
        return ClientStatus(
            **common,
            workload_class=c.workload_class,
            open_phases=phases,
            ns_pid=c.ns_pid,
            cmdline=tuple(c.cmdline[:8]),
            unit=c.unit,
            cgroup=c.cgroup,
            seq_gaps=c.seq_gaps,
            buffered=c.client_buffered,
            client_version=(c.hello or {}).get("client"),
        )

    def status(self, viewer_uid: int | None = 0, *, detail: bool = True) -> Status:
        """The daemon's state as ``viewer_uid`` may see it (0 or None: everything).

        Another uid's clients appear in summary only: pid, uid, comm, counts - not
        their cmdline (secrets live in argv), cgroup, unit, phase names or hello.
        ``detail=False`` (the metrics tick) skips what costs O(open spans) or
        O(phases): the clients' open phases and the phase table.
        """
        now = time.monotonic_ns()
        full = viewer_uid is None or viewer_uid == 0
        clients = tuple(self._client_status(c, now, full or c.uid == viewer_uid, detail) for c in self.clients.values())
        show_phases = detail and (full or self._single_uid(viewer_uid))
        return Status(
            daemon=DaemonInfo(
                version=__version__,
                pid=os.getpid(),
                uptime_s=round(time.monotonic() - self.started_mono, 3),
                started_wall_ns=self.started_wall_ns,
                endpoint=self.config.endpoint,
                control=self.config.control,
                state_dir=str(self.config.state_dir),
                sample_hz=self.config.sample_hz,
                protocol=P.VERSION,
                metrics_url=self.metrics_url,
            ),
            counters=Counters(
                dict(self.counters),
                rejected_total=sum(self.rejected.values()),
                client_dropped_total=sum(c.client_dropped for c in self.clients.values())
                + sum(e["dropped"] for e in self.exited),
            ),
            rejected=dict(self.rejected),
            clients=clients,
            exited=tuple(ExitedClient(**e) for e in self.exited if full or e.get("uid") == viewer_uid),
            quotas=Quotas(
                max_clients=self.config.max_clients,
                max_clients_per_uid=self.config.max_clients_per_uid,
                max_open_spans_per_client=self.config.max_open_spans_per_client,
                max_open_spans_per_uid=self.config.max_open_spans_per_uid,
                max_depth=self.limits.max_depth,
            ),
            samplers=tuple(
                SamplerStatus(
                    name=st.sampler.name,
                    available=st.available,
                    reason=st.reason or None,
                    metrics=len(st.sampler.metrics),
                    ticks=st.ticks,
                    errors=st.errors,
                    last_ms=round(st.last_ms, 3),
                    max_ms=round(st.max_ms, 3),
                    total_ms=round(st.total_ms, 3),
                    last_error=st.last_error,
                    health=_safe(st.sampler.health),
                    devices=_safe(st.sampler.devices),
                )
                for st in self.samplers
            ),
            store=StoreHealth.from_dict(self.store.health()) if self.store else None,
            connections=_safe(self.connections) if full else {},
            phases=tuple(self.phase_stats.top(20)) if show_phases else (),
            sections={name: _safe(fn) for name, fn in self.status_sections.items()},
            detail=detail,
        )

    def _single_uid(self, uid: int | None) -> bool:
        """Live phase totals mix every client: a non-root viewer gets them only when all are its own."""
        return all(c.uid == uid for c in self.clients.values()) and all(e.get("uid") == uid for e in self.exited)


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _bounded_hello(info: Any, max_bytes: int) -> dict[str, Any]:
    """The part of a hello the daemon keeps: known keys, short strings, at most ``max_bytes``.

    A hello's info map is free-form and may be ~1 MB; a thousand clients would
    otherwise keep a gigabyte of argv.  Each kept string is cut to 256 chars,
    argv to 64 items, and the whole to max_bytes of text.
    """
    out: dict[str, Any] = {}
    budget = max_bytes
    for key in ("wall_ns", "mono_ns", "argv", "client", "proto", "python"):
        if key not in info:
            continue
        value = info[key]
        if key == "argv":
            value = [str(a)[:256] for a in value[:64]] if isinstance(value, list) else []
            cost = sum(len(a) for a in value)
        elif isinstance(value, bool | int | float) or value is None:
            cost = 8
        else:
            value = str(value)[:256] if isinstance(value, str) else None
            cost = len(value or "")
        if cost > budget:
            break
        budget -= cost
        out[key] = value
    return out
