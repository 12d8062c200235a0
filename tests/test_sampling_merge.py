"""sampling.sample_all merges samplers' results without changing a sampler's own dicts."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import ClassVar

from gpuos_hintd.model import Metric, ProcKey, ProcSample, Target
from gpuos_hintd.samplers.base import Sampler
from gpuos_hintd.sampling import SamplerState, sample_all

KEY = ProcKey(1, 2)


class Cached(Sampler):
    """Returns the same ProcSample every call (as a sampler holding its last values might)."""

    name = "cached"
    metrics: ClassVar[Mapping[str, Metric]] = {"a": Metric("x", "gauge", "process", "a")}

    def __init__(self) -> None:
        self.ps = ProcSample({"a": 1}, {7: {"ta": 1}})

    def available(self) -> tuple[bool, str]:
        return True, ""

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        return {KEY: self.ps}


class Fresh(Cached):
    name = "fresh"
    fresh_results = True

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        return {KEY: ProcSample({"b": 2}, {7: {"tb": 2}})}


def states(*samplers: Sampler) -> list[SamplerState]:
    return [SamplerState(s, True, "") for s in samplers]


def test_cached_result_is_copied_before_a_merge():
    c = Cached()
    got = sample_all(states(c, Fresh()), [Target(KEY)], 1)[KEY]
    assert got.values == {"a": 1, "b": 2} and got.threads == {7: {"ta": 1, "tb": 2}}
    assert c.ps.values == {"a": 1} and c.ps.threads == {7: {"ta": 1}}


def test_fresh_result_is_merged_into_and_single_results_pass_through():
    got = sample_all(states(Fresh(), Cached()), [Target(KEY)], 1)[KEY]
    assert got.values == {"a": 1, "b": 2} and got.threads == {7: {"ta": 1, "tb": 2}}
    c = Cached()
    assert sample_all(states(c), [Target(KEY)], 1)[KEY] is c.ps
