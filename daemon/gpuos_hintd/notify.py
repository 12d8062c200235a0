"""systemd notification (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Uses systemd-python's ``systemd.daemon.notify`` when it is importable, else
writes the datagram to $NOTIFY_SOCKET itself (the protocol is newline-separated
KEY=VALUE assignments in one datagram, see sd_notify(3)), so the daemon behaves
the same with or without the binding.  Without systemd ($NOTIFY_SOCKET unset)
every call is a no-op.  A failed send is counted, never raised: losing a
STATUS= line must not take the daemon down (a lost WATCHDOG=1 is what the
watchdog is for).

The unit runs with Type=notify and ExecReload=kill -HUP (Type=notify-reload
needs systemd >= 253); RELOADING=1 still carries MONOTONIC_USEC, which
notify-reload requires and older managers ignore.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

Sender = Callable[[str], bool]


def _socket_address(path: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a connect() address: a path, or @name for the abstract namespace."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path
    return None  # vsock:... and other forms: not for a local daemon


def raw_sender(path: str) -> Sender | None:
    """sd_notify without libsystemd: one AF_UNIX datagram per message."""
    addr = _socket_address(path)
    if addr is None:
        return None

    def send(msg: str) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                return s.send(msg.encode()) > 0
        except OSError:
            return False

    return send


def binding_sender() -> Sender | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda msg: bool(daemon.notify(msg))


class Notifier:
    """Tells systemd how the daemon is doing; silent when not under systemd.

    ``binding=False`` forces the raw socket sender (tests use it to check both).
    """

    def __init__(self, binding: bool = True) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "")
        self.backend = "none"
        self._send: Sender | None = None
        if path:
            sender = binding_sender() if binding else None
            if sender is not None:
                self._send, self.backend = sender, "systemd-python"
            else:
                self._send = raw_sender(path)
                self.backend = "socket" if self._send is not None else "none"
        self.enabled = self._send is not None
        self.watchdog_s = watchdog_interval_s()
        self.sent = 0
        self.failed = 0

    def _notify(self, msg: str) -> bool:
        if self._send is None:
            return False
        if self._send(msg):
            self.sent += 1
            return True
        self.failed += 1
        return False

    def ready(self, status: str = "") -> bool:
        return self._notify(f"READY=1\nMAINPID={os.getpid()}" + (f"\nSTATUS={_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self._notify(f"STATUS={_line(text)}")

    def watchdog(self) -> bool:
        return self._notify("WATCHDOG=1")

    def reloading(self) -> bool:
        mono_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._notify(f"RELOADING=1\nMONOTONIC_USEC={mono_us}")

    def stopping(self) -> bool:
        return self._notify("STOPPING=1")


def _line(text: str) -> str:
    """STATUS= is one line: a newline would start a new (bogus) assignment."""
    return " ".join(text.splitlines())


def watchdog_interval_s() -> float:
    """WatchdogSec= as seconds, 0.0 when off or meant for another process (sd_watchdog_enabled)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return 0.0
    return int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else 0.0
