"""The store's schema, its version, and the one-step migration from v1.

v2 (this version) keeps a span in ``span_rows``: integer columns, its strings
(boot id, name, path, workload class, status) as ids into ``names``, its end as
a duration, and its signals packed (codec.py) with their keys in ``layouts``.
One index (by wall time) besides the span key.  ``metrics`` is the signal
catalogue (name, unit, kind, scope, help) the daemon writes at start, so a
reader needs no sampler to know a counter from a gauge.

``spans`` stays as a view with v1's columns, less ``signals`` (a plain SQLite
connection cannot decode them); store.read's connections get a temporary
``spans`` view *with* ``signals``, so SQL written against v1 reads both.

Migration (daemon, on open): a v1 file's ``spans`` table is renamed
``spans_v1`` and kept as it is (no rewrite: O(1) whatever its size); the views
show its rows before the new ones (ids below 0, in their old order).  A v1 file
opened read-only (a recorded store) is read as it is: its ``spans`` is a table.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2
DB_NAME = "gpuos-hint.db"
#: v1 span ids as seen through the views of a migrated store: below every v2 id, in the same order.
V1_ID_OFFSET = 1 << 40

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (
    boot_id TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
    uid INTEGER, gid INTEGER, comm TEXT, cmdline TEXT, cgroup TEXT, unit TEXT,
    workload_class TEXT, first_seen_wall_ns INTEGER, last_seen_wall_ns INTEGER,
    exit_reason TEXT, events INTEGER DEFAULT 0, client_dropped INTEGER DEFAULT 0,
    PRIMARY KEY (boot_id, pid, pid_start)
);
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, s TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS layouts (id INTEGER PRIMARY KEY, spec TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS metrics (
    name TEXT PRIMARY KEY, unit TEXT NOT NULL, kind TEXT NOT NULL, scope TEXT NOT NULL, help TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS span_rows (
    id INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL, span_id INTEGER NOT NULL,
    parent_span_id INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL, path INTEGER NOT NULL,
    depth INTEGER NOT NULL, class INTEGER, attrs TEXT,
    start_ns INTEGER NOT NULL, dur_ns INTEGER NOT NULL, start_wall_ns INTEGER NOT NULL,
    status INTEGER NOT NULL, flags INTEGER NOT NULL DEFAULT 0,
    dev_start_ns INTEGER, dev_end_ns INTEGER, samples INTEGER NOT NULL DEFAULT 0,
    layout INTEGER, sig BLOB, xs TEXT,
    UNIQUE (boot, pid, pid_start, span_id)
);
CREATE INDEX IF NOT EXISTS span_rows_by_wall ON span_rows (start_wall_ns);
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

#: Flags of a span row.
RECOVERED, ESTIMATED = 1, 2

_V1_COLUMNS = (
    "id, boot_id, pid, pid_start, span_id, parent_span_id, tid, name, path, depth, workload_class, attrs, "
    "start_ns, end_ns, duration_ns, start_wall_ns, status, recovered, dev_start_ns, dev_end_ns, samples, estimated"
)


def span_view(with_signals: bool, has_v1: bool) -> str:
    """The SELECT behind ``spans``: v2 rows with v1's columns (and v1 rows of a migrated store)."""
    sig = ", gpuos_signals(r.layout, r.sig, r.xs) AS signals" if with_signals else ""
    v2 = f"""SELECT r.id AS id, b.s AS boot_id, r.pid AS pid, r.pid_start AS pid_start, r.span_id AS span_id,
        r.parent_span_id AS parent_span_id, r.tid AS tid, n.s AS name, p.s AS path, r.depth AS depth,
        c.s AS workload_class, r.attrs AS attrs, r.start_ns AS start_ns, r.start_ns + r.dur_ns AS end_ns,
        max(r.dur_ns, 0) AS duration_ns, r.start_wall_ns AS start_wall_ns, st.s AS status,
        r.flags & 1 AS recovered, r.dev_start_ns AS dev_start_ns, r.dev_end_ns AS dev_end_ns,
        r.samples AS samples, (r.flags >> 1) & 1 AS estimated{sig}
        FROM span_rows r JOIN names b ON b.id = r.boot JOIN names n ON n.id = r.name
        JOIN names p ON p.id = r.path JOIN names st ON st.id = r.status LEFT JOIN names c ON c.id = r.class"""
    if not has_v1:
        return v2
    cols = _V1_COLUMNS.replace("id, boot_id", f"id - {V1_ID_OFFSET} AS id, boot_id", 1)
    return f"{v2} UNION ALL SELECT {cols}{', signals' if with_signals else ''} FROM spans_v1"


def tables(conn: sqlite3.Connection) -> dict[str, str]:
    """{name: type} of the file's tables and views."""
    return {r[0]: r[1] for r in conn.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table','view')")}


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a store up to SCHEMA_VERSION (in one transaction); returns the version it had (0 = new)."""
    have = tables(conn)
    old = 0
    if "meta" in have:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        old = int(row[0]) if row else 0
    if old > SCHEMA_VERSION:
        return old
    conn.execute("BEGIN IMMEDIATE")
    try:
        if have.get("spans") == "table":  # v1: its spans move aside, untouched
            conn.execute("ALTER TABLE spans RENAME TO spans_v1")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        has_v1 = "spans_v1" in tables(conn)
        conn.execute("DROP VIEW IF EXISTS spans")
        conn.execute(f"CREATE VIEW spans AS {span_view(False, has_v1)}")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old
