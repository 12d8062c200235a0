#!/usr/bin/env bash
# A real OTLP/HTTP trace backend for tests/test_otlp_phoenix.py: arize-phoenix in its own
# virtual environment (.venv-phoenix), kept apart from .venv because it pulls ~150 packages
# the project itself never imports.  Idempotent; fails soft: on any failure it prints why and
# exits 0, and the backend tests skip with that reason (kept in .venv-phoenix/FAILED).
set -uo pipefail
cd "$(dirname "$0")/.."

PHOENIX_SPEC=${PHOENIX_SPEC:-"arize-phoenix>=12,<21"}
venv=.venv-phoenix
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [[ -x $venv/bin/phoenix ]] && [[ -f $venv/.ok ]] && grep -qxF "$PHOENIX_SPEC" $venv/.ok; then
  exit 0
fi
mkdir -p "$venv"
log=$venv/setup.log
fail() { say "OTLP backend (arize-phoenix) not installed: $* (log: $log); the OTLP backend tests will skip"; echo "$*" > $venv/FAILED; exit 0; }
PY=${PYTHON:-python3}
if [[ ! -x $venv/bin/python ]]; then
  "$PY" -m venv "$venv" >"$log" 2>&1 || fail "python3 -m venv failed"
fi
say "installing $PHOENIX_SPEC into $venv for the OTLP backend tests (log: $log)"
$venv/bin/python -m pip install -q --upgrade pip >>"$log" 2>&1 || true
$venv/bin/python -m pip install -q "$PHOENIX_SPEC" >>"$log" 2>&1 || fail "pip install $PHOENIX_SPEC failed"
[[ -x $venv/bin/phoenix ]] || fail "no phoenix command after install"
rm -f $venv/FAILED
echo "$PHOENIX_SPEC" > $venv/.ok
