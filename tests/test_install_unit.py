"""`gpuos-hintd install-unit` and the two distributions, for real: pip into fresh venvs,
`systemd-analyze verify` on the shipped unit and on the one install-unit writes.

The booted-systemd part (sysusers, tmpfiles, --enable, start) is in test_systemd.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from gpuos_hintd import install

REPO = Path(__file__).resolve().parent.parent
HINTD = Path(sys.executable).parent / "gpuos-hintd"
SHIPPED = REPO / "packaging" / "systemd" / "gpuos-hintd.service"


def hintd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HINTD), *args], capture_output=True, text=True, timeout=300, check=False)


def pip_list(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def test_shipped_unit_is_a_distributions() -> None:
    text = SHIPPED.read_text()
    assert SHIPPED.resolve() == (REPO / "daemon/gpuos_hintd/data/gpuos-hintd.service").resolve()
    assert [ln for ln in text.splitlines() if ln.startswith("ExecStart=")] == ["ExecStart=/usr/bin/gpuos-hintd"]
    assert "@EXEC@" not in text  # no template placeholder left
    assert "/var/lib/gpuos-hintd/gpuos-hint.db" in text


def test_render_rewrites_only_execstart() -> None:
    shipped = SHIPPED.read_text().splitlines()
    rendered = install.render("gpuos-hintd.service", Path("/opt/my env/bin/gpuos-hintd")).splitlines()
    diff = [(a, b) for a, b in zip(shipped, rendered, strict=True) if a != b]
    assert diff == [("ExecStart=/usr/bin/gpuos-hintd", 'ExecStart="/opt/my env/bin/gpuos-hintd"')]


def _verify_root(root: Path, unit_text: str, exec_path: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify --root: the unit with its executables present, nothing else of ours."""
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/gpuos-hintd.service").write_text(unit_text)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for exe in (exec_path, "/bin/kill"):
        p = root / exe.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "gpuos-hintd.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("exec_path", ["/usr/bin/gpuos-hintd", "/opt/gpuos-hint/bin/gpuos-hintd"])
def test_systemd_analyze_verify(tmp_path: Path, exec_path: str) -> None:
    if shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system/sysinit.target").exists():
        pytest.skip("systemd-analyze or systemd's units not installed (apt-get install systemd)")
    text = SHIPPED.read_text() if exec_path == install.DISTRO_EXEC else install.render(install.UNIT, Path(exec_path))
    r = _verify_root(tmp_path / "root", text, exec_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # ... and it is the executable that verify checks: without it, it fails.
    (tmp_path / "root" / exec_path.lstrip("/")).unlink()
    r = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path / 'root'}", "gpuos-hintd.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode != 0 and f"Command {exec_path} is not executable" in r.stderr


def test_refuses_an_executable_the_service_user_cannot_reach(tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    exe = private / "bin" / "gpuos-hintd"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    private.chmod(0o700)
    r = hintd("install-unit", "--dry-run", "--exec", str(exe))
    assert r.returncode == 1 and r.stdout == ""
    assert f"{private} is not searchable by others, so the gpuos-hintd user cannot run {exe}" in r.stderr
    assert "install-unit --venv /opt/gpuos-hint" in r.stderr


def test_without_root_it_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("runs as root here; the refusal is for non-root callers")
    r = hintd("install-unit")
    assert r.returncode == 1 and "needs root" in r.stderr


def test_help_mentions_install_unit() -> None:
    r = hintd("--help")
    assert r.returncode == 0 and "install-unit" in r.stdout


@pytest.mark.slow
def test_client_distribution_alone(tmp_path: Path) -> None:
    """A program's environment: `pip install ./client` brings pyzmq and msgpack, nothing of the daemon."""
    env = tmp_path / "prog"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(REPO / "client")], check=True, timeout=300)
    got = set(pip_list(py)) - {"pip", "setuptools", "wheel"}
    assert got == {"gpuos-hint-client", "pyzmq", "msgpack"}, got
    probe = "import gpuos_client, importlib.util as u; print(u.find_spec('gpuos_hintd'), u.find_spec('psutil'))"
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["None", "None"]


@pytest.mark.slow
def test_install_unit_makes_a_venv_from_the_checkout(tmp_path: Path) -> None:
    """--venv: a venv with the client and the daemon (copies, not links to the checkout), ExecStart= into it."""
    prefix, target = tmp_path / "pfx", tmp_path / "opt" / "gpuos-hint"
    r = hintd("install-unit", "--prefix", str(prefix), "--venv", str(target))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ExecStart={target}/bin/gpuos-hintd" in r.stdout
    unit = (prefix / "etc/systemd/system/gpuos-hintd.service").read_text()
    assert f"\nExecStart={target}/bin/gpuos-hintd\n" in unit
    py = target / "bin" / "python"
    pkgs = pip_list(py)
    assert {"gpuos-hint", "gpuos-hint-client", "prometheus-client", "nvidia-ml-py"} <= set(pkgs)
    assert "numpy" in pkgs  # the daemon's span pipeline needs it (issue 10) ...
    assert not {"scikit-learn", "ruptures", "matplotlib"} & set(pkgs)  # ... the eval extra is not the service's
    loc = subprocess.run(
        [str(py), "-c", "import gpuos_hintd, gpuos_client; print(gpuos_hintd.__file__, gpuos_client.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert all(p.startswith(str(target)) for p in loc), loc  # installed, not editable
    ver = subprocess.run([str(target / "bin/gpuos-hintd"), "--version"], capture_output=True, text=True, check=True)
    assert ver.stdout.strip() == "gpuos-hintd 0.1.0"
    # numpy is the daemon's own dependency now (issue 10), so evaluate loads without the eval extra
    # (its library baselines, scikit-learn and ruptures, are imported only when they run).
    ev = subprocess.run(
        [str(target / "bin/gpuos-hintctl"), "evaluate", "--help"], capture_output=True, text=True, check=False
    )
    assert ev.returncode == 0 and "Traceback" not in ev.stderr, ev.stderr
    assert (
        "evaluate"
        in subprocess.run([str(target / "bin/gpuos-hintctl"), "--help"], capture_output=True, text=True).stdout
    )


@pytest.mark.slow
def test_wheels_split_client_and_daemon(tmp_path: Path) -> None:
    """`pip wheel ./client .` (as the README says): two wheels, the client's holding only gpuos_client."""
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), "./client", "."]
    subprocess.run(cmd, cwd=src, check=True, timeout=300, capture_output=True)
    # The client's wheel is platform-specific when its optional C hot path was compiled, pure otherwise.
    (client_whl,) = (tmp_path / "dist").glob("gpuos_hint_client-0.1.0-*.whl")
    client = zipfile.ZipFile(client_whl)
    daemon = zipfile.ZipFile(tmp_path / "dist" / "gpuos_hint-0.1.0-py3-none-any.whl")
    tops = {n.split("/")[0] for n in client.namelist() if not n.startswith("gpuos_hint_client-")}
    assert tops == {"gpuos_client"}
    assert not any(n.startswith("gpuos_client/") for n in daemon.namelist())
    assert "gpuos_hintd/data/gpuos-hintd.service" in daemon.namelist()
    meta = daemon.read("gpuos_hint-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: gpuos-hint-client==0.1.0" in meta and "Provides-Extra: eval" in meta
    cmeta = client.read("gpuos_hint_client-0.1.0.dist-info/METADATA").decode()
    assert sorted(ln for ln in cmeta.splitlines() if ln.startswith("Requires-Dist") and "extra" not in ln) == [
        "Requires-Dist: msgpack>=1.0",
        "Requires-Dist: pyzmq>=25",
    ]
