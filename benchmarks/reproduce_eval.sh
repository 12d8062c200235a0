#!/usr/bin/env bash
# Every number in docs/evaluation.md that this machine can make, in one command (~40 min on 2 shared
# cores): the update periods of the signals, Phase 2 on the CPU, the repeated evaluation at 10/5/20 Hz,
# then the generated blocks of docs/evaluation.md (the prose around them is kept).
#   benchmarks/reproduce_eval.sh            (from the repository root, after scripts/setup.sh --test
#                                            and .venv/bin/pip install -e '.[eval]')
# The H200 numbers come from benchmarks/gpu/run_phase2.sh on the GPU host; copy its $OUT to
# benchmarks/results/phase2_h200/ and run .venv/bin/python benchmarks/eval_doc.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
nice -n 19 $PY benchmarks/counter_periods.py
nice -n 19 $PY benchmarks/phase2.py --out benchmarks/results/phase2_cpu
if [ "$(id -u)" = 0 ] && command -v bpftrace >/dev/null; then
  nice -n 19 $PY benchmarks/phase2.py --ebpf --knobs sync,size,cadence --conditions "no hints"     --out benchmarks/results/phase2_cpu_ebpf
else
  echo "eBPF Phase 2 skipped: needs root and bpftrace"
fi
nice -n 19 $PY benchmarks/eval_cpu.py --seeds 10 --base-hz 20 --rates 10,5,20,2.5
nice -n 19 $PY benchmarks/eval_cpu.py --seeds 10 --base-hz 10 --rates 10 --out benchmarks/results/eval_cpu_real10hz.json
$PY benchmarks/eval_doc.py
