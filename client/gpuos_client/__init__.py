"""gpuos_client: tell the OS what phase your GPU program is in.

    import gpuos_client as hint

    hint.workload_class("inference.decode")
    with hint.phase("prefill", batch=8):
        ...

Fail-open by design: with no daemon, a slow one or a restarted one, nothing
here blocks or raises into your program; dropped hints are counted
(``stats()``, ``last_error()``).  Imports only the standard library, pyzmq
and msgpack.  Environment: GPUOS_HINT_ENDPOINT, GPUOS_HINT_DISABLE=1
(docs/client.md lists every knob).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place: client/pyproject.toml reads it (setuptools attr:, static)
__all__ = [
    "CLASSES",
    "current_phase",
    "device_busy",
    "flush",
    "last_error",
    "mark",
    "phase",
    "stats",
    "workload_class",
]

if TYPE_CHECKING:
    from .api import CLASSES, current_phase, device_busy, flush, last_error, mark, phase, stats, workload_class


def __getattr__(name: str) -> Any:
    """The facade's names come from .api on first use (PEP 562).

    Importing the API makes the runtime (reading GPUOS_HINT_* then) and imports pyzmq and msgpack
    in this thread (api.py's last lines).  A tool that imports only a submodule
    (``gpuos_client.protocol``, as the daemon does) therefore makes no runtime at all: no
    configuration frozen from an environment it may still change, no hooks, no thread, no socket.
    ``from gpuos_client import phase`` and the first ``gpuos_client.phase`` prepare exactly as
    ``import gpuos_client`` used to.
    """
    if name in __all__:
        from . import api

        g = globals()
        for n in __all__:
            g[n] = getattr(api, n)
        return g[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
