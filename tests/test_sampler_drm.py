"""DRM fdinfo sampler: documented fdinfo formats in a fake procfs tree, plus real /proc.

The fdinfo files in tests/data/fdinfo/ are assembled from the kernel's documented
formats (see the README there), not captured from a GPU: this host has none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.procfs import start_ticks
from gpuos_hintd.samplers.drm import DRMSampler, engine_class, parse_fdinfo

DATA = Path(__file__).resolve().parent / "data" / "fdinfo"
KiB, MiB = 1 << 10, 1 << 20


def fake_proc(root: Path, pid: int, fds: dict[int, tuple[str, str]]) -> Path:
    """Build root/PID/fd/N -> link and root/PID/fdinfo/N from a fixture file."""
    (root / "self" / "fdinfo").mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "fd").mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "fdinfo").mkdir(parents=True, exist_ok=True)
    for fd, (link, fixture) in fds.items():
        os.symlink(link, root / str(pid) / "fd" / str(fd))
        shutil.copy(DATA / fixture, root / str(pid) / "fdinfo" / str(fd))
    return root


def test_parse_amdgpu_legacy_memory_keys():
    c = parse_fdinfo((DATA / "amdgpu.txt").read_bytes())
    assert c is not None and c.ident == ("amdgpu", "0000:03:00.0", "26")
    assert c.engine_ns == {
        "gfx": 2283474040,
        "compute": 73425184,
        "dma": 10295270,
        "dec": 0,
        "enc": 0,
        "enc_1": 1500000,
    }
    assert c.mem_bytes() == (1052144 + 16544) * KiB
    assert c.mem_bytes(local_only=True) == 1052144 * KiB


def test_parse_amdgpu_newer_prefers_resident():
    c = parse_fdinfo((DATA / "amdgpu_newer.txt").read_bytes())
    assert c.mem_bytes() == 2 * MiB + 524288 * KiB
    assert c.mem_bytes(local_only=True) == 524288 * KiB


def test_parse_i915_regions_with_dashes():
    c = parse_fdinfo((DATA / "i915.txt").read_bytes())
    assert c.driver == "i915" and c.client_id == "39" and c.pdev == "0000:00:02.0"
    assert c.engine_ns["render"] == 346249 and c.capacity == {"video": 2}
    assert ("resident", "stolen-system0") in c.memory
    assert c.mem_bytes() == 6044 * KiB and c.mem_bytes(local_only=True) == 0


def test_parse_xe_cycles_and_units():
    c = parse_fdinfo((DATA / "xe.txt").read_bytes())
    assert c.engine_ns == {}
    assert c.cycles["rcs"] == 28257900 and c.total_cycles["rcs"] == 7655183225
    assert c.memory[("shared", "vram0")] == 16 * MiB
    assert c.mem_bytes() == (192 + 23992) * KiB


def test_not_drm_is_none():
    assert parse_fdinfo((DATA / "not_drm.txt").read_bytes()) is None


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("gfx", "gfx"),
        ("render", "gfx"),
        ("rcs", "gfx"),
        ("compute", "compute"),
        ("ccs", "compute"),
        ("dma", "copy"),
        ("copy", "copy"),
        ("bcs", "copy"),
        ("enc_1", "video"),
        ("dec", "video"),
        ("video-enhance", "video"),
        ("vcs0", "video"),
        ("vecs", "video"),
        ("jpeg", "video"),
        ("vpe", "other"),
        ("panthor", "other"),
    ],
)
def test_engine_classes(name, cls):
    assert engine_class(name) == cls


def test_sampler_dedupes_clients_and_sums(tmp_path):
    root = fake_proc(
        tmp_path,
        100,
        {
            3: ("/dev/dri/renderD128", "amdgpu.txt"),
            4: ("/dev/dri/renderD128", "amdgpu.txt"),  # dup of fd 3: same client id
            5: ("/dev/null", "not_drm.txt"),
            6: ("/dev/dri/card0", "amdgpu_newer.txt"),
        },
    )
    s = DRMSampler(procfs=root)
    assert s.available() == (True, "")
    key = ProcKey(100, 1)
    v = s.sample([Target(key)], 0)[key].values
    assert v["drm_clients"] == 2
    assert v["drm_engine_gfx_ns"] == 2283474040
    assert v["drm_engine_compute_ns"] == 73425184 + 9876543210
    assert v["drm_engine_copy_ns"] == 10295270 + 123456
    assert v["drm_engine_video_ns"] == 1500000
    assert v["drm_engine_other_ns"] is None and v["drm_engine_gfx_cycles"] is None
    assert v["drm_mem_bytes"] == (1052144 + 16544) * KiB + 2 * MiB + 524288 * KiB
    assert v["drm_mem_vram_bytes"] == (1052144 + 524288) * KiB
    assert s.scanner.fdinfo_reads == 3  # the /dev/null fd's fdinfo is never read
    assert set(v) == set(DRMSampler.metrics)


def test_fd_cache_rechecks_only_new_fds(tmp_path):
    root = fake_proc(tmp_path, 200, {3: ("/dev/dri/renderD128", "xe.txt"), 4: ("/dev/null", "not_drm.txt")})
    s = DRMSampler(procfs=root, refresh_ticks=1000)
    key = ProcKey(200, 1)
    s.sample([Target(key)], 0)
    assert s.scanner.readlinks == 2
    s.sample([Target(key)], 1)
    assert s.scanner.readlinks == 2  # nothing new: no readlink at all
    os.symlink("/dev/zero", root / "200" / "fd" / "9")
    v = s.sample([Target(key)], 2)[key].values
    assert s.scanner.readlinks == 3
    assert v["drm_engine_gfx_cycles"] == 28257900
    assert v["drm_engine_video_total_cycles"] == 2 * 7655183225  # vcs + vecs
    assert v["drm_engine_gfx_ns"] is None


def test_counters_stay_monotone_when_a_client_closes(tmp_path):
    root = fake_proc(
        tmp_path,
        300,
        {3: ("/dev/dri/renderD128", "amdgpu.txt"), 4: ("/dev/dri/renderD129", "amdgpu_newer.txt")},
    )
    s = DRMSampler(procfs=root)
    key = ProcKey(300, 1)
    before = s.sample([Target(key)], 0)[key].values
    (root / "300" / "fd" / "4").unlink()
    (root / "300" / "fdinfo" / "4").unlink()
    after = s.sample([Target(key)], 1)[key].values
    assert after["drm_clients"] == 1
    assert after["drm_engine_compute_ns"] == before["drm_engine_compute_ns"]
    assert after["drm_mem_bytes"] < before["drm_mem_bytes"]  # memory is a gauge: it drops


def test_real_proc_process_without_drm_fds():
    key = ProcKey(os.getpid(), start_ticks(os.getpid()))
    s = DRMSampler()
    assert s.available() == (True, "")
    out = s.sample([Target(key), Target(ProcKey(2**22 + 7, 1))], 0)  # second pid: does not exist
    assert list(out) == [key]
    v = out[key].values
    assert v["drm_clients"] == 0
    assert all(v[m] is None for m in v if m != "drm_clients")
