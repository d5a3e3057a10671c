"""Plot helpers of the report (matplotlib is imported when a figure is made): a figure, rows of axes
against λ with λ = 0 drawn apart on a log axis, markers for unconverged pairs, and the figure saver."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import results

__all__ = ["Row", "colormap", "dot_style", "integer_ticks", "lambda_rows", "log_if_positive", "log_lambda_axis",
           "log_y_positive", "mark_unconverged", "new_figure", "no_data", "positive_only", "save_figure"]


def new_figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def dot_style(lam: np.ndarray) -> dict:
    """Dots on every curve, unless there are too many λ to tell them apart."""
    return dict(marker="o", markersize=3 if lam.size < 60 else 0)


def positive_only(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, np.nan)


def log_if_positive(ax, *arrays, span: float = 20.0) -> None:  # ax: an Axes or a Row
    """Log y-scale when every finite value is positive and they span more than ``span``×."""
    vals = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size and np.all(vals > 0) and vals.max() > span * vals.min():
        ax.set_yscale("log")


def no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def log_lambda_axis(lam: np.ndarray) -> bool:
    """A log λ axis: the finite λ > 0 span two decades or more (``max ≥ 100 · min``)."""
    pos = np.asarray(lam, np.float64)
    pos = pos[np.isfinite(pos) & (pos > 0)]
    return pos.size >= 2 and float(pos.max()) >= 100 * float(pos.min())


class Row:
    """One row of a plot against λ: ``main`` (all λ, or λ > 0 on a log axis) and, on a log axis with
    λ = 0 among the λ, ``zero``: a narrow axes at the left sharing y, where λ = 0 is drawn apart."""

    def __init__(self, main, zero):
        self.main, self.zero = main, zero

    @property
    def axes(self) -> list:
        return [self.main] + ([self.zero] if self.zero is not None else [])

    def plot(self, lam, y, *fmt, **kw) -> None:
        lam, y = np.asarray(lam, np.float64), np.asarray(y, np.float64)
        if self.zero is None:
            self.main.plot(lam, y, *fmt, **kw)
            return
        pos = lam > 0
        self.main.plot(lam[pos], y[pos], *fmt, **kw)
        if (~pos).any() and np.isfinite(y[~pos]).any():
            kw = {key: v for key, v in kw.items() if key != "label"}
            kw["marker"] = kw.get("marker") or "o"
            kw["markersize"] = max(kw.get("markersize") or 0, 3)
            self.zero.plot(np.zeros(int((~pos).sum())), y[~pos], *fmt, **kw)

    def errorbar(self, lam, y, yerr=None, **kw) -> None:
        lam, y = np.asarray(lam, np.float64), np.asarray(y, np.float64)
        parts = [(self.main, np.ones(lam.size, bool) if self.zero is None else lam > 0)]
        if self.zero is not None:
            parts.append((self.zero, lam <= 0))
        for ax, m in parts:
            if m.any():
                ax.errorbar(np.where(lam[m] > 0, lam[m], 0.0), y[m], yerr=None if yerr is None else yerr[m],
                            **(kw if ax is self.main else {key: v for key, v in kw.items() if key != "label"}))

    def set_yscale(self, scale: str) -> None:
        for ax in self.axes:
            ax.set_yscale(scale)

    def axhline(self, *args, **kw) -> None:
        for ax in self.axes:
            ax.axhline(*args, **kw)

    def set(self, *, ylabel=None, title=None, xlabel=None) -> None:
        (self.zero if self.zero is not None else self.main).set_ylabel(ylabel or "")
        if title is not None:
            self.main.set_title(title)
        if xlabel is not None:
            self.main.set_xlabel(xlabel)

    def set_ylim(self, *args) -> None:
        self.main.set_ylim(*args)

    def legend(self, **kw) -> None:
        self.main.legend(**kw)


def lambda_rows(fig, lam: np.ndarray, nrows: int = 1, *, spec=None) -> list[Row]:
    """``nrows`` rows sharing the λ axis (see :func:`log_lambda_axis`), in ``spec`` or the whole figure."""
    log = log_lambda_axis(lam)
    split = log and bool(np.any(np.asarray(lam) == 0))
    if spec is None:
        grid = fig.add_gridspec(nrows, 2 if split else 1, **({"width_ratios": [1, 10]} if split else {}))
    else:
        grid = spec.subgridspec(nrows, 2 if split else 1, **({"width_ratios": [1, 10]} if split else {}))
    rows, first = [], None
    for r in range(nrows):
        main = fig.add_subplot(grid[r, 1 if split else 0], sharex=first)
        first = first or main
        zero = None
        if log:
            main.set_xscale("log")
        if split:
            zero = fig.add_subplot(grid[r, 0], sharey=main)
            zero.set_xlim(-1, 1)
            zero.set_xticks([0], ["λ = 0"] if r == nrows - 1 else [""])
            zero.spines["right"].set_visible(False)
            main.spines["left"].set_linestyle((0, (2, 2)))  # the axis is broken between λ = 0 and λ > 0
            main.tick_params(labelleft=False)
        if r < nrows - 1:
            main.tick_params(labelbottom=False)
        rows.append(Row(main, zero))
    rows[-1].main.set_xlabel("λ (log scale; λ = 0 at the left)" if split else ("λ (log scale)" if log else "λ"))
    return rows


def mark_unconverged(row: Row, lam: np.ndarray, values: np.ndarray, flags: np.ndarray | None,
                      label: str = "not converged") -> int:
    """Hollow red circles at the ``values`` ``[n, m]`` whose flag is False; the number of series drawn (0/1)."""
    if flags is None:
        return 0
    flags = np.asarray(flags)
    bad = ~(flags.astype(bool) if flags.dtype == bool else flags >= 0.5) & np.isfinite(values)
    if not bad.any():
        return 0
    i, j = np.nonzero(bad)
    row.plot(lam[i], values[i, j], "o", ls="none", mfc="none", mec="red", mew=1.2, markersize=8, label=label)
    return 1


def log_y_positive(row: Row, values: np.ndarray) -> str:
    """Log y for the positive ``values``; a note on how many finite values ≤ 0 are not drawn."""
    row.set_yscale("log")
    dropped = int(np.sum(np.isfinite(values) & (values <= 0)))
    return f" ({dropped} values ≤ 0 not drawn)" if dropped else ""


def save_figure(fig, directory: Path, name: str, formats: Sequence[str]) -> list[Path]:
    """``fig`` as ``directory/name.FMT`` for each format, each file written atomically."""
    paths = []
    for fmt in formats:
        path = directory / f"{name}.{fmt}"
        paths.append(results.atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=120)))
    return paths
