"""gpuos-hintd: the daemon that turns phase hints and live OS/GPU signals into spans.

``__version__`` is the one place the distribution's version is written: pyproject.toml
reads it from here (setuptools' static ``attr:``), so the installed metadata and the code
cannot disagree.  Not importlib.metadata at run time: importing it costs ~30-40 ms on this
machine, on every daemon and gpuos-hintctl start (docs/design.md, "The house").
"""

__version__ = "0.1.0"
