"""gpuos-hintd: the daemon that turns phase hints and live OS/GPU signals into spans."""

__version__ = "0.1.0"
