"""Process identity from cgroup paths: Kubernetes pod UID, QoS class, container id, systemd unit.

The paths are the shapes kubelet, containerd, CRI-O, Docker, podman and systemd
write (both kubelet cgroup drivers, all three QoS classes, a daemon inside its
own cgroup namespace), plus hostile and malformed ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gpuos_hintd import procfs
from gpuos_hintd.identity import EMPTY, Identity, IdentityCache, parse_cgroup, short_container_id

UID = "3f2a1b4c-1234-4e5f-8a9b-0123456789ab"
UID_ = UID.replace("-", "_")
CID = "4c5d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5"
assert len(CID) == 64

CASES: list[tuple[str, Identity]] = [
    # kubelet, systemd cgroup driver, containerd
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
        Identity(UID, "burstable", CID, "containerd"),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        Identity(UID, "besteffort", CID, "containerd"),
    ),
    # Guaranteed pods sit directly under kubepods.slice
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        Identity(UID, "guaranteed", CID, "containerd"),
    ),
    # CRI-O, and its conmon monitor (not the container, not a unit to report)
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
        Identity(UID, "burstable", CID, "cri-o"),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope",
        Identity(UID, "burstable", None, None),
    ),
    # dockershim / cri-dockerd
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope",
        Identity(UID, "besteffort", CID, "docker"),
    ),
    # kubelet, cgroupfs driver (v1 name=systemd line or v2)
    (f"/kubepods/burstable/pod{UID}/{CID}", Identity(UID, "burstable", CID, None)),
    (f"/kubepods/besteffort/pod{UID}/{CID}", Identity(UID, "besteffort", CID, None)),
    (f"/kubepods/pod{UID}/{CID}", Identity(UID, "guaranteed", CID, None)),
    # the pod-level cgroup itself (the pause sandbox, or a process moved there)
    (f"/kubepods/burstable/pod{UID}", Identity(UID, "burstable", None, None)),
    # kind / nested kubelet
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        Identity(UID, "besteffort", CID, "containerd"),
    ),
    # seen from inside the daemon's own cgroup namespace (a DaemonSet without hostCgroup)
    (
        f"/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
        Identity(UID, "burstable", CID, "containerd"),
    ),
    # plain containers, no Kubernetes
    (f"/system.slice/docker-{CID}.scope", Identity(None, None, CID, "docker")),
    (f"/docker/{CID}", Identity(None, None, CID, "docker")),
    (
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
        Identity(None, None, CID, "podman", "user@1000.service"),
    ),
    # plain systemd
    ("/system.slice/vllm.service", Identity(systemd_unit="vllm.service")),
    ("/user.slice/user-1000.slice/session-3.scope", Identity(systemd_unit="session-3.scope")),
    (
        "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u42.service",
        Identity(systemd_unit="run-u42.service"),
    ),
    ("/", EMPTY),
    ("", EMPTY),
]


@pytest.mark.parametrize(("path", "want"), CASES, ids=[c[0][-60:] or "empty" for c in CASES])
def test_parse_cgroup_real_shapes(path: str, want: Identity) -> None:
    assert parse_cgroup(path) == want


@pytest.mark.parametrize(
    ("path", "want_cid"),
    [
        (f"/kubepods/burstable/pod{UID[:-1]}/{CID}", CID),  # a UID one character short (the id is fine)
        (f"/kubepods/burstable/pod{UID.upper()}/", None),  # not lower-case hex
        (f"/system.slice/kubepods-burstable-pod{UID}.slice", None),  # dashes where systemd writes underscores
        (f"/whatever/notpods-pod{UID_}.slice", None),  # a pod-looking slice outside kubepods
        (f"/system.slice/docker-{CID[:-1]}.scope", None),  # a 63-digit id
        ("/" + "a/" * 3000, None),  # over-long
        ("/kubepods/\x1b[31mpod/../..", None),  # terminal escapes
    ],
)
def test_malformed_ids_are_not_guessed(path: str, want_cid: str | None) -> None:
    ident = parse_cgroup(path)
    assert ident.pod_uid is None
    assert ident.container_id == want_cid


def test_resource_attributes_use_semantic_convention_keys() -> None:
    ident = CASES[0][1]
    assert ident.resource_attributes() == {
        "k8s.pod.uid": UID,
        "gpuos.k8s.qos_class": "burstable",
        "container.id": CID,
        "container.runtime": "containerd",
    }
    assert EMPTY.resource_attributes() == {}
    assert short_container_id(CID) == CID[:12] and short_container_id(None) == ""


def test_this_process_parses_like_procfs_says() -> None:
    """Our own real cgroup: the unit agrees with procfs.systemd_unit wherever that names a .service."""
    path = procfs.read_cgroup(Path("/proc"), os.getpid())
    ident = parse_cgroup(path)
    unit = procfs.systemd_unit(path)
    if unit and unit.endswith(".service"):
        assert ident.systemd_unit == unit


class _C:
    def __init__(self, cgroup: str) -> None:
        self.cgroup = cgroup


def test_identity_cache_keeps_gone_processes_and_is_bounded() -> None:
    cache = IdentityCache(max_entries=3)
    clients = {1: _C(CASES[0][0]), 2: _C("/system.slice/a.service")}
    cache.learn(clients)
    assert len(cache) == 2
    assert cache.get(1).pod_uid == UID
    assert cache.get(2, {}).systemd_unit == "a.service"  # the process is gone; the identity stays
    assert cache.get(99, {}) is EMPTY  # never seen: empty, and not cached
    for k in range(3, 10):
        cache.learn({k: _C(f"/system.slice/u{k}.service")})
    assert len(cache) == 3 and cache.get(9, {}).systemd_unit == "u9.service"
