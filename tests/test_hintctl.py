"""gpuos-hintctl against a real daemon and a real store, and with no daemon at all."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from gpuos_hintd import __version__


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


# ------------------------------------------------------------------ dispatch: lazy, and honest about extras
#: Runs hintctl as `python -m gpuos_hintd.cli.main` would, with the named top-level modules made
#: unimportable (as if not installed): a meta-path finder that refuses them, installed first.
HIDING = """
import runpy, sys
HIDDEN = set(sys.argv[1].split(","))
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
sys.argv = ["gpuos-hintctl", *sys.argv[2:]]
runpy.run_module("gpuos_hintd.cli.main", run_name="__main__")
"""


def hintctl_hiding(hidden, *args, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env["GPUOS_HINT_ENDPOINT"] = f"ipc://{tmp_path}/hint.sock"
    return subprocess.run(
        [sys.executable, "-c", HIDING, ",".join(hidden), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_evaluate_without_numpy_says_what_to_install_and_exits_2(tmp_path):
    out = hintctl_hiding(["numpy"], "evaluate", "--store", str(tmp_path / "x.db"), tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "gpuos-hintctl evaluate: needs numpy: install the eval extra (in the checkout: pip install -e '.[eval]'; "
        f"from a wheel: pip install 'gpuos_hint-{__version__}-py3-none-any.whl[eval]')"
    )
    assert "Traceback" not in out.stderr
    # The other commands do not need numpy and still work (here: no daemon, so exit 1 and its line).
    out = hintctl_hiding(["numpy"], "--timeout", "0.3", "status", tmp_path=tmp_path)
    assert out.returncode == 1 and "no gpuos-hintd is listening" in out.stderr


def test_help_lists_every_command_even_when_a_dependency_is_missing(tmp_path):
    from gpuos_hintd.cli.main import COMMANDS

    out = hintctl_hiding(["numpy"], "--help", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("positional arguments:")[1]
    for name in COMMANDS:
        assert f"    {name} " in listed, f"{name} missing from --help"
    assert set(COMMANDS) >= {"status", "spans", "phases", "export", "top", "evaluate"}


def test_a_command_imports_only_its_own_module(tmp_path):
    """Lazy dispatch: `status` loads cli/status.py and not export, top, evaluate (nor numpy)."""
    code = (
        "import sys\n"
        "from gpuos_hintd.cli import main\n"
        "rc = main.main(['--timeout', '0.2', 'status'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('gpuos_hintd.cli.') or m == 'numpy'))\n"
        "sys.exit(rc)\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env["GPUOS_HINT_ENDPOINT"] = f"ipc://{tmp_path}/hint.sock"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stderr
    loaded = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert "gpuos_hintd.cli.status" in loaded
    assert not {"gpuos_hintd.cli.export", "gpuos_hintd.cli.top", "gpuos_hintd.cli.evaluate", "numpy"} & set(loaded)


def test_every_table_row_names_a_module_with_its_functions():
    import importlib

    from gpuos_hintd.cli.main import COMMANDS

    for name, cmd in COMMANDS.items():
        mod = importlib.import_module(cmd.module)
        assert callable(getattr(mod, cmd.run)), f"{name}: {cmd.module}.{cmd.run}"
        assert callable(getattr(mod, cmd.add_args)), f"{name}: {cmd.module}.{cmd.add_args}"
