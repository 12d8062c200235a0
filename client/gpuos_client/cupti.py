"""Opt-in GPU busy time from CUPTI's Activity API, through ctypes (no compiled code, no new dependency).

CUDA events give a span's *device interval* (device.py): when the stream reached the phase's
enter and exit.  For host-bound phases that interval is mostly idle (on the H200, HF decode steps'
kernels filled 16 % of it), and events cannot say how much.  CUPTI's activity records carry every
kernel's, copy's and memset's own start and end; the union of those within a span's device
interval is its busy time (busy.py does the arithmetic).

Off unless asked for (``GPUOS_HINT_DEVICE_BUSY=1`` or ``gpuos_client.device_busy(True)``): CUPTI
adds a cost to every kernel launch, and this module parses each record in Python.  Started lazily
by the first device-timed phase (CUDA is initialised by then), in the program's process; a forked
child starts its own.  Any failure (no libcupti, a CUPTI error, a profiler already holding CUPTI)
leaves tracing off with a one-line reason (``why``), never an exception into the program.

Which libcupti: ``$GPUOS_HINT_CUPTI_LIB``; else one already mapped into the process (torch's
kineto loads one: using the same copy matters, two copies would fight over the callbacks); else
the pip wheels' ``nvidia/cuda_cupti/lib``, ``nvidia/cu13/lib`` or ``torch/lib`` copy under any sys.path
entry, or a CUDA toolkit's ``extras/CUPTI/lib64``; else
``ctypes.util.find_library("cupti")``; else ``libcupti.so``.

Record layouts (the only fields read are ``kind``, ``start`` and ``end``): the structs are
``__attribute__((packed, aligned(8)))``.  ``offsetof`` compiled against CUDA 13.0's
cupti_activity.h and cupti_activity_deprecated.h (CUPTI_API_VERSION 130001; the check is
tests/test_cupti_layout.py, run wherever a CUDA toolkit and a C compiler are):

* ``kind`` @0, ``start`` @16, ``end`` @24 in CUpti_ActivityKernel3 to Kernel10 (CONCURRENT_KERNEL
  and KERNEL), CUpti_ActivityMemcpy, Memcpy3 to Memcpy6, CUpti_ActivityMemset, Memset2 to Memset4.
* Not in CUpti_ActivityKernel and Kernel2 (start @8): CUDA 6.0-era records no current CUPTI
  emits.
* The same offsets by reading the struct text in the 2021 (CUDA 11.x) cupti_activity.h copy in
  iree-org/iree third_party/cuda/include (Kernel4-6, Memcpy4, Memset3).

``kind`` is read first and only kinds 1 (MEMCPY), 2 (MEMSET), 3 (KERNEL) and 10
(CONCURRENT_KERNEL) are taken (values from the same header, as is CUPTI_ERROR_MAX_LIMIT_REACHED
= 12); records with end <= start or longer than an hour are counted as bad and skipped.  Since
CUDA 6.0 every buffer is global (the completion callback's context is NULL).
benchmarks/gpu/cupti_check.py checks the result on a real GPU (busy time against
torch.profiler's kernels).  Enabled: CONCURRENT_KERNEL (not KERNEL, which serialises
kernels), MEMCPY, MEMSET.

Timestamps: CUPTI's records are on ``cuptiGetTimestamp()``'s clock, which need not run at the
host clock's rate: on the H200 VM it ran 2.1 times as fast as CLOCK_MONOTONIC (an offset-only map
doubled every kernel and moved spans out of their device intervals: busy time 0 to 100 % off,
round4/cupti/cupti_check_cdll.json).  So the map is linear: at every drain a bracket (the tightest
of five monotonic, cuptiGetTimestamp, monotonic triples) anchors the offset, and the rate comes
from the oldest bracket kept (one a second, up to a minute back; 20 ms apart at start).  A
record maps as ``anchor + (ts - anchor_ts) / rate``; its error is the anchor's half-bracket
(``map_err_ns``) plus the rate's error times the record's distance from the anchor, twice for a
busy time (either edge).  device.py adds the CUDA-event anchor's own error to it.  CUDA 13.0's
libcupti, on a machine without a GPU, returned CLOCK_REALTIME from cuptiGetTimestamp(): a clock
NTP can step, which would disturb the rate for up to a minute.

Completeness: CUPTI hands a buffer back only when its records are complete, and with global
buffers (the tracer asks for them: CUDA 13's CUPTI defaults to per-thread ones, see
``request_global_buffers``) all records go into one chain of buffers, in launch order.  A span's busy time is
therefore asked for only once ``complete_until_ns`` passed its device end, which advances to the
latest start among delivered records (work launched after the span's kernels is recorded after
them), or, after a forced flush (``drain(force=True)``: device.py asks for one when nothing later
has been recorded ``BUSY_FORCE_AFTER_NS`` after a waiting span's end), to ``FORCED_SETTLE_NS``
before that flush.  Buffers are closed after ``RECORDS_PER_BUFFER`` records, so a program that
keeps the GPU fed still gets its buffers back within that many launches.  device.py waits for the
gate, bounded, and sends the interval without busy time (counted) when it does not come.  The
first rule can pass early when a kernel of *another* stream, launched before the span's last
kernel, is still running and holds an earlier buffer back; cupti_check.py measures busy time at
mark time against the tracer's own complete record set afterwards.

Threads: CUPTI calls the buffer callbacks from the launching thread (a new buffer), from the
flushing thread and from its own worker thread; a ctypes callback takes the GIL.  libcupti is
loaded with ``ctypes.CDLL``, whose calls release the GIL, and the callbacks only hand buffers out
and parse them.  A completed buffer is walked by ``_cbusy.parse`` in C, with the GIL released
once for the whole buffer (the Python walk released and took it back at every record: x2.1 on
a launch-bound loop against x1.5 with the C walk on the H200, docs/accuracy.md).  Measured
on the H200 (cupti_check.py runs both loaders under a watchdog): with ``ctypes.PyDLL`` (calls
keep the GIL) a flush deadlocked - CUPTI's own thread waited for the GIL the flushing thread
held; with CDLL every part completed.

Interaction with other CUPTI users: CUPTI has one set of activity buffer callbacks per process.
When torch.profiler (kineto) is running at start, this tracer stays off and says so.  A profiler
started later takes the callbacks over; what then happens to this tracer is measured by
cupti_check.py, not assumed.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import glob
import os
import sys
import threading
import time
from typing import Any

from .busy import BusyIntervals

try:  # the buffer walk in C, without the GIL (_cbusy.c says why); refused like _cphase
    from . import _cbusy as _cbusy_mod

    _CBUSY: Any = None if os.environ.get("GPUOS_HINT_PURE", "") not in ("", "0") else _cbusy_mod
except ImportError:
    _CBUSY = None

KIND_MEMCPY, KIND_MEMSET, KIND_KERNEL, KIND_CONCURRENT_KERNEL = 1, 2, 3, 10
ENABLED_KINDS = (KIND_CONCURRENT_KERNEL, KIND_MEMCPY, KIND_MEMSET)
TAKEN_KINDS = frozenset({KIND_MEMCPY, KIND_MEMSET, KIND_KERNEL, KIND_CONCURRENT_KERNEL})
TAKEN_MASK = sum(1 << k for k in TAKEN_KINDS)  # _cbusy.parse's form of TAKEN_KINDS
KIND_OTHER = 255  # kinds counts every kind from here up under this one (CUPTI's are < 100)
CUPTI_SUCCESS = 0
CUPTI_ERROR_INVALID_PARAMETER = 1
CUPTI_ERROR_MAX_LIMIT_REACHED = 12
#: CUpti_ActivityAttribute's CUPTI_ACTIVITY_ATTR_PER_THREAD_ACTIVITY_BUFFER (cupti_activity.h, 12.3
#: on: the member after MEM_ALLOCATION_TYPE_HOST_PINNED = 8).  Its default is 0 in CUDA 12.x and 1
#: in 13.x; see request_global_buffers.
ATTR_PER_THREAD_ACTIVITY_BUFFER = 9
BUFFER_BYTES = 1 << 17
# A buffer is closed (and can come back) after this many records (~220 B each).  Small, so that a
# GPU kept fed returns its buffers within a few hundred launches without a forced flush: a forced
# flush hands back the current buffer with its unfinished records, which are then lost (1266 of
# them in the H200's fed pipeline with 2048, round4/accuracy_gpu_run3_busy.json: busy 85 % under).
RECORDS_PER_BUFFER = 256
MAX_BUFFERS = 256  # 32 MiB at most; beyond, CUPTI is handed no buffer and drops (counted by it)
ALIGN = 8  # ACTIVITY_RECORD_ALIGNMENT
START_OFFSET, END_OFFSET = 16, 24  # uint64 start/end in every kernel/memcpy/memset record read
_MAX_RECORD_NS = 3600 * 10**9
_RATE_MIN_BASELINE_NS = 20_000_000  # a rate from brackets at least this far apart
_RATE_BASELINE_NS = 60_000_000_000  # ... and at most about this far
_RATE_KEEP_EVERY_NS = 1_000_000_000  # brackets kept for the rate: one a second
#: How libcupti is loaded: PyDLL keeps the GIL during CUPTI calls (see _start and "Threads").
#: cupti_check.py runs with both this and ctypes.CDLL, to measure which one CUPTI needs.
MAX_RAW_RECORDS = 500_000  # delivered but not yet drained (a program with rare device phases)
FORCED_SETTLE_NS = 20_000_000  # after a forced flush, records are taken as complete up to this long before it
LOADER: Any = ctypes.CDLL  # PyDLL (keeping the GIL in CUPTI calls) deadlocked a flush on the H200
_REGISTERED: list[Any] = []  # every callback pair ever handed to CUPTI (never freed)

_REQ = ctypes.CFUNCTYPE(
    None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
_DONE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)


_WHEEL_GLOBS = (
    ("nvidia", "cuda_cupti", "lib", "libcupti.so*"),
    ("nvidia", "*", "lib", "libcupti.so*"),
    ("torch", "lib", "libcupti*.so*"),
)


def candidates() -> list[str]:
    """Where libcupti may be, in the order tried (see the module docstring)."""
    out: list[str] = []
    env = os.environ.get("GPUOS_HINT_CUPTI_LIB")
    if env:
        out.append(env)
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "libcupti" in line else ""
                if path.startswith("/") and path not in out:
                    out.append(path)
    except OSError:
        pass
    # pip wheels: nvidia/cuda_cupti/lib (CUDA 12 wheels), nvidia/cu13/lib (CUDA 13), torch/lib; then
    # a CUDA toolkit's own copy.
    patterns = [os.path.join(e or ".", *parts) for e in sys.path for parts in _WHEEL_GLOBS]
    patterns += ["/usr/local/cuda*/extras/CUPTI/lib64/libcupti.so*", "/usr/local/cuda*/lib64/libcupti.so*"]
    for pat in patterns:
        for p in sorted(glob.glob(pat)):
            if p not in out:
                out.append(p)
    found = ctypes.util.find_library("cupti")
    if found:
        out.append(found)
    out.append("libcupti.so")
    return out


def _profiler_running() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.autograd.profiler._is_profiler_enabled)
    except Exception:
        return False


def request_global_buffers(lib: Any) -> str:
    """Ask CUPTI for one global chain of activity buffers; say what it keeps.

    The completeness gate (``drain``) takes a span's records as delivered once a record that
    started later has been: true when every record goes into one chain of buffers in launch
    order.  CUPTI 12.3 added per-thread buffers, and CUDA 13's CUPTI turns them on by default:
    then a buffer of the autograd thread's backward kernels can come back while the main
    thread's buffer, holding the end of the forward pass, is still filling.  On the H200 that
    left ``forward`` 1-10 % short of the profiler's kernel time, varying run to run, while
    prefill and decode (one thread) stayed within 0.3 % (benchmarks/results/h200/round4/,
    accuracy_gpu_run3_busy.json to _run6_busy.json).  So the tracer turns them off, before it
    registers its callbacks and enables any kind (as CUPTI requires), and reads it back.

    Returns ``"global"``; ``"global (CUPTI < 12.3)"`` when CUPTI does not know the attribute (its
    buffers are global); ``"per-thread"`` when they stay per-thread (the tracer then stays off);
    ``"unknown (...)"`` when the read-back is unavailable.
    """
    off, size = ctypes.c_uint8(0), ctypes.c_size_t(1)
    try:
        rc = lib.cuptiActivitySetAttribute(
            ctypes.c_int(ATTR_PER_THREAD_ACTIVITY_BUFFER), ctypes.byref(size), ctypes.byref(off)
        )
    except AttributeError:
        return "global (CUPTI < 12.3)"
    if rc == CUPTI_ERROR_INVALID_PARAMETER:
        return "global (CUPTI < 12.3)"
    got, size = ctypes.c_uint8(0xFF), ctypes.c_size_t(1)
    try:
        rc_get = lib.cuptiActivityGetAttribute(
            ctypes.c_int(ATTR_PER_THREAD_ACTIVITY_BUFFER), ctypes.byref(size), ctypes.byref(got)
        )
    except AttributeError:
        return f"unknown (set returned {rc}, no read-back)"
    if rc_get != CUPTI_SUCCESS:
        return f"unknown (set returned {rc}, read-back {rc_get})"
    return "global" if got.value == 0 else "per-thread"


def _c_function_address(fn: Any) -> int:
    """The address of a function loaded by ctypes, or 0 for anything else (a test's stand-in)."""
    if not isinstance(fn, ctypes._CFuncPtr):  # type: ignore[attr-defined]
        return 0
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


class CuptiTracer:
    """Kernel/copy/memset activity -> merged busy intervals on CLOCK_MONOTONIC."""

    def __init__(self, horizon_ns: int = 30_000_000_000, max_intervals: int = 200_000) -> None:
        self.on = False
        self.why: str | None = None  # one line: why tracing is off
        self.lib_path: str | None = None
        self.version: int | None = None
        self.buffers: str | None = None  # "global", "global (CUPTI < 12.3)", ... (request_global_buffers)
        self.intervals = BusyIntervals(horizon_ns, max_intervals, floor_ns=time.monotonic_ns())
        self.records = 0  # taken records (kernels, copies, memsets)
        self.kinds: dict[int, int] = {}  # every record kind seen, taken or not (KIND_OTHER: 255 and above)
        self.bad_records = 0
        self.dropped = 0  # records CUPTI dropped (cuptiActivityGetNumDroppedRecords)
        self.no_buffer = 0  # buffer requests refused (MAX_BUFFERS outstanding)
        self.beyond_horizon = 0  # spans whose busy time was asked for after their window was forgotten
        self.errors = 0
        self.flushes = 0
        self.complete_until_ns = 0
        self.map_err_ns = 0
        self._offset = 0
        self._map_at = 0
        self.rate = 1.0  # CUPTI ns per CLOCK_MONOTONIC ns (measured: _map_clock)
        self.rate_err = 0.0
        self.rated = False  # the rate is measured (brackets _RATE_MIN_BASELINE_NS apart): records can be mapped
        self._anchor_m = self._anchor_t = 0
        self._brackets: collections.deque[tuple[int, int, int]] = collections.deque()  # for the rate
        self._lib: Any = None
        self._lock = threading.Lock()
        self._raw: list[tuple[int, int]] = []  # (start, end) on CUPTI's clock, not yet merged
        self._buffers: dict[int, Any] = {}  # aligned address -> ctypes array (kept alive while CUPTI has it)
        self._pool: list[Any] = []
        self._requested = 0
        self._completed = 0
        self.forced_flushes = 0
        self.raw_dropped = 0  # records dropped because nothing drained them (MAX_RAW_RECORDS)
        self._raw_floor = 0  # CUPTI time: the latest end among them
        self.log: list[tuple[int, int, int, int]] | None = None  # (flush time, records, forced, gate): diagnostics
        self._start_max = 0  # the latest start among delivered records (CUPTI's clock)
        self._cbs: tuple[Any, Any] | None = None
        self._next_record_addr = 0  # cuptiActivityGetNextRecord's address, for _cbusy.parse (0: walk in Python)
        self.parser = "python"  # which walk the buffers get: "c" or "python" (stats)

    # ----------------------------------------------------------------- start
    def start(self) -> bool:
        """Load libcupti, enable the activity kinds, register the buffer callbacks.  Never raises."""
        try:
            return self._start()
        except Exception as exc:
            self.on = False
            self.why = f"device busy time off: {type(exc).__name__}: {exc}"
            return False

    def _start(self) -> bool:
        if _profiler_running():
            self.why = "device busy time off: torch.profiler is running (it owns CUPTI's activity callbacks)"
            return False
        errors = []
        for path in candidates():
            try:
                self._lib = LOADER(path)  # CDLL: see "Threads" above
                self.lib_path = path
                break
            except OSError as exc:
                errors.append(f"{path}: {str(exc)[:80]}")
        if self._lib is None:
            self.why = "device busy time off: no libcupti (" + "; ".join(errors[-2:]) + ")"
            return False
        lib = self._lib
        lib.cuptiActivityGetNextRecord.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.cuptiActivityGetNumDroppedRecords.argtypes = [ctypes.c_void_p, ctypes.c_uint32, size_p]
        lib.cuptiGetTimestamp.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
        lib.cuptiActivityFlushAll.argtypes = [ctypes.c_uint32]
        lib.cuptiActivityEnable.argtypes = [ctypes.c_int]
        lib.cuptiActivityDisable.argtypes = [ctypes.c_int]
        self._next_record_addr = _c_function_address(lib.cuptiActivityGetNextRecord)
        self.parser = "c" if self._next_record_addr and _CBUSY is not None else "python"
        v = ctypes.c_uint32()
        if lib.cuptiGetVersion(ctypes.byref(v)) == CUPTI_SUCCESS:
            self.version = v.value
        self.buffers = request_global_buffers(lib)
        if self.buffers == "per-thread":
            self.why = (
                "device busy time off: CUPTI keeps per-thread activity buffers and would not switch to "
                "global ones (records of work launched by two threads could complete out of order)"
            )
            return False
        self._cbs = (_REQ(self._on_request), _DONE(self._on_complete))
        # CUPTI keeps the callback pointers for the life of the process, even when a later step
        # fails or this tracer is dropped: freeing them would leave it calling freed memory.
        _REGISTERED.append(self._cbs)
        self._check("cuptiActivityRegisterCallbacks", lib.cuptiActivityRegisterCallbacks(*self._cbs))
        try:
            for kind in ENABLED_KINDS:
                self._check(f"cuptiActivityEnable({kind})", lib.cuptiActivityEnable(kind))
        except Exception:
            self._disable_kinds()  # a partial start must not leave a kind tracing (and costing) unread
            raise
        # The first bracket of CUPTI's clock.  Its rate needs a second one at least
        # _RATE_MIN_BASELINE_NS later; drain() holds the records until then instead of this
        # thread (the program's, at its first device-timed phase) sleeping for it.
        self._map_clock()
        self.intervals.floor_ns = time.monotonic_ns()  # activity before this was not traced
        self.on = True
        self.why = None
        return True

    def _check(self, what: str, rc: int) -> None:
        if rc != CUPTI_SUCCESS:
            text = ctypes.c_char_p()
            try:
                self._lib.cuptiGetResultString(rc, ctypes.byref(text))
                name = (text.value or b"").decode("ascii", "replace")[:80]
            except Exception:
                name = ""
            raise RuntimeError(f"{what} returned {rc} {name}".rstrip())

    def stop(self) -> None:
        """Disable the activity kinds and deliver what is buffered (device_busy(False), tests)."""
        if not self.on:
            return
        self.on = False
        self._disable_kinds()
        try:
            self._lib.cuptiActivityFlushAll(1)  # CUPTI_ACTIVITY_FLAG_FLUSH_FORCED
        except Exception:
            self.errors += 1
        with self._lock:
            self._raw = []  # nobody drains a stopped tracer: what it delivered is dropped

    def resume(self) -> bool:
        """Trace again after ``stop()`` (device_busy(True) once more); the callbacks stay registered."""
        if self.on or self._lib is None or self._cbs is None or self.why is not None:
            return self.on
        try:
            for kind in ENABLED_KINDS:
                self._check(f"cuptiActivityEnable({kind})", self._lib.cuptiActivityEnable(kind))
        except Exception as exc:
            self._disable_kinds()
            self.why = f"device busy time off: {type(exc).__name__}: {exc}"
            return False
        self._map_clock()
        self.intervals.floor_ns = max(self.intervals.floor_ns, time.monotonic_ns())  # the gap was not traced
        self.on = True
        return True

    def _disable_kinds(self) -> None:
        for kind in ENABLED_KINDS:
            try:
                self._lib.cuptiActivityDisable(kind)
            except Exception:
                self.errors += 1

    # ------------------------------------------------------ CUPTI callbacks
    def _on_request(self, buf: Any, size: Any, max_records: Any) -> None:
        try:
            if len(self._buffers) >= MAX_BUFFERS:
                self.no_buffer += 1
                buf[0], size[0], max_records[0] = None, 0, 0
                return
            raw = self._pool.pop() if self._pool else (ctypes.c_uint8 * (BUFFER_BYTES + ALIGN))()
            addr = ctypes.addressof(raw)
            addr += (-addr) % ALIGN
            self._buffers[addr] = raw
            self._requested += 1
            buf[0], size[0], max_records[0] = addr, BUFFER_BYTES, RECORDS_PER_BUFFER
        except Exception:
            self.errors += 1
            buf[0], size[0], max_records[0] = None, 0, 0

    def _on_complete(self, ctx: Any, stream: int, buf: Any, size: int, valid: int) -> None:
        try:
            got = self._parse(buf, valid) if buf else []
            n = ctypes.c_size_t()
            if self._lib.cuptiActivityGetNumDroppedRecords(ctx, stream, ctypes.byref(n)) == CUPTI_SUCCESS:
                self.dropped += n.value
            with self._lock:
                self._raw.extend(got)
                if len(self._raw) > MAX_RAW_RECORDS:  # nobody drained for long: keep the newest half
                    cut = len(self._raw) - MAX_RAW_RECORDS // 2
                    self._raw_floor = max(self._raw_floor, max(e for _, e in self._raw[:cut]))
                    self.raw_dropped += cut
                    del self._raw[:cut]
        except Exception:
            self.errors += 1
        finally:
            raw = self._buffers.pop(buf, None) if buf else None
            if raw is not None:
                self._completed += 1
                self._pool.append(raw)

    def _parse(self, buf: int, valid: int) -> list[tuple[int, int]]:
        """The (start, end) pairs of a completed buffer's kernels, copies and memsets (CUPTI's clock)."""
        if self.parser == "c":
            out, bad, err, start_max = _CBUSY.parse(
                self._next_record_addr, buf, valid, TAKEN_MASK, START_OFFSET, END_OFFSET, _MAX_RECORD_NS, self.kinds
            )
            self.bad_records += bad
            self.errors += err != 0
            if start_max > self._start_max:
                self._start_max = start_max
            self.records += len(out)
            return out  # type: ignore[no-any-return]
        return self._parse_py(buf, valid)

    def _parse_py(self, buf: int, valid: int) -> list[tuple[int, int]]:
        """_parse without the extension: one ctypes call and three reads per record, with the GIL."""
        get_next = self._lib.cuptiActivityGetNextRecord
        rec = ctypes.c_void_p()
        u32, u64 = ctypes.c_uint32.from_address, ctypes.c_uint64.from_address
        kinds = self.kinds
        out = []
        most = valid // ALIGN + 1  # more records than that: the walk is going round (as _cbusy.c)
        for i in range(most + 1):
            if i == most:
                self.errors += 1
                break
            rc = get_next(buf, valid, ctypes.byref(rec))
            if rc != CUPTI_SUCCESS:
                if rc != CUPTI_ERROR_MAX_LIMIT_REACHED:
                    self.errors += 1
                break
            p = rec.value
            kind = u32(p).value
            k = kind if kind < KIND_OTHER else KIND_OTHER
            kinds[k] = kinds.get(k, 0) + 1
            if kind not in TAKEN_KINDS:
                continue
            s, e = u64(p + START_OFFSET).value, u64(p + END_OFFSET).value
            if not 0 < e - s <= _MAX_RECORD_NS or s == 0:
                self.bad_records += 1
                continue
            out.append((s, e))
            if s > self._start_max:
                self._start_max = s
        self.records += len(out)
        return out

    # -------------------------------------------------------------- clocks
    def _bracket(self) -> tuple[int, int, int]:
        """(monotonic midpoint, CUPTI timestamp, half-width): the tightest of five brackets."""
        ts = ctypes.c_uint64()
        best: tuple[int, int, int] | None = None
        for _ in range(5):
            m0 = time.monotonic_ns()
            self._lib.cuptiGetTimestamp(ctypes.byref(ts))
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < 2 * best[2]:
                best = ((m0 + m1) // 2, ts.value, (m1 - m0 + 1) // 2)
        assert best is not None
        return best

    def _map_clock(self) -> None:
        """Map CUPTI's clock onto CLOCK_MONOTONIC: the newest bracket, and the rate over a long baseline.

        CUPTI's clock need not run at the host clock's rate: on the H200 VM it ran 2.1x as fast
        (round4/cupti/cupti_check_cdll.json: every kernel twice its length, spans drifting out of
        their device intervals), so an offset alone is wrong by seconds within a minute.  The rate
        comes from the oldest bracket kept (up to ``_RATE_BASELINE_NS`` back), the offset from
        the newest, so a record maps as ``m + (ts - t) / rate``.
        """
        m, t, half = self._bracket()
        kept = self._brackets
        if not kept or m - kept[-1][0] >= _RATE_KEEP_EVERY_NS:
            kept.append((m, t, half))
        while len(kept) > 2 and m - kept[1][0] >= _RATE_BASELINE_NS:
            kept.popleft()
        base = kept[0]
        if m - base[0] >= _RATE_MIN_BASELINE_NS:
            self.rate = (t - base[1]) / (m - base[0])
            self.rate_err = (half + base[2]) / (m - base[0])
            self.rated = True
        self.map_err_ns = half
        self._anchor_m, self._anchor_t = m, t
        self._offset = m - t  # what a record maps to at rate 1 (kept for the diagnostics)
        self._map_at = time.monotonic_ns()

    def to_monotonic(self, ts: int) -> int:
        return self._anchor_m + round((ts - self._anchor_t) / self.rate)

    # --------------------------------------------------------------- drain
    def drain(self, force: bool = False) -> None:
        """Flush CUPTI's buffers and merge their records (the sender thread, each round).

        The records are complete up to the latest start among those delivered (work launched
        after a span's kernels is recorded after them).  A forced flush (``force``: nothing
        later came, e.g. the program synchronised and went quiet) returns every buffer; the
        records are then taken as complete up to ``FORCED_SETTLE_NS`` before it.  Until CUPTI's
        clock rate is measured (``rated``: ~20 ms after start) records are held, not merged, and
        the gate does not move: the spans wait for them as for any late buffer.  (The first
        version also trusted "no buffer outstanding" and "a partly filled buffer came back":
        on the H200 both opened the gate before CUPTI had the records, busy time came out 0 to
        100 % under; benchmarks/results/h200/round4/cupti/cupti_check_cdll.json.)
        """
        if not self.on:
            return
        try:
            t0 = time.monotonic_ns()
            self._lib.cuptiActivityFlushAll(1 if force else 0)
            self.flushes += 1
            self.forced_flushes += bool(force)
            with self._lock:
                raw, self._raw = self._raw, []
                raw_floor = self._raw_floor
            self._map_clock()  # a few us: the newest anchor keeps the rate's error small
            if not self.rated:  # within _RATE_MIN_BASELINE_NS of start: not mappable yet, kept
                with self._lock:
                    self._raw[:0] = raw
                return
            if raw_floor:  # records were dropped undrained: busy time before their end is not known
                self.intervals.floor_ns = max(self.intervals.floor_ns, self.to_monotonic(raw_floor))
            m_a, t_a, rate = self._anchor_m, self._anchor_t, self.rate
            self.intervals.add([(m_a + round((s - t_a) / rate), m_a + round((e - t_a) / rate)) for s, e in raw])
            until = self.to_monotonic(self._start_max) if self._start_max else 0
            if force:
                until = max(until, t0 - FORCED_SETTLE_NS)
            self.complete_until_ns = max(self.complete_until_ns, until)
            if self.log is not None:
                self.log.append((t0, len(raw), int(force), self.complete_until_ns))
        except Exception as exc:
            self.errors += 1
            self.on = False
            self.why = f"device busy time off: {type(exc).__name__}: {exc}"
            self._disable_kinds()  # off means off: no kind left tracing (and costing) with nobody reading

    def busy(self, begin_ns: int, end_ns: int) -> tuple[int, int] | None:
        """(busy ns, error bound ns) within [begin, end], or None when not known (counted)."""
        got = self.intervals.busy_ns(begin_ns, end_ns)
        if got is None:
            self.beyond_horizon += 1
            return None
        rate_ns = round(
            self.rate_err * max(0, time.monotonic_ns() - end_ns)
        )  # the record mapped with the newest anchor
        return min(got, max(end_ns - begin_ns, 0)), 2 * (self.map_err_ns + rate_ns)

    def stats(self) -> dict[str, Any]:
        return {
            "on": self.on,
            "why": self.why,
            "buffers": self.buffers,
            "records": self.records,
            "bad_records": self.bad_records,
            "cupti_dropped": self.dropped,
            "no_buffer": self.no_buffer,
            "late_records": self.intervals.late_records,
            "beyond_horizon": self.beyond_horizon,
            "errors": self.errors,
            "intervals": len(self.intervals),
            "map_err_ns": self.map_err_ns,
            "clock_rate": round(self.rate, 7),
            "clock_rate_err": self.rate_err,
            "flushes": self.flushes,
            "forced_flushes": self.forced_flushes,
            "raw_dropped": self.raw_dropped,
            "parser": self.parser,
            "rated": self.rated,
        }
