"""Writing files atomically: the one write_atomic of the house (hintctl output and install-unit).

A reader (Perfetto, systemd, a colleague's editor) must never see half a file,
so the text goes to a temporary file beside the target, is fsync'd, and is then
renamed over it.  Only the mode differs between callers, so it is a parameter.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` atomically.

    `mode` None gives the usual 0666 & ~umask (mkstemp's 0600 would make a trace
    or a report unreadable to the colleague it was made for); install-unit asks
    for 0644 whatever the umask, as systemd's files are.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
