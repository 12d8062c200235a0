#!/usr/bin/env bash
# Every GPU measurement of this round, in two bounded calls of the device tool (device time is scarce).
#   benchmarks/gpu/run_batch.sh client     (~8 min) issue 7: HF generate + launch-bound + GPU-bound
#                                          overhead, first-slice vs this client; issue 11: integrations
#   benchmarks/gpu/run_batch.sh attribution (~9 min) issue 9: accuracy_gpu + NVML power-sample
#                                          recording; issue 13: Phase 2 + async pipeline
#   benchmarks/gpu/run_batch.sh cpu-and-training (~7 min) issue 7: the GIL loop on the host's quiet
#                                          16 cores; issue 11: DataLoader training and Trainer parts
#   benchmarks/gpu/run_batch.sh accuracy-and-generate (~8 min) issue 9: accuracy_gpu with per-phase
#                                          profiler traces and the decode step cost; issue 11/13: HF
#                                          generate A/B, its store kept for `evaluate` on a real program
#   benchmarks/gpu/run_batch.sh evaluation-stores (~8 min) issue 9: accuracy_gpu again; issue 13:
#                                          generate and training stores with every tick, for evaluate
#   benchmarks/gpu/run_batch.sh power-and-accuracy (~6 min) issue 9: the driver's power-sample delay
#                                          (square waves), accuracy_gpu with truth before and after
#   benchmarks/gpu/run_batch.sh cupti-and-accuracy (~7 min) issue 9: CUPTI busy tracer checks, GPU
#                                          tests, accuracy run 2
#   benchmarks/gpu/run_batch.sh accuracy-busy (~5 min) issue 9: accuracy with CUPTI busy time
#   benchmarks/gpu/run_batch.sh accuracy-in-context (~5 min) issue 9: accuracy with CUPTI busy time,
#                                          kernel time also profiled in the hinted run's sequences
#   benchmarks/gpu/run_batch.sh accuracy-global-buffers (~7 min) issue 9: the tracer with CUPTI's
#                                          global activity buffers: cupti_check, GPU tests, accuracy
#   benchmarks/gpu/run_batch.sh busy-anchor (~3.5 min; 170 s was too short while daemon_figures waited out its 60 s) issue 9: accuracy (8 requests) with
#                                          the bracketed clock anchor, busy time vs kernels in context
#   benchmarks/gpu/run_batch.sh anchor-and-cost (~8 min) issue 9: busy-anchor's accuracy run, then
#                                          the program's cost of device timing and of CUPTI busy
#                                          time (HF generate + launch-bound loop, interleaved)
#   benchmarks/gpu/run_batch.sh device-cost (~7 min) the cost part of anchor-and-cost alone
#   benchmarks/gpu/run_batch.sh busy-walk (~4 min) CUPTI buffers walked in C (_cbusy): cupti_check, GPU
#                                          tests and accuracy with it, then the launch-bound loop's
#                                          cost with the C walk and with the Python one (GPUOS_HINT_PURE=1)
#   benchmarks/gpu/run_batch.sh rate-hold (~1 min) the tracer without its 20 ms start sleep (records held
#                                          until CUPTI's clock rate is measured): cupti_check, GPU
#                                          tests, the launch-bound loop's cost with the C walk again
#   benchmarks/gpu/run_batch.sh training-overhead (~9 min) issue 11: 8 ABBA pairs of DataLoader
#                                          training and 8+8 HF Trainer runs, plain vs gpuos-run
# Results: each part writes into a work dir; the work dir is packed into $OUT/<batch>.tgz (the tool
# brings back at most 8 files) and the logs are copied beside it.  Unpack into benchmarks/results/.
# Needs .whl/ (shared/tools/device-wheels.sh) for pyzmq and structlog; builds the client's C hot
# path with the host compiler (the pure-Python twin is used if that fails, and the log says so).
set -uo pipefail
batch=${1:?client|attribution}
OUT=${OUT:-$PWD/out/$batch}
W=$(mktemp -d)/$batch
mkdir -p "$OUT" "$W"
exec > >(tee "$OUT/$batch.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads PYTHONUNBUFFERED=1
inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suf=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -O2 -std=gnu11 -shared -fPIC -I"$inc" client/gpuos_client/_cphase.c -o "client/gpuos_client/_cphase$suf" \
  || echo "C hot path not built: the pure-Python client is measured"
gcc -O2 -std=gnu11 -shared -fPIC -I"$inc" client/gpuos_client/_cbusy.c -o "client/gpuos_client/_cbusy$suf" \
  || echo "C CUPTI buffer walk not built: the Python walk is measured"
python3 -c "import gpuos_client as h; from gpuos_client import cupti; print('client fast path:', h.stats()['fast_path'], '- CUPTI walk in C:', cupti._CBUSY is not None)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; nproc; uptime
t0=$SECONDS
gpu_tests() {  # the GPU-only tests of the CUPTI tracer: gpu_tests TIMEOUT_S TAIL_LINES
  part "GPU-only tests"
  timeout "$1" python3 -m pytest -q -rs -p no:cacheprovider tests/test_cupti_gpu.py tests/test_cupti_layout.py 2>&1 | tail -"$2"
}
launch_busy_cost() {  # the launch-bound loop's cost with busy time: launch_busy_cost OUT_NAME (env applies)
  timeout 70 python3 benchmarks/gpu/bench_generate_overhead.py --device busy --only launch --budget-s 40 \
    --out "$W/$1.json" | tail -2
}
busy_summary() {  # an accuracy run's busy time per phase against the in-context profile
  python3 - "$W/accuracy/accuracy_gpu.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = d.get("busy_tracer") or {}
print("anchor_err_ns", d["client"]["device"].get("anchor_err_ns"), "buffers", t.get("buffers"), "parser", t.get("parser"))
for n, c in d["comparison"].items():
    print(n, c.get("busy_ms"), c.get("profiler_in_context_union_ms"), c.get("busy_vs_in_context_union_pct"))
PY
}
part() {  # the results so far are packed at every part: a call cut off by its limit keeps them
  tar czf "$OUT/$batch.tgz" -C "$(dirname "$W")" "$batch"
  echo; echo "== $1 (t=$((SECONDS - t0)) s)"
}
case $batch in
client)
  part "client overhead: generate (none/empty hooks/hinted) + launch-bound loop"
  timeout 180 python3 benchmarks/gpu/bench_generate_overhead.py --budget-s 120 --out "$W/generate_overhead.json" | tail -8
  part "GPU-bound loop (bench_overhead.py)"
  D=$(mktemp -d)
  GPUOS_HINT_ENDPOINT=ipc://$D/hint.sock GPUOS_HINT_CONTROL=ipc://$D/control.sock GPUOS_HINT_STATE_DIR=$D/state \
    python3 -m gpuos_hintd.main --log-level warning >"$D/hintd.log" 2>&1 &
  DPID=$!
  sleep 2
  GPUOS_HINT_ENDPOINT=ipc://$D/hint.sock timeout 60 python3 benchmarks/gpu/bench_overhead.py --out "$W/gpu_overhead.json" | tail -4
  kill -TERM $DPID; wait $DPID
  part "first-slice client vs this client, HF generate, ABBA in-process"
  timeout 130 python3 benchmarks/gpu/bench_generate_ab.py --old-client .gpu-old/client --procs 1 --pairs 6 \
    --out "$W/generate_ab.json" | tail -4
  part "integrations: HF generate A/B, plain vs gpuos-run, DataLoader training, Trainer"
  timeout 170 python3 benchmarks/gpu/bench_integrations.py --budget-s 130 --blocks 8 --proc-runs 2 --train-runs 1 \
    --out "$W/integrations.json" 2>&1 | tail -25
  ;;
attribution)
  part "accuracy: energy per phase vs isolated truth, device time vs torch.profiler, async pipeline"
  timeout 240 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 190 --out "$W/accuracy" 2>&1 | tail -40
  timeout 40 python3 benchmarks/gpu/record_nvml.py --seconds 8 --out "$W/accuracy/h200_power_samples_recording.json" | tail -2
  part "phase 2 + async pipeline + counter periods"
  OUT=$W/phase2 timeout 300 benchmarks/gpu/run_phase2.sh >/dev/null 2>&1; tail -30 "$W/phase2/run.log"
  ;;
cpu-and-training)
  part "GIL loop on this host's CPU (16 cores: the daemon has cores of its own)"
  timeout 230 python3 benchmarks/bench_gil_loop.py --repeats 6 --out "$W/gil_loop_h200_host.json" | tail -8
  part "integrations: DataLoader-fed training step and an HF Trainer loop"
  timeout 170 python3 benchmarks/gpu/bench_integrations.py --parts train,trainer --budget-s 140 \
    --out "$W/integrations_training.json" 2>&1 | tail -25
  ;;
accuracy-and-generate)
  part "accuracy: energy per phase vs isolated truth, device time vs per-phase profiler traces, step cost"
  timeout 250 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 190 --out "$W/accuracy" 2>&1 | tail -30
  part "integrations: HF generate A/B in-process (8 blocks), its store kept for the evaluation"
  timeout 200 python3 benchmarks/gpu/bench_integrations.py --parts generate --budget-s 150 --blocks 8 \
    --proc-runs 2 --keep-store "$W/store_generate" --out "$W/integrations_generate.json" 2>&1 | tail -8
  ;;
training-overhead)
  part "integrations: DataLoader training, plain vs gpuos-run, 8 ABBA pairs; its store kept"
  timeout 250 python3 benchmarks/gpu/bench_integrations.py --parts train --budget-s 230 --train-runs 8 \
    --train-steps 30 --keep-store "$W/store_train" --out "$W/integrations_train8.json" 2>&1 | tail -8
  part "integrations: HF Trainer, plain vs gpuos-run, 8 runs each, interleaved"
  timeout 300 python3 benchmarks/gpu/bench_integrations.py --parts trainer --budget-s 280 --trainer-runs 8 \
    --trainer-steps 20 --out "$W/integrations_trainer8.json" 2>&1 | tail -8
  ;;
evaluation-stores)
  part "accuracy again (harness: window-only energy sum, in-context pipeline kernels)"
  timeout 230 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 180 --out "$W/accuracy" 2>&1 | tail -3
  part "real programs for evaluate: HF generate and DataLoader training, every tick stored"
  timeout 120 python3 benchmarks/gpu/bench_integrations.py --parts generate --budget-s 100 --blocks 8 \
    --proc-runs 0 --store-samples-hz 0 --keep-store "$W/store_generate_10hz" --out "$W/integrations_generate_10hz.json" 2>&1 | tail -3
  timeout 110 python3 benchmarks/gpu/bench_integrations.py --parts train --budget-s 95 --train-runs 3 \
    --train-steps 60 --store-samples-hz 0 --keep-store "$W/store_train_10hz" --out "$W/integrations_train_10hz.json" 2>&1 | tail -3
  ;;
power-and-accuracy)
  part "power-sample model: known square waves, the driver's sample delay (power_lag.py)"
  timeout 90 python3 benchmarks/gpu/power_lag.py --out "$W/power_lag" 2>&1 | tail -14
  delay=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['fit']['step_best_delay_ms'] or 0)" "$W/power_lag/power_lag.json" 2>/dev/null || echo 0)
  part "accuracy: isolated truth before and after the hinted run, profiler last, raw samples (delay $delay ms)"
  timeout 300 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 220 --power-delay-ms "$delay" --out "$W/accuracy" 2>&1 | tail -6
  part "CUPTI on this image: where libcupti is, its version"
  python3 - <<'PY'
import ctypes, glob, site, sys
paths = [p for d in sys.path for p in glob.glob(d + "/nvidia/cuda_cupti/lib/libcupti.so*")]
print("libcupti candidates:", paths)
for p in paths[:1]:
    lib = ctypes.CDLL(p); v = ctypes.c_uint32(); print("cuptiGetVersion rc", lib.cuptiGetVersion(ctypes.byref(v)), "version", v.value)
import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)
PY
  ;;
cupti-and-accuracy)
  part "where libcupti is on this image"
  find / -name 'libcupti*' -not -path '/proc/*' 2>/dev/null | head -10
  part "CUPTI busy tracer on a real GPU: layout, accuracy vs torch.profiler, cost (cupti_check.py)"
  mkdir -p "$W/cupti"
  timeout 170 python3 benchmarks/gpu/cupti_check.py --out "$W/cupti/cupti_check.json" 2>&1 | tail -25
  gpu_tests 120 8
  part "accuracy run 2: the same harness as run 1 (power-and-accuracy), no CUPTI"
  timeout 300 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 220 --out "$W/accuracy" 2>&1 | tail -4
  ;;
accuracy-busy)
  part "CUPTI busy tracer after the gate fix (cupti_check.py, CDLL)"
  mkdir -p "$W/cupti"
  timeout 120 python3 benchmarks/gpu/cupti_check.py --seconds 140 --out "$W/cupti/cupti_check.json" 2>&1 | grep -v '^ *[0-9]*,\?$' | tail -40
  gpu_tests 90 8
  part "accuracy run 3 (old tracer) / run 4: the hinted run with CUPTI busy time (device_busy), truth untraced"
  timeout 320 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 230 --device-busy --out "$W/accuracy" 2>&1 | tail -6
  ;;
accuracy-in-context)
  part "accuracy runs 5 and 6: CUPTI busy time in the hinted run; the profiler alone and in the hinted sequences"
  timeout 330 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 230 --device-busy --out "$W/accuracy" 2>&1 | tail -6
  ;;
accuracy-global-buffers)
  part "CUPTI busy tracer with global activity buffers (cupti_check.py, CDLL)"
  mkdir -p "$W/cupti"
  timeout 120 python3 benchmarks/gpu/cupti_check.py --seconds 110 --out "$W/cupti/cupti_check.json" 2>&1 | grep -E '"(buffers|within_2pct|max_abs_rel_err|busy_share_median|busy_share_p10|ok)"' | head -12
  gpu_tests 60 4
  part "accuracy run 7: CUPTI busy time (global buffers) in the hinted run; profiler alone and in context"
  timeout 330 python3 benchmarks/gpu/accuracy_gpu.py --budget-s 225 --device-busy --out "$W/accuracy" 2>&1 | tail -3
  ;;
busy-anchor | anchor-and-cost)
  part "accuracy run 8 (8 requests): busy time with the bracketed device clock anchor"
  timeout 300 python3 benchmarks/gpu/accuracy_gpu.py --requests 8 --budget-s 30 --device-busy --out "$W/accuracy" 2>&1 | tail -2
  busy_summary
  ;;&  # anchor-and-cost goes on below
anchor-and-cost | device-cost)
  [ "$batch" = device-cost ] || tar czf "$OUT/$batch-accuracy.tgz" -C "$(dirname "$W")" "$batch"  # kept if a later part runs out of time
  for dev in on busy; do  # generate and the launch-bound loop each with a budget of its own
    part "program cost of device timing (--device $dev): HF generate, interleaved"
    timeout 150 python3 benchmarks/gpu/bench_generate_overhead.py --device $dev --only generate --budget-s 110 \
      --out "$W/generate_overhead_device_$dev.json" | tail -3
    part "program cost of device timing (--device $dev): launch-bound loop, interleaved"
    timeout 70 python3 benchmarks/gpu/bench_generate_overhead.py --device $dev --only launch --budget-s 40 \
      --out "$W/launch_overhead_device_$dev.json" | tail -3
  done
  ;;
busy-walk)
  part "CUPTI busy tracer, buffers walked in C (cupti_check.py)"
  mkdir -p "$W/cupti"
  timeout 60 python3 benchmarks/gpu/cupti_check.py --seconds 50 --out "$W/cupti/cupti_check.json" 2>&1 | grep -E '"(buffers|parser|within_2pct|max_abs_rel_err|on_over_off|per_kernel_us|ok)"' | head -12
  gpu_tests 45 4
  for walk in c python; do
    pure=0; [ $walk = python ] && pure=1
    part "program cost of busy time, launch-bound loop, buffers walked in $walk"
    GPUOS_HINT_PURE=$pure launch_busy_cost "launch_overhead_device_busy_walk_$walk"
  done
  part "accuracy run 9 (8 requests): busy time, buffers walked in C"
  timeout 120 python3 benchmarks/gpu/accuracy_gpu.py --requests 8 --budget-s 30 --device-busy --out "$W/accuracy" 2>&1 | tail -1
  busy_summary
  ;;
rate-hold)
  part "CUPTI busy tracer, no start sleep: records held until the clock rate is measured (cupti_check.py)"
  mkdir -p "$W/cupti"
  timeout 60 python3 benchmarks/gpu/cupti_check.py --seconds 50 --out "$W/cupti/cupti_check.json" 2>&1 | grep -E '"(rated|parser|within_2pct|max_abs_rel_err|ok)"' | head -12
  gpu_tests 45 4
  part "program cost of busy time, launch-bound loop, buffers walked in C (again)"
  launch_busy_cost launch_overhead_device_busy_walk_c_2
  ;;
cupti-final)
  part "CUPTI busy tracer: small buffers, no forced flush while work is queued (cupti_check.py)"
  mkdir -p "$W/cupti"
  timeout 120 python3 benchmarks/gpu/cupti_check.py --seconds 140 --out "$W/cupti/cupti_check.json" 2>&1 | grep -v '^ *[0-9]*,\?$' | tail -30
  gpu_tests 90 8
  ;;
esac
part "done"
tar czf "$OUT/$batch.tgz" -C "$(dirname "$W")" "$batch"
ls -la "$OUT"
