"""The README's "Instrument your PyTorch program" output, made for real: docs/examples/train.py (no gpuos
import) under gpuos-run against a fresh gpuos-hintd, then `gpuos-hintctl phases`.

    .venv/bin/python benchmarks/integrations_readme.py   # writes benchmarks/results/integrations_readme_cpu.txt
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
from bench_integrations import Daemon  # noqa: E402


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gpuos-readme-"))
    d = Daemon(tmp)
    try:
        shutil.copy(REPO / "docs" / "examples" / "train.py", tmp / "train.py")
        run = [sys.executable, "-m", "gpuos_client.run", "--", sys.executable, "train.py"]
        r = subprocess.run(run, cwd=tmp, env=d.env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        time.sleep(1.5)
        d.request("sync")
        ctl = [sys.executable, "-m", "gpuos_hintd.cli.main", "phases"]
        table = subprocess.run(ctl, env=d.env, capture_output=True, text=True, timeout=60).stdout.rstrip()
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = (
        f"# docs/examples/train.py (unmodified) under gpuos-run, fresh gpuos-hintd, CPU only ({os.cpu_count()} cores,"
        f" torch {importlib.metadata.version('torch')}), {time.strftime('%Y-%m-%d', time.gmtime())}\n"
        "# made by: .venv/bin/python benchmarks/integrations_readme.py\n"
        f"$ gpuos-run -- python train.py\n$ gpuos-hintctl phases\n{table}\n"
    )
    out = REPO / "benchmarks" / "results" / "integrations_readme_cpu.txt"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
