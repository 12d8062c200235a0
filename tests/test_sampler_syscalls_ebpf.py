"""The eBPF syscall counter, with a real bpftrace, counting a real child (root only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from gpuos_hintd import procfs
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.samplers.syscall_table import table_for
from gpuos_hintd.samplers.syscalls_ebpf import SyscallEbpfSampler, bpftrace_program

N_GETPPID = 5000
N_IOCTL = 300
N_READ = 200

# Waits for a line on stdin, then does known syscalls: getppid, ioctl(TCGETS) on a
# pty, read() of /dev/zero; prints "done" and waits for stdin to close.
CHILD = f"""
import os, sys, termios
master, slave = os.openpty()
zero = os.open("/dev/zero", os.O_RDONLY)
print(slave, flush=True)
sys.stdin.readline()
for _ in range({N_GETPPID}): os.getppid()
for _ in range({N_IOCTL}): termios.tcgetattr(slave)
for _ in range({N_READ}): os.read(zero, 1)
print("done", flush=True)
sys.stdin.read()
"""


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root (bpftrace refuses to run otherwise)"
    ok, why = SyscallEbpfSampler().available()
    return "" if ok else why


_REASON = _why_not() if sys.platform.startswith("linux") else "needs Linux"
if _REASON:
    print(f"skipping eBPF syscall tests: {_REASON}")
pytestmark = [pytest.mark.root, pytest.mark.skipif(bool(_REASON), reason=_REASON or "-")]


def _wait(pred, timeout: float = 10.0, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError("timed out")


def test_counts_and_pid_attribution():
    # Pretend the pty is a GPU node: exercises the per-fd ioctl split for real.
    s = SyscallEbpfSampler(gpu_paths=("/dev/nvidia", "/dev/pts/"))
    kids = [
        subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for k in kids:
            assert k.stdout is not None
            k.stdout.readline()
        busy = kids[0]
        targets = [Target(ProcKey(k.pid, procfs.start_ticks(k.pid))) for k in kids]
        t0 = time.monotonic()
        _wait(lambda: all(v.values["sys_total_count"] is not None for v in s.sample(targets, 0).values()))
        startup = time.monotonic() - t0
        print(f"bpftrace ready (attached and pids acked) after {startup:.2f} s")
        assert busy.stdin is not None and busy.stdout is not None
        busy.stdin.write("\n")
        busy.stdin.flush()
        assert busy.stdout.readline().strip() == "done"

        def settled():
            v = s.sample(targets, 0)[targets[0].key].values
            return v if (v["sys_other_count"] or 0) >= N_GETPPID and (v["sys_io_count"] or 0) >= N_READ else None

        v = _wait(settled, timeout=5)
        assert v["sys_ioctl_count"] >= N_IOCTL
        assert v["sys_ioctl_gpu_count"] >= N_IOCTL  # the pty counted as the "GPU" fd
        assert v["sys_total_count"] >= N_GETPPID + N_IOCTL + N_READ
        assert v["sys_total_count"] == sum(v[k] for k in v if k not in ("sys_total_count", "sys_ioctl_gpu_count"))
        # The other child, blocked in read(stdin), issued (almost) nothing.
        other = s.sample(targets, 0)[targets[1].key].values
        assert other["sys_total_count"] is not None and other["sys_total_count"] < 50
        h = s.health()
        assert h["child_pid"] and h["attached"] and h["restarts"] == 0 and h["acked_pids"] == 2
        child_pid = h["child_pid"]
    finally:
        s.close()
        for k in kids:
            k.kill()
            k.wait()
    assert s.health()["child_pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_child_restarts_after_it_dies():
    s = SyscallEbpfSampler(max_backoff_s=0.5)
    me = Target(ProcKey(os.getpid(), procfs.start_ticks(os.getpid())))
    try:
        _wait(lambda: s.sample([me], 0)[me.key].values["sys_total_count"] is not None)
        first = s.health()["child_pid"]
        before = s.sample([me], 0)[me.key].values["sys_total_count"]
        os.kill(first, 9)
        _wait(lambda: s.health()["child_pid"] not in (None, first))
        _wait(lambda: s.sample([me], 0)[me.key].values["sys_total_count"] is not None)
        h = s.health()
        assert h["restarts"] == 1 and h["last_exit"] == -9
        after = _wait(lambda: s.sample([me], 0)[me.key].values["sys_total_count"] > before)
        assert after  # counters stay monotonic across restarts
    finally:
        s.close()


def test_program_text_uses_arch_numbers():
    arm = table_for("aarch64")
    assert arm is not None
    prog = bpftrace_program(arm, 1234, 50)
    assert "$id == 167" in prog and "$id == 29" in prog and "interval:ms:50" in prog
