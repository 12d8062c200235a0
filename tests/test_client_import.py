"""Importing the client: a submodule import (a tool reading the protocol) starts nothing and sends
nothing; the facade prepares (imports pyzmq and msgpack, design.md section 7) but starts its sender
only at the first hint.  Each case runs in a fresh interpreter and counts OS threads (/proc/self/task,
which also sees ZeroMQ's native I/O threads) and socket descriptors (/proc/self/fd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys, threading
{body}
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{{fd}}"))
    except OSError:
        pass
print(json.dumps({{
    "py_threads": threading.active_count(),
    "os_threads": len(os.listdir("/proc/self/task")),
    "sockets": sorted(t for t in fds if t.startswith("socket:")),
    "zmq": "zmq" in sys.modules,
    "msgpack": "msgpack" in sys.modules,
}}))
"""


def probe(body: str, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    # A daemon-less endpoint of our own: a hint sent here would need a socket, and nothing is listening.
    env["GPUOS_HINT_ENDPOINT"] = f"ipc://{tmp_path}/hint.sock"
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body)], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["gpuos_client.protocol", "gpuos_client.config", "gpuos_client.classes"])
def test_importing_a_submodule_starts_no_thread_and_opens_no_socket(module, tmp_path):
    st = probe(f"import {module}", tmp_path)
    assert st["py_threads"] == 1 and st["os_threads"] == 1, st
    assert st["sockets"] == [], st


def test_the_facade_prepares_at_first_use_and_starts_its_sender_only_at_the_first_hint(tmp_path):
    st = probe("import gpuos_client", tmp_path)
    assert not st["zmq"] and st["py_threads"] == 1 and st["os_threads"] == 1 and st["sockets"] == [], st
    st = probe("from gpuos_client import phase", tmp_path)
    # Prepared: pyzmq and msgpack are imported in the importing thread (a fork right after it finds
    # them whole), but there is no thread and no socket yet.
    assert st["zmq"] and st["msgpack"], st
    assert st["py_threads"] == 1 and st["os_threads"] == 1 and st["sockets"] == [], st
    # The probe can see a sender: after one hint there is a thread (and ZeroMQ's own).
    st = probe("import gpuos_client as h\nh.mark('x')\nh.flush(0.2)", tmp_path)
    assert st["py_threads"] >= 2 and st["os_threads"] > 2, st


def test_a_submodule_import_freezes_no_configuration(tmp_path):
    """A tool that imports the protocol (the daemon, a benchmark harness) and only then points
    GPUOS_HINT_ENDPOINT somewhere: the facade's first use reads the environment as it is then."""
    later = f"ipc://{tmp_path}/later.sock"
    body = (
        "import gpuos_client.protocol\n"
        f"os.environ['GPUOS_HINT_ENDPOINT'] = {later!r}\n"
        "import gpuos_client as h\n"
        "print('ENDPOINT', h.stats()['endpoint'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env["GPUOS_HINT_ENDPOINT"] = f"ipc://{tmp_path}/first.sock"
    out = subprocess.run(
        [sys.executable, "-c", "import os\n" + body], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert f"ENDPOINT {later}" in out.stdout, out.stdout


def test_the_facade_lists_and_resolves_every_public_name():
    import gpuos_client

    assert set(gpuos_client.__all__) <= set(dir(gpuos_client))
    for name in gpuos_client.__all__:
        assert getattr(gpuos_client, name) is not None
    with pytest.raises(AttributeError):
        gpuos_client.no_such_name  # noqa: B018


def test_the_client_has_no_check_for_the_daemon_package():
    """The client does not know the daemon's name: no `"gpuos_hintd" in sys.modules` guard (REVIEW R2)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "client/gpuos_client"
    for f in root.rglob("*.py"):
        assert "gpuos_hintd" not in f.read_text(), f"{f.name} names the daemon's package"
