"""Instrumented benchmark workloads for gpuos-hint (CuPy on a GPU, NumPy otherwise).

Each workload runs with hints on or off (``--no-hints``) and prints a summary,
so the same program measures both what the daemon sees and what hints cost.
"""

__version__ = "0.1.0"
