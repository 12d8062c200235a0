"""The gpuos-hint wire protocol, version 1 (docs/protocol.md is the prose spec).

Both sides import this module: the client to encode, the daemon to decode and
validate.  It depends on msgpack only, and only when encode()/decode() run.

Why this shape
--------------
* One *batch* per ZeroMQ message: a msgpack map ``{"v", "pid", "pst", "seq",
  "drop", "ev"}``.  Batching is what keeps the client's hot path cheap: events
  are plain tuples in a deque and get packed off the hot path, 256 at a time.
* Each event is a msgpack *array* whose first two items are the kind and the
  CLOCK_MONOTONIC timestamp in ns.  Arrays cost less to pack and unpack than
  maps, and the positional layout per kind is fixed by this version; newer
  minor revisions may only *append* items, which older readers ignore.
* The pid in the header is a claim the daemon checks against the socket's
  peer credentials (SO_PEERCRED); it is never trusted on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

VERSION: Final = 1
#: Versions this module can decode.  Anything else is rejected with
#: ``unsupported_version``.
SUPPORTED_VERSIONS: Final = frozenset({1})

# --- event kinds (first item of every event array) ----------------------------
HELLO: Final = 0  # [0, t, tid, info:map]
PHASE_BEGIN: Final = 1  # [1, t, tid, span_id, parent_id, name, cls|nil, attrs|nil, ru|nil]
PHASE_END: Final = 2  # [2, t, tid, span_id, status, attrs|nil, ru|nil]
# ru (v1.1, appended): [t_read_ns, thread_cpu_ns, proc_cpu_ns, nvcsw, nivcsw, minflt, majflt]: the
# edge thread's CPU clock (CLOCK_THREAD_CPUTIME_ID), the process CPU clock and the thread's
# getrusage(RUSAGE_THREAD) counts, read at t_read_ns <= t.  The client
# reads at most once per GPUOS_HINT_RUSAGE_MIN_US per thread; an edge inside that window carries nil,
# meaning "the last reading this thread sent": thread CPU at the edge is in [cpu, cpu + t - t_read].
MARK: Final = 3  # [3, t, tid, name, attrs|nil]
CLASS: Final = 4  # [4, t, tid, cls|nil]          process-wide workload class
HEARTBEAT: Final = 5  # [5, t, tid, open:list[open_span], stats:map]
BYE: Final = 6  # [6, t, tid]

KIND_NAMES: Final = {
    HELLO: "hello",
    PHASE_BEGIN: "phase_begin",
    PHASE_END: "phase_end",
    MARK: "mark",
    CLASS: "class",
    HEARTBEAT: "heartbeat",
    BYE: "bye",
}
#: Minimum array length per kind (fields a v1 reader needs).
MIN_LEN: Final = {HELLO: 4, PHASE_BEGIN: 8, PHASE_END: 6, MARK: 5, CLASS: 4, HEARTBEAT: 5, BYE: 3}

# open_span inside a heartbeat: [span_id, parent_id, tid, t_begin, name, cls|nil, attrs|nil]
OPEN_SPAN_LEN: Final = 7

# Span end statuses a client may send.  The daemon adds its own
# ("abandoned", "lost_end", "daemon_shutdown") for spans it has to close.
STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
CLIENT_STATUSES: Final = frozenset({STATUS_OK, STATUS_ERROR})

# --- daemon -> client replies (ROUTER -> DEALER), a msgpack map -------------
REPLY_WELCOME: Final = "welcome"  # answer to hello: {"op","v","daemon","caps"}
REPLY_RESYNC: Final = "resync"  # "I don't know you (restart?): send hello+heartbeat"
#: Answer to every batch from an admitted client: {"op","seq","ok","bad","why"?}: events
#: accepted and refused.  The client's "delivered" count is the sum of "ok".
REPLY_ACK: Final = "ack"
#: Capabilities the daemon announces in its welcome.
DAEMON_CAPS: Final = ("device_marks",)
#: Mark name of a span's device interval (client/gpuos_client/device.py sends it):
#: attrs {"span", "dev_begin_ns", "dev_end_ns", "via"}, and with busy time on (cupti.py)
#: "busy_ns" (0 .. dev_end_ns - dev_begin_ns) and "busy_err_ns"; the daemon validates them.
DEVICE_MARK: Final = "__device__"

# --- control socket (hintctl -> daemon, REQ -> ROUTER), a msgpack map each way ---
#: Request: {"op": <name>, **args}.  Reply: {"ok": true, "result": ...} or
#: {"ok": false, "error": "<text>"}.  The core ops are below; daemon modules add more
#: (e.g. history queries), and an unknown op is answered with the list of known ones.
OP_PING: Final = "ping"
OP_STATUS: Final = "status"
OP_SYNC: Final = "sync"
MAX_CONTROL_REQUEST_BYTES: Final = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits both sides enforce; the daemon rejects what breaks them."""

    max_message_bytes: int = 1 << 20  # one batch, packed
    max_events_per_message: int = 4096
    max_name_len: int = 128  # phase / mark / class names, in characters
    max_depth: int = 64  # phase nesting depth
    max_attrs: int = 16  # keys per attrs map
    max_attr_key_len: int = 64
    max_attr_value_len: int = 256  # str/bytes values; numbers and bools are free
    max_open_spans: int = 4096  # per heartbeat
    max_int: int = (1 << 63) - 1  # ids, timestamps, tids: SQLite INTEGER is int64
    max_hello_bytes: int = 16384  # what the daemon keeps of a hello's info map (argv etc.)


LIMITS: Final = Limits()


class ProtocolError(ValueError):
    """A message or event that breaks the protocol.

    ``reason`` is a short, stable, machine-readable token (it becomes a label
    of the daemon's reject counters), ``detail`` a human explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """A decoded message header plus its raw (not yet validated) events."""

    version: int
    pid: int
    pid_start: int
    seq: int
    dropped: int
    events: Sequence[Sequence[Any]]


def encode_batch(pid: int, pid_start: int, seq: int, dropped: int, events: Sequence[Sequence[Any]]) -> bytes:
    """Pack one batch.  Called off the hot path, by the client's sender thread."""
    import msgpack

    return msgpack.packb(
        {"v": VERSION, "pid": pid, "pst": pid_start, "seq": seq, "drop": dropped, "ev": events},
        use_bin_type=True,
    )


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """Pack a daemon -> client reply (a small map)."""
    import msgpack

    return msgpack.packb(dict(reply), use_bin_type=True)


def encode_welcome(daemon_version: str) -> bytes:
    """The daemon's answer to a hello: protocol version, daemon version, capabilities."""
    return encode_reply({"op": REPLY_WELCOME, "v": VERSION, "daemon": daemon_version, "caps": list(DAEMON_CAPS)})


_RESYNC: bytes | None = None


def encode_resync() -> bytes:
    """ "I don't know you (did I restart?): send hello and a heartbeat" (the same bytes every time)."""
    global _RESYNC
    if _RESYNC is None:
        _RESYNC = encode_reply({"op": REPLY_RESYNC})
    return _RESYNC


def encode_ack(seq: int, ok: int, bad: int, why: str | None = None) -> bytes:
    """The answer to every batch: events accepted (``ok``) and refused (``bad``, the last ``why``)."""
    ack: dict[str, Any] = {"op": REPLY_ACK, "seq": seq, "ok": ok, "bad": bad}
    if why is not None:
        ack["why"] = why
    return encode_reply(ack)


def encode_control_request(op: str, **args: Any) -> bytes:
    """Pack one control request (gpuos-hintctl, tests, a second daemon's liveness ping)."""
    import msgpack

    return msgpack.packb({**args, "op": op}, use_bin_type=True)


def decode_control_request(data: bytes) -> dict[str, Any] | None:
    """Unpack a control request; None unless it is a bounded map with a str "op".

    Whether the op is known is the server's business (it answers with the list).
    """
    return _small_op_map(data, MAX_CONTROL_REQUEST_BYTES, max_array_len=1024)


def encode_control_reply(ok: bool, result: Any = None, error: str | None = None) -> bytes:
    """Pack the control envelope; values msgpack cannot pack become their str() (paths etc.)."""
    import msgpack

    reply: dict[str, Any] = {"ok": True, "result": result} if ok else {"ok": False, "error": str(error)}
    return msgpack.packb(reply, default=str, use_bin_type=True)


def decode_control_reply(data: bytes) -> dict[str, Any]:
    """Unpack a control reply (from the daemon: trusted to be a map, but checked)."""
    import msgpack

    reply = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(reply, dict):
        raise ProtocolError("malformed", f"control reply is {type(reply).__name__}, not a map")
    return reply


def decode_reply(data: bytes) -> dict[str, Any] | None:
    """Unpack a daemon -> client reply; None if it is not a small map with an "op"."""
    return _small_op_map(data, 65536, max_array_len=64)


def _small_op_map(data: bytes, max_bytes: int, max_array_len: int) -> dict[str, Any] | None:
    """A bounded msgpack map with a str "op" (control requests, daemon replies), else None."""
    import msgpack

    if len(data) > max_bytes:
        return None
    try:
        msg = msgpack.unpackb(
            data, raw=False, max_map_len=64, max_array_len=max_array_len, max_str_len=4096, max_bin_len=4096
        )
    except Exception:
        return None
    return msg if isinstance(msg, dict) and isinstance(msg.get("op"), str) else None


def decode_batch(data: bytes, limits: Limits = LIMITS) -> Batch:
    """Unpack and check a batch header; events are checked one by one later.

    Raises ProtocolError with reasons ``oversized``, ``malformed``,
    ``not_a_batch``, ``unsupported_version``, ``bad_header``, ``too_many_events``.
    """
    import msgpack

    if len(data) > limits.max_message_bytes:
        raise ProtocolError("oversized", f"{len(data)} bytes > {limits.max_message_bytes}")
    try:
        msg = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_array_len=limits.max_events_per_message * 2,
            max_map_len=max(limits.max_attrs * 4, 64),
            max_str_len=limits.max_message_bytes,
            max_bin_len=limits.max_message_bytes,
        )
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise ProtocolError("malformed", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("not_a_batch", f"top level is {type(msg).__name__}, not a map")
    version = msg.get("v")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise ProtocolError("unsupported_version", f"v={_short(version)}, supported {sorted(SUPPORTED_VERSIONS)}")
    pid, pst, seq, drop, events = (msg.get(k) for k in ("pid", "pst", "seq", "drop", "ev"))
    for key, value in (("pid", pid), ("pst", pst), ("seq", seq), ("drop", drop)):
        if type(value) is not int or value < 0 or value > limits.max_int:
            raise ProtocolError("bad_header", f"{key}={_short(value)} is not an int in 0..2^63-1")
    if not isinstance(events, list):
        raise ProtocolError("bad_header", "ev is not an array")
    if len(events) > limits.max_events_per_message:
        raise ProtocolError("too_many_events", f"{len(events)} > {limits.max_events_per_message}")
    return Batch(version, pid, pst, seq, drop, events)


def check_name(name: Any, limits: Limits = LIMITS, what: str = "name") -> str:
    """Validate a phase/mark/class name (also used client-side to raise ValueError)."""
    if type(name) is not str or not name:
        raise ProtocolError("bad_name", f"{what} must be a non-empty str, got {_short(name)}")
    if len(name) > limits.max_name_len:
        raise ProtocolError("name_too_long", f"{what} has {len(name)} chars > {limits.max_name_len}")
    return name


_SCALARS = (int, float, bool, type(None))
_INT64 = (-(1 << 63), (1 << 63) - 1)


def check_attrs(attrs: Any, limits: Limits = LIMITS) -> dict[str, Any] | None:
    """Validate an attrs map: str keys, scalar or short str values."""
    if attrs is None:
        return None
    if not isinstance(attrs, Mapping):
        raise ProtocolError("bad_attrs", f"attrs must be a map, got {type(attrs).__name__}")
    if len(attrs) > limits.max_attrs:
        raise ProtocolError("too_many_attrs", f"{len(attrs)} > {limits.max_attrs}")
    for key, value in attrs.items():
        if type(key) is not str or not key or len(key) > limits.max_attr_key_len:
            raise ProtocolError("bad_attrs", f"attr key {_short(key)} is not a short non-empty str")
        if isinstance(value, str | bytes):
            if len(value) > limits.max_attr_value_len:
                raise ProtocolError("attr_too_long", f"attr {key} is {len(value)} long")
        elif not isinstance(value, _SCALARS):
            raise ProtocolError("bad_attrs", f"attr {key!r} has type {type(value).__name__}")
        elif type(value) is int and not _INT64[0] <= value <= _INT64[1]:
            raise ProtocolError("bad_attrs", f"attr {key!r} is outside int64")
    return dict(attrs)


def _int(value: Any, what: str, limits: Limits = LIMITS) -> int:
    if type(value) is not int or value < 0 or value > limits.max_int:
        raise ProtocolError("bad_event", f"{what}={_short(value)} is not an int in 0..2^63-1")
    return value


def _short(value: Any, n: int = 40) -> str:
    """repr() of an untrusted value, cut short: details are logged, and a 1 MB repr is not."""
    text = repr(value) if not isinstance(value, list | dict | tuple) else f"<{type(value).__name__}>"
    return text if len(text) <= n else text[:n] + "..."


def check_status(status: Any) -> str:
    """A client's end status: exactly one of CLIENT_STATUSES (a list or map is refused, not hashed)."""
    if type(status) is not str or status not in CLIENT_STATUSES:
        raise ProtocolError("bad_event", f"status={_short(status)}")
    return status


def check_event(ev: Any, limits: Limits = LIMITS) -> tuple[int, int, int]:
    """Check the common prefix of an event; return (kind, t_ns, tid).

    Kind-specific fields are checked by :func:`check_fields`.  Unknown kinds
    raise ``unknown_kind`` (counted and skipped; the rest of the batch stands).
    """
    if not isinstance(ev, list | tuple) or len(ev) < 3:
        raise ProtocolError("bad_event", "event is not an array of >= 3 items")
    kind = ev[0]
    if type(kind) is not int or kind not in MIN_LEN:
        raise ProtocolError("unknown_kind", f"kind={_short(kind)}")
    if len(ev) < MIN_LEN[kind]:
        raise ProtocolError("bad_event", f"{KIND_NAMES[kind]} needs {MIN_LEN[kind]} items, got {len(ev)}")
    return kind, _int(ev[1], "t_ns"), _int(ev[2], "tid")


#: The optional edge reading appended to phase_begin (item 8) and phase_end (item 6), a v1
#: minor extension: ru = [t_read_ns, thread_cpu_ns, proc_cpu_ns, nvcsw, nivcsw, minflt, majflt].
_RU_FIELDS: Final = ("t_read_ns", "thread_cpu_ns", "proc_cpu_ns", "nvcsw", "nivcsw", "minflt", "majflt")
_U63: Final = (1 << 63) - 1


def check_ru(ru: Any, t_ns: int) -> tuple[int, ...] | None:
    """Validate an edge reading ``ru`` (nil, or 7 non-negative int64s with t_read_ns <= t).

    A reading from the future (t_read_ns > the edge's t) cannot be a reading the
    client reused from an earlier edge, so it is refused (``bad_ru``); the event
    is refused with it, as for any other malformed field.  Items past the seven
    known ones are ignored (a later minor revision may append).
    """
    if ru is None:
        return None
    if not isinstance(ru, list | tuple) or len(ru) < len(_RU_FIELDS):
        raise ProtocolError("bad_ru", f"ru must be an array of {len(_RU_FIELDS)} ints or nil")
    out = tuple(ru[: len(_RU_FIELDS)])
    for what, v in zip(_RU_FIELDS, out, strict=True):
        if type(v) is not int or not 0 <= v <= _U63:
            raise ProtocolError("bad_ru", f"ru.{what}={v!r} is not a non-negative int64")
    if out[0] > t_ns:
        raise ProtocolError("bad_ru", f"ru.t_read_ns={out[0]} is after the edge t={t_ns}")
    return out


def check_fields(kind: int, ev: Sequence[Any], limits: Limits = LIMITS) -> None:
    """Validate the kind-specific fields of an event already passed to check_event."""
    if kind == PHASE_BEGIN:
        _int(ev[3], "span_id")
        _int(ev[4], "parent_id")
        check_name(ev[5], limits)
        if ev[6] is not None:
            check_name(ev[6], limits, "class")
        check_attrs(ev[7], limits)
        if len(ev) > 8:
            check_ru(ev[8], ev[1])
    elif kind == PHASE_END:
        _int(ev[3], "span_id")
        check_status(ev[4])
        check_attrs(ev[5], limits)
        if len(ev) > 6:
            check_ru(ev[6], ev[1])
    elif kind == MARK:
        check_name(ev[3], limits)
        check_attrs(ev[4], limits)
    elif kind == CLASS:
        if ev[3] is not None:
            check_name(ev[3], limits, "class")
    elif kind == HEARTBEAT:
        spans = ev[3]
        if not isinstance(spans, list) or len(spans) > limits.max_open_spans:
            raise ProtocolError("bad_event", "heartbeat open-span list missing or too long")
        for s in spans:
            if not isinstance(s, list | tuple) or len(s) < OPEN_SPAN_LEN:
                raise ProtocolError("bad_event", "heartbeat open span malformed")
            _int(s[0], "span_id")
            _int(s[1], "parent_id")
            _int(s[2], "tid")
            _int(s[3], "t_begin")
            check_name(s[4], limits)
            if s[5] is not None:
                check_name(s[5], limits, "class")
            check_attrs(s[6], limits)
        stats = ev[4]
        if not isinstance(stats, Mapping):
            raise ProtocolError("bad_event", "heartbeat stats is not a map")
        if stats.get("cls") is not None:
            check_name(stats["cls"], limits, "heartbeat class")
        for key in ("dropped", "buffered"):
            if key in stats and stats[key] is not None:
                _int(stats[key], f"heartbeat {key}", limits)
    elif kind == HELLO:
        if not isinstance(ev[3], Mapping):
            raise ProtocolError("bad_event", "hello info is not a map")


#: Per-event verdicts of check_events_fast: an event's kind (it is valid), or ASK_PYTHON.
ASK_PYTHON: Final = 255


def fast_checker() -> Callable[[list[Any], Limits], bytes] | None:
    """The compiled batch checker (gpuos_client._cproto), or None where it is not built.

    ``checker(events, limits)`` returns one byte per event: the kind of a phase_begin,
    phase_end or mark that :func:`check_event` and :func:`check_fields` accept, or
    ASK_PYTHON for every other event, which the caller then checks (and refuses, with
    the reason and detail) through those two functions.  So the compiled part can only
    make accepting faster; what is refused, and why, is decided here in Python.
    """
    try:
        from . import _cproto  # type: ignore[attr-defined]
    except ImportError:
        return None
    check = _cproto.check_events

    def checker(events: list[Any], limits: Limits = LIMITS) -> bytes:
        return check(events, limits.max_name_len, limits.max_attrs, limits.max_attr_key_len, limits.max_attr_value_len)

    return checker


def check_events_py(events: list[Any], limits: Limits = LIMITS) -> bytearray:
    """The pure-Python twin of the compiled checker (same contract, see :func:`fast_checker`).

    One fused pass per event, without the calls, tuples and messages of the full
    checks: about half their cost.  It vouches only for a phase_begin, phase_end or
    mark that check_event/check_fields accept; everything else is ASK_PYTHON_PYTHON.
    """
    nmax, amax, kmax, vmax = limits.max_name_len, limits.max_attrs, limits.max_attr_key_len, limits.max_attr_value_len
    out = bytearray(len(events))
    int_, str_, list_, dict_ = int, str, list, dict

    def attrs_ok(a: Any) -> bool:
        if a is None:
            return True
        if type(a) is not dict_ or len(a) > amax:
            return False
        for k, v in a.items():
            if type(k) is not str_ or not 0 < len(k) <= kmax:
                return False
            tv = type(v)
            if tv is str_ or tv is bytes:
                if len(v) > vmax:
                    return False
            elif tv is int_:
                if not _INT64[0] <= v <= _INT64[1]:
                    return False
            elif not (v is None or tv is bool or tv is float):
                return False
        return True

    def ru_ok(r: Any, t: int) -> bool:
        if r is None:
            return True
        if (type(r) is not list_ and type(r) is not tuple) or len(r) < 7:
            return False
        for v in r[:7]:
            if type(v) is not int_ or not 0 <= v <= _U63:
                return False
        return r[0] <= t

    for i, ev in enumerate(events):
        out[i] = ASK_PYTHON
        if (type(ev) is not list_ and type(ev) is not tuple) or len(ev) < 5:
            continue
        k, t, tid = ev[0], ev[1], ev[2]
        if (
            type(k) is not int_
            or type(t) is not int_
            or type(tid) is not int_
            or not (0 <= t <= _U63 and 0 <= tid <= _U63)
        ):
            continue
        n = len(ev)
        if k == 1:
            sid, par, name, cls = ev[3], ev[4], ev[5], ev[6]
            if (
                n < 8
                or type(sid) is not int_
                or type(par) is not int_
                or not (0 <= sid <= _U63 and 0 <= par <= _U63)
                or type(name) is not str_
                or not 0 < len(name) <= nmax
                or (cls is not None and (type(cls) is not str_ or not 0 < len(cls) <= nmax))
                or not attrs_ok(ev[7])
                or (n > 8 and not ru_ok(ev[8], t))
            ):
                continue
        elif k == 2:
            sid, st = ev[3], ev[4]
            if (
                n < 6
                or type(sid) is not int_
                or not 0 <= sid <= _U63
                or type(st) is not str_
                or (st != "ok" and st != "error")
                or not attrs_ok(ev[5])
                or (n > 6 and not ru_ok(ev[6], t))
            ):
                continue
        elif k == 3:
            name = ev[3]
            if type(name) is not str_ or not 0 < len(name) <= nmax or not attrs_ok(ev[4]):
                continue
        else:
            continue
        out[i] = k
    return out


def parse_peer_address(value: str | None) -> tuple[int, int, int] | None:
    """Parse libzmq's IPC "Peer-Address" property, ``localhost:UID:GID:PID``.

    libzmq fills it from SO_PEERCRED at connect() time.  Returns
    (pid, uid, gid), or None when the transport has no credentials (TCP).
    """
    if not value:
        return None
    parts = value.rsplit(":", 3)
    if len(parts) != 4:
        return None
    try:
        uid, gid, pid = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
    return pid, uid, gid
