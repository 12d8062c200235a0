"""Cost of OTLP export to ingest when the backend is down (issue 14 target: 0 effect, same run).

Three real gpuos-hintd daemons run side by side, each on its own private socket:

  off      no OTLP export (the baseline)
  refused  [otlp] endpoint = a loopback port nobody listens on: every POST is refused at
           once, the exporter thread retries with backoff, the bounded queue fills and
           drops (counted)
  hung     [otlp] endpoint = a loopback socket that listens but never accepts or answers:
           every POST waits out its timeout (the worst case for a thread that blocks)

Per round, in a fresh order each round (interleaved, so drift hits all three alike):

  throughput  one raw DEALER sender (bench_ingest.py's realistic training-step batches,
              256 events each, pre-encoded) sends as fast as the daemon takes them; the
              figure is accepted events/s from the daemon's counters between the first and
              the last event, and sent == accepted is checked (0 events lost);
  latency     bench_latency.py's client: a phase entered -> visible in `status`, busy regime.

Spans are finalised, stored, and (for refused/hung) offered to the exporter inside the
measured window, so the sink's cost on the daemon thread is included.

    python benchmarks/bench_otlp.py [--rounds 5] [--batches 200] [--trials 60]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import RESULTS, daemon_env, start_daemon, write_result
from bench_ingest import SENDER, child_env, cpu_s
from bench_latency import CHILD as LATENCY_CHILD
from bench_latency import pct

MODES = ("off", "refused", "hung")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: connecting is refused


def _hung_listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)  # never accepted: connect completes (backlog), the request is never answered
    return s


def _status(ctl: str) -> dict[str, Any]:
    from gpuos_hintd.control import request

    return request(ctl, "status", timeout_s=10)  # type: ignore[no-any-return]


def _cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the daemon's main thread, of all its other threads: sampler worker, store
    writer, exporter)."""
    main = cpu_s(pid, pid)
    return main, cpu_s(pid) - main


def throughput(env: dict[str, str], nb: int, pid: int) -> dict[str, Any]:
    ctl = env["GPUOS_HINT_CONTROL"]
    with tempfile.TemporaryDirectory() as td:
        go = Path(td) / "go"
        kid = subprocess.Popen(
            [sys.executable, "-c", SENDER, env["GPUOS_HINT_ENDPOINT"], str(nb), str(go)],
            env=child_env(None),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert kid.stdout is not None
        if kid.stdout.readline().strip() != "ready":
            raise SystemExit("sender failed to start")
        c0 = _status(ctl)["counters"]
        m0, x0 = _cpu(pid)
        t0 = time.monotonic()
        go.touch()
        out, _ = kid.communicate(timeout=300)
        sent = json.loads(out.strip().splitlines()[-1])["sent"]
        deadline = time.monotonic() + 120
        while True:
            c = _status(ctl)["counters"]
            got = c.get("events", 0) - c0.get("events", 0)
            rej = c.get("rejected_total", 0) - c0.get("rejected_total", 0)
            if got + rej >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        t1 = time.monotonic()
        time.sleep(0.25)  # the spans of the last events are finalised at the next tick: count that too
        m1, x1 = _cpu(pid)
    return {
        "sent": sent,
        "accepted": got,
        "rejected": rej,
        "s": t1 - t0,
        "events_per_s": got / (t1 - t0),
        "main_thread_cpu_us_per_event": (m1 - m0) / max(got, 1) * 1e6,
        "other_threads_cpu_us_per_event": (x1 - x0) / max(got, 1) * 1e6,
    }


SPAN_TREE = 4  # a training step: the step and its forward/backward/optimizer children


def sink_cost(reps: int = 30, steps: int = 250) -> dict[str, Any]:
    """In this process: daemon-thread cost per span of finalising (the service's own span sinks, no
    store) with and without the exporter's sink, with its queue accepting and full."""
    import logging

    import structlog
    from gpuos_hintd.config import Config
    from gpuos_hintd.export.otlp import OtlpExporter
    from gpuos_hintd.model import SpanRow
    from gpuos_hintd.service import HintService

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    def rows(base: int) -> list[SpanRow]:
        out = []
        t = time.time_ns()
        for i in range(steps):
            root = base + i * SPAN_TREE + 1
            out += [
                SpanRow("b", 1, 1, root + k, root if k else 0, 1, n, f"train_step/{n}" if k else n, 2 if k else 1,
                        None, {"step": i} if not k else None, 0, 1000, t, "ok",
                        signals={"cpu_user_ns": 100, "cpu_sys_ns": 5, "rss_bytes_mean": 1e9})
                for k, n in enumerate(("train_step", "forward", "backward", "optimizer"))
            ]  # fmt: skip
        return out

    def per_span(svc: HintService) -> float:
        best = float("inf")
        for r in range(reps):
            batch = rows(r * steps * SPAN_TREE * 10)
            t0 = time.perf_counter()
            svc._on_spans(batch)
            best = min(best, (time.perf_counter() - t0) / len(batch))
        return best * 1e6

    res: dict[str, Any] = {}
    for mode in ("off", "queue_accepting", "queue_full"):
        with tempfile.TemporaryDirectory() as td:
            svc = HintService(Config(state_dir=Path(td)), None)
            ex = None
            if mode != "off":
                ex = OtlpExporter(
                    svc, f"http://127.0.0.1:{_closed_port()}", queue_spans=10**7 if mode == "queue_accepting" else 1
                )
                svc.sinks.append(ex.on_spans)  # not started: nothing drains the queue while measuring
                if mode == "queue_full":
                    ex.on_spans(rows(10**9)[:1])
            res[f"{mode}_us_per_span"] = per_span(svc)
            svc.worker.close()
    res["exporter_sink_us_per_span_accepting"] = res["queue_accepting_us_per_span"] - res["off_us_per_span"]
    res["exporter_sink_us_per_span_full"] = res["queue_full_us_per_span"] - res["off_us_per_span"]
    return res


def latency(env: dict[str, str], trials: int) -> list[float]:
    gaps = json.dumps({"busy": 0.02})
    out = subprocess.run(
        [sys.executable, "-c", LATENCY_CHILD, env["GPUOS_HINT_CONTROL"], str(trials), gaps, "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"latency client failed:\n{out.stderr[-3000:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    return [t["latency_s"] * 1e3 for t in raw["regimes"]["busy"] if t["latency_s"] is not None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=200, help="256-event batches per throughput run")
    ap.add_argument("--trials", type=int, default=60, help="latency trials per round and mode")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", default=str(RESULTS / "otlp_backend_down.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sink = sink_cost()
    print("daemon-thread cost per finalised span (us):", {k: round(v, 3) for k, v in sink.items()})
    hung = _hung_listener()
    endpoints = {
        "off": None,
        "refused": f"http://127.0.0.1:{_closed_port()}",
        "hung": f"http://127.0.0.1:{hung.getsockname()[1]}",
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    envs: dict[str, dict[str, str]] = {}
    tput: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    orders = []
    with tempfile.TemporaryDirectory() as td:
        try:
            for mode in MODES:
                conf = "max_open_spans_per_client = 1000000\n"
                if endpoints[mode]:
                    conf += f'[otlp]\nendpoint = "{endpoints[mode]}"\ntimeout_s = 2.0\n'
                env = daemon_env(Path(td) / mode, config_text=conf)
                envs[mode] = env
                procs[mode] = start_daemon(env, ("--log-level", "error"), log=Path(td) / f"{mode}.log")
            for _ in range(args.rounds):
                order = list(MODES)
                rng.shuffle(order)
                orders.append(order)
                for mode in order:
                    tput[mode].append(throughput(envs[mode], args.batches, procs[mode].pid))
                for mode in order:
                    lat[mode].extend(latency(envs[mode], args.trials))
            final = {m: _status(envs[m]["GPUOS_HINT_CONTROL"]) for m in MODES}
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(10)
            hung.close()
    results: dict[str, Any] = {}
    print(
        f"{'mode':8s} {'events/s median':>15s} {'min':>9s} {'max':>9s} {'main us/ev':>10s} {'other us/ev':>11s} "
        f"{'lat p50 ms':>10s} {'p99 ms':>7s}  otlp"
    )
    for m in MODES:
        eps = [r["events_per_s"] for r in tput[m]]
        lm = lat[m]
        otlp = final[m].get("otlp")
        cpu_main = [r["main_thread_cpu_us_per_event"] for r in tput[m]]
        results[m] = {
            "endpoint": endpoints[m],
            "main_thread_cpu_us_per_event_median": statistics.median(cpu_main),
            "main_thread_cpu_us_per_event": cpu_main,
            "other_threads_cpu_us_per_event_median": statistics.median(
                r["other_threads_cpu_us_per_event"] for r in tput[m]
            ),
            "events_per_s_median": statistics.median(eps),
            "events_per_s_min": min(eps),
            "events_per_s_max": max(eps),
            "events_per_s": eps,
            "unaccounted_events": sum(r["sent"] - r["accepted"] - r["rejected"] for r in tput[m]),
            "latency_trials": len(lm),
            "latency_p50_ms": pct(lm, 0.5),
            "latency_p90_ms": pct(lm, 0.9),
            "latency_p99_ms": pct(lm, 0.99),
            "spans_closed": final[m]["counters"].get("spans_closed", 0),
            "otlp": otlp,
        }
        r = results[m]
        brief = (
            "" if otlp is None else f"offered {otlp['offered']} exported {otlp['exported']} dropped {otlp['dropped']}"
        )
        print(
            f"{m:8s} {r['events_per_s_median']:15,.0f} {r['events_per_s_min']:9,.0f} {r['events_per_s_max']:9,.0f} "
            f"{r['main_thread_cpu_us_per_event_median']:10.2f} {r['other_threads_cpu_us_per_event_median']:11.3f} "
            f"{r['latency_p50_ms']:10.2f} {r['latency_p99_ms']:7.2f}  {brief}"
        )
    base = results["off"]
    summary = {
        m: {
            "throughput_ratio_vs_off": results[m]["events_per_s_median"] / base["events_per_s_median"],
            "main_thread_cpu_ratio_vs_off": results[m]["main_thread_cpu_us_per_event_median"]
            / base["main_thread_cpu_us_per_event_median"],
            "latency_p50_ratio_vs_off": results[m]["latency_p50_ms"] / base["latency_p50_ms"],
            "latency_p99_delta_ms": results[m]["latency_p99_ms"] - base["latency_p99_ms"],
        }
        for m in ("refused", "hung")
    }
    summary["sink_cost"] = sink
    summary["all_events_accounted"] = all(results[m]["unaccounted_events"] == 0 for m in MODES)
    summary["every_span_offered_is_counted"] = all(
        (o := results[m]["otlp"]) is None
        or o["offered"] == o["exported"] + o["dropped_total"] + o["queued"] + o["in_flight"]
        for m in MODES
    )
    print(json.dumps(summary, indent=1))
    write_result(
        args.out,
        "bench_otlp.py",
        parameters={"rounds": args.rounds, "batches": args.batches, "trials": args.trials, "orders": orders},
        results=results,
        summary=summary,
        command="python benchmarks/bench_otlp.py " + " ".join(sys.argv[1:]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
