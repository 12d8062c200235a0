"""gpuos-hintctl against a real daemon and a real store, and with no daemon at all."""

from __future__ import annotations

import json
import subprocess
import sys


def run_module(module, *args, env):
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=30)


def ctl(d, *args, env=None):
    return run_module("gpuos_hintd.cli.main", *args, env=env or d.env)


def test_status_table_and_json_show_clients_and_open_phases(daemon):
    p = daemon.client(
        """
        import gpuos_client as h, time
        h.workload_class("inference.decode")
        with h.phase("serve"):
            with h.phase("decode"):
                h.flush(); print("in", flush=True); time.sleep(30)
        """,
        wait=False,
    )
    try:
        assert p.stdout.readline().strip() == b"in"
        daemon.wait_for(lambda: any(c["open_phases"] for c in daemon.status()["clients"]), what="open")
        out = ctl(daemon, "status")
        assert out.returncode == 0, out.stderr
        assert "Clients (1)" in out.stdout
        assert "serve, serve/decode" in out.stdout
        assert "inference.decode" in out.stdout
        assert "nvml" in out.stdout and "unavailable" in out.stdout  # no GPU here, and it says so
        js = json.loads(ctl(daemon, "status", "--json").stdout)
        (client,) = js["clients"]
        assert client["pid"] == p.pid
        assert [o["path"] for o in client["open_phases"]] == ["serve", "serve/decode"]
        assert {s["name"] for s in js["samplers"]} >= {"proc", "syscalls", "nvml"}
    finally:
        p.kill()
        p.wait()


def test_spans_and_phases_filters_and_json(daemon):
    daemon.client(
        """
        import gpuos_client as h, time
        for i in range(3):
            with h.phase("a", i=i):
                time.sleep(0.01)
        with h.phase("b"):
            pass
        h.flush()
        """
    )
    daemon.wait_for(lambda: len(daemon.query("SELECT * FROM spans")) == 4, what="4 spans")
    rows = json.loads(ctl(daemon, "spans", "--name", "a", "--json").stdout)
    assert len(rows) == 3 and {r["name"] for r in rows} == {"a"}
    assert sorted(r["attrs"]["i"] for r in rows) == [0, 1, 2]
    assert len(json.loads(ctl(daemon, "spans", "--limit", "2", "--json").stdout)) == 2
    assert json.loads(ctl(daemon, "spans", "--since", "1h", "--json").stdout)
    assert ctl(daemon, "spans", "--pid", "1", "--json").stdout.strip() == "[]"
    table = ctl(daemon, "spans").stdout
    assert "PHASE" in table and table.count("\n") >= 6
    phases = {r["name"]: r for r in json.loads(ctl(daemon, "phases", "--json").stdout)}
    assert phases["a"]["count"] == 3 and phases["b"]["count"] == 1
    assert phases["a"]["mean_ns"] >= 10e6
    assert "COUNT" in ctl(daemon, "phases").stdout


def test_history_readable_with_daemon_down(daemon):
    daemon.client("import gpuos_client as h\nwith h.phase('kept'): pass\nh.flush()")
    daemon.wait_for(lambda: daemon.query("SELECT * FROM spans"), what="span")
    assert daemon.stop() == 0
    out = ctl(daemon, "spans", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["name"] == "kept"


def test_clear_error_and_exit_1_without_daemon(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env["GPUOS_HINT_ENDPOINT"] = f"ipc://{tmp_path}/hint.sock"
    env["GPUOS_HINT_STATE_DIR"] = str(tmp_path / "nostate")
    out = run_module("gpuos_hintd.cli.main", "--timeout", "0.3", "status", env=env)
    assert out.returncode == 1
    assert "no gpuos-hintd is listening" in out.stderr and "control.sock does not exist" in out.stderr
    out = run_module("gpuos_hintd.cli.main", "spans", env=env)
    assert out.returncode == 1 and "no store at" in out.stderr
    out = run_module("gpuos_hintd.cli.main", "spans", "--since", "yesterday", env=env)
    assert out.returncode != 0 and "--since" in (out.stderr + out.stdout)


def test_daemon_refuses_a_second_instance_and_bad_config(daemon, tmp_path):
    out = run_module("gpuos_hintd.main", env=daemon.env)  # same store: the state dir's lock says no
    assert out.returncode == 1 and "is in use by another gpuos-hintd" in out.stderr
    other_state = {**daemon.env, "GPUOS_HINT_STATE_DIR": str(tmp_path / "other")}  # same sockets
    out = run_module("gpuos_hintd.main", env=other_state)
    assert out.returncode == 1 and "already answers" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("sample_hz = 'fast'\n")
    out = run_module("gpuos_hintd.main", "--config", str(bad), env=daemon.env)
    assert out.returncode == 2 and "sample_hz" in out.stderr
    bad.write_text("no_such_option = 1\n")
    out = run_module("gpuos_hintd.main", "--config", str(bad), env=daemon.env)
    assert out.returncode == 2 and "unknown option 'no_such_option'" in out.stderr
    assert daemon.proc.poll() is None
