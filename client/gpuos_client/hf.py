"""Hugging Face integration: a Trainer callback, Trainer evaluation/checkpoint phases, and generate().

    from gpuos_client.hf import GpuosCallback, instrument_generate, instrument_trainer

    trainer = Trainer(..., callbacks=[GpuosCallback()])   # train.step + optimizer.step phases
    instrument_trainer(trainer)                           # the callback, plus eval and checkpoint phases
    instrument_generate(model)                            # generate > prefill, decode, decode, ...

Phases (classes from :mod:`gpuos_client.classes`):

- ``train.step`` (training.step), attr ``step``: one optimizer step of the
  Trainer, gradient-accumulation micro-batches included;
  ``optimizer.step`` inside it.
- ``eval`` (inference.batch): one ``Trainer.evaluate()``.
- ``checkpoint`` (training.checkpoint), attr ``step``: one checkpoint save.
- ``generate`` (inference.decode), attrs ``batch``, ``prompt_len``,
  ``max_new_tokens``: one ``generate()`` call; inside it ``prefill`` and
  ``decode`` phases from :func:`gpuos_client.torch.instrument`, and a
  ``generate.done`` mark with ``new_tokens`` when it returns (a phase's
  attrs are fixed when it begins, so the count travels in the mark).

A TrainerCallback has events for the start and end of a step but only for
the *end* of an evaluation or a save, so those two are phases only through
:func:`instrument_trainer`, which wraps the two Trainer methods; the bare
callback marks them (``eval.done``, ``checkpoint.saved``).

Importing this module imports neither torch nor transformers; the callback
class is built on first access (``gpuos_client.hf.GpuosCallback``), by which
time the program has imported transformers itself.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from . import torch as _gt
from .api import mark
from .classes import PHASE_CLASSES

__all__ = ["GpuosCallback", "auto_generate", "auto_trainer", "instrument_generate", "instrument_trainer"]  # noqa: F822 (GpuosCallback: built lazily)


def _safe_mark(name: str, **attrs: Any) -> None:
    try:
        mark(name, **attrs)
    except Exception:
        _gt._failed()


class _CallbackImpl:
    """The callback's logic, kept apart from the TrainerCallback base (imported lazily)."""

    def __init__(self, *, optimizer: bool = True, device: bool = False, nvtx: bool = False) -> None:
        self._optimizer = optimizer
        self._device = device
        self._nvtx = nvtx
        self._open: list[tuple[str, Any]] = []

    def _begin(self, name: str, **attrs: Any) -> None:
        self._open.append((name, _gt._open(name, PHASE_CLASSES[name], attrs or None, self._device, self._nvtx)))

    def _end(self, name: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == name:
                tok = self._open[i][1]
                del self._open[i:]
                _gt._close(tok)
                return

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._end("train.step")  # a step whose end never came (an exception caught by the loop)
        self._begin("train.step", step=int(getattr(state, "global_step", 0)) + 1)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._optimizer:
            self._begin("optimizer.step")

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._optimizer:
            self._end("optimizer.step")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._end("train.step")

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        _safe_mark("eval.done", step=int(getattr(state, "global_step", 0)))

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        _safe_mark("checkpoint.saved", step=int(getattr(state, "global_step", 0)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        while self._open:
            _gt._close(self._open.pop()[1])


_callback_class: Any = None


def _make_callback_class() -> Any:
    global _callback_class
    if _callback_class is None:
        from transformers import TrainerCallback

        def guard(fn: Any) -> Any:
            @functools.wraps(fn)
            def hook(self: Any, *a: Any, **kw: Any) -> None:
                try:
                    fn(self, *a, **kw)
                except Exception:
                    _gt._failed()

            return hook

        ns: dict[str, Any] = {
            "__doc__": "A TrainerCallback that sends train.step/optimizer.step phases (see gpuos_client.hf).",
            "__module__": __name__,
            "__init__": _CallbackImpl.__init__,
            "_begin": _CallbackImpl._begin,
            "_end": _CallbackImpl._end,
        }
        for n, f in vars(_CallbackImpl).items():
            if n.startswith("on_"):
                ns[n] = guard(f)
        _callback_class = type("GpuosCallback", (TrainerCallback,), ns)
    return _callback_class


def __getattr__(name: str) -> Any:
    if name == "GpuosCallback":
        return _make_callback_class()
    raise AttributeError(name)


def _wrap_method(obj: Any, attr: str, name: str, attrs_of: Any = None) -> None:
    """Replace ``obj.attr`` by a wrapper running it inside phase ``name`` (idempotent)."""
    orig = getattr(obj, attr)
    if getattr(orig, "_gpuos_wrapped", False):
        return
    cls = PHASE_CLASSES[name]

    @functools.wraps(orig)
    def wrapper(*a: Any, **kw: Any) -> Any:
        attrs = None
        if attrs_of is not None:
            try:
                attrs = attrs_of(*a, **kw)
            except Exception:
                _gt._failed()
        tok = _gt._open(name, cls, attrs, False, False)
        try:
            out = orig(*a, **kw)
        except BaseException:
            _gt._close(tok, sys.exc_info()[0])
            raise
        _gt._close(tok)
        return out

    wrapper._gpuos_wrapped = True  # type: ignore[attr-defined]
    setattr(obj, attr, wrapper)


def instrument_trainer(trainer: Any, *, optimizer: bool = True, device: bool = False, nvtx: bool = False) -> Any:
    """Add the callback and make ``evaluate()`` and checkpoint saves phases; returns the trainer."""
    try:
        cb_class = _make_callback_class()
        if not any(isinstance(c, cb_class) for c in trainer.callback_handler.callbacks):
            trainer.add_callback(cb_class(optimizer=optimizer, device=device, nvtx=nvtx))
        _wrap_method(trainer, "evaluate", "eval")
        if hasattr(trainer, "_save_checkpoint"):
            _wrap_method(
                trainer, "_save_checkpoint", "checkpoint", lambda *a, **kw: {"step": int(trainer.state.global_step)}
            )
    except Exception:
        _gt._failed()
    return trainer


def _prompt(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for key in ("input_ids", "inputs", "inputs_embeds"):
        x = kwargs.get(key)
        if x is not None:
            return x
    return args[0] if args else None


def _generate_wrapper(orig: Any) -> Any:
    cls = PHASE_CLASSES["generate"]

    @functools.wraps(orig)
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _gt._auto_done and not self.__dict__.get("_gpuos_instrumented"):
            try:  # under gpuos-run: make the model known now, so its first forward has its own hooks
                _gt.instrument(self)
            except Exception:
                _gt._failed()
        x = _prompt(args, kwargs)
        shape = getattr(x, "shape", None)
        attrs: dict[str, Any] = {}
        try:
            if shape is not None and len(shape) >= 2:
                attrs = {"batch": int(shape[0]), "prompt_len": int(shape[1])}
            gc = kwargs.get("generation_config") or getattr(self, "generation_config", None)
            mnt = kwargs.get("max_new_tokens", getattr(gc, "max_new_tokens", None))
            if isinstance(mnt, int):
                attrs["max_new_tokens"] = mnt
        except Exception:
            _gt._failed()
        tok = _gt._open("generate", cls, attrs or None, False, False)
        try:
            out = orig(self, *args, **kwargs)
        except BaseException:
            _gt._close(tok, sys.exc_info()[0])
            raise
        _gt._close(tok)
        try:
            seq = getattr(out, "sequences", out)
            n = int(seq.shape[1])
            enc_dec = bool(getattr(getattr(self, "config", None), "is_encoder_decoder", False))
            new = n - 1 if enc_dec else n - attrs.get("prompt_len", 0)
            _safe_mark("generate.done", new_tokens=new, batch=int(seq.shape[0]))
        except Exception:
            _gt._failed()
        return out

    generate._gpuos_wrapped = True  # type: ignore[attr-defined]
    return generate


def instrument_generate(model: Any, *, device: bool = False, nvtx: bool = False, depth: int = 0) -> Any:
    """``model.generate()`` becomes a ``generate`` phase with ``prefill``/``decode`` inside; returns the model."""
    try:
        _gt.instrument(model, device=device, nvtx=nvtx, depth=depth)
        gen = type(model).generate
        if not getattr(gen, "_gpuos_wrapped", False):
            model.generate = _generate_wrapper(gen).__get__(model)
    except Exception:
        _gt._failed()
    return model


def auto_generate(generation_utils: Any = None) -> None:
    """Process-wide (``gpuos-run``): every ``generate()`` is a ``generate`` phase.

    Called once ``transformers.generation.utils`` is imported.  The prefill
    and decode phases inside come from the torch integration's top-level
    forward hooks (:func:`gpuos_client.torch.auto`).
    """
    try:
        if generation_utils is None:
            from transformers.generation import utils as generation_utils
        mixin = generation_utils.GenerationMixin
        if not getattr(mixin.generate, "_gpuos_wrapped", False):
            mixin.generate = _generate_wrapper(mixin.generate)
    except Exception:
        _gt._failed()


def auto_trainer(trainer_module: Any = None, *, device: bool = False, nvtx: bool = False) -> None:
    """Process-wide (``gpuos-run``): every Trainer gets :func:`instrument_trainer` when built.

    Called once ``transformers.trainer`` is imported (never imported here
    otherwise: it is heavy).  Optimizer steps are left to the torch
    integration (it instruments every optimizer when built), so they are not counted twice.
    """
    try:
        if trainer_module is None:
            from transformers import trainer as trainer_module
        klass = trainer_module.Trainer
        orig_init = klass.__init__
        if getattr(orig_init, "_gpuos_wrapped", False):
            return

        @functools.wraps(orig_init)
        def __init__(self: Any, *a: Any, **kw: Any) -> None:
            orig_init(self, *a, **kw)
            instrument_trainer(self, optimizer=False, device=device, nvtx=nvtx)

        __init__._gpuos_wrapped = True  # type: ignore[attr-defined]
        klass.__init__ = __init__
    except Exception:
        _gt._failed()
