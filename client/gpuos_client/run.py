"""``gpuos-run [options] -- COMMAND ...``: hint a program without editing it.

    gpuos-run -- python train.py          # torch/HF phases, turned on when the script imports them
    gpuos-run --class inference.decode -- ./server --port 8000

What it does, then ``exec``s COMMAND in its own place (same pid, so the
daemon sees one process):

- puts a directory holding a ``sitecustomize.py`` first on PYTHONPATH: every
  Python process of the command's tree (children included, they inherit the
  environment) imports gpuos_client at start-up and arms post-import hooks,
  so the torch and Hugging Face integrations start only if and when the
  program imports those libraries.  An existing sitecustomize still runs.
- ``--class`` sets GPUOS_HINT_CLASS, which that start-up code declares as the
  process-wide workload class; for a command that is not Python, the
  launcher itself declares it for its pid before the exec.

Fails open: if anything here goes wrong, COMMAND runs with the environment
it would have had without gpuos-run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
CLIENT_PATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="gpuos-run",
        description="Run COMMAND with gpuos-hint phase hints turned on (no code change).",
        usage="gpuos-run [options] -- COMMAND [ARGS...]",
    )
    p.add_argument("--class", dest="cls", metavar="CLASS", help="process-wide workload class (docs/integrations.md)")
    p.add_argument("--endpoint", help="the daemon's hint socket (default: as the client finds it)")
    p.add_argument("--no-torch", action="store_true", help="leave the torch integration off")
    p.add_argument("--no-hf", action="store_true", help="leave the Hugging Face integration off")
    p.add_argument("--no-forward", action="store_true", help="no phase per top-level forward (only data/backward/step)")
    p.add_argument("--device", action="store_true", help="also time phases on the GPU (CUDA events)")
    p.add_argument("--nvtx", action="store_true", help="mirror phases as NVTX ranges")
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        opts, cmd = argv[:i], argv[i + 1 :]
    else:  # tolerate `gpuos-run python x.py`: options end at the first non-option
        i = next((k for k, a in enumerate(argv) if not a.startswith("-")), len(argv))
        if i > 0 and argv[i - 1] in ("--class", "--endpoint"):
            i = next((k for k, a in enumerate(argv) if k > i and not a.startswith("-")), len(argv))
        opts, cmd = argv[:i], argv[i:]
    ns = p.parse_args(opts)
    if not cmd:
        p.error("no COMMAND given (gpuos-run [options] -- COMMAND ...)")
    return ns, cmd


def build_env(ns: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The command's environment: base plus the injection and the switches."""
    env = dict(base)
    pp = env.get("PYTHONPATH", "")
    parts = [p for p in pp.split(os.pathsep) if p and os.path.abspath(p) != BOOT_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *parts])
    env["GPUOS_RUN"] = "1"
    env["GPUOS_RUN_CLIENT_PATH"] = CLIENT_PATH
    if ns.cls:
        if len(ns.cls) > 128 or not ns.cls.isprintable():
            raise ValueError("--class must be a printable name of at most 128 characters")
        env["GPUOS_HINT_CLASS"] = ns.cls
    if ns.endpoint:
        env["GPUOS_HINT_ENDPOINT"] = ns.endpoint
    for flag, var in (("no_torch", "GPUOS_RUN_TORCH"), ("no_hf", "GPUOS_RUN_HF"), ("no_forward", "GPUOS_RUN_FORWARD")):
        if getattr(ns, flag):
            env[var] = "0"
    if ns.device:
        env["GPUOS_RUN_DEVICE"] = "1"
    if ns.nvtx:
        env["GPUOS_RUN_NVTX"] = "1"
    return env


def _is_python(cmd: list[str]) -> bool:
    exe = shutil.which(cmd[0]) or cmd[0]
    name = os.path.basename(exe)
    if name.startswith("python"):
        return True
    try:
        with open(exe, "rb") as f:
            first = f.readline(256)
        return first.startswith(b"#!") and b"python" in first
    except OSError:
        return False


def _declare_class(env: dict[str, str]) -> None:
    """For a non-Python command: declare the class for this pid, which the exec keeps."""
    os.environ["GPUOS_HINT_LAZY"] = "1"
    if env.get("GPUOS_HINT_ENDPOINT"):
        os.environ["GPUOS_HINT_ENDPOINT"] = env["GPUOS_HINT_ENDPOINT"]
    import gpuos_client

    gpuos_client.workload_class(env["GPUOS_HINT_CLASS"])
    # Bounded: the sender thread still has to start, import zmq and connect (slow on a loaded box).
    # Once handed to ZeroMQ, its I/O thread writes within microseconds; a short pause lets it before
    # the exec replaces this process image.
    if gpuos_client.flush(3.0):
        time.sleep(0.02)


def main(argv: Sequence[str] | None = None) -> int:
    ns, cmd = parse(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        new_env = build_env(ns, env)
        if new_env.get("GPUOS_HINT_CLASS") and not _is_python(cmd):
            _declare_class(new_env)
        env = new_env
    except Exception as exc:  # fail open: run the command as without gpuos-run
        print(f"gpuos-run: hints off ({type(exc).__name__}: {exc})", file=sys.stderr)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        print(f"gpuos-run: cannot run {cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
