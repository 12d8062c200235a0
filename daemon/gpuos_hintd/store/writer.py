"""The store's writer: one thread owns the read-write connection (WAL, one transaction per batch).

Readers - `gpuos-hintctl`, exports, the evaluation - open the file read-only
(store.read) and never block it.  When a write fails (disk full, I/O error,
locked) nothing already queued is lost: the batch is kept, retried with
backoff, and the failure counted and logged; only when the retry backlog is
over its bound are the oldest *samples* shed (spans, the product, are shed
last), and that is counted too.

Spans are written compact (schema.py, codec.py): strings as ids into ``names``
and signals packed per batch, their keys in ``layouts``.  Both id caches live
here; ids handed out in a transaction that then fails are forgotten with it.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from ..errors import StoreError
from ..model import DeviceInterval, MarkRow, Metric, ProcessRow, SampleRow, SpanRow
from . import codec, schema
from .codec import _plain, to_json
from .read import _connect
from .schema import DB_NAME, SCHEMA_VERSION

log = structlog.get_logger("gpuos_hintd.store")

__all__ = ["DB_NAME", "SCHEMA_VERSION", "Retention", "Store", "_plain"]

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_json = to_json
#: Bound of each in-memory id cache (names, layouts); past it the cache starts over (the table keeps them).
MAX_CACHED_IDS = 200_000


def _i64(value: Any) -> Any:
    """A column value SQLite can bind: ints clamped to int64 (others pass through)."""
    if type(value) is int and not _I64_MIN <= value <= _I64_MAX:
        return _I64_MAX if value > 0 else _I64_MIN
    return value


class _Run(list):  # type: ignore[type-arg]
    """Rows of one kind from consecutive items; for spans, where each item's columns are (offset, columns)."""

    __slots__ = ("segments",)


def _runs(batch: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Consecutive items of one kind joined into one list: spans are packed per batch, so bigger is cheaper."""
    out: list[tuple[str, _Run]] = []
    for kind, rows in batch:
        rows = rows if isinstance(rows, list) else [rows]
        if not (out and out[-1][0] == kind):
            run = _Run()
            run.segments = []
            out.append((kind, run))
        run = out[-1][1]
        columns = getattr(rows, "columns", None)  # the correlator's batch (correlate.SpanBatch)
        if columns is not None:
            run.segments.append((len(run), columns))
        run.extend(rows)
    return list(out)


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
        #: String -> names id, layout spec -> (id, Layout), id -> Layout; and what the open transaction added.
        self._names: dict[str, int] = {}
        self._layouts: dict[str, int] = {}
        self._layout_by_id: dict[int, codec.Layout] = {}
        self._fresh: list[tuple[dict[Any, Any], Any]] = []
        self._conn = self._open()
        self._watch: tuple[int, int] | None = self._identity()
        self._q: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._backlog: list[tuple[str, Any]] = []
        self.written = {"processes": 0, "spans": 0, "marks": 0, "samples": 0, "device": 0, "metrics": 0}
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
            old = schema.migrate(conn)
            self._has_v1 = "spans_v1" in schema.tables(conn)
            if old > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema v{old}, newer than this daemon's v{SCHEMA_VERSION}")
            if 0 < old < SCHEMA_VERSION:
                log.info("store_migrated", path=str(self.path), from_version=old, to_version=SCHEMA_VERSION)
            self._names.clear()
            self._layouts.clear()
            self._layout_by_id.clear()
            self._fresh.clear()
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
        self._rows_in += n
        self._q.put((kind, rows))

    def register_metrics(self, metrics: Mapping[str, Metric]) -> None:
        """Record the signal catalogue (name, unit, kind, scope, help) so readers need no sampler."""
        self.submit("metrics", [(str(n), m.unit, m.kind, m.scope, m.help) for n, m in metrics.items()])

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
            for kind, rows in _runs(batch):
                counts[kind] += getattr(self, f"_w_{kind}")(conn, rows)
            self._commit()
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
        self._forget(0)

    def _forget(self, keep: int) -> None:
        """Drop the ids handed out since mark ``keep`` of the open transaction (it was rolled back)."""
        while len(self._fresh) > keep:
            cache, key = self._fresh.pop()
            value = cache.pop(key, None)
            if cache is self._layouts and value is not None:
                self._layout_by_id.pop(value, None)

    def _commit(self) -> None:
        self._conn.execute("COMMIT")
        self._fresh.clear()

    def _write_rowwise(self, batch: Sequence[tuple[str, Any]]) -> bool:
        conn = self._conn
        counts = dict.fromkeys(self.written, 0)
        try:
            conn.execute("BEGIN")
            for kind, rows in batch:
                writer = getattr(self, f"_w_{kind}")
                for row in rows if isinstance(rows, list) else [rows]:
                    conn.execute("SAVEPOINT row")
                    mark = len(self._fresh)
                    try:
                        counts[kind] += writer(conn, [row])
                        conn.execute("RELEASE row")
                    except sqlite3.OperationalError:
                        raise
                    except Exception as exc:
                        conn.execute("ROLLBACK TO row")
                        conn.execute("RELEASE row")
                        self._forget(mark)
                        self.bad_rows += 1
                        if self.bad_rows <= 10 or self.bad_rows & (self.bad_rows - 1) == 0:
                            log.error("store_bad_row", kind=kind, error=f"{type(exc).__name__}: {exc}")
            self._commit()
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
            self._conn.execute("DELETE FROM span_rows WHERE start_wall_ns < ?", (cut,))
            if self._has_v1:
                self._conn.execute("DELETE FROM spans_v1 WHERE start_wall_ns < ?", (cut,))
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

    # -- ids ------------------------------------------------------------------
    def _name(self, conn: sqlite3.Connection, text: Any) -> int:
        """The names id of a string (interned: each distinct string is stored once)."""
        got = self._names.get(text)
        if got is not None:
            return got
        if not isinstance(text, str):
            raise TypeError(f"a span's name, path, class, status and boot id are strings, not {type(text).__name__}")
        row = conn.execute("INSERT INTO names (s) VALUES (?) ON CONFLICT (s) DO NOTHING RETURNING id", (text,))
        got_row = row.fetchone()
        nid = got_row[0] if got_row else conn.execute("SELECT id FROM names WHERE s=?", (text,)).fetchone()[0]
        if len(self._names) >= MAX_CACHED_IDS:
            self._names.clear()
        self._names[text] = nid
        self._fresh.append((self._names, text))
        return nid

    def _layout(self, conn: sqlite3.Connection, spec: str | None) -> int | None:
        if spec is None:
            return None
        got = self._layouts.get(spec)
        if got is not None:
            return got
        row = conn.execute("INSERT INTO layouts (spec) VALUES (?) ON CONFLICT (spec) DO NOTHING RETURNING id", (spec,))
        got_row = row.fetchone()
        lid = got_row[0] if got_row else conn.execute("SELECT id FROM layouts WHERE spec=?", (spec,)).fetchone()[0]
        if len(self._layouts) >= MAX_CACHED_IDS:
            self._layouts.clear()
            self._layout_by_id.clear()
        self._layouts[spec] = lid
        self._fresh.append((self._layouts, spec))
        return lid

    def _layout_of(self, conn: sqlite3.Connection, lid: int | None) -> codec.Layout | None:
        if lid is None:
            return None
        lay = self._layout_by_id.get(lid)
        if lay is None:
            row = conn.execute("SELECT spec FROM layouts WHERE id=?", (lid,)).fetchone()
            if row is None:
                return None
            lay = self._layout_by_id[lid] = codec.Layout(row[0])
        return lay

    # -- rows -----------------------------------------------------------------
    def _w_spans(self, conn: sqlite3.Connection, rows: list[SpanRow]) -> int:
        # A stored span is never overwritten: a second row with the same key (a reused
        # span id, a replayed batch) is ignored and counted as a conflict.  The one
        # exception is the continuation of a span this daemon closed as "interrupted"
        # at its own shutdown, recovered from the same process's heartbeat (same start
        # and name): that row completes the interrupted one.
        packed = self._pack(rows)
        name, layout = self._name, self._layout
        rec, est = schema.RECOVERED, schema.ESTIMATED
        names = self._names
        params = []
        for r, (spec, blob, xs) in zip(rows, packed, strict=True):
            wc = r.workload_class
            params.append(
                [
                    names.get(r.boot_id) or name(conn, r.boot_id),
                    r.pid,
                    r.pid_start,
                    r.span_id,
                    r.parent_span_id,
                    r.tid,
                    names.get(r.name) or name(conn, r.name),
                    names.get(r.path) or name(conn, r.path),
                    r.depth,
                    None if wc is None else (names.get(wc) or name(conn, wc)),
                    None if r.attrs is None else _json(r.attrs),
                    r.start_ns,
                    r.end_ns - r.start_ns,
                    r.start_wall_ns,
                    names.get(r.status) or name(conn, r.status),
                    (rec if r.recovered else 0) | (est if r.estimated else 0),
                    r.dev_start_ns,
                    r.dev_end_ns,
                    r.samples,
                    None if spec is None else layout(conn, spec),
                    blob,
                    xs,
                ]
            )
        interrupted = name(conn, "interrupted")
        before = conn.total_changes
        conn.execute("SAVEPOINT spans")
        sql = self._span_sql(interrupted)
        try:
            try:
                conn.executemany(sql, params)
            except OverflowError:
                # An int past int64 (a hostile client's timestamp after the daemon's arithmetic): clamp, as v1 did.
                conn.execute("ROLLBACK TO spans")
                for p, r in zip(params, rows, strict=True):
                    start, end = _i64(r.start_ns), _i64(r.end_ns)
                    p[1:6] = map(_i64, p[1:6])
                    p[8] = _i64(p[8])
                    p[11], p[12], p[13] = start, _i64(end - start), _i64(r.start_wall_ns)
                    p[16:19] = map(_i64, p[16:19])
                conn.executemany(sql, params)
        except BaseException:
            try:
                conn.execute("ROLLBACK TO spans")
                conn.execute("RELEASE spans")
            except sqlite3.Error:
                pass
            raise
        conn.execute("RELEASE spans")
        written = conn.total_changes - before
        self.span_conflicts += len(rows) - written
        return written

    @staticmethod
    def _pack(rows: list[SpanRow]) -> list[codec.Encoded]:
        """Each span's signals packed: from the correlator's columns where it handed them, else from the dicts."""
        packed: list[codec.Encoded | None] = [None] * len(rows)
        for offset, (names, m, ints, bools, own) in getattr(rows, "segments", ()):
            try:
                got = codec.encode_columns(names, m, ints, bools, own)
            except Exception as exc:  # columns that do not add up: the dicts are the truth
                log.warning("store_columns_unusable", error=f"{type(exc).__name__}: {exc}")
                continue
            packed[offset : offset + len(got)] = got
        missing = [i for i, p in enumerate(packed) if p is None]
        if missing:
            for i, p in zip(missing, codec.encode([rows[i].signals for i in missing]), strict=True):
                packed[i] = p
        return packed  # type: ignore[return-value]

    @staticmethod
    def _span_sql(interrupted: int) -> str:
        return f"""INSERT INTO span_rows (boot,pid,pid_start,span_id,parent_span_id,tid,name,path,depth,class,attrs,
               start_ns,dur_ns,start_wall_ns,status,flags,dev_start_ns,dev_end_ns,samples,layout,sig,xs)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT (boot, pid, pid_start, span_id) DO UPDATE SET
                 parent_span_id=excluded.parent_span_id, tid=excluded.tid, name=excluded.name,
                 path=excluded.path, depth=excluded.depth, class=excluded.class,
                 attrs=excluded.attrs, start_ns=excluded.start_ns, dur_ns=excluded.dur_ns,
                 start_wall_ns=excluded.start_wall_ns, status=excluded.status, flags=excluded.flags,
                 dev_start_ns=excluded.dev_start_ns, dev_end_ns=excluded.dev_end_ns,
                 samples=excluded.samples, layout=excluded.layout, sig=excluded.sig, xs=excluded.xs
               WHERE span_rows.status = {int(interrupted)} AND (excluded.flags & {schema.RECOVERED})
                 AND excluded.start_ns = span_rows.start_ns AND excluded.name = span_rows.name"""

    def _w_metrics(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str, str, str]]) -> int:
        conn.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)", rows)
        return len(rows)

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

    def _w_device(self, conn: sqlite3.Connection, rows: list[DeviceInterval]) -> int:
        """A device interval that came after its span was stored: its figures merge into the span's."""
        n = 0
        for r in rows:
            key = (_i64(r.pid), _i64(r.pid_start), _i64(r.span_id))
            boot = self._names.get(r.boot_id)
            if boot is None:
                got = conn.execute("SELECT id FROM names WHERE s=?", (r.boot_id,)).fetchone()
                if got is None:
                    continue
                boot = got[0]
            old = conn.execute(
                "SELECT id, layout, sig, xs FROM span_rows WHERE boot=? AND pid=? AND pid_start=? AND span_id=?",
                (boot, *key),
            ).fetchone()
            if old is None:
                continue
            signals = codec.decode(self._layout_of(conn, old[1]), old[2], old[3])
            signals.update(r.signals or {})
            ((spec, blob, xs),) = codec.encode([signals])
            cur = conn.execute(
                "UPDATE span_rows SET dev_start_ns=?, dev_end_ns=?, layout=?, sig=?, xs=? WHERE id=?",
                (_i64(r.dev_start_ns), _i64(r.dev_end_ns), self._layout(conn, spec), blob, xs, old[0]),
            )
            n += cur.rowcount
        return n
