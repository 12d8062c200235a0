"""The control socket's envelope, in-process: a real Server on private ipc sockets, no daemon child."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from gpuos_client import protocol as P
from gpuos_hintd.config import Config
from gpuos_hintd.server import Server, _live_daemon_at
from gpuos_hintd.service import HintService


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    run = tmp_path / "run"
    cfg = Config(endpoint=f"ipc://{run}/hint.sock", control=f"ipc://{run}/control.sock", state_dir=tmp_path / "st")
    srv = Server(cfg, HintService(cfg, None))
    yield srv
    srv.service.worker.close()
    if srv.monitor is not None:
        srv.hint.disable_monitor()
        srv.monitor.close(0)
    srv.hint.close(0)
    srv.control.close(0)
    srv.ctx.term()


def _ask(srv: Server, body: bytes) -> dict[str, Any]:
    """Send one raw request and let the server's control drain answer it."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(srv.config.control)
        s.send(body)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            srv._drain_control()
            if s.poll(10):
                return P.decode_control_reply(s.recv())
        raise AssertionError("no reply from the control drain")
    finally:
        s.close()


def test_ping_answers_through_the_protocol_envelope(server: Server) -> None:
    reply = _ask(server, P.encode_control_request(P.OP_PING))
    assert reply["ok"] is True and reply["result"]["ok"] is True


def test_a_key_error_inside_an_op_is_that_op_failing_not_an_unknown_request(server: Server) -> None:
    def broken(req: dict[str, Any]) -> Any:
        return {}["missing"]

    server.control_ops[P.OP_STATUS] = broken
    reply = _ask(server, P.encode_control_request(P.OP_STATUS))
    assert reply["ok"] is False
    assert reply["error"].startswith("KeyError")
    assert "unknown request" not in reply["error"]


def test_unknown_ops_and_garbage_are_answered_with_the_known_ops(server: Server) -> None:
    for body in (P.encode_control_request("no_such_op"), b"\xc1garbage", P.encode_reply({"x": 1})):
        reply = _ask(server, body)
        assert reply["ok"] is False
        assert "unknown request" in reply["error"] and "ping" in reply["error"]


def test_a_live_daemon_is_recognised_by_its_ping(server: Server, tmp_path: Path) -> None:
    import threading

    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server._drain_control()
            time.sleep(0.005)

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert _live_daemon_at(server.config.control, timeout_s=2.0)
    finally:
        stop.set()
        t.join()
    assert not _live_daemon_at(f"ipc://{tmp_path}/nobody.sock", timeout_s=0.2)
