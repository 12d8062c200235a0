"""Maps sampler: real /proc for a child process, and a real CUDA process's maps/fds recorded on an H100.

tests/data/maps/h100_torch/ holds /proc/PID/maps and the fd -> link table of a python
process that had run one torch CUDA op (H100, driver 580), captured once on the GPU
machine (one fd pointing at the capture harness's own log file was removed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.procfs import start_ticks
from gpuos_hintd.samplers.maps import MapsSampler, parse_maps

DATA = Path(__file__).resolve().parent / "data" / "maps" / "h100_torch"


def test_parse_recorded_cuda_maps():
    data = (DATA / "maps").read_bytes()
    count, size = parse_maps(data)
    # Independent count: lines whose path field starts with /dev/nvidia (not libnvidia-*.so).
    dev = [ln for ln in data.decode().splitlines() if re.search(r"\s/dev/nvidia\S*$", ln)]
    assert count == len(dev) == 31
    assert size == sum(int(b, 16) - int(a, 16) for a, b in (ln.split()[0].split("-") for ln in dev))
    assert b"libnvidia" in data  # the libraries are there, and not counted


def test_fake_procfs_tree_with_recorded_cuda_process(tmp_path):
    pid = 4242
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "maps").write_bytes(b"")
    fd_dir = tmp_path / str(pid) / "fd"
    fd_dir.mkdir(parents=True)
    (tmp_path / str(pid) / "maps").write_bytes((DATA / "maps").read_bytes())
    links = json.loads((DATA / "fds.json").read_text())
    for fd, link in links.items():
        os.symlink(link, fd_dir / fd)
    s = MapsSampler(procfs=tmp_path)
    assert s.available() == (True, "")
    key = ProcKey(pid, 1)
    v = s.sample([Target(key)], 0)[key].values
    assert v["gpu_dev_maps"] == 31 and v["gpu_dev_map_bytes"] > 0
    assert v["gpu_dev_fds"] == sum(1 for link in links.values() if link.startswith("/dev/nvidia")) == 31


@pytest.fixture
def zero_mapper():
    code = (
        "import mmap, os, sys, time\n"
        "f = open('/dev/zero', 'rb')\n"
        "m = mmap.mmap(f.fileno(), 1 << 20, mmap.MAP_PRIVATE, mmap.PROT_READ)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    yield p
    p.stdin.close()
    p.wait(timeout=10)


def test_real_child_mapping_dev_zero_has_no_gpu_maps(zero_mapper):
    pid = zero_mapper.pid
    maps = Path(f"/proc/{pid}/maps").read_bytes()
    assert parse_maps(maps, prefixes=("/dev/zero",))[0] >= 1  # the parser sees real device maps
    key = ProcKey(pid, start_ticks(pid))
    gone = ProcKey(2**22 + 11, 1)
    out = MapsSampler().sample([Target(key), Target(gone)], 0)
    assert list(out) == [key]
    assert out[key].values == {"gpu_dev_maps": 0, "gpu_dev_map_bytes": 0, "gpu_dev_fds": 0}
