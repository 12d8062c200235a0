"""Sampling off the ingest thread.

Samplers can be slow - an NVML tick took 46 ms on an H100 before its PCIe
throughput reads were rate-limited (docs/gpu-results.md) - and a daemon that
samples on its ingest loop stops taking hints while it does (seen on the GPU
host: batches queued for seconds, clients reaped before their last hints were
read).  So every sampler runs on one worker thread; the daemon's loop only posts
requests (a snapshot of targets) and applies finished results, woken by a pipe it polls beside its sockets.
vendor calls (NVML through ctypes, /proc reads) release the GIL, so ingest
goes on while they run.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog

from .model import ProcKey, ProcSample, Target
from .samplers.base import Sampler

log = structlog.get_logger("gpuos_hintd.sampling")


@dataclasses.dataclass(slots=True)
class SamplerState:
    sampler: Sampler
    available: bool
    reason: str
    ticks: int = 0
    errors: int = 0
    last_ms: float = 0.0
    max_ms: float = 0.0
    total_ms: float = 0.0
    last_error: str | None = None
    last_run_ns: int = 0


@dataclasses.dataclass(slots=True)
class SampleResult:
    tag: str
    t_ns: int
    samples: dict[ProcKey, ProcSample]


def sample_all(states: Sequence[SamplerState], targets: Sequence[Target], now: int) -> dict[ProcKey, ProcSample]:
    """Run every available sampler once and merge their per-process results."""
    merged: dict[ProcKey, ProcSample] = {}
    owned: set[ProcKey] = set()  # keys whose ProcSample is our own copy (safe to update)
    for st in states:
        if not st.available:
            continue
        interval_ns = int(st.sampler.interval_s * 1e9)
        if interval_ns and now - st.last_run_ns < interval_ns:
            continue  # a slow-changing source, not due yet: its gauges simply have fewer samples
        st.last_run_ns = now
        t0 = time.perf_counter()
        try:
            result = st.sampler.sample(targets, now)
        except Exception as exc:  # a failing sampler is skipped for this tick
            st.errors += 1
            st.last_error = f"{type(exc).__name__}: {exc}"
            if st.errors <= 5 or st.errors % 100 == 0:
                log.warning("sampler_failed", sampler=st.sampler.name, error=st.last_error, count=st.errors)
            continue
        finally:
            st.last_ms = (time.perf_counter() - t0) * 1000
            st.max_ms = max(st.max_ms, st.last_ms)
            st.total_ms += st.last_ms
            st.ticks += 1
        fresh = getattr(st.sampler, "fresh_results", False)
        for key, ps in result.items():
            m = merged.get(key)
            if m is None:
                # The first sampler's result is taken as it is; it is copied only when a second
                # one merges into it, unless the sampler built it for this call alone
                # (``fresh_results``), so a sampler's own (cached) dicts are never changed.
                merged[key] = ps
                if fresh:
                    owned.add(key)
                continue
            if key not in owned:
                owned.add(key)
                m = merged[key] = ProcSample(dict(m.values), {t: dict(v) for t, v in m.threads.items()}, dict(m.series))
            m.values.update(ps.values)
            for tid, vals in ps.threads.items():
                m.threads.setdefault(tid, {}).update(vals)
            m.series.update(ps.series)
    return merged


class SamplingWorker:
    """One thread that runs sampling requests in order and hands back results."""

    def __init__(self, states: Sequence[SamplerState]) -> None:
        self.states = states
        self._req: queue.SimpleQueue[tuple[str, list[Target]] | None] = queue.SimpleQueue()
        self._res: queue.SimpleQueue[SampleResult] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self.outstanding = 0  # requests posted and not yet applied (main thread's count)
        self._thread = threading.Thread(target=self._run, name="gpuos-sampler", daemon=True)
        self._thread.start()

    def submit(self, tag: str, targets: list[Target]) -> None:
        self.outstanding += 1
        self._req.put((tag, targets))

    def _run(self) -> None:
        while True:
            item = self._req.get()
            if item is None:
                return
            tag, targets = item
            now = time.monotonic_ns()
            try:
                samples = sample_all(self.states, targets, now) if targets else {}
            except Exception as exc:  # never let the worker die
                log.error("sampling_failed", error=f"{type(exc).__name__}: {exc}")
                samples = {}
            self._res.put(SampleResult(tag, now, samples))
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def ready(self) -> list[SampleResult]:
        """Finished results, oldest first (non-blocking)."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._res.get_nowait())
            except queue.Empty:
                break
        self.outstanding -= len(out)
        return out

    def wait(self, tag: str, timeout: float) -> list[SampleResult]:
        """Block until the result tagged `tag` arrives (and return it with any before it)."""
        out: list[SampleResult] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                res = self._res.get(timeout=left)
            except queue.Empty:
                break
            self.outstanding -= 1
            out.append(res)
            if res.tag == tag:
                break
        return out

    def close(self, timeout: float = 5.0) -> None:
        self._req.put(None)
        self._thread.join(timeout)
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def stats(self) -> dict[str, Any]:
        return {"outstanding": self.outstanding, "alive": self._thread.is_alive()}
