"""gpuos-run: an unmodified script gets the phases that hand instrumentation gives, and nothing breaks.

Real launcher (the console script in .venv/bin), real Python children, real
torch (where installed), real daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from mlreq import need

GPUOS_RUN = str(Path(sys.executable).with_name("gpuos-run"))

# One script, three ways: unmodified (HAND unset), hand-instrumented through
# gpuos_client.torch (HAND=1), and with plain reference phases around each
# operation (REF=1) whose edges the automatic phases must match.
SCRIPT = """
import contextlib, json, os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset

HAND = os.environ.get("HAND") == "1"
REF = os.environ.get("REF") == "1"
if HAND or REF:
    import gpuos_client as h
if HAND:
    import gpuos_client.torch as gt

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
loader = DataLoader(TensorDataset(torch.randn(64, 16), torch.randn(64, 1)), batch_size=8,
                    num_workers=2, multiprocessing_context="fork")
if HAND:
    gt.instrument(model)
    gt.instrument_optimizer(opt)
    gt.instrument_dataloader(loader)
    gt.instrument_backward()

def ref(name):
    return h.phase(name) if REF else contextlib.nullcontext()

it = iter(loader)
while True:
    with ref("ref.data"):
        try:
            x, y = next(it)
        except StopIteration:
            break
    with ref("ref.forward"):
        out = model(x)
    loss = torch.nn.functional.mse_loss(out, y)
    with ref("ref.backward"):
        loss.backward()
    with ref("ref.step"):
        opt.step()
    opt.zero_grad()
print(json.dumps({"pid": os.getpid(), "loss": float(loss)}))
"""


def spans_after(d, after_id: int) -> list[dict]:
    return [dict(r) for r in d.query("SELECT * FROM spans WHERE id > ? ORDER BY start_ns", (after_id,))]


def max_id(d) -> int:
    d.sync()
    return d.query("SELECT coalesce(max(id), 0) AS m FROM spans")[0]["m"]


def run(d, argv, env=None, timeout=120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, env={**d.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return res


def summary(spans, pid):
    main = Counter((s["path"], s["workload_class"], s["status"]) for s in spans if s["pid"] == pid)
    workers = Counter((s["path"], s["workload_class"], s["attrs"]) for s in spans if s["pid"] != pid)
    return main, workers


def collect(d, after, pid, expect):
    d.wait_for(lambda: len(spans_after(d, after)) >= expect, what=f"{expect} spans")
    return spans_after(d, after)


def test_unmodified_script_under_gpuos_run_gets_the_hand_instrumented_phases(daemon, tmp_path):
    need("torch")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    batches = 8
    expect = batches * 4 + 1 + batches  # data(+1 end), forward, backward, step; a fetch per batch

    a0 = max_id(daemon)
    hand = json.loads(run(daemon, [sys.executable, str(script)], {"HAND": "1"}).stdout.splitlines()[-1])
    hand_spans = collect(daemon, a0, hand["pid"], expect)
    b0 = max_id(daemon)
    auto = json.loads(run(daemon, [GPUOS_RUN, "--", sys.executable, str(script)]).stdout.splitlines()[-1])
    auto_spans = collect(daemon, b0, auto["pid"], expect)

    assert auto["loss"] == hand["loss"]  # the same computation ran
    hand_main, hand_workers = summary(hand_spans, hand["pid"])
    auto_main, auto_workers = summary(auto_spans, auto["pid"])
    assert hand_main == {
        ("data", "training.data", "ok"): batches + 1,
        ("forward", "training.step", "ok"): batches,
        ("backward", "training.step", "ok"): batches,
        ("optimizer.step", "training.step", "ok"): batches,
    }, hand_main
    assert auto_main == hand_main
    assert auto_workers == hand_workers
    assert sum(hand_workers.values()) == batches


def test_automatic_phase_edges_agree_with_reference_phases_within_1ms(daemon, tmp_path):
    need("torch")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    a0 = max_id(daemon)
    out = json.loads(run(daemon, [GPUOS_RUN, "--", sys.executable, str(script)], {"REF": "1"}).stdout.splitlines()[-1])
    spans = collect(daemon, a0, out["pid"], 8 * 8 + 2 + 8)
    main = {s["span_id"]: s for s in spans if s["pid"] == out["pid"]}
    pairs = {"data": "ref.data", "forward": "ref.forward", "backward": "ref.backward", "optimizer.step": "ref.step"}
    checked = Counter()
    edges = []
    for s in main.values():
        if s["name"] not in pairs:
            continue
        parent = main[s["parent_span_id"]]
        assert parent["name"] == pairs[s["name"]], (s["path"], parent["path"])
        d_begin = s["start_ns"] - parent["start_ns"]
        d_end = parent["end_ns"] - s["end_ns"]
        assert d_begin >= 0 and d_end >= 0, (s["path"], d_begin, d_end)  # nested, as they ran
        edges += [d_begin, d_end]
        checked[s["name"]] += 1
    # The last ref.data has the epoch-ending next() inside; every reference phase has its twin.
    assert checked == {"data": 9, "forward": 8, "backward": 8, "optimizer.step": 8}, checked
    edges.sort()
    p95, worst = edges[int(len(edges) * 0.95)], edges[-1]
    print(
        f"edge differences: median {edges[len(edges) // 2] / 1e3:.0f} us, p95 {p95 / 1e3:.0f} us, max {worst / 1e3:.0f} us"
    )
    # The target: within 1 ms.  A loaded 2-core CI box can stall one edge on a GIL hand-off to the
    # client's sender thread (it would stall a hand-placed phase the same way), so: 95 % of the edges
    # within 1 ms and none beyond 5 ms.
    assert p95 < 1_000_000, edges
    assert worst < 5_000_000, edges


def test_class_for_any_command_and_its_python_children(daemon, tmp_path):
    child = "import gpuos_client as h, os; h.flush(); print(os.getpid())"
    res = run(
        daemon,
        [GPUOS_RUN, "--class", "inference.decode", "--", "sh", "-c", f"echo $$; {sys.executable} -c '{child}'"],
    )
    sh_pid, py_pid = (int(x) for x in res.stdout.split())

    def classes():
        return {r["pid"]: r["workload_class"] for r in daemon.query("SELECT pid, workload_class FROM processes")}

    got = daemon.wait_for(lambda: (c := classes()).get(sh_pid) and c.get(py_pid) and c, what="both classes")
    assert got[sh_pid] == "inference.decode"  # a shell: declared by the launcher before its exec
    assert got[py_pid] == "inference.decode"  # a grandchild: from the inherited environment


def test_fails_open_and_chains_an_existing_sitecustomize(daemon, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    code = "import os, sys; print(os.environ.get('OTHER_SITECUSTOMIZE')); sys.exit(3)"
    env = {"PYTHONPATH": str(other)}
    # Chained, exit code kept.
    res = subprocess.run(
        [GPUOS_RUN, "--", sys.executable, "-c", code], env={**daemon.env, **env}, capture_output=True, text=True
    )
    assert (res.returncode, res.stdout.strip()) == (3, "ran"), res.stderr
    # A broken client path (gpuos_client not importable, a bad class) or no daemon: the program still runs as is.
    bad = {
        **env,
        "GPUOS_HINT_CLASS": "x" * 500,
        "GPUOS_HINT_ENDPOINT": f"ipc://{tmp_path}/nobody.sock",
        "GPUOS_RUN_CLIENT_PATH": "/nonexistent",
    }
    res = subprocess.run(
        [GPUOS_RUN, "--", sys.executable, "-I", "-c", "print('isolated')"],
        env={**daemon.env, **bad},
        capture_output=True,
        text=True,
    )
    assert (res.returncode, res.stdout.strip()) == (0, "isolated"), res.stderr
    res = subprocess.run(
        [GPUOS_RUN, "--", sys.executable, "-c", code], env={**daemon.env, **bad}, capture_output=True, text=True
    )
    assert (res.returncode, res.stdout.strip(), res.stderr) == (3, "ran", ""), res.stderr
    # An invalid --class: hints off, said once on stderr, the command still runs.
    res = subprocess.run(
        [GPUOS_RUN, "--class", "bad\x1b[31m", "--", "sh", "-c", "exit 4"],
        env=daemon.env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 4 and "hints off" in res.stderr and "\x1b" not in res.stderr
    # A missing command: the shell's exit status.
    res = subprocess.run([GPUOS_RUN, "--", "/nonexistent/cmd"], env=daemon.env, capture_output=True, text=True)
    assert res.returncode == 127


def test_a_python_script_that_never_imports_torch_stays_without_it(daemon, tmp_path):
    code = textwrap.dedent(
        """
        import json, sys
        print(json.dumps({"torch": "torch" in sys.modules, "client": "gpuos_client" in sys.modules,
                          "run": __import__("os").environ.get("GPUOS_RUN")}))
        """
    )
    res = run(daemon, [GPUOS_RUN, "--", sys.executable, "-c", code])
    assert json.loads(res.stdout) == {"torch": False, "client": True, "run": "1"}
    assert os.environ.get("GPUOS_RUN") is None  # nothing leaked into this process
