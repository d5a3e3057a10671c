"""The report's plots, as matplotlib Figures (matplotlib is imported when they are drawn).

:func:`make_figures` calls one ``_plot_*`` function per plot, in the order of the report; each returns
``(figure, number of data series)``, or ``None`` when the sweep lacks its data (the optional extras).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .branches import _branches, _events
from .derived import Derived
from .load import SweepData, _metric

Drawn = tuple[Any, int]  # (matplotlib Figure, number of data series)


def make_figures(data: SweepData, derived: Derived) -> tuple[dict[str, Any], dict[str, int]]:
    """``({name: matplotlib Figure}, {name: number of data series})`` for every plot of the report.

    The series counts (also in ``derived.json``) are: eigenvalues k + 1 (the 2λ line), outliers 3,
    performance 3, distance 2, overlaps the number of heatmaps, branches the number of branches + 1,
    trace 3 (estimate, 2λP, data term; 1 without P), density the number of λ drawn, bottom the number of
    bottom eigenvalues + 1.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    figs: dict[str, Any] = {}
    series: dict[str, int] = {}
    for name, plot in _PLOTS:
        drawn = plot(data, derived)
        if drawn is not None:
            figs[name], series[name] = drawn
    return figs, series


# --------------------------------------------------------------------------------------------- helpers


def _figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _marker(lam: np.ndarray) -> dict:
    """Dots on every curve, unless there are too many λ to tell them apart."""
    return dict(marker="o", markersize=3 if lam.size < 60 else 0)


def _positive(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, np.nan)


def _log_if_positive(ax, *arrays, span: float = 20.0) -> None:
    """Log y-scale when every finite value is positive and they span more than ``span``×."""
    vals = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size and np.all(vals > 0) and vals.max() > span * vals.min():
        ax.set_yscale("log")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _representative_pairs(derived: Derived, most: int = 3) -> list[int]:
    """Neighbouring pairs to show in full: the first, the most mixed (least diagonal overlap), the last."""
    if not derived.pairs:
        return []
    last = len(derived.pairs) - 1
    mixed = min(range(last + 1), key=lambda t: float(np.mean(np.diag(derived.pairs[t][2]))))
    return sorted(dict.fromkeys([0, mixed, last]))[:most]


# --------------------------------------------------------------------------------------------- the plots


def _plot_eigenvalues(data: SweepData, derived: Derived) -> Drawn:
    """Top-k eigenvalues vs λ (log y) with the penalty's 2λ for reference."""
    lam, k = data.lambdas, data.k
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    cmap = _colormap("viridis")
    for j in range(k):
        ax.plot(lam, _positive(data.eigenvalues[:, j]), color=cmap(j / max(k - 1, 1)), lw=1,
                label=(f"λ_{j + 1}" if j in (0, k - 1) else None), **_marker(lam))
    ax.plot(lam, _positive(2 * lam), "k--", lw=1, label="2λ (penalty)")
    ax.set_yscale("log")
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff", title=f"{data.run_id}: top-{k} Hessian eigenvalues")
    ax.legend(loc="best", fontsize=8)
    return fig, k + 1


def _plot_outliers(data: SweepData, derived: Derived) -> Drawn:
    """λ₁, the number of outliers above the bulk and the gap λ₁/λ_k, one panel each."""
    lam, marker = data.lambdas, _marker(data.lambdas)
    fig = _figure((7, 7))
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(lam, data.eigenvalues[:, 0] if data.k else np.full(lam.size, np.nan), "C0", **marker)
    axes[0].set(ylabel="λ₁", title=f"{data.run_id}: top eigenvalue, outliers above the bulk, gap")
    axes[1].plot(lam, derived.n_outliers, "C1", drawstyle="steps-mid", **marker)
    axes[1].set(ylabel="outliers")
    _integer_ticks(axes[1].yaxis)
    if np.isfinite(derived.n_outliers).any():
        axes[1].set_ylim(-0.5, max(1.0, float(np.nanmax(derived.n_outliers))) + 0.5)
    axes[2].plot(lam, derived.gap, "C2", **marker)
    _log_if_positive(axes[2], derived.gap)
    axes[2].set(ylabel="λ₁ / λ_k", xlabel="λ")
    return fig, 3


def _plot_performance(data: SweepData, derived: Derived) -> Drawn:
    """Train and test loss (without the penalty) and test accuracy."""
    lam, marker = data.lambdas, _marker(data.lambdas)
    fig = _figure((7, 5.5))
    axes = fig.subplots(2, 1, sharex=True)
    axes[0].plot(lam, _metric(data, "train_loss"), "C0", label="train", **marker)
    axes[0].plot(lam, _metric(data, "test_loss"), "C3", label="test", **marker)
    axes[0].set(ylabel="mean cross-entropy", title=f"{data.run_id}: loss (no penalty) and accuracy")
    axes[0].legend(fontsize=8)
    axes[1].plot(lam, 100 * _metric(data, "test_accuracy"), "C2", **marker)
    axes[1].set(ylabel="test accuracy [%]", xlabel="λ")
    return fig, 3


def _plot_distance(data: SweepData, derived: Derived) -> Drawn:
    """‖θ − θ_ref‖ and ‖∇L_eff‖."""
    lam, marker = data.lambdas, _marker(data.lambdas)
    fig = _figure((7, 5.5))
    axes = fig.subplots(2, 1, sharex=True)
    dist, grad = _metric(data, "distance_to_anchor"), _metric(data, "grad_norm")
    axes[0].plot(lam, dist, "C4", **marker)
    _log_if_positive(axes[0], dist)
    axes[0].set(ylabel="‖θ − θ_ref‖", title=f"{data.run_id}: distance to the anchor and gradient norm")
    axes[1].plot(lam, grad, "C5", **marker)
    _log_if_positive(axes[1], grad)
    axes[1].set(ylabel="‖∇L_eff‖", xlabel="λ")
    return fig, 2


def _plot_overlaps(data: SweepData, derived: Derived) -> Drawn:
    """The max overlap per eigenvalue index vs λ, and the full matrices of a few neighbouring pairs."""
    lam = data.lambdas
    fig = _figure((11, 4.5))
    chosen = _representative_pairs(derived)
    grid = fig.add_gridspec(1, 1 + max(len(chosen), 1), width_ratios=[2.2] + [1] * max(len(chosen), 1))
    ax = fig.add_subplot(grid[0, 0])
    if derived.has_vectors and lam.size > 1:
        _max_overlap_map(fig, ax, lam, data.k, derived.max_overlap)
        for c, t in enumerate(chosen):
            _overlap_matrix_panel(fig.add_subplot(grid[0, 1 + c]), lam, data.k, derived.pairs[t])
        n_series = 1 + len(chosen)
    else:
        _no_data(ax, "needs eigenvectors at two or more finished λ")
        n_series = 0
    fig.suptitle(f"{data.run_id}: eigenvector overlaps between neighbouring λ")
    return fig, n_series


def _max_overlap_map(fig, ax, lam: np.ndarray, k: int, max_overlap: np.ndarray) -> None:
    im = ax.imshow(max_overlap[1:].T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="magma",
                   interpolation="nearest", extent=(-0.5, lam.size - 1.5, 0.5, k + 0.5))
    ticks = np.unique(np.linspace(0, lam.size - 2, min(6, lam.size - 1)).round().astype(int))
    ax.set_xticks(ticks, [f"{lam[t + 1]:.3g}" for t in ticks])
    _integer_ticks(ax.yaxis)
    ax.set(xlabel="λ (later of the pair)", ylabel="eigenvalue index j",
           title="max_i |⟨v_i(previous λ), v_j(λ)⟩|")
    fig.colorbar(im, ax=ax, shrink=0.8)


def _overlap_matrix_panel(ax, lam: np.ndarray, k: int, pair) -> None:
    a, b, o = pair
    ax.imshow(o, vmin=0, vmax=1, cmap="magma", origin="upper", interpolation="nearest",
              extent=(0.5, k + 0.5, k + 0.5, 0.5))
    ax.set(title=f"λ {lam[a]:.3g} → {lam[b]:.3g}", xlabel="j (later)", ylabel="i (earlier)")


def _plot_branches(data: SweepData, derived: Derived) -> Drawn:
    """Eigenvalue branches (lines only where continued), crossings ×, avoided crossings ○, discontinuities
    as dashed vertical lines, with the penalty's 2λ."""
    lam = data.lambdas
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    branches = _branches(data, derived)
    colors = _colormap("tab20")
    for c, (bid, b) in enumerate(sorted(branches.items())):
        color = colors((2 * c) % 20 + (c // 10) % 2)  # ten dark hues first, then their light twins
        ax.plot(b["lambda"], _positive(np.asarray(b["eigenvalue"])), color=color, lw=1.2, **_marker(lam))
    ax.plot(lam, _positive(2 * lam), "k--", lw=1, label="2λ (penalty)")
    events = _events(data, derived)  # markers are collections, not lines: ax.lines stays one per series
    for key, marker, label in (("crossings", "x", "crossing"), ("avoided", "o", "avoided crossing")):
        if events[key]:
            x, y = np.asarray(events[key], np.float64).T
            ax.scatter(x, _positive(y), marker=marker, s=40, zorder=3, label=label,
                       **({"color": "k"} if marker == "x" else {"facecolors": "none", "edgecolors": "k"}))
    if events["discontinuities"]:
        ax.vlines(events["discontinuities"], 0, 1, transform=ax.get_xaxis_transform(), colors="C3",
                  linestyles="dashed", lw=1, label="discontinuity")
    ax.set_yscale("log")
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff",
           title=f"{data.run_id}: {len(branches)} branches followed by eigenvector overlap"
           + ("" if derived.has_vectors else " (no eigenvectors: by index)"))
    ax.legend(loc="best", fontsize=8)
    return fig, len(branches) + 1


def _plot_trace(data: SweepData, derived: Derived) -> Drawn | None:
    """The Hutchinson trace ± 2 s.e.; with P known also the data term ``tr − 2λP`` below it."""
    if "trace" not in data.extras:
        return None
    lam, trace = data.lambdas, data.extras["trace"]
    err = data.extras.get("trace_stderr")
    yerr = None if err is None else 2 * err
    estimate = dict(yerr=yerr, fmt="o-", ms=3, capsize=2, label="Hutchinson estimate ± 2 s.e.")
    if not data.n_params:
        fig = _figure((7, 4.5))
        ax = fig.add_subplot()
        ax.errorbar(lam, trace, **estimate)
        ax.set(xlabel="λ", ylabel="tr ∇²L_eff", title=f"{data.run_id}: Hessian trace")
        ax.legend(fontsize=8)
        return fig, 1
    # the penalty's share 2λP is exact in every probe: the data term has the same s.e.
    fig = _figure((7, 6))
    a0, a1 = fig.subplots(2, 1, sharex=True)
    a0.errorbar(lam, trace, **estimate)
    a0.plot(lam, 2 * lam * data.n_params, "k--", lw=1, label="2λP (the penalty's share)")
    a0.set(ylabel="tr ∇²L_eff", title=f"{data.run_id}: Hessian trace")
    a0.legend(fontsize=8)
    a1.errorbar(lam, trace - 2 * lam * data.n_params, yerr=yerr, fmt="o-", ms=3, capsize=2, color="C1")
    a1.set(xlabel="λ", ylabel="tr ∇²(mean CE) = tr − 2λP")
    return fig, 3


def _plot_density(data: SweepData, derived: Derived) -> Drawn | None:
    """The SLQ density over (eigenvalue, λ) as a log colour map, and its curves at up to five λ."""
    if "density" not in data.extras or "density_grid" not in data.extras:
        return None
    lam, dens, g = data.lambdas, data.extras["density"], data.extras["density_grid"]
    fig = _figure((11, 4.5))
    a0, a1 = fig.subplots(1, 2)
    floor = 1e-8
    if lam.size > 1:
        im = a0.pcolormesh(g, lam, np.log10(np.maximum(dens, floor)), shading="nearest", cmap="viridis")
        fig.colorbar(im, ax=a0, label="log₁₀ density")
        a0.set(xlabel="eigenvalue", ylabel="λ", title="SLQ spectral density")
    else:
        _no_data(a0, "one finished λ: see the right panel")
    pick = np.unique(np.linspace(0, lam.size - 1, min(5, lam.size)).round().astype(int))
    cmap = _colormap("viridis")
    for c, t in enumerate(pick):
        a1.plot(g, np.maximum(dens[t], floor), color=cmap(c / max(len(pick) - 1, 1)), label=f"λ={lam[t]:.3g}")
    a1.set_yscale("log")
    a1.set(xlabel="eigenvalue", ylabel="density", title="at a few λ")
    a1.legend(fontsize=8)
    fig.suptitle(f"{data.run_id}: Hessian spectral density (Gaussian-broadened SLQ)")
    return fig, len(pick)


def _plot_bottom(data: SweepData, derived: Derived) -> Drawn | None:
    """The smallest eigenvalues vs λ with the penalty's 2λ and zero."""
    if "bottom_eigenvalues" not in data.extras:
        return None
    lam, bot = data.lambdas, np.atleast_2d(data.extras["bottom_eigenvalues"])
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    cmap = _colormap("viridis")
    for j in range(bot.shape[1]):
        ax.plot(lam, bot[:, j], color=cmap(j / max(bot.shape[1] - 1, 1)), lw=1,
                label=("λ_min" if j == 0 else None), **_marker(lam))
    ax.plot(lam, 2 * lam, "k--", lw=1, label="2λ (penalty)")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff", title=f"{data.run_id}: bottom-{bot.shape[1]} eigenvalues")
    ax.legend(fontsize=8)
    return fig, bot.shape[1] + 1


#: The report's plots in order: (name, function of (data, derived) -> (figure, series) or None).
_PLOTS = (
    ("eigenvalues", _plot_eigenvalues),
    ("outliers", _plot_outliers),
    ("performance", _plot_performance),
    ("distance", _plot_distance),
    ("overlaps", _plot_overlaps),
    ("branches", _plot_branches),
    ("trace", _plot_trace),
    ("density", _plot_density),
    ("bottom", _plot_bottom),
)
