"""`gpuos-hintd`: run the daemon in the foreground (the way systemd runs it)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import structlog

from . import __version__, logs
from .config import Config, load
from .errors import GpuosError
from .samplers import registry
from .server import Server
from .service import HintService
from .store import Retention, Store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuos-hintd",
        description="Receive phase/workload-class hints from GPU programs and correlate them with "
        "what the OS sees. Runs in the foreground; stop with SIGTERM or Ctrl-C.",
        epilog="As a systemd service: gpuos-hintd install-unit [--venv /opt/gpuos-hint] [--enable] "
        "(see gpuos-hintd install-unit --help).",
    )
    p.add_argument("--version", action="version", version=f"gpuos-hintd {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default: $GPUOS_HINT_CONFIG, /etc/gpuos-hintd/config.toml as root)",
    )
    p.add_argument("--endpoint", help="where clients send hints (ipc://PATH; $GPUOS_HINT_ENDPOINT)")
    p.add_argument("--control", help="control socket for gpuos-hintctl ($GPUOS_HINT_CONTROL)")
    p.add_argument("--state-dir", type=Path, help="where the SQLite store lives ($GPUOS_HINT_STATE_DIR)")
    p.add_argument("--sample-hz", type=float, help="sampling rate of hinting processes (default 10)")
    p.add_argument(
        "--store-samples-hz", type=float, help="write samples to the store at most this often (default 1; 0 = all)"
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on 127.0.0.1:PORT")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "json", "console", "journald"])
    p.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    return p


LOCK_NAME = "gpuos-hintd.lock"


def lock_state_dir(state_dir: Path) -> TextIO:
    """An exclusive flock on STATE_DIR/gpuos-hintd.lock for the daemon's lifetime.

    Two daemons on one store would interleave spans, prune each other's rows and
    fight over the WAL; the second one stops here instead.  The lock goes with the
    process (no stale lock after a crash); the file holds the owner's pid for the message.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)  # private
        f = open(fd, "a+", encoding="ascii")  # noqa: SIM115 - held until exit
    except OSError as exc:
        raise GpuosError(f"state dir {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise GpuosError(f"state dir {state_dir} is in use by another gpuos-hintd (pid {owner})") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class ReloadState:
    """What the last SIGHUP reload did, for STATUS= and `gpuos-hintctl status`."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.last_error: str | None = None
        self.last_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "last_error": self.last_error, "last_at": self.last_at}


def make_service(cfg: Config) -> HintService:
    store = Store(cfg.state_dir, Retention(cfg.retention_samples_s, cfg.retention_spans_s))
    return HintService(cfg, store, registry.build(cfg.disable_samplers, cfg.enable_samplers))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install-unit"]:  # systemd unit, sysusers, tmpfiles: see install.py
        from .install import main as install_main

        return install_main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {
        "endpoint": args.endpoint,
        "control": args.control,
        "state_dir": args.state_dir,
        "sample_hz": args.sample_hz,
        "store_samples_hz": args.store_samples_hz,
        "metrics_port": args.metrics_port,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    try:
        cfg = load(args.config, overrides)
    except GpuosError as exc:
        print(f"gpuos-hintd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    logs.setup(cfg.log_level, cfg.log_format)
    log = structlog.get_logger("gpuos_hintd")
    # One line for whatever fails at start-up: an unwritable state or socket dir, a second
    # daemon, a store that cannot be opened.  The step names the part; the error says why.
    step = f"state dir {cfg.state_dir}"
    try:
        lock = lock_state_dir(cfg.state_dir)
        step = f"store in {cfg.state_dir}"
        service = make_service(cfg)
        step = f"sockets {cfg.endpoint}, {cfg.control}"
        server = Server(cfg, service)
    except (GpuosError, OSError) as exc:
        why = str(exc) if isinstance(exc, GpuosError) else f"{step}: {exc.strerror or exc} ({exc.filename or '-'})"
        log.error("startup_failed", error=why)
        print(f"gpuos-hintd: cannot start: {why}", file=sys.stderr)
        return 1
    reloads = ReloadState()

    def reload() -> None:
        reloads.last_at = time.time()
        try:
            new = load(cfg.config_file, overrides)
        except GpuosError as exc:
            reloads.failed += 1
            reloads.last_error = str(exc)
            raise  # the server logs reload_failed; the old configuration stays in force
        logs.setup(new.log_level, new.log_format)
        cfg.sample_hz, cfg.log_level = new.sample_hz, new.log_level
        cfg.rate_events_per_s, cfg.rate_burst_events = new.rate_events_per_s, new.rate_burst_events
        if (new.endpoint, new.control, new.state_dir) != (cfg.endpoint, cfg.control, cfg.state_dir):
            log.warning("reload_ignored", what="endpoint/control/state_dir change needs a restart")
        if (new.enable_samplers, new.disable_samplers) != (cfg.enable_samplers, cfg.disable_samplers):
            log.warning("reload_ignored", what="enable_samplers/disable_samplers change needs a restart")
        reloads.ok += 1
        reloads.last_error = None

    # A failed reload shows in systemd's STATUS= (`systemctl status`) and in `gpuos-hintctl status`
    # until a reload succeeds.  (systemd 252 has no reload result for Type=notify; see docs/systemd.md.)
    status_line = server._status_line
    server._status_line = lambda: (
        (  # type: ignore[method-assign]
            f"reload failed, previous config in force: {reloads.last_error}; " if reloads.last_error else ""
        )
        + status_line()
    )
    status_op = server.control_ops["status"]
    server.control_ops["status"] = lambda req: {**status_op(req), "reload": reloads.as_dict()}
    server.reload_hook = reload
    server.install_signal_handlers()
    if cfg.metrics_port is not None:
        try:
            from .metrics import start_metrics_server

            start_metrics_server(service, cfg.metrics_port, cfg.metrics_top_k, cfg.metrics_addr)
        except Exception as exc:  # metrics are optional; the daemon runs without them
            log.error("metrics_unavailable", error=f"{type(exc).__name__}: {exc}")
    otlp = None
    if cfg.otlp_endpoint:
        try:
            from .export.otlp import start_otlp

            otlp = start_otlp(service, cfg)
        except Exception as exc:  # export is optional; the daemon runs without it
            log.error("otlp_unavailable", error=f"{type(exc).__name__}: {exc}")
    with contextlib.closing(lock):
        server.run()
    if otlp is not None:
        otlp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
