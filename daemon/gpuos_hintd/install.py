"""`gpuos-hintd install-unit`: put the systemd unit, sysusers and tmpfiles files in place.

The files ship inside the package (gpuos_hintd/data/, the one source of truth;
packaging/systemd/ links to them for packagers).  As shipped the unit is a
distribution's (ExecStart=/usr/bin/gpuos-hintd); install-unit rewrites
ExecStart= to the absolute path of the gpuos-hintd being run (or --exec), so a
venv or pipx install works as installed.  The service runs as its own user, so
that path must be reachable by it: a checkout's .venv under /root or a private
home is not, and then install-unit refuses and prints the command that works,
`--venv /opt/gpuos-hint`, which makes a venv there and installs this checkout
into it (a copy: the checkout may go away afterwards).  Files go to /etc
(administrator territory: a pip install must not write into /usr/lib, which
belongs to the distribution).  When systemd is PID 1 and the prefix is /, the
user is created (systemd-sysusers), the directories too (systemd-tmpfiles
--create) and the manager reloaded (systemctl daemon-reload); with --enable
the service is enabled and started.  Every step is printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .files import write_atomic

UNIT = "gpuos-hintd.service"
DISTRO_EXEC = "/usr/bin/gpuos-hintd"  # the shipped unit's ExecStart=, what a distribution package installs
DEFAULT_VENV = Path("/opt/gpuos-hint")
# What the service's venv gets besides the daemon: Prometheus and NVML (both optional at run time).
VENV_EXTRAS = "metrics,nvidia"


@dataclass(frozen=True)
class Item:
    source: str  # name under gpuos_hintd/data
    target: str  # path under the prefix
    command: tuple[str, ...]  # what applies it on a running system (after the file is in place)


ITEMS = (
    Item("gpuos-hintd.sysusers", "etc/sysusers.d/gpuos-hintd.conf", ("systemd-sysusers",)),
    Item("gpuos-hintd.tmpfiles", "etc/tmpfiles.d/gpuos-hintd.conf", ("systemd-tmpfiles", "--create")),
    Item(UNIT, f"etc/systemd/system/{UNIT}", ()),
)


def data_text(name: str) -> str:
    return resources.files("gpuos_hintd").joinpath("data", name).read_text(encoding="utf-8")


def default_exec() -> Path | None:
    """The gpuos-hintd being run: argv[0] if it is one, else the one beside this Python, else on PATH."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "gpuos-hintd":
        found = argv0 if "/" in sys.argv[0] else shutil.which(sys.argv[0])
        if found:
            return Path(os.path.abspath(found))
    beside = Path(sys.executable).parent / "gpuos-hintd"
    if beside.is_file():
        return Path(os.path.abspath(beside))
    found = shutil.which("gpuos-hintd")
    return Path(os.path.abspath(found)) if found else None


def exec_line(path: Path) -> str:
    """ExecStart= value: quoted where systemd would split it, % escaped (unit specifiers)."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() or c in "\"'\\" for c in text) else text


def render(name: str, exec_path: Path) -> str:
    """The file as installed: the unit's one ExecStart= line points at exec_path."""
    text = data_text(name)
    if name == UNIT:
        line = f"ExecStart={DISTRO_EXEC}"
        if text.count(f"\n{line}\n") != 1:
            raise RuntimeError(f"{name}: expected exactly one '{line}' line")
        text = text.replace(f"\n{line}\n", f"\nExecStart={exec_line(exec_path)}\n")
    return text


def checkout_root() -> Path | None:
    """The source checkout this gpuos_hintd was installed from in editable mode, if any."""
    import gpuos_hintd

    root = Path(gpuos_hintd.__file__).resolve().parents[2]
    try:
        meta = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "gpuos-hint"' in meta and (root / "client" / "pyproject.toml").is_file() else None


def unusable_reason(exec_path: Path) -> str | None:
    """Why the service (user gpuos-hintd, PrivateTmp=yes) could not run exec_path, or None."""
    blocked = blocking_dir(exec_path)
    if blocked is not None:
        return f"{blocked} is not searchable by others, so the gpuos-hintd user cannot run {exec_path} (or its Python)"
    if str(exec_path).startswith(("/tmp/", "/var/tmp/")):
        return f"{exec_path} is under a temporary directory, which the unit's PrivateTmp=yes hides from the service"
    return None


_NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.db*", "out")


def make_venv(venv: Path, source: Path, dry_run: bool) -> int:
    """python -m venv VENV, then install the client and the daemon from the checkout into it.

    pip builds from a copy of the checkout: the build writes into its source tree (build/,
    *.egg-info), which may be read-only or belong to another user.
    """
    # The distribution's Python where there is one: every user can run it (a pyenv under /root cannot be).
    base = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys._base_executable
    steps = []
    if not (venv / "bin" / "python").exists():
        steps.append([base, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory(prefix="gpuos-hint-src.") as tmp:
        copy = Path(tmp) / "src"
        if not dry_run:
            shutil.copytree(source, copy, ignore=_NOT_COPIED, symlinks=True)
        print(f"{'would copy' if dry_run else 'copied'}: {source} -> {copy} (without .git, .venv, build outputs)")
        # Both in one pip call: the client is not on an index, so pip must be handed it.
        steps.append([*pip, "--upgrade", str(copy / "client"), f"{copy}[{VENV_EXTRAS}]"])
        for cmd in steps:
            if run(cmd, dry_run) != 0:
                return 1
    if not dry_run:
        os.chmod(venv, 0o755)
    return 0


def blocking_dir(exec_path: Path) -> Path | None:
    """A directory on the way to the executable (or its #! interpreter) that others cannot enter.

    The service runs as the gpuos-hintd user: an install under /root (mode 0700)
    or a private home cannot be executed by it.
    """
    paths = [exec_path]
    try:
        with open(exec_path, "rb") as f:
            first = f.readline(512)
        if first.startswith(b"#!"):
            paths.append(Path(first[2:].decode(errors="replace").split()[0]))
    except (OSError, IndexError):
        pass
    for path in paths:
        for p in (path, Path(os.path.realpath(path))):
            for d in p.parents:
                try:
                    if not os.stat(d).st_mode & 0o001:
                        return d
                except OSError:
                    break
    return None


def systemd_booted() -> bool:
    """sd_booted(): systemd is the running init (it creates /run/systemd/system)."""
    return os.path.isdir("/run/systemd/system")


def run(cmd: list[str], dry_run: bool) -> int:
    print(f"{'would run' if dry_run else 'run'}: {shlex.join(cmd)}")
    if dry_run:
        return 0
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        print(f"  {line}")
    if proc.returncode != 0:
        print(f"  -> exit status {proc.returncode}", file=sys.stderr)
    return proc.returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuos-hintd install-unit",
        description="Install the systemd unit, sysusers.d and tmpfiles.d files for gpuos-hintd, "
        "then (on a running systemd, prefix /) create the user and directories and reload systemd. "
        "ExecStart= is this gpuos-hintd, or the one in --venv.",
    )
    p.add_argument("--prefix", type=Path, default=Path("/"), help="root to install under (default /)")
    p.add_argument(
        "--exec",
        dest="exec_path",
        type=Path,
        help="absolute path for ExecStart= (default: the gpuos-hintd being run)",
    )
    p.add_argument(
        "--venv",
        type=Path,
        nargs="?",
        const=DEFAULT_VENV,
        help=f"create (or update) a venv there (default {DEFAULT_VENV}), install this checkout into it "
        "and use its gpuos-hintd",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="the checkout --venv installs (default: the one this gpuos-hintd runs from)",
    )
    p.add_argument("--enable", action="store_true", help="then systemctl enable --now gpuos-hintd")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    return p


def _err(msg: str) -> None:
    print(f"gpuos-hintd install-unit: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix: Path = args.prefix
    live = prefix.resolve() == Path("/")
    if live and not args.dry_run and os.geteuid() != 0:
        _err("writing to /etc needs root (or use --prefix DIR)")
        return 1
    if args.venv is not None:
        if args.exec_path is not None:
            _err("--venv and --exec exclude each other")
            return 2
        venv = Path(os.path.abspath(args.venv))
        source = args.source or checkout_root()
        if source is None or not (source / "client" / "pyproject.toml").is_file():
            _err(
                "--venv installs from a checkout, and this gpuos-hintd is not an editable install of one; "
                "pass --from CHECKOUT"
            )
            return 2
        why = unusable_reason(venv / "bin" / "gpuos-hintd") if live else None
        if why is not None:
            _err(f"{why}; choose another --venv (e.g. {DEFAULT_VENV})")
            return 1
        if make_venv(venv, Path(os.path.abspath(source)), args.dry_run) != 0:
            _err(f"could not install into {venv} (output above)")
            return 1
        exec_path = venv / "bin" / "gpuos-hintd"
        why = unusable_reason(exec_path) if live and not args.dry_run else None
        if why is not None:
            _err(f"{why}; make the venv with a Python every user can run")
            return 1
    else:
        exec_path = args.exec_path or default_exec()
        if exec_path is None:
            _err("cannot find the gpuos-hintd executable; pass --exec PATH")
            return 2
        if not exec_path.is_absolute():
            _err(f"--exec {exec_path}: must be an absolute path")
            return 2
        if not os.access(exec_path, os.X_OK):
            _err(f"warning: {exec_path} is not an executable file here")
        why = unusable_reason(exec_path) if live else None
        if why is not None:
            me = shlex.quote(str(default_exec() or "gpuos-hintd"))
            _err(f"{why}.")
            print(f"Install a copy it can run instead:  sudo {me} install-unit --venv {DEFAULT_VENV}", file=sys.stderr)
            return 1

    print(f"ExecStart={exec_line(exec_path)}")
    for item in ITEMS:
        target = prefix / item.target
        text = render(item.source, exec_path)
        try:
            same = target.read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if same:
            print(f"unchanged: {target}")
            continue
        print(f"{'would write' if args.dry_run else 'wrote'}: {target}")
        if not args.dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, text, mode=0o644)

    failures = 0
    if not live:
        print(f"prefix {prefix} is not /: not running systemd-sysusers, systemd-tmpfiles, systemctl")
    elif not systemd_booted():
        print(
            "systemd is not PID 1 here (no /run/systemd/system): not running systemd-sysusers, "
            "systemd-tmpfiles, systemctl; systemd applies the files at the next boot"
        )
    else:
        for item in ITEMS:
            if item.command:
                failures += run([*item.command, str(prefix / item.target)], args.dry_run) != 0
        failures += run(["systemctl", "daemon-reload"], args.dry_run) != 0
        if args.enable and not failures:
            failures += run(["systemctl", "enable", "--now", UNIT], args.dry_run) != 0
    if failures:
        return 1
    if not args.dry_run and live and not args.enable:
        print("next: systemctl enable --now gpuos-hintd   (logs: journalctl -u gpuos-hintd)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
