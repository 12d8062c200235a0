"""packaging/kubernetes: valid against the Kubernetes API schema, and hardened like the systemd unit.

The validator is kubernetes-validate (PyPI), which ships the JSON schemas that
the Kubernetes OpenAPI documents convert to (the same ones kubeconform uses);
strict mode rejects unknown fields, so a misspelt key fails here, not on a node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
yaml = pytest.importorskip("yaml", reason="pyyaml is not installed")

K8S = Path(__file__).resolve().parent.parent / "packaging" / "kubernetes"
VERSIONS = ("1.29.0", "1.33.0")  # an older supported minor and a current one


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["daemonset.yaml", "example-pod.yaml"])
def test_manifests_validate_strictly(name: str, version: str) -> None:
    docs = _docs(name)
    assert docs
    for doc in docs:
        kv.validate(doc, version, strict=True)


def test_the_validator_catches_mistakes() -> None:
    ds = next(d for d in _docs("daemonset.yaml") if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["hostPid"] = True  # misspelt
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)
    ds = next(d for d in _docs("daemonset.yaml") if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9464"  # a string
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)


def test_daemonset_shape_and_hardening() -> None:
    ds = next(d for d in _docs("daemonset.yaml") if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod.get("hostNetwork") is False
    assert pod["automountServiceAccountToken"] is False
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}  # as the unit's
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GPUOS_HINT_ENDPOINT"] == "ipc:///run/gpuos-hintd/hint.sock"
    assert env["GPUOS_HINT_OTLP_ENDPOINT"].startswith("http://") and env["GPUOS_HINT_METRICS_ADDR"] == "0.0.0.0"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert mounts["sockets"] == "/run/gpuos-hintd" == vols["sockets"]["hostPath"]["path"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/gpuos-hintd", "/tmp"}  # all it writes
    assert c["ports"][0]["containerPort"] == int(env["GPUOS_HINT_METRICS_PORT"])


def test_example_pod_mounts_the_same_socket_dir_unprivileged() -> None:
    [pod] = _docs("example-pod.yaml")
    spec = pod["spec"]
    ds = next(d for d in _docs("daemonset.yaml") if d["kind"] == "DaemonSet")
    ds_vol = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "sockets")
    [vol] = spec["volumes"]
    assert vol["hostPath"]["path"] == ds_vol["hostPath"]["path"]
    [c] = spec["containers"]
    assert c["volumeMounts"][0]["mountPath"] == "/run/gpuos-hintd"
    assert spec["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "hostPID" not in spec


@pytest.mark.root
def test_a_client_hints_through_a_read_only_mount_of_the_socket_dir(daemon: Any, tmp_path: Path) -> None:
    """What example-pod.yaml relies on: the socket directory mounted read-only still takes hints."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private read-only bind mount")
    run_dir = Path(daemon.endpoint.removeprefix("ipc://")).parent
    mnt = tmp_path / "pod-view"
    mnt.mkdir()
    code = "import gpuos_client as h\nwith h.phase('through_ro'):\n    pass\nh.flush()\n"
    script = (
        f'mount --bind -o ro {run_dir} {mnt} && touch {mnt}/probe 2>/dev/null && exit 3; exec {sys.executable} -c "$0"'
    )
    env = {**daemon.env, "GPUOS_HINT_ENDPOINT": f"ipc://{mnt}/hint.sock"}
    env.pop("GPUOS_HINT_CONTROL", None)
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, code], env=env, capture_output=True, timeout=60)
    if b"cannot change root filesystem propagation" in res.stderr:  # a chroot: no private mounts here
        pytest.skip(f"no private mount namespace here: {res.stderr.decode().strip()}")
    if res.returncode == 32 or b"permission denied" in res.stderr.lower():
        pytest.skip(f"mount not permitted here: {res.stderr.decode()[-200:]}")
    assert res.returncode == 0, res.stderr.decode()
    daemon.wait_for(
        lambda: daemon.query("SELECT count(*) FROM spans WHERE name = 'through_ro'")[0][0] == 1, what="the span"
    )
