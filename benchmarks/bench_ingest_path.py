"""The daemon's per-event ingest path, in-process: HintService.ingest() on a real client's batches.

What one event costs the daemon before span finalisation: decode, header and admission
checks, per-event validation, dispatch, and the span bookkeeping handed to the
correlator (begin/end).  No socket, so ZeroMQ is not in the figure; the store is real
but no tick runs, so finalisation (correlate.py, another part of issue 10) is not in it
either (``--sustained`` adds it: real samplers ticking at 10 Hz and the SQLite writer).

The stream is what client/gpuos_client/_phase_py.py sends in a training loop: per step a
``train_step`` phase with attrs, three nested phase pairs, a ``loss`` mark; every edge
carries an ``ru`` reading (7 ints) unless it falls inside the client's 20 us reuse window
(then nil), encoded with the client's own protocol.encode_batch, 256 events a batch.

Each option runs in its own child process (a fresh interpreter, gc as the daemon has it),
options interleaved round by round, ``--repeats`` rounds; each child reports the best and
all of its ``--inner`` passes over fresh batches.

    python benchmarks/bench_ingest_path.py [--batches 400] [--repeats 5] [--base /tmp/base]

``--base DIR`` adds the same measurement against another source tree (DIR/client and
DIR/daemon), e.g. the commit before this work: ``git archive <rev> client daemon | tar -x -C DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

CHILD = r"""
import gc, json, os, sys, tempfile, time, logging
from pathlib import Path
import msgpack, structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
from gpuos_client import protocol as P
from gpuos_hintd.config import Config
from gpuos_hintd.service import HintService
from gpuos_hintd.store import Store
from gpuos_hintd.samplers import registry

nb, inner, sustained, tune = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"

def start_ticks(pid):
    data = open(f"/proc/{pid}/stat", "rb").read()
    return int(data[data.rfind(b")") + 2:].split()[19])

def make_batches(nbatches, span_base, seq0):
    pid = os.getpid(); pst = start_ticks(pid); tid = pid
    t = time.monotonic_ns() - 2_000_000_000
    cpu = 10_000_000; sid = span_base; out = []; evs = []; step_no = 0; last_ru = -10**9
    def ru(t):
        nonlocal cpu, last_ru
        if t - last_ru < 20_000:
            return None  # inside the client's reuse window: nil, "the last reading"
        last_ru = t; cpu += 15_000
        return [t - 300, cpu, cpu + 5_000, 12, 3, 4_000, 0]
    while len(out) < nbatches:
        sid += 1; step = sid; step_no += 1
        t += 1000; evs.append((1, t, tid, step, 0, "train_step", None, {"step": step_no, "batch": 32}, ru(t)))
        for name in ("forward", "backward", "optimizer"):
            sid += 1
            t += 15_000; evs.append((1, t, tid, sid, step, name, None, None, ru(t)))
            t += 15_000; evs.append((2, t, tid, sid, "ok", None, ru(t)))
        t += 1000; evs.append((3, t, tid, "loss", {"loss": 0.25, "lr": 1e-4}))
        t += 1000; evs.append((2, t, tid, step, "ok", None, ru(t)))
        while len(evs) >= 256:
            out.append(P.encode_batch(pid, pst, seq0 + len(out) + 1, 0, evs[:256])); evs = evs[256:]
    return out, sid

peer = (os.getpid(), os.getuid(), os.getgid())
pc = time.perf_counter
with tempfile.TemporaryDirectory() as td:
    cfg = Config(state_dir=Path(td))
    cfg.max_open_spans_per_client = 1 << 30  # ended spans wait for a tick; none runs in ingest-only
    cfg.rate_events_per_s = 1e12; cfg.rate_burst_events = 1 << 40
    svc = HintService(cfg, Store(Path(td)), registry.build() if sustained else [])
    if sustained:
        svc.tick(); svc.apply_samples()
    if tune:  # what Server.run() does before its loop
        from gpuos_hintd.server import tune_gc
        tune_gc()
    passes = []; nev = 0; sid = 0; seq = 0
    for i in range(inner + 1):
        batches, sid = make_batches(nb, sid, seq); seq += len(batches)
        floor0 = pc()
        for b in batches:
            msgpack.unpackb(b, raw=False, strict_map_key=False)
        floor = pc() - floor0
        period = 0.1; t0 = pc(); next_tick = t0 + period
        for b in batches:
            svc.ingest(b, peer, b"r")
            if sustained:
                now = pc()
                if now >= next_tick:
                    svc.request_tick(); next_tick = now + period
                svc.apply_samples()
        if sustained:
            svc.tick(); svc.flush_rows(); svc.store.flush(60.0)
        dt = pc() - t0
        if i:  # the first pass warms the caches and the client's tables
            passes.append({"s": dt, "floor_s": floor, "events": 256 * len(batches)})
        if not sustained:  # keep memory flat: drop spans that no tick would finalise here
            svc.correlator.spans.clear(); svc.correlator.n_open.clear()
    out = {
        "passes": passes,
        "counters": dict(svc.counters),
        "rejected": dict(svc.rejected),
        "compiled": getattr(svc, "compiled_checker", False),
        "gc_threshold": gc.get_threshold(),
        "events_sent": (inner + 1) * 256 * nb,
    }
    if sustained:
        out["store_written"] = svc.store.health()["written"]
    svc.worker.close(); svc.store.close()
print(json.dumps(out))
"""


def run_child(src: Path, env_extra: dict[str, str], nb: int, inner: int, sustained: bool, gc: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_")}
    env["PYTHONPATH"] = f"{src / 'client'}:{src / 'daemon'}"
    env.update(env_extra)
    cmd = [sys.executable, "-c", CHILD, str(nb), str(inner), "1" if sustained else "0", "1" if gc else "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode:
        raise RuntimeError(f"child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sharding(summary: dict) -> dict:
    """Option (c), sharding clients over worker processes: reasoned from the figures above, not run.

    N workers each running this path would scale at best N-fold in cores used, so it does
    nothing for the one-core target; and it splits what must be global (per-uid quotas, the
    one SQLite writer, the sampler ticks every shard needs).
    """
    best = max(
        (v for k, v in summary.items() if k.endswith(": ingest") and not k.startswith("base")),
        key=lambda v: v["events_per_s_median"],
    )
    per_core = best["events_per_s_median"]
    return {
        "measured": False,
        "basis": "events_per_s_median of the best ingest option, times workers (upper bound)",
        "upper_bound_events_per_s": {str(n): per_core * n for n in (1, 2, 4)},
        "cores_used": {str(n): n for n in (1, 2, 4)},
        "why_not_chosen": (
            "the target is per core; N workers use N cores (this machine has 2, shared); per-uid "
            "quotas, the single SQLite writer and the sampling ticks would have to be shared "
            "between processes, and the span path after ingest is the larger cost"
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=400, help="batches of 256 events per pass")
    ap.add_argument("--inner", type=int, default=3, help="timed passes per child (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of children, options interleaved")
    ap.add_argument("--base", type=Path, help="a second source tree to measure the same way")
    ap.add_argument("--sustained", action="store_true", help="also with samplers ticking and the store")
    ap.add_argument("--out", type=Path, default=RESULTS / "ingest_path.json")
    args = ap.parse_args()
    options: dict[str, tuple[Path, dict[str, str], bool, bool]] = {}
    pure, compiled = {"GPUOS_HINTD_PURE": "1"}, {}
    for mode in ["ingest", "sustained"] if args.sustained else ["ingest"]:
        sus = mode == "sustained"
        if args.base:
            options[f"base: {mode}"] = (args.base, {}, sus, False)
        options[f"pure python: {mode}"] = (REPO, pure, sus, False)
        options[f"pure python + gc tuning: {mode}"] = (REPO, pure, sus, True)
        options[f"compiled checker: {mode}"] = (REPO, compiled, sus, False)
        options[f"compiled checker + gc tuning: {mode}"] = (REPO, compiled, sus, True)
    runs: dict[str, list[dict]] = {k: [] for k in options}
    for r in range(args.repeats):
        for name, (src, env, sus, gc) in options.items():
            res = run_child(src, env, args.batches, args.inner, sus, gc)
            runs[name].append(res)
            best = min(p["s"] / p["events"] for p in res["passes"]) * 1e6
            print(f"round {r + 1} {name:44s} {best:.3f} us/event  compiled={res['compiled']}", flush=True)
    summary = {}
    for name, rs in runs.items():
        us = [p["s"] / p["events"] * 1e6 for r in rs for p in r["passes"]]
        floor = [p["floor_s"] / p["events"] * 1e6 for r in rs for p in r["passes"]]
        # Time / msgpack-decode time of the same batches in the same pass: steadier than
        # us/event on a shared machine whose speed drifts between children.
        x_floor = [p["s"] / p["floor_s"] for r in rs for p in r["passes"]]
        last = rs[-1]
        accepted = last["counters"].get("events", 0)
        summary[name] = {
            "events_per_s_median": round(1e6 / statistics.median(us)),
            "events_per_s_best": round(1e6 / min(us)),
            "us_per_event_median": round(statistics.median(us), 3),
            "us_per_event_min": round(min(us), 3),
            "us_per_event_max": round(max(us), 3),
            "msgpack_floor_us_per_event_median": round(statistics.median(floor), 3),
            "x_floor_median": round(statistics.median(x_floor), 2),
            "x_floor_min": round(min(x_floor), 2),
            "x_floor_max": round(max(x_floor), 2),
            "us_per_event_all": [round(u, 3) for u in us],
            "timed_passes": len(us),
            "children": len(rs),
            "compiled_module": last["compiled"],
            "source": "base tree (--base)" if name.startswith("base") else "this tree",
            "rejected": last["rejected"],
            "events_accepted_last_child": accepted,
            "every_event_accepted": accepted == last["events_sent"] and not last["rejected"],
            "gc_threshold": last["gc_threshold"],
            "store_written_last_child": last.get("store_written"),
        }
        print(
            f"{name:28s} median {summary[name]['events_per_s_median']:>9,} ev/s  "
            f"({summary[name]['us_per_event_median']} us, {min(us):.3f}..{max(us):.3f})"
        )
    result = {
        "bench": "ingest_path",
        "command": " ".join(["python", "benchmarks/bench_ingest_path.py", *sys.argv[1:]]),
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "uname": os.uname().release},
        "events_per_pass": 256 * args.batches,
        "options": summary,
        "sharding": _sharding(summary),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
