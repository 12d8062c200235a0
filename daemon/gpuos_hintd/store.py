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
import math
import os
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


# The records live in .model; these names stay importable from here.
from .model import DeviceInterval, MarkRow, ProcessRow, SampleRow, SpanRow  # noqa: E402

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _plain(value: Any) -> Any:
    """A JSON-safe copy of an attrs/signals value: what the writer cannot store it rewrites.

    bytes become text (invalid UTF-8 escaped as \\xNN), NaN and infinities become
    null, integers outside int64 become strings, other odd types their repr.
    The API accepts all of these, so refusing would lose a legitimate program's span.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _I64_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


def _i64(value: Any) -> Any:
    """A column value SQLite can bind: ints clamped to int64 (others pass through)."""
    if type(value) is int and not _I64_MIN <= value <= _I64_MAX:
        return _I64_MAX if value > 0 else _I64_MIN
    return value


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
    """The writer side.  `submit()` never blocks and never raises into the daemon loop.

    The writer thread is built not to die: rows it cannot bind are rewritten
    (_plain, _i64) or, failing that, dropped one by one and counted
    (``bad_rows``); any other exception in it is counted (``writer_crashes``),
    logged, and the loop starts again.  The queue is bounded in rows
    (``max_queue_rows``): over it samples and marks are shed first, spans only
    past twice the bound, every shed row counted by kind.
    """

    def __init__(self, state_dir: Path, retention: Retention | None = None, max_queue_rows: int = 200_000) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.retention = retention or Retention()
        self.max_queue_rows = max_queue_rows
        self._conn = self._open()
        self._watch: tuple[int, int] | None = self._identity()
        self._q: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._backlog: list[tuple[str, Any]] = []
        self.written = {"processes": 0, "spans": 0, "marks": 0, "samples": 0, "device": 0}
        self.write_errors = 0
        self.shed_rows = 0
        self.shed_by_kind: dict[str, int] = {}
        self.bad_rows = 0
        self.span_conflicts = 0
        self.writer_crashes = 0
        self.writer_restarts = 0
        self.reopened = 0
        self.last_crash: str | None = None
        self.last_error: str | None = None
        self.queued = 0
        # Rows submitted (written by the loop only) and taken (by the writer only): two
        # single-writer counters, so their difference needs no lock.
        self._rows_in = 0
        self._rows_taken = 0
        self._closing = False
        self._after_crash = False
        self._last_prune = 0.0
        self._last_check = time.monotonic()
        self._thread = self._start_writer()

    # ------------------------------------------------------------------ file
    def _open(self) -> sqlite3.Connection:
        """Open (creating 0600 where new) the database; the dir is made 0700 if it is missing."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The store holds every user's cmdlines and phases: readable by the daemon's
            # user only, whatever the umask (hintctl reads history through the daemon).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            conn = _connect(self.path, readonly=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema v{row[0]}, newer than this daemon's v{SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        for suffix in ("-wal", "-shm"):
            try:
                fd = os.open(f"{self.path}{suffix}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                pass
            finally:
                os.close(fd)
        return conn

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _check_file(self) -> None:
        """Notice a deleted or replaced database (state dir removed under us) and reopen it.

        SQLite keeps writing to an unlinked file and reports success, so the only
        way to know is to look: the path must still name the inode we opened.
        """
        now = time.monotonic()
        if now - self._last_check < 2.0:
            return
        self._last_check = now
        if self._identity() == self._watch and self._watch is not None:
            return
        self.write_errors += 1
        self.last_error = f"store file {self.path} was deleted or replaced; reopening"
        log.error("store_file_lost", path=str(self.path))
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
        try:
            self._conn = self._open()
            self._watch = self._identity()
            self.reopened += 1
            log.warning("store_reopened", path=str(self.path))
        except StoreError as exc:
            self.last_error = str(exc)

    # ------------------------------------------------------------ producer side
    def submit(self, kind: str, rows: Any) -> None:
        n = len(rows) if isinstance(rows, list) else 1
        limit = self.max_queue_rows
        queued_rows = self._rows_in - self._rows_taken
        if queued_rows + n > limit and (kind not in ("spans", "processes") or queued_rows + n > 2 * limit):
            # Shed what is cheapest to lose first (samples, marks); spans and process
            # rows only past twice the bound.  Every shed row is counted, by kind.
            self.shed_rows += n
            self.shed_by_kind[kind] = self.shed_by_kind.get(kind, 0) + n
            if self.shed_by_kind[kind] == n or self.shed_rows & (self.shed_rows - 1) == 0:
                log.warning("store_queue_shed", kind=kind, rows=n, queued_rows=queued_rows)
            return
        self.queued += 1
        self._rows_in += n
        self._q.put((kind, rows))

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything submitted so far is committed (or has failed); bounded."""
        done = self.barrier()
        return done.wait(timeout)

    def barrier(self) -> threading.Event:
        """An event set once everything submitted before it is committed (or has failed)."""
        done = threading.Event()
        self._q.put(("barrier", done))
        return done

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued (bounded), then close the connection."""
        self._closing = True
        self._q.put(None)
        self._thread.join(timeout)
        try:
            self._conn.close()
        except sqlite3.Error:
            pass

    def ensure_writer(self) -> bool:
        """Start a new writer thread if the old one is gone (called from the daemon's loop)."""
        if self._closing or self._thread.is_alive():
            return False
        self.writer_restarts += 1
        log.error("store_writer_restarted", crashes=self.writer_crashes, last=self.last_crash)
        self._thread = self._start_writer()
        return True

    def health(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "written": dict(self.written),
            "write_errors": self.write_errors,
            "backlog_batches": len(self._backlog),
            "shed_rows": self.shed_rows,
            "shed_by_kind": dict(self.shed_by_kind),
            "bad_rows": self.bad_rows,
            "span_conflicts": self.span_conflicts,
            "queued_rows": self._rows_in - self._rows_taken,
            "max_queue_rows": self.max_queue_rows,
            "writer_alive": self._thread.is_alive(),
            "writer_crashes": self.writer_crashes,
            "writer_restarts": self.writer_restarts,
            "last_crash": self.last_crash,
            "reopened": self.reopened,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------- writer side
    def _start_writer(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="gpuos-store", daemon=True)
        t.start()
        return t

    def _run(self) -> None:
        """The writer's supervisor: whatever escapes one round is counted and the loop resumes."""
        while True:
            try:
                if self._loop():
                    return
            except BaseException as exc:  # the writer must outlive any row
                self.writer_crashes += 1
                self._after_crash = True
                self.last_crash = f"{type(exc).__name__}: {exc}"
                self.last_error = self.last_crash
                log.error("store_writer_crashed", error=self.last_crash, crashes=self.writer_crashes, exc_info=exc)
                time.sleep(0.2)

    def _loop(self) -> bool:
        """Write rounds until told to stop; True when stopped on purpose."""
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
                    self._rows_taken += len(item[1]) if isinstance(item[1], list) else 1
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            # Held as the backlog while it is written: a crash mid-write loses nothing, and
            # the round after a crash writes row by row, so one poisoned row cannot loop.
            self._backlog = batch
            try:
                self._check_file()
                if not batch:
                    ok = True
                elif self._after_crash:
                    self._after_crash = False
                    ok = self._write_rowwise(batch)
                else:
                    ok = self._write(batch)
            finally:
                for barrier in barriers:
                    barrier.set()
            self._backlog = []
            if not ok:
                self._keep(batch)
                if stopping:
                    log.error("store_unflushed_at_exit", batches=len(batch), error=self.last_error)
                    return True
                time.sleep(min(2.0, 0.1 * (1 + self.write_errors % 20)))
            if stopping:
                return True
            self._maybe_prune()

    def _write(self, batch: Sequence[tuple[str, Any]]) -> bool:
        """One transaction for the batch; rows that cannot be bound are dropped one by one, counted."""
        conn = self._conn
        counts = dict.fromkeys(self.written, 0)
        try:
            conn.execute("BEGIN")
            for kind, rows in batch:
                counts[kind] += getattr(self, f"_w_{kind}")(conn, rows)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # disk full, I/O error, locked: retry later
            self._rollback()
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("store_write_failed", error=self.last_error, batches=len(batch))
            return False
        except Exception as exc:  # a row it cannot store: find it, drop it, keep the rest
            self._rollback()
            log.warning("store_bad_batch", error=f"{type(exc).__name__}: {exc}", batches=len(batch))
            return self._write_rowwise(batch)
        for key, n in counts.items():
            self.written[key] += n
        if self.last_error and self.write_errors:
            log.info("store_write_recovered", after_errors=self.write_errors)
            self.last_error = None
        return True

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _write_rowwise(self, batch: Sequence[tuple[str, Any]]) -> bool:
        conn = self._conn
        counts = dict.fromkeys(self.written, 0)
        try:
            conn.execute("BEGIN")
            for kind, rows in batch:
                writer = getattr(self, f"_w_{kind}")
                for row in rows if isinstance(rows, list) else [rows]:
                    conn.execute("SAVEPOINT row")
                    try:
                        counts[kind] += writer(conn, [row])
                        conn.execute("RELEASE row")
                    except sqlite3.OperationalError:
                        raise
                    except Exception as exc:
                        conn.execute("ROLLBACK TO row")
                        conn.execute("RELEASE row")
                        self.bad_rows += 1
                        if self.bad_rows <= 10 or self.bad_rows & (self.bad_rows - 1) == 0:
                            log.error("store_bad_row", kind=kind, error=f"{type(exc).__name__}: {exc}")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        for key, n in counts.items():
            self.written[key] += n
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
                self._count_shed(kind, len(rows))
                continue
            kept.append((kind, rows))
        while total > limit and kept:
            kind, rows = kept.pop(0)
            n = len(rows) if isinstance(rows, list) else 1
            total -= n
            self._count_shed(kind, n)
        self._backlog = kept
        log.warning("store_backlog_shed", shed_rows=self.shed_rows, kept_rows=total)

    def _count_shed(self, kind: str, n: int) -> None:
        self.shed_rows += n
        self.shed_by_kind[kind] = self.shed_by_kind.get(kind, 0) + n

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
            [{k: _i64(v) for k, v in dataclasses.asdict(r).items()} for r in rows],
        )
        return len(rows)

    def _w_spans(self, conn: sqlite3.Connection, rows: list[SpanRow]) -> int:
        # A stored span is never overwritten: a second row with the same key (a reused
        # span id, a replayed batch) is ignored and counted as a conflict.  The one
        # exception is the continuation of a span this daemon closed as "interrupted"
        # at its own shutdown, recovered from the same process's heartbeat (same start
        # and name): that row completes the interrupted one.
        before = conn.total_changes
        conn.executemany(
            """INSERT INTO spans (boot_id,pid,pid_start,span_id,parent_span_id,tid,name,path,
               depth,workload_class,attrs,start_ns,end_ns,duration_ns,start_wall_ns,status,recovered,
               dev_start_ns,dev_end_ns,samples,estimated,signals)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT (boot_id, pid, pid_start, span_id) DO UPDATE SET
                 parent_span_id=excluded.parent_span_id, tid=excluded.tid, name=excluded.name,
                 path=excluded.path, depth=excluded.depth, workload_class=excluded.workload_class,
                 attrs=excluded.attrs, start_ns=excluded.start_ns, end_ns=excluded.end_ns,
                 duration_ns=excluded.duration_ns, start_wall_ns=excluded.start_wall_ns, status=excluded.status,
                 recovered=excluded.recovered, dev_start_ns=excluded.dev_start_ns, dev_end_ns=excluded.dev_end_ns,
                 samples=excluded.samples, estimated=excluded.estimated, signals=excluded.signals
               WHERE spans.status = 'interrupted' AND excluded.recovered = 1
                 AND excluded.start_ns = spans.start_ns AND excluded.name = spans.name""",
            [
                tuple(
                    map(
                        _i64,
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
                        ),
                    )
                )
                for r in rows
            ],
        )
        written = conn.total_changes - before
        self.span_conflicts += len(rows) - written
        return written

    @staticmethod
    def _w_marks(conn: sqlite3.Connection, rows: list[MarkRow]) -> int:
        conn.executemany(
            "INSERT INTO marks (boot_id,pid,pid_start,tid,t_ns,wall_ns,name,attrs) VALUES (?,?,?,?,?,?,?,?)",
            [
                tuple(map(_i64, (r.boot_id, r.pid, r.pid_start, r.tid, r.t_ns, r.wall_ns, r.name, _json(r.attrs))))
                for r in rows
            ],
        )
        return len(rows)

    @staticmethod
    def _w_samples(conn: sqlite3.Connection, rows: list[SampleRow]) -> int:
        conn.executemany(
            "INSERT INTO samples VALUES (?,?,?,?,?,?,?)",
            [
                tuple(map(_i64, (r.boot_id, r.pid, r.pid_start, r.tid, r.t_ns, r.wall_ns, _json(r.signals))))
                for r in rows
            ],
        )
        return len(rows)

    @staticmethod
    def _w_device(conn: sqlite3.Connection, rows: list[DeviceInterval]) -> int:
        n = 0
        for r in rows:
            cur = conn.execute(
                """UPDATE spans SET dev_start_ns=?, dev_end_ns=?,
                   signals=json_patch(signals, ?) WHERE boot_id=? AND pid=? AND pid_start=? AND span_id=?""",
                tuple(
                    map(
                        _i64,
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
    from .phase_energy import fit_marks  # the offline half of phase_energy: pure arithmetic

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
            FROM spans WHERE {where} GROUP BY path, workload_class ORDER BY min(start_ns)""",
        args,
    ).fetchall()
    return [dict(r) for r in rows]
