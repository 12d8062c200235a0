"""The eBPF sampler's availability probe asks the kernel: it creates a real BPF map.

Root with bpftrace on PATH is not enough (a container's seccomp filter, or a
process without CAP_BPF/CAP_SYS_ADMIN, gets EPERM from bpf(2)); the probe must
then say unavailable, so that the sampler and its tests skip instead of timing out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpuos_hintd.samplers.syscalls_ebpf import SyscallEbpfSampler, try_create_map

PROBE = "from gpuos_hintd.samplers.syscalls_ebpf import try_create_map as t; print(repr(t()))"


def test_unknown_architecture_is_a_reason() -> None:
    assert try_create_map("mips") == "no bpf(2) syscall number known for mips"


def test_without_capabilities_map_creation_is_refused() -> None:
    """A root process stripped of every capability: what a locked-down container gives."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop capabilities")
    unpriv = Path("/proc/sys/kernel/unprivileged_bpf_disabled").read_text().strip()
    if unpriv == "0":
        pytest.skip("kernel.unprivileged_bpf_disabled=0: bpf(2) works without capabilities here")
    cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", PROBE]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    assert out == repr(os.strerror(1))  # 'Operation not permitted'


def test_probe_agrees_with_the_kernel() -> None:
    """Where the sampler says available, a map could be created in this very process."""
    ok, why = SyscallEbpfSampler().available()
    if ok:
        assert try_create_map() == ""
    else:
        print(f"eBPF sampler unavailable here: {why}")
        assert why


def test_a_separate_pid_namespace_is_unavailable() -> None:
    """BPF reports host pids: a daemon in its own PID namespace (docker, unshare -p) would misattribute."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("bpftrace") is None:
        pytest.skip("needs root, unshare and bpftrace")
    if try_create_map():
        pytest.skip(f"no BPF maps here at all ({try_create_map()}): the namespace check is never reached")
    probe = "from gpuos_hintd.samplers.syscalls_ebpf import SyscallEbpfSampler as S; print(S().available())"
    cmd = ["unshare", "--pid", "--fork", sys.executable, "-c", probe]  # no --mount-proc: works in a chroot too
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if "unshare:" in out.stderr:
        pytest.skip(f"cannot make a PID namespace here: {out.stderr.strip()}")
    assert out.stdout.startswith("(False, \"not in the host's PID namespace"), out.stdout + out.stderr
