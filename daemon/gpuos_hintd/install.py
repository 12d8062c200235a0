"""`gpuos-hintd install-unit`: put the systemd unit, sysusers and tmpfiles files in place.

The files ship inside the package (gpuos_hintd/data/, the one source of truth;
packaging/systemd/ links to them for packagers).  The unit's ExecStart= is
written with the absolute path of the gpuos-hintd being run (or --exec), so a
venv or pipx install works as installed.  Files go to /etc (administrator
territory: a pip install must not write into /usr/lib, which belongs to the
distribution).  When systemd is PID 1 and the prefix is /, the user is created
(systemd-sysusers), the directories too (systemd-tmpfiles --create) and the
manager reloaded (systemctl daemon-reload).  Every step is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

UNIT = "gpuos-hintd.service"
EXEC_PLACEHOLDER = "@EXEC@"


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
    text = data_text(name)
    if name == UNIT:
        if EXEC_PLACEHOLDER not in text:
            raise RuntimeError(f"{name}: no {EXEC_PLACEHOLDER} placeholder")
        text = text.replace(EXEC_PLACEHOLDER, exec_line(exec_path))
    return text


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


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
        "Next: systemctl enable --now gpuos-hintd",
    )
    p.add_argument("--prefix", type=Path, default=Path("/"), help="root to install under (default /)")
    p.add_argument(
        "--exec",
        dest="exec_path",
        type=Path,
        help="absolute path for ExecStart= (default: the gpuos-hintd being run)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exec_path = args.exec_path or default_exec()
    if exec_path is None:
        print("gpuos-hintd install-unit: cannot find the gpuos-hintd executable; pass --exec PATH", file=sys.stderr)
        return 2
    if not exec_path.is_absolute():
        print(f"gpuos-hintd install-unit: --exec {exec_path}: must be an absolute path", file=sys.stderr)
        return 2
    if not os.access(exec_path, os.X_OK):
        print(f"gpuos-hintd install-unit: warning: {exec_path} is not an executable file here", file=sys.stderr)
    blocked = blocking_dir(exec_path)
    if blocked is not None:
        print(
            f"gpuos-hintd install-unit: warning: {blocked} is not searchable by others, so the "
            f"gpuos-hintd user cannot run {exec_path}; install into e.g. /opt/gpuos-hint (python -m venv)",
            file=sys.stderr,
        )
    if str(exec_path).startswith(("/tmp/", "/var/tmp/")):
        print(
            f"gpuos-hintd install-unit: warning: {exec_path} is under a temporary directory, which the unit's "
            "PrivateTmp=yes hides from the service; install into e.g. /opt/gpuos-hint",
            file=sys.stderr,
        )
    prefix: Path = args.prefix
    live = prefix.resolve() == Path("/")
    if live and not args.dry_run and os.geteuid() != 0:
        print("gpuos-hintd install-unit: writing to /etc needs root (or use --prefix DIR)", file=sys.stderr)
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
            write_atomic(target, text)

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
    if failures:
        return 1
    if not args.dry_run and live:
        print("next: systemctl enable --now gpuos-hintd   (logs: journalctl -u gpuos-hintd)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
