"""The store as a trace-event JSON document for Perfetto UI / chrome://tracing.

Both formats write the Chrome trace-event "JSON Object Format" ({"traceEvents": [...]}),
which ui.perfetto.dev and chrome://tracing both open.  ``--format perfetto``
adds flow arrows from each host phase slice to its device slice (Perfetto draws
them; the legacy chrome://tracing viewer is unreliable with flows, so ``chrome``
leaves them out).  No protobuf: JSON needs no dependency.

What goes in (read-only from the SQLite store through store.read, so the daemon may be down):
* one process track per client process (``process_name`` metadata: comm, pid,
  workload class), one thread track per thread that had phases;
* phases as complete ("X") slices, args = path, status, workload class,
  attributes and every correlated signal.  Slices on one track must nest; spans
  that overlap without nesting on one thread (asyncio tasks interleaving) go to
  an extra lane, "thread N (overlap k)", so no track ever breaks the rule;
* device intervals (``dev_start_ns``/``dev_end_ns``) on a "GPU" track per
  process (more lanes if streams overlap);
* marks as instant ("i") events on their thread, the workload-class changes
  among them;
* counter ("C") tracks per process from the samples table: CPU % (from the
  cumulative CPU-time deltas), GPU util % and GPU power W where sampled.
Timestamps are microseconds (3 decimals = ns) from the first event.  The store's
clock is CLOCK_MONOTONIC per boot; rows of several boots are put on one wall-clock
timeline through each boot's monotonic-to-wall offset.

Used by `gpuos-hintctl export` (cli/export.py) on a store it can read, and by the daemon's
``export`` control op (history.py) for callers that may not read the store.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections import defaultdict
from typing import Any

from ..store import read

#: Synthetic thread ids (Linux tids stay below 2**22): overlap lanes and GPU tracks.
LANE_BASE = 1 << 24
GPU_TID = 1 << 30
#: Trace pids for a pid seen again after reuse or in another boot.
REUSED_PID_BASE = 1 << 23

ProcId = tuple[str, int, int]  # (boot_id, pid, pid_start)


class _Lanes:
    """Places intervals on the fewest lanes such that each lane nests properly."""

    def __init__(self) -> None:
        self.stacks: list[list[int]] = []

    def place(self, start: int, end: int) -> int:
        for i, stack in enumerate(self.stacks):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                return i
        self.stacks.append([end])
        return len(self.stacks) - 1


class TraceBuilder:
    def __init__(
        self,
        conn: sqlite3.Connection,
        since_wall_ns: int | None,
        pid: int | None,
        flows: bool,
        uid: int | None = None,
    ) -> None:
        self.conn = conn
        self.since = since_wall_ns or 0
        self.pid = pid
        self.uid = uid  # only this uid's processes (the daemon's answer to a non-root caller)
        self.flows = flows
        self.events: list[dict[str, Any]] = []
        self.meta: list[dict[str, Any]] = []
        self.tpids: dict[ProcId, int] = {}
        self.threads: dict[tuple[int, int], str] = {}  # (tpid, tid) -> name
        self.offsets: dict[str, int] = {}
        self.stats = {"slices": 0, "device_slices": 0, "marks": 0, "counter_points": 0}

    def build(self) -> dict[str, Any]:
        spans = read.trace_spans(self.conn, self.since, self.pid, self.uid)
        marks = read.trace_marks(self.conn, self.since, self.pid, self.uid)
        samples = read.trace_process_samples(self.conn, self.since, self.pid, self.uid)
        procs = {(r["boot_id"], r["pid"], r["pid_start"]): r for r in read.processes(self.conn, self.uid)}
        self._clock(spans, marks, samples)
        starts = [self._abs(r["boot_id"], r["start_ns"]) for r in spans]
        starts += [self._abs(r["boot_id"], r["t_ns"]) for r in marks]
        starts += [self._abs(r["boot_id"], r["t_ns"]) for r in samples]
        starts += [self._abs(r["boot_id"], r["dev_start_ns"]) for r in spans if r["dev_start_ns"] is not None]
        self.t0 = min(starts) if starts else 0
        self._spans(spans)
        self._marks(marks)
        self._counters(samples)
        self._metadata(procs)
        self.events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        return {
            "traceEvents": self.meta + self.events,
            "displayTimeUnit": "ms",
            "otherData": {"generator": "gpuos-hintctl export", "clock": "CLOCK_MONOTONIC per boot, us"},
        }

    # -- time -----------------------------------------------------------------
    def _clock(self, *tables: list[sqlite3.Row]) -> None:
        """Each boot's wall - monotonic offset (median over rows that carry both clocks)."""
        per_boot: dict[str, list[int]] = defaultdict(list)
        for rows in tables:
            for r in rows[:2000]:
                keys = r.keys()
                mono, wall = (
                    (r["start_ns"], r["start_wall_ns"]) if "start_wall_ns" in keys else (r["t_ns"], r["wall_ns"])
                )
                per_boot[r["boot_id"]].append(wall - mono)
        self.offsets = {b: int(statistics.median(v)) for b, v in per_boot.items()}

    def _abs(self, boot: str, t_ns: int) -> int:
        return t_ns + self.offsets.get(boot, 0)

    def _us(self, boot: str, t_ns: int) -> float:
        return round((self._abs(boot, t_ns) - self.t0) / 1000, 3)

    # -- tracks ---------------------------------------------------------------
    def _tpid(self, boot: str, pid: int, start: int) -> int:
        key = (boot, pid, start)
        tp = self.tpids.get(key)
        if tp is None:
            taken = set(self.tpids.values())
            tp = pid if pid not in taken else REUSED_PID_BASE + len(self.tpids)
            self.tpids[key] = tp
            self.threads.setdefault((tp, tp), "main")
        return tp

    def _thread(self, tp: int, tid: int, lane: int, gpu: bool = False) -> int:
        if gpu:
            out = GPU_TID + lane
            name = "GPU" if lane == 0 else f"GPU (overlap {lane})"
        elif lane == 0:
            out, name = tid, ("main" if tid == tp else f"thread {tid}")
        else:
            out, name = LANE_BASE + tid * 16 + lane, f"thread {tid} (overlap {lane})"
        self.threads.setdefault((tp, out), name)
        return out

    def _spans(self, spans: list[sqlite3.Row]) -> None:
        host_lanes: dict[tuple[int, int], _Lanes] = defaultdict(_Lanes)
        dev_lanes: dict[int, _Lanes] = defaultdict(_Lanes)
        ordered = sorted(spans, key=lambda r: (self._abs(r["boot_id"], r["start_ns"]), -r["end_ns"], r["depth"]))
        device = []
        for r in ordered:
            boot = r["boot_id"]
            tp = self._tpid(boot, r["pid"], r["pid_start"])
            start, end = self._abs(boot, r["start_ns"]), self._abs(boot, max(r["end_ns"], r["start_ns"]))
            lane = host_lanes[(tp, r["tid"])].place(start, end)
            tid = self._thread(tp, r["tid"], lane)
            signals = json.loads(r["signals"]) if r["signals"] else {}
            span_args: dict[str, Any] = {
                "path": r["path"],
                "status": r["status"],
                "workload_class": r["workload_class"],
                "span_id": r["span_id"],
                "parent_span_id": r["parent_span_id"],
                "tid": r["tid"],
            }
            if r["attrs"]:
                span_args["attrs"] = json.loads(r["attrs"])
            if r["estimated"]:
                span_args["estimated"] = True
            if r["recovered"]:
                span_args["recovered"] = True
            span_args["signals"] = signals
            ts = self._us(boot, r["start_ns"])
            self.events.append(
                {
                    "ph": "X",
                    "cat": "phase",
                    "name": r["name"],
                    "pid": tp,
                    "tid": tid,
                    "ts": ts,
                    "dur": round((end - start) / 1000, 3),
                    "args": span_args,
                }
            )
            self.stats["slices"] += 1
            if r["dev_start_ns"] is not None and r["dev_end_ns"] is not None:
                device.append((r, tp, tid, ts))
        device.sort(key=lambda x: (self._abs(x[0]["boot_id"], x[0]["dev_start_ns"]), -x[0]["dev_end_ns"]))
        for r, tp, host_tid, host_ts in device:
            boot = r["boot_id"]
            ds, de = self._abs(boot, r["dev_start_ns"]), self._abs(boot, max(r["dev_end_ns"], r["dev_start_ns"]))
            gtid = self._thread(tp, 0, dev_lanes[tp].place(ds, de), gpu=True)
            dts = self._us(boot, r["dev_start_ns"])
            self.events.append(
                {
                    "ph": "X",
                    "cat": "gpu",
                    "name": r["name"],
                    "pid": tp,
                    "tid": gtid,
                    "ts": dts,
                    "dur": round((de - ds) / 1000, 3),
                    "args": {
                        "path": r["path"],
                        "span_id": r["span_id"],
                        "host_tid": r["tid"],
                        "queue_delay_us": round((ds - self._abs(boot, r["start_ns"])) / 1000, 3),
                    },
                }
            )
            self.stats["device_slices"] += 1
            if self.flows:
                fid = (tp << 32) ^ r["span_id"]
                common = {"cat": "gpu", "name": "launch", "id": fid, "pid": tp}
                self.events.append({"ph": "s", "tid": host_tid, "ts": host_ts, **common})
                self.events.append({"ph": "f", "bp": "e", "tid": gtid, "ts": dts, **common})

    def _marks(self, marks: list[sqlite3.Row]) -> None:
        for r in marks:
            tp = self._tpid(r["boot_id"], r["pid"], r["pid_start"])
            tid = self._thread(tp, r["tid"], 0)
            attrs = json.loads(r["attrs"]) if r["attrs"] else {}
            name = r["name"]
            if name == "__class__":
                name = f"class: {attrs.get('class')}"
            self.events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "cat": "mark",
                    "name": name,
                    "pid": tp,
                    "tid": tid,
                    "ts": self._us(r["boot_id"], r["t_ns"]),
                    "args": attrs,
                }
            )
            self.stats["marks"] += 1

    def _counters(self, samples: list[sqlite3.Row]) -> None:
        prev: dict[ProcId, tuple[int, int]] = {}
        for r in samples:
            key = (r["boot_id"], r["pid"], r["pid_start"])
            tp = self._tpid(*key)
            sig = json.loads(r["signals"])
            ts = self._us(r["boot_id"], r["t_ns"])
            user, sys_ = sig.get("cpu_user_ns"), sig.get("cpu_sys_ns")
            if isinstance(user, int) and isinstance(sys_, int):
                cpu = user + sys_
                last = prev.get(key)
                prev[key] = (r["t_ns"], cpu)
                if last is not None and r["t_ns"] > last[0]:
                    pct = max(0.0, (cpu - last[1]) / (r["t_ns"] - last[0]) * 100)
                    self._counter(tp, ts, "CPU %", round(pct, 2))
            util = sig.get("gpu_util_pct")
            if isinstance(util, int | float):
                self._counter(tp, ts, "GPU util %", float(util))
            power = sig.get("gpu_power_mw")
            if isinstance(power, int | float):
                self._counter(tp, ts, "GPU power W", round(power / 1000, 3))

    def _counter(self, tp: int, ts: float, name: str, value: float) -> None:
        self.events.append({"ph": "C", "name": name, "pid": tp, "tid": tp, "ts": ts, "args": {"value": value}})
        self.stats["counter_points"] += 1

    def _metadata(self, procs: dict[ProcId, sqlite3.Row]) -> None:
        for key, tp in self.tpids.items():
            p = procs.get(key)
            comm = p["comm"] if p is not None else "?"
            cls = p["workload_class"] if p is not None else None
            name = f"{comm} (pid {key[1]})" + (f" [{cls}]" if cls else "")
            self.meta.append({"ph": "M", "name": "process_name", "pid": tp, "tid": tp, "args": {"name": name}})
            if cls:
                self.meta.append({"ph": "M", "name": "process_labels", "pid": tp, "tid": tp, "args": {"labels": cls}})
            self.meta.append(
                {"ph": "M", "name": "process_sort_index", "pid": tp, "tid": tp, "args": {"sort_index": tp}}
            )
        for (tp, tid), name in sorted(self.threads.items()):
            self.meta.append({"ph": "M", "name": "thread_name", "pid": tp, "tid": tid, "args": {"name": name}})
            order = -1 if tid == tp else tid
            self.meta.append(
                {"ph": "M", "name": "thread_sort_index", "pid": tp, "tid": tid, "args": {"sort_index": order}}
            )
        self.stats["processes"] = len(self.tpids)
        self.stats["tracks"] = len(self.threads)


def build_trace(
    conn: sqlite3.Connection,
    since_wall_ns: int | None = None,
    pid: int | None = None,
    fmt: str = "perfetto",
    uid: int | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The trace document and what went into it (counts)."""
    b = TraceBuilder(conn, since_wall_ns, pid, flows=fmt == "perfetto", uid=uid)
    trace = b.build()
    trace["otherData"]["format"] = fmt
    return trace, b.stats
