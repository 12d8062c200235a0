#!/usr/bin/env bash
# The whole test suite, in one command: set up (Debian packages when root,
# .venv), lint with ruff, then run pytest.  Extra arguments go to pytest,
# e.g. ./test.sh -k protocol.  Soak runs are opt-in: GPUOS_SOAK=1 ./test.sh
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -50; exit 1; }
exec .venv/bin/python -m pytest "$@"
