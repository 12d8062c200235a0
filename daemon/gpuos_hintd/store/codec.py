"""Signals as compact binary: one row of fixed-width values per span, its keys in a shared layout.

Why: a span carries ~50 signals; as JSON text that is ~1.3 KB per span and the
encoder's biggest cost.  Spans of one process come out with the same keys, so
the keys (and the width and kind of each value) are stored once, as a *layout*
(a row of the ``layouts`` table), and each span stores only its values, packed
back to back (``struct`` style, little-endian), chosen per column of a batch:

* ``b``: a bool (1 byte);
* ``iN``: an int in N bytes (1, 2, 4, 8); ``FN``: a float with an integral value,
  stored as an int and given back as a float (21.0 stays 21.0);
* ``mN``: a float with at most 3 decimals (the correlator rounds to 3), stored
  as the int ``v * 1000`` in N bytes and given back as ``k / 1000`` - the same
  double, since both are the correctly rounded nearest to that decimal;
* ``f4`` where float32 holds the value exactly, else ``f8``: nothing is rounded;
* ``n``: None in every row (0 bytes); ``c``: a string, the same in every row of
  the group (0 bytes: the layout holds it).

So an ns counter stays exact to the ns (and to the 3 decimals of an
interpolated one) where float32 would lose it, and a zero costs one byte.
Values nothing here can store (other strings, lists, ints past 2^63) go to a
small JSON text per row (``xs``), so nothing is lost either way.

Encoding works per batch in numpy: rows are grouped by their keys, and each
group is one matrix whose columns get a code each.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def _numpy() -> Any:
    """numpy, imported on first use: readers (hintctl status/spans) decode rows without it."""
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - the daemon declares numpy; say so plainly if missing
        raise ModuleNotFoundError(
            "gpuos-hintd needs numpy>=1.24 for its span pipeline: pip install 'numpy>=1.24'", name="numpy"
        ) from exc
    return numpy


#: One column of a layout: (key, code) or, for ``c``, (key, "c", the string).
Column = tuple[Any, ...]
#: One encoded row: (layout spec as JSON text or None, packed values or None, extras as JSON text or None).
Encoded = tuple[str | None, bytes | None, str | None]

_INT_WIDTHS = (1, 2, 4, 8)
_DTYPES = {
    "b": "<u1",
    "f4": "<f4",
    "f8": "<f8",
    **{f"{k}{w}": f"<i{w}" for k in "iFm" for w in _INT_WIDTHS},
}
#: The struct letter of each code (little-endian, no padding), for the one-row decoder.
_STRUCT = {
    "b": "B",
    "f4": "f",
    "f8": "d",
    **{f"{k}{w}": "bhiq"[(1, 2, 4, 8).index(w)] for k in "iFm" for w in (1, 2, 4, 8)},
}
_EXACT = float(2**53)
_I64 = 2**63


_INT_BOUNDS = tuple((w, -(1 << (8 * w - 1)), (1 << (8 * w - 1)) - 1) for w in _INT_WIDTHS)


def _width(lo: float, hi: float) -> int:
    for w, mn, mx in _INT_BOUNDS:
        if mn <= lo and hi <= mx:
            return w
    return 8


def _codes(m: np.ndarray, kinds: Sequence[Any]) -> list[str]:
    """The narrowest lossless code of each column of ``m`` (float64, NaN = None), all columns at once."""
    np = _numpy()
    with np.errstate(invalid="ignore", over="ignore"):
        nan = np.isnan(m)
        all_nan, any_nan = nan.all(axis=0).tolist(), nan.any(axis=0).tolist()
        f4_ok = ((m.astype(np.float32).astype(np.float64) == m) | nan).all(axis=0).tolist()
        lo, hi = m.min(axis=0).tolist(), m.max(axis=0).tolist()
        integral = (m == np.rint(m)).all(axis=0).tolist()
        boolish = ((m == 0) | (m == 1)).all(axis=0).tolist()
        k = np.rint(m * 1000.0)
        milli_ok = (k / 1000.0 == m).all(axis=0).tolist()
        klo, khi = k.min(axis=0).tolist(), k.max(axis=0).tolist()
    codes = []
    for j, kind in enumerate(kinds):
        if all_nan[j]:
            codes.append("n")
        elif any_nan[j]:
            codes.append("f4" if f4_ok[j] else "f8")
        elif kind is bool and boolish[j]:
            codes.append("b")
        elif integral[j] and lo[j] > -_EXACT and hi[j] < _EXACT:
            codes.append(f"{'i' if kind is int else 'F'}{_width(lo[j], hi[j])}")
        elif (
            milli_ok[j]
            and max(abs(lo[j]), abs(hi[j])) * 1000.0 < _EXACT
            and (not f4_ok[j] or _width(klo[j], khi[j]) <= 4)
        ):
            codes.append(f"m{_width(klo[j], khi[j])}")  # the decimal form unless float32 is smaller
        else:
            codes.append("f4" if f4_ok[j] else "f8")
    return codes


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a value (the writer's rule: bytes as text, NaN as null, huge ints as text)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_I64 <= value < _I64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


def to_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


def _kind(value: Any) -> type | None:
    """How a value is stored: bool/int/float in the packed row, str as a constant, None (NaN); else extras."""
    t = type(value)
    if t is float or t is bool or value is None:
        return float if value is None else t
    if t is int:
        return int if -_EXACT < value < _EXACT else None  # exact in float64, or off to the extras
    if t is str:
        return str
    return None


def encode(signals: Sequence[Mapping[str, Any]]) -> list[Encoded]:
    """Each signals dict as (layout spec, packed values, extras); rows with the same keys share the work."""
    out: list[Encoded | None] = [None] * len(signals)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, d in enumerate(signals):
        if d:
            groups.setdefault(tuple(d), []).append(i)
        else:
            out[i] = (None, None, None)
    for keys, idx in groups.items():
        _encode_group(signals, keys, idx, out)
    return out  # type: ignore[return-value]


def _encode_group(signals: Sequence[Mapping[str, Any]], keys: tuple[str, ...], idx: list[int], out: list) -> None:
    np = _numpy()
    first = list(signals[idx[0]].values())
    kinds = [_kind(v) for v in first]
    num = [j for j, k in enumerate(kinds) if k is not None and k is not str]
    consts = [j for j, k in enumerate(kinds) if k is str]
    extra = [j for j, k in enumerate(kinds) if k is None]
    vals = [list(signals[i].values()) for i in idx]
    # Rows whose strings differ are separate groups (a string is a constant of its layout).
    subgroups: dict[tuple[Any, ...], list[int]] = {}
    if consts:
        get = itemgetter(*consts)
        for r, row in enumerate(vals):
            c = get(row)
            c = c if len(consts) > 1 else (c,)
            if all(type(x) is str for x in c):
                subgroups.setdefault(c, []).append(r)
            elif len(idx) > 1:  # a non-string where the first row had one: this row on its own
                _encode_group(signals, keys, [idx[r]], out)
    else:
        subgroups[()] = list(range(len(vals)))
    for cvals, rows in subgroups.items():
        sub = [vals[r] for r in rows] if len(rows) < len(vals) else vals
        try:
            if len(num) == len(keys):
                m = np.array(sub, dtype=np.float64)
            elif num:
                get_num = itemgetter(*num)
                m = np.array([get_num(row) for row in sub], dtype=np.float64).reshape(len(sub), len(num))
            else:
                m = None
        except (TypeError, ValueError):
            m = None
            if len(rows) > 1:
                for r in rows:
                    _encode_group(signals, keys, [idx[r]], out)
                continue
            extra, num = extra + num, []
        if m is not None and len(rows) > 1 and any(kinds[j] is int for j in num):
            # An int column past 2^53 in a later row would be rounded by float64: that row alone.
            big = np.abs(m).max(axis=0) >= _EXACT
            if big.any():
                for r in rows:
                    _encode_group(signals, keys, [idx[r]], out)
                continue
        n = len(rows)
        cols: dict[int, Column] = {j: (keys[j], "c", cv) for j, cv in zip(consts, cvals, strict=True)}
        blobs: list[bytes] = [b""] * n
        if m is not None:
            packed_cols, blobs = _pack(m, [kinds[j] for j in num], [keys[j] for j in num])
            cols.update(zip(num, packed_cols, strict=True))
        spec_text = json.dumps([cols[j] for j in sorted(cols)], separators=(",", ":")) if cols else None
        if extra:
            for pos, r in enumerate(rows):
                out[idx[r]] = (spec_text, blobs[pos] if cols else None, to_json({keys[j]: sub[pos][j] for j in extra}))
        else:
            for pos, r in enumerate(rows):
                out[idx[r]] = (spec_text, blobs[pos], None)


def _pack(m: np.ndarray, kinds: Sequence[Any], keys: Sequence[str]) -> tuple[list[Column], list[bytes]]:
    """Each row of ``m`` packed (one conversion per code), and each column's layout entry, in column order."""
    np = _numpy()
    n = len(m)
    codes = _codes(m, kinds)
    entries: list[Column] = [()] * len(keys)
    by_code: dict[str, list[int]] = {}
    for c, code in enumerate(codes):
        if code == "n":
            entries[c] = (keys[c], "n")
        else:
            by_code.setdefault(code, []).append(c)
    parts = []
    slot = 0
    for code, cs in by_code.items():  # the layout says where each value sits
        for c in cs:
            entries[c] = (keys[c], code, slot)
            slot += 1
        part = m[:, cs]
        if code[0] == "m":
            part = np.rint(part * 1000.0)
        parts.append(np.ascontiguousarray(part.astype(_DTYPES[code])).view(np.uint8).reshape(n, -1))
    if not parts:
        return entries, [b""] * n
    packed = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    buf, size = packed.tobytes(), packed.shape[1]
    return entries, [buf[r * size : (r + 1) * size] for r in range(n)]


def encode_columns(
    names: Sequence[str], m: np.ndarray, ints: np.ndarray, bools: Sequence[bool], skip: Iterable[int] = ()
) -> list[Encoded | None]:
    """encode() of signals handed over as columns (the correlator's batch), without building them back.

    ``m`` is (rows, len(names)) float64 with NaN = absent, ``ints`` the same shape, True where the
    value is an int, ``bools`` True for bool columns.  Rows in ``skip`` are left None (the caller
    encodes their dicts: they got signals the columns do not hold).
    """
    np = _numpy()
    n = len(m)
    out: list[Encoded | None] = [None] * n
    skipped = set(skip)
    nan = np.isnan(m)
    pattern = np.concatenate([nan, ints & ~nan], axis=1)
    if (pattern == pattern[0]).all():
        groups = {b"": [i for i in range(n) if i not in skipped]}
    else:
        packed_rows = np.packbits(pattern, axis=1)
        groups = {}
        for i, key in enumerate(map(bytes, packed_rows)):
            if i not in skipped:
                groups.setdefault(key, []).append(i)
    for rows in groups.values():
        if not rows:
            continue
        r0 = rows[0]
        present = np.flatnonzero(~nan[r0])
        if not len(present):
            for i in rows:
                out[i] = (None, None, None)
            continue
        sub = m[np.asarray(rows)][:, present] if len(rows) < n else m[:, present]
        kinds = [bool if bools[j] else (int if ints[r0, j] else float) for j in present.tolist()]
        entries, blobs = _pack(sub, kinds, [names[j] for j in present.tolist()])
        spec_text = json.dumps(entries, separators=(",", ":"))
        for pos, i in enumerate(rows):
            out[i] = (spec_text, blobs[pos], None)
    return out


class Layout:
    """A decoded layout: the numpy record type of its packed row and how to give each value back."""

    __slots__ = ("_dtype", "_one", "_slots", "columns")

    @property
    def dtype(self) -> Any:
        if self._dtype is None and self._slots:
            self._dtype = _numpy().dtype([(f"c{slot}", _DTYPES[code]) for slot, code in self._slots])
        return self._dtype

    def __init__(self, spec_text: str) -> None:
        #: (key, code, constant or packed slot) in the writer's key order.
        self.columns: list[tuple[str, str, Any]] = []
        slots = []
        for col in json.loads(spec_text):
            key, code = col[0], col[1]
            extra = col[2] if len(col) > 2 else None
            self.columns.append((key, code, extra))
            if code not in ("c", "n"):
                slots.append((extra, code))
        slots.sort()
        self._slots = slots
        self._dtype: Any = None  # the numpy record type, made by decode_many (numpy only there)
        #: For one row: the struct of the packed values, and per column (key, kind, slot or constant).
        fmt = "<" + "".join(_STRUCT[code] for _slot, code in slots)
        self._one = (struct.Struct(fmt), [(key, code[0], extra) for key, code, extra in self.columns])

    def decode_one(self, blob: bytes) -> dict[str, Any]:
        """One row back as a dict, without numpy (a reader's per-row path)."""
        st, cols = self._one
        vals = st.unpack(blob) if st.size else ()
        out: dict[str, Any] = {}
        for key, kind, extra in cols:
            if kind == "c" or kind == "n":
                out[key] = extra
                continue
            v = vals[extra]
            if kind == "F":
                v = float(v)
            elif kind == "m":
                v = v / 1000.0
            elif kind == "b":
                v = v == 1
            elif kind == "f" and v != v:
                v = None
            out[key] = v
        return out

    def decode_many(self, blobs: Sequence[bytes]) -> list[dict[str, Any]]:
        """Rows of this layout back as dicts (values as the writer had them)."""
        np = _numpy()
        n = len(blobs)
        if not n:
            return []
        rec = np.frombuffer(b"".join(blobs), dtype=self.dtype, count=n) if self.dtype is not None else None
        keys: list[str] = []
        cols: list[list[Any]] = []
        for key, code, extra in self.columns:
            keys.append(key)
            if code in ("c", "n"):
                cols.append([extra] * n)
                continue
            assert rec is not None
            a = rec[f"c{extra}"]
            k = code[0]
            if k == "i":
                cols.append(a.astype(np.int64).tolist())
            elif k == "F":
                cols.append(a.astype(np.float64).tolist())
            elif k == "m":
                cols.append((a.astype(np.float64) / 1000.0).tolist())
            elif k == "b":
                cols.append([v == 1 for v in a.tolist()])
            else:
                cols.append([None if v != v else v for v in a.astype(np.float64).tolist()])
        if not cols:
            return [{} for _ in range(n)]
        return [dict(zip(keys, row, strict=True)) for row in zip(*cols, strict=True)]


def decode(layout: Layout | None, blob: bytes | None, xs: str | None) -> dict[str, Any]:
    """One row's signals: its packed values, its layout's constants, then its extras."""
    d = layout.decode_one(blob or b"") if layout is not None else {}
    if xs:
        d.update(json.loads(xs))
    return d


def merge(rows: Iterable[tuple[Layout | None, bytes | None, str | None]]) -> list[dict[str, Any]]:
    """decode() of many rows, grouped by layout so that each layout is one numpy pass."""
    rows = list(rows)
    out: list[dict[str, Any]] = [{} for _ in rows]
    by: dict[int, tuple[Layout, list[int]]] = {}
    for i, (lay, _blob, _xs) in enumerate(rows):
        if lay is not None:
            by.setdefault(id(lay), (lay, []))[1].append(i)
    for lay, idx in by.values():
        for i, d in zip(idx, lay.decode_many([rows[i][1] or b"" for i in idx]), strict=True):
            out[i] = d
    for i, (_lay, _blob, xs) in enumerate(rows):
        if xs:
            out[i].update(json.loads(xs))
    return out
