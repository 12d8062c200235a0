"""Which samplers this daemon knows, and building those this host can run.

SAMPLERS is the whole list, written out: a sampler's name, the module that holds
it and its class.  The module is imported only when the sampler is built, so a
module that fails to import (a missing optional dependency) becomes a NullSampler
with the import error as its reason, and `gpuos-hintctl status` says what is
missing.  A metric name belongs to one sampler: build() refuses a second sampler
that declares a name already taken (as prometheus_client's registry does), so
two sources can never write one series.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

import structlog

from .base import NullSampler, Sampler

log = structlog.get_logger("gpuos_hintd.samplers")

#: name -> (module in this package, class).  Build order is this order: a metric declared by
#: two samplers stays with the first.
SAMPLERS: Mapping[str, tuple[str, str]] = {
    "proc": ("proc", "ProcSampler"),
    "syscalls": ("syscalls", "SyscallSampler"),
    "syscalls_ebpf": ("syscalls_ebpf", "SyscallEbpfSampler"),
    "maps": ("maps", "MapsSampler"),
    "drm": ("drm", "DRMSampler"),
    "nvml": ("nvml", "NVMLSampler"),
    "rocm": ("rocm", "ROCmSampler"),
}
KNOWN: tuple[str, ...] = tuple(SAMPLERS)
#: Costly samplers that run only when named in the config's enable_samplers
#: (eBPF slows every syscall on the host while attached: docs/signals-syscalls.md).
OPT_IN: frozenset[str] = frozenset({"syscalls_ebpf"})


def sampler_class(name: str) -> type[Sampler]:
    """The class of a known sampler (importing its module; ImportError if a dependency is missing)."""
    module, cls_name = SAMPLERS[name]
    cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, Sampler)) or cls.name != name:
        raise TypeError(f"SAMPLERS[{name!r}] = {module}.{cls_name} is not the Sampler named {name!r}")
    return cls


def sampler_classes(module_name: str) -> list[type[Sampler]]:
    """[the class] of the sampler named `module_name` (each module holds one; kept for evaluate.dataset)."""
    return [sampler_class(module_name)]


def build(disabled: Iterable[str] = (), enabled: Iterable[str] = (), names: Iterable[str] = KNOWN) -> list[Sampler]:
    """Instantiate every known sampler not disabled; failures (and metric clashes) become NullSamplers."""
    off = set(disabled)
    on = set(enabled)
    out: list[Sampler] = []
    owner: dict[str, str] = {}
    for name in names:
        if name in off:
            out.append(NullSampler(name, "disabled by configuration"))
            continue
        if name in OPT_IN and name not in on:
            out.append(NullSampler(name, f"opt-in: add {name!r} to enable_samplers"))
            continue
        try:
            cls = sampler_class(name)
        except Exception as exc:
            out.append(NullSampler(name, f"cannot import: {type(exc).__name__}: {exc}"))
            continue
        clash = [m for m in cls.metrics if m in owner]
        if clash:
            why = f"metric {clash[0]!r} is already declared by {owner[clash[0]]!r}"
            log.error("sampler_metric_clash", sampler=name, metric=clash[0], owner=owner[clash[0]])
            out.append(NullSampler(name, why))
            continue
        try:
            sampler = cls()
        except Exception as exc:
            out.append(NullSampler(name, f"failed to start: {type(exc).__name__}: {exc}"))
            continue
        owner.update(dict.fromkeys(cls.metrics, name))
        out.append(sampler)
    return out
