"""`gpuos-hintctl export`: the store as a trace-event JSON file for Perfetto UI / chrome://tracing.

The document itself is built by export/trace.py (what goes in: see there); this module is the
command: arguments, the store or the daemon's ``export`` op, and the atomic write.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ..export.trace import GPU_TID, LANE_BASE, REUSED_PID_BASE, TraceBuilder, build_trace  # noqa: F401 - re-exported
from ..files import write_atomic as write_file_atomic
from ._common import history, parse_since, pid_arg


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """The trace as compact JSON, written atomically (gpuos_hintd/files.py)."""
    write_file_atomic(path, json.dumps(doc, separators=(",", ":"), allow_nan=False))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["perfetto", "chrome"], default="perfetto", help="default perfetto")
    p.add_argument("-o", "--output", required=True, help="output file (.json), or - for stdout")
    p.add_argument("--since", help="only what began since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--pid", type=pid_arg, help="only this process")


def run(ns: argparse.Namespace) -> int:
    since = parse_since(ns.since)

    def local(conn: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, int]]:
        return build_trace(conn, since, ns.pid, ns.format)

    res = history(ns, "export", local, since_wall_ns=since, pid=ns.pid, format=ns.format)
    doc, stats = (res["trace"], res["stats"]) if isinstance(res, dict) else res
    if ns.output == "-":
        json.dump(doc, sys.stdout, separators=(",", ":"))
        sys.stdout.write("\n")
        return 0
    write_atomic(Path(ns.output), doc)
    print(
        f"wrote {ns.output}: {stats['processes']} processes, {stats['tracks']} tracks, "
        f"{stats['slices']} phase slices, {stats['device_slices']} device slices, {stats['marks']} marks, "
        f"{stats['counter_points']} counter points ({ns.format} JSON; open in ui.perfetto.dev or chrome://tracing)"
    )
    return 0
