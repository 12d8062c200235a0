"""sd_notify sender against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpuos_hintd import notify


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield s
    s.close()


def recv(s: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in s.recv(4096).decode().splitlines())


def test_raw_messages(listener: socket.socket) -> None:
    n = notify.Notifier(binding=False)
    assert (n.enabled, n.backend) == (True, "socket")
    assert n.ready("3 clients\nsecond line")
    assert recv(listener) == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "3 clients second line"}
    n.status("busy")
    assert recv(listener) == {"STATUS": "busy"}
    n.watchdog()
    assert recv(listener) == {"WATCHDOG": "1"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    msg = recv(listener)
    assert msg["RELOADING"] == "1" and before <= int(msg["MONOTONIC_USEC"]) <= before + 1_000_000
    n.stopping()
    assert recv(listener) == {"STOPPING": "1"}
    assert (n.sent, n.failed) == (5, 0)


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"gpuos-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.Notifier(binding=False).watchdog()
        assert recv(s) == {"WATCHDOG": "1"}


def test_binding_if_installed(listener: socket.socket) -> None:
    if notify.binding_sender() is None:
        pytest.skip("systemd-python not installed (pip install systemd-python; needs libsystemd-dev)")
    n = notify.Notifier()
    assert n.backend == "systemd-python"
    assert n.ready("via libsystemd")
    assert recv(listener)["STATUS"] == "via libsystemd"


def test_lost_socket_is_counted_not_raised(listener: socket.socket, tmp_path: Path) -> None:
    n = notify.Notifier(binding=False)
    (tmp_path / "notify.sock").unlink()
    assert not n.status("nobody listens")
    assert (n.sent, n.failed) == (0, 1)


def test_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = notify.Notifier()
    assert (n.enabled, n.backend) == (False, "none")
    assert not n.ready() and not n.watchdog()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [("3000000", None, 3.0), ("3000000", "self", 3.0), ("3000000", "other", 0.0), ("0", None, 0.0), ("x", None, 0.0)],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expected: float) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        # "other": a pid that is not ours.  Not a literal 1: in a container whose entry point is
        # ./test.sh, pytest itself is PID 1 (and then WATCHDOG_PID=1 is meant for it).
        other = 2 if os.getpid() == 1 else 1
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() if pid == "self" else other))
    assert notify.watchdog_interval_s() == expected
