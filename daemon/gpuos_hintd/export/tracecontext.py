"""Trace and span ids for exported phases, and the W3C traceparent a client may send.

Ids are *derived*, not random: a phase is identified on a node by (boot id,
pid, process start time, client span id), so the OTLP ids are a hash of that.
Exporting the same span twice (a retry after a lost response, a re-export from
the store) gives the same ids, and a backend de-duplicates instead of showing a
copy.  The trace id of a phase tree is derived from its top-level phase; a
top-level phase that carries a valid ``traceparent`` attribute takes that
trace id instead and becomes a child of the remote span.

The traceparent comes from a client, so it is validated strictly (W3C Trace
Context level 1, version 00): anything else is ignored and counted.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
TRACEPARENT_ATTR = "traceparent"


class Remote(NamedTuple):
    """The remote parent of a top-level phase: its trace id, span id and flags."""

    trace_id: bytes
    span_id: bytes
    flags: int


def parse_traceparent(value: object) -> Remote | None:
    """A valid version-00 traceparent -> Remote; anything else (wrong shape, all-zero ids) -> None."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    trace_hex, span_hex, flags = m.groups()
    if trace_hex == "0" * 32 or span_hex == "0" * 16:
        return None
    return Remote(bytes.fromhex(trace_hex), bytes.fromhex(span_hex), int(flags, 16))


def _digest(kind: bytes, boot_id: str, pid: int, pid_start: int, span_id: int) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"gpuos-hint-otlp")
    h.update(kind)
    h.update(f"\x00{boot_id}\x00{pid}\x00{pid_start}\x00{span_id}".encode())
    return h.digest()


def span_id_for(boot_id: str, pid: int, pid_start: int, span_id: int) -> bytes:
    """The 8-byte OTLP span id of a phase (never all zero)."""
    d = _digest(b"span", boot_id, pid, pid_start, span_id)[:8]
    return d if any(d) else b"\x00" * 7 + b"\x01"


def trace_id_for(boot_id: str, pid: int, pid_start: int, root_span_id: int) -> bytes:
    """The 16-byte OTLP trace id of the phase tree whose top-level phase is ``root_span_id``."""
    d = _digest(b"trace", boot_id, pid, pid_start, root_span_id)
    return d if any(d) else b"\x00" * 15 + b"\x01"
