"""structlog set-up: JSON lines to stderr by default, journald under systemd.

Under systemd (JOURNAL_STREAM set and systemd-python importable) each event
goes to the journal with structured fields (PRIORITY, GPUOS_EVENT, and every
key=value as an upper-cased field), so `journalctl -u gpuos-hintd
GPUOS_EVENT=client_rejected` works.  Otherwise JSON to stderr, or a console
renderer on a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _journald_processor() -> Any | None:
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    prio = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}

    def to_journal(_logger: Any, method: str, event: dict[str, Any]) -> str:
        fields = {
            f"GPUOS_{k.upper()}" if k != "event" else "GPUOS_EVENT": str(v)
            for k, v in event.items()
            if k not in ("timestamp", "level")
        }
        msg = " ".join(
            [str(event.get("event", ""))]
            + [f"{k}={v}" for k, v in event.items() if k not in ("event", "timestamp", "level")]
        )
        journal.send(msg, PRIORITY=str(prio.get(method, 6)), SYSLOG_IDENTIFIER="gpuos-hintd", **fields)
        raise structlog.DropEvent

    return to_journal


def setup(level: str = "info", fmt: str = "auto") -> str:
    """Configure structlog; returns the format chosen (auto resolves to one)."""
    if fmt == "auto":
        if os.environ.get("JOURNAL_STREAM") and _journald_processor() is not None:
            fmt = "journald"
        else:
            fmt = "console" if sys.stderr.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    journald = _journald_processor() if fmt == "journald" else None
    if journald is not None:
        processors.append(journald)
    elif fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        fmt = "json" if fmt == "journald" else fmt
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return fmt
