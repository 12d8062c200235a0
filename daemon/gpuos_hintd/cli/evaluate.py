"""`gpuos-hintctl evaluate`: OS-only phase inference vs the hints, from the store (read-only).

    gpuos-hintctl evaluate [--store PATH | --state-dir DIR] [--since 1h] [--tolerance-ms N]
                           [--json FILE|-] [--md FILE|-]
    gpuos-hintctl evaluate --phase2 RAW.json.gz [--json FILE|-] [--md FILE|-]

Prints the Markdown report unless --json - or --md - says otherwise; the method
is in gpuos_hintd/evaluate and docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import StoreError
from ..evaluate import evaluate_store, report
from ..files import write_atomic as write_file_atomic
from ..store import DB_NAME
from ._common import parse_since, state_dir


def add_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", help="a store file (e.g. a copied gpuos-hint.db)")
    src.add_argument("--state-dir", dest="eval_state_dir", help="the daemon's state dir (default: as for spans)")
    p.add_argument("--since", help="only samples and spans since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--tolerance-ms", type=float, help="boundary match tolerance (default: 2 sample periods)")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON ('-' = stdout)")
    p.add_argument("--md", metavar="FILE", help="write the Markdown report ('-' = stdout, the default)")
    p.add_argument("--phase2", metavar="RAW", help="analyse a benchmarks/phase2.py recording instead of a store")


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    write_file_atomic(path, text)


def run(ns: argparse.Namespace) -> int:
    if ns.phase2:
        return _phase2(ns)
    since = parse_since(ns.since)
    base = Path(ns.eval_state_dir) if ns.eval_state_dir else state_dir(ns)
    path = Path(ns.store) if ns.store else base / DB_NAME
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    result = evaluate_store(path, since, ns.tolerance_ms)
    md = report.markdown(result)
    if ns.json:
        _write(ns.json, report.to_json(result))
    if ns.md:
        _write(ns.md, md)
    if not ns.json and not ns.md:
        sys.stdout.write(md)
    return 0 if "error" not in result else 1


def _phase2(ns: argparse.Namespace) -> int:
    """Phase 2 (mechanism isolation): signal x knob classes from a recording (docs/evaluation.md)."""
    import json

    from ..evaluate import phase2

    try:
        raw = phase2.load_raw(ns.phase2)
        results = phase2.analyse_raw(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"not a phase2 recording: {ns.phase2}: {type(exc).__name__}") from None
    md = phase2.class_table(results) + "\n\n" + "\n".join(phase2.level_table(r) for r in results.values())
    if ns.json:
        _write(ns.json, json.dumps(results, indent=1, default=float) + "\n")
    if ns.md:
        _write(ns.md, md)
    if not ns.json and not ns.md:
        sys.stdout.write(md)
    return 0
