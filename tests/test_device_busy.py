"""Device busy time: the client's CUPTI tracer (Python side), the wire, and the daemon's edge.

No GPU here, so CUPTI itself cannot run (benchmarks/gpu/cupti_check.py and
tests/test_cupti_gpu.py do that on the H200).  What runs here is everything around it:

* the tracer's buffer handling and record parsing against a fake libcupti that walks real
  record bytes laid out as the header says (kind @0, start @16, end @24), so a wrong offset or a
  kind filter that lets other records in fails;
* the collector's wait for CUPTI's records (bounded, counted when they do not come);
* a real client process and a real daemon, with a fake tracer in place of CUPTI: busy time
  reaches the span's signals (open spans and late intervals), ``spans``/``phases`` show it;
* the daemon refuses a bad busy_ns (counted), and the span keeps no figure from it.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import json
import subprocess
import sys
from typing import Any

import pytest
from gpuos_client import cupti, device
from gpuos_client import protocol as P
from instant_device import CHILD_IMPORT, Instant
from test_service import PID, Harness, _service

# --------------------------------------------------------------- the tracer (fake libcupti)


class FakeCupti:
    """libcupti's activity calls, over buffers the tracer handed out; records written by the test."""

    def __init__(self) -> None:
        self.sizes: dict[int, list[int]] = {}  # buffer -> record sizes, in order
        self.clock = 5_000_000_000  # CUPTI's clock; the test's monotonic is this minus 1 s
        self.flushed: list[int] = []
        self.on_flush: Any = None
        self.enabled: set[int] = set(cupti.ENABLED_KINDS)

        self.fail_at: int | None = None  # return this code instead of the record at fail_at (see next_record)
        self.fail_code = 17
        self.walked = 0  # records handed out
        self.ignores_cursor = False  # a libcupti that hands out the first record at every call
        self._layout: dict[int, tuple[list[int], list[int], dict[int, int]]] = {}

    def next_record(self, buf: int, valid: int, prev: int | None) -> tuple[int, int]:
        """(result code, record address) after ``prev``, as CUPTI walks: the cursor is the record.

        ``prev`` None (a NULL record pointer) asks for the buffer's first record, a record's
        address for the one after it; a walk that does not pass the last record back starts
        over (which hung the first C walk on the H200 and is why this fake keeps no cursor).
        """
        sizes = self.sizes.get(buf, [])
        if self._layout.get(buf, (None,))[0] is not sizes:  # offsets of the records, once per layout
            starts = list(itertools.accumulate(sizes, initial=0))[:-1]
            self._layout[buf] = (sizes, starts, {off: i for i, off in enumerate(starts)})
        _, starts, pos_of = self._layout[buf]
        pos = 0 if prev is None or self.ignores_cursor else pos_of[prev - buf] + 1
        if self.fail_at is not None and pos == self.fail_at:
            return self.fail_code, 0
        if pos >= len(sizes) or starts[pos] >= valid:
            return cupti.CUPTI_ERROR_MAX_LIMIT_REACHED, 0
        self.walked += 1
        return cupti.CUPTI_SUCCESS, buf + starts[pos]

    def cuptiActivityGetNextRecord(self, buf: int, valid: int, rec_ref: Any) -> int:
        rc, addr = self.next_record(buf, valid, rec_ref._obj.value)
        if rc == cupti.CUPTI_SUCCESS:
            rec_ref._obj.value = addr
        return rc

    def c_next_record(self) -> Any:
        """The same walk as a C function pointer, for the _cbusy walk (which calls it without the GIL)."""

        def call(buf: int, valid: int, rec: Any) -> int:
            if self.walked > valid + 10:  # beyond any walk's own bound: stop it here, not hang the test
                return self.fail_code
            rc, addr = self.next_record(buf, valid, rec[0])
            if rc == cupti.CUPTI_SUCCESS:
                rec[0] = addr
            return rc

        fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))(call)
        self._keep = fn  # alive as long as the fake
        return fn

    def cuptiActivityGetNumDroppedRecords(self, ctx: Any, stream: int, n_ref: Any) -> int:
        n_ref._obj.value = 3
        return cupti.CUPTI_SUCCESS

    def cuptiGetTimestamp(self, ts_ref: Any) -> int:
        ts_ref._obj.value = self.clock
        return 0

    def cuptiActivityEnable(self, kind: int) -> int:
        self.enabled.add(kind)
        return 0

    def cuptiActivityDisable(self, kind: int) -> int:
        self.enabled.discard(kind)
        return 0

    def cuptiActivityFlushAll(self, flag: int) -> int:
        self.flushed.append(flag)
        if self.on_flush:
            self.on_flush()
        return 0


def _write_records(addr: int, records: list[tuple[int, int, int, int]]) -> list[int]:
    """Records (kind, start, end, size) at addr, laid out as cupti_activity.h has them."""
    sizes, off = [], 0
    for kind, s, e, size in records:
        ctypes.c_uint32.from_address(addr + off).value = kind
        ctypes.c_uint8.from_address(addr + off + 4).value = 0xAB  # cacheConfig etc.: not a start
        ctypes.c_uint64.from_address(addr + off + 8).value = 0xDEAD  # bytes / enums: not a start either
        ctypes.c_uint64.from_address(addr + off + 16).value = s
        ctypes.c_uint64.from_address(addr + off + 24).value = e
        sizes.append(size)
        off += size
    return sizes


def _tracer(fake: FakeCupti, monkeypatch: pytest.MonkeyPatch, parser: str = "python") -> cupti.CuptiTracer:
    t = cupti.CuptiTracer()
    t._lib = fake
    if parser == "c":
        if cupti._CBUSY is None:
            pytest.skip("gpuos_client._cbusy is not built (no C compiler at install time) or GPUOS_HINT_PURE=1")
        t._next_record_addr = cupti._c_function_address(fake.c_next_record())
        assert t._next_record_addr, "a ctypes function pointer has an address"
        t.parser = "c"
    monkeypatch.setattr(cupti.time, "monotonic_ns", lambda: fake.clock - 1_000_000_000)
    t._map_clock()
    t.rated = True  # a tracer past its first 20 ms (the rate's first baseline; the fake clocks agree)
    t.intervals.floor_ns = 0
    t.on = True
    return t


def _hand_buffer(t: cupti.CuptiTracer) -> int:
    buf, size, maxn = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_size_t()
    t._on_request(ctypes.pointer(buf), ctypes.pointer(size), ctypes.pointer(maxn))
    assert buf.value and buf.value % cupti.ALIGN == 0 and size.value == cupti.BUFFER_BYTES
    assert maxn.value == cupti.RECORDS_PER_BUFFER  # closed after that many: it can come back
    return buf.value


@pytest.mark.parametrize("parser", ["python", "c"])
def test_records_are_read_at_the_header_offsets_and_only_device_work_kinds_are_taken(monkeypatch, parser):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch, parser)
    assert t.map_err_ns == 0 and t._offset == -1_000_000_000  # the fake clocks are 1 s apart exactly
    addr = _hand_buffer(t)
    recs = [
        (cupti.KIND_CONCURRENT_KERNEL, 2_000_000_000, 2_000_001_000, 192),
        (5, 2_000_000_000, 2_100_000_000, 64),  # a runtime-API record: host time, not device work
        (cupti.KIND_MEMCPY, 2_000_002_000, 2_000_002_500, 96),
        (cupti.KIND_MEMSET, 2_000_002_400, 2_000_003_000, 80),  # overlaps the copy: counted once
        (cupti.KIND_CONCURRENT_KERNEL, 2_000_005_000, 2_000_004_000, 192),  # inverted: bad
    ]
    fake.sizes[addr] = _write_records(addr, recs)
    valid = sum(fake.sizes[addr])

    def deliver() -> None:
        t._on_complete(None, 0, addr, cupti.BUFFER_BYTES, valid)

    fake.on_flush = deliver
    t.drain()
    assert fake.flushed == [0], "flag 0: only buffers whose records are complete"
    assert t.records == 3 and t.bad_records == 1 and t.kinds == {10: 2, 5: 1, 1: 1, 2: 1}
    assert t.dropped == 3
    assert t.intervals.intervals() == [(1_000_000_000, 1_000_001_000), (1_000_002_000, 1_000_003_000)]
    assert t.busy(999_000_000, 1_000_010_000) == (2000, 0)
    # Complete up to the latest delivered start (the memset's), not to the flush: that a buffer came
    # back partly filled did not mean CUPTI had every record yet (measured on the H200).
    assert t.complete_until_ns == 1_000_002_400
    assert addr not in t._buffers and t._pool, "the buffer went back to the pool"
    addr2 = _hand_buffer(t)
    assert addr2 == addr, "and is reused"


def test_the_c_walk_and_the_python_walk_take_the_same_records_of_long_mixed_buffers(monkeypatch):
    """_cbusy.parse replaces the Python walk where built: the same pairs, kinds, bad count, gate.

    Two buffers of 1500 records each into one tracer (the kind counts add up across buffers; the
    C walk's pair array, 256 pairs at first, grows twice for each), shuffled so that the latest start is not the last
    record, of every kind the tracer meets and some it does not: kinds of 64 and above whose
    shift would wrap onto a taken bit (74 -> 10, 65 -> 1), one above the C walk's count slots,
    and records that are bad in every way, with one exactly at the length bound (taken).
    """
    import random

    rng = random.Random(9)
    kinds = [cupti.KIND_CONCURRENT_KERNEL, cupti.KIND_MEMCPY, cupti.KIND_MEMSET, cupti.KIND_KERNEL, 5, 17, 65, 74, 300]
    lengths = [1, 400, 900, 0, -5, cupti._MAX_RECORD_NS, cupti._MAX_RECORD_NS + 1]  # empty, inverted, bound
    buffers = []
    for b in range(2):
        recs = []
        for i in range(1500):
            s = 2_000_000_000 + (b * 1500 + i) * 1000 + rng.randrange(500)
            e = s + rng.choice(lengths)
            s = 0 if i % 97 == 0 else s
            kind = rng.choices(kinds, weights=[5, 3, 3, 2, 1, 1, 1, 1, 1])[0]  # mostly device work
            recs.append((kind, s, max(e, 0), rng.choice([64, 96, 192, 200])))
        rng.shuffle(recs)
        buffers.append(recs)
    got = {}
    for parser in ("python", "c"):
        fake = FakeCupti()
        t = _tracer(fake, monkeypatch, parser)
        t.kinds = {cupti.KIND_CONCURRENT_KERNEL: 7}  # counts from earlier buffers are added to
        pairs = []
        keep = []
        for recs in buffers:
            size = sum(r[3] for r in recs)
            big = (ctypes.c_uint8 * (size + cupti.ALIGN))()  # the records do not fit a tracer buffer
            keep.append(big)
            addr = ctypes.addressof(big) + (-ctypes.addressof(big)) % cupti.ALIGN
            fake.sizes[addr] = _write_records(addr, recs)
            pairs += t._parse(addr, size)
        got[parser] = (pairs, dict(t.kinds), t.records, t.bad_records, t.errors, t._start_max)
    assert got["c"] == got["python"]
    pairs, kinds_seen, records, bad, errors, start_max = got["c"]
    every = [r for recs in buffers for r in recs]
    taken = [r for r in every if r[0] in cupti.TAKEN_KINDS]
    good = [(s, e) for _, s, e, _ in taken if s != 0 and 0 < e - s <= cupti._MAX_RECORD_NS]
    assert len(good) > 2 * 600 and any(e - s == cupti._MAX_RECORD_NS for s, e in good)
    assert pairs == good and records == len(good) and bad == len(taken) - len(good) > 0
    assert kinds_seen[cupti.KIND_CONCURRENT_KERNEL] == 7 + sum(r[0] == cupti.KIND_CONCURRENT_KERNEL for r in every)
    assert kinds_seen[cupti.KIND_OTHER] == sum(r[0] == 300 for r in every) and kinds_seen[74] > 0 and errors == 0
    assert start_max == max(s for s, _ in good) and start_max != good[-1][0]


@pytest.mark.parametrize("parser", ["python", "c"])
def test_a_walk_stopped_by_an_error_keeps_the_records_before_it_and_counts_the_error(monkeypatch, parser):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch, parser)
    addr = _hand_buffer(t)
    recs = [(cupti.KIND_CONCURRENT_KERNEL, 2_000_000_000 + 10 * i, 2_000_000_005 + 10 * i, 192) for i in range(5)]
    fake.sizes[addr] = _write_records(addr, recs)
    fake.fail_at = 3
    pairs = t._parse(addr, sum(fake.sizes[addr]))
    assert pairs == [(s, e) for _, s, e, _ in recs[:3]] and t.errors == 1 and t.records == 3


@pytest.mark.parametrize("parser", ["python", "c"])
def test_a_walk_that_goes_round_is_stopped_at_what_the_buffer_can_hold_and_counted(monkeypatch, parser):
    """A libcupti that does not advance (or a walk that drops the cursor, as the first C walk did,
    hanging the H200 run) must not hold the callback thread for ever."""
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch, parser)
    addr = _hand_buffer(t)
    recs = [(cupti.KIND_CONCURRENT_KERNEL, 2_000_000_000 + 10 * i, 2_000_000_005 + 10 * i, 192) for i in range(5)]
    fake.sizes[addr] = _write_records(addr, recs)
    fake.ignores_cursor = True
    valid = sum(fake.sizes[addr])
    pairs = t._parse(addr, valid)
    most = valid // cupti.ALIGN + 1
    assert t.errors == 1 and fake.walked == most and pairs == [(recs[0][1], recs[0][2])] * most


def test_the_c_walk_is_what_a_real_libcupti_gets_and_stats_say_which(monkeypatch):
    """A function loaded by ctypes has an address: the C walk; a stand-in object: the Python one."""
    libc = ctypes.CDLL(None)
    assert cupti._c_function_address(libc.strlen) != 0
    assert cupti._c_function_address(FakeCupti().cuptiActivityGetNextRecord) == 0
    assert cupti.CuptiTracer().stats()["parser"] == "python"  # until start() finds a C function


def test_an_outstanding_full_buffer_holds_completeness_back(monkeypatch):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch)
    _hand_buffer(t)  # CUPTI holds it: records in it are not complete yet
    t.drain()
    assert t.complete_until_ns == 0


def test_a_full_buffer_returned_while_the_next_is_held_opens_the_gate_to_its_latest_start(monkeypatch):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch)
    full = _hand_buffer(t)
    _hand_buffer(t)  # the next one: CUPTI holds it (a kernel in it is still running)
    recs = [(cupti.KIND_CONCURRENT_KERNEL, 3_000_000_000 + 10 * i, 3_000_000_000 + 10 * i + 5, 200) for i in range(4)]
    fake.sizes[full] = _write_records(full, recs)
    valid = sum(fake.sizes[full])
    fake.on_flush = lambda: t._on_complete(None, 0, full, valid, valid)  # came back full, not partly
    t.drain()
    assert t.complete_until_ns == 2_000_000_030, "the latest delivered start, on the monotonic clock"


def test_a_forced_flush_opens_the_gate_to_just_before_it(monkeypatch):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch)
    _hand_buffer(t)  # held by CUPTI: an unforced flush opens nothing
    t.drain()
    assert t.complete_until_ns == 0 and fake.flushed == [0]
    monkeypatch.setattr(cupti.time, "monotonic_ns", lambda: 7_000_000_000)
    t.drain(force=True)
    assert fake.flushed == [0, 1], "CUPTI_ACTIVITY_FLAG_FLUSH_FORCED"
    assert t.complete_until_ns == 7_000_000_000 - cupti.FORCED_SETTLE_NS
    assert t.stats()["forced_flushes"] == 1


def test_a_cupti_clock_at_another_rate_is_mapped_linearly_once_the_rate_is_measured(monkeypatch):
    """On the H200 VM CUPTI's clock ran 2.1x as fast as CLOCK_MONOTONIC: records map through the rate.

    The rate needs two brackets 20 ms apart; start() takes the first and does not sleep for the
    second (it runs on the program's thread), so records delivered before then are held, not
    mapped at a rate of 1 (which would put them milliseconds off), and the gate stays shut.
    """
    mono = [1_000_000_000_000]

    class Fast(FakeCupti):
        def cuptiGetTimestamp(self, ts_ref: Any) -> int:
            ts_ref._obj.value = round(2.1 * mono[0]) + 48_000_000_000
            return 0

    fake = Fast()
    t = cupti.CuptiTracer()
    t._lib = fake
    monkeypatch.setattr(cupti.time, "monotonic_ns", lambda: mono[0])
    t._map_clock()  # start()'s bracket
    t.intervals.floor_ns = 0
    t.on = True
    assert not t.rated and not t.stats()["rated"]
    # A 1 ms kernel that ran 5 ms after the start, on CUPTI's clock: 2.1 ms of CUPTI time.
    mono[0] += 8_000_000
    k0 = mono[0] - 3_000_000
    addr = _hand_buffer(t)
    recs = [
        (
            cupti.KIND_CONCURRENT_KERNEL,
            round(2.1 * k0) + 48_000_000_000,
            round(2.1 * (k0 + 1_000_000)) + 48_000_000_000,
            192,
        )
    ]
    fake.sizes[addr] = _write_records(addr, recs)
    fake.on_flush = lambda: t._on_complete(None, 0, addr, cupti.BUFFER_BYTES, sum(fake.sizes[addr]))
    t.drain()  # 8 ms after start: no rate yet
    assert t.intervals.intervals() == [] and t.complete_until_ns == 0 and t.records == 1 and not t.rated
    fake.on_flush = None
    mono[0] += 22_000_000  # 30 ms after start
    t.drain()
    assert t.rated and t.rate == pytest.approx(2.1, rel=1e-9)
    ((s0, e0),) = t.intervals.intervals()
    assert abs(s0 - k0) <= 1 and abs(e0 - (k0 + 1_000_000)) <= 1, "the kernel lands where and as long as it ran"
    assert t.complete_until_ns == s0
    assert t.stats()["clock_rate"] == pytest.approx(2.1)


def test_stop_disables_tracing_and_resume_traces_again(monkeypatch):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch)
    t._cbs = ("req", "done")  # registered (the fake needs no real callbacks)
    t.stop()
    assert not t.on and fake.enabled == set(), "stopped: no kind left tracing"
    assert t.resume() and t.on and fake.enabled == set(cupti.ENABLED_KINDS)
    assert t.intervals.floor_ns == fake.clock - 1_000_000_000, "the stopped gap is not claimed as known"


def test_records_nobody_drains_are_bounded(monkeypatch):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch)
    monkeypatch.setattr(cupti, "MAX_RAW_RECORDS", 8)
    addr = _hand_buffer(t)
    recs = [(cupti.KIND_CONCURRENT_KERNEL, 2_000_000_000 + 100 * i, 2_000_000_050 + 100 * i, 192) for i in range(10)]
    fake.sizes[addr] = _write_records(addr, recs)
    t._on_complete(None, 0, addr, cupti.BUFFER_BYTES, sum(fake.sizes[addr]))
    assert len(t._raw) == 4 and t.raw_dropped == 6, "the newest half kept, the rest counted"
    t.drain()
    # Busy time before the last dropped record's end is unknown now, not silently short.
    assert t.intervals.floor_ns == 2_000_000_550 - 1_000_000_000
    assert t.busy(1_000_000_000, 1_000_001_000) is None and t.beyond_horizon == 1


def test_a_failing_drain_turns_tracing_off_for_good(monkeypatch):
    fake = FakeCupti()
    t = _tracer(fake, monkeypatch)

    def broken(flag: int) -> int:
        raise OSError("driver went away")

    fake.cuptiActivityFlushAll = broken  # type: ignore[method-assign]
    t.drain()
    assert not t.on and t.why.startswith("device busy time off") and fake.enabled == set()


def test_buffer_requests_are_bounded(monkeypatch):
    t = _tracer(FakeCupti(), monkeypatch)
    for _ in range(cupti.MAX_BUFFERS):
        _hand_buffer(t)
    buf, size, maxn = ctypes.c_void_p(), ctypes.c_size_t(7), ctypes.c_size_t()
    t._on_request(ctypes.pointer(buf), ctypes.pointer(size), ctypes.pointer(maxn))
    assert buf.value is None and size.value == 0 and t.no_buffer == 1


def test_without_libcupti_the_tracer_is_off_with_a_reason_and_never_raises(monkeypatch):
    monkeypatch.setattr(cupti, "candidates", lambda: ["/nonexistent/libcupti.so.12"])
    t = cupti.CuptiTracer()
    assert t.start() is False and not t.on
    assert t.why and t.why.startswith("device busy time off: no libcupti") and "\n" not in t.why
    t.drain()  # off: a no-op
    assert t.stats()["on"] is False


class StartLib:
    """A libcupti for ``CuptiTracer.start``: plain functions (ctypes sets argtypes on them), a call log.

    ``per_thread`` is the attribute's value, as CUDA 13's CUPTI has it by default (1); ``sticky``
    makes it ignore the request to turn it off; ``knows_attr`` False answers as CUPTI < 12.3.
    """

    def __init__(self, per_thread: int = 1, sticky: bool = False, knows_attr: bool = True) -> None:
        self.calls: list[str] = []
        self.per_thread = per_thread
        clock = [9_000_000_000]

        def log(name, rc=0):
            def f(*args):
                self.calls.append(name)
                return rc

            return f

        def set_attr(attr, size_ref, value_ref):
            self.calls.append("set_attr")
            if not knows_attr:
                return cupti.CUPTI_ERROR_INVALID_PARAMETER
            assert attr.value == cupti.ATTR_PER_THREAD_ACTIVITY_BUFFER and size_ref._obj.value == 1
            if not sticky:
                self.per_thread = value_ref._obj.value
            return 0

        def get_attr(attr, size_ref, value_ref):
            self.calls.append("get_attr")
            value_ref._obj.value = self.per_thread
            return 0

        def timestamp(ts_ref):
            clock[0] += 1000
            ts_ref._obj.value = clock[0]
            return 0

        self.cuptiActivitySetAttribute = set_attr
        self.cuptiActivityGetAttribute = get_attr
        self.cuptiGetTimestamp = timestamp
        self.cuptiActivityRegisterCallbacks = log("register")
        self.cuptiActivityEnable = log("enable")
        self.cuptiActivityDisable = log("disable")
        self.cuptiGetVersion = log("version")
        self.cuptiActivityGetNextRecord = log("next")
        self.cuptiActivityGetNumDroppedRecords = log("dropped")
        self.cuptiActivityFlushAll = log("flush")


def _start_with(lib: StartLib, monkeypatch: pytest.MonkeyPatch) -> cupti.CuptiTracer:
    monkeypatch.setattr(cupti, "candidates", lambda: ["libcupti-fake.so"])
    monkeypatch.setattr(cupti, "LOADER", lambda path: lib)
    monkeypatch.setattr(cupti, "_profiler_running", lambda: False)
    # start() runs on the program's thread at its first device-timed phase: it must not sleep
    # there for the clock rate's baseline (it did, 20 ms; drain() now waits for it instead).
    monkeypatch.setattr(cupti.time, "sleep", lambda s: pytest.fail(f"start() slept {s} s"))
    t = cupti.CuptiTracer()
    t.start()
    return t


def test_start_asks_for_global_buffers_before_it_registers_or_enables_anything(monkeypatch):
    """CUDA 13's CUPTI keeps per-thread buffers by default; the completeness gate needs one chain.

    With per-thread buffers a buffer of the autograd thread's kernels came back before the main
    thread's held the end of the forward pass: busy time 1-10 % short on the H200.
    """
    lib = StartLib(per_thread=1)
    t = _start_with(lib, monkeypatch)
    assert t.on and t.buffers == "global" and lib.per_thread == 0
    assert lib.calls.index("set_attr") < lib.calls.index("register") < lib.calls.index("enable")
    assert t.stats()["buffers"] == "global"


def test_start_walks_a_real_librarys_buffers_in_c_and_a_stand_ins_in_python(monkeypatch):
    """start() picks the C walk when cuptiActivityGetNextRecord is a C function (as from CDLL)."""
    lib = StartLib(per_thread=0)
    assert _start_with(lib, monkeypatch).stats()["parser"] == "python", "a Python stand-in has no address"
    if cupti._CBUSY is None:
        pytest.skip("gpuos_client._cbusy is not built (no C compiler at install time) or GPUOS_HINT_PURE=1")
    lib = StartLib(per_thread=0)
    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
    lib.cuptiActivityGetNextRecord = proto(lambda buf, valid, rec: cupti.CUPTI_ERROR_MAX_LIMIT_REACHED)
    t = _start_with(lib, monkeypatch)
    assert t.on and t.stats()["parser"] == "c" and t._next_record_addr
    assert t._parse(ctypes.addressof(ctypes.c_uint64()), 8) == [] and t.errors == 0


def test_a_cupti_that_keeps_per_thread_buffers_leaves_busy_time_off_with_the_reason(monkeypatch):
    lib = StartLib(per_thread=1, sticky=True)
    t = _start_with(lib, monkeypatch)
    assert not t.on and t.buffers == "per-thread"
    assert t.why.startswith("device busy time off: CUPTI keeps per-thread") and "\n" not in t.why
    assert "register" not in lib.calls and "enable" not in lib.calls, "nothing traced that nobody trusts"


def test_a_cupti_before_per_thread_buffers_starts_with_its_global_ones(monkeypatch):
    lib = StartLib(per_thread=0, knows_attr=False)
    t = _start_with(lib, monkeypatch)
    assert t.on and t.buffers == "global (CUPTI < 12.3)" and "get_attr" not in lib.calls


def test_library_candidates_honour_the_environment_first(monkeypatch, tmp_path):
    lib = tmp_path / "nvidia" / "cuda_cupti" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcupti.so.12").write_bytes(b"")
    monkeypatch.setenv("GPUOS_HINT_CUPTI_LIB", "/opt/x/libcupti.so")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    c = cupti.candidates()
    assert c[0] == "/opt/x/libcupti.so"
    assert str(lib / "libcupti.so.12") in c and c[-1] == "libcupti.so"


# ------------------------------------------------------------------ the collector's wait


class FakeTracer:
    on = True

    def __init__(self) -> None:
        self.complete_until_ns = 0
        self.drains = 0
        self.forced = 0

    def drain(self, force: bool = False) -> None:
        self.drains += 1
        self.forced += force

    def busy(self, a: int, b: int) -> tuple[int, int]:
        return (b - a) // 4, 7


class FakeRt:
    def __init__(self) -> None:
        self._device_pending: collections.deque[Any] = collections.deque()
        self._device_waiting: collections.deque[Any] = collections.deque()
        self._device_open: dict[int, Any] = {}
        self.device_marks = self.device_anchor_misses = self.device_busy_unresolved = 0
        self.drops: dict[str, int] = {}
        self.last_error: str | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


def _collector(monkeypatch: pytest.MonkeyPatch, backend: device._Backend | None = None, now: list[int] | None = None):
    """collect_device_times' world: a device backend, a settled clock anchor, a fake tracer, a fake runtime."""
    if now is not None:
        monkeypatch.setattr(device.time, "monotonic_ns", lambda: now[0])
    monkeypatch.setattr(device, "_backend", backend or Instant())
    monkeypatch.setattr(device, "_anchor", (0, 0))
    monkeypatch.setattr(device, "_anchor_made", 1e18)
    monkeypatch.setattr(device, "_anchor_err_ns", 0)  # an exact anchor: busy_err_ns is the tracer's alone
    monkeypatch.setattr(device, "_anchor_err_prev_ns", 0)
    tr = FakeTracer()
    monkeypatch.setattr(device, "_tracer", tr)
    return tr, FakeRt()


def test_pairs_wait_for_cuptis_records_then_carry_busy_and_give_up_after_the_bound(monkeypatch):
    now = [10_000_000_000]
    tr, rt = _collector(monkeypatch, now=now)
    rt._device_pending.extend([(1, 1_000_000, 5_000_000), (2, 6_000_000, 8_000_000)])
    assert device.collect_device_times(rt) == []  # type: ignore[arg-type]
    # Their device ends lie long before "now": nothing later recorded, so a forced flush was asked for too.
    assert [w[0] for w in rt._device_waiting] == [1, 2] and (tr.drains, tr.forced) == (2, 1)
    tr.complete_until_ns = 6_000_000  # span 1's records are in, span 2's not yet
    (m,) = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert m[3] == P.DEVICE_MARK and m[4]["span"] == 1
    assert (m[4]["busy_ns"], m[4]["busy_err_ns"]) == (1_000_000, 7)
    assert (m[4]["dev_begin_ns"], m[4]["dev_end_ns"]) == (1_000_000, 5_000_000)
    now[0] += device.BUSY_WAIT_NS + 1  # span 2's records never come
    (m,) = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert m[4]["span"] == 2 and "busy_ns" not in m[4] and rt.device_busy_unresolved == 1
    assert not rt._device_waiting and rt.device_marks == 2


def test_a_quiet_program_gets_a_forced_flush_for_its_last_pairs(monkeypatch):
    now = [10_000_000_000]
    tr, rt = _collector(monkeypatch, now=now)
    rt._device_pending.append((1, now[0] - 10_000_000, now[0] - 5_000_000))  # ended 5 ms ago
    assert device.collect_device_times(rt) == [] and tr.forced == 0  # type: ignore[arg-type]
    now[0] += device.BUSY_FORCE_AFTER_NS  # nothing later recorded since: force CUPTI's buffers out

    def forced_drain(force: bool = False) -> None:
        tr.drains += 1
        tr.forced += force
        if force:
            tr.complete_until_ns = now[0] - 20_000_000

    tr.drain = forced_drain  # type: ignore[method-assign]
    (m,) = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert tr.forced == 1 and m[4]["busy_ns"] == 1_250_000 and rt.device_busy_unresolved == 0


def test_no_forced_flush_while_later_device_work_is_queued(monkeypatch):
    """A forced flush returns unfinished records (lost for good): never while hinted work is queued."""
    now = [10_000_000_000]

    class HalfDone(Instant):
        def done(self, ev: Any) -> bool:
            return ev < 50_000_000  # the later pair's end event has not run yet

    tr, rt = _collector(monkeypatch, HalfDone(), now)
    rt._device_pending.extend([(1, 1_000_000, 5_000_000), (2, 6_000_000, 80_000_000)])
    assert device.collect_device_times(rt) == []  # type: ignore[arg-type]
    assert [w[0] for w in rt._device_waiting] == [1] and len(rt._device_pending) == 1
    assert tr.forced == 0, "span 2 is still queued on the GPU: no forced flush"


def test_no_forced_flush_while_a_device_timed_phase_is_still_open(monkeypatch):
    """A parent around its children, or a long phase in flight: its kernels are queued or running."""
    now = [10_000_000_000]
    tr, rt = _collector(monkeypatch, now=now)
    rt._device_open[7] = object()
    rt._device_pending.append((1, 1_000_000, 5_000_000))
    assert device.collect_device_times(rt) == []  # type: ignore[arg-type]
    assert tr.forced == 0 and [w[0] for w in rt._device_waiting] == [1]
    rt._device_open.clear()
    assert device.collect_device_times(rt) == [] and tr.forced == 1  # type: ignore[arg-type]


def test_a_full_wait_queue_counts_every_pair_it_loses(monkeypatch):
    monkeypatch.setattr(device, "_MAX_PENDING", 3)
    _, rt = _collector(monkeypatch)
    rt._device_pending.extend([(i, 10 * i, 10 * i + 5) for i in range(1, 6)])
    device.collect_device_times(rt)  # type: ignore[arg-type]
    assert len(rt._device_waiting) == 3 and rt.drops == {"device_pending_full": 2}


def test_waiting_pairs_go_without_busy_when_the_tracer_stops(monkeypatch):
    monkeypatch.setattr(device, "_backend", Instant())
    tr = FakeTracer()
    monkeypatch.setattr(device, "_tracer", tr)
    rt = FakeRt()
    rt._device_waiting.append((9, 1, 2, 0))
    tr.on = False
    (m,) = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert m[4]["span"] == 9 and "busy_ns" not in m[4] and rt.device_busy_unresolved == 1


def test_busy_time_is_off_unless_asked_for(monkeypatch):
    monkeypatch.setattr(device, "_busy_wanted", None)
    for value, want in ((None, False), ("1", True), ("0", False), ("off", False), ("yes", True)):
        monkeypatch.setattr(device, "_busy_env", None)  # read once per process: a fresh process here
        if value is None:
            monkeypatch.delenv(device.ENV_BUSY, raising=False)
        else:
            monkeypatch.setenv(device.ENV_BUSY, value)
        assert device.busy_wanted() is want, value
    device.set_busy(True)
    assert device.busy_wanted() is True
    device.set_busy(False)
    assert device.busy_wanted() is False


# ------------------------------------------------------------------ the daemon's edge


@pytest.fixture
def h(tmp_path):
    from fakeproc import FakeProc
    from test_service import START, UID

    fp = FakeProc(tmp_path / "proc")
    fp.add(PID, START, UID, tids=(PID + 1,), comm="python3", cmdline=("python3", "x.py"))
    svc = _service(fp, tmp_path)
    yield Harness(svc, fp)
    svc.worker.close()


def _dev(span: int, b: int, e: int, **busy: Any) -> list[Any]:
    return [P.MARK, e, PID, P.DEVICE_MARK, {"span": span, "dev_begin_ns": b, "dev_end_ns": e, "via": "x", **busy}]


@pytest.mark.parametrize(
    "busy",
    [
        {"busy_ns": 4_000_001},  # more than the 4 ms interval
        {"busy_ns": -1},
        {"busy_ns": 1.5},
        {"busy_ns": True},
        {"busy_ns": "100"},
        {"busy_ns": 10, "busy_err_ns": -1},
        {"busy_err_ns": 5},  # a bound without a figure
    ],
)
def test_a_bad_busy_time_is_refused_and_counted_and_the_span_keeps_no_busy_figure(h, busy):
    t0 = h.now()
    h.send([h.begin(1, "decode")])
    (reply,) = [r for r in h.send([_dev(1, t0, t0 + 4_000_000, **busy)]) if r["op"] == P.REPLY_ACK]
    assert reply["bad"] == 1
    assert h.svc.rejected["bad_device_mark"] == 1
    h.send([h.end(1)])
    h.svc.tick()
    (row,) = h.rows
    assert "dev_busy_ms" not in row.signals and row.dev_busy_ns is None


def test_a_good_busy_time_becomes_the_spans_busy_signals_and_the_phase_aggregate(h):
    t0 = h.now()
    h.send([h.begin(1, "decode"), _dev(1, t0, t0 + 4_000_000, busy_ns=1_000_000, busy_err_ns=2_000), h.end(1)])
    h.send([h.begin(2, "decode"), _dev(2, t0, t0 + 2_000_000, busy_ns=2_000_000), h.end(2)])  # all busy: allowed
    h.svc.tick()
    assert not h.svc.rejected
    by = {r.span_id: r.signals for r in h.rows}
    assert (by[1]["dev_ms"], by[1]["dev_busy_ms"], by[1]["dev_busy_pct"], by[1]["dev_busy_err_ms"]) == (
        4.0,
        1.0,
        25.0,
        0.002,
    )
    assert by[2]["dev_busy_pct"] == 100.0 and "dev_busy_err_ms" not in by[2]
    (ph,) = [p for p in h.svc.status().phases if p.path == "decode"]
    # The live share is total busy over total device time (3 ms of 6), as the store's: not the mean
    # of the spans' shares (62.5), which would weigh the 2 ms span as much as the 4 ms one.
    assert ph.signals["dev_busy_ms"] == 1.5 and ph.signals["dev_busy_pct"] == 50.0


# ------------------------------------------------------------------ the wire, end to end

CLIENT = (
    CHILD_IMPORT
    + """
import json, sys, time
import gpuos_client as h
from gpuos_client import device

class Tracer:
    on = True
    release = True
    drains = 0
    @property
    def complete_until_ns(self):
        return time.monotonic_ns() if self.release else 0
    def drain(self, force=False):
        self.drains += 1
    def resume(self):
        return True
    def stop(self):
        pass
    def busy(self, a, b):
        return (b - a) * 3 // 10, 1000
    def stats(self):
        return {"on": True, "drains": self.drains}

tr = Tracer()
device._backend, device._backend_probed, device._tracer = Instant(), True, tr
device.BUSY_WAIT_NS = 120 * 10**9  # this test decides when the records "arrive"
h.device_busy(True)
for i in range(100):
    with h.phase("busy_step", device=True):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0005:
            pass
assert h.flush(5.0)
tr.release = False
for i in range(20):
    with h.phase("late_step", device=True):
        time.sleep(0.001)
h.flush(5.0)
print("held", flush=True)
sys.stdin.readline()  # the daemon has stored the late spans without a device interval
tr.release = True
deadline = time.monotonic() + 10
while h.stats()["device"]["busy_waiting"] and time.monotonic() < deadline:
    time.sleep(0.02)
ok = h.flush(5.0)
print(json.dumps({"ok": ok, **h.stats()}), flush=True)
"""
)


def test_busy_time_reaches_open_and_already_stored_spans_and_hintctl_shows_it(daemon):
    p = daemon.client(CLIENT, wait=False)
    try:
        assert p.stdout.readline().strip() == b"held", p.stderr.read().decode() if p.poll() is not None else ""
        daemon.wait_for(
            lambda: len(daemon.query("SELECT 1 FROM spans WHERE name='late_step'")) == 20, what="20 late spans stored"
        )
        assert daemon.query("SELECT count(dev_start_ns) FROM spans WHERE name='late_step'")[0][0] == 0
        out, err = p.communicate(b"go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    s = json.loads(out.decode().strip().splitlines()[-1])
    assert s["ok"] and s["dropped"] == 0 and s["rejected"] == 0, (s, err.decode())
    assert s["device"]["marks"] == 120 and s["device"]["busy_unresolved"] == 0, s

    def rows(name: str) -> list[Any]:
        return daemon.query(
            "SELECT dev_start_ns, dev_end_ns, json_extract(signals, '$.dev_busy_ms'),"
            " json_extract(signals, '$.dev_busy_pct') FROM spans WHERE name=?",
            (name,),
        )

    got = daemon.wait_for(
        lambda: (r := rows("late_step")) and all(x[2] is not None for x in r) and r, what="late busy figures"
    )
    for name, rs in (("busy_step", rows("busy_step")), ("late_step", got)):
        assert len(rs) in (100, 20) and all(r[0] is not None for r in rs), name
        for d0, d1, busy_ms, pct in rs:
            assert busy_ms == pytest.approx((d1 - d0) * 3 // 10 / 1e6, abs=0.001), name
            assert pct == pytest.approx(30.0, abs=0.1) if d1 - d0 > 100_000 else pct <= 30.1, name
    assert daemon.status()["counters"].get("device_intervals_late", 0) >= 20

    env = daemon.env
    ctl = [sys.executable, "-m", "gpuos_hintd.cli.main"]
    table = subprocess.run([*ctl, "spans", "--name", "busy_step"], env=env, capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "BUSY MS" in table.stdout and "BUSY %" in table.stdout
    js = json.loads(
        subprocess.run([*ctl, "phases", "--json"], env=env, capture_output=True, text=True, timeout=30).stdout
    )
    by = {r["name"]: r for r in js}
    assert by["busy_step"]["dev_busy_count"] == 100 and by["late_step"]["dev_busy_count"] == 20
    assert by["busy_step"]["dev_busy_pct"] == pytest.approx(30.0, abs=0.2)
    live = {p["path"]: p for p in daemon.status()["phases"]}  # top's and Prometheus's figures
    assert live["busy_step"]["signals"]["dev_busy_pct"] == pytest.approx(by["busy_step"]["dev_busy_pct"], abs=0.01)
    ph = subprocess.run([*ctl, "phases"], env=env, capture_output=True, text=True, timeout=30).stdout
    assert "BUSY MS" in ph
