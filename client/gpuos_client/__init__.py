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

from ._runtime import get_runtime as _get_runtime
from .api import CLASSES, current_phase, flush, last_error, mark, phase, stats, workload_class

__version__ = "0.1.0"  # the one place: client/pyproject.toml reads it (setuptools attr:, static)


def _prepare() -> None:
    """Make the runtime (no thread, no socket) and import what the sender needs.

    The sender thread starts at the first hint, not here.  pyzmq and msgpack are
    imported now, in the importing thread, so that no thread is ever importing
    them when the program forks: a child forked at any moment (even right after
    ``import gpuos_client``) finds them whole and builds its own sender.
    """
    rt = _get_runtime()
    if rt.disabled:
        return
    try:
        import msgpack  # noqa: F401
        import zmq  # noqa: F401
    except ImportError as exc:  # fail open: the first hint finds out and counts it
        rt.last_error = f"pyzmq/msgpack not importable: {exc}"


_prepare()
__all__ = [
    "CLASSES",
    "current_phase",
    "flush",
    "last_error",
    "mark",
    "phase",
    "stats",
    "workload_class",
]
