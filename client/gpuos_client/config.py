"""Where the daemon listens, and the client's knobs, from the environment.

Shared with the daemon (which imports it) so both sides agree on defaults
without the client ever importing the daemon.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ENV_ENDPOINT = "GPUOS_HINT_ENDPOINT"
ENV_CONTROL = "GPUOS_HINT_CONTROL"
ENV_DISABLE = "GPUOS_HINT_DISABLE"

SYSTEM_RUNTIME_DIR = Path("/run/gpuos-hintd")
HINT_SOCK = "hint.sock"
CONTROL_SOCK = "control.sock"


def user_runtime_dir(uid: int | None = None) -> Path:
    """The runtime directory of a daemon run by a normal user (or by root outside systemd).

    $XDG_RUNTIME_DIR/gpuos-hintd when the session has one, else /tmp/gpuos-hintd-UID.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "gpuos-hintd"
    return Path(f"/tmp/gpuos-hintd-{os.getuid() if uid is None else uid}")


def default_runtime_dir() -> Path:
    """Root's daemon lives in /run/gpuos-hintd; a user's in its own runtime dir."""
    return SYSTEM_RUNTIME_DIR if os.geteuid() == 0 else user_runtime_dir()


def ipc(path: Path) -> str:
    return f"ipc://{path}"


def client_endpoint() -> str:
    """The endpoint a client sends hints to.

    $GPUOS_HINT_ENDPOINT wins.  Otherwise a running system daemon's socket if
    it exists, else this user's daemon's default.
    """
    env = os.environ.get(ENV_ENDPOINT)
    if env:
        return env
    system = SYSTEM_RUNTIME_DIR / HINT_SOCK
    if os.geteuid() == 0 or system.exists():
        return ipc(system)
    return ipc(user_runtime_dir() / HINT_SOCK)


def control_beside(hint_endpoint: str) -> str | None:
    """The control socket in the same directory as an ipc hint socket (None for TCP)."""
    path = ipc_path(hint_endpoint)
    return ipc(path.with_name(CONTROL_SOCK)) if path is not None else None


def control_endpoint_for(hint_endpoint: str) -> str:
    """$GPUOS_HINT_CONTROL, or the control socket beside a hint socket (ipc)."""
    env = os.environ.get(ENV_CONTROL)
    if env:
        return env
    beside = control_beside(hint_endpoint)
    if beside is None:
        raise ValueError(f"no default control endpoint for {hint_endpoint!r}: set ${ENV_CONTROL}")
    return beside


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True, slots=True)
class ClientConfig:
    """Client tuning.  Defaults are what the benchmarks were measured with (docs/benchmarks.md)."""

    endpoint: str
    disabled: bool = False
    max_buffered: int = 65536  # events held in-process before new ones are dropped (counted)
    batch_size: int = 1024  # events per message (the daemon takes up to 4096 and 1 MiB)
    batch_wake: int = 4096  # buffered events that end a batching window early
    flush_interval_s: float = 0.05  # batching window while events flow (a sparse hint goes at once)
    heartbeat_s: float = 1.0  # while phases are open
    sndhwm: int = 1000  # messages queued in libzmq
    exit_flush_s: float = 0.25  # bounded wait at exit for the daemon to acknowledge what is left
    rusage: bool = True  # read thread/process CPU counters at phase edges (exact per-span CPU)
    rusage_min_ns: int = 20_000  # at most one reading per thread per this many ns (others reuse it)

    @classmethod
    def from_env(cls) -> ClientConfig:
        return cls(
            endpoint=client_endpoint(),
            disabled=_env_bool(ENV_DISABLE, False),
            max_buffered=max(1024, int(_env_float("GPUOS_HINT_MAX_BUFFERED", 65536))),
            flush_interval_s=max(0.0005, _env_float("GPUOS_HINT_FLUSH_MS", 50.0) / 1000),
            heartbeat_s=max(0.05, _env_float("GPUOS_HINT_HEARTBEAT_S", 1.0)),
            exit_flush_s=max(0.0, _env_float("GPUOS_HINT_EXIT_FLUSH_MS", 250.0) / 1000),
            rusage=_env_bool("GPUOS_HINT_RUSAGE", True),
            rusage_min_ns=int(max(0.0, _env_float("GPUOS_HINT_RUSAGE_MIN_US", 20.0)) * 1000),
        )
