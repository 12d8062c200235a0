"""Phase 2 - mechanism isolation: which OS-visible signals follow which execution knob.

Input (``raw``: what ``benchmarks/phase2.py`` records, one dict per condition):
``samples`` [[t_ns, {metric: value}], ...] of one process at a fixed rate, ``levels`` (each held
level: knob, level, repeat, t0_ns, t1_ns, work_flop_per_s) and ``knobs`` {knob: [levels in order]}.

Unit of analysis: one level held once (one repeat).  Its value for a signal is the mean over the
sample windows lying wholly inside the level (counters as rates, gauges as values, as in
``dataset.windows_of``).  Per signal x knob, over the units of that knob: the mean and 95 % CI per
level, Spearman's rho against the level's rank, eta^2 of level and of repeat (the repeats are
blocks in time, so eta2_repeat measures drift), a permutation p for the level effect, and eta^2
of the level after the achieved work rate is regressed out.  ``stats.classify`` names the class.
The ``size`` knob is the control (it changes the work per launch, nothing else), so it is
classified without the work covariate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import stats
from .dataset import EXCLUDED, series_from_rows

CONTROL_KNOB = "size"


def units_of(cond: Mapping[str, Any], kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    """One unit per held level: its knob, level rank, repeat, windows inside it, work and signal means."""
    t, raw = series_from_rows((int(r[0]), r[1]) for r in cond["samples"])
    if len(t) < 2:
        return []
    w0, w1 = t[:-1], t[1:]
    dt = np.maximum((w1 - w0) / 1e9, 1e-9)
    cols: dict[str, np.ndarray] = {}
    for name, v in raw.items():
        if name in EXCLUDED:
            continue
        if kinds.get(name, "gauge") == "counter":
            d = np.diff(v)
            d[d < 0] = np.nan
            cols[name] = d / dt
        else:
            cols[name] = v[1:]
    order = {k: [str(x) for x in lv] for k, lv in cond["knobs"].items()}
    units = []
    for lv in cond["levels"]:
        inside = (w0 >= lv["t0_ns"]) & (w1 <= lv["t1_ns"])
        sig = {}
        for name, c in cols.items():
            vals = c[inside]
            vals = vals[~np.isnan(vals)]
            sig[name] = float(vals.mean()) if len(vals) else math.nan
        units.append(
            {
                "knob": lv["knob"],
                "level": str(lv["level"]),
                "level_index": order[lv["knob"]].index(str(lv["level"])),
                "repeat": int(lv["repeat"]),
                "windows": int(inside.sum()),
                "work_flop_per_s": float(lv.get("work_flop_per_s", math.nan)),
                "signals": sig,
            }
        )
    return units


def analyse(
    units: Sequence[Mapping[str, Any]], knobs: Mapping[str, Sequence[Any]], n_perm: int = 2000
) -> dict[str, Any]:
    """{knob: {signal: stats.effect(...) + level names}} over the units of each knob."""
    signals = sorted({s for u in units for s in u["signals"]})
    out: dict[str, Any] = {}
    for knob, levels in knobs.items():
        us = [u for u in units if u["knob"] == knob]
        if not us:
            continue
        idx = [u["level_index"] for u in us]
        rep = [u["repeat"] for u in us]
        work = None if knob == CONTROL_KNOB else [math.log10(max(u["work_flop_per_s"], 1.0)) for u in us]
        per_signal = {}
        for s in signals:
            vals = [u["signals"].get(s, math.nan) for u in us]
            if np.all(np.isnan(vals)):
                continue
            e = stats.effect(vals, idx, rep, work, n_perm=n_perm)
            for row in e["per_level"]:
                row["level"] = str(levels[int(row["level_index"])])
            per_signal[s] = e
        out[knob] = {
            "levels": [str(x) for x in levels],
            "units": len(us),
            "repeats": len(set(rep)),
            "min_windows_per_unit": min(u["windows"] for u in us),
            "work_flop_per_s": _per_level([u["work_flop_per_s"] for u in us], idx, levels),
            "signals": per_signal,
        }
    return out


def _per_level(vals: Sequence[float], idx: Sequence[int], levels: Sequence[Any]) -> list[dict[str, Any]]:
    v, ix = np.asarray(vals, dtype=float), np.asarray(idx)
    rows = []
    for i, name in enumerate(levels):
        m, lo, hi = stats.mean_ci(v[ix == i])
        rows.append({"level": str(name), "mean": m, "lo": lo, "hi": hi})
    return rows


def analyse_raw(raw: Mapping[str, Any], n_perm: int = 2000) -> dict[str, Any]:
    """{condition: analyse(...)} for a whole recording (``benchmarks/phase2.py``'s phase2_raw.json.gz)."""
    from .dataset import metric_kinds

    kinds = metric_kinds()
    return {
        name: analyse(units_of(cond, kinds), cond["knobs"], n_perm=n_perm) for name, cond in raw["conditions"].items()
    }


def load_raw(path: str) -> dict[str, Any]:
    """A phase2 recording, gzip'd or plain JSON."""
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


# ------------------------------------------------------------------------ reporting
def _g(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def class_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """signal x knob: class (eta2_level, rho) for each condition, e.g. results = {'hints': .., 'no hints': ..}."""
    conds = list(results)
    knobs = sorted({k for r in results.values() for k in r}, key=lambda k: (k == CONTROL_KNOB, k))
    signals = sorted({s for r in results.values() for k in r.values() for s in k["signals"]})
    constant = [s for s in signals if all(_constant(r, s) for r in results.values())]
    signals = [s for s in signals if s not in constant]
    head = ["signal", *[f"{k}{' (control)' if k == CONTROL_KNOB else ''}" for k in knobs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in signals:
        cells = [f"`{s}`"]
        for k in knobs:
            parts = []
            for c in conds:
                e = results[c].get(k, {}).get("signals", {}).get(s)
                parts.append("-" if e is None else f"{e['class']} ({_g(e['eta2_level'])}, {_g(e['spearman_rho'])})")
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    note = f"Cells: class (eta2 of level, Spearman rho) for {' / '.join(conds)}.  Rule: {stats.CLASS_RULE}"
    if constant:
        note += "  Constant in every unit of every knob and condition (invariant, and blind here): " + ", ".join(
            f"`{s}`" for s in constant
        )
    return "\n".join([*lines, "", note])


def _constant(result: Mapping[str, Any], signal: str) -> bool:
    """True when the signal took one value in every unit of every knob (eta^2 0, rho undefined)."""
    for k in result.values():
        e = k["signals"].get(signal)
        if e is not None and not (e["eta2_level"] == 0 and math.isnan(e["spearman_rho"])):
            return False
    return True


def level_table(result: Mapping[str, Any], signals: Iterable[str] | None = None) -> str:
    """Per knob and signal: mean [95 % CI] at each level, and the statistics."""
    lines = []
    for knob, k in result.items():
        lines += [
            f"**{knob}** ({k['units']} units: {len(k['levels'])} levels x {k['repeats']} repeats, "
            f">= {k['min_windows_per_unit']} windows each)",
            "",
        ]
        head = ["signal", *k["levels"], "rho", "eta2 level", "eta2 repeat", "eta2 given work", "p", "class"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        work = ["*work, flop/s*", *[f"{_g(r['mean'])} [{_g(r['lo'])}, {_g(r['hi'])}]" for r in k["work_flop_per_s"]]]
        lines.append("| " + " | ".join(work + [""] * 6) + " |")
        for s, e in k["signals"].items():
            if signals is not None and s not in signals:
                continue
            cells = [f"`{s}`", *[f"{_g(r['mean'])} [{_g(r['lo'])}, {_g(r['hi'])}]" for r in e["per_level"]]]
            cells += [_g(e["spearman_rho"]), _g(e["eta2_level"]), _g(e["eta2_repeat"])]
            cells += [_g(e.get("eta2_level_given_work")), _g(e["p_level"]), e["class"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: Mapping[str, Mapping[str, Any]], path: str) -> bool:
    """Heat map of eta2_level (signal x knob) per condition, each cell marked S/I/C; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    conds = list(results)
    knobs = sorted({k for r in results.values() for k in r}, key=lambda k: (k == CONTROL_KNOB, k))
    signals = sorted({s for r in results.values() for k in r.values() for s in k["signals"]})
    signals = [s for s in signals if not all(_constant(r, s) for r in results.values())] or signals
    fig, axes = plt.subplots(1, len(conds), figsize=(3 + 1.6 * len(knobs) * len(conds), 0.32 * len(signals) + 1.5))
    axes = np.atleast_1d(axes)
    for ax, c in zip(axes, conds, strict=True):
        m = np.full((len(signals), len(knobs)), np.nan)
        for j, k in enumerate(knobs):
            for i, s in enumerate(signals):
                e = results[c].get(k, {}).get("signals", {}).get(s)
                if e is not None:
                    m[i, j] = e["eta2_level"]
                    colour = "black" if e["eta2_level"] > 0.6 else "white"
                    ax.text(j, i, e["class"][0].upper(), ha="center", va="center", fontsize=8, color=colour)
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(knobs)), knobs, rotation=30)
        ax.set_yticks(range(len(signals)), signals, fontsize=7)
        title = f"eta2 of level - {c}\nS sensitive, I invariant, C confounded (constant signals left out)"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
