"""Safe runtime directories (issue 8, class 6: socket squatting).

The daemon refuses a socket directory another user owns or can write, never
follows a symlink to it, and chmods the socket through the checked directory;
the client's socket_dir_problem() applies the same rule before it connects.
"""

from __future__ import annotations

import os
import stat

import pytest
from gpuos_client.config import socket_dir_problem
from gpuos_hintd.config import Config
from gpuos_hintd.errors import ConfigError
from gpuos_hintd.server import _prepare_ipc, runtime_dir_problem

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_client_accepts_own_and_root_dirs(tmp_path):
    d = tmp_path / "own"
    d.mkdir(mode=0o755)
    assert socket_dir_problem(d, os.getuid()) is None
    assert socket_dir_problem(__import__("pathlib").Path("/tmp"), 12345) is None  # root's sticky /tmp


def test_client_refuses_missing_symlink_file_and_writable(tmp_path):
    uid = os.getuid()
    assert "does not exist" in socket_dir_problem(tmp_path / "nope", uid)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert "symlink" in socket_dir_problem(tmp_path / "link", uid)
    (tmp_path / "f").write_text("")
    assert "not a directory" in socket_dir_problem(tmp_path / "f", uid)
    w = tmp_path / "w"
    w.mkdir()
    os.chmod(w, 0o777)
    assert "writable" in socket_dir_problem(w, uid)
    os.chmod(w, 0o1777)  # sticky and world-writable: accepted only as root's shared dir (like /tmp)
    assert (socket_dir_problem(w, uid) is None) == (os.lstat(w).st_uid == 0)


@needs_root
def test_client_refuses_a_dir_squatted_by_another_user(tmp_path):
    shared = tmp_path / "tmp"  # like /tmp: root's, sticky, writable by everyone (where squatting works)
    shared.mkdir()
    shared.chmod(0o1777)
    d = shared / "gpuos-hintd-1000"
    d.mkdir(mode=0o755)
    os.chown(d, 65534, 65534)
    assert "owned by uid 65534" in socket_dir_problem(d, 1000)
    assert socket_dir_problem(d, 65534) is None


def test_daemon_rule_matches(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    assert runtime_dir_problem(os.lstat(d), os.geteuid()) is None
    os.chmod(d, 0o722)
    assert "writable" in runtime_dir_problem(os.lstat(d), os.geteuid())


@needs_root
def test_daemon_refuses_squatted_writable_or_symlinked_socket_dirs(tmp_path):
    squat = tmp_path / "squat"
    squat.mkdir(mode=0o755)
    os.chown(squat, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        _prepare_ipc(f"ipc://{squat}/hint.sock", 0o666)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(ConfigError, match="writable"):
        _prepare_ipc(f"ipc://{open_dir}/hint.sock", 0o666)
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigError, match="symlink"):
        _prepare_ipc(f"ipc://{tmp_path / 'link'}/hint.sock", 0o666)


def test_daemon_creates_missing_dir_private_or_0755(tmp_path):
    _path, fd = _prepare_ipc(f"ipc://{tmp_path}/new/hint.sock", 0o666)
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o755
    _path, fd = _prepare_ipc(f"ipc://{tmp_path}/priv/hint.sock", 0o600)
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "priv").st_mode) == 0o700


@needs_root
def test_a_real_daemon_will_not_start_in_a_squatted_dir(tmp_path):
    import subprocess
    import sys

    from conftest import base_env

    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chown(run, 65534, 65534)
    env = base_env(run, tmp_path / "state")
    proc = subprocess.run([sys.executable, "-m", "gpuos_hintd.main"], env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert b"owned by uid 65534" in proc.stderr + proc.stdout
    assert b"Traceback" not in proc.stderr
    assert Config  # the daemon's defaults are what it checks
