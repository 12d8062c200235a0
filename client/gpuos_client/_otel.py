"""The W3C traceparent of the caller's current OpenTelemetry span, if there is one.

A serving program that already traces its requests with OpenTelemetry can have
its top-level phases join that trace: the phase carries ``traceparent`` as an
attribute and the daemon exports the phase (and its children) as children of
that span.  This module never imports OpenTelemetry: a program that has not
imported ``opentelemetry.trace`` itself has no current span, so the check is
one dict lookup (``sys.modules.get``) and costs ~nothing.
"""

from __future__ import annotations

import sys

__all__ = ["current_traceparent"]


def current_traceparent() -> str | None:
    """``00-<trace id>-<span id>-<flags>`` of the current valid span, else None (never raises)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"
    except Exception:
        return None
