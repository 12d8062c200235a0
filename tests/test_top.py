"""`gpuos-hintctl top` in a real pseudo-terminal, read through a terminal emulator (pyte):
what is on screen with live clients, a terminal too small, the daemon going away and
coming back, q and Ctrl-C quitting with status 0; and `--once` without a terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pyte = pytest.importorskip("pyte")

HINTCTL = str(Path(sys.executable).with_name("gpuos-hintctl"))

LIVE_CLIENT = """
import time
import gpuos_client as h
h.workload_class("inference.decode")
with h.phase("serve"):
    end = time.monotonic() + 20
    while time.monotonic() < end:
        with h.phase("decode"):
            time.sleep(0.005)
"""


class PtyTop:
    """`gpuos-hintctl top` on the slave side of a pty; the master side feeds a pyte screen."""

    def __init__(self, env: dict[str, str], cols: int = 120, rows: int = 30, *argv: str) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        pid, fd = pty.fork()
        if pid == 0:  # child: the slave is its controlling terminal
            try:
                os.execve(HINTCTL, [HINTCTL, "top", *argv], {**env, "TERM": "xterm"})
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.resize(cols, rows)
        self.status: int | None = None

    def resize(self, cols: int, rows: int) -> None:
        self.screen.resize(rows, cols)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def pump(self, timeout: float = 0.1) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child is gone
                return
            self.stream.feed(data)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, pred: Callable[[str], Any], timeout: float = 10.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if pred(self.text()):
                return self.text()
        raise AssertionError(f"screen never showed {what}:\n{self.text()}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait_exit(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"top did not exit:\n{self.text()}")

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                os.close(self.fd)
            except OSError:
                pass


def test_top_live_screen_resize_daemon_loss_and_q(daemon_factory: Any) -> None:
    d = daemon_factory()
    client = d.client(LIVE_CLIENT, wait=False)
    top = PtyTop(d.env, 120, 30, "--interval", "0.3")
    try:
        screen = top.wait_for(
            lambda s: "serve/decode" in s and "SPANS/S" in s and "serve " in s,
            what="the live client's phases",
        )
        assert "gpuos-hintd" in screen.splitlines()[0]
        assert "inference.decode" in screen
        assert f"{client.pid}" in screen  # the client row, with its open phases
        # a rate, once two snapshots exist: spans/s of serve/decode is a number > 0
        screen = top.wait_for(
            lambda s: any(line.startswith("serve/decode") and _float(line.split()[2]) > 10 for line in s.splitlines()),
            what="a spans/s rate",
        )
        assert "q quit" in screen.splitlines()[-1]
        # top's own client connection (importing the client library) is not listed
        assert f" {top.pid} " not in screen

        top.resize(30, 5)
        top.wait_for(lambda s: "terminal too small (30x5)" in s, what="the too-small notice")
        top.resize(100, 12)  # small but usable: everything cut to fit
        screen = top.wait_for(lambda s: "q quit" in s and "PHASE" in s, what="a cut-down screen")
        assert all(len(line.rstrip()) <= 100 for line in screen.splitlines())

        assert d.stop() == 0
        top.wait_for(lambda s: "daemon not responding" in s, what="daemon not responding")
        top.wait_for(lambda s: "retrying" in s and "gpuos-hintd" in s, what="last screen kept")
        d2 = daemon_factory()  # same sockets: top reconnects by itself
        top.wait_for(lambda s: "daemon not responding" not in s and f"pid {d2.proc.pid}" in s, what="reconnect")

        top.send(b"q")
        assert top.wait_exit() == 0
    finally:
        top.kill()
        client.kill()
        client.wait()


def test_top_ctrl_c_quits_cleanly_without_daemon(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env.update(
        GPUOS_HINT_ENDPOINT=f"ipc://{tmp_path}/hint.sock",
        GPUOS_HINT_CONTROL=f"ipc://{tmp_path}/control.sock",
        GPUOS_HINT_DISABLE="1",
    )
    top = PtyTop(env, 80, 24, "--interval", "0.2")
    try:
        top.wait_for(lambda s: "daemon not responding" in s, what="daemon not responding")
        top.send(b"\x03")
        assert top.wait_exit() == 0
    finally:
        top.kill()


def test_top_once_plain_snapshot(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.client(
        "import gpuos_client as h\nh.workload_class('batch.io')\n"
        "for _ in range(3):\n    with h.phase('load'):\n        pass\nh.flush()\n"
    )
    d.wait_for(lambda: d.status()["counters"].get("spans_closed", 0) >= 3, what="3 spans")
    env = {**d.env, "GPUOS_HINT_DISABLE": "1"}
    res = subprocess.run(
        [HINTCTL, "top", "--once", "--interval", "0.2"], env=env, capture_output=True, text=True, timeout=20
    )
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout
    line = next(line for line in res.stdout.splitlines() if line.startswith("load"))
    assert line.split()[1] == "batch.io" and line.split()[3] == "3"
    d.stop()
    res = subprocess.run([HINTCTL, "top", "--once"], env=env, capture_output=True, text=True, timeout=20)
    assert res.returncode == 1 and "no gpuos-hintd is listening" in res.stderr
    res = subprocess.run(
        [HINTCTL, "top"], env=env, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
    )
    assert res.returncode == 2 and "needs a terminal" in res.stderr


def _float(s: str) -> float:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return 0.0
