"""The embedded SQLite store: the only SQL in the daemon (schema, writer, read API).

``schema`` (tables, version, migration), ``codec`` (signals packed per span),
``writer`` (the writer thread: retry, shedding, prune) and ``read`` (read-only
connections and the queries hintctl, export, history and evaluate run).  The
names callers imported from the old ``store`` module stay importable here.
"""

from __future__ import annotations

from ..model import DeviceInterval, MarkRow, ProcessRow, SampleRow, SpanRow
from .read import (
    PHASE_SUMMARY_SIGNALS,
    SpanQuery,
    best_phase_fits,
    connect,
    metric_catalog,
    metric_kinds,
    open_readonly,
    phase_energy_fits,
    phase_energy_marks,
    phase_summary,
    phase_table,
    query_spans,
)
from .schema import DB_NAME, SCHEMA, SCHEMA_VERSION
from .writer import Retention, Store

__all__ = [
    "DB_NAME",
    "PHASE_SUMMARY_SIGNALS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "DeviceInterval",
    "MarkRow",
    "ProcessRow",
    "Retention",
    "SampleRow",
    "SpanQuery",
    "SpanRow",
    "Store",
    "best_phase_fits",
    "connect",
    "metric_catalog",
    "metric_kinds",
    "open_readonly",
    "phase_energy_fits",
    "phase_energy_marks",
    "phase_summary",
    "phase_table",
    "query_spans",
]
