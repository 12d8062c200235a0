"""What one thread wake-up costs in CPU on this host: the floor under a prompt, per-hint send.

A sparse hint is sent at once, which wakes the client's sender thread and libzmq's I/O thread.
This measures, in the calling thread's own CPU clock, a `time.sleep(0.002)` (a sleep and its
wake-up) and a ZeroMQ DEALER send after such a sleep, against the same send in a tight loop.

    python benchmarks/wake_cost.py [--n 300] [--out benchmarks/results/wake_cost.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from _harness import RESULTS, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", default=str(RESULTS / "wake_cost.json"))
    args = ap.parse_args()
    import zmq

    cpu = time.thread_time_ns
    sleeps = []
    for _ in range(args.n):
        t = cpu()
        time.sleep(0.002)
        sleeps.append((cpu() - t) / 1000)
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory() as d:
        r = ctx.socket(zmq.ROUTER)
        r.bind(f"ipc://{d}/s")
        s = ctx.socket(zmq.DEALER)
        s.connect(f"ipc://{d}/s")
        time.sleep(0.2)
        data = b"x" * 200
        after_sleep, tight = [], []
        for _ in range(args.n):
            time.sleep(0.002)
            t = cpu()
            s.send(data, zmq.NOBLOCK)
            after_sleep.append((cpu() - t) / 1000)
            while r.poll(0):
                r.recv_multipart()
        for _ in range(args.n):
            t = cpu()
            s.send(data, zmq.NOBLOCK)
            tight.append((cpu() - t) / 1000)
            while r.poll(0):
                r.recv_multipart()
        s.close(0)
        r.close(0)
    ctx.term()
    summary = {
        "sleep_2ms_cpu_us_median": round(statistics.median(sleeps), 2),
        "send_after_sleep_cpu_us_median": round(statistics.median(after_sleep), 2),
        "send_tight_cpu_us_median": round(statistics.median(tight), 2),
        "loadavg": os.getloadavg(),
    }
    print(summary)
    write_result(args.out, "wake_cost", parameters=vars(args), summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
