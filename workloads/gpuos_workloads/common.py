"""What every workload shares: the array backend, hint switches, CLI options, summary."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass
class Backend:
    """numpy or cupy behind one name; ``sync()`` waits for the device (no-op on CPU)."""

    xp: Any
    name: str
    device: str

    def sync(self) -> None:
        if self.name == "cupy":
            self.xp.cuda.Stream.null.synchronize()


def get_backend(choice: str = "auto") -> Backend:
    """'gpu' requires CuPy with a working CUDA device; 'auto' falls back to NumPy."""
    if choice in ("auto", "gpu"):
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            return Backend(cupy, "cupy", name)
        except Exception as exc:
            if choice == "gpu":
                raise SystemExit(f"--device gpu: CuPy/CUDA not usable here: {type(exc).__name__}: {exc}") from None
    import numpy

    return Backend(numpy, "numpy", "cpu")


class Hints:
    """gpuos_client when hints are on; free no-ops when off (no import at all)."""

    def __init__(self, enabled: bool, device_timing: bool = False) -> None:
        self.enabled = enabled
        self.device_timing = device_timing
        self._client: Any = None
        if enabled:
            import gpuos_client

            self._client = gpuos_client

    def phase(self, name: str, **attrs: Any) -> contextlib.AbstractContextManager[Any]:
        if self._client is None:
            return contextlib.nullcontext()
        return self._client.phase(name, device=self.device_timing, **attrs)

    def workload_class(self, cls: str) -> contextlib.AbstractContextManager[Any]:
        if self._client is None:
            return contextlib.nullcontext()
        return self._client.workload_class(cls)

    def mark(self, name: str, **attrs: Any) -> None:
        if self._client is not None:
            self._client.mark(name, **attrs)

    def finish(self) -> dict[str, Any] | None:
        if self._client is None:
            return None
        self._client.flush(2.0)
        return self._client.stats()


def hint_summary(c: dict[str, Any]) -> str:
    """One line of the client's own accounting (gpuos_client.stats()), in its words."""
    return (
        f"  hints:   {c['delivered']} events delivered, {c['undelivered']} undelivered, "
        f"{c['dropped']} dropped, daemon {c['daemon'] or 'not seen'}"
    )


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--device",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help="gpu = CuPy (required), cpu = NumPy, auto = CuPy if usable (default)",
    )
    hints = p.add_mutually_exclusive_group()
    hints.add_argument("--hints", dest="hints", action="store_true", default=True, help="send hints (default)")
    hints.add_argument("--no-hints", dest="hints", action="store_false", help="run without any hint calls")
    p.add_argument(
        "--device-timing",
        action="store_true",
        help="record CUDA events at phase edges (device-side intervals; GPU only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


class Timer:
    """Wall-clock totals per named section (host time, after a device sync)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def section(self, name: str, sync: bool = True) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                self.backend.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
            self.counts[name] = self.counts.get(name, 0) + 1


def emit_summary(summary: dict[str, Any], json_path: str | None, render: Callable[[dict[str, Any]], str]) -> None:
    print(render(summary))
    if json_path:
        text = json.dumps(summary, indent=2, default=str)
        if json_path == "-":
            print(text)
        else:
            tmp = f"{json_path}.tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, json_path)


def progress(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)
