"""What reading the version through importlib.metadata would add to every start of gpuos-hintd,
gpuos-hintctl and a hinted program (docs/design.md, "The house": why __version__ is a literal).

Each repeat starts fresh interpreters, interleaved: a bare `python -c pass`, the same plus
`import gpuos_client`, and the same plus importlib.metadata's `version("gpuos-hint")`. The
wall time of each start is measured from outside; the medians and spreads go to the JSON.

    python benchmarks/version_import_cost.py [--n 15] [--out benchmarks/results/version_import_cost.json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _harness import RESULTS, write_result

CASES = {
    "bare": "pass",
    "import_gpuos_client": "import gpuos_client",
    "importlib_metadata_version": "import importlib.metadata as m; m.version('gpuos-hint')",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "version_import_cost.json"))
    args = ap.parse_args()
    runs: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(args.n):
        for name, code in CASES.items():  # interleaved: drift in the machine's load hits every case alike
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            runs[name].append((time.perf_counter() - t) * 1000)
    summary = {
        name: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2), "max_ms": round(max(v), 2)}
        for name, v in runs.items()
    }
    bare = summary["bare"]["median_ms"]
    for name, s in summary.items():
        s["over_bare_ms"] = round(s["median_ms"] - bare, 2)
        print(f"{name:28s} median {s['median_ms']:7.2f} ms  (+{s['over_bare_ms']:.2f} over bare)")
    write_result(
        args.out, "version_import_cost", n=args.n, python=sys.version.split()[0], summary=summary, runs_ms=runs
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
