"""Which samplers this daemon knows, and building those this host can run.

Each module in KNOWN holds one or more Sampler subclasses.  A module that
fails to import (a missing optional dependency) becomes a NullSampler with the
import error as its reason, so `gpuos-hintctl status` says what is missing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable

import structlog

from .base import NullSampler, Sampler

log = structlog.get_logger("gpuos_hintd.samplers")

KNOWN: tuple[str, ...] = ("proc", "syscalls", "syscalls_ebpf", "maps", "drm", "nvml", "rocm")
#: Costly samplers that run only when named in the config's enable_samplers
#: (eBPF slows every syscall on the host while attached: docs/signals-syscalls.md).
OPT_IN: frozenset[str] = frozenset({"syscalls_ebpf"})


def sampler_classes(module_name: str) -> list[type[Sampler]]:
    mod = importlib.import_module(f"{__package__}.{module_name}")
    return [
        obj
        for obj in vars(mod).values()
        if inspect.isclass(obj)
        and issubclass(obj, Sampler)
        and obj.__module__ == mod.__name__
        and not inspect.isabstract(obj)
        and getattr(obj, "name", None)
        and not getattr(obj, "_registry_skip", False)
    ]


def build(disabled: Iterable[str] = (), enabled: Iterable[str] = (), modules: Iterable[str] = KNOWN) -> list[Sampler]:
    """Instantiate every known sampler not disabled; failures become NullSamplers."""
    off = set(disabled)
    on = set(enabled)
    out: list[Sampler] = []
    for module_name in modules:
        try:
            classes = sampler_classes(module_name)
        except Exception as exc:
            out.append(NullSampler(module_name, f"cannot import: {type(exc).__name__}: {exc}"))
            continue
        for cls in classes:
            if cls.name in off or module_name in off:
                out.append(NullSampler(cls.name, "disabled by configuration"))
                continue
            if cls.name in OPT_IN and cls.name not in on:
                out.append(NullSampler(cls.name, f"opt-in: add {cls.name!r} to enable_samplers"))
                continue
            try:
                out.append(cls())
            except Exception as exc:
                out.append(NullSampler(cls.name, f"failed to start: {type(exc).__name__}: {exc}"))
    return out
