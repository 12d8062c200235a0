"""gpuos_client.torch against real torch (CPU) and a real daemon: the spans stored match what ran.

Every program here is a real client process; the daemon is the real one from
conftest.  torch comes from scripts/setup-ml-test.sh (skipped with its reason
where it could not be installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter

from mlreq import need

TRAIN = """
import json, os, torch, gpuos_client as h, gpuos_client.torch as gt
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
gt.instrument(m, depth=1)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
gt.instrument_optimizer(opt)
ds = TensorDataset(torch.randn(48, 8), torch.randn(48, 1))
dl = gt.instrument_dataloader(DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork"))
assert isinstance(dl, DataLoader)
for epoch in range(2):
    for x, y in dl:
        loss = torch.nn.functional.mse_loss(m(x), y)
        with gt.backward():
            loss.backward()
        opt.step(); opt.zero_grad()
m.eval()
with torch.no_grad():
    m(torch.randn(2, 8))
h.flush()
print(json.dumps({"pid": os.getpid(), "errors": gt.errors()}))
"""


def rows(d, where="1=1"):
    return [dict(r) for r in d.query(f"SELECT * FROM spans WHERE {where} ORDER BY start_ns")]


def test_training_loop_spans_counts_nesting_classes_and_forked_workers(daemon):
    need("torch")
    out = json.loads(daemon.client(TRAIN, timeout=120).stdout.decode().strip().splitlines()[-1])
    assert out["errors"] == 0
    pid = out["pid"]
    batches = 2 * 6
    # 12 data.fetch spans from the two worker processes of each epoch.
    daemon.wait_for(lambda: len(rows(daemon, "name = 'data.fetch'")) >= batches, what="worker fetch spans")
    daemon.wait_for(lambda: len(rows(daemon, f"pid = {pid}")) >= batches * 7 + 2 + 4, what="main spans")
    main = rows(daemon, f"pid = {pid}")
    by_id = {r["span_id"]: r for r in main}
    c = Counter((r["path"], r["workload_class"]) for r in main)
    assert c == {
        ("forward", "training.step"): batches,
        ("forward/0", "training.step"): batches,
        ("forward/1", "training.step"): batches,
        ("forward/2", "training.step"): batches,
        ("backward", "training.step"): batches,
        ("optimizer.step", "training.step"): batches,
        ("data", "training.data"): batches + 2,  # the next() that ends each epoch too
        ("forward", None): 1,  # eval forward under no_grad: no class of its own
        ("forward/0", None): 1,
        ("forward/1", None): 1,
        ("forward/2", None): 1,
    }, c
    assert all(r["status"] == "ok" for r in main)
    for r in main:
        if r["path"].startswith("forward/"):
            parent = by_id[r["parent_span_id"]]
            assert parent["name"] == "forward"
            assert parent["start_ns"] <= r["start_ns"] <= r["end_ns"] <= parent["end_ns"]
    # Workers: separate processes (forked), two per epoch, each fetching whole batches.
    fetch = rows(daemon, "name = 'data.fetch'")
    assert len(fetch) == batches
    assert pid not in {r["pid"] for r in fetch}
    assert len({r["pid"] for r in fetch}) == 4  # 2 workers x 2 epochs (not persistent)
    attrs = [json.loads(r["attrs"]) for r in fetch]
    assert Counter(a["worker"] for a in attrs) == {0: 6, 1: 6}
    assert {a["samples"] for a in attrs} == {8}
    assert {r["workload_class"] for r in fetch} == {"training.data"}
    assert {r["depth"] for r in fetch} == {1}


def test_exceptions_close_phases_as_errors_and_never_leak_nesting(daemon):
    need("torch")
    code = """
        import json, torch, gpuos_client as h, gpuos_client.torch as gt

        class Boom(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 2)
                self.fail = True
            def forward(self, x):
                y = self.lin(x)
                if self.fail:
                    raise RuntimeError("boom")
                return y

        m = Boom()
        gt.instrument(m, depth=1, nvtx=True)      # nvtx: a no-op without CUDA
        try:
            m(torch.randn(1, 2))
        except RuntimeError:
            pass
        m.fail = False
        with h.phase("after"):
            m(torch.randn(1, 2))
        try:
            with gt.backward():
                torch.ones(1).backward()          # no grad_fn: raises
        except RuntimeError:
            pass
        h.flush()
        print(json.dumps({"errors": gt.errors()}))
    """
    out = json.loads(daemon.client(code, timeout=60).stdout.decode().strip().splitlines()[-1])
    assert out["errors"] == 0
    daemon.wait_for(lambda: len(rows(daemon)) >= 6, what="spans")
    got = [(r["path"], r["status"]) for r in rows(daemon)]
    assert got == [
        ("forward", "error"),
        ("forward/lin", "ok"),
        ("after", "ok"),
        ("after/forward", "ok"),
        ("after/forward/lin", "ok"),
        ("backward", "error"),
    ], got


def test_importing_the_integrations_never_imports_torch_or_transformers(tmp_path):
    code = """
        import sys, json
        import gpuos_client, gpuos_client.torch, gpuos_client.hf, gpuos_client.classes, gpuos_client._autoload
        gpuos_client._autoload.boot()
        import json as _j  # an unrelated import passes through the post-import finder
        print(json.dumps({m: m in sys.modules for m in ("torch", "transformers", "numpy")}))
    """
    env = {"GPUOS_HINT_ENDPOINT": f"ipc://{tmp_path}/nobody.sock", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"torch": False, "transformers": False, "numpy": False}


def test_hooks_cost_little_per_forward(tmp_path):
    """The hook pair per forward stays in microseconds (a bound, not a benchmark: CI is noisy)."""
    need("torch")
    code = """
        import json, time, torch, gpuos_client.torch as gt
        m = torch.nn.Linear(4, 4).eval()
        x = torch.randn(1, 4)
        def per_call(n=3000):
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(n):
                    m(x)
            return (time.perf_counter() - t0) / n
        base = min(per_call() for _ in range(3))
        gt.instrument(m)
        hinted = min(per_call() for _ in range(3))
        print(json.dumps({"base_us": base * 1e6, "hinted_us": hinted * 1e6}))
    """
    env = {"GPUOS_HINT_ENDPOINT": f"ipc://{tmp_path}/nobody.sock", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["hinted_us"] - r["base_us"] < 100, r


def test_compiled_model_under_auto_one_phase_per_call_no_graph_break_no_warning(daemon):
    need("torch")
    code = """
        import json, warnings, torch, gpuos_client as h, gpuos_client.torch as gt
        warnings.simplefilter("error")                 # any warning we cause fails the program
        gt.auto()
        m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
        import torch._dynamo
        breaks = torch._dynamo.explain(m)(torch.randn(2, 4)).graph_break_count
        c = torch.compile(m, backend="eager")
        with torch.no_grad():
            for _ in range(3):
                c(torch.randn(2, 4))
        h.flush()
        print(json.dumps({"breaks": breaks, "errors": gt.errors()}))
    """
    out = json.loads(daemon.client(code, timeout=120).stdout.decode().strip().splitlines()[-1])
    assert out == {"breaks": 0, "errors": 0}
    # explain() runs the module once (one phase), then 3 compiled calls, one phase each: the
    # OptimizedModule wrapper is the top-level forward, the module inside it is not a second one.
    daemon.wait_for(lambda: len(rows(daemon)) >= 4, what="spans")
    assert [r["path"] for r in rows(daemon)] == ["forward"] * 4


def test_auto_discovery_ends_and_leaves_only_the_models_own_hooks(daemon):
    need("torch")
    code = """
        import json, torch, gpuos_client as h, gpuos_client.torch as gt
        from torch.nn.modules import module as M
        gt.auto()
        m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        loss = torch.nn.MSELoss()                      # parameterless: no phase of its own
        with torch.no_grad():
            for _ in range(gt.DISCOVERY_QUIET + 10):
                loss(m(torch.randn(1, 4)), torch.zeros(1, 4))
        late = torch.nn.Linear(4, 4)                   # first called after discovery ended
        late(torch.randn(1, 4))
        h.flush()
        print(json.dumps({"ended": gt._discovery["ended"], "global_hooks": len(M._global_forward_pre_hooks)
                          + len(M._global_forward_hooks), "errors": gt.errors()}))
    """
    out = json.loads(daemon.client(code, timeout=60).stdout.decode().strip().splitlines()[-1])
    assert out == {"ended": True, "global_hooks": 0, "errors": 0}
    n = 50 + 10
    daemon.wait_for(lambda: len(rows(daemon)) >= n, what=f"{n} spans")
    assert [r["path"] for r in rows(daemon)] == ["forward"] * n  # the model's, every call; none for late
