"""Typed errors of the daemon (psutil/zeus style): vendor and OS errors are
translated into these at each module's edge, so no layer sees another's."""

from __future__ import annotations


class GpuosError(Exception):
    """Base class of every error gpuos_hintd raises on purpose."""


class SamplerUnavailable(GpuosError):
    """A signal source is absent on this host (no driver, no device, no privilege)."""


class ProcessGone(GpuosError):
    """The process (or thread) vanished between listing and reading it."""

    def __init__(self, pid: int, msg: str = "") -> None:
        super().__init__(msg or f"process {pid} is gone")
        self.pid = pid


class AccessDenied(GpuosError):
    """The daemon may not read this process's data."""

    def __init__(self, pid: int, msg: str = "") -> None:
        super().__init__(msg or f"access to process {pid} denied")
        self.pid = pid


class ConfigError(GpuosError):
    """The configuration file or an option is invalid; the message says which and why."""


class StoreError(GpuosError):
    """The SQLite store cannot be opened or written."""
