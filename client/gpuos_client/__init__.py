"""gpuos_client: tell the OS what phase your GPU program is in.

    import gpuos_client as hint

    hint.workload_class("inference.decode")
    with hint.phase("prefill", batch=8):
        ...

Fail-open by design: with no daemon, a slow one or a restarted one, nothing
here blocks or raises into your program; dropped hints are counted
(``stats()``, ``last_error()``).  Imports only the standard library, pyzmq
and msgpack (the latter two lazily, on the sender thread).
Environment: GPUOS_HINT_ENDPOINT, GPUOS_HINT_DISABLE=1.
"""

from .api import CLASSES, current_phase, flush, last_error, mark, phase, stats, workload_class

__version__ = "0.1.0"


def _start_early() -> None:
    """Start the sender now, in the background, so that its imports (zmq,
    msgpack) and the hello to the daemon happen while the program is still
    starting up - not inside its first phase.  GPUOS_HINT_LAZY=1 defers it.
    The daemon and gpuos-hintctl import this package for its protocol and
    config modules only: they never hint, so nothing starts in them."""
    import os
    import sys

    if "gpuos_hintd" in sys.modules:
        return
    if os.environ.get("GPUOS_HINT_LAZY", "") in ("", "0"):
        from ._runtime import get_runtime

        rt = get_runtime()
        if not rt.disabled:
            rt.wake()


_start_early()
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
