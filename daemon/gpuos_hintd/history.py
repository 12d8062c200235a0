"""History over the control socket: `spans` and `phases` for any caller, with the disclosure rule.

The store is the daemon's (0600), so a non-root `gpuos-hintctl spans` asks the
daemon, which reads its own store and answers with what that caller may see:
root everything, any other uid only the spans of its own processes.  Queries
are bounded in rows (MAX_ROWS) and in time (MAX_QUERY_S, via SQLite's progress
handler), so a history request cannot stall the loop for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .model import SPAN_STATUSES
from .store import SpanQuery, open_readonly, phase_table, query_spans

MAX_ROWS = 10_000
MAX_QUERY_S = 1.0
MAX_EXPORT_S = 5.0  # a whole trace; still well inside the 30 s watchdog
I64_MAX = (1 << 63) - 1
STATUSES = SPAN_STATUSES


def _opt_int(req: dict[str, Any], key: str, lo: int = 0, hi: int = I64_MAX) -> int | None:
    value = req.get(key)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{key} must be an integer in {lo}..{hi}")
    return value


def _opt_str(req: dict[str, Any], key: str, max_len: int = 4096) -> str | None:
    value = req.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise ValueError(f"{key} must be a string of at most {max_len} chars")
    return value


def _scope(uid: int | None) -> int | None:
    """The uid whose rows a caller sees; None = all (root, or a transport without credentials)."""
    return None if uid in (0, None) else uid


def _bounded(service: Any, fn: Callable[[Any], Any], limit_s: float = MAX_QUERY_S) -> Any:
    if service.store is None:
        raise ValueError("this daemon runs without a store")
    conn = open_readonly(service.store.state_dir)
    deadline = time.monotonic() + limit_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        return fn(conn)
    finally:
        conn.close()


def op_spans(service: Any, req: dict[str, Any], uid: int | None) -> list[dict[str, Any]]:
    status = _opt_str(req, "status", 32)
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    q = SpanQuery(
        pid=_opt_int(req, "pid"),
        name=_opt_str(req, "name"),
        since_wall_ns=_opt_int(req, "since_wall_ns", -I64_MAX),
        status=status,
        limit=min(_opt_int(req, "limit") or 50, MAX_ROWS),
        uid=_scope(uid),
    )
    return _bounded(service, lambda conn: query_spans(conn, q))


def op_phases(service: Any, req: dict[str, Any], uid: int | None) -> list[dict[str, Any]]:
    since = _opt_int(req, "since_wall_ns", -I64_MAX)
    return _bounded(service, lambda conn: phase_table(conn, since, _scope(uid)))


def op_export(service: Any, req: dict[str, Any], uid: int | None) -> dict[str, Any]:
    from .export.trace import build_trace  # the same builder hintctl uses on a store it can read

    fmt = _opt_str(req, "format", 16) or "perfetto"
    if fmt not in ("perfetto", "chrome"):
        raise ValueError("format must be perfetto or chrome")
    since, pid = _opt_int(req, "since_wall_ns", -I64_MAX), _opt_int(req, "pid")
    doc, stats = _bounded(service, lambda conn: build_trace(conn, since, pid, fmt, _scope(uid)), MAX_EXPORT_S)
    return {"trace": doc, "stats": stats}


HISTORY_OPS: dict[str, Callable[[Any, dict[str, Any], int | None], Any]] = {
    "spans": op_spans,
    "phases": op_phases,
    "export": op_export,
}
