"""PyTorch integration: phases from module forwards, backward, optimizer steps and DataLoaders.

    import gpuos_client.torch as gt

    gt.instrument(model)                  # a phase per top-level forward; prefill/decode in generation
    gt.instrument_optimizer(opt)          # "optimizer.step" phases
    loader = gt.instrument_dataloader(loader)  # "data" waits here, "data.fetch" in forked workers
    with gt.backward():                   # or gt.instrument_backward() once, for every loss.backward()
        loss.backward()

Why hooks and not wrappers: they are torch's own extension points, they keep
``isinstance`` and ``state_dict`` as they were, and each comes with a handle
that removes it.  Every hook here is cheap (a dict lookup, a phase edge) and
never raises into the program: any error inside one is swallowed and counted
in ``errors()``, the way the client counts dropped hints.

This module never imports torch at import time: ``gpuos-run`` imports it in
every Python process, and a program that never uses torch must pay nothing.
Torch is imported inside the functions, which are only called by a program
that already has a model, an optimizer or a loader in hand.

Phase names and workload classes come from :mod:`gpuos_client.classes`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from . import _runtime  # already imported by .api; read-only use: the process-wide class
from .api import phase, workload_class
from .classes import PHASE_CLASSES

__all__ = [
    "backward",
    "errors",
    "generation_kind",
    "instrument",
    "instrument_backward",
    "instrument_dataloader",
    "instrument_optimizer",
]

_errors = 0
_tls = threading.local()
_scopes: dict[str, workload_class] = {}
_phases: dict[tuple[str, bool], phase] = {}


def errors() -> int:
    """How many times a hook of this module failed (and was silenced)."""
    return _errors


def _failed() -> None:
    global _errors
    _errors += 1


# --------------------------------------------------------------------- edges
def _process_class() -> str | None:
    try:
        rt = _runtime._runtime
        return None if rt is None else rt.process_class
    except Exception:
        return None


def _scope(cls: str) -> Any:
    """A reusable scoped-class frame for ``cls``.

    Built once per class (building one sets and undoes the process class); a
    reused scope only pushes a frame.  When the process-wide class already is
    ``cls`` no scope is needed: spans carry the process class by default.
    """
    if _process_class() == cls:
        return None
    sc = _scopes.get(cls)
    if sc is None:
        sc = workload_class(cls)
        with sc:  # undoes the process-wide setting that construction made
            pass
        _scopes[cls] = sc
    return sc


def _nvtx_ok() -> bool:
    ok = getattr(_nvtx_ok, "ok", None)
    if ok is None:
        try:
            import torch

            ok = bool(torch.cuda.is_available())
        except Exception:
            ok = False
        _nvtx_ok.ok = ok  # type: ignore[attr-defined]
    return ok


def _open(name: str, cls: str | None, attrs: dict[str, Any] | None, device: bool, nvtx: bool) -> Any:
    """Begin a phase (inside a class scope when ``cls``); a token for _close, or None."""
    sc = None
    try:
        if cls:
            sc = _scope(cls)
            if sc is not None:
                sc.__enter__()
        if attrs:
            ph = phase(name, device=device, **attrs)
        else:
            ph = _phases.get((name, device))
            if ph is None:
                ph = _phases[(name, device)] = phase(name, device=device)
        ph.__enter__()
    except Exception:
        _failed()
        if sc is not None:
            sc.__exit__(None, None, None)
        return None
    if nvtx and _nvtx_ok():
        try:
            import torch

            torch.cuda.nvtx.range_push(name)
        except Exception:
            nvtx = False
    else:
        nvtx = False
    return (ph, sc, nvtx)


def _close(tok: Any, exc_type: Any = None) -> None:
    if tok is None:
        return
    ph, sc, nvtx = tok
    try:
        ph.__exit__(exc_type, None, None)
        if sc is not None:
            sc.__exit__(None, None, None)
        if nvtx:
            import torch

            torch.cuda.nvtx.range_pop()
    except Exception:
        _failed()


def _pop(key: int) -> Any:
    """The token pushed for ``key`` on this thread (entries above it were left open by a raise)."""
    st = _stack()
    for i in range(len(st) - 1, -1, -1):
        if st[i][0] == key:
            tok = st[i][1]
            del st[i:]
            return tok
    return None


def _compiling() -> bool:
    """True while torch.compile traces; the hooks then do nothing (no graph breaks from them)."""
    try:
        return bool(_is_compiling())
    except Exception:
        return False


def _is_compiling() -> bool:
    global _is_compiling
    import torch

    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    _is_compiling = fn if fn is not None else (lambda: False)  # type: ignore[assignment]
    return bool(_is_compiling())


def _stack() -> list[Any]:
    try:
        return _tls.stack  # type: ignore[no-any-return]
    except AttributeError:
        st = _tls.stack = []
        return st


# ------------------------------------------------------- prefill and decode
def _past_len(past: Any, cache_position: Any) -> int | None:
    """Tokens already in the KV cache, without a device sync; None when unknown."""
    if past is not None:
        get = getattr(past, "get_seq_length", None)
        if get is not None:
            n = get()
            if isinstance(n, int):
                return n
            if getattr(getattr(n, "device", None), "type", "cpu") == "cpu":
                return int(n)
            return None  # a device tensor (StaticCache): reading it would sync
        if isinstance(past, (tuple, list)):  # the legacy ((k, v), ...) layout
            if not past:
                return 0
            first = past[0]
            if isinstance(first, (tuple, list)) and first:
                return int(first[0].shape[-2])
    if cache_position is not None and getattr(cache_position, "device", None) is not None:
        if cache_position.device.type == "cpu" and cache_position.numel():
            return int(cache_position.reshape(-1)[0])
    return None


def generation_kind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, dict[str, int]] | None:
    """``("prefill"|"decode", attrs)`` for a generation-style forward, else None.

    The Hugging Face convention: a forward that gets ``past_key_values``,
    ``cache_position`` or ``use_cache=True`` is a generation step.  It is a
    prefill when the cache is empty or the step feeds more than one token
    (a prompt, or a chunk of one), else a decode step.  Nothing here reads a
    device tensor, so the check never synchronises with the GPU.
    """
    past = kwargs.get("past_key_values")
    cpos = kwargs.get("cache_position")
    if past is None and cpos is None and kwargs.get("use_cache") is not True:
        return None
    x = kwargs.get("input_ids")
    if x is None and args:
        x = args[0]
    shape = getattr(x, "shape", None)
    if shape is None:
        x = kwargs.get("inputs_embeds")
        shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    batch, tokens = int(shape[0]), int(shape[1])
    n = _past_len(past, cpos)
    if tokens > 1 or n == 0:
        return "prefill", {"batch": batch, "tokens": tokens, "past": n or 0}
    return "decode", {"batch": batch, "past": n if n is not None else -1}


def _default_class(module: Any) -> str | None:
    import torch

    if module.training and torch.is_grad_enabled():
        return PHASE_CLASSES["forward"]
    return None


# -------------------------------------------------------------- instrument
class Handle:
    """What ``instrument*`` returns: ``remove()`` takes every hook away again."""

    def __init__(self) -> None:
        self._undo: list[Any] = []

    def add(self, h: Any) -> None:
        self._undo.append(h)

    def remove(self) -> None:
        for h in reversed(self._undo):
            try:
                h.remove() if hasattr(h, "remove") else h()
            except Exception:
                _failed()
        self._undo.clear()


def _module_hooks(
    module: Any,
    name: str,
    *,
    top: bool,
    generation: bool,
    cls: str | None,
    device: bool,
    nvtx: bool,
) -> tuple[Any, Any]:
    key = id(module)

    def pre(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if _compiling():  # inside a torch.compile trace: no Python side effects to trace
            return
        try:
            pname, attrs, pcls = name, None, cls
            if top:
                kind = generation_kind(args, kwargs) if generation else None
                if kind is not None:
                    pname, attrs = kind
                    pcls = cls or PHASE_CLASSES[pname]
                elif pcls is None:
                    pcls = _default_class(mod)
            _stack().append((key, _open(pname, pcls, attrs, device, nvtx)))
        except Exception:
            _failed()

    def post(mod: Any, args: tuple[Any, ...], output: Any) -> None:
        if _compiling():  # inside a torch.compile trace: no Python side effects to trace
            return
        try:
            _close(_pop(key), sys.exc_info()[0])
        except Exception:
            _failed()

    h1 = module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
    h2 = module.register_forward_hook(post, always_call=True)
    return h1, h2


def instrument(
    model: Any,
    *,
    name: str | None = None,
    depth: int = 0,
    workload_class: str | None = None,
    device: bool = False,
    nvtx: bool = False,
    generation: bool = True,
) -> Handle:
    """A phase per forward of ``model`` (and of its children down to ``depth``).

    The top-level phase is named ``name`` (default ``"forward"``); a
    generation step (see :func:`generation_kind`) is named ``"prefill"`` or
    ``"decode"`` instead, with attrs batch/tokens/past.  Children get their
    qualified module name (``"layers.0.mlp"``) and nest under it.  The class:
    ``workload_class`` if given, else inference.prefill/decode for generation
    steps, training.step for a forward in train mode with grad enabled, else
    the process's class.  ``device=True`` also times the phase on the GPU;
    ``nvtx=True`` mirrors every phase as an NVTX range (a no-op without CUDA).
    """
    h = Handle()
    if getattr(model, "_gpuos_instrumented", False):
        return h
    top_name = name or "forward"
    h1, h2 = _module_hooks(
        model, top_name, top=True, generation=generation, cls=workload_class, device=device, nvtx=nvtx
    )
    h.add(h1)
    h.add(h2)
    if depth > 0:
        for qual, child in model.named_modules():
            if not qual or qual.count(".") + 1 > depth:
                continue
            c1, c2 = _module_hooks(child, qual[-128:], top=False, generation=False, cls=None, device=device, nvtx=nvtx)
            h.add(c1)
            h.add(c2)
    try:
        model._gpuos_instrumented = True
        h.add(lambda: setattr(model, "_gpuos_instrumented", False))
    except Exception:
        pass
    return h


# --------------------------------------------------------------- optimizer
def instrument_optimizer(
    opt: Any,
    *,
    name: str = "optimizer.step",
    workload_class: str | None = None,
    device: bool = False,
    nvtx: bool = False,
) -> Handle:
    """An ``optimizer.step`` phase (class training.step) around each ``opt.step()``.

    Wraps the instance's ``step`` (as a bound method, so LR schedulers still
    wrap it) rather than using torch's step pre/post hooks: those fire after
    torch's own profiler bookkeeping (about 1 ms on the first step), and no
    post hook runs when ``step()`` raises - a wrapper has the true edges and
    closes the phase as ``error``.
    """
    import types

    h = Handle()
    d = opt.__dict__
    if d.get("_gpuos_step"):
        return h
    cls = workload_class or PHASE_CLASSES["optimizer.step"]
    had = "step" in d
    prev = d.get("step")
    inner = opt.step

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        tok = _open(name, cls, None, device, nvtx)
        try:
            out = inner(*args, **kwargs)
        except BaseException:
            _close(tok, sys.exc_info()[0])
            raise
        _close(tok)
        return out

    opt.step = types.MethodType(step, opt)
    d["_gpuos_step"] = True

    def undo() -> None:
        d.pop("_gpuos_step", None)
        if had:
            opt.step = prev
        else:
            d.pop("step", None)

    h.add(undo)
    return h


# ---------------------------------------------------------------- backward
@contextlib.contextmanager
def backward(*, name: str = "backward", workload_class: str | None = None, device: bool = False, nvtx: bool = False):
    """``with backward(): loss.backward()`` - a backward phase (class training.step)."""
    tok = _open(name, workload_class or PHASE_CLASSES["backward"], None, device, nvtx)
    try:
        yield
    except BaseException:
        _close(tok, sys.exc_info()[0])
        tok = None
        raise
    finally:
        _close(tok)


_backward_orig: Any = None


def instrument_backward(*, device: bool = False, nvtx: bool = False) -> Handle:
    """Make every ``Tensor.backward()`` in this process a ``backward`` phase (idempotent).

    Wraps the method on the class, so it covers Lightning, Accelerate and the
    HF Trainer, which all end in ``loss.backward()``.  Autograd runs the pass
    from the calling thread's point of view synchronously, so the phase spans
    it exactly; ``device=True`` adds the GPU-side interval.
    """
    global _backward_orig
    import torch

    h = Handle()
    if _backward_orig is not None:
        return h
    orig = _backward_orig = torch.Tensor.backward
    cls = PHASE_CLASSES["backward"]

    def hinted_backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        tok = _open("backward", cls, None, device, nvtx)
        try:
            out = orig(self, *args, **kwargs)
        except BaseException:
            _close(tok, sys.exc_info()[0])
            raise
        _close(tok)
        return out

    hinted_backward.__wrapped__ = orig  # type: ignore[attr-defined]
    hinted_backward.__doc__ = orig.__doc__
    torch.Tensor.backward = hinted_backward  # type: ignore[method-assign]

    def undo() -> None:
        global _backward_orig
        torch.Tensor.backward = orig  # type: ignore[method-assign]
        _backward_orig = None

    h.add(undo)
    return h


# -------------------------------------------------------------- DataLoader
class HintedIterator:
    """Wraps a DataLoader iterator: each ``next()`` is a ``data`` phase (class training.data).

    That is the main process's wait for a batch: with workers, the time the
    batch was not ready yet; without, the fetch itself.  The final ``next()``
    that ends the epoch is a phase too (it is real time: shutting workers down).
    """

    __slots__ = ("_device", "_it", "_name", "_nvtx")

    def __init__(self, it: Iterator[Any], name: str = "data", device: bool = False, nvtx: bool = False) -> None:
        self._it = it
        self._name = name
        self._device = device
        self._nvtx = nvtx

    def __iter__(self) -> HintedIterator:
        return self

    def __next__(self) -> Any:
        tok = _open(self._name, PHASE_CLASSES["data"], None, self._device, self._nvtx)
        try:
            item = next(self._it)
        except StopIteration:
            _close(tok)
            raise
        except BaseException:
            _close(tok, sys.exc_info()[0])
            raise
        _close(tok)
        return item

    def __len__(self) -> int:
        return len(self._it)  # type: ignore[arg-type]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._it, attr)


_worker_pid = 0


def _hinted_fetch(orig: Any) -> Any:
    cls = PHASE_CLASSES["data.fetch"]

    def fetch(self: Any, possibly_batched_index: Any) -> Any:
        info = _worker_info()
        if info is None:  # in the main process (num_workers=0): the "data" phase covers it
            return orig(self, possibly_batched_index)
        try:
            n = len(possibly_batched_index)
        except Exception:
            n = 1
        tok = _open("data.fetch", cls, {"worker": info.id, "samples": n}, False, False)
        try:
            out = orig(self, possibly_batched_index)
        except BaseException:
            _close(tok, sys.exc_info()[0])
            raise
        _close(tok)
        return out

    fetch.__wrapped__ = orig  # type: ignore[attr-defined]
    return fetch


def _worker_info() -> Any:
    """The DataLoader worker info in a worker process (None elsewhere); arms the exit flush once."""
    global _worker_pid
    try:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
    except Exception:
        return None
    if info is not None and _worker_pid != os.getpid():
        _worker_pid = os.getpid()
        _arm_worker_flush()
    return info


def _arm_worker_flush() -> None:
    """Workers leave through os._exit (no atexit): flush from multiprocessing's exit hook."""
    try:
        from multiprocessing import util

        from .api import flush

        util.Finalize(None, flush, args=(1.0,), exitpriority=100)
    except Exception:
        _failed()


_fetch_patched = False


def _patch_fetchers() -> None:
    """Hint fetches in DataLoader worker processes (the class methods; workers inherit them by fork)."""
    global _fetch_patched
    if _fetch_patched:
        return
    from torch.utils.data._utils import fetch as F

    for klass in (F._MapDatasetFetcher, F._IterableDatasetFetcher):
        if not hasattr(klass.fetch, "__wrapped__"):
            klass.fetch = _hinted_fetch(klass.fetch)
    _fetch_patched = True


class _WorkerInit:
    """A picklable worker_init_fn wrapper: turns on fetch hints in the worker, then calls the user's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        try:
            _patch_fetchers()
            _worker_info()
        except Exception:
            _failed()
        if self.inner is not None:
            self.inner(worker_id)


_loader_classes: dict[type, type] = {}


def _hinted_loader_class(base: type) -> type:
    sub = _loader_classes.get(base)
    if sub is None:

        def __iter__(self: Any) -> Any:
            it = base.__iter__(self)
            return it if isinstance(it, HintedIterator) else HintedIterator(it)

        sub = type(base.__name__, (base,), {"__iter__": __iter__, "__module__": base.__module__})
        _loader_classes[base] = sub
    return sub


def instrument_dataloader(loader: Any) -> Any:
    """Hint a DataLoader in place (and return it): ``data`` waits here, ``data.fetch`` in workers.

    The loader's class becomes a subclass whose ``__iter__`` wraps the
    iterator (``isinstance`` still holds), and its ``worker_init_fn`` is
    wrapped so that each worker process - forked or spawned - hints each
    batch it fetches, with attrs worker and samples.
    """
    try:
        if getattr(type(loader), "__iter__", None) is not None and type(loader) not in _loader_classes.values():
            loader.__class__ = _hinted_loader_class(type(loader))
        if not isinstance(loader.worker_init_fn, _WorkerInit):
            loader.worker_init_fn = _WorkerInit(loader.worker_init_fn)
    except Exception:
        _failed()
    return loader


# ------------------------------------------------- process-wide (gpuos-run)
_auto_done = False


def _caller_kwargs() -> dict[str, Any]:
    """The kwargs of the module call that runs the global pre-hook (torch passes global hooks none).

    Read from ``Module._call_impl``'s frame, once per newly seen model;
    best effort: {} when the frame does not have them.
    """
    try:
        f = sys._getframe(2)
        for _ in range(3):
            kw = f.f_locals.get("kwargs")
            if isinstance(kw, dict):
                return kw
            f = f.f_back  # type: ignore[assignment]
    except Exception:
        pass
    return {}


#: Top-level forwards in a row that found only models already instrumented, after which the
#: global hooks are removed (see _auto_forward_hooks).
DISCOVERY_QUIET = 50
_discovery: dict[str, Any] = {"quiet": 0, "handles": None, "ended": False}


def _end_discovery() -> None:
    hs = _discovery["handles"]
    _discovery["handles"] = None
    _discovery["ended"] = True
    for h in hs or ():
        try:
            h.remove()
        except Exception:
            _failed()


def _auto_forward_hooks(device: bool, nvtx: bool) -> None:
    """Discover the program's models: a phase per *top-level* forward of any of them.

    Global module hooks see every module call; the first top-level call of a
    module with parameters instruments it (instance hooks, as
    :func:`instrument` does) and is itself a phase; later calls go through
    those instance hooks.  Parameterless top-level modules (a loss module)
    are left out.  Global hooks cost every module call about 1.7 us (torch's
    slow call path; measured in benchmarks/results/integrations_cpu.json), so
    they are removed once DISCOVERY_QUIET top-level forwards in a row found
    only known models: from then on only the models' own hooks cost anything.
    A model first called after that gets no phases from gpuos-run (instrument
    it by hand).
    """
    from torch.nn.modules import module as M

    def pre(mod: Any, args: tuple[Any, ...]) -> None:
        if _compiling():  # inside a torch.compile trace: no Python side effects to trace
            return
        try:
            if getattr(_tls, "top", None) is not None:
                return
            d = mod.__dict__
            if d.get("_gpuos_instrumented"):
                _discovery["quiet"] += 1
                if _discovery["quiet"] >= DISCOVERY_QUIET:
                    _end_discovery()  # this call's post hook is gone too: leave _tls.top unset
                    return
                _tls.top, _tls.top_tok = mod, None
                return
            if d.get("_gpuos_skip"):
                return
            if next(mod.parameters(), None) is None:
                d["_gpuos_skip"] = True
                return
            _discovery["quiet"] = 0
            _tls.top = mod
            kind = generation_kind(args, _caller_kwargs())
            if kind is not None:
                pname, attrs = kind
                pcls: str | None = PHASE_CLASSES[pname]
            else:
                pname, attrs, pcls = "forward", None, _default_class(mod)
            _tls.top_tok = _open(pname, pcls, attrs, device, nvtx)
            instrument(mod, device=device, nvtx=nvtx)  # its own hooks from the next call on
        except Exception:
            _failed()

    def post(mod: Any, args: tuple[Any, ...], output: Any) -> None:
        if _compiling():  # inside a torch.compile trace: no Python side effects to trace
            return
        try:
            if getattr(_tls, "top", None) is mod:
                _tls.top = None
                tok, _tls.top_tok = _tls.top_tok, None
                _close(tok, sys.exc_info()[0])
        except Exception:
            _failed()

    _discovery["handles"] = (
        M.register_module_forward_pre_hook(pre),
        M.register_module_forward_hook(post, always_call=True),
    )
    # torch.compile(module) warns that global hooks exist - ours, which the program did not ask for;
    # they are harmless there (the OptimizedModule is the top, the module inside it is not).
    import warnings

    warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")


def auto(*, device: bool = False, nvtx: bool = False, forward: bool = True) -> None:
    """Turn on every torch integration process-wide (what ``gpuos-run`` calls once torch is imported).

    Top-level forwards, ``Tensor.backward``, every optimizer's step (each
    optimizer is instrumented when built), every DataLoader's iterator and its workers' fetches.
    Idempotent; each part fails open on its own.
    """
    global _auto_done
    if _auto_done:
        return
    _auto_done = True
    import torch

    parts: list[Any] = [lambda: instrument_backward(device=device, nvtx=nvtx), _patch_fetchers]
    if forward:
        parts.append(lambda: _auto_forward_hooks(device, nvtx))

    def optim() -> None:
        opt_class = torch.optim.Optimizer
        orig_init = opt_class.__init__
        if getattr(orig_init, "_gpuos_wrapped", False):
            return

        def __init__(self: Any, *a: Any, **kw: Any) -> None:
            orig_init(self, *a, **kw)
            try:
                instrument_optimizer(self, device=device, nvtx=nvtx)
            except Exception:
                _failed()

        __init__._gpuos_wrapped = True  # type: ignore[attr-defined]
        __init__.__wrapped__ = orig_init  # type: ignore[attr-defined]
        __init__.__doc__ = orig_init.__doc__
        opt_class.__init__ = __init__  # type: ignore[method-assign]

    def loader() -> None:
        DL = torch.utils.data.DataLoader
        orig = DL.__iter__
        if hasattr(orig, "__wrapped__"):
            return

        def __iter__(self: Any) -> Any:
            it = orig(self)
            return it if isinstance(it, HintedIterator) else HintedIterator(it)

        __iter__.__wrapped__ = orig  # type: ignore[attr-defined]
        DL.__iter__ = __iter__  # type: ignore[method-assign]

    def warm() -> None:
        # Build the reusable phase and scope objects now, at import time, not inside the first phase.
        for pname, pcls in PHASE_CLASSES.items():
            _scope(pcls)
            _phases.setdefault((pname, device), phase(pname, device=device))

    parts += [optim, loader, warm]
    for part in parts:
        try:
            part()
        except Exception:
            _failed()
