"""The store's read side: connections that see v1 and v2 stores alike, and every query readers run.

All SQL against the schema is in this package: `gpuos-hintctl` (spans, phases,
export), the daemon's history ops and the offline evaluation call these
functions, not SQL of their own.  A connection from :func:`connect` has a
temporary ``spans`` view with v1's columns, ``signals`` included (decoded
from the packed rows by a registered function), so the same rows come back
from a v2 store, a migrated one, or a recorded v1 file.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError
from . import codec, schema
from .schema import DB_NAME


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


class _Layouts:
    """Layout id -> decoded Layout, loaded on first use (the writer may add layouts while we read)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.cache: dict[int, codec.Layout] = {}

    def get(self, lid: int | None) -> codec.Layout | None:
        if lid is None:
            return None
        lay = self.cache.get(lid)
        if lay is None:
            row = self.conn.execute("SELECT spec FROM layouts WHERE id=?", (lid,)).fetchone()
            if row is None:
                return None
            lay = self.cache[lid] = codec.Layout(row[0])
        return lay


def prepare(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Give a connection the ``spans`` view with signals (a no-op on a v1 file, whose spans is a table)."""
    have = schema.tables(conn)
    if "span_rows" not in have:
        return conn
    layouts = _Layouts(conn)

    def signals_json(lid: int | None, blob: bytes | None, xs: str | None) -> str:
        return json.dumps(codec.decode(layouts.get(lid), blob, xs), separators=(",", ":"))

    if "spans" in {r[0] for r in conn.execute("SELECT name FROM sqlite_temp_master WHERE type='view'")}:
        return conn
    conn.create_function("gpuos_signals", 3, signals_json, deterministic=True)
    conn.execute(f"CREATE TEMP VIEW IF NOT EXISTS spans AS {schema.span_view(True, 'spans_v1' in have)}")
    return conn


def connect(path: Path | str, readonly: bool = True) -> sqlite3.Connection:
    """A connection to a store file that reads v1 and v2 alike (read-only by default)."""
    return prepare(_connect(Path(path), readonly))


def open_readonly(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection for hintctl and exports; raises StoreError if absent."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        raise StoreError(f"no store at {path} (has the daemon run with --state-dir {state_dir}?)")
    try:
        conn = connect(path)
        conn.execute("SELECT 1 FROM spans LIMIT 1")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    return conn


def metric_kinds(conn: sqlite3.Connection) -> dict[str, str]:
    """{metric: 'counter'|'gauge'} from the store's catalogue; empty for a store without one (v1)."""
    if "metrics" not in schema.tables(conn):
        return {}
    return {r[0]: r[1] for r in conn.execute("SELECT name, kind FROM metrics")}


def metric_catalog(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """{metric: {unit, kind, scope, help}} as the daemon declared them (empty for a v1 store)."""
    if "metrics" not in schema.tables(conn):
        return {}
    return {
        r[0]: {"unit": r[1], "kind": r[2], "scope": r[3], "help": r[4]}
        for r in conn.execute("SELECT name, unit, kind, scope, help FROM metrics")
    }


# ---------------------------------------------------------------- export and evaluation
def _scoped(table: str, since_col: str, since: int, pid: int | None, uid: int | None) -> tuple[str, list[Any]]:
    where, params = [f"{since_col} >= ?"], [since]
    if pid is not None:
        where.append("pid = ?")
        params.append(pid)
    if uid is not None:
        where.append(
            f"EXISTS (SELECT 1 FROM processes p WHERE p.boot_id = {table}.boot_id AND p.pid = {table}.pid "
            f"AND p.pid_start = {table}.pid_start AND p.uid = ?)"
        )
        params.append(uid)
    return " AND ".join(where), params


def trace_spans(
    conn: sqlite3.Connection, since_wall_ns: int = 0, pid: int | None = None, uid: int | None = None
) -> list[sqlite3.Row]:
    """Spans (v1 columns, signals as JSON text) started since, of one pid / uid if given, by start."""
    prepare(conn)
    where, params = _scoped("spans", "start_wall_ns", since_wall_ns, pid, uid)
    return conn.execute(f"SELECT * FROM spans WHERE {where} ORDER BY start_ns, depth", params).fetchall()


def trace_marks(
    conn: sqlite3.Connection, since_wall_ns: int = 0, pid: int | None = None, uid: int | None = None
) -> list[sqlite3.Row]:
    where, params = _scoped("marks", "wall_ns", since_wall_ns, pid, uid)
    return conn.execute(f"SELECT * FROM marks WHERE {where} ORDER BY t_ns", params).fetchall()


def trace_process_samples(
    conn: sqlite3.Connection, since_wall_ns: int = 0, pid: int | None = None, uid: int | None = None
) -> list[sqlite3.Row]:
    """Process-scope samples (tid 0): boot_id, pid, pid_start, t_ns, wall_ns, signals (JSON text)."""
    where, params = _scoped("samples", "wall_ns", since_wall_ns, pid, uid)
    return conn.execute(
        "SELECT boot_id, pid, pid_start, t_ns, wall_ns, signals FROM samples "
        f"WHERE {where} AND tid = 0 ORDER BY boot_id, pid, pid_start, t_ns",
        params,
    ).fetchall()


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Rows as dicts, whatever the connection's row factory."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def processes(conn: sqlite3.Connection, uid: int | None = None) -> list[dict[str, Any]]:
    """Every process row (of one uid, if given), oldest first."""
    rows = _dicts(conn.execute("SELECT * FROM processes ORDER BY first_seen_wall_ns"))
    return [r for r in rows if uid is None or r["uid"] == uid]


def process_samples(
    conn: sqlite3.Connection, boot_id: str, pid: int, pid_start: int, since_wall_ns: int = 0
) -> list[tuple[int, dict[str, Any]]]:
    """One process's process-scope samples: [(t_ns, signals)] in time order."""
    rows = conn.execute(
        "SELECT t_ns, signals FROM samples WHERE boot_id=? AND pid=? AND pid_start=? AND tid=0 AND wall_ns>=?"
        " ORDER BY t_ns",
        (boot_id, pid, pid_start, since_wall_ns),
    ).fetchall()
    return [(r[0], json.loads(r[1])) for r in rows]


def process_spans(
    conn: sqlite3.Connection, boot_id: str, pid: int, pid_start: int, since_wall_ns: int = 0
) -> Iterator[dict[str, Any]]:
    """One process's spans started since, by start, as dicts (signals decoded)."""
    prepare(conn)
    cur = conn.execute(
        "SELECT start_ns, end_ns, name, path, depth, workload_class, tid, signals, dev_start_ns, dev_end_ns,"
        " span_id, parent_span_id FROM spans"
        " WHERE boot_id=? AND pid=? AND pid_start=? AND start_wall_ns>=? ORDER BY start_ns",
        (boot_id, pid, pid_start, since_wall_ns),
    )
    names = [d[0] for d in cur.description]
    for r in cur:
        d = dict(zip(names, r, strict=True))
        d["signals"] = json.loads(d["signals"] or "{}")
        yield d


# ---------------------------------------------------------------- read side
@dataclasses.dataclass(frozen=True, slots=True)
class SpanQuery:
    pid: int | None = None
    name: str | None = None
    since_wall_ns: int | None = None
    status: str | None = None
    limit: int = 50
    uid: int | None = None  # only this uid's processes (what a non-root caller may see)


def query_spans(conn: sqlite3.Connection, q: SpanQuery) -> list[dict[str, Any]]:
    where, args = ["1=1"], []
    if q.uid is not None:
        where.append("p.uid = ?")
        args.append(q.uid)
    if q.pid is not None:
        where.append("s.pid = ?")
        args.append(q.pid)
    if q.name is not None:
        where.append("(s.name = ? OR s.path = ?)")
        args += [q.name, q.name]
    if q.since_wall_ns is not None:
        where.append("s.start_wall_ns >= ?")
        args.append(q.since_wall_ns)
    if q.status is not None:
        where.append("s.status = ?")
        args.append(q.status)
    args.append(q.limit)
    rows = conn.execute(
        f"""SELECT s.*, p.comm FROM spans s LEFT JOIN processes p
            ON p.boot_id=s.boot_id AND p.pid=s.pid AND p.pid_start=s.pid_start
            WHERE {" AND ".join(where)} ORDER BY s.start_wall_ns DESC, s.id DESC LIMIT ?""",
        args,
    ).fetchall()
    return [_span_dict(r) for r in rows]


def _span_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["attrs"] = json.loads(d["attrs"]) if d.get("attrs") else None
    d["signals"] = json.loads(d["signals"]) if d.get("signals") else {}
    d["recovered"] = bool(d["recovered"])
    d["estimated"] = bool(d["estimated"])
    return d


#: Signals summarised per phase name by `gpuos-hintctl phases`: (signal, how).
PHASE_SUMMARY_SIGNALS: tuple[tuple[str, str], ...] = (
    ("cpu_pct", "avg"),
    ("thread_cpu_ns", "avg"),
    ("ctx_vol", "avg"),
    ("run_delay_ns", "avg"),
    ("io_syscr", "avg"),
    ("gpu_util_pct_mean", "avg"),
    ("gpu_power_mw_mean", "avg"),
    ("gpu_energy_j", "sum"),
    ("dev_busy_ms", "avg"),
)


def phase_energy_marks(
    conn: sqlite3.Connection, since_wall_ns: int | None = None, uid: int | None = None
) -> dict[tuple[int, int], list[Any]]:
    """The per-phase energy statistics the daemon wrote (``__phase_energy__`` marks), per process."""
    where, args = "name='__phase_energy__' AND wall_ns >= ?", [since_wall_ns or 0]
    if uid is not None:
        where += """ AND EXISTS (SELECT 1 FROM processes p WHERE p.boot_id=marks.boot_id AND p.pid=marks.pid
                     AND p.pid_start=marks.pid_start AND p.uid=?)"""
        args.append(uid)
    out: dict[tuple[int, int], list[Any]] = {}
    for pid, pst, attrs in conn.execute(f"SELECT pid, pid_start, attrs FROM marks WHERE {where} ORDER BY id", args):
        try:
            out.setdefault((pid, pst), []).append(json.loads(attrs))
        except (TypeError, ValueError):
            continue
    return out


def phase_energy_fits(
    conn: sqlite3.Connection, since_wall_ns: int | None = None, resamples: int = 200, uid: int | None = None
) -> dict[tuple[int, int], dict[str, dict[str, Any]]]:
    """Per process: the per-phase power fit (NNLS + bootstrap CI) over its __phase_energy__ marks."""
    from ..phase_energy import fit_marks  # the offline half of phase_energy: pure arithmetic

    return {key: fit_marks(marks, resamples) for key, marks in phase_energy_marks(conn, since_wall_ns, uid).items()}


def best_phase_fits(by_proc: dict[tuple[int, int], dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per phase path: the fit of the process that saw it in the most windows."""
    best: dict[str, dict[str, Any]] = {}
    for (pid, _pst), fits in by_proc.items():
        for path, f in fits.items():
            if path.startswith("("):
                continue  # (unhinted), (other phases): shown only in --json through the paths
            if path not in best or f["windows"] > best[path]["windows"]:
                best[path] = {**f, "pid": pid}
    return best


def phase_table(
    conn: sqlite3.Connection, since_wall_ns: int | None = None, uid: int | None = None
) -> list[dict[str, Any]]:
    """What `gpuos-hintctl phases` shows: phase_summary plus each phase's energy fit (of one uid, if given)."""
    rows = phase_summary(conn, since_wall_ns, uid)
    fits = best_phase_fits(phase_energy_fits(conn, since_wall_ns, uid=uid))
    for r in rows:
        if r["name"] in fits:
            r["energy_fit"] = fits[r["name"]]
    return rows


def phase_summary(
    conn: sqlite3.Connection, since_wall_ns: int | None = None, uid: int | None = None
) -> list[dict[str, Any]]:
    """Per phase path: count, duration stats and the mean/sum of key signals (of one uid, if given)."""
    sig = ", ".join(f"{how}(json_extract(signals, '$.{name}')) AS {name}" for name, how in PHASE_SUMMARY_SIGNALS)
    where, args = "start_wall_ns >= ?", [since_wall_ns or 0]
    if uid is not None:
        where += """ AND EXISTS (SELECT 1 FROM processes p WHERE p.boot_id=spans.boot_id AND p.pid=spans.pid
                     AND p.pid_start=spans.pid_start AND p.uid=?)"""
        args.append(uid)
    # The CTE is materialised so that each span's signals are decoded once, not once per json_extract.
    rows = conn.execute(
        f"""WITH spans_in AS MATERIALIZED (
              SELECT path, workload_class, status, duration_ns, dev_start_ns, dev_end_ns, start_ns, signals
              FROM spans WHERE {where})
            SELECT path AS name, workload_class, count(*) AS count,
                   sum(status='abandoned') AS abandoned, avg(duration_ns) AS mean_ns,
                   min(duration_ns) AS min_ns, max(duration_ns) AS max_ns, sum(duration_ns) AS total_ns,
                   avg(dev_end_ns - dev_start_ns) AS dev_mean_ns, count(dev_start_ns) AS dev_count,
                   sum(json_extract(signals, '$.thread_cpu_ns')) AS thread_cpu_total_ns,
                   sum(json_extract(signals, '$.thread_cpu_ns_err')) AS thread_cpu_total_err_ns,
                   sum(json_extract(signals, '$.cpu_exact') = 1) AS cpu_exact_spans,
                   sum(json_extract(signals, '$.gpu_energy_err_j')) AS gpu_energy_err_j,
                   sum(json_extract(signals, '$.gpu_energy_subres') = 1) AS gpu_energy_subres_spans,
                   count(json_extract(signals, '$.dev_busy_ms')) AS dev_busy_count,
                   sum(json_extract(signals, '$.dev_busy_ms')) AS dev_busy_total_ms,
                   sum(CASE WHEN json_extract(signals, '$.dev_busy_ms') IS NOT NULL
                       THEN dev_end_ns - dev_start_ns END) AS dev_busy_window_ns,
                   {sig}
            FROM spans_in GROUP BY path, workload_class ORDER BY min(start_ns)""",
        args,
    ).fetchall()
    out = [dict(r) for r in rows]
    for r in out:
        # The phase's busy share: total busy time over the total device time of the spans that
        # measured it (a ratio of sums, so long spans weigh what they last).
        w = r.get("dev_busy_window_ns")
        r["dev_busy_pct"] = round(100.0 * r["dev_busy_total_ms"] * 1e6 / w, 3) if w else None
    return out
