"""`gpuos-hintctl top`: a live terminal view of the daemon (like htop / nvitop).

Plain ANSI, no curses: the alternate screen, one full redraw per refresh, every
line cut to the terminal's width and the list cut to its height.  Data comes only
from the daemon's `status` control request; rates (events/s, spans/s per phase)
are differences between two successive snapshots.  If the daemon stops answering
the last screen stays, marked "daemon not responding", and top keeps retrying.
Keys: q (or Ctrl-C) quits with status 0.  ``--once`` prints one plain snapshot.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import termios
import time
import tty
from typing import Any

from ..control import DaemonUnavailable, request
from ..errors import GpuosError
from ..status import DaemonInfo
from ._common import control_endpoint
from .fmt import duration, num, safe

MIN_COLS, MIN_ROWS = 40, 6
Line = tuple[str, str]  # (text, style): "", "bold", "head" (reverse video), "warn"
STYLES = {"": "", "bold": "\x1b[1m", "head": "\x1b[7m", "warn": "\x1b[1;31m", "dim": "\x1b[2m"}


class Rates:
    """Per-second rates from successive status snapshots."""

    def __init__(self) -> None:
        self.prev: dict[str, Any] | None = None
        self.prev_t = 0.0
        self.now: dict[str, float] = {}

    def update(self, st: dict[str, Any], t: float) -> None:
        cur = _counts(st)
        prev = self.prev
        d = st["daemon"]
        if prev is not None and (prev["pid"] != d["pid"] or prev["uptime"] > d["uptime_s"]):
            prev = None  # the daemon restarted: its counters did too
        self.now = {}
        if prev is not None and t > self.prev_t:
            dt = t - self.prev_t
            for k, v in cur.items():
                if k in prev["c"] and v >= prev["c"][k]:
                    self.now[k] = (v - prev["c"][k]) / dt
        self.prev = {"pid": d["pid"], "uptime": d["uptime_s"], "c": cur}
        self.prev_t = t

    def get(self, key: str) -> float | None:
        return self.now.get(key)


def _counts(st: dict[str, Any]) -> dict[str, float]:
    c = st.get("counters") or {}
    out = {"events": c.get("events", 0), "spans": c.get("spans_closed", 0)}
    for cl in st.get("clients") or []:
        out[f"client:{cl['pid']}"] = cl["events"]
    for p in st.get("phases") or []:
        out[f"phase:{p['path']}\0{p.get('workload_class')}"] = p["count"]
    return out


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _cols(values: list[str], widths: list[int], right: str) -> str:
    parts = []
    for i, (v, w) in enumerate(zip(values, widths, strict=True)):
        v = safe(v)  # escaped before it is measured, so columns stay aligned
        v = v if len(v) <= w else v[: max(w - 1, 0)] + "~"
        parts.append(v.rjust(w) if right[i] == "r" else v.ljust(w))
    return " ".join(parts)


def render(
    st: dict[str, Any] | None, rates: Rates, cols: int, rows: int | None, note: str = "", own_pid: int = 0
) -> list[Line]:
    """The screen as lines; rows=None means no height limit (--once)."""
    out: list[Line] = []
    if st is None:
        return [("gpuos-hintctl top", "bold"), ("", ""), (note or "connecting...", "warn")]
    d, c = st["daemon"], st.get("counters") or {}
    metrics = DaemonInfo.from_dict(d).metrics_url  # the typed status contract (status.py), not a guess
    out.append(
        (
            f"gpuos-hintd {d['version']}  pid {d['pid']}  up {duration(d['uptime_s'])}  "
            f"{d['sample_hz']:g} Hz" + (f"  {metrics}" if metrics else "") + f"  {time.strftime('%H:%M:%S')}",
            "bold",
        )
    )
    if note:
        out.append((note, "warn"))
    clients = [cl for cl in st.get("clients") or [] if cl["pid"] != own_pid]
    open_n = sum(len(cl["open_phases"]) for cl in clients)
    out.append(
        (
            f"events {c.get('events', 0):,} ({_rate(rates.get('events'))}/s)  "
            f"spans {c.get('spans_closed', 0):,} ({_rate(rates.get('spans'))}/s)  clients {len(clients)}  "
            f"open {open_n}  rejected {c.get('rejected_total', 0):,}  "
            f"dropped {c.get('client_dropped_total', 0):,}  abandoned {c.get('spans_abandoned', 0):,}",
            "",
        )
    )
    store = st.get("store") or {}
    ok = [s for s in st.get("samplers") or [] if s["available"]]
    off = [s["name"] for s in st.get("samplers") or [] if not s["available"]]
    samp = "  ".join(f"{s['name']} {s['last_ms']:.2f}ms" + (f" ({s['errors']} err)" if s["errors"] else "") for s in ok)
    errs = store.get("write_errors", 0)
    out.append(
        (
            f"store {(store.get('written') or {}).get('spans', 0):,} spans written"
            + (f", {errs} WRITE ERRORS" if errs else "")
            + f"  samplers: {samp or '-'}"
            + (f"  (off: {', '.join(off)})" if off else ""),
            "warn" if errs else "",
        )
    )
    for s in st.get("samplers") or []:
        for g in s.get("devices") or [] if isinstance(s.get("devices"), list) else []:
            mem = (
                f"{g['mem_used_bytes'] / 2**30:.1f}/{g['mem_total_bytes'] / 2**30:.1f} GiB"
                if g.get("mem_used_bytes") is not None and g.get("mem_total_bytes")
                else "-"
            )
            power = f"{g['power_mw'] / 1000:.0f} W" if g.get("power_mw") is not None else "-"
            energy = f"{g['energy_mj'] / 1000:,.0f} J" if g.get("energy_mj") is not None else "-"
            util = f"{g['util_gpu_pct']}%" if g.get("util_gpu_pct") is not None else "-"
            lost = "  LOST" if g.get("lost") else ""
            out.append(
                (
                    f"GPU {g.get('index')} {g.get('name', '')}  util {util}  mem {mem}  power {power}  "
                    f"energy {energy}  procs {len(g.get('processes') or [])}{lost}",
                    "warn" if lost else "",
                )
            )
    out.append(("", ""))
    # Clients: up to half of what is left; phases get the rest.
    cw = [7, 15, 18, 8, 7]
    fixed = sum(cw) + len(cw)
    client_lines: list[Line] = [
        (_cols(["PID", "COMMAND", "CLASS", "EV/S", "DROPPED"], cw, "rllrr") + " OPEN PHASES", "head")
    ]
    for cl in sorted(clients, key=lambda x: x["pid"]):
        phases = safe(", ".join(f"{p['path']} {p['age_s']:.1f}s" for p in cl["open_phases"][-4:]) or "-")
        client_lines.append(
            (
                _cols(
                    [
                        str(cl["pid"]),
                        cl.get("comm") or "?",
                        cl.get("workload_class") or "-",
                        _rate(rates.get(f"client:{cl['pid']}")),
                        num(cl.get("dropped", 0)),
                    ],
                    cw,
                    "rllrr",
                )
                + " "
                + phases[: max(cols - fixed, 0)],
                "",
            )
        )
    if len(client_lines) == 1:
        client_lines.append(("  no clients", "dim"))
    pw = [24, 16, 8, 8, 9, 9, 6, 6, 8, 9]
    phase_lines: list[Line] = [
        (
            _cols(
                ["PHASE", "CLASS", "SPANS/S", "COUNT", "MEAN MS", "MAX MS", "CPU%", "GPU%", "POWER W", "ENERGY J"],
                pw,
                "llrrrrrrrr",
            ),
            "head",
        )
    ]
    for p in st.get("phases") or []:
        sig = p.get("signals") or {}
        power = sig.get("gpu_power_mw_mean")
        phase_lines.append(
            (
                _cols(
                    [
                        p["path"],
                        p.get("workload_class") or "-",
                        _rate(rates.get(f"phase:{p['path']}\0{p.get('workload_class')}")),
                        f"{p['count']:,}",
                        f"{p['mean_ms']:.3f}",
                        f"{p['max_ms']:.3f}",
                        num(sig.get("cpu_pct"), 0),
                        num(sig.get("gpu_util_pct_mean"), 0),
                        num(power / 1000 if power is not None else None, 1),
                        num(p["energy_j"], 2) if p.get("energy_j") else "-",
                    ],
                    pw,
                    "llrrrrrrrr",
                ),
                "",
            )
        )
    if len(phase_lines) == 1:
        phase_lines.append(("  no spans closed yet", "dim"))
    if rows is not None:
        left = rows - len(out) - 2  # minus the blank line between the lists and the footer
        n_clients = min(len(client_lines), max(2, left // 2), left)
        client_lines = client_lines[:n_clients]
        phase_lines = phase_lines[: max(left - n_clients, 0)]
    out += [*client_lines, ("", ""), *phase_lines]
    return out


def paint(lines: list[Line], cols: int, rows: int, footer: str) -> str:
    buf = ["\x1b[H"]
    body = lines[: rows - 1]
    for text, style in body:
        t = safe(text)[:cols]
        if style == "head":
            t = t.ljust(cols)
        buf.append(f"{STYLES[style]}{t}\x1b[0m\x1b[K\r\n" if style else f"{t}\x1b[K\r\n")
    buf.append("\x1b[J")
    buf.append(f"\x1b[{rows};1H\x1b[7m{footer[:cols].ljust(cols)}\x1b[0m")
    return "".join(buf)


class Top:
    def __init__(self, endpoint: str, interval: float, timeout: float) -> None:
        self.endpoint = endpoint
        self.interval = max(0.1, interval)
        self.timeout = timeout
        self.rates = Rates()
        self.last: dict[str, Any] | None = None
        self.down_since: float | None = None
        self.error = ""

    def poll(self) -> None:
        try:
            st = request(self.endpoint, "status", timeout_s=self.timeout)
        except (DaemonUnavailable, GpuosError) as exc:
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.error = str(exc)
            return
        self.down_since = None
        self.last = st
        self.rates.update(st, time.monotonic())

    def note(self) -> str:
        if self.down_since is None:
            return ""
        return f"daemon not responding for {time.monotonic() - self.down_since:.0f}s - retrying ({self.endpoint})"

    def frame(self) -> str:
        cols, rows = os.get_terminal_size(sys.stdout.fileno())
        if cols < MIN_COLS or rows < MIN_ROWS:
            msg = [f"terminal too small ({cols}x{rows})", f"need {MIN_COLS}x{MIN_ROWS}; q quits"]
            return "\x1b[H\x1b[J" + "\r\n".join(m[:cols] for m in msg[:rows])
        lines = render(self.last, self.rates, cols, rows - 1, self.note(), own_pid=os.getpid())
        footer = f" q quit   refresh {self.interval:g}s   {self.endpoint}"
        return paint(lines, cols, rows, footer)

    def run(self) -> int:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        old_winch = signal.signal(signal.SIGWINCH, lambda *_: _poke(wake_w))
        out = sys.stdout
        try:
            tty.setcbreak(fd)
            out.write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[J")
            next_poll = 0.0
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    self.poll()
                    next_poll = time.monotonic() + self.interval
                out.write(self.frame())
                out.flush()
                ready, _, _ = select.select([fd, wake_r], [], [], max(0.0, next_poll - time.monotonic()))
                if wake_r in ready:
                    os.read(wake_r, 64)
                if fd in ready:
                    key = os.read(fd, 32)
                    if b"q" in key or b"Q" in key:
                        return 0
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGWINCH, old_winch)
            out.write("\x1b[0m\x1b[?25h\x1b[?1049l")
            out.flush()
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            os.close(wake_r)
            os.close(wake_w)


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"w")
    except OSError:
        pass


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print one snapshot (plain text) and exit")


def run(ns: argparse.Namespace) -> int:
    endpoint = control_endpoint(ns)
    if ns.once:
        rates = Rates()
        st = request(endpoint, "status", timeout_s=ns.timeout)
        if ns.interval > 0:  # two snapshots, so rates can be shown
            rates.update(st, time.monotonic())
            time.sleep(min(ns.interval, 5.0))
            st = request(endpoint, "status", timeout_s=ns.timeout)
        rates.update(st, time.monotonic())
        try:
            cols = os.get_terminal_size().columns
        except OSError:
            cols = 160
        print("\n".join(safe(t).rstrip() for t, _s in render(st, rates, cols, None, own_pid=os.getpid())))
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("gpuos-hintctl top: needs a terminal (use --once for a plain snapshot)", file=sys.stderr)
        return 2
    return Top(endpoint, ns.interval, min(ns.timeout, max(0.5, ns.interval))).run()
