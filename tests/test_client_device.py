"""Device-interval collection (gpuos_client.device) against a simulated in-order CUDA stream.

This machine has no GPU, so the stream is simulated: events complete in the order they were
recorded, at device times the test chooses, and the anchor completes at a known host time.  The
code under test is the real collector: how it turns completed event pairs into ``__device__``
marks on the host clock, what it keeps for later, and how many driver calls it makes per round
(each one takes the CUDA context lock that the program's kernel launches need).  The real
backends are exercised on the H200 by benchmarks/gpu/accuracy_gpu.py.
"""

from __future__ import annotations

import collections
import json
import textwrap
from typing import Any

from gpuos_client import device
from instant_device import CHILD_IMPORT


class FakeStream(device._Backend):
    """Events complete in record order once the simulated device clock passes their time."""

    name = "fake"

    def __init__(self) -> None:
        self.now_ms = 0.0  # the simulated device clock
        self.queries = 0
        self.anchor_ok = True

    def event(self, at_ms: float) -> dict[str, Any]:
        return {"at": at_ms}

    def record(self) -> Any:  # pragma: no cover - the test builds events with explicit times
        raise AssertionError("not used")

    def done(self, ev: Any) -> bool:
        self.queries += 1
        if ev.get("anchor"):
            return self.anchor_ok
        return ev["at"] <= self.now_ms

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return b["at"] - a["at"]

    def anchor_event(self) -> Any:
        return {"at": self.now_ms, "anchor": True}


class FakeRuntime:
    def __init__(self) -> None:
        self._device_pending: collections.deque[Any] = collections.deque()
        self._device_waiting: collections.deque[Any] = collections.deque()
        self.device_busy_unresolved = 0
        self.device_marks = 0
        self.device_anchor_misses = 0
        self.drops: dict[str, int] = {}
        self.last_error: str | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


def _setup(monkeypatch, fake: FakeStream, anchor_host_ns: int = 10_000_000_000) -> None:
    monkeypatch.setattr(device, "_backend", fake)
    monkeypatch.setattr(device, "_anchor", None)
    monkeypatch.setattr(device, "_anchor_err_ns", 0)  # restored after the test (the collector sets them)
    monkeypatch.setattr(device, "_anchor_err_prev_ns", 0)
    monkeypatch.setattr(device.time, "monotonic_ns", lambda: anchor_host_ns)


def test_completed_pairs_become_marks_on_the_host_clock_and_the_rest_wait_in_order(monkeypatch):
    fake = FakeStream()
    _setup(monkeypatch, fake)
    rt = FakeRuntime()
    for sid in range(1, 6):  # spans 1..5: device [10*sid, 10*sid + 4] ms
        rt._device_pending.append((sid, fake.event(10.0 * sid), fake.event(10.0 * sid + 4)))
    fake.now_ms = 25.0  # spans 1 and 2 are done on the device; 3..5 are not
    marks = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert [m[4]["span"] for m in marks] == [1, 2]
    # The anchor completed at device 25 ms = host 10 s: span 1's device begin (10 ms) is 15 ms earlier.
    assert marks[0][4]["dev_begin_ns"] == 10_000_000_000 - 15_000_000
    assert marks[0][4]["dev_end_ns"] - marks[0][4]["dev_begin_ns"] == 4_000_000
    assert marks[0][1] == marks[0][4]["dev_end_ns"]  # the mark's time is the device end
    assert [p[0] for p in rt._device_pending] == [3, 4, 5]
    assert rt.device_marks == 2

    # The program adds a pair while 3..5 wait: the order stays 3, 4, 5, 6.
    rt._device_pending.append((6, fake.event(60.0), fake.event(64.0)))
    fake.now_ms = 70.0
    marks = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert [m[4]["span"] for m in marks] == [3, 4, 5, 6]
    assert not rt._device_pending and rt.device_marks == 6


def test_a_round_stops_at_the_first_pair_not_done_instead_of_querying_every_pair(monkeypatch):
    fake = FakeStream()
    _setup(monkeypatch, fake)
    rt = FakeRuntime()
    for sid in range(1000):
        rt._device_pending.append((sid, fake.event(float(sid)), fake.event(sid + 0.5)))
    fake.now_ms = -1.0  # nothing done yet
    assert device.collect_device_times(rt) == []  # type: ignore[arg-type]
    assert fake.queries == 1, "one driver call for a round with nothing ready, not one per pending pair"
    assert len(rt._device_pending) == 1000


def test_an_anchor_that_does_not_complete_keeps_the_pairs_and_is_counted(monkeypatch):
    fake = FakeStream()
    fake.anchor_ok = False
    clock = iter(range(0, 10**12, 20_000))  # 20 us per clock read: the 50 ms spin gives up
    monkeypatch.setattr(device, "_backend", fake)
    monkeypatch.setattr(device, "_anchor", None)
    monkeypatch.setattr(device, "_anchor_err_ns", 0)
    monkeypatch.setattr(device, "_anchor_err_prev_ns", 0)
    monkeypatch.setattr(device.time, "monotonic_ns", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr(device.time, "sleep", lambda s: slept.append(s))
    rt = FakeRuntime()
    rt._device_pending.append((1, fake.event(0.0), fake.event(1.0)))
    fake.now_ms = 5.0
    assert device.collect_device_times(rt) == []  # type: ignore[arg-type]
    assert [p[0] for p in rt._device_pending] == [1]
    assert rt.device_anchor_misses == 1
    # ~1250 polls in 50 ms: the first _ANCHOR_TIGHT_POLLS back to back, every later one yields.
    assert all(s == 0 for s in slept) and len(slept) > 1000, "the anchor spin yields the GIL between polls"
    fake.anchor_ok = True
    marks = device.collect_device_times(rt)  # type: ignore[arg-type]
    assert [m[4]["span"] for m in marks] == [1]


class TimedAnchor(FakeStream):
    """Anchor events complete at host time ``done_at_ns``; the host clock is read from ``clock``."""

    def __init__(self, clock: list[int], done_at_ns: list[int], slow_done_poll_ns: list[int]) -> None:
        super().__init__()
        self.clock, self.done_at, self.slow = clock, done_at_ns, slow_done_poll_ns
        self.made = 0

    def anchor_event(self) -> Any:
        self.made += 1
        return {"anchor": True, "n": self.made - 1}

    def done(self, ev: Any) -> bool:
        if not ev.get("anchor"):
            return super().done(ev)
        ok = self.clock[0] >= self.done_at[ev["n"]]
        if ok:  # the poll that sees it done may be slow (the thread lost the GIL inside it)
            self.clock[0] += self.slow[ev["n"]]
        return ok


def _ticking(monkeypatch, clock: list[int], step: int) -> None:
    def now() -> int:
        clock[0] += step
        return clock[0]

    monkeypatch.setattr(device.time, "monotonic_ns", now)


def test_the_anchor_is_the_midpoint_of_its_bracket_and_says_its_error(monkeypatch):
    """The completion lies between the last poll that saw it pending and the first that saw it done."""
    clock = [1_000_000]
    fake = TimedAnchor(clock, done_at_ns=[1_010_000], slow_done_poll_ns=[0])
    _ticking(monkeypatch, clock, 1_000)  # each clock read 1 us later
    _ev, host_ns, half = device._fresh_anchor(fake)
    assert fake.made == 1 and half <= device.ANCHOR_TARGET_NS
    assert host_ns - half <= 1_010_000 <= host_ns + half, "the true completion is inside the bracket"
    assert abs(host_ns - 1_010_000) <= 2_000


def test_a_wide_anchor_bracket_is_tried_again_and_the_tightest_kept(monkeypatch):
    """The done-poll of the first try took 80 us (the GIL went to the program): the anchor would
    be up to 80 us late, every device interval with it.  A second try brackets it within 2 us."""
    clock = [1_000_000]
    fake = TimedAnchor(clock, done_at_ns=[1_005_000, 0], slow_done_poll_ns=[80_000, 0])
    _ticking(monkeypatch, clock, 1_000)
    ev, _host_ns, half = device._fresh_anchor(fake)
    assert fake.made == 2 and ev["n"] == 1 and half <= 2_000


def test_busy_time_error_includes_the_anchor_error(monkeypatch):
    """An anchor off by d moves the device window against CUPTI's records by d: the bound says so."""
    monkeypatch.setattr(device, "_anchor_err_ns", 4_000)
    monkeypatch.setattr(device, "_anchor_err_prev_ns", 9_000)
    assert device.anchor_err_ns() == 9_000
    assert device._plus_anchor((1_000_000, 7)) == (1_000_000, 9_007)
    assert device._plus_anchor(None) is None


def test_every_device_interval_reaches_its_span_when_the_device_finishes_at_once(daemon):
    """A real daemon, and a simulated device whose events complete the moment they are recorded
    (a synchronous phase on an idle GPU).  The marks are then ready in the same sender round as
    their spans' begin and end; sent ahead of them, the daemon met a mark for a span it did not
    know yet and the interval was lost (60 % of the H200's synchronous spans in issue 9's run)."""
    res = daemon.client(
        CHILD_IMPORT
        + textwrap.dedent(
            """
        import json, time
        import gpuos_client as h
        from gpuos_client import device

        device._backend, device._backend_probed = Instant(), True
        for i in range(300):
            with h.phase("sync_step", device=True):
                t = time.perf_counter()
                while time.perf_counter() - t < 0.0002:
                    pass
            if i % 50 == 0:
                time.sleep(0.06)  # a sender window passes: some rounds hold marks of finished spans
        ok = h.flush(5.0)
        print(json.dumps({"ok": ok, **h.stats()}))
        """
        )
    )
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["ok"] and s["dropped"] == 0, s
    assert s["device"]["marks"] == 300, s
    rows = daemon.wait_for(
        lambda: (
            (r := daemon.query("SELECT dev_start_ns, dev_end_ns, start_ns, end_ns FROM spans WHERE name='sync_step'"))
            and len(r) == 300
            and r
        ),
        what="300 spans",
    )
    daemon.sync()
    rows = daemon.query("SELECT dev_start_ns, dev_end_ns, start_ns, end_ns FROM spans WHERE name='sync_step'")
    with_dev = [r for r in rows if r[0] is not None]
    assert len(with_dev) == 300, f"{300 - len(with_dev)} of 300 spans lost their device interval"
    for d0, d1, h0, h1 in with_dev:
        # The instant device's interval is the host interval, to within the simulated anchor's
        # error: its "completion" is read by the sender thread, which can wait up to one GIL switch
        # interval (5 ms) between recording and reading it.  A real GPU stamps the event itself.
        assert abs(d0 - h0) < 20_000_000 and abs(d1 - h1) < 20_000_000  # 20 ms: an OS preemption on a loaded box
