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
