"""The wire protocol: encode/decode round trips, every reject reason, and fuzzing."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from gpuos_client import protocol as P
from hypothesis import given, settings
from hypothesis import strategies as st


def batch(events, **hdr):
    msg = {"v": 1, "pid": 10, "pst": 20, "seq": 1, "drop": 0, "ev": events}
    msg.update(hdr)
    return msgpack.packb(msg)


def test_round_trip():
    events = [
        [P.PHASE_BEGIN, 5, 7, 1, 0, "prefill", "inference.prefill", {"batch": 8}],
        [P.PHASE_END, 9, 7, 1, "ok", None],
    ]
    b = P.decode_batch(P.encode_batch(10, 20, 3, 4, events))
    assert (b.version, b.pid, b.pid_start, b.seq, b.dropped) == (1, 10, 20, 3, 4)
    assert b.events == events
    for ev in b.events:
        kind, _t, tid = P.check_event(ev)
        P.check_fields(kind, ev)
        assert tid == 7


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1\xff\x00garbage", "malformed"),
        (msgpack.packb([1, 2, 3]), "not_a_batch"),
        (batch([], v=99), "unsupported_version"),
        (batch([], v=None), "unsupported_version"),
        (batch([], pid=-1), "bad_header"),
        (batch([], pid="1"), "bad_header"),
        (batch("nope"), "bad_header"),
        (batch([[P.BYE, 1, 1]] * (P.LIMITS.max_events_per_message + 1)), "too_many_events"),
        (b"\x00" * (P.LIMITS.max_message_bytes + 1), "oversized"),
    ],
)
def test_bad_batches_have_a_reason(data, reason):
    with pytest.raises(P.ProtocolError) as exc:
        P.decode_batch(data)
    assert exc.value.reason == reason


@pytest.mark.parametrize(
    ("ev", "reason"),
    [
        ("x", "bad_event"),
        ([99, 1, 1], "unknown_kind"),
        ([P.PHASE_BEGIN, 1, 1, 1, 0], "bad_event"),
        ([P.PHASE_BEGIN, -1, 1, 1, 0, "a", None, None], "bad_event"),
        ([P.PHASE_BEGIN, 1, 1, 1, 0, "", None, None], "bad_name"),
        ([P.PHASE_BEGIN, 1, 1, 1, 0, "x" * 129, None, None], "name_too_long"),
        ([P.PHASE_BEGIN, 1, 1, 1, 0, "a", None, {f"k{i}": i for i in range(17)}], "too_many_attrs"),
        ([P.PHASE_BEGIN, 1, 1, 1, 0, "a", None, {"k": "v" * 300}], "attr_too_long"),
        ([P.PHASE_BEGIN, 1, 1, 1, 0, "a", None, {"k": [1, 2]}], "bad_attrs"),
        ([P.PHASE_END, 1, 1, 1, "weird", None], "bad_event"),
        ([P.HEARTBEAT, 1, 1, "x", {}], "bad_event"),
        ([P.HELLO, 1, 1, []], "bad_event"),
    ],
)
def test_bad_events_have_a_reason(ev, reason):
    with pytest.raises(P.ProtocolError) as exc:
        kind, _, _ = P.check_event(ev)
        P.check_fields(kind, ev)
    assert exc.value.reason == reason


def test_unknown_fields_are_ignored():
    data = msgpack.packb({"v": 1, "pid": 1, "pst": 2, "seq": 1, "drop": 0, "ev": [], "future": {"x": 1}})
    assert P.decode_batch(data).pid == 1
    # Item 6 of phase_end is the edge reading (nil here); what comes after it is a later revision's.
    ev = [P.PHASE_END, 1, 1, 3, "ok", None, None, "appended-later"]
    kind, _, _ = P.check_event(ev)
    P.check_fields(kind, ev)


RU = [90, 1_000, 2_000, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "ev",
    [
        [P.PHASE_BEGIN, 100, 1, 1, 0, "a", None, None, RU],
        [P.PHASE_BEGIN, 100, 1, 1, 0, "a", None, None, None],
        [P.PHASE_BEGIN, 90, 1, 1, 0, "a", None, None, [*RU, "later"]],
        [P.PHASE_END, 100, 1, 1, "ok", None, RU],
        [P.PHASE_END, 100, 1, 1, "ok", None, None],
        [P.PHASE_BEGIN, 100, 1, 1, 0, "a", None, None],  # an older client: no reading at all
    ],
)
def test_edge_readings_accepted(ev):
    kind, _, _ = P.check_event(ev)
    P.check_fields(kind, ev)
    assert P.check_ru(RU, 100) == tuple(RU)


@pytest.mark.parametrize(
    "ru",
    [
        "x",
        {"t": 1},
        RU[:6],
        [101, *RU[1:]],  # read after the edge: no client reuses a future reading
        [90, -1, 0, 0, 0, 0, 0],
        [90, 1.5, 0, 0, 0, 0, 0],
        [90, True, 0, 0, 0, 0, 0],
        [90, 0, 0, 0, 0, 0, 1 << 64],
        [90, 0, 0, None, 0, 0, 0],
    ],
)
def test_bad_edge_readings_are_refused(ru):
    for ev in ([P.PHASE_BEGIN, 100, 1, 1, 0, "a", None, None, ru], [P.PHASE_END, 100, 1, 1, "ok", None, ru]):
        kind, _, _ = P.check_event(ev)
        with pytest.raises(P.ProtocolError) as exc:
            P.check_fields(kind, ev)
        assert exc.value.reason == "bad_ru"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:1000:1000:4242", (4242, 1000, 1000)),
        ("", None),
        (None, None),
        ("127.0.0.1:5555", None),
        ("localhost:a:b:c", None),
    ],
)
def test_peer_address(value, expected):
    assert P.parse_peer_address(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_never_raises_anything_but_protocol_error(data):
    try:
        P.decode_batch(data)
    except P.ProtocolError:
        pass


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.floats(),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8), children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_like, max_size=10))
def test_event_checks_never_raise_anything_but_protocol_error(events):
    for ev in events:
        try:
            kind, _, _ = P.check_event(ev)
            P.check_fields(kind, ev)
        except P.ProtocolError:
            pass


def test_replies_are_encoded_by_the_protocol_and_decoded_by_the_client() -> None:
    welcome = P.decode_reply(P.encode_welcome("9.9"))
    assert welcome == {"op": P.REPLY_WELCOME, "v": P.VERSION, "daemon": "9.9", "caps": list(P.DAEMON_CAPS)}
    assert P.decode_reply(P.encode_resync()) == {"op": P.REPLY_RESYNC}
    assert P.decode_reply(P.encode_ack(7, 250, 6, "bad_name")) == {
        "op": P.REPLY_ACK,
        "seq": 7,
        "ok": 250,
        "bad": 6,
        "why": "bad_name",
    }
    assert "why" not in P.decode_reply(P.encode_ack(8, 256, 0))


def test_control_envelope_round_trips_and_refuses_what_is_not_a_request() -> None:
    req = P.decode_control_request(P.encode_control_request(P.OP_SYNC, timeout=1.5))
    assert req == {"op": P.OP_SYNC, "timeout": 1.5}
    for bad in (b"", b"\xc1", P.encode_reply({"x": 1}), b"\x91\x01", b"\x80" * (P.MAX_CONTROL_REQUEST_BYTES + 1)):
        assert P.decode_control_request(bad) is None
    assert P.decode_control_reply(P.encode_control_reply(True, {"p": Path("/x")})) == {
        "ok": True,
        "result": {"p": "/x"},
    }
    assert P.decode_control_reply(P.encode_control_reply(False, error="no")) == {"ok": False, "error": "no"}
    with pytest.raises(P.ProtocolError):
        P.decode_control_reply(b"\x01")
