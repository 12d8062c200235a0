#!/usr/bin/env bash
# Take a real screenshot of the operator's view (docs/img/operator-view.png): Prometheus's own
# graph page running one of the Grafana dashboard's queries against a live gpuos-hintd.
#
# Grafana cannot be installed here (not in Debian's main archive, not on PyPI), so the picture
# is Prometheus's web UI, not Grafana.  Everything in it is real: a private gpuos-hintd with
# --metrics-port, a private Prometheus scraping it every second, and the instrumented LLM
# workload sending hints to it.  Nothing outside a temp dir and the output PNG is touched.
#
#   scripts/screenshot-operator-view.sh                      # "Time in phase (s/s)" panel
#   PANEL='Spans closed / s by phase' scripts/screenshot-operator-view.sh [OUT.png]
#
# Needs: .venv (scripts/setup.sh), Debian's prometheus and chromium packages.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-docs/img/operator-view.png}"
panel="${PANEL:-Time in phase (s/s)}"
runs="${RUNS:-8}"            # workload runs, spread out so the graph has a shape
gap="${GAP:-4}"              # seconds between runs
settle="${SETTLE:-20}"       # seconds to wait after the last run before the screenshot
range="${RANGE:-2m}"

say() { printf '==> %s\n' "$*" >&2; }
for bin in .venv/bin/gpuos-hintd .venv/bin/python; do
	[[ -x $bin ]] || { echo "missing $bin: run scripts/setup.sh" >&2; exit 1; }
done
command -v prometheus >/dev/null || { echo "missing prometheus: apt-get install prometheus" >&2; exit 1; }
command -v chromium >/dev/null || { echo "missing chromium: apt-get install --no-install-recommends chromium" >&2; exit 1; }

tmp="$(mktemp -d)"
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # URL WHAT LOG
	local i
	for i in $(seq 1 100); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.2
	done
	echo "$2 did not come up; its log:" >&2
	tail -n 30 "$3" >&2
	exit 1
}

mport="$(free_port)"
pport="$(free_port)"
endpoint="ipc://$tmp/hint.sock"

say "gpuos-hintd, /metrics on 127.0.0.1:$mport"
mkdir -p "$tmp/state"
.venv/bin/gpuos-hintd --endpoint "$endpoint" --control "ipc://$tmp/control.sock" \
	--state-dir "$tmp/state" --metrics-port "$mport" --log-format json >"$tmp/hintd.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$mport/metrics" gpuos-hintd "$tmp/hintd.log"

say "prometheus on 127.0.0.1:$pport, scraping every 1 s"
cat >"$tmp/prometheus.yml" <<EOF
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: gpuos-hintd
    static_configs: [{targets: ["127.0.0.1:$mport"]}]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
	--web.listen-address="127.0.0.1:$pport" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$pport/-/ready" prometheus "$tmp/prometheus.log"
sleep 3 # a few empty scrapes first, so the graph starts from zero

say "workload: $runs x gpuos_workloads.llm --requests 6 --steps 64, $gap s apart"
for i in $(seq 1 "$runs"); do
	GPUOS_HINT_ENDPOINT="$endpoint" .venv/bin/python -m gpuos_workloads.llm --requests 6 --steps 64 --quiet
	if [[ $i -lt $runs ]]; then sleep "$gap"; fi
done
say "waiting $settle s for the scrapes to land"
sleep "$settle"

# The panel's PromQL, straight from the dashboard, with Grafana's variables filled in the way
# Grafana would for this one daemon (as tests/test_grafana.py does).
url="$(PANEL="$panel" INST="127.0.0.1:$mport" PPORT="$pport" RANGE="$range" .venv/bin/python - <<'EOF'
import json, os, urllib.parse

d = json.load(open("packaging/grafana/gpuos-hintd.json"))
panels = [q for p in d["panels"] for q in [p, *p.get("panels", [])]]
(p,) = [p for p in panels if p["title"] == os.environ["PANEL"]]
expr = p["targets"][0]["expr"]
expr = expr.replace('instance=~"$instance"', f'instance=~"{os.environ["INST"]}"')
expr = expr.replace("$__rate_interval", "30s").replace("$__range", os.environ["RANGE"])
assert "$" not in expr, expr
q = {"g0.expr": expr, "g0.tab": "0", "g0.range_input": os.environ["RANGE"], "g0.stacked": "0"}
print(f"http://127.0.0.1:{os.environ['PPORT']}/graph?" + urllib.parse.urlencode(q, quote_via=urllib.parse.quote))
EOF
)"
say "query has data: $(curl -fsS "http://127.0.0.1:$pport/api/v1/query" --data-urlencode \
	"query=$(.venv/bin/python -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlsplit(sys.argv[1]).query)["g0.expr"][0])' "$url")" |
	.venv/bin/python -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]), "series")')"

say "screenshot of $url"
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	--disable-background-networking --disable-component-update --disable-sync \
	--user-data-dir="$tmp/chromium" --window-size=1400,900 --virtual-time-budget=10000 \
	--hide-scrollbars --screenshot="$out" "$url" >"$tmp/chromium.log" 2>&1 ||
	{ tail -n 20 "$tmp/chromium.log" >&2; exit 1; }
say "wrote $out ($(stat -c %s "$out") bytes)"
