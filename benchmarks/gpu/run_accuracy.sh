#!/usr/bin/env bash
# Issue 9's GPU measurements in one bounded batch (~5 min on an H200), results into $OUT:
#   1. accuracy_gpu.py: energy per phase vs isolated-phase truth, device time vs torch.profiler,
#      an asynchronous pipeline, span-energy sum vs the counter (accuracy_gpu.json + daemon log)
#   2. a 10 s NVML recording with the driver's power samples (nvmlDeviceGetSamples), for replay tests
# Usage on the GPU machine:  OUT=/some/dir benchmarks/gpu/run_accuracy.sh
set -uo pipefail
OUT=${OUT:-$PWD/out/accuracy}
mkdir -p "$OUT"
exec > >(tee "$OUT/run_accuracy.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 420 python3 benchmarks/gpu/accuracy_gpu.py --out "$OUT"
echo "accuracy_gpu rc=$?"
timeout 90 python3 benchmarks/gpu/record_nvml.py --seconds 10 --out "$OUT/h200_power_samples_recording.json" | tail -3
echo "record rc=$?"
