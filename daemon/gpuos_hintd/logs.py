"""structlog set-up: JSON lines to stderr by default, journald under systemd.

Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) each
event goes to the journal as one entry with structured fields: MESSAGE
("event key=value ..."), PRIORITY (from the level), SYSLOG_IDENTIFIER=gpuos-hintd,
GPUOS_EVENT, and every other key upper-cased with a GPUOS_ prefix, so
`journalctl -u gpuos-hintd GPUOS_EVENT=client_connected` and `-o json` work.
The entry is sent with systemd-python's ``systemd.journal.send`` when it
imports, else over journald's native protocol on /run/systemd/journal/socket
(the same datagram format libsystemd writes, see systemd.journal-fields(7)
and https://systemd.io/JOURNAL_NATIVE_PROTOCOL/).  An entry the journal does
not take is written to stderr as JSON instead, never dropped silently.

Outside systemd: JSON to stderr, or a console renderer on a terminal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from .safetext import safe, safe_multiline

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "gpuos-hintd"
_SKIP = ("timestamp", "level")  # the journal has its own timestamp; the level is PRIORITY
# structlog's call-site keys -> the journal's own fields (where the event was logged)
_CODE = {"pathname": "CODE_FILE", "lineno": "CODE_LINE", "func_name": "CODE_FUNC"}

JournalSend = Callable[[Mapping[str, str | bytes]], None]


def field_name(key: str) -> str:
    """A journal field name: [A-Z0-9_], starting with a letter, at most 64 bytes."""
    name = "GPUOS_" + re.sub(r"[^A-Z0-9_]", "_", key.upper())
    return name[:64]


def field_value(value: Any) -> str | bytes:
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, default=str)


def journal_fields(method: str, event: Mapping[str, Any]) -> dict[str, str | bytes]:
    """The journal entry for one structlog event (MESSAGE, PRIORITY, GPUOS_*)."""
    name = str(event.get("event", ""))
    rest = [(k, v) for k, v in event.items() if k != "event" and k not in _SKIP and k not in _CODE]
    message = " ".join([name] + [f"{k}={v}" for k, v in rest if k != "exception"])
    if "exception" in event:
        message += "\n" + str(event["exception"])
    fields: dict[str, str | bytes] = {
        "MESSAGE": message,
        "PRIORITY": str(PRIORITY.get(method, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "GPUOS_EVENT": name,
    }
    for key, journal_key in _CODE.items():
        if key in event:
            fields[journal_key] = str(event[key])
    for key, value in rest:
        if value is not None:  # an absent field is the journal's "no value"
            fields[field_name(key)] = field_value(value)
    return fields


# ----------------------------------------------------------------- senders
def encode_native(fields: Mapping[str, str | bytes]) -> bytes:
    """journald's native datagram: KEY=value lines; a value with a newline is length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace") if isinstance(value, str) else value
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def native_sender(path: str = JOURNAL_SOCKET) -> JournalSend | None:
    """Send entries to journald without libsystemd; None if there is no journal socket."""
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(fields: Mapping[str, str | bytes]) -> None:
        data = encode_native(fields)
        try:
            sock.sendto(data, path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big for one datagram
                raise
            _send_memfd(sock, path, data)

    return send


def _send_memfd(sock: socket.socket, path: str, data: bytes) -> None:
    """A large entry goes as a sealed memfd passed with SCM_RIGHTS (what libsystemd does)."""
    fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, path)
    finally:
        os.close(fd)


def binding_sender() -> JournalSend | None:
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None

    def send(fields: Mapping[str, str | bytes]) -> None:
        rest: dict[str, Any] = dict(fields)
        message = rest.pop("MESSAGE")
        if "CODE_LINE" in rest:  # the binding formats it with %d
            rest["CODE_LINE"] = int(rest["CODE_LINE"])
        journal.send(message, **rest)

    return send


def journal_sender(binding: bool = True, path: str = JOURNAL_SOCKET) -> tuple[JournalSend, str] | None:
    """The best way to reach journald here: (send, "systemd-python" | "native"), or None."""
    if binding and path == JOURNAL_SOCKET:
        send = binding_sender()
        if send is not None:
            return send, "systemd-python"
    send = native_sender(path)
    return (send, "native") if send is not None else None


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd connected ($JOURNAL_STREAM=DEV:INODE)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _journald_processor(send: JournalSend) -> Callable[[Any, str, dict[str, Any]], Any]:
    fallback = structlog.processors.JSONRenderer()

    def to_journal(logger: Any, method: str, event: dict[str, Any]) -> Any:
        try:
            send(journal_fields(method, event))
        except Exception as exc:  # the journal refused it: keep the entry, on stderr
            event["journal_error"] = f"{type(exc).__name__}: {exc}"
            return fallback(logger, method, event)
        raise structlog.DropEvent

    return to_journal


# ----------------------------------------------------------------- set-up
_CALLSITE = (
    structlog.processors.CallsiteParameter.PATHNAME,
    structlog.processors.CallsiteParameter.LINENO,
    structlog.processors.CallsiteParameter.FUNC_NAME,
)
state: dict[str, str] = {"format": "", "journal": ""}


def setup(level: str = "info", fmt: str = "auto", *, binding: bool = True, journal_socket: str = JOURNAL_SOCKET) -> str:
    """Configure structlog; returns the format chosen (auto resolves to one).

    ``binding=False`` and ``journal_socket`` are for tests (force the native
    protocol, or point it at another socket).
    """
    sender = None
    if fmt == "journald" or (fmt == "auto" and stderr_is_journal()):
        sender = journal_sender(binding, journal_socket)
    if fmt == "auto":
        fmt = "journald" if sender is not None else ("console" if _isatty() else "json")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if fmt == "journald" and sender is not None:
        processors.append(structlog.processors.CallsiteParameterAdder(list(_CALLSITE)))
        processors.append(_journald_processor(sender[0]))
        state["journal"] = sender[1]
    elif fmt == "console":
        processors.append(_escape_for_terminal)
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        fmt = "json"  # also when journald was asked for but there is no journal
        processors.append(structlog.processors.JSONRenderer())
    state["format"] = fmt
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return fmt


def _escape_for_terminal(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Console lines go to a terminal: every string (keys too) through safe(), repr'd values too.

    Log fields carry untrusted text (phase names in reject details, comm, cmdline);
    a traceback keeps its newlines but nothing else.
    """
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key == "exception" and isinstance(value, str):
            out[key] = safe_multiline(value)
        elif isinstance(value, str):
            out[safe(key)] = safe(value)
        elif isinstance(value, int | float | bool) or value is None:
            out[safe(key)] = value
        else:
            out[safe(key)] = safe(repr(value))
    return out


def _isatty() -> bool:
    with contextlib.suppress(ValueError, AttributeError):
        return sys.stderr.isatty()
    return False
