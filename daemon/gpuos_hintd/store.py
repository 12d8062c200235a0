"""The embedded SQLite store: processes, spans, marks and samples.

One writer thread owns the read-write connection (WAL, one transaction per
batch); readers - `gpuos-hintctl`, exports, the evaluation - open the file
read-only and never block it.  When a write fails (disk full, I/O error,
locked) nothing already queued is lost: the batch is kept, retried with
backoff, and the failure counted and logged; only when the retry backlog is
over its bound are the oldest *samples* shed (spans, the product, are shed
last), and that is counted too.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from .errors import StoreError

log = structlog.get_logger("gpuos_hintd.store")

SCHEMA_VERSION = 1
DB_NAME = "gpuos-hint.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (
    boot_id TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
    uid INTEGER, gid INTEGER, comm TEXT, cmdline TEXT, cgroup TEXT, unit TEXT,
    workload_class TEXT, first_seen_wall_ns INTEGER, last_seen_wall_ns INTEGER,
    exit_reason TEXT, events INTEGER DEFAULT 0, client_dropped INTEGER DEFAULT 0,
    PRIMARY KEY (boot_id, pid, pid_start)
);
CREATE TABLE IF NOT EXISTS spans (
    id INTEGER PRIMARY KEY,
    boot_id TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
    span_id INTEGER NOT NULL, parent_span_id INTEGER NOT NULL, tid INTEGER NOT NULL,
    name TEXT NOT NULL, path TEXT NOT NULL, depth INTEGER NOT NULL,
    workload_class TEXT, attrs TEXT,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL,
    start_wall_ns INTEGER NOT NULL,
    status TEXT NOT NULL, recovered INTEGER NOT NULL DEFAULT 0,
    dev_start_ns INTEGER, dev_end_ns INTEGER,
    samples INTEGER NOT NULL DEFAULT 0, estimated INTEGER NOT NULL DEFAULT 0,
    signals TEXT NOT NULL DEFAULT '{}',
    UNIQUE (boot_id, pid, pid_start, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_wall ON spans (start_wall_ns);
CREATE INDEX IF NOT EXISTS spans_by_name ON spans (name, start_wall_ns);
CREATE INDEX IF NOT EXISTS spans_by_pid ON spans (pid, start_wall_ns);
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY,
    boot_id TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL, tid INTEGER NOT NULL,
    t_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL, name TEXT NOT NULL, attrs TEXT
);
CREATE INDEX IF NOT EXISTS marks_by_wall ON marks (wall_ns);
CREATE TABLE IF NOT EXISTS samples (
    boot_id TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL, tid INTEGER NOT NULL,
    t_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL, signals TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_wall ON samples (wall_ns);
CREATE INDEX IF NOT EXISTS samples_by_proc ON samples (pid, pid_start, t_ns);
"""


@dataclasses.dataclass(slots=True)
class ProcessRow:
    boot_id: str
    pid: int
    pid_start: int
    uid: int | None
    gid: int | None
    comm: str
    cmdline: str
    cgroup: str
    unit: str | None
    workload_class: str | None
    first_seen_wall_ns: int
    last_seen_wall_ns: int
    exit_reason: str | None = None
    events: int = 0
    client_dropped: int = 0


@dataclasses.dataclass(slots=True)
class SpanRow:
    boot_id: str
    pid: int
    pid_start: int
    span_id: int
    parent_span_id: int
    tid: int
    name: str
    path: str
    depth: int
    workload_class: str | None
    attrs: dict[str, Any] | None
    start_ns: int
    end_ns: int
    start_wall_ns: int
    status: str
    recovered: bool = False
    dev_start_ns: int | None = None
    dev_end_ns: int | None = None
    samples: int = 0
    estimated: bool = False
    signals: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0)


@dataclasses.dataclass(slots=True)
class MarkRow:
    boot_id: str
    pid: int
    pid_start: int
    tid: int
    t_ns: int
    wall_ns: int
    name: str
    attrs: dict[str, Any] | None


@dataclasses.dataclass(slots=True)
class SampleRow:
    boot_id: str
    pid: int
    pid_start: int
    tid: int
    t_ns: int
    wall_ns: int
    signals: dict[str, Any]


@dataclasses.dataclass(slots=True)
class DeviceInterval:
    boot_id: str
    pid: int
    pid_start: int
    span_id: int
    dev_start_ns: int
    dev_end_ns: int
    signals: dict[str, Any] | None = None


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def open_readonly(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection for hintctl and exports; raises StoreError if absent."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        raise StoreError(f"no store at {path} (has the daemon run with --state-dir {state_dir}?)")
    try:
        conn = _connect(path, readonly=True)
        conn.execute("SELECT 1 FROM spans LIMIT 1")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    return conn


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    samples_s: float = 24 * 3600.0
    spans_s: float = 30 * 24 * 3600.0
    max_backlog_rows: int = 200_000  # rows held in memory while writes fail


class Store:
    """The writer side.  `submit()` never blocks and never raises into the daemon loop."""

    def __init__(self, state_dir: Path, retention: Retention | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.retention = retention or Retention()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, readonly=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema v{row[0]}, newer than this daemon's v{SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        self._q: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._backlog: list[tuple[str, Any]] = []
        self.written = {"processes": 0, "spans": 0, "marks": 0, "samples": 0, "device": 0}
        self.write_errors = 0
        self.shed_rows = 0
        self.last_error: str | None = None
        self.queued = 0
        self._last_prune = 0.0
        self._thread = threading.Thread(target=self._run, name="gpuos-store", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producer side
    def submit(self, kind: str, rows: Any) -> None:
        self.queued += 1
        self._q.put((kind, rows))

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything submitted so far is committed (or has failed); bounded."""
        done = threading.Event()
        self._q.put(("barrier", done))
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued (bounded), then close the connection."""
        self._q.put(None)
        self._thread.join(timeout)
        try:
            self._conn.close()
        except sqlite3.Error:
            pass

    def health(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "written": dict(self.written),
            "write_errors": self.write_errors,
            "backlog_batches": len(self._backlog),
            "shed_rows": self.shed_rows,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------- writer side
    def _run(self) -> None:
        stopping = False
        while True:
            timeout = 1.0 if self._backlog else 0.5
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                item = ("", None)
            batch = list(self._backlog)
            self._backlog.clear()
            barriers: list[threading.Event] = []
            while True:
                if item is None:
                    stopping = True
                elif item[0] == "barrier":
                    barriers.append(item[1])
                elif item[0]:
                    batch.append(item)
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            ok = not batch or self._write(batch)
            for barrier in barriers:
                barrier.set()
            if not ok:
                self._keep(batch)
                if stopping:
                    log.error("store_unflushed_at_exit", batches=len(batch), error=self.last_error)
                    return
                time.sleep(min(2.0, 0.1 * (1 + self.write_errors % 20)))
            if stopping:
                return
            self._maybe_prune()

    def _write(self, batch: Sequence[tuple[str, Any]]) -> bool:
        conn = self._conn
        counts = dict.fromkeys(self.written, 0)
        try:
            conn.execute("BEGIN")
            for kind, rows in batch:
                counts[kind] += getattr(self, f"_w_{kind}")(conn, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("store_write_failed", error=self.last_error, batches=len(batch))
            return False
        for key, n in counts.items():
            self.written[key] += n
        if self.last_error and self.write_errors:
            log.info("store_write_recovered", after_errors=self.write_errors)
            self.last_error = None
        return True

    def _keep(self, batch: list[tuple[str, Any]]) -> None:
        """Hold a failed batch for retry; over the bound, shed samples first, then oldest rows."""
        self._backlog = batch
        total = sum(len(rows) if isinstance(rows, list) else 1 for _, rows in batch)
        limit = self.retention.max_backlog_rows
        if total <= limit:
            return
        kept: list[tuple[str, Any]] = []
        for kind, rows in batch:
            if kind == "samples" and total > limit:
                total -= len(rows)
                self.shed_rows += len(rows)
                continue
            kept.append((kind, rows))
        while total > limit and kept:
            kind, rows = kept.pop(0)
            n = len(rows) if isinstance(rows, list) else 1
            total -= n
            self.shed_rows += n
        self._backlog = kept
        log.warning("store_backlog_shed", shed_rows=self.shed_rows, kept_rows=total)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < 600:
            return
        self._last_prune = now
        wall = time.time_ns()
        try:
            self._conn.execute("DELETE FROM samples WHERE wall_ns < ?", (wall - int(self.retention.samples_s * 1e9),))
            cut = wall - int(self.retention.spans_s * 1e9)
            self._conn.execute("DELETE FROM spans WHERE start_wall_ns < ?", (cut,))
            self._conn.execute("DELETE FROM marks WHERE wall_ns < ?", (cut,))
        except sqlite3.Error as exc:
            log.warning("store_prune_failed", error=str(exc))

    # One writer per row kind; each returns the number of rows written.
    @staticmethod
    def _w_processes(conn: sqlite3.Connection, rows: list[ProcessRow]) -> int:
        conn.executemany(
            """INSERT INTO processes VALUES (:boot_id,:pid,:pid_start,:uid,:gid,:comm,:cmdline,:cgroup,
               :unit,:workload_class,:first_seen_wall_ns,:last_seen_wall_ns,:exit_reason,:events,
               :client_dropped)
               ON CONFLICT (boot_id, pid, pid_start) DO UPDATE SET
                 workload_class=excluded.workload_class, last_seen_wall_ns=excluded.last_seen_wall_ns,
                 exit_reason=excluded.exit_reason, events=excluded.events,
                 client_dropped=excluded.client_dropped""",
            [dataclasses.asdict(r) for r in rows],
        )
        return len(rows)

    @staticmethod
    def _w_spans(conn: sqlite3.Connection, rows: list[SpanRow]) -> int:
        conn.executemany(
            """INSERT OR REPLACE INTO spans (boot_id,pid,pid_start,span_id,parent_span_id,tid,name,path,
               depth,workload_class,attrs,start_ns,end_ns,duration_ns,start_wall_ns,status,recovered,
               dev_start_ns,dev_end_ns,samples,estimated,signals)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            [
                (
                    r.boot_id,
                    r.pid,
                    r.pid_start,
                    r.span_id,
                    r.parent_span_id,
                    r.tid,
                    r.name,
                    r.path,
                    r.depth,
                    r.workload_class,
                    _json(r.attrs),
                    r.start_ns,
                    r.end_ns,
                    r.duration_ns,
                    r.start_wall_ns,
                    r.status,
                    int(r.recovered),
                    r.dev_start_ns,
                    r.dev_end_ns,
                    r.samples,
                    int(r.estimated),
                    _json(r.signals) or "{}",
                )
                for r in rows
            ],
        )
        return len(rows)

    @staticmethod
    def _w_marks(conn: sqlite3.Connection, rows: list[MarkRow]) -> int:
        conn.executemany(
            "INSERT INTO marks (boot_id,pid,pid_start,tid,t_ns,wall_ns,name,attrs) VALUES (?,?,?,?,?,?,?,?)",
            [(r.boot_id, r.pid, r.pid_start, r.tid, r.t_ns, r.wall_ns, r.name, _json(r.attrs)) for r in rows],
        )
        return len(rows)

    @staticmethod
    def _w_samples(conn: sqlite3.Connection, rows: list[SampleRow]) -> int:
        conn.executemany(
            "INSERT INTO samples VALUES (?,?,?,?,?,?,?)",
            [(r.boot_id, r.pid, r.pid_start, r.tid, r.t_ns, r.wall_ns, _json(r.signals)) for r in rows],
        )
        return len(rows)

    @staticmethod
    def _w_device(conn: sqlite3.Connection, rows: list[DeviceInterval]) -> int:
        n = 0
        for r in rows:
            cur = conn.execute(
                """UPDATE spans SET dev_start_ns=?, dev_end_ns=?,
                   signals=json_patch(signals, ?) WHERE boot_id=? AND pid=? AND pid_start=? AND span_id=?""",
                (
                    r.dev_start_ns,
                    r.dev_end_ns,
                    _json(r.signals or {}),
                    r.boot_id,
                    r.pid,
                    r.pid_start,
                    r.span_id,
                ),
            )
            n += cur.rowcount
        return n


# ---------------------------------------------------------------- read side
@dataclasses.dataclass(frozen=True, slots=True)
class SpanQuery:
    pid: int | None = None
    name: str | None = None
    since_wall_ns: int | None = None
    status: str | None = None
    limit: int = 50


def query_spans(conn: sqlite3.Connection, q: SpanQuery) -> list[dict[str, Any]]:
    where, args = ["1=1"], []
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
)


def phase_energy_marks(conn: sqlite3.Connection, since_wall_ns: int | None = None) -> dict[tuple[int, int], list[Any]]:
    """The per-phase energy statistics the daemon wrote (``__phase_energy__`` marks), per process."""
    out: dict[tuple[int, int], list[Any]] = {}
    for pid, pst, attrs in conn.execute(
        "SELECT pid, pid_start, attrs FROM marks WHERE name='__phase_energy__' AND wall_ns >= ? ORDER BY id",
        (since_wall_ns or 0,),
    ):
        try:
            out.setdefault((pid, pst), []).append(json.loads(attrs))
        except (TypeError, ValueError):
            continue
    return out


def phase_energy_fits(
    conn: sqlite3.Connection, since_wall_ns: int | None = None, resamples: int = 200
) -> dict[tuple[int, int], dict[str, dict[str, Any]]]:
    """Per process: the per-phase power fit (NNLS + bootstrap CI) over its __phase_energy__ marks."""
    from .phase_energy import fit_marks  # the offline half of phase_energy: pure arithmetic

    return {key: fit_marks(marks, resamples) for key, marks in phase_energy_marks(conn, since_wall_ns).items()}


def phase_summary(conn: sqlite3.Connection, since_wall_ns: int | None = None) -> list[dict[str, Any]]:
    """Per phase path: count, duration stats and the mean/sum of key signals."""
    sig = ", ".join(f"{how}(json_extract(signals, '$.{name}')) AS {name}" for name, how in PHASE_SUMMARY_SIGNALS)
    rows = conn.execute(
        f"""SELECT path AS name, workload_class, count(*) AS count,
                   sum(status='abandoned') AS abandoned, avg(duration_ns) AS mean_ns,
                   min(duration_ns) AS min_ns, max(duration_ns) AS max_ns, sum(duration_ns) AS total_ns,
                   avg(dev_end_ns - dev_start_ns) AS dev_mean_ns, count(dev_start_ns) AS dev_count,
                   sum(json_extract(signals, '$.thread_cpu_ns')) AS thread_cpu_total_ns,
                   sum(json_extract(signals, '$.thread_cpu_ns_err')) AS thread_cpu_total_err_ns,
                   sum(json_extract(signals, '$.cpu_exact') = 1) AS cpu_exact_spans,
                   sum(json_extract(signals, '$.gpu_energy_err_j')) AS gpu_energy_err_j,
                   sum(json_extract(signals, '$.gpu_energy_subres') = 1) AS gpu_energy_subres_spans,
                   {sig}
            FROM spans WHERE start_wall_ns >= ? GROUP BY path, workload_class ORDER BY min(start_ns)""",
        (since_wall_ns or 0,),
    ).fetchall()
    return [dict(r) for r in rows]
