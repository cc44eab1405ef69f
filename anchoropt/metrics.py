"""Base-to-novel metrics (SPEC section 8)."""
from __future__ import annotations

import math


def harmonic_mean(base: float, novel: float) -> float:
    """``HM = 2 * base * novel / (base + novel)`` of two accuracies in percent.

    NaN if either is NaN; 0 if both are 0.
    """
    if math.isnan(base) or math.isnan(novel):
        return math.nan
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)
