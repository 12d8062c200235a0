"""`gpuos-hintd`: run the daemon in the foreground (the way systemd runs it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        for f in cfg.__dataclass_fields__:
            print(f"{f} = {getattr(cfg, f)!r}")
        return 0
    logs.setup(cfg.log_level, cfg.log_format)
    log = structlog.get_logger("gpuos_hintd")
    try:
        service = make_service(cfg)
        server = Server(cfg, service)
    except GpuosError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"gpuos-hintd: {exc}", file=sys.stderr)
        return 1

    def reload() -> None:
        new = load(cfg.config_file, overrides)
        logs.setup(new.log_level, new.log_format)
        cfg.sample_hz, cfg.log_level = new.sample_hz, new.log_level
        cfg.rate_events_per_s, cfg.rate_burst_events = new.rate_events_per_s, new.rate_burst_events
        if (new.endpoint, new.control, new.state_dir) != (cfg.endpoint, cfg.control, cfg.state_dir):
            log.warning("reload_ignored", what="endpoint/control/state_dir change needs a restart")

    server.reload_hook = reload
    server.install_signal_handlers()
    if cfg.metrics_port is not None:
        try:
            from .metrics import start_metrics_server

            start_metrics_server(service, cfg.metrics_port, cfg.metrics_top_k)
        except Exception as exc:  # metrics are optional; the daemon runs without them
            log.error("metrics_unavailable", error=f"{type(exc).__name__}: {exc}")
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
