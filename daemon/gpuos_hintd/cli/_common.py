"""What several gpuos-hintctl commands share: where the daemon is, argument types, history, JSON.

Command modules import this, never cli/main.py: main only parses and dispatches
(its table names the command modules, which it imports lazily), so nothing in
cli/ imports main back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuos_client.config import client_endpoint, control_endpoint_for, ipc_path

from ..config import ENV_STATE_DIR, default_state_dir
from ..control import DaemonUnavailable, request
from ..errors import StoreError
from ..store import open_readonly
from .fmt import safe

I64_MAX = (1 << 63) - 1
MAX_LIMIT = 10_000  # the daemon's own bound on one history answer


def control_endpoint(ns: argparse.Namespace) -> str:
    """--control, else the control socket beside the client endpoint ($GPUOS_HINT_ENDPOINT or default)."""
    if ns.control:
        return ns.control
    return control_endpoint_for(client_endpoint())


def state_dir(ns: argparse.Namespace) -> Path:
    """--state-dir, else $GPUOS_HINT_STATE_DIR, else the daemon's default."""
    if ns.state_dir:
        return Path(ns.state_dir)
    env = os.environ.get(ENV_STATE_DIR)
    return Path(env) if env else default_state_dir()


def parse_since(text: str | None) -> int | None:
    """'90s', '15m', '2h', '1d' ago, or an ISO date/time; as wall-clock ns (clamped to int64)."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    bad = f"gpuos-hintctl: --since {safe(text)!r}: use 90s, 15m, 2h, 1d or an ISO time"
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        try:
            ago = float(text[:-1]) * units[text[-1]] * 1e9
        except (ValueError, OverflowError):
            raise SystemExit(bad) from None
        return max(time.time_ns() - int(min(ago, 2.0**63)), -I64_MAX)
    from datetime import datetime

    try:
        return max(min(int(datetime.fromisoformat(text).timestamp() * 1e9), I64_MAX), -I64_MAX)
    except (ValueError, OverflowError, OSError):
        raise SystemExit(bad) from None


def pid_arg(text: str) -> int:
    """A --pid value: an integer that can be a pid (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safe(text)!r} is not a pid") from None
    if not 0 < value < 1 << 31:
        raise argparse.ArgumentTypeError(f"{value} is not a pid (1..2^31-1)")
    return value


def limit_arg(text: str) -> int:
    """A --limit value within the daemon's bound on one answer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safe(text)!r} is not a number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value}: use 1..{MAX_LIMIT}")
    return value


def history(ns: argparse.Namespace, op: str, local: Callable[[Any], Any], **query: Any) -> Any:
    """A history answer: from the daemon (any user, disclosure applied), else from the store directly.

    The store is read directly only when no daemon answers and the caller may
    read it (root, or a daemon of the caller's own); otherwise one clear line.
    """
    endpoint = None
    try:
        endpoint = control_endpoint(ns)
    except ValueError:
        pass
    sock = ipc_path(endpoint) if endpoint else None
    if endpoint is not None and not ns.state_dir and (sock is None or sock.exists()):
        try:
            request(endpoint, "ping", timeout_s=ns.timeout)  # alive? (a stale socket costs --timeout)
            # The answer itself may take the daemon's bound on a query (export: 5 s).
            return request(endpoint, op, timeout_s=max(ns.timeout, 10.0), **query)
        except DaemonUnavailable:
            pass
    path = state_dir(ns)
    try:
        conn = open_readonly(path)
    except StoreError as exc:
        raise StoreError(f"no daemon answered and {exc}") from None
    except PermissionError:
        raise StoreError(
            f"no daemon answered on {endpoint or '(no control endpoint)'} and the store in {path} is not "
            "readable by you; start the daemon (history comes through it) or run as its user"
        ) from None
    try:
        return local(conn)
    except Exception as exc:  # sqlite3.Error, OSError on an unreadable file
        raise StoreError(f"cannot read the store in {path}: {exc}") from None
    finally:
        conn.close()


def print_json(obj: Any) -> None:
    """Indented JSON on stdout (anything JSON does not know is shown as its str())."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
