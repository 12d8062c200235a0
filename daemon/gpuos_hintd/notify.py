"""systemd notification (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Uses systemd-python's ``systemd.daemon.notify`` when it is importable, else
writes the datagram to $NOTIFY_SOCKET itself (the protocol is one line of
text per message), so the daemon behaves the same with or without the
binding.  Without systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def _raw_sender(path: str) -> Callable[[str], bool]:
    addr = "\0" + path[1:] if path.startswith("@") else path

    def send(msg: str) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall(msg.encode())
            return True
        except OSError:
            return False

    return send


def _binding_sender() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda msg: bool(daemon.notify(msg))


class Notifier:
    """Tells systemd how the daemon is doing; silent when not under systemd."""

    def __init__(self) -> None:
        path = os.environ.get("NOTIFY_SOCKET")
        self.enabled = bool(path)
        self.backend = "none"
        self._send: Callable[[str], bool] = lambda msg: False
        if path:
            binding = _binding_sender()
            if binding is not None:
                self._send, self.backend = binding, "systemd-python"
            else:
                self._send, self.backend = _raw_sender(path), "socket"
        usec = os.environ.get("WATCHDOG_USEC")
        wd_pid = os.environ.get("WATCHDOG_PID")
        ok_pid = wd_pid is None or wd_pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() and ok_pid else 0.0
        self.sent = 0

    def _notify(self, msg: str) -> None:
        if self.enabled and self._send(msg):
            self.sent += 1

    def ready(self, status: str = "") -> None:
        self._notify(f"READY=1\nMAINPID={os.getpid()}" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self._notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self._notify("WATCHDOG=1")

    def reloading(self) -> None:
        mono_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={mono_us}")

    def stopping(self) -> None:
        self._notify("STOPPING=1")
