"""journald output over the native protocol, received on a real AF_UNIX datagram socket.

The booted-systemd check (fields really in the journal) is in test_systemd.py.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpuos_hintd import logs


def decode_native(data: bytes) -> dict[str, str]:
    """The inverse of journald's native format (KEY=value / KEY\\n<u64 len>value)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            out[line.decode()] = data[nl + 9 : nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return out


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(2)
    yield path, s
    s.close()


def receive(s: socket.socket) -> dict[str, str]:
    fds = array.array("i")
    data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in anc:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(payload[: fds.itemsize])
    if fds:  # a big entry: a sealed memfd
        with os.fdopen(fds[0], "rb") as f:
            f.seek(0)  # the sender's offset is shared; journald itself maps the memfd
            data = f.read()
    return decode_native(data)


def test_fields_and_priority(journal: tuple[str, socket.socket]) -> None:
    path, s = journal
    send = logs.native_sender(path)
    assert send is not None
    send(logs.journal_fields("warning", {"event": "client_rejected", "pid": 42, "why": "a\nb", "x.y-z": None}))
    entry = receive(s)
    assert entry == {
        "MESSAGE": "client_rejected pid=42 why=a\nb x.y-z=None",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "gpuos-hintd",
        "GPUOS_EVENT": "client_rejected",
        "GPUOS_PID": "42",
        "GPUOS_WHY": "a\nb",
    }


def test_field_names_are_valid() -> None:
    assert logs.field_name("x.y-z") == "GPUOS_X_Y_Z"
    assert len(logs.field_name("k" * 100)) == 64
    assert logs.field_value({"a": [1, 2]}) == '{"a": [1, 2]}' and logs.field_value(True) == "true"


def test_big_entry_goes_as_memfd(journal: tuple[str, socket.socket]) -> None:
    path, s = journal
    send = logs.native_sender(path)
    assert send is not None
    send(logs.journal_fields("info", {"event": "big", "blob": "x" * 400_000}))
    assert len(receive(s)["GPUOS_BLOB"]) == 400_000


CHILD = textwrap.dedent(
    """
    import sys, structlog
    from gpuos_hintd import logs
    fmt = logs.setup("info", "auto", binding=False, journal_socket=sys.argv[1])
    print(fmt, logs.state["journal"], flush=True)
    structlog.get_logger().info("hello", n=1)
    """
)


@pytest.mark.parametrize("stream", ["match", "other", "unset"])
def test_auto_uses_journal_only_for_the_journal_stream(
    journal: tuple[str, socket.socket], tmp_path: Path, stream: str
) -> None:
    """$JOURNAL_STREAM counts only when stderr is that stream (a redirected stderr is not)."""
    path, s = journal
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if stream != "unset":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino if stream == 'match' else st.st_ino + 1}"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, path], stderr=f, stdout=subprocess.PIPE, env=env, text=True, check=True
        ).stdout
    if stream == "match":
        assert out.split() == ["journald", "native"]
        entry = receive(s)
        assert (entry["GPUOS_EVENT"], entry["GPUOS_N"], entry["CODE_FUNC"]) == ("hello", "1", "<module>")
        assert err.read_text() == ""
    else:
        assert out.split() == ["json"]
        assert json.loads(err.read_text())["event"] == "hello"


def test_refused_entry_falls_back_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(fields: object) -> None:
        raise OSError(111, "Connection refused")

    proc = logs._journald_processor(refuse)
    out = proc(None, "error", {"event": "boom", "level": "error"})
    assert json.loads(out)["journal_error"] == "ConnectionRefusedError: [Errno 111] Connection refused"
