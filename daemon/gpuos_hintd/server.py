"""The ZeroMQ front of the daemon: a ROUTER for hints, a ROUTER for control, one loop.

Single-threaded by design: ingest, sampling ticks, reaping and control
requests interleave on one poller, each deadline computed before the work
(dynolog's loop), and a missed tick is skipped rather than bursted.  The
SQLite writer is the only other thread.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import structlog
import zmq
from gpuos_client import protocol as P
from gpuos_client.config import ipc_path

from . import __version__
from .config import Config
from .errors import ConfigError
from .notify import Notifier
from .service import HintService

log = structlog.get_logger("gpuos_hintd.server")
#: Tick jitter, as a fraction of the period (uniform, around a fixed grid).
TICK_JITTER = 0.1

MAX_DRAIN = 4096  # messages per readiness before timers get a turn
HARD_MAX_MESSAGE = 4 * P.LIMITS.max_message_bytes  # over this libzmq drops the peer outright


class AlreadyRunning(ConfigError):
    pass


def _prepare_ipc(endpoint: str, mode: int | None) -> Path | None:
    path = ipc_path(endpoint)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is not None and path.parent != Path("/tmp"):
        try:
            os.chmod(path.parent, 0o755)
        except OSError:
            pass
    return path


def _live_daemon_at(control: str, timeout_ms: int = 300) -> bool:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(control)
        s.send(msgpack.packb({"op": "ping"}))
        return bool(s.poll(timeout_ms))
    finally:
        s.close()


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
        self.hint = self._bind(zmq.ROUTER, config.endpoint, config.socket_mode, hint=True)
        self.control = self._bind(zmq.ROUTER, config.control, config.socket_mode, hint=False)
        self.poller = zmq.Poller()
        self.poller.register(self.hint, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(service.worker.wake_fd, zmq.POLLIN)  # sampling results are ready
        self.control_ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda req: {"ok": True, "version": __version__, "pid": os.getpid()},
            "status": lambda req: self.service.status(),
            "sync": self._op_sync,
        }

    def _bind(self, kind: int, endpoint: str, mode: int, hint: bool) -> zmq.Socket:
        path = _prepare_ipc(endpoint, mode)
        if path is not None and path.exists():
            control = self.config.control
            if _live_daemon_at(control):
                raise AlreadyRunning(f"a gpuos-hintd already answers on {control}; not starting a second one")
            path.unlink()  # stale socket of a daemon that died
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000 if hint else 1000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_MESSAGE)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot listen on {endpoint}: {exc}") from None
        if path is not None:
            os.chmod(path, mode)
            self._bound.append(path)
        return sock

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
            try:
                ready = dict(self.poller.poll(timeout_ms))
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM:
                    break
                raise
            if self.hint in ready:
                self._drain_hints(next_tick)
            if self.control in ready:
                self._drain_control()
            if svc.worker.wake_fd in ready:
                svc.apply_samples()
            if self._sig_r is not None and self._sig_r in ready:
                try:
                    os.read(self._sig_r, 512)
                except BlockingIOError:
                    pass
            now = time.monotonic_ns()
            if now >= next_tick:
                svc.request_tick()  # the worker samples; results come back through wake_fd
                # Skip missed ticks instead of bursting to catch up.
                grid += period_ns * max(1, (now - grid) // period_ns + 1)
                next_tick = grid + random.randint(-jitter, jitter)
            if now >= next_reap:
                svc.reap()
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

    def _drain_hints(self, next_tick: int) -> None:
        sock, svc = self.hint, self.service
        for _ in range(MAX_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                svc._reject("bad_frames", f"{len(frames)} frames", None, n=1)
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

    def _drain_control(self) -> None:
        sock = self.control
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 3:
                continue
            head, body = frames[:-1], frames[-1]
            try:
                req = msgpack.unpackb(body, raw=False)
                op = self.control_ops[req["op"]]
                reply: Any = {"ok": True, "result": op(req)}
            except KeyError:
                reply = {"ok": False, "error": f"unknown request; ops: {sorted(self.control_ops)}"}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                sock.send_multipart([*head, msgpack.packb(reply, default=str)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _op_sync(self, req: dict[str, Any]) -> dict[str, Any]:
        """Sample, reap and write now, and wait (bounded) for the store: for tests and exports."""
        self.service.tick()
        self.service.reap()
        self.service.flush_rows()
        store = self.service.store
        flushed = store.flush(timeout=float(req.get("timeout", 2.0))) if store else True
        return {"flushed": flushed}

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
