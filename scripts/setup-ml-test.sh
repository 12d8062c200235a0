#!/usr/bin/env bash
# The real ML libraries for the integration tests (tests/test_integrations_*.py), into .venv:
# torch 2.13.0 (CPU build), transformers and accelerate, pinned.  Called by `scripts/setup.sh --test`.
#
# Fails soft: torch is installed only when its wheel is on this machine's disk (pip's find-links),
# never downloaded (an unpinned or remote torch is gigabytes).  When it cannot be had cheaply this
# prints why, writes the reason to .venv/.ml-test-skip (the tests skip with it) and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."

TORCH=torch==2.13.0
PINS=(transformers==5.23.0 accelerate==1.15.0)
skip_file=.venv/.ml-test-skip
log=.venv/setup-ml.log
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
skip() { say "ML integration tests will skip: $*"; echo "$*" > "$skip_file"; exit 0; }

[[ -x .venv/bin/python ]] || skip "no .venv (run scripts/setup.sh first)"
py=.venv/bin/python

if $py - <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
want = {"torch": "2.13.0", "transformers": "5.23.0", "accelerate": "1.15.0"}
sys.exit(0 if all(m.version(k).split("+")[0] == v for k, v in want.items()) else 1)
PY
  rm -f "$skip_file"
  exit 0
fi

# Is the torch wheel local?  --no-index leaves only find-links (on disk), so this never downloads it.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! timeout 120 $py -m pip download -q --no-deps --no-index -d "$tmp" "$TORCH" >"$log" 2>&1; then
  skip "no local wheel for $TORCH (pip find-links: $($py -m pip config get global.find-links 2>/dev/null || echo none)); see $log"
fi
say "installing $TORCH (local wheel) ${PINS[*]} into .venv (log: $log)"
if ! timeout 600 $py -m pip install -q "$tmp"/torch-*.whl "${PINS[@]}" >>"$log" 2>&1; then
  skip "pip install $TORCH ${PINS[*]} failed; see $log"
fi
rm -f "$skip_file"
