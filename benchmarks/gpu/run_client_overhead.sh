#!/usr/bin/env bash
# Issue 7 on the GPU box, in one batch: what hints cost launch-bound and GPU-bound programs, and
# (optionally) the CPU client benchmarks on this host's quiet 16-core CPU.  JSON lands in $OUT.
#   stage 1 (~2-4 min, bounded by --budget-s 200):  HF generate + launch-bound loop
#                                                  (bench_generate_overhead.py -> generate_overhead.json)
#   stage 2 (~40 s): the GPU-bound CuPy loop with a private daemon (bench_overhead.py -> gpu_overhead.json)
#   stage 3 (only with CPU_BENCH=1, ~6 min): bench_gil_loop, bench_client, bench_client_cpu on this host
# Usage on the GPU machine:  OUT=/some/dir benchmarks/gpu/run_client_overhead.sh
set -uo pipefail
OUT=${OUT:-$PWD/out/client_overhead}
mkdir -p "$OUT"
exec > >(tee "$OUT/run_client_overhead.log") 2>&1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null; python3 --version; uptime

echo "== 1. generate + launch-bound loop"
timeout 300 python3 benchmarks/gpu/bench_generate_overhead.py --budget-s 200 --out "$OUT/generate_overhead.json" \
  | tail -6

echo "== 2. GPU-bound loop (bench_overhead.py) with a private daemon"
D=$(mktemp -d)
export GPUOS_HINT_ENDPOINT=ipc://$D/hint.sock GPUOS_HINT_CONTROL=ipc://$D/control.sock GPUOS_HINT_STATE_DIR=$D/state
python3 -m gpuos_hintd.main --log-level warning >"$D/hintd.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do python3 -m gpuos_hintd.cli.main --timeout 0.2 status >/dev/null 2>&1 && break; sleep 0.1; done
timeout 120 python3 benchmarks/gpu/bench_overhead.py --out "$OUT/gpu_overhead.json" | tail -4
kill -TERM $DPID; wait $DPID
unset GPUOS_HINT_ENDPOINT GPUOS_HINT_CONTROL GPUOS_HINT_STATE_DIR

if [[ -n "${CPU_BENCH:-}" ]]; then
  echo "== 3. CPU client benchmarks on this host"
  timeout 300 python3 benchmarks/bench_gil_loop.py --out "$OUT/gil_loop_gpu_host.json" | tail -6
  timeout 150 python3 benchmarks/bench_client.py --out "$OUT/client_hot_path_gpu_host.json" | tail -14
  timeout 150 python3 benchmarks/bench_client_cpu.py --out "$OUT/client_cpu_gpu_host.json" | tail -10
fi
ls -la "$OUT"
