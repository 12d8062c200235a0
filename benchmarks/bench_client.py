"""Client hot path with every event delivered: what one `with phase(...)` costs (issue 7, item 6b).

Forms measured, interleaved in chunks of --chunk enter+exit pairs inside one child process, so the
baselines run in the same process, at the same moment, as the phase forms:

  reused       p = phase("reused") once, then `with p:`
  idiomatic    `with phase("idiomatic"):` - a new object per pair, as programs write it
  attrs2       `with phase("attrs2", batch=8, kind="decode"):`
  nvtx         `with nvtx.annotate("nvtx"):` (new object per pair; delivers nothing without a tool)
  nvtx_reused  one nvtx.annotate object, re-entered
  nullcontext  one contextlib.nullcontext(), re-entered: the floor of a with-block

and, in a twin child with GPUOS_HINT_DISABLE=1: disabled_reused, disabled_idiomatic (plus
nullcontext and nvtx again, so they too have a same-process floor).

Pacing: after every chunk (outside the timed region) the child calls flush() and then waits until
the daemon has accepted everything it handed over (polling the daemon's status on the control
socket), so the client's buffer never overflows and the daemon is not still ingesting the last
chunk while the next one is timed (span finalisation at the daemon's 10 Hz tick may still overlap).
The sender thread runs during the timed chunks and competes for the GIL, as in a real program.
At the end the parent checks that stats() shows 0 drops, that the daemon accepted exactly what the
client handed over, and that the store holds one 'ok' span per phase; any shortfall fails the run
loudly (exit 1, `all_delivered: false`).

The nvtx package is installed into a temporary folder for this run only if it is not importable
(skipped, with the reason printed and recorded, if that fails or with --no-install-nvtx).

    python benchmarks/bench_client.py [--pairs 100000] [--chunk 1000] [--procs 2] [--quick]
        [--out benchmarks/results/client_hot_path.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    RESULTS,
    Daemon,
    client_under_test,
    delivery_check,
    load_average,
    run_child,
    spread,
    write_result,
)

CHILD = r"""
import contextlib, time
mode, pairs, chunk, control = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pc = time.perf_counter_ns
import gpuos_client as h
from gpuos_client import phase

try:
    import nvtx
    nvtx_error = None
except Exception as exc:
    nvtx, nvtx_error = None, f"{type(exc).__name__}: {exc}"

def timed(body):
    t0 = pc(); body(chunk); return (pc() - t0) / chunk

null = contextlib.nullcontext()
def v_null(n):
    for _ in range(n):
        with null:
            pass
def make_reused(name):
    p = phase(name)
    def v(n):
        for _ in range(n):
            with p:
                pass
    return v
def make_idiomatic(name):
    def v(n):
        for _ in range(n):
            with phase(name):
                pass
    return v
def v_attrs(n):
    for _ in range(n):
        with phase("attrs2", batch=8, kind="decode"):
            pass
variants = {"nullcontext": v_null}
phase_variants = {}
if mode == "enabled":
    phase_variants = {"reused": make_reused("reused"), "idiomatic": make_idiomatic("idiomatic"), "attrs2": v_attrs}
else:
    phase_variants = {"disabled_reused": make_reused("dreused"), "disabled_idiomatic": make_idiomatic("didiomatic")}
variants.update(phase_variants)
if nvtx is not None:
    def v_nvtx(n):
        for _ in range(n):
            with nvtx.annotate("nvtx"):
                pass
    nv = nvtx.annotate("nvtx_reused")
    def v_nvtx_reused(n):
        for _ in range(n):
            with nv:
                pass
    variants["nvtx"] = v_nvtx
    variants["nvtx_reused"] = v_nvtx_reused

req = None
if mode == "enabled":
    import msgpack, zmq
    req = zmq.Context.instance().socket(zmq.REQ); req.setsockopt(zmq.LINGER, 0); req.connect(control)
    STATUS = msgpack.packb({"op": "status"})
def settle():
    # pacing, outside the timed region: hand everything to ZeroMQ, then wait for the daemon to accept it
    h.flush(10.0)
    if req is None:
        return 0.0
    t0 = time.perf_counter()
    st0 = h.stats()
    sent = st0.get("handed", st0.get("sent"))  # the rewritten client says handed
    # Nothing handed yet (the warm-up's first form is nullcontext): the daemon has no entry for
    # this process and nothing to wait for; waiting for one cost every run its full 60 s.
    while isinstance(sent, int) and sent > 0 and time.perf_counter() - t0 < 60.0:
        req.send(STATUS)
        # Outside the timed region.  Under this flood (~1M spans a minute) the daemon's loop can be
        # busy finalising for seconds at a time (issue 10), so the wait is generous.
        if not req.poll(60000):
            raise SystemExit("daemon did not answer status")
        st = msgpack.unpackb(req.recv(), raw=False, strict_map_key=False)["result"]
        mine = [c["events"] for c in st["clients"] if c["pid"] == os.getpid()]
        if mine and mine[0] >= sent:
            break
        time.sleep(0.001)
    return time.perf_counter() - t0

phases = 0
names = list(variants)
for _ in range(3):  # warm up every form (and the sender)
    for name in names:
        variants[name](chunk)
        phases += chunk if name in phase_variants else 0
        settle()
per = {name: [] for name in names}
settle_s = []
for r in range(max(1, pairs // chunk)):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
        per[name].append(timed(variants[name]))
        phases += chunk if name in phase_variants else 0
        settle_s.append(settle())
finish({"mode": mode, "chunk": chunk, "ns_per_pair": per, "phases": phases, "nvtx_error": nvtx_error,
        "settle_s_median": sorted(settle_s)[len(settle_s) // 2]}, h if mode == "enabled" else None)
"""


def nvtx_path(tmp: Path, env: dict[str, str], install: bool) -> tuple[str | None, str | None]:
    """(extra PYTHONPATH entry or None, reason nvtx is unavailable or None)."""
    probe = subprocess.run([sys.executable, "-c", "import nvtx"], env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        return None, None
    if not install:
        return None, "nvtx not importable and --no-install-nvtx given"
    target = tmp / "nvtx-site"
    print("nvtx not importable: pip install --target (this run only) ...", flush=True)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--retries",
                "1",
                "--timeout",
                "10",
                "--target",
                str(target),
                "nvtx",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return None, "pip install nvtx timed out"
    if out.returncode != 0:
        return None, f"pip install nvtx failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    env2 = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH", "")]))}
    probe = subprocess.run([sys.executable, "-c", "import nvtx"], env=env2, capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"nvtx installed but not importable: {probe.stderr.strip().splitlines()[-1:]}"
    return str(target), None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100_000, help="timed enter+exit pairs per form per process")
    ap.add_argument("--chunk", type=int, default=1000, help="pairs per timed chunk (then flush + settle)")
    ap.add_argument("--procs", type=int, default=2, help="enabled/disabled child pairs, run alternately")
    ap.add_argument("--no-install-nvtx", action="store_true", help="do not pip-install nvtx when absent")
    ap.add_argument("--quick", action="store_true", help="5,000 pairs, 1 process pair: a smoke test, not a figure")
    ap.add_argument("--target-ns", type=float, default=600.0, help="issue 7 target for the idiomatic form")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(RESULTS / "client_hot_path.json"))
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.procs = min(args.pairs, 5000), 1
    started = time.monotonic()
    client = client_under_test()
    load_before = load_average()
    children: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as td, Daemon(Path(td)) as daemon:
        extra, nvtx_reason = nvtx_path(Path(td), daemon.env, not args.no_install_nvtx)
        if nvtx_reason:
            print(f"nvtx skipped: {nvtx_reason}")
        env = dict(daemon.env)
        if extra:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, env.get("PYTHONPATH", "")]))
        daemon_cpu0 = daemon.pid_cpu_s()
        for i in range(args.procs):
            for mode in ("enabled", "disabled"):
                cenv = {**env, "GPUOS_HINT_DISABLE": "1"} if mode == "disabled" else env
                argv = [mode, str(args.pairs), str(args.chunk), daemon.control]
                print(f"child {i + 1}/{args.procs} {mode:8s} ...", end=" ", flush=True)
                res = run_child(CHILD, argv, cenv, daemon if mode == "enabled" else None)
                if mode == "enabled":
                    res["delivery"] = delivery_check(
                        daemon, res["pid"], res["stats"], res["phases"], None, res["daemon_events"]
                    )
                    if not res["delivery"]["valid"]:
                        failures.append(f"pid {res['pid']}: {res['delivery']['problems']}")
                print("done" if res.get("delivery", {}).get("valid", True) else "NOT ALL DELIVERED")
                children.append(res)
        daemon_cpu = daemon.pid_cpu_s() - daemon_cpu0
    forms: dict[str, dict[str, Any]] = {}
    for mode in ("enabled", "disabled"):
        pooled: dict[str, list[float]] = {}
        for c in children:
            if c["mode"] == mode:
                for name, xs in c["ns_per_pair"].items():
                    pooled.setdefault(name, []).extend(xs)
        for name, xs in pooled.items():
            key = name if mode == "enabled" or name.startswith("disabled") else f"{name}@disabled_child"
            forms[key] = {
                "ns_per_pair": {k: round(v, 1) for k, v in spread(xs).items()},
                "p90_ns": round(sorted(xs)[int(0.9 * (len(xs) - 1))], 1),
                "chunks": len(xs),
                "child": mode,
            }
    print(f"\n{'form':28s} {'median ns':>10s} {'IQR':>8s} {'min':>8s} {'x null':>7s} {'x nvtx':>7s}")
    for key, f in forms.items():
        floor = forms["nullcontext" if f["child"] == "enabled" else "nullcontext@disabled_child"]
        nv = forms.get("nvtx" if f["child"] == "enabled" else "nvtx@disabled_child")
        med = f["ns_per_pair"]["median"]
        f["x_nullcontext"] = round(med / floor["ns_per_pair"]["median"], 2)
        f["x_nvtx"] = round(med / nv["ns_per_pair"]["median"], 2) if nv else None
        print(
            f"{key:28s} {med:10.1f} {f['ns_per_pair']['iqr']:8.1f} {f['ns_per_pair']['min']:8.1f} "
            f"{f['x_nullcontext']:7.2f} {f['x_nvtx'] if f['x_nvtx'] is not None else '-':>7}"
        )
    delivered = [c["delivery"] for c in children if "delivery" in c]
    summary: dict[str, Any] = {
        "all_delivered": all(d["valid"] for d in delivered),
        "client_dropped_total": sum(d["client_dropped"] or 0 for d in delivered),
        "idiomatic_ns": forms.get("idiomatic", {}).get("ns_per_pair", {}).get("median"),
        "target_ns": args.target_ns,
        "nvtx_skipped": nvtx_reason,
    }
    if summary["idiomatic_ns"] is not None:
        summary["meets_target"] = summary["idiomatic_ns"] <= args.target_ns
        summary["idiomatic_x_nvtx"] = forms["idiomatic"]["x_nvtx"]
    for c in children:
        c.pop("ns_per_pair")  # pooled into forms above; the raw chunks would be ~1 MB of JSON
    write_result(
        args.out,
        "client_hot_path",
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        client=client,
        loadavg_before=load_before,
        loadavg_end=load_average(),
        daemon_cpu_s=round(daemon_cpu, 2),
        run_time_s=round(time.monotonic() - started, 1),
        results={"forms": forms, "children": children},
        summary=summary,
    )
    if failures:
        print("FAILED: not every event was delivered:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
