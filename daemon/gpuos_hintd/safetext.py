"""Untrusted text made safe for a terminal: every control character shown, none obeyed.

Phase names, classes, attrs, comm and cmdline come from any local user.  Raw,
they reach the operator's terminal as escape sequences (OSC 52 writes the
clipboard, OSC 0 the window title, CSI 2J clears the screen) or as newlines
that forge table rows.  ``safe()`` is the one place that turns them into
visible escapes: C0 and C1 controls and DEL as ``\\xNN``, and the Unicode
format characters that reorder or hide text (bidi overrides and isolates,
line/paragraph separators, zero-width joiners) as ``\\uNNNN``.  Every hintctl
table, status, top and spans line and the console log renderer use it.
"""

from __future__ import annotations

from typing import Any

_UNICODE_HIDERS = (
    0x061C,
    *range(0x200B, 0x2010),  # zero-width space/joiners, LRM/RLM
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    0x2060,
    *range(0x2066, 0x206A),  # bidi isolates
    0xFEFF,
)
_TABLE: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_TABLE.update({c: f"\\u{c:04x}" for c in _UNICODE_HIDERS})


def safe(value: Any) -> str:
    """``str(value)`` with every control or hiding character escaped visibly (one line out)."""
    text = value if isinstance(value, str) else str(value)
    return text.translate(_TABLE)


def safe_multiline(text: str) -> str:
    """Like safe(), but newlines and tabs kept (a traceback); everything else escaped."""
    return "\n".join(safe(line).replace("\\x09", "\t") for line in text.split("\n"))
