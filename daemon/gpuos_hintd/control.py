"""Client side of the daemon's control socket (used by gpuos-hintctl and tests)."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import zmq

from .errors import GpuosError


class DaemonUnavailable(GpuosError):
    """No daemon answered on the control endpoint in time."""


def request(endpoint: str, op: str, timeout_s: float = 2.0, **args: Any) -> Any:
    """Send one request, wait (bounded) for its reply; return its result.

    The envelope is protocol.encode_control_request/decode_control_reply's, written out
    here: importing gpuos_client (even .protocol) reads the client's environment and may
    start its runtime, and scripts call this before they point the client at a daemon.

    An ipc:// endpoint whose socket file does not exist fails at once: zmq would
    connect lazily and wait out the whole timeout for a daemon that is not there.
    """
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        path = endpoint[len("ipc://") :]
        if not os.path.exists(path):
            raise DaemonUnavailable(
                f"no gpuos-hintd is listening: {path} does not exist "
                "(start it with `gpuos-hintd` or `systemctl start gpuos-hintd`)"
            )
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"op": op, **args}))
        if not sock.poll(int(timeout_s * 1000)):
            raise DaemonUnavailable(
                f"no gpuos-hintd answered on {endpoint} within {timeout_s:g}s "
                "(is it running? start it with `gpuos-hintd` or `systemctl start gpuos-hintd`)"
            )
        reply = msgpack.unpackb(sock.recv(), raw=False, strict_map_key=False)
    finally:
        sock.close()
    if not reply.get("ok"):
        raise GpuosError(f"daemon refused {op!r}: {reply.get('error')}")
    return reply.get("result")
