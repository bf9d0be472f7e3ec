"""Quantities as people read them: durations, FLOP counts and shares (plans, claims, health checks and the CLI
print these)."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """A time in the unit that reads best: 42 s, 3.5 min, 2.1 h, 4.2 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def flops_text(flops: float) -> str:
    """A FLOP count in the unit that reads best: 2.0 GFLOP, 3.5 TFLOP."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.1f} {unit}"
    return f"{flops:.0f} FLOP"


def share_text(value: float) -> str:
    """A fraction as a percentage (12.5%), or "all" when it is not finite."""
    return "all" if not math.isfinite(value) else f"{100 * value:.3g}%"
