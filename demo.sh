#!/usr/bin/env bash
# The main job, in one command: set up, start gpuos-hintd on its embedded
# defaults, run an instrumented LLM-style workload (prefill + decode), show
# what the daemon saw (`gpuos-hintctl status`, the per-phase table, the last
# spans), and stop the daemon cleanly.  Extra arguments go to the workload,
# e.g. ./demo.sh --steps 128 --device gpu
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
logfile=$(mktemp -t gpuos-hintd-demo.XXXXXX.log)
started=0
since=$(date -u +%Y-%m-%dT%H:%M:%S)

if gpuos-hintctl --timeout 0.5 status >/dev/null 2>&1; then
  bold "A gpuos-hintd is already running; using it."
else
  bold "Starting gpuos-hintd (embedded defaults; log: $logfile)"
  gpuos-hintd --log-format json >"$logfile" 2>&1 &
  daemon_pid=$!
  started=1
  trap '[[ $started == 1 ]] && kill -TERM $daemon_pid 2>/dev/null; wait $daemon_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    gpuos-hintctl --timeout 0.2 status >/dev/null 2>&1 && break
    kill -0 $daemon_pid 2>/dev/null || { cat "$logfile"; exit 1; }
    sleep 0.1
  done
fi

bold "Running the instrumented workload: python -m gpuos_workloads.llm ${*:---requests 3 --prompt-tokens 2048 --steps 48}"
args=("$@"); (( $# )) || args=(--requests 3 --prompt-tokens 2048 --steps 48)
python -m gpuos_workloads.llm --quiet "${args[@]}" &
wl=$!
# Wait until the daemon sees the workload inside a phase (not a fixed sleep: set-up time varies).
sees_phase='import json,sys; st=json.load(sys.stdin); sys.exit(not any(c["pid"]==int(sys.argv[1]) and c["open_phases"] for c in st["clients"]))'
for _ in $(seq 100); do
  gpuos-hintctl --timeout 0.5 status --json 2>/dev/null | python -c "$sees_phase" "$wl" && break
  kill -0 $wl 2>/dev/null || break
  sleep 0.05
done
bold "gpuos-hintctl status   (while the workload runs)"
gpuos-hintctl status || true
wait $wl

bold "gpuos-hintctl phases   (what the daemon attributed to each phase)"
for _ in $(seq 30); do  # spans close at the first sample after they end
  gpuos-hintctl phases --since "$since" 2>/dev/null | grep -q step && break
  sleep 0.1
done
gpuos-hintctl phases --since "$since"

bold "gpuos-hintctl spans --limit 6"
gpuos-hintctl spans --since "$since" --limit 6

if [[ $started == 1 ]]; then
  bold "Stopping gpuos-hintd (SIGTERM)"
  kill -TERM $daemon_pid
  wait $daemon_pid && echo "gpuos-hintd exited cleanly"
  started=0
fi
