#!/usr/bin/env bash
# Everything issue 3 measures on an NVIDIA GPU, in one batch (device time is scarce):
#   1. record real NVML readings as a replay fixture (tests/data/nvml/h100_recording.json)
#   2. run gpuos-hintd + the LLM-style and training workloads on CuPy with device timing
#   3. save what the daemon saw: status, phases, spans (table + JSON), the SQLite store
#   4. GPU slowdown from hints at ~1 kHz phase rate (benchmarks/gpu/bench_overhead.py)
#   5. the GPU part of the test suite (tests/test_gpu.py) and the NVML replay tests
# Results land in $OUT (the device tool brings them back).  Usage on the GPU machine:
#   benchmarks/gpu/run_device.sh            (needs pyzmq + structlog wheels in .whl/: docs/gpu-results.md)
set -uo pipefail
OUT=${OUT:-$PWD/out/device}
R=$OUT/run
mkdir -p "$R"
exec > >(tee "$OUT/run.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads PYTHONUNBUFFERED=1
echo "== host"; nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv; python3 --version
ctl() { python3 -m gpuos_hintd.cli.main "$@"; }

echo "== 0. NVML call costs"
python3 benchmarks/gpu/nvml_call_cost.py --out "$R/nvml_call_cost.json"
echo "== 1. NVML recording"
[[ -n "${SKIP_RECORD:-}" ]] || python3 benchmarks/gpu/record_nvml.py --seconds 20 --out "$OUT/h100_recording.json" | tail -5

echo "== 2. daemon + workloads"
export GPUOS_HINT_ENDPOINT=ipc:///tmp/gpuos/hint.sock GPUOS_HINT_STATE_DIR=/tmp/gpuos/state
python3 -m gpuos_hintd.main --sample-hz 20 --store-samples-hz 0 --log-format json >"$R/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do ctl --timeout 0.2 status >/dev/null 2>&1 && break; sleep 0.1; done
set -x
python3 -m gpuos_workloads.llm --device gpu --device-timing --requests 3 --prompt-tokens 4096 --hidden 4096 \
  --layers 8 --steps 150 --json "$R/llm.json" --quiet
python3 -m gpuos_workloads.train --device gpu --device-timing --steps 60 --batch 4096 --features 1024 --shards 2 \
  --hidden 8192 --json "$R/train.json" --quiet
python3 -m gpuos_workloads.llm --device gpu --no-hints --requests 3 --prompt-tokens 4096 --hidden 4096 \
  --layers 8 --steps 150 --json "$R/llm_nohints.json" --quiet
set +x
sleep 1.5
ctl status > "$R/status.txt"; ctl status --json > "$R/status.json"
ctl phases > "$R/phases.txt"; ctl phases --json > "$R/phases.json"
ctl spans --limit 60 > "$R/spans.txt"; ctl spans --limit 100000 --json > "$R/spans.json"
cat "$R/status.txt" "$R/phases.txt"; head -30 "$R/spans.txt"

echo "== 4. GPU overhead of hints"
python3 benchmarks/gpu/bench_overhead.py --out "$R/gpu_overhead.json" | tail -12
python3 -c "import json; [print(f, json.load(open('$R/'+f))['client']) for f in ('llm.json', 'train.json')]"
kill -TERM $DPID; wait $DPID; echo "daemon exit $?"
echo "== client hot path on this host's CPU"
python3 benchmarks/bench_client.py --pairs 100000 --out "$R/client_hot_path_gpu_host.json" | tail -9
cp /tmp/gpuos/state/gpuos-hint.db "$R/store.db" 2>/dev/null

echo "== 5. tests"
[[ -f "$OUT/h100_recording.json" ]] && cp "$OUT/h100_recording.json" tests/data/nvml/h100_recording.json
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_sampler_nvml.py -rs 2>&1 | tee "$R/pytest.txt" | tail -15
cd "$OUT" && tar czf results.tgz run && rm -rf run
ls -la "$OUT"
