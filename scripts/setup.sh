#!/usr/bin/env bash
# Set up everything gpuos-hint needs on a fresh Debian 12 machine, idempotently:
# Debian packages (when root), a virtual environment in .venv, and the project
# installed into it in editable mode.  Re-running is cheap: each step is skipped
# when already done.
#
#   scripts/setup.sh            # what the daemon, the client and the demo need
#   scripts/setup.sh --test     # plus what the test suite needs (systemd-nspawn, prometheus, bpftrace)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages.  Core: venv + headers + libsystemd for systemd-python; procps for
# /bin/kill, which the unit's ExecReload= runs (minbase Debian has no kill binary).
apt_pkgs=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev procps)
# Tests: a real systemd to boot (nspawn), a real Prometheus to scrape us, bpftrace for the eBPF sampler.
test_pkgs=(systemd systemd-container prometheus bpftrace sqlite3 util-linux iproute2)
(( want_test )) && apt_pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: prometheus would otherwise pull a node exporter and start services.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The prometheus package starts its own service where systemd runs; the tests start their own.
    if (( want_test )) && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  else
    say "missing Debian packages (not root, not installing): ${missing[*]} - some features/tests will skip"
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
  say "creating .venv with $($PY --version 2>&1)"
  rm -rf .venv
  "$PY" -m venv .venv
fi

# Reinstall only when the project metadata changed.
stamp=.venv/.gpuos-setup-stamp
extras="dev"
(( want_test )) || extras="workloads,metrics,nvidia,eval"
sum=$( (cat pyproject.toml client/pyproject.toml; echo "$extras") | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp ]] || ! grep -q "$sum" "$stamp"; then
  say "installing gpuos-hint into .venv (extras: $extras; log: .venv/setup.log)"
  log=.venv/setup.log
  : > "$log"
  .venv/bin/python -m pip install -q --upgrade pip >>"$log" 2>&1 || true
  # Two distributions, both editable, in one pip call: the client (client/, what a program's
  # environment gets) and the daemon with its extras (which depends on the client).
  if ! .venv/bin/python -m pip install -q -e ./client -e ".[$extras]" >>"$log" 2>&1; then
    cat "$log" >&2
    say "pip install failed (full log above)"
    exit 1
  fi
  # systemd-python builds from source against libsystemd; optional (sd_notify has a fallback).
  if pkg-config --exists libsystemd 2>/dev/null; then
    .venv/bin/python -m pip install -q "systemd-python>=235" >>"$log" 2>&1 \
      || say "systemd-python did not build (see $log); journald logging uses the native protocol instead"
  fi
  echo "$sum" >> "$stamp"
fi
if (( want_test )); then scripts/setup-otlp-test.sh; fi  # a real OTLP backend (phoenix) for the export tests; fails soft
# Real torch/transformers for the integration tests; soft: they skip with the reason when absent.
if (( want_test )); then scripts/setup-ml-test.sh; fi
