"""Shared fixtures: a real gpuos-hintd process on a private socket and store.

Every test that needs a daemon gets its own: a tmp runtime dir (ipc socket),
a tmp state dir (SQLite), and a config that leaves out the opt-in eBPF
sampler.  Clients are real subprocesses pointed at it through
GPUOS_HINT_ENDPOINT.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    endpoint: str
    control: str
    state_dir: Path
    log_path: Path
    env: dict[str, str]

    @property
    def db(self) -> Path:
        return self.state_dir / "gpuos-hint.db"

    def request(self, op: str, timeout: float = 5.0, **kw: Any) -> Any:
        from gpuos_hintd.control import request

        return request(self.control, op, timeout_s=timeout, **kw)

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def sync(self) -> None:
        self.request("sync", timeout=10.0)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        from gpuos_hintd.store.read import connect  # spans with their signals, whatever the schema version

        conn = connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def wait_for(self, pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                self.sync()
                last = pred()
                if last:
                    return last
            except Exception as exc:  # the store may not exist yet
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last={last!r}\n--- daemon log ---\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-8000:]
        except OSError:
            return ""

    def client(
        self, code: str, *, wait: bool = True, timeout: float = 30.0, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes] | subprocess.CompletedProcess[bytes]:
        """Run a real client process (Python code) against this daemon."""
        full_env = {**self.env, **(env or {})}
        argv = [sys.executable, "-c", textwrap.dedent(code)]
        if not wait:
            return subprocess.Popen(
                argv, env=full_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        res = subprocess.run(argv, env=full_env, capture_output=True, timeout=timeout)
        assert res.returncode == 0, f"client failed ({res.returncode}):\n{res.stderr.decode()}"
        return res

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def base_env(runtime: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env.update(
        GPUOS_HINT_ENDPOINT=f"ipc://{runtime}/hint.sock",
        GPUOS_HINT_CONTROL=f"ipc://{runtime}/control.sock",
        GPUOS_HINT_STATE_DIR=str(state),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_daemon(
    tmp: Path, extra_config: str = "", args: list[str] | None = None, state_dir: Path | None = None
) -> Daemon:
    runtime = tmp / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    state = state_dir or tmp / "state"
    cfg = tmp / "config.toml"
    cfg.write_text('log_format = "json"\n' + extra_config)
    env = base_env(runtime, state)
    env["GPUOS_HINT_CONFIG"] = str(cfg)
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuos_hintd.main", *(args or [])], env=env, stdout=log, stderr=log
        )
    d = Daemon(proc, env["GPUOS_HINT_ENDPOINT"], env["GPUOS_HINT_CONTROL"], state, log_path, env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{d.log()}")
        try:
            d.request("ping", timeout=0.5)
            return d
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"daemon did not come up:\n{d.log()}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(extra_config: str = "", **kw: Any) -> Daemon:
        d = start_daemon(tmp_path, extra_config, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
