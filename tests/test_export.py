"""`gpuos-hintctl export`: real daemon + real clients -> trace JSON, parsed back and checked
against the trace-event format's rules; plus a store built directly for the corner cases
(overlapping spans on one thread, device intervals, pid reuse across boots).

Perfetto's trace_processor is not usable here (the `perfetto` wheel downloads its binary
at run time), so `check_trace` encodes the rules a viewer relies on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from gpuos_hintd.cli.export import GPU_TID, build_trace, write_atomic
from gpuos_hintd.model import DeviceInterval, MarkRow, ProcessRow, SampleRow, SpanRow

#: The console script (plugins register into gpuos_hintd.cli.main, which `python -m` would run
from gpuos_hintd.store import Store, open_readonly

#: The console script (plugins register into gpuos_hintd.cli.main, which `python -m` would run
#: as __main__, a second copy).
HINTCTL = str(Path(sys.executable).with_name("gpuos-hintctl"))


def check_trace(doc: dict[str, Any]) -> dict[str, Any]:
    """Assert the trace-event rules; return what it holds, by kind."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    events = doc["traceEvents"]
    procs: dict[int, str] = {}
    threads: set[tuple[int, int]] = set()
    used: set[tuple[int, int]] = set()
    last_ts: dict[tuple[Any, ...], float] = {}
    slices: dict[tuple[int, int], list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    counters: dict[tuple[int, str], list[float]] = defaultdict(list)
    flows: dict[int, list[str]] = defaultdict(list)
    kinds = Counter(e["ph"] for e in events)
    for e in events:
        ph = e["ph"]
        assert ph in {"M", "X", "i", "C", "s", "f"}, e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        if ph == "M":
            if e["name"] == "process_name":
                procs[e["pid"]] = e["args"]["name"]
            elif e["name"] == "thread_name":
                threads.add((e["pid"], e["tid"]))
            continue
        ts = e["ts"]
        assert isinstance(ts, int | float) and ts >= 0, e
        track = (e["pid"], e["tid"]) if ph != "C" else (e["pid"], "C", e["name"])
        assert ts >= last_ts.get(track, 0.0), f"timestamps go back on track {track}: {e}"
        last_ts[track] = ts
        used.add((e["pid"], e["tid"]))
        if ph == "X":
            assert isinstance(e["dur"], int | float) and e["dur"] >= 0, e
            start = round(ts * 1000)
            slices[(e["pid"], e["tid"])].append((start, start + round(e["dur"] * 1000), e))
        elif ph == "C":
            assert e["args"], e
            for v in e["args"].values():
                assert isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v), e
                counters[(e["pid"], e["name"])].append(v)
        elif ph == "i":
            assert e["s"] in ("t", "p", "g"), e
        elif ph in ("s", "f"):
            flows[e["id"]].append(ph)
    # Metadata for every process and thread that an event uses.
    for pid, tid in used:
        assert pid in procs, f"no process_name for pid {pid}"
        assert (pid, tid) in threads, f"no thread_name for pid {pid} tid {tid}"
    # Complete events on one track nest: each one ends before its enclosing one does.
    for track, items in slices.items():
        stack: list[int] = []
        for start, end, e in sorted(items, key=lambda x: (x[0], -x[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"slice {e['name']} overlaps its parent on {track}"
            stack.append(end)
    for fid, phs in flows.items():
        assert sorted(phs) == ["f", "s"], f"flow {fid}: {phs}"
    return {
        "kinds": kinds,
        "procs": procs,
        "threads": threads,
        "slices": [e for items in slices.values() for _s, _e, e in items],
        "counters": counters,
    }


CLIENT = """
import asyncio, os, threading, time
import gpuos_client as h

h.workload_class("inference.decode")
N = {n}

def work():
    for i in range(N):
        with h.phase("decode", i=i):
            with h.phase("attn"):
                time.sleep(0.001)
            with h.phase("sample"):
                h.mark("token", i=i)
                time.sleep(0.0005)

threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()

async def request(k):  # interleaved tasks on one thread: spans overlap without nesting
    for _ in range(2):
        with h.phase(f"req{{k}}"):
            await asyncio.sleep(0.004)

async def serve():
    await asyncio.gather(request(0), request(1))

asyncio.run(serve())
end = time.monotonic() + 0.35
while time.monotonic() < end:  # some CPU for the CPU % counter
    pass
h.flush()
"""


def _hintctl(d: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**d.env, "GPUOS_HINT_DISABLE": "1"}
    return subprocess.run(
        [HINTCTL, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_export_from_real_daemon(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory("store_samples_hz = 0.0\n")  # every sample stored: the CPU % counter track needs them
    n = 5
    procs = [d.client(CLIENT.format(n=n), wait=False) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err.decode()
    per_proc = 3 * n * 3 + 4  # 3 threads x n x (decode, attn, sample) + 2 tasks x 2 reqs
    pids = [p.pid for p in procs]
    d.wait_for(
        lambda: d.query(f"SELECT count(*) FROM spans WHERE pid IN ({pids[0]},{pids[1]})")[0][0] == 2 * per_proc,
        what="all spans stored",
    )
    out = tmp_path / "trace.json"
    res = _hintctl(d, "export", "--format", "perfetto", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "phase slices" in res.stdout
    doc = json.loads(out.read_text())
    got = check_trace(doc)
    total = d.query("SELECT count(*) FROM spans")[0][0]
    assert len([s for s in got["slices"] if s["cat"] == "phase"]) == total
    for pid in pids:
        mine = [s for s in got["slices"] if s["pid"] == pid]
        assert len(mine) == per_proc
        assert Counter(s["name"] for s in mine) == {
            "decode": 3 * n,
            "attn": 3 * n,
            "sample": 3 * n,
            "req0": 2,
            "req1": 2,
        }
        assert {s["args"]["workload_class"] for s in mine} == {"inference.decode"}
        assert {s["args"]["status"] for s in mine} == {"ok"}
        assert all("signals" in s["args"] for s in mine)
        paths = {s["args"]["path"] for s in mine}
        assert {"decode/attn", "decode/sample"} <= paths
        # Three worker threads plus the asyncio thread (whose overlapping requests take a second lane).
        tids = {t for p, t in got["threads"] if p == pid}
        assert len(tids) >= 5, tids
        assert any("overlap" in doc_name for doc_name in _thread_names(doc, pid))
        assert "inference.decode" in got["procs"][pid]
        cpu = got["counters"][(pid, "CPU %")]
        assert cpu and max(cpu) > 10, cpu  # it spun for 0.35 s
    marks = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "token"]
    assert len(marks) == 2 * 3 * n
    assert any(e["ph"] == "i" and e["name"] == "class: inference.decode" for e in doc["traceEvents"])

    # --pid, and with the daemon down (the store is read read-only).
    assert d.stop() == 0
    out2 = tmp_path / "one.json"
    res = _hintctl(d, "export", "--format", "chrome", "--pid", str(pids[0]), "-o", str(out2))
    assert res.returncode == 0, res.stderr
    got2 = check_trace(json.loads(out2.read_text()))
    assert len(got2["slices"]) == per_proc
    assert set(got2["procs"]) == {pids[0]}
    assert not list(tmp_path.glob(".*.tmp"))


def _thread_names(doc: dict[str, Any], pid: int) -> list[str]:
    return [
        e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == pid
    ]


# ----------------------------------------------------------- a store built directly
BOOT_A, BOOT_B = "boot-a", "boot-b"
#: Wall clock of the rows: recent, or the store's retention would prune them.
WALL = (time.time_ns() // 10**9 - 3600) * 10**9


def _span(boot: str, pid: int, start: int, sid: int, parent: int, tid: int, name: str, path: str,
          t0: int, t1: int, dev: tuple[int, int] | None = None, status: str = "ok") -> SpanRow:  # fmt: skip
    return SpanRow(
        boot_id=boot, pid=pid, pid_start=start, span_id=sid, parent_span_id=parent, tid=tid, name=name,
        path=path, depth=path.count("/") + 1, workload_class="training.step", attrs={"k": sid},
        start_ns=t0, end_ns=t1, start_wall_ns=WALL + t0 + (3600 * 10**9 if boot == BOOT_B else 0), status=status,
        dev_start_ns=dev[0] if dev else None, dev_end_ns=dev[1] if dev else None,
        signals={"cpu_pct": 50.0, "gpu_energy_mj": 12.5},
    )  # fmt: skip


def _proc(boot: str, pid: int, start: int) -> ProcessRow:
    return ProcessRow(boot, pid, start, 0, 0, "trainer", "python train.py", "/", None, "training.step", 0, 0)


def build_store(state: Path) -> None:
    ms = 1_000_000
    store = Store(state)
    wall = WALL
    store.submit("processes", [_proc(BOOT_A, 100, 1), _proc(BOOT_A, 200, 2), _proc(BOOT_B, 100, 7)])
    store.submit(
        "spans",
        [
            # pid 100, thread 101: step > (fwd, bwd); device intervals on two overlapping streams
            _span(BOOT_A, 100, 1, 1, 0, 101, "step", "step", 10 * ms, 50 * ms),
            _span(BOOT_A, 100, 1, 2, 1, 101, "fwd", "step/fwd", 10 * ms, 20 * ms, dev=(12 * ms, 30 * ms)),
            _span(BOOT_A, 100, 1, 3, 1, 101, "bwd", "step/bwd", 20 * ms, 50 * ms, dev=(25 * ms, 60 * ms)),
            # same thread, overlapping but not nested (asyncio): needs a second lane
            _span(BOOT_A, 100, 1, 4, 0, 101, "io", "io", 40 * ms, 70 * ms),
            # a zero-length span and one sharing its parent's both edges
            _span(BOOT_A, 100, 1, 5, 0, 102, "tick", "tick", 15 * ms, 15 * ms),
            _span(BOOT_A, 100, 1, 6, 0, 103, "outer", "outer", 5 * ms, 9 * ms),
            _span(BOOT_A, 100, 1, 7, 6, 103, "inner", "outer/inner", 5 * ms, 9 * ms, status="abandoned"),
            # another process
            _span(BOOT_A, 200, 2, 1, 0, 200, "load", "load", 1 * ms, 3 * ms),
            # pid 100 again, an hour later after a reboot (its monotonic clock restarted)
            _span(BOOT_B, 100, 7, 1, 0, 100, "step", "step", 2 * ms, 4 * ms),
        ],
    )
    store.submit(
        "marks",
        [
            MarkRow(BOOT_A, 100, 1, 101, 11 * ms, wall + 11 * ms, "ckpt", {"n": 1}),
            MarkRow(BOOT_A, 100, 1, 101, 10 * ms, wall + 10 * ms, "__class__", {"class": "training.step"}),
        ],
    )
    store.submit(
        "samples",
        [
            SampleRow(
                BOOT_A,
                100,
                1,
                0,
                t * ms,
                wall + t * ms,
                {
                    "cpu_user_ns": t * ms // 2,
                    "cpu_sys_ns": 0,
                    "gpu_util_pct": 30 + t,
                    "gpu_power_mw": 250_000,
                },
            )
            for t in (0, 20, 40, 60)
        ]
        + [SampleRow(BOOT_A, 100, 1, 101, 20 * ms, wall + 20 * ms, {"thread_cpu_ns": 5})],
    )
    store.submit("device", [DeviceInterval(BOOT_A, 100, 1, 1, 11 * ms, 61 * ms)])  # late interval for "step"
    assert store.flush(5)
    assert store.write_errors == 0, store.last_error
    store.close()
    conn = open_readonly(state)
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 9
    conn.close()


def test_export_store_built_directly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_store(state)
    conn = open_readonly(state)
    doc, stats = build_trace(conn, fmt="perfetto")
    got = check_trace(doc)
    phase = [s for s in got["slices"] if s["cat"] == "phase"]
    gpu = [s for s in got["slices"] if s["cat"] == "gpu"]
    assert len(phase) == stats["slices"] == 9
    assert len(gpu) == stats["device_slices"] == 3
    # pid 100 of boot B must not merge with pid 100 of boot A
    assert len(got["procs"]) == 3 and 100 in got["procs"] and 200 in got["procs"]
    # overlap lane for "io", GPU lanes for the overlapping device intervals
    io = next(s for s in phase if s["name"] == "io")
    assert io["tid"] != 101 and io["pid"] == 100
    gpu_tids = {s["tid"] for s in gpu if s["pid"] == 100}
    assert GPU_TID in gpu_tids and len(gpu_tids) >= 2
    names = _thread_names(doc, 100)
    assert "GPU" in names and any(n.startswith("thread 101 (overlap") for n in names)
    # counters: CPU % from cumulative deltas (0.5 s CPU per 1 s = 50 %), GPU util and power as sampled
    assert got["counters"][(100, "CPU %")] == [50.0, 50.0, 50.0]
    assert got["counters"][(100, "GPU util %")] == [30.0, 50.0, 70.0, 90.0]
    assert set(got["counters"][(100, "GPU power W")]) == {250.0}
    # args carry signals, class, status; abandoned kept
    fwd = next(s for s in phase if s["name"] == "fwd")
    assert fwd["args"]["signals"]["gpu_energy_mj"] == 12.5
    assert fwd["args"]["workload_class"] == "training.step" and fwd["args"]["attrs"] == {"k": 2}
    assert next(s for s in phase if s["name"] == "inner")["args"]["status"] == "abandoned"
    assert got["kinds"]["s"] == got["kinds"]["f"] == 3  # perfetto: host -> device flows
    # timestamps are relative to the first event
    assert min(e["ts"] for e in doc["traceEvents"] if e["ph"] != "M") == 0
    # chrome flavour: same slices, no flows
    chrome, _ = build_trace(conn, fmt="chrome")
    assert "s" not in check_trace(chrome)["kinds"]
    # --pid / --since filters
    only, _ = build_trace(conn, pid=200)
    assert {e["pid"] for e in only["traceEvents"]} == {200}
    later, _ = build_trace(conn, since_wall_ns=WALL + 30 * 1_000_000)
    assert sorted(s["name"] for s in check_trace(later)["slices"]) == ["io", "step"]  # step: boot B
    conn.close()
    # atomic write: the target appears whole, no temporary file stays behind
    target = tmp_path / "out" / "trace.json"
    target.parent.mkdir()
    write_atomic(target, doc)
    assert json.loads(target.read_text()) == doc
    assert os.listdir(target.parent) == ["trace.json"]


def test_export_without_store_is_a_clean_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env.update(GPUOS_HINT_DISABLE="1", GPUOS_HINT_STATE_DIR=str(tmp_path / "none"))
    res = subprocess.run(
        [HINTCTL, "export", "-o", str(tmp_path / "t.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1 and "no store" in res.stderr
    assert not (tmp_path / "t.json").exists()
