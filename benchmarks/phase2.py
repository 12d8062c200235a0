"""Phase 2 - mechanism isolation, with and without hints, on the CPU here or on a GPU.

Each knob is varied on its own (gpuos_workloads.sweeps.PHASE2_KNOBS): submission cadence (gap between
launches), sync frequency (sync every k launches), execution ordering (two streams interleaved vs
grouped) and kernel size (the control: more work per launch, same launch/sync pattern).  The levels
run in randomised blocks: each repeat is one block with every level of every knob once, in a
shuffled order, so the repeat is also a block in time (eta2_repeat = drift).  Each level is held for
--hold-s seconds (>= 20 sample windows at --hz).

Both conditions are sampled the same way: this harness samples the workload's process at --hz with
every sampler the daemon can run on this host (gpuos_hintd.samplers.registry, process scope) - so
hints on/off is the only difference.  With hints a real gpuos-hintd runs (sampling at the same
rate) and the check is that it stored one span per held level and the client dropped nothing.

    nice -n 19 .venv/bin/python benchmarks/phase2.py                 # CPU, 5 repeats, 10 Hz (~8 min)
    python benchmarks/phase2.py --device gpu --out $OUT              # on a GPU host (see benchmarks/gpu/)
    python benchmarks/phase2.py --tiny --out /tmp/p2                 # seconds: a smoke test

Writes OUT/phase2.json (analysis), OUT/phase2_raw.json.gz (samples + levels: the analysis is
rebuilt from it by ``gpuos-hintctl evaluate --phase2 OUT/phase2_raw.json.gz``), OUT/phase2.md, OUT/phase2.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import REPO, daemon_env, host_info, start_daemon  # noqa: E402
from gpuos_hintd import procfs  # noqa: E402
from gpuos_hintd.evaluate import phase2  # noqa: E402
from gpuos_hintd.model import ProcKey, Target  # noqa: E402
from gpuos_hintd.samplers import registry  # noqa: E402
from gpuos_hintd.samplers.base import NullSampler  # noqa: E402
from gpuos_workloads.sweeps import PHASE2_BASE, PHASE2_KNOBS  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "phase2_cpu"


def knob_levels(knobs: list[str], sizes: str | None) -> dict[str, list[Any]]:
    """The levels of each knob, in knob order (sizes overridable: a GPU needs larger kernels)."""
    out = {k: list(PHASE2_KNOBS[k][1]) for k in knobs}
    if sizes and "size" in out:
        out["size"] = [int(x) for x in sizes.split(",")]
    return out


def schedule(levels: dict[str, list[Any]], repeats: int, seed: int) -> list[dict[str, Any]]:
    """Randomised blocks: each repeat holds every level of every knob once, in a shuffled order."""
    rng = random.Random(seed)
    out = []
    for rep in range(repeats):
        block = [{"knob": k, "level": lv, "repeat": rep} for k, lvs in levels.items() for lv in lvs]
        rng.shuffle(block)
        out += block
    return out


def samplers(ebpf: bool) -> tuple[list[Any], dict[str, str]]:
    """Every sampler the daemon would run here (eBPF only if asked), and why the others are not."""
    got, why = [], {}
    for s in registry.build(enabled=("syscalls_ebpf",) if ebpf else ()):
        ok, reason = (False, s.reason) if isinstance(s, NullSampler) else s.available()
        if ok:
            got.append(s)
        else:
            why[s.name] = reason
    return got, why


def sample_process(proc: subprocess.Popen[bytes], hz: float, active: list[Any]) -> list[list[Any]]:
    """Process-scope values of proc at hz until it exits: [[t_ns, {metric: value}], ...]."""
    rows: list[list[Any]] = []
    key = None
    period = 1.0 / hz
    nxt = time.monotonic()
    while proc.poll() is None:
        try:
            if key is None:
                key = ProcKey(proc.pid, int(procfs.read_stat(procfs.PROCFS, proc.pid)["starttime"]))
            now = time.monotonic_ns()
            values: dict[str, Any] = {}
            for s in active:  # every tick, also those the daemon throttles (interval_s)
                got = s.sample([Target(key)], now).get(key)
                if got is not None:
                    values.update(got.values)
            if values:
                rows.append([now, values])
        except Exception:  # starting or gone
            pass
        nxt += period
        time.sleep(max(nxt - time.monotonic(), 0))
    return rows


def run_condition(
    hints: bool, sched: list[dict[str, Any]], ns: argparse.Namespace, active: list[Any], tmp: Path
) -> dict[str, Any]:
    """One workload process holding every level of sched; sampled by this harness; daemon iff hints."""
    sched_file = tmp / f"schedule-{int(hints)}.json"
    sched_file.write_text(json.dumps(sched))
    out_file = tmp / f"levels-{int(hints)}.json"
    env = daemon_env(tmp / f"run-{int(hints)}")
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / d) for d in ("client", "daemon", "workloads")] + [env.get("PYTHONPATH", "")]
    )
    daemon = None
    if hints:
        args = ("--sample-hz", str(ns.hz), "--store-samples-hz", "0", "--log-level", "warning")
        daemon = start_daemon(env, args, log=tmp / f"daemon-{int(hints)}.log")
    argv = [sys.executable, "-m", "gpuos_workloads.sweeps", "--sweep", "phase2", "--schedule", str(sched_file)]
    argv += ["--hold-s", str(ns.hold_s), "--device", ns.device, "--json", str(out_file), "--quiet"]
    argv += ["--base-n", str(ns.base_n)] if ns.base_n else []
    argv += [] if hints else ["--no-hints"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    rows = sample_process(proc, ns.hz, active)
    if proc.wait() != 0:
        raise SystemExit(f"workload failed (hints={hints}), rc {proc.returncode}")
    result = json.loads(out_file.read_text())
    cond: dict[str, Any] = {
        "hints": hints,
        "seconds": round(time.monotonic() - t0, 1),
        "samples": rows,
        "levels": result["levels"],
        "knobs": {k: [str(x) for x in v] for k, v in ns.levels.items()},
        "base_n": ns.base_n or PHASE2_BASE["n"],
        "client": result.get("client"),
    }
    if daemon is not None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        db = Path(env["GPUOS_HINT_STATE_DIR"]) / "gpuos-hint.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        cond["daemon_spans_phase2"] = conn.execute("SELECT COUNT(*) FROM spans WHERE name='phase2'").fetchone()[0]
        cond["daemon_process_samples"] = conn.execute("SELECT COUNT(*) FROM samples WHERE tid=0").fetchone()[0]
        conn.close()
    return cond


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument(
        "--hz", type=float, default=10.0, help="sampling rate, harness and daemon (default 10, the daemon's)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hold-s", type=float, default=2.4, help="seconds per level (default 2.4: >= 20 windows at 10 Hz)")
    ap.add_argument("--knobs", default="cadence,sync,ordering,size")
    ap.add_argument("--conditions", default="hints,no hints", help="comma list of 'hints' and 'no hints'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-n", type=int, help=f"matrix size held while other knobs vary (default {PHASE2_BASE['n']})")
    ap.add_argument("--sizes", help="levels of the size knob, e.g. 512,1024,2048 (default 64,128,256)")
    ap.add_argument("--ebpf", action="store_true", help="also run the eBPF syscall sampler (root + bpftrace)")
    ap.add_argument("--n-perm", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true", help="2 repeats, 0.6 s holds, 2 knobs at 20 Hz (a smoke test)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(DEFAULT_OUT))
    ns = ap.parse_args()
    if ns.tiny:
        ns.repeats, ns.hold_s, ns.hz, ns.n_perm = 2, 0.6, 20.0, 200
        ns.knobs = "sync,size"
    ns.knobs = [k for k in ns.knobs.split(",") if k]
    ns.levels = knob_levels(ns.knobs, ns.sizes)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    active, missing = samplers(ns.ebpf)
    print(f"samplers: {[s.name for s in active]}; not running: {missing}", flush=True)
    t_start = time.monotonic()
    raw: dict[str, Any] = {
        "experiment": "benchmarks/phase2.py",
        "argv": sys.argv[1:],
        "device": ns.device,
        "hz": ns.hz,
        "hold_s": ns.hold_s,
        "repeats": ns.repeats,
        "seed": ns.seed,
        "host": host_info(),
        "samplers": [s.name for s in active],
        "samplers_not_running": missing,
        "conditions": {},
    }
    conds = [c.strip() for c in ns.conditions.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="gpuos-phase2-") as tmpdir:
        for i, c in enumerate(conds):
            sched = schedule(ns.levels, ns.repeats, ns.seed + i)
            print(f"{c}: {len(sched)} levels x {ns.hold_s} s", flush=True)
            raw["conditions"][c] = run_condition(c == "hints", sched, ns, active, Path(tmpdir))
    raw["elapsed_s"] = round(time.monotonic() - t_start, 1)
    with gzip.open(out / "phase2_raw.json.gz", "wt") as f:
        json.dump(raw, f)
    results = phase2.analyse_raw(raw, ns.n_perm)
    checks = {
        c: {
            "levels": len(v["levels"]),
            "daemon_spans_phase2": v.get("daemon_spans_phase2"),
            "client_dropped": (v.get("client") or {}).get("dropped"),
        }
        for c, v in raw["conditions"].items()
    }
    doc = {k: v for k, v in raw.items() if k != "conditions"}
    doc.update(checks=checks, results=results, rule=phase2.stats.CLASS_RULE)
    (out / "phase2.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    md = [f"# Phase 2 on {ns.device} at {ns.hz:g} Hz ({ns.repeats} repeats, {ns.hold_s} s per level)", ""]
    md += [phase2.class_table(results), ""]
    for c, r in results.items():
        md += [f"## {c}", "", phase2.level_table(r)]
    (out / "phase2.md").write_text("\n".join(md) + "\n")
    plotted = phase2.plot(results, str(out / "phase2.png"))
    print(phase2.class_table(results))
    print(f"checks: {checks}; plot: {plotted}; elapsed {raw['elapsed_s']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
