"""One refusal type: the daemon's Refused is the protocol's ProtocolError (and a GpuosError), so the
service answers a malformed batch and a refused one through the same except clause: counted by
reason, and the sender told why."""

from __future__ import annotations

import os

import pytest
from gpuos_client import protocol as P
from gpuos_hintd import clients, procfs
from gpuos_hintd.config import Config
from gpuos_hintd.errors import GpuosError, Refused
from gpuos_hintd.service import HintService

PID = os.getpid()
PST = procfs.start_ticks(PID)


def test_refused_is_the_protocols_reason_error_and_a_gpuos_error():
    exc = Refused("rate_limited", "pid 1 over 10 ev/s")
    assert isinstance(exc, P.ProtocolError) and isinstance(exc, GpuosError)
    assert (exc.reason, exc.detail, str(exc)) == (
        "rate_limited",
        "pid 1 over 10 ev/s",
        "rate_limited: pid 1 over 10 ev/s",
    )
    assert clients.Rejected is Refused  # the name clients.py and the service raise it by


def test_verify_peer_refuses_with_a_protocol_error():
    with pytest.raises(P.ProtocolError) as info:
        clients.verify_peer(PID + 1_000_000, PST, (PID, os.getuid(), os.getgid()))
    assert info.value.reason == "pid_mismatch"


@pytest.fixture
def svc(tmp_path):
    s = HintService(Config(state_dir=tmp_path / "state"), None)
    yield s
    s.shutdown()


def test_a_refused_batch_and_a_malformed_one_are_counted_and_answered_alike(svc):
    peer = (PID, os.getuid(), os.getgid())
    # Admission refuses it (the batch claims another pid than the socket's peer): Refused.
    (reply,) = svc.ingest(P.encode_batch(PID + 1_000_000, PST, 1, 0, [[P.HELLO, 1, 1, {}]]), peer, b"r")
    ack = P.decode_reply(reply)
    assert ack["op"] == P.REPLY_ACK and ack["why"] == "pid_mismatch" and ack["bad"] == 1
    # An event the protocol refuses (unknown kind) in an admitted batch: ProtocolError, same path.
    svc.ingest(P.encode_batch(PID, PST, 1, 0, [[P.HELLO, 1, 1, {}], [99, 2, 1]]), peer, b"r")
    assert svc.rejected["pid_mismatch"] == 1 and svc.rejected["unknown_kind"] == 1
    assert "internal_error" not in svc.rejected
