"""Who a client process is beyond its pid: Kubernetes pod, container, systemd unit.

Everything comes from the process's cgroup path (``/proc/PID/cgroup``, already
read once per client by clients.describe_process).  The path is untrusted text
in the sense that its shape depends on the node's cgroup driver, container
runtime and cgroup namespace, so parsing goes component by component and
accepts only ids of the exact expected form (a 36-character pod UID, a
64-hex-digit container id); anything else leaves the field empty rather than
guessing.  The shapes handled (all seen on real nodes):

* kubelet with the **systemd** cgroup driver:
  ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope``
  (``kubepods-pod<uid>.slice`` directly under ``kubepods.slice`` for Guaranteed pods;
  ``crio-<id>.scope`` / ``docker-<id>.scope`` for CRI-O / dockershim;
  ``kubelet.slice/kubelet-kubepods.slice/...`` on kind nodes);
* kubelet with the **cgroupfs** driver: ``/kubepods/burstable/pod<uid>/<id>``
  (``/kubepods/pod<uid>/<id>`` for Guaranteed);
* plain containers: ``/system.slice/docker-<id>.scope``, ``/docker/<id>``,
  podman's ``libpod-<id>.scope``;
* plain systemd: ``/system.slice/foo.service``, ``/user.slice/.../session-3.scope``.

A daemon in its own cgroup namespace (a DaemonSet pod without hostCgroup)
sees other pods' paths relative to its own, e.g. ``/../../kubepods-besteffort-
pod<uid>.slice/cri-containerd-<id>.scope``: the component scan handles that too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

_UID_DASHED = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_UID_UNDERSCORED = re.compile(r"^[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: systemd-driver scope prefixes -> runtime name (semantic conventions' container.runtime).
_SCOPE_RUNTIMES: tuple[tuple[str, str], ...] = (
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("containerd-", "containerd"),
)
#: Parent directory names of cgroupfs-driver container ids that tell the runtime.
_DIR_RUNTIMES = {"docker": "docker", "crio": "cri-o", "containerd": "containerd", "libpod_parent": "podman"}
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """The parsed identity of one process; every field is None when the cgroup does not tell."""

    pod_uid: str | None = None
    qos_class: str | None = None  # guaranteed | burstable | besteffort (Kubernetes QoS)
    container_id: str | None = None
    container_runtime: str | None = None
    systemd_unit: str | None = None

    def resource_attributes(self) -> dict[str, str]:
        """OpenTelemetry resource attributes (semantic conventions where they exist)."""
        out: dict[str, str] = {}
        if self.pod_uid:
            out["k8s.pod.uid"] = self.pod_uid
        if self.qos_class:
            out["gpuos.k8s.qos_class"] = self.qos_class
        if self.container_id:
            out["container.id"] = self.container_id
        if self.container_runtime:
            out["container.runtime"] = self.container_runtime
        if self.systemd_unit:
            out["gpuos.systemd.unit"] = self.systemd_unit
        return out


EMPTY = Identity()


def _pod_uid(part: str) -> str | None:
    """``pod<uid>`` (cgroupfs) or ``kubepods[-qos]-pod<uid_>.slice`` (systemd) -> dashed UID."""
    if part.endswith(".slice"):
        stem = part[: -len(".slice")]
        head, sep, uid = stem.rpartition("-pod")
        if sep and head.startswith(("kubepods", "kubelet-kubepods")) and _UID_UNDERSCORED.match(uid):
            return uid.replace("_", "-")
        return None
    if part.startswith("pod") and _UID_DASHED.match(part[3:]):
        return part[3:]
    return None


def _qos(part: str) -> str | None:
    """The QoS level of a kubepods component: ``burstable``, ``kubepods-burstable.slice``, or the
    pod slice ``kubepods-burstable-pod<uid>.slice`` itself (all a cgroup namespace may leave)."""
    for q in ("burstable", "besteffort"):
        if part == q or part.endswith(f"kubepods-{q}.slice") or f"kubepods-{q}-pod" in part:
            return q
    return None


def _container(part: str, parent: str) -> tuple[str, str | None] | None:
    """(container id, runtime) from one path component, or None."""
    if part.endswith(".scope"):
        stem = part[: -len(".scope")]
        for prefix, runtime in _SCOPE_RUNTIMES:
            if stem.startswith(prefix) and _HEX64.match(stem[len(prefix) :]):
                return stem[len(prefix) :], runtime
        return None
    if _HEX64.match(part):
        return part, _DIR_RUNTIMES.get(parent)
    return None


def parse_cgroup(path: str) -> Identity:
    """The identity in one cgroup path (the v2 line, or v1 ``name=systemd``)."""
    if not path or len(path) > 4096:
        return EMPTY
    parts = [p for p in path.split("/") if p and p != ".."]
    pod = qos = cid = runtime = unit = None
    in_kubepods = False
    parent = ""
    for part in parts:
        if part in ("kubepods", "kubepods.slice") or part.startswith(("kubelet-kubepods", "kubepods-")):
            in_kubepods = True
        q = _qos(part)
        if q:
            qos = q
        uid = _pod_uid(part)
        if uid:
            pod, in_kubepods = uid, True
        found = _container(part, parent)
        if found:
            cid, runtime = found
        elif part.endswith(".service") or (part.endswith(".scope") and not part.startswith("crio-conmon-")):
            unit = part
        parent = part
    if pod and qos is None:
        qos = "guaranteed"  # Guaranteed pods sit directly under kubepods, with no QoS level
    if not in_kubepods:
        qos = None
    return Identity(pod_uid=pod, qos_class=qos, container_id=cid, container_runtime=runtime, systemd_unit=unit)


def short_container_id(cid: str | None) -> str:
    """The 12-character form (as `docker ps`/`crictl ps` show it), for metric labels."""
    return cid[:12] if cid else ""


class IdentityCache:
    """Parsed identities by process, kept a while after the process is gone.

    Spans of a process that died are emitted after the service forgets the
    client (reap pops it, then closes its spans), so identities are learnt
    while clients are alive (``learn``, on every tick) and kept for the most
    recent ``max_entries`` processes.  Daemon thread only.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._by_key: dict[Any, Identity] = {}

    def learn(self, clients: Mapping[Any, Any]) -> None:
        """Parse the cgroup of every client not seen yet (``clients``: ProcKey -> Client)."""
        if len(clients) and not (clients.keys() - self._by_key.keys()):
            return
        for key, client in clients.items():
            if key not in self._by_key:
                self._put(key, parse_cgroup(getattr(client, "cgroup", "") or ""))

    def get(self, key: Any, clients: Mapping[Any, Any] | None = None) -> Identity:
        ident = self._by_key.get(key)
        if ident is None:
            client = clients.get(key) if clients is not None else None
            ident = parse_cgroup(getattr(client, "cgroup", "") or "") if client is not None else EMPTY
            if client is not None:
                self._put(key, ident)
        return ident

    def _put(self, key: Any, ident: Identity) -> None:
        if len(self._by_key) >= self.max_entries:
            self._by_key.pop(next(iter(self._by_key)))  # oldest first (insertion order)
        self._by_key[key] = ident

    def __len__(self) -> int:
        return len(self._by_key)
