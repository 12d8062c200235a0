"""What every benchmark shares: a real daemon on a private socket, host facts, the results file.

Benchmarks run as scripts (`python benchmarks/bench_x.py`), so this module is imported as
`_harness` from the benchmarks folder.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def daemon_env(tmp: Path, base: dict[str, str] | None = None, config_text: str | None = None) -> dict[str, str]:
    """An environment pointing clients, the daemon and hintctl at a private socket and store in tmp."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("GPUOS_HINT_")}
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        GPUOS_HINT_ENDPOINT=f"ipc://{tmp}/hint.sock",
        GPUOS_HINT_CONTROL=f"ipc://{tmp}/control.sock",
        GPUOS_HINT_STATE_DIR=str(tmp / "state"),
    )
    if config_text is not None:
        conf = tmp / "hintd.toml"
        conf.write_text(config_text)
        env["GPUOS_HINT_CONFIG"] = str(conf)
    return env


def start_daemon(
    env: dict[str, str],
    args: Sequence[str] = ("--log-level", "warning"),
    log: Path | None = None,
    timeout_s: float = 15.0,
) -> subprocess.Popen[bytes]:
    """Start `gpuos-hintd` with env (see daemon_env) and wait until it answers a ping."""
    from gpuos_hintd.control import request

    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "gpuos_hintd.main", *args], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            request(env["GPUOS_HINT_CONTROL"], "ping", timeout_s=0.2)
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    detail = log.read_text()[-4000:] if log and log.exists() else ""
    raise SystemExit(f"daemon did not start\n{detail}")


def host_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def write_result(out: str | Path, benchmark: str, **fields: Any) -> Path:
    """Write benchmarks/results/<name>.json: name, time, host, then the benchmark's own fields."""
    doc = {"benchmark": benchmark, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": host_info()}
    doc.update(fields)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return path
