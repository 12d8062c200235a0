"""Injected by ``gpuos-run``: turn on gpuos-hint in this Python process, then chain on.

This directory is put first on PYTHONPATH by the launcher, so Python's
``site`` imports this file at start-up in every Python process of the
command's tree.  It must never break the program: everything is inside one
``try``, and then the sitecustomize that this one shadows (if any) is
imported, as it would have been without gpuos-run.
"""


def _gpuos_boot() -> None:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        try:
            import gpuos_client._autoload as autoload
        except ImportError:
            # Another interpreter than the launcher's: add the launcher's copy at the *end* of sys.path.
            extra = os.environ.get("GPUOS_RUN_CLIENT_PATH", "")
            if not extra or not os.path.isdir(extra):
                raise
            sys.path.append(extra)
            import gpuos_client._autoload as autoload
        autoload.boot()
    except Exception as exc:
        if os.environ.get("GPUOS_RUN_DEBUG"):
            print(f"gpuos-run: not instrumenting: {exc!r}", file=sys.stderr)
    # Chain to the next sitecustomize on the path (Debian's, a venv's...).
    try:
        mine = sys.modules.pop("sitecustomize", None)
        saved = list(sys.path)
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        try:
            import importlib

            importlib.import_module("sitecustomize")
        except ImportError:
            if mine is not None:
                sys.modules["sitecustomize"] = mine
        finally:
            sys.path[:] = saved
    except Exception as exc:
        if os.environ.get("GPUOS_RUN_DEBUG"):
            print(f"gpuos-run: chained sitecustomize failed: {exc!r}", file=sys.stderr)


_gpuos_boot()
del _gpuos_boot
