#!/usr/bin/env bash
# Two GPU processes at once, and the sweeps, on an NVIDIA GPU - the cases docs/evaluation.md
# lists as unmeasured by the first runs: how the daemon splits energy between processes sharing
# a GPU, and what the OS sees of sync-free (sync every=0) and stream-ordering variants.
#   SKIP_WHEELS=1 benchmarks/gpu/run_shared.sh      (results in $OUT)
set -uo pipefail
OUT=${OUT:-$PWD/out/shared}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads PYTHONUNBUFFERED=1
export GPUOS_HINT_ENDPOINT=ipc:///tmp/gpuos/hint.sock GPUOS_HINT_STATE_DIR=/tmp/gpuos/state
ctl() { python3 -m gpuos_hintd.cli.main "$@"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m gpuos_hintd.main --sample-hz 20 --store-samples-hz 0 --log-format json >"$OUT/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do ctl --timeout 0.2 status >/dev/null 2>&1 && break; sleep 0.1; done
set -x
# 1. two processes on one GPU at the same time
python3 -m gpuos_workloads.llm --device gpu --requests 6 --prompt-tokens 4096 --hidden 4096 --layers 8 \
  --steps 300 --quiet --json "$OUT/llm_shared.json" &
A=$!
python3 -m gpuos_workloads.train --device gpu --steps 120 --batch 8192 --features 1024 --hidden 8192 \
  --shards 2 --quiet --json "$OUT/train_shared.json" &
B=$!
wait $A $B
# 2. the sweeps: submission cadence, sync frequency (every=0 is sync-free), stream ordering
python3 -m gpuos_workloads.sweeps --device gpu --launches 3000 --n 1024 --quiet --json "$OUT/sweeps.json"
set +x
sleep 1.5
ctl status --json > "$OUT/status.json"
ctl phases | tee "$OUT/phases.txt"
kill -TERM $DPID; wait $DPID; echo "daemon exit $?"
cp /tmp/gpuos/state/gpuos-hint.db "$OUT/shared_run.db"
python3 -m gpuos_hintd.cli.main evaluate --store "$OUT/shared_run.db" --json "$OUT/eval.json" --md "$OUT/eval.md" \
  && head -60 "$OUT/eval.md"
ls -la "$OUT"
