"""What ``gpuos-run`` turns on inside each Python process: the class, and post-import hooks.

The torch and Hugging Face integrations must start only when the program
imports those libraries (never import them for it), so ``boot()`` installs a
meta-path finder that watches a few module names; when one of them finishes
executing, the matching integration's ``auto`` runs - the way
opentelemetry-instrument hooks libraries.  Everything fails open.

Environment (set by the launcher, inherited by child processes):
GPUOS_RUN=1, GPUOS_HINT_CLASS (process-wide workload class), GPUOS_RUN_TORCH=0 /
GPUOS_RUN_HF=0 (turn an integration off), GPUOS_RUN_FORWARD=0 (no per-forward
phases), GPUOS_RUN_DEVICE=1 (CUDA-event timing), GPUOS_RUN_NVTX=1 (NVTX mirror).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

_booted = False


def _flag(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v not in ("0", "false", "no", "off")


class _HookedLoader:
    """Delegates to the real loader; runs the hook after the module executed."""

    def __init__(self, inner: Any, hook: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._hook = hook

    def create_module(self, spec: ModuleSpec) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        try:
            self._hook(module)
        except Exception:
            pass

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


class PostImportFinder:
    """A meta-path finder that only wraps the loaders of the watched module names."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks
        self._busy: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> ModuleSpec | None:
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        self.hooks.pop(fullname, None)  # once
        spec.loader = _HookedLoader(spec.loader, hook)  # type: ignore[assignment]
        return spec


def _on_torch(module: ModuleType) -> None:
    from . import torch as gt

    gt.auto(
        device=_flag("GPUOS_RUN_DEVICE", False),
        nvtx=_flag("GPUOS_RUN_NVTX", False),
        forward=_flag("GPUOS_RUN_FORWARD", True),
    )


def _on_generation_utils(module: ModuleType) -> None:
    from . import hf

    hf.auto_generate(module)


def _on_trainer(module: ModuleType) -> None:
    from . import hf

    hf.auto_trainer(module, device=_flag("GPUOS_RUN_DEVICE", False), nvtx=_flag("GPUOS_RUN_NVTX", False))


def boot() -> None:
    """Set the process class from GPUOS_HINT_CLASS and arm the post-import hooks (once)."""
    global _booted
    if _booted:
        return
    _booted = True
    cls = os.environ.get("GPUOS_HINT_CLASS")
    if cls:
        try:
            from .api import workload_class

            workload_class(cls)
        except Exception:
            pass
    hooks: dict[str, Callable[[ModuleType], None]] = {}
    if _flag("GPUOS_RUN_TORCH", True):
        hooks["torch"] = _on_torch
    if _flag("GPUOS_RUN_HF", True):
        hooks["transformers.generation.utils"] = _on_generation_utils
        hooks["transformers.trainer"] = _on_trainer
    for name, hook in list(hooks.items()):
        mod = sys.modules.get(name)
        if mod is not None:  # imported already (by another sitecustomize, say)
            hooks.pop(name)
            try:
                hook(mod)
            except Exception:
                pass
    if hooks:
        sys.meta_path.insert(0, PostImportFinder(hooks))
