#!/usr/bin/env bash
# Phase 2 (mechanism isolation) and the asynchronous-pipeline case on one NVIDIA GPU: ~5 minutes.
#   benchmarks/gpu/run_phase2.sh        (results in $OUT: run.log, phase2.json, phase2_raw.json.gz,
#                                        phase2.md, phase2.png if matplotlib is there, async_pipeline.json,
#                                        counter_periods_gpu.json - 7 files)
# 5 repeats x 15 levels x 1.2 s per condition (hints, no hints) at 20 Hz (>= 20 windows per level),
# then 10 async trials and a 3 s poll of every sampler's update period.  The eBPF syscall counts are
# included only where bpftrace runs (root and bpftrace installed); run.log says which.
set -uo pipefail
OUT=${OUT:-$PWD/out/phase2}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
EBPF=""
if command -v bpftrace >/dev/null && [ "$(id -u)" = 0 ]; then EBPF=--ebpf; echo "eBPF: bpftrace $(bpftrace --version)";
else echo "eBPF: not run (bpftrace: $(command -v bpftrace || echo absent); uid $(id -u))"; fi
date -u +%T
timeout 260 python3 benchmarks/phase2.py --device gpu --hz 20 --repeats 5 --hold-s 1.2 --base-n 1024 \
  --sizes 512,1024,2048 $EBPF --out "$OUT"
echo "phase2 exit $?"; date -u +%T
timeout 60 python3 benchmarks/gpu/async_pipeline.py --out "$OUT" --trials 10
echo "async exit $?"
timeout 20 python3 benchmarks/counter_periods.py --device gpu --out "$OUT/counter_periods_gpu.json"
echo "counter periods exit $?"; date -u +%T
ls -la "$OUT"
