"""How the report writes numbers: CSV cells that read back exactly, and short figures for Markdown."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["csv_cell", "short_number"]


def csv_cell(v) -> str:
    """A CSV cell: an integer as is, a float as its shortest round-tripping repr, NaN as empty."""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "" if math.isnan(v) else repr(v)


def short_number(v: float, digits: int = 6) -> str:
    """A number for Markdown tables: ``digits`` significant digits, "—" where it is not finite."""
    return "—" if not math.isfinite(v) else f"{v:.{digits}g}"
