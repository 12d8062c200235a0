"""Operating the daemon: configuration round trip and errors, the state-dir lock, start-up
errors as one line, a failed SIGHUP reload (STATUS= and `status`), and hintctl in pipes.
Real daemons (subprocesses), real sd_notify datagrams, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from conftest import base_env, start_daemon


def hintd(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpuos_hintd.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def ctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpuos_hintd.cli.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)


def clean_env(tmp: Path) -> dict[str, str]:
    return base_env(tmp / "run", tmp / "state")


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_print_config_round_trips_through_config(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["GPUOS_HINT_METRICS_PORT"] = "9464"
    first = hintd("--print-config", "--sample-hz", "25", "--log-level", "debug", env=env)
    assert first.returncode == 0, first.stderr
    parsed = tomllib.loads(first.stdout)  # valid TOML, every value a TOML value
    assert parsed["sample_hz"] == 25.0 and parsed["metrics_port"] == 9464 and parsed["socket_mode"] == "0666"
    assert parsed["state_dir"] == str(tmp_path / "state") and parsed["enable_samplers"] == []
    conf = tmp_path / "printed.toml"
    conf.write_text(first.stdout)
    # Fed back with nothing else set, the same configuration comes out.
    bare = {k: v for k, v in env.items() if not k.startswith("GPUOS_HINT_")}
    second = hintd("--config", str(conf), "--print-config", env=bare)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()
    assert second.stdout.splitlines()[0] == f"# read from {conf}, then the environment and the command line"


def test_unset_option_is_a_comment(tmp_path: Path) -> None:
    out = hintd("--print-config", env=clean_env(tmp_path))
    assert "# metrics_port = (unset)" in out.stdout.splitlines()


def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    conf = tmp_path / "c.toml"
    cases = {
        'enable_samplers = ["ebpf"]': "enable_samplers=['ebpf']: no such sampler (known: proc, syscalls,",
        'disable_samplers = ["nvml", "gpu"]': "disable_samplers=['gpu']: no such sampler",
        'sample_hz = "fast"': "sample_hz='fast': could not convert string to float",
        "sample_hz = 5000": "sample_hz=5000.0: must be within 0.1..1000",
        'store_samples = "maybe"': "store_samples='maybe': not a boolean",
        "enable_samplers = 3": "enable_samplers=3: must be a list of sampler names",
        "no_such_option = 1": "unknown option 'no_such_option'",
        "sample_hz = [": "",
    }
    for text, expected in cases.items():
        conf.write_text(text + "\n")
        r = hintd("--config", str(conf), env=env)
        line = one_line(r.stderr)
        assert r.returncode == 2, (text, r.stderr)
        assert line.startswith(f"gpuos-hintd: configuration error: {conf}: "), line
        assert expected in line, (text, line)
    # From the command line and the environment, the option is named instead of a file.
    r = hintd("--sample-hz", "0", env=env)
    assert r.returncode == 2 and "--sample-hz: sample_hz=0.0: must be within" in one_line(r.stderr)
    r = hintd(env={**env, "GPUOS_HINT_METRICS_PORT": "x"})
    assert r.returncode == 2 and "$GPUOS_HINT_METRICS_PORT: metrics_port='x'" in one_line(r.stderr)


def test_startup_errors_are_one_line(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = hintd("--state-dir", str(blocker / "state"), env=env)
    assert r.returncode == 1
    assert f"cannot start: state dir {blocker / 'state'}: Not a directory" in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr
    r = hintd("--endpoint", f"ipc://{blocker}/hint.sock", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("gpuos-hintd: cannot start:") and str(blocker) in last, last
    if os.geteuid() != 0:  # root may write anywhere; a non-root run also checks the permission case
        r = hintd("--state-dir", "/proc/gpuos-no-such-dir", env=env)
        assert r.returncode == 1 and "cannot start: state dir /proc/gpuos-no-such-dir" in r.stderr


def test_state_dir_is_locked_against_a_second_daemon(tmp_path: Path) -> None:
    first = start_daemon(tmp_path / "a", state_dir=tmp_path / "shared")
    try:
        env = base_env(tmp_path / "b" / "run", tmp_path / "shared")  # other sockets, same store
        (tmp_path / "b" / "run").mkdir(parents=True)
        r = hintd(env=env, timeout=20)
        assert r.returncode == 1
        last = r.stderr.splitlines()[-1]
        assert last == (
            f"gpuos-hintd: cannot start: state dir {tmp_path / 'shared'} is in use by another gpuos-hintd "
            f"(pid {first.proc.pid})"
        ), r.stderr
        assert first.proc.poll() is None and first.request("ping", timeout=2) is not None
    finally:
        first.proc.terminate()
        first.proc.wait(timeout=10)
    # The lock goes with the process: a new daemon starts on the same state dir at once.
    again = start_daemon(tmp_path / "c", state_dir=tmp_path / "shared")
    again.proc.terminate()
    assert again.proc.wait(timeout=10) == 0


def _notify_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(10)
    return s


def _wait_msg(s: socket.socket, pred, timeout: float = 10.0) -> dict[str, str]:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        msg = dict(ln.split("=", 1) for ln in s.recv(4096).decode().splitlines() if "=" in ln)
        if pred(msg):
            return msg
    raise AssertionError("no such sd_notify message")


def test_failed_reload_keeps_the_old_config_and_says_so(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    notify = _notify_socket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    d = start_daemon(tmp_path, "sample_hz = 10\n")
    try:
        _wait_msg(notify, lambda m: m.get("READY") == "1")
        cfg = tmp_path / "config.toml"
        cfg.write_text('log_format = "json"\nsample_hz = 20\nenable_samplers = ["bogus"]\n')
        d.proc.send_signal(signal.SIGHUP)
        msg = _wait_msg(notify, lambda m: m.get("READY") == "1")  # RELOADING=1, then READY=1 with the result
        assert msg["STATUS"].startswith(f"reload failed, previous config in force: {cfg}: enable_samplers="), msg
        st = d.status()
        assert st["daemon"]["sample_hz"] == 10.0  # the old configuration, untouched
        assert st["reload"]["failed"] == 1 and str(cfg) in st["reload"]["last_error"]
        text = ctl("status", env=d.env).stdout
        assert f"reload FAILED (previous configuration in force): {cfg}: enable_samplers=['bogus']" in text
        # The next good reload clears it.
        cfg.write_text('log_format = "json"\nsample_hz = 20\n')
        d.proc.send_signal(signal.SIGHUP)
        msg = _wait_msg(notify, lambda m: m.get("READY") == "1")
        assert not msg["STATUS"].startswith("reload failed"), msg
        st = d.status()
        assert st["daemon"]["sample_hz"] == 20.0 and st["reload"] == {**st["reload"], "ok": 1, "last_error": None}
    finally:
        d.proc.terminate()
        d.proc.wait(timeout=10)
        notify.close()


def test_status_without_a_socket_file_fails_at_once(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    t0 = time.monotonic()
    r = ctl("--timeout", "5", "status", env=env)
    assert r.returncode == 1 and time.monotonic() - t0 < 3.0  # not the 5 s timeout
    assert one_line(r.stderr) == (
        f"gpuos-hintctl: no gpuos-hintd is listening: {tmp_path}/run/control.sock does not exist "
        "(start it with `gpuos-hintd` or `systemctl start gpuos-hintd`)"
    )


def test_a_closed_pipe_is_not_an_error(daemon) -> None:  # type: ignore[no-untyped-def]
    """`gpuos-hintctl status | head -0`: the reader is gone before the first write."""
    for args in (["status"], ["status", "--json"], ["--help"]):
        r, w = os.pipe()
        os.close(r)
        proc = subprocess.run(
            [sys.executable, "-m", "gpuos_hintd.cli.main", *args],
            env=daemon.env,
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
        os.close(w)
        assert proc.stderr == "" and proc.returncode == 0, (args, proc.stderr)


def test_status_json_has_the_reload_record(daemon) -> None:  # type: ignore[no-untyped-def]
    st = json.loads(ctl("status", "--json", env=daemon.env).stdout)
    assert st["reload"] == {"ok": 0, "failed": 0, "last_error": None, "last_at": None}
