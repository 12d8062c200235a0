"""Daemon configuration: embedded defaults < TOML file < environment < command line.

Every option has a sane default, so `gpuos-hintd` with no arguments runs.
An invalid file or value raises ConfigError naming the key and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from gpuos_client.config import (
    CONTROL_SOCK,
    ENV_CONTROL,
    ENV_ENDPOINT,
    HINT_SOCK,
    control_beside,
    default_runtime_dir,
    ipc,
)

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_STATE_DIR = "GPUOS_HINT_STATE_DIR"
ENV_CONFIG = "GPUOS_HINT_CONFIG"
ENV_METRICS_PORT = "GPUOS_HINT_METRICS_PORT"
ENV_OTLP_ENDPOINT = "GPUOS_HINT_OTLP_ENDPOINT"
ENV_METRICS_ADDR = "GPUOS_HINT_METRICS_ADDR"
SYSTEM_CONFIG = Path("/etc/gpuos-hintd/config.toml")


def default_state_dir() -> Path:
    """/var/lib/gpuos-hintd for root, $XDG_STATE_HOME (~/.local/state)/gpuos-hintd otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/gpuos-hintd")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "gpuos-hintd"


@dataclasses.dataclass(slots=True)
class Config:
    endpoint: str = ""
    control: str = ""
    state_dir: Path = dataclasses.field(default_factory=default_state_dir)
    sample_hz: float = 10.0
    reap_interval_s: float = 1.0
    socket_mode: int = 0o666  # who may send hints; identity is checked from peer credentials anyway
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console | journald
    # admission limits
    max_clients: int = 1024
    max_open_spans_per_client: int = 4096
    # per uid (root exempt): one user cannot take every slot or all the memory (docs/security.md)
    max_clients_per_uid: int = 256
    max_open_spans_per_uid: int = 32768
    max_connections: int = 4096  # hint-socket connections in all; kept below the fd limit
    store_queue_rows: int = 200_000  # rows waiting for the writer; beyond, shed (counted)
    rate_events_per_s: float = 500_000.0  # per client, token bucket
    rate_burst_events: float = 1_000_000.0
    allow_unauthenticated: bool = False  # TCP has no peer credentials: refuse unless this is set
    # store
    retention_samples_s: float = 24 * 3600.0
    retention_spans_s: float = 30 * 24 * 3600.0
    store_samples: bool = True
    # how often samples are written to the store (the correlator still uses every tick);
    # 0 = every tick.  Evaluation runs want every tick: set it to sample_hz or 0.
    store_samples_hz: float = 1.0
    # samplers: names to turn off (e.g. ["syscalls_ebpf"])
    disable_samplers: list[str] = dataclasses.field(default_factory=list)
    # opt-in samplers to turn on (e.g. ["syscalls_ebpf"], which needs root and bpftrace)
    enable_samplers: list[str] = dataclasses.field(default_factory=list)
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"  # "0.0.0.0" where Prometheus scrapes a pod IP (packaging/kubernetes)
    metrics_top_k: int = 50
    # OTLP/HTTP trace export (export/otlp.py): off unless an endpoint is set, e.g. in a
    # [otlp] section: endpoint = "http://127.0.0.1:4318" (keys there are otlp_<key> here).
    otlp_endpoint: str = ""
    otlp_service_name: str = ""  # default: the client's process name
    otlp_queue_spans: int = 8192  # spans waiting for the exporter; beyond it they are dropped, counted
    otlp_batch_spans: int = 512
    otlp_timeout_s: float = 5.0
    otlp_max_retry_s: float = 60.0  # a batch is retried (with backoff) this long, then dropped, counted
    otlp_backoff_max_s: float = 10.0  # the longest wait between two tries (doubling from 0.25 s, jittered)
    config_file: Path | None = None

    def __post_init__(self) -> None:
        runtime = default_runtime_dir()
        if not self.endpoint:
            self.endpoint = ipc(runtime / HINT_SOCK)
        if not self.control:
            self.control = control_beside(self.endpoint) or ipc(runtime / CONTROL_SOCK)

    def validate(self) -> Config:
        for name in ("endpoint", "control"):
            value = getattr(self, name)
            if not value.startswith(("ipc://", "tcp://")):
                raise ConfigError(f"{name}={value!r}: must be ipc://PATH or tcp://HOST:PORT")
        if not 0.1 <= self.sample_hz <= 1000:
            raise ConfigError(f"sample_hz={self.sample_hz}: must be within 0.1..1000")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level={self.log_level!r}: debug|info|warning|error")
        if self.log_format not in ("auto", "json", "console", "journald"):
            raise ConfigError(f"log_format={self.log_format!r}: auto|json|console|journald")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics_port={self.metrics_port}: not a port")
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"otlp_endpoint={self.otlp_endpoint!r}: must be http(s)://HOST[:PORT][/PATH]")
        for name in ("otlp_queue_spans", "otlp_batch_spans"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        for name in (
            "max_clients",
            "max_open_spans_per_client",
            "max_clients_per_uid",
            "max_open_spans_per_uid",
            "max_connections",
            "store_queue_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        from .samplers.registry import KNOWN

        for name in ("enable_samplers", "disable_samplers"):
            unknown = [n for n in getattr(self, name) if n not in KNOWN]
            if unknown:
                raise ConfigError(f"{name}={unknown!r}: no such sampler (known: {', '.join(KNOWN)})")
        return self

    def to_toml(self) -> str:
        """The configuration as a TOML file that --config reads back to the same Config."""
        lines = []
        if self.config_file is not None:
            lines.append(f"# read from {self.config_file}, then the environment and the command line")
        for f in dataclasses.fields(self):
            if f.name == "config_file":
                continue
            value = getattr(self, f.name)
            if value is None:  # TOML has no null: an unset option is a comment
                lines.append(f"# {f.name} = (unset)")
                continue
            lines.append(f"{f.name} = {_toml_value(f.name, value)}")
        return "\n".join(lines) + "\n"


def _toml_value(key: str, value: Any) -> str:
    if key == "socket_mode":
        return f'"{value:04o}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
    raise TypeError(f"{key}: cannot write {type(value).__name__} as TOML")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any) -> Any:
    current = Config.__dataclass_fields__[key].type
    try:
        if key == "state_dir" or key == "config_file":
            return Path(value)
        if key == "socket_mode":
            return int(value, 8) if isinstance(value, str) else int(value)
        if key == "metrics_port":
            return None if value in (None, "", "off") else int(value)
        if key in ("disable_samplers", "enable_samplers"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError("must be a list of sampler names")
            return list(value)
        if "bool" in str(current):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError("not a boolean (true/false)")
            return text in ("1", "true", "yes")
        if "float" in str(current):
            return float(value)
        if "int" in str(current):
            return int(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={value!r}: {exc}") from None


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build the configuration.  ``overrides`` come from the command line (None = unset)."""
    values: dict[str, Any] = {}
    source: dict[str, str] = {}  # key -> where its value came from, for error messages
    path = path or (Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else None)
    if path is None and SYSTEM_CONFIG.exists() and os.geteuid() == 0:
        path = SYSTEM_CONFIG
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        otlp = data.pop("otlp", {})
        if not isinstance(otlp, dict):
            raise ConfigError(f"{path}: otlp must be a [otlp] section")
        flat = {**data.pop("daemon", {}), **{f"otlp_{k}": v for k, v in otlp.items()}, **data}
        for key, value in flat.items():
            if isinstance(value, dict):
                raise ConfigError(f"{path}: unknown section [{key}]")
            if key not in _FIELDS or key == "config_file":
                raise ConfigError(f"{path}: unknown option {key!r}")
            try:
                values[key] = _coerce(key, value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            source[key] = str(path)
        values["config_file"] = Path(path)
    env = {
        "endpoint": os.environ.get(ENV_ENDPOINT),
        "control": os.environ.get(ENV_CONTROL),
        "state_dir": os.environ.get(ENV_STATE_DIR),
        "metrics_port": os.environ.get(ENV_METRICS_PORT),
        "otlp_endpoint": os.environ.get(ENV_OTLP_ENDPOINT),
        "metrics_addr": os.environ.get(ENV_METRICS_ADDR),
    }
    env_names = {"endpoint": ENV_ENDPOINT, "control": ENV_CONTROL, "state_dir": ENV_STATE_DIR}
    env_names.update(metrics_port=ENV_METRICS_PORT, otlp_endpoint=ENV_OTLP_ENDPOINT, metrics_addr=ENV_METRICS_ADDR)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in [*((k, v) for k, v in env.items() if v is not None), *given.items()]:
        source[key] = f"--{key.replace('_', '-')}" if key in given else f"${env_names[key]}"
        try:
            values[key] = _coerce(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{source[key]}: {exc}") from None
    try:
        return Config(**values).validate()
    except ConfigError as exc:
        key = str(exc).split("=", 1)[0]
        raise ConfigError(f"{source[key]}: {exc}" if key in source else str(exc)) from None
