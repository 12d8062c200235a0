"""samplers/registry.py: the explicit table, building with failures as NullSamplers, one owner per metric."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

from gpuos_hintd.config import Config
from gpuos_hintd.model import Metric
from gpuos_hintd.samplers import registry
from gpuos_hintd.samplers.base import NullSampler, Sampler
from gpuos_hintd.service import HintService


def test_every_row_names_its_class_and_no_metric_has_two_owners():
    owner: dict[str, str] = {}
    for name in registry.SAMPLERS:
        try:
            cls = registry.sampler_class(name)
        except ImportError:  # an optional dependency this environment lacks: check the others
            continue
        assert cls.name == name
        for metric in cls.metrics:
            assert metric not in owner, f"{metric} declared by {owner.get(metric)} and {name}"
            owner[metric] = name
    assert tuple(registry.SAMPLERS) == registry.KNOWN


def test_disabled_and_opt_in_samplers_are_kept_with_their_reason():
    out = {s.name: s for s in registry.build(disabled=("drm", "nvml", "rocm", "maps", "syscalls"))}
    assert set(out) == set(registry.KNOWN)
    assert out["nvml"].available() == (False, "disabled by configuration")
    assert out["syscalls_ebpf"].available() == (False, "opt-in: add 'syscalls_ebpf' to enable_samplers")
    assert not isinstance(out["proc"], NullSampler)


def _fake(name: str, metric: str) -> type[Sampler]:
    class Fake(Sampler):
        metrics: ClassVar = {metric: Metric("ns", "counter", "process", "test")}

        def available(self) -> tuple[bool, str]:
            return True, ""

        def sample(self, targets: Collection, now_ns: int) -> dict:
            return {}

    Fake.name = name
    return Fake


def test_a_metric_declared_twice_stays_with_the_first_sampler(monkeypatch):
    fakes = {"a": _fake("a", "cpu_ns"), "b": _fake("b", "cpu_ns"), "c": _fake("c", "other_ns")}
    monkeypatch.setattr(registry, "sampler_class", fakes.__getitem__)
    a, b, c = registry.build(names=("a", "b", "c"))
    assert not isinstance(a, NullSampler) and not isinstance(c, NullSampler)
    assert b.available() == (False, "metric 'cpu_ns' is already declared by 'a'")


def test_an_import_failure_becomes_a_null_sampler(monkeypatch):
    def broken(name: str) -> type[Sampler]:
        raise ModuleNotFoundError("No module named 'pynvml'", name="pynvml")

    monkeypatch.setattr(registry, "sampler_class", broken)
    (s,) = registry.build(names=("nvml",))
    assert s.available() == (False, "cannot import: ModuleNotFoundError: No module named 'pynvml'")


def test_the_service_takes_what_the_registry_built(tmp_path):
    built = registry.build(disabled=("nvml", "rocm", "drm"))
    svc = HintService(Config(state_dir=tmp_path), None, built)
    try:
        names = [st.sampler.name for st in svc.samplers]
        assert names == list(registry.KNOWN)
        assert set(registry.sampler_class("proc").metrics) <= set(svc.metrics)
    finally:
        svc.shutdown()
