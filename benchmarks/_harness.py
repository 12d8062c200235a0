"""What every benchmark shares: a real daemon on a private socket, host facts, the results file.

Benchmarks run as scripts (`python benchmarks/bench_x.py`), so this module is imported as
`_harness` from the benchmarks folder.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def daemon_env(tmp: Path, base: dict[str, str] | None = None, config_text: str | None = None) -> dict[str, str]:
    """An environment pointing clients, the daemon and hintctl at a private socket and store in tmp."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("GPUOS_HINT_")}
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        GPUOS_HINT_ENDPOINT=f"ipc://{tmp}/hint.sock",
        GPUOS_HINT_CONTROL=f"ipc://{tmp}/control.sock",
        GPUOS_HINT_STATE_DIR=str(tmp / "state"),
    )
    if config_text is not None:
        conf = tmp / "hintd.toml"
        conf.write_text(config_text)
        env["GPUOS_HINT_CONFIG"] = str(conf)
    return env


def start_daemon(
    env: dict[str, str],
    args: Sequence[str] = ("--log-level", "warning"),
    log: Path | None = None,
    timeout_s: float = 15.0,
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `gpuos-hintd` with env (see daemon_env) and wait until it answers a ping.

    cpus: pin the daemon to these CPUs before exec, so every thread it starts inherits them."""
    from gpuos_hintd.control import request

    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the daemon
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuos_hintd.main", *args], env=env, stdout=out, stderr=out, preexec_fn=pin
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            request(env["GPUOS_HINT_CONTROL"], "ping", timeout_s=0.2)
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    detail = log.read_text()[-4000:] if log and log.exists() else ""
    raise SystemExit(f"daemon did not start\n{detail}")


def host_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_write": load_average(),
    }


def write_result(out: str | Path, benchmark: str, **fields: Any) -> Path:
    """Write benchmarks/results/<name>.json: name, time, host, then the benchmark's own fields."""
    doc = {"benchmark": benchmark, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": host_info()}
    doc.update(fields)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return path


# ---------------------------------------------------------------- client benchmarks (issue 7)
# What the client benchmarks (bench_gil_loop, bench_client, bench_client_cpu, gpu/bench_generate_overhead)
# share: the client under test, the machine's load, CPU-bound competitors, and the delivery check.
# They use only the client's public API (phase, flush, stats), so they measure whatever client is
# installed; the few places that read stats() go through client_counts(), in one place.

#: Daemon settings for client benchmarks: admission limits far above what one client sends here, so
#: the benchmark measures the client, never the daemon's rate limiter or its open-span limit.
CLIENT_BENCH_DAEMON_CONFIG = (
    "rate_events_per_s = 100000000.0\nrate_burst_events = 1000000000.0\nmax_open_spans_per_client = 1048576\n"
    # The hot-path benchmark makes spans faster than this daemon stores them (issue 10); a store
    # queue this deep lets it catch up afterwards instead of shedding (which it counts).
    "store_queue_rows = 8000000\n"
)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: this machine is shared, so every result records them."""
    return [round(x, 2) for x in os.getloadavg()]


def client_under_test() -> dict[str, Any]:
    """Which client the children import: its file, the git commit of client/ and whether it is dirty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env["GPUOS_HINT_DISABLE"] = "1"
    probe = subprocess.run(
        [sys.executable, "-c", "import gpuos_client as h; print(h.__file__); print(getattr(h, '__version__', '?'))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    lines = probe.stdout.split()
    info: dict[str, Any] = {"file": lines[0] if lines else None, "version": lines[1] if len(lines) > 1 else None}

    # the checkout the imported client lives in (PYTHONPATH may point at another tree than this one)
    where = Path(info["file"]).parent if info["file"] else REPO

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    info["git_commit_client"] = git("log", "-1", "--format=%H", "--", ".")
    info["git_head"] = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", ".")
    info["client_dirty"] = bool(dirty) if dirty is not None else None
    return info


def client_counts(stats: dict[str, Any]) -> dict[str, int | None]:
    """Drops, events handed over, and (where the client reports them) undelivered and rejected
    events, from a client's stats(), whatever its exact shape.

    dropped: the `dropped` total when it is a number, else the sum of `dropped_by_reason` (or of a
    `dropped` dict).  sent: the events handed to ZeroMQ (`handed` in a client that separates handed
    from delivered, `sent` in the older one).  undelivered / rejected: None when the client has no
    such counter (the pre-rewrite client knows nothing of acknowledgements).
    """

    def num(v: Any) -> int | None:
        if isinstance(v, dict):
            return sum(int(x) for x in v.values() if isinstance(x, int | float))
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    dropped = num(stats.get("dropped"))
    if dropped is None:
        dropped = num(stats.get("dropped_by_reason") or {}) or 0
    sent = stats.get("handed", stats.get("sent"))
    if isinstance(sent, dict):
        sent = sent.get("events")
    return {
        "dropped": dropped,
        "sent": num(sent),
        "undelivered": num(stats.get("undelivered")),
        "rejected": num(stats.get("rejected")),
    }


def counts_settled(stats: dict[str, Any], daemon_events: int | None) -> bool:
    """The daemon has accepted everything the client handed over, and the client agrees."""
    c = client_counts(stats)
    if daemon_events is None:
        return False
    if c["sent"] is not None and daemon_events != c["sent"]:
        return False
    return not c["undelivered"]


BUSY_LOOP = "import os, signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\nwhile True:\n    pass\n"


class Competitors:
    """CPU-bound busy loops in other processes (one per core minus one, at least one), for the
    "a CPU-bound process competes for the cores" condition.  A context manager; records what ran."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n if n is not None else max(1, (os.cpu_count() or 2) - 1)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Competitors:
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP]))
        time.sleep(0.2)  # let them reach their loop
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []

    def describe(self) -> dict[str, Any]:
        return {"processes": self.n, "what": "python busy loop `while True: pass`, same nice as the benchmark"}


class Daemon:
    """A real gpuos-hintd on a private socket and store, with the client-benchmark config; asks it
    what it received from one client (status while the client lives, the store after it exits)."""

    def __init__(self, tmp: Path, config_text: str = CLIENT_BENCH_DAEMON_CONFIG) -> None:
        self.env = daemon_env(tmp, config_text=config_text)
        self.control = self.env["GPUOS_HINT_CONTROL"]
        self.state_dir = Path(self.env["GPUOS_HINT_STATE_DIR"])
        self.log = tmp / "hintd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        self.proc = start_daemon(self.env, ("--log-level", "warning"), log=self.log, timeout_s=60.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def request(self, op: str, **args: Any) -> Any:
        from gpuos_hintd.control import request

        return request(self.control, op, timeout_s=10.0, **args)

    def client_events(self, pid: int) -> int | None:
        """Events the daemon accepted from pid (live or exited), or None if it never saw pid."""
        st = self.request("status")
        for c in st["clients"]:
            if c["pid"] == pid:
                return int(c["events"])
        for e in st["exited"]:
            if e["pid"] == pid:
                return int(e["events"])
        return None

    def spans(
        self, pid: int, name: str | None = None, timeout_s: float = 10.0, wait_exit: bool = True
    ) -> dict[str, int]:
        """Spans of pid in the daemon's store, by status, after the daemon wrote them.

        With wait_exit, waits (bounded) until the process is reaped, so its spans are final; without,
        counts what the daemon has finalised and written so far (a live process: its closed spans)."""
        import sqlite3

        deadline = time.monotonic() + timeout_s
        while True:
            self.request("sync", timeout=5.0)
            if not wait_exit:
                break
            st = self.request("status")
            gone = all(c["pid"] != pid for c in st["clients"])
            if gone or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # Then until the store has written what it holds (a backlog drains at the store's own rate).
        drain_deadline = time.monotonic() + 300.0
        while time.monotonic() < drain_deadline:
            store = self.request("status").get("store") or {}
            if not store.get("queued_rows") and not store.get("backlog_batches"):
                break
            time.sleep(0.5)
            self.request("sync", timeout=5.0)
        db = self.state_dir / "gpuos-hint.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            sql = "SELECT status, count(*) FROM spans WHERE pid = ?" + (" AND name = ?" if name else "")
            rows = conn.execute(sql + " GROUP BY status", (pid, name) if name else (pid,)).fetchall()
        finally:
            conn.close()
        return {str(s): int(n) for s, n in rows}

    def pid_cpu_s(self) -> float:
        """The daemon's own CPU time so far (utime+stime), from /proc."""
        assert self.proc is not None
        return proc_cpu_s(self.proc.pid)


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process in seconds, from /proc/PID/stat (clock ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delivery_check(
    daemon: Daemon, pid: int, stats: dict[str, Any], phases: int, name: str, daemon_events: int | None
) -> dict[str, Any]:
    """Did every event arrive?  0 client drops, the daemon's accepted events == what the client handed
    over (when the client reports it), and one 'ok' span per phase the child made, in the store."""
    counts = client_counts(stats)
    spans = daemon.spans(pid, name)
    problems = []
    if counts["dropped"]:
        problems.append(f"client dropped {counts['dropped']} ({stats.get('dropped_by_reason')})")
    if counts["sent"] is not None and daemon_events is not None and daemon_events != counts["sent"]:
        problems.append(f"daemon accepted {daemon_events} events, client handed over {counts['sent']}")
    if counts["undelivered"]:
        problems.append(f"client reports {counts['undelivered']} events undelivered")
    if counts["rejected"]:
        problems.append(f"client reports {counts['rejected']} events rejected by the daemon")
    if daemon_events is None:
        problems.append("the daemon never saw this client")
    if spans.get("ok", 0) != phases or sum(spans.values()) != phases:
        problems.append(f"daemon stored spans {spans} for {phases} phases")
    return {
        "client_dropped": counts["dropped"],
        "client_sent": counts["sent"],
        "client_undelivered": counts["undelivered"],
        "client_rejected": counts["rejected"],
        "daemon_events": daemon_events,
        "phases": phases,
        "daemon_spans": spans,
        "valid": not problems,
        "problems": problems,
    }


def bootstrap_ratio_ci(num: Sequence[float], den: Sequence[float], n: int = 4000, seed: int = 7) -> tuple[float, float]:
    """95% bootstrap CI of median(num)/median(den), resampling interleaved pairs together (so slow
    drift of the machine stays paired); unpaired tails are resampled on their own."""
    import random
    import statistics

    rng = random.Random(seed)
    k = min(len(num), len(den))
    pairs = list(zip(num[:k], den[:k], strict=True))
    out = []
    for _ in range(n):
        s = [pairs[rng.randrange(k)] for _ in range(k)]
        out.append(statistics.median(a for a, _ in s) / statistics.median(b for _, b in s))
    out.sort()
    return out[int(0.025 * n)], out[min(n - 1, int(0.975 * n))]


def spread(xs: Sequence[float]) -> dict[str, float]:
    """Median, IQR (25th..75th percentile), min and max of xs."""
    import statistics

    s = sorted(xs)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median": statistics.median(s), "q1": q[0], "q3": q[2], "iqr": q[2] - q[0], "min": s[0], "max": s[-1]}


#: Prepended to a client benchmark's child code: finish(result, h) prints the result, then answers
#: the parent's "stats" requests (flush, then stats()) until told to exit, so the parent can compare
#: the daemon's count with the client's while the client still lives (see run_child).
CHILD_FINISH = r"""
import json, os, sys
_json, _os, _sys = json, os, sys

def finish(res, h=None):
    res["pid"] = _os.getpid()
    if h is not None:
        h.flush(5.0)
        res["stats"] = h.stats()
    print("RESULT " + _json.dumps(res), flush=True)
    if h is None:
        return
    for line in _sys.stdin:
        if line.strip() != "stats":
            break
        h.flush(2.0)
        print("STATS " + _json.dumps(h.stats()), flush=True)
"""


def run_child(
    code: str, argv: Sequence[str], env: dict[str, str], daemon: Daemon | None = None, timeout_s: float = 600.0
) -> dict[str, Any]:
    """Run CHILD_FINISH + code in a fresh interpreter; return its result dict.

    With a daemon and a result carrying client stats, waits (bounded, 5 s) until the daemon's count
    of events accepted from the child equals what the child says it handed over, asking the child for
    fresh stats meanwhile (a heartbeat may go out in between), and adds `daemon_events`.
    Raises RuntimeError with the child's stderr if it fails.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_FINISH + code, *argv],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    res: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            break
        if time.monotonic() > deadline:
            break
    if res is not None and daemon is not None and "stats" in res:
        until = time.monotonic() + 5.0
        while True:
            seen = daemon.client_events(res["pid"])
            res["daemon_events"] = seen
            if counts_settled(res["stats"], seen) or time.monotonic() > until:
                break
            time.sleep(0.05)
            try:
                proc.stdin.write("stats\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except (BrokenPipeError, OSError):
                break
            if line.startswith("STATS "):
                res["stats"] = json.loads(line[6:])
    try:
        proc.stdin.write("exit\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        pass
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if res is None or proc.returncode != 0:
        raise RuntimeError(f"child failed (rc {proc.returncode}):\n{(err or '')[-3000:]}")
    return res


# ---------------------------------------------------------------- daemon benchmarks (issue 10)
# What bench_footprint, bench_daemon_matrix and bench_ingest share: a daemon from a chosen source
# tree whose CPU and RSS are read from /proc, phase clients at a set rate, bounded waits everywhere
# (a daemon draining a backlog on SIGTERM is timed, never an exception), and the delivery check.

TCK = os.sysconf("SC_CLK_TCK")


def source_env(src: str | Path | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with PYTHONPATH at src/daemon:src/client (the tree under test), or unchanged."""
    env = dict(base or os.environ)
    if src:
        env["PYTHONPATH"] = f"{src}/daemon:{src}/client"
    return env


def export_tree(ref: str, dest: Path) -> Path:
    """`git archive` of daemon/ and client/ at ref into dest (a "before" tree for the same run)."""
    dest.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "daemon", "client"], capture_output=True, timeout=120
    )
    if arch.returncode != 0:
        raise SystemExit(f"git archive {ref}: {arch.stderr.decode(errors='replace')[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True, timeout=120)
    return dest


def git_rev(ref: str = "HEAD") -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def proc_status_kb(pid: int, field: str) -> int | None:
    """A "Vm..." line of /proc/PID/status in kB (VmRSS, VmHWM), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def host_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat: how loaded it was meanwhile."""
    with open("/proc/stat", "rb") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


class Window:
    """CPU of some processes and of the machine over a wall-clock window, plus RSS sampled in it.

    start() / stop(); rss_mb is polled by a thread at 5 Hz for the daemon pid (peak and end)."""

    def __init__(self, daemon_pid: int, other_pids: Sequence[int] = ()) -> None:
        self.pid = daemon_pid
        self.others = list(other_pids)
        self.rss_peak_kb = 0
        self._stop = False
        self._thread: Any = None

    def _cpu(self, pid: int) -> float | None:
        try:
            return proc_cpu_s(pid)
        except OSError:
            return None

    def _poll(self) -> None:
        while not self._stop:
            kb = proc_status_kb(self.pid, "VmRSS")
            if kb:
                self.rss_peak_kb = max(self.rss_peak_kb, kb)
            time.sleep(0.2)

    def start(self) -> Window:
        import threading

        self.t0 = time.monotonic()
        self.load0 = load_average()
        self.host0 = host_cpu_jiffies()
        self.d0 = self._cpu(self.pid)
        self.o0 = [self._cpu(p) for p in self.others]
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        d1 = self._cpu(self.pid)
        o1 = [self._cpu(p) for p in self.others]
        host1 = host_cpu_jiffies()
        dt = time.monotonic() - self.t0
        self._stop = True
        self._thread.join(2)
        rss_end = proc_status_kb(self.pid, "VmRSS")
        hwm = proc_status_kb(self.pid, "VmHWM")
        others = sum(b - a for a, b in zip(self.o0, o1, strict=True) if a is not None and b is not None)
        busy, total = host1[0] - self.host0[0], host1[1] - self.host0[1]
        return {
            "window_s": round(dt, 3),
            "daemon_cpu_pct": None if self.d0 is None or d1 is None else round(100 * (d1 - self.d0) / dt, 3),
            "others_cpu_pct": round(100 * others / dt, 3),
            "daemon_rss_end_mb": None if rss_end is None else round(rss_end / 1024, 1),
            "daemon_rss_peak_mb": round(max(self.rss_peak_kb, rss_end or 0) / 1024, 1),
            "daemon_rss_hwm_mb": None if hwm is None else round(hwm / 1024, 1),
            "host_busy_pct_of_all_cores": round(100 * busy / total, 1) if total else None,
            "loadavg_start": self.load0,
            "loadavg_end": load_average(),
        }


def stop_daemon(proc: subprocess.Popen[bytes], drain_timeout_s: float = 60.0) -> dict[str, Any]:
    """SIGTERM, then wait (bounded) while it drains; SIGKILL past the bound.  Never raises."""
    if proc.poll() is not None:
        return {"rc": proc.returncode, "drain_s": 0.0, "killed": False, "already_exited": True}
    t0 = time.monotonic()
    proc.terminate()
    try:
        rc = proc.wait(drain_timeout_s)
        return {"rc": rc, "drain_s": round(time.monotonic() - t0, 3), "killed": False}
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return {"rc": proc.returncode, "drain_s": round(time.monotonic() - t0, 3), "killed": True}


def safe_request(control: str, op: str, timeout_s: float = 5.0, **args: Any) -> Any:
    """A control request that returns None instead of raising (a busy daemon may not answer in time)."""
    from gpuos_hintd.control import request

    try:
        return request(control, op, timeout_s=timeout_s, **args)
    except Exception:
        return None


def status_counter(st: dict[str, Any] | None, name: str) -> int | None:
    """A daemon status counter (status["counters"][name]), None when absent or no status."""
    if not st:
        return None
    v = (st.get("counters") or {}).get(name)
    return int(v) if isinstance(v, int | float) else None


def wait_counted(control: str, results: Sequence[dict[str, Any]], timeout_s: float) -> int | None:
    """The daemon's `events` counter once it covers every event the clients had acknowledged.

    Bounded by ``timeout_s``; returns the last count read (None if the daemon never answered),
    so a daemon that lags is reported by the delivery check instead of hanging the harness.
    """
    acked = sum(r.get("stats", {}).get("delivered") or 0 for r in results)
    events = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = status_counter(safe_request(control, "status", timeout_s=10), "events")
        if events is not None and events >= acked:
            break
        time.sleep(0.3)
    return events


def sampler_ticks(st0: dict[str, Any] | None, st1: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per available sampler: ticks and ms spent between two status replies."""
    if not st0 or not st1:
        return {}
    a = {s["name"]: s for s in st0.get("samplers", [])}
    out = {}
    for s in st1.get("samplers", []):
        if not s.get("available"):
            continue
        p = a.get(s["name"], {})
        ticks = s.get("ticks", 0) - p.get("ticks", 0)
        spent = s.get("total_ms", 0.0) - p.get("total_ms", 0.0) if "total_ms" in s else None
        out[s["name"]] = {
            "ticks": ticks,
            "ms_spent": None if spent is None else round(spent, 2),
            "ms_per_tick": round(spent / ticks, 4) if spent is not None and ticks else None,
        }
    return out


#: A hinting process: an outer phase held open for the whole run, and inside it short phases at
#: --rate Hz on a deadline schedule (a late phase does not make the next ones burst).  It waits for
#: a go-file so that all start together, optionally pins itself to a CPU, and at the end flushes and
#: prints how many phases it made and its client stats.
PHASE_CLIENT = r"""
import json, os, sys, time
rate, seconds, go = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
cpu = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
flush_s = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
if cpu is not None:
    os.sched_setaffinity(0, {cpu})
import gpuos_client as h
print("ready", flush=True)
t_wait = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < t_wait:
    time.sleep(0.005)
period = 1.0 / rate
n = late = 0
with h.phase("serve", role="bench"):
    t0 = time.monotonic(); nxt = t0; end = t0 + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        with h.phase("request"):
            pass
        n += 1
        nxt += period
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        elif d < -0.5:  # far behind: re-anchor instead of bursting to catch up
            late += 1
            nxt = time.monotonic()
    elapsed = time.monotonic() - t0
ok = h.flush(flush_s)
print("RESULT " + json.dumps({"pid": os.getpid(), "phases": n, "elapsed_s": elapsed, "late": late,
                             "flushed": ok, "stats": h.stats()}), flush=True)
os._exit(0)  # the result is out; no exit-time flush (a refused client would retry it for long)
"""


def start_phase_clients(
    n: int,
    rate_hz: float,
    seconds: float,
    env: dict[str, str],
    go: Path,
    pin: Sequence[int] | None = None,
    flush_s: float = 30.0,
) -> list[subprocess.Popen[str]]:
    """n PHASE_CLIENT processes, each ready (imported, waiting for go) when this returns.

    pin: CPUs to pin the clients to, round robin (None: not pinned); flush_s: how long each waits at
    the end for the daemon's acks of what it still has (what stays unanswered counts undelivered)."""
    kids = []
    for i in range(n):
        cpu = str(pin[i % len(pin)]) if pin else "-"
        kids.append(
            subprocess.Popen(
                [sys.executable, "-c", PHASE_CLIENT, str(rate_hz), str(seconds), str(go), cpu, str(flush_s)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for k in kids:
        assert k.stdout is not None
        line = k.stdout.readline().strip()
        if line != "ready":
            for x in kids:
                x.kill()
            err = k.stderr.read() if k.stderr else ""
            raise SystemExit(f"client failed to start: {line!r}\n{err[-2000:]}")
    return kids


def collect_clients(kids: Sequence[subprocess.Popen[str]], timeout_s: float) -> list[dict[str, Any]]:
    """Each client's RESULT (bounded: a client past the deadline is killed and reported as such)."""
    deadline = time.monotonic() + timeout_s
    out = []
    for k in kids:
        try:
            so, se = k.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            k.kill()
            so, se = k.communicate()
            out.append({"pid": k.pid, "error": "timed out", "stderr": (se or "")[-500:]})
            continue
        res = [ln for ln in (so or "").splitlines() if ln.startswith("RESULT ")]
        if not res:
            out.append({"pid": k.pid, "error": f"rc {k.returncode}", "stderr": (se or "")[-500:]})
        else:
            out.append(json.loads(res[-1][7:]))
    return out


def client_delivery(results: Sequence[dict[str, Any]], daemon_events: int | None = None) -> dict[str, Any]:
    """Every event delivered?  From each client's acknowledged counters (docs/protocol.md: delivered =
    events the daemon answered ok), and, when given, the daemon's own count of events accepted."""
    problems: list[str] = []
    handed = delivered = 0
    phases = 0
    for r in results:
        if "error" in r:
            problems.append(f"client {r['pid']}: {r['error']}")
            continue
        phases += r["phases"]
        s = r["stats"]
        c = client_counts(s)
        handed += c["sent"] or 0
        delivered += int(s.get("delivered") or 0)
        if c["dropped"]:
            problems.append(f"client {r['pid']} dropped {c['dropped']} ({s.get('dropped_by_reason')})")
        if c["undelivered"]:
            problems.append(f"client {r['pid']}: {c['undelivered']} undelivered")
        if c["rejected"]:
            problems.append(f"client {r['pid']}: {c['rejected']} rejected ({s.get('rejected_by_reason')})")
        if "delivered" not in s:
            problems.append(f"client {r['pid']} reports no delivered counter")
    if delivered != handed:
        problems.append(f"clients handed {handed} events, {delivered} acknowledged")
    if daemon_events is not None and daemon_events < delivered:
        problems.append(f"daemon counted {daemon_events} events, {delivered} acknowledged to the clients")
    return {
        "phases": phases,
        "events_handed": handed,
        "events_delivered": delivered,
        "daemon_events": daemon_events,
        "valid": not problems,
        "problems": problems[:20],
    }
