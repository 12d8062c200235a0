"""The ZeroMQ front of the daemon: a ROUTER for hints, a ROUTER for control, one loop.

Single-threaded by design: ingest, sampling ticks, reaping and control
requests interleave on one poller, each deadline computed before the work
(dynolog's loop), and a missed tick is skipped rather than bursted.  The
SQLite writer is the only other thread.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import resource
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import zmq
from gpuos_client import protocol as P
from gpuos_client.config import ipc_path

from . import __version__
from .config import Config
from .control import DaemonUnavailable, request
from .errors import ConfigError
from .notify import Notifier
from .service import HintService

log = structlog.get_logger("gpuos_hintd.server")
#: Tick jitter, as a fraction of the period (uniform, around a fixed grid).
TICK_JITTER = 0.1

MAX_DRAIN = 4096  # messages per readiness before timers get a turn
# Over this libzmq drops the peer outright; between max_message_bytes and this it is
# counted as "oversized".  Small on purpose: RCVHWM x this is what one connection can queue.
HARD_MAX_MESSAGE = P.LIMITS.max_message_bytes + 65536
#: Messages libzmq queues per hint connection (ROUTER's RCVHWM is per peer): with
#: HARD_MAX_MESSAGE this bounds one connection's queued bytes to ~68 MB worst case.
HINT_RCVHWM = 64
#: File descriptors kept free for the daemon itself (store, /proc reads, NVML, libzmq's
#: own pipes): libzmq aborts on EMFILE in places, so connections stop well before.
FD_HEADROOM = 256
MAX_SYNC_S = 10.0  # a sync request waits at most this long, whatever it asks for
MAX_PENDING_SYNCS = 16


#: Young-generation threshold of the cyclic gc once the daemon runs (CPython's default: 700).
#: Ingest allocates a few objects per event (span rows, tuples) that live until the next
#: tick; with the default, gc ran every ~100 events and walked every live span each time
#: it reached the older generations: 35-40 % of in-process ingest time
#: (benchmarks/results/ingest_path.json, "+gc" options).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up allocated (config, samplers, imports) and collect young objects less often.

    Frozen objects are never traversed again; cycles made later are still collected, just
    in larger, rarer sweeps.  Called once, when the loop starts.
    """
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, max(g1, 50), max(g2, 100))


class AlreadyRunning(ConfigError):
    pass


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (1024 by default would cap clients at ~1000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft, hard


def runtime_dir_problem(st: os.stat_result, uid: int) -> str | None:
    """Why a socket directory is unsafe for a daemon running as ``uid`` (None: it is safe).

    Another user who owns or can write the directory can replace our socket with
    theirs and receive every client's hello (argv) and phases, or serve a fake
    status.  /tmp itself is the one shared dir allowed (sticky, root-owned).
    """
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid and st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not by the daemon's uid {uid} or root"
    if st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and st.st_uid == 0):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _prepare_ipc(endpoint: str, mode: int | None) -> tuple[Path, int] | None:
    """Make (or check) the socket's directory; return the path and an O_PATH-free dir fd.

    The directory is created 0755 (0700 for a private daemon) if missing, then
    opened without following symlinks and checked through that fd: owned by us
    (or root), not writable by others.  Everything after that - the stale-socket
    unlink, the chmod of the bound socket - goes through the fd, never the path.
    """
    path = ipc_path(endpoint)
    if path is None:
        return None
    parent = path.parent
    uid = os.geteuid()
    dir_mode = 0o755 if mode is not None and mode & 0o006 else 0o700
    if not os.path.lexists(parent):
        try:
            parent.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(parent, dir_mode)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot create socket directory {parent}: {exc}") from None
    try:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"refusing socket directory {parent}: {exc.strerror} (a symlink?)") from None
    problem = runtime_dir_problem(os.fstat(dfd), uid)
    if problem:
        os.close(dfd)
        raise ConfigError(f"refusing socket directory {parent}: it {problem}")
    if mode is not None and parent != Path("/tmp") and os.fstat(dfd).st_uid == uid:
        try:
            os.fchmod(dfd, dir_mode)
        except OSError:
            pass
    return path, dfd


def _peer_uid(frame: zmq.Frame) -> int | None:
    """The uid of a control request's sender (SO_PEERCRED via libzmq's Peer-Address), None for TCP."""
    try:
        peer = P.parse_peer_address(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return None
    return peer[1] if peer else None


@dataclasses.dataclass(slots=True)
class PendingSync:
    head: list[bytes]
    uid: int | None
    deadline: float
    want: int  # the sampling sync it waits for
    barrier: threading.Event | None = None


def _live_daemon_at(control: str, timeout_s: float = 0.3) -> bool:
    """Whether something answers a ping on ``control`` (a refusal or garbage is an answer too)."""
    try:
        request(control, P.OP_PING, timeout_s=timeout_s)
    except DaemonUnavailable:
        return False
    except Exception:
        return True
    return True


class Server:
    def __init__(self, config: Config, service: HintService, notifier: Notifier | None = None) -> None:
        self.config = config
        self.service = service
        self.notifier = notifier or Notifier()
        self.ctx = zmq.Context(io_threads=1)
        self.stop_requested = False
        self.reload_requested = False
        self.reload_hook: Callable[[], None] | None = None
        self._sig_r: int | None = None
        self._sig_w: int | None = None
        self._bound: list[Path] = []
        self.fd_soft, self.fd_hard = raise_fd_limit()
        #: Connections refused beyond this (and a uid's share of it): keeps FD_HEADROOM free.
        self.max_connections = max(16, min(config.max_connections, self.fd_soft - FD_HEADROOM))
        self.hint = self._bind(zmq.ROUTER, config.endpoint, config.socket_mode, hint=True)
        self.control = self._bind(zmq.ROUTER, config.control, config.socket_mode, hint=False)
        self.poller = zmq.Poller()
        self.poller.register(self.hint, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.conns: dict[int, int] = {}  # accepted hint-socket fd -> peer uid
        self.conns_by_uid: dict[int, int] = {}
        self.monitor: zmq.Socket | None = None
        if ipc_path(config.endpoint) is not None:
            self.monitor = self.hint.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            self.poller.register(self.monitor, zmq.POLLIN)
        self.pending_syncs: list[PendingSync] = []
        self.sync_seq = 0  # sampling syncs posted
        service.connections = self.connection_stats
        self.poller.register(service.worker.wake_fd, zmq.POLLIN)  # sampling results are ready
        self.control_ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            P.OP_PING: lambda req: {"ok": True, "version": __version__, "pid": os.getpid()},
            P.OP_STATUS: lambda req: self.service.status(req["_uid"]).to_dict(),
            P.OP_SYNC: self._op_sync,
        }
        from .history import HISTORY_OPS

        for name, fn in HISTORY_OPS.items():
            self.control_ops[name] = lambda req, fn=fn: fn(self.service, req, req["_uid"])

    def _bind(self, kind: int, endpoint: str, mode: int, hint: bool) -> zmq.Socket:
        prepared = _prepare_ipc(endpoint, mode)
        path, dfd = prepared if prepared is not None else (None, -1)
        try:
            if path is not None and os.path.lexists(path):
                control = self.config.control
                if _live_daemon_at(control):
                    raise AlreadyRunning(f"a gpuos-hintd already answers on {control}; not starting a second one")
                os.unlink(path.name, dir_fd=dfd)  # stale socket of a daemon that died
            sock = self.ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, HINT_RCVHWM if hint else 64)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_MESSAGE if hint else 65536)
            old_umask = os.umask(0o077)  # the socket exists 0600 until chmod'ed below
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                sock.close(0)
                raise ConfigError(f"cannot listen on {endpoint}: {exc}") from None
            finally:
                os.umask(old_umask)
            if path is not None:
                # Through the checked dir fd, and only on the socket we just made: the
                # directory is ours and not writable by others, so the name cannot be swapped.
                st = os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                    sock.close(0)
                    raise ConfigError(f"{path} is not the socket just bound; refusing")
                os.chmod(path.name, mode, dir_fd=dfd)
                self._bound.append(path)
            return sock
        finally:
            if dfd >= 0:
                os.close(dfd)

    # ----------------------------------------------------------------- loop
    def install_signal_handlers(self) -> None:
        """Handlers only set flags (never clean up inside a handler); the loop acts on them."""

        def on_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True

        def on_hup(signum: int, frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        # Wake the poller as a signal arrives, so stop/reload act at once, not at the next timeout
        # (`systemctl reload` would otherwise return before the daemon applied the change).
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        self.poller.register(self._sig_r, zmq.POLLIN)

    def run(self) -> None:
        svc, cfg, notifier = self.service, self.config, self.notifier
        tune_gc()
        period_ns = int(1e9 / cfg.sample_hz)
        now = time.monotonic_ns()
        # Each tick is jittered around a fixed grid (the mean rate stays sample_hz): a tick at
        # exactly 10 Hz aliases with counters that the driver refreshes every ~100 ms (17 % of
        # 100 ms windows saw no NVML energy change on an H200); jittered, the phases average out.
        jitter = int(period_ns * TICK_JITTER)
        grid = now + period_ns
        next_tick = grid + random.randint(-jitter, jitter)
        next_reap = now + int(cfg.reap_interval_s * 1e9)
        wd_ns = int(notifier.watchdog_s * 1e9 / 2) if notifier.watchdog_s else 0
        next_wd = now
        next_status = now
        notifier.ready(self._status_line())
        log.info(
            "listening",
            endpoint=cfg.endpoint,
            control=cfg.control,
            state_dir=str(cfg.state_dir),
            sample_hz=cfg.sample_hz,
            watchdog_s=notifier.watchdog_s,
            notify=notifier.backend,
        )
        while not self.stop_requested:
            now = time.monotonic_ns()
            deadline = min(next_tick, next_reap, next_wd if wd_ns else next_tick, next_status)
            timeout_ms = max(0, (deadline - now) // 1_000_000)
            if self.pending_syncs:
                timeout_ms = min(timeout_ms, 5)
            try:
                ready = dict(self.poller.poll(timeout_ms))
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM:
                    break
                raise
            # Each step guarded: a bug reached by one input costs that step, counted and
            # logged, never the loop (systemd's start limit would keep the service down).
            if self.hint in ready:
                self._guard("hints", self._drain_hints, next_tick)
            if self.monitor is not None and self.monitor in ready:
                self._guard("monitor", self._drain_monitor)
            if self.control in ready:
                self._guard("control", self._drain_control)
            if self.pending_syncs:
                self._guard("sync", self._progress_syncs)
            if svc.worker.wake_fd in ready:
                self._guard("samples", svc.apply_samples)
            if svc.store is not None and svc.store.ensure_writer():
                svc.counters["store_writer_restarts"] += 1
            if self._sig_r is not None and self._sig_r in ready:
                try:
                    os.read(self._sig_r, 512)
                except BlockingIOError:
                    pass
            now = time.monotonic_ns()
            if now >= next_tick:
                self._guard("tick", svc.request_tick)  # the worker samples; results come back through wake_fd
                # Skip missed ticks instead of bursting to catch up.
                grid += period_ns * max(1, (now - grid) // period_ns + 1)
                next_tick = grid + random.randint(-jitter, jitter)
            if now >= next_reap:
                self._guard("reap", svc.reap)
                next_reap = now + int(cfg.reap_interval_s * 1e9)
            if wd_ns and now >= next_wd:
                notifier.watchdog()  # from the loop itself, so a hung loop is restarted
                next_wd = now + wd_ns
            if now >= next_status:
                notifier.status(self._status_line())
                next_status = now + 5_000_000_000
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
        self.shutdown()

    def _guard(self, step: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            c = self.service.counters
            c[f"loop_errors_{step}"] += 1
            n = c[f"loop_errors_{step}"]
            if n <= 10 or n & (n - 1) == 0:
                log.error("loop_step_failed", step=step, count=n, error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def _drain_hints(self, next_tick: int) -> None:
        sock, svc = self.hint, self.service
        for _ in range(MAX_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                svc.reject("bad_frames", f"{len(frames)} frames", None, n=1)
                continue
            rid, payload = frames
            peer = P.parse_peer_address(payload.get("Peer-Address"))
            for reply in svc.ingest(payload.buffer, peer, rid.bytes):
                try:
                    sock.send_multipart([rid.bytes, reply], zmq.NOBLOCK)
                except zmq.ZMQError:
                    svc.counters["replies_dropped"] += 1
            if time.monotonic_ns() >= next_tick:
                return

    def _drain_monitor(self) -> None:
        """Count hint connections per uid; shut down those over the caps (before they cost an fd more)."""
        assert self.monitor is not None
        for _ in range(1024):
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 1 or len(frames[0]) < 6:
                continue
            event, fd = struct.unpack("=HI", frames[0][:6])
            if event == zmq.EVENT_ACCEPTED:
                self._on_accepted(fd)
            elif event == zmq.EVENT_DISCONNECTED:
                uid = self.conns.pop(fd, None)
                if uid is not None:
                    self.conns_by_uid[uid] -= 1
                    if self.conns_by_uid[uid] <= 0:
                        del self.conns_by_uid[uid]

    def _on_accepted(self, fd: int) -> None:
        try:
            dup = socket.socket(fileno=os.dup(fd))  # closing the dup leaves libzmq's fd alone
        except OSError:
            return
        with dup:
            try:
                creds = dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", creds)
            except OSError:
                return
            per_uid = max(4, 2 * self.config.max_clients_per_uid)
            over = len(self.conns) >= self.max_connections or (uid != 0 and self.conns_by_uid.get(uid, 0) >= per_uid)
            if over:
                # shutdown() on a dup reaches the shared socket: libzmq reads EOF and closes
                # its own fd, so the connection goes without the daemon touching libzmq's fds.
                full = len(self.conns) >= self.max_connections
                reason = "too_many_connections" if full else "too_many_connections_for_uid"
                self.service.reject(reason, f"uid {uid}, {len(self.conns)} open", None, n=1, unit="connection")
                try:
                    dup.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self.conns[fd] = uid
            self.conns_by_uid[uid] = self.conns_by_uid.get(uid, 0) + 1

    def connection_stats(self) -> dict[str, Any]:
        return {
            "open": len(self.conns),
            "max": self.max_connections,
            "by_uid": dict(self.conns_by_uid),
            "fd_soft_limit": self.fd_soft,
            "fd_hard_limit": self.fd_hard,
        }

    def _drain_control(self) -> None:
        sock = self.control
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 3:
                continue
            head, body = [f.bytes for f in frames[:-1]], frames[-1]
            uid = _peer_uid(body)
            req = P.decode_control_request(body.bytes)
            op = self.control_ops.get(req["op"]) if req is not None else None
            if req is None or op is None:
                self._reply(head, {"ok": False, "error": f"unknown request; ops: {sorted(self.control_ops)}"})
                continue
            req["_uid"] = uid
            try:
                if req["op"] == P.OP_SYNC:
                    self._start_sync(head, req, uid)
                    continue
                reply: Any = {"ok": True, "result": op(req)}
            except Exception as exc:  # a KeyError inside an op is an error of that op, not "unknown"
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self._reply(head, reply)

    def _reply(self, head: list[bytes], reply: dict[str, Any]) -> None:
        try:
            data = P.encode_control_reply(bool(reply.get("ok")), reply.get("result"), reply.get("error"))
        except Exception as exc:  # a result msgpack cannot pack even as str (an int over 64 bits...)
            data = P.encode_control_reply(False, error=f"unencodable reply: {type(exc).__name__}")
        try:
            self.control.send_multipart([*head, data], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _op_sync(self, req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("sync is answered asynchronously")  # never called: see _start_sync

    def _start_sync(self, head: list[bytes], req: dict[str, Any], uid: int | None) -> None:
        """Sample, reap and write now; answer once the store has it, or at the deadline.

        The loop never blocks on it: the sampling runs on the worker, the store
        write on the writer, and the reply goes out from _progress_syncs.  Bounded:
        at most MAX_SYNC_S, MAX_PENDING_SYNCS in all and one per non-root uid.
        """
        timeout = req.get("timeout", 2.0)
        if not isinstance(timeout, int | float) or timeout != timeout:
            timeout = 2.0
        timeout = min(max(float(timeout), 0.0), MAX_SYNC_S)
        if len(self.pending_syncs) >= MAX_PENDING_SYNCS or (
            uid not in (0, None) and any(p.uid == uid for p in self.pending_syncs)
        ):
            self._reply(head, {"ok": False, "error": "busy: a sync of yours is already in progress"})
            return
        svc = self.service
        # What is already queued first: a client that just exited gets its last batches
        # (bye included) read before the reaper, which skips its grace period here, sees it.
        self._drain_hints(time.monotonic_ns() + 50_000_000)
        svc.reap(force=True)
        svc.worker.submit("sync", svc._targets(svc.clients.values()))
        self.sync_seq += 1
        self.pending_syncs.append(PendingSync(head, uid, time.monotonic() + timeout, self.sync_seq))

    def _progress_syncs(self) -> None:
        svc, now = self.service, time.monotonic()
        still = []
        for p in self.pending_syncs:
            if p.barrier is None and svc.syncs_applied >= p.want:
                svc.flush_rows()
                p.barrier = svc.store.barrier() if svc.store is not None else None
                if p.barrier is None:
                    self._reply(p.head, {"ok": True, "result": {"flushed": True}})
                    continue
            if p.barrier is not None and p.barrier.is_set():
                self._reply(p.head, {"ok": True, "result": {"flushed": True}})
            elif now >= p.deadline:
                self._reply(p.head, {"ok": True, "result": {"flushed": False}})
            else:
                still.append(p)
        self.pending_syncs = still

    def _status_line(self) -> str:
        c = self.service.counters
        return (
            f"{len(self.service.clients)} clients, {c['events']} events, "
            f"{sum(self.service.rejected.values())} rejected, {c['spans_closed']} spans"
        )

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            if self.reload_hook is not None:
                self.reload_hook()
            log.info("reloaded")
        except Exception as exc:
            log.error("reload_failed", error=str(exc))
        self.notifier.ready(self._status_line())

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        # Take in what is already queued, so clients' last hints are not lost.
        self._drain_hints(time.monotonic_ns() + 200_000_000)
        self.service.shutdown()
        if self.service.store is not None:
            self.service.store.close()
        if self.monitor is not None:
            self.hint.disable_monitor()
            self.monitor.close(0)
        self.hint.close(0)
        self.control.close(0)
        self.ctx.term()
        for path in self._bound:
            try:
                path.unlink()
            except OSError:
                pass
        if self._sig_r is not None:
            signal.set_wakeup_fd(-1)
            for fd in (self._sig_r, self._sig_w):
                try:
                    os.close(fd)  # type: ignore[arg-type]
                except OSError:
                    pass
        log.info("stopped", **{k: v for k, v in self.service.counters.items() if k in ("events", "spans_closed")})
