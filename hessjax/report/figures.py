"""The report's plots, as matplotlib Figures (matplotlib is imported when they are drawn)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .branches import _branches
from .derived import Derived
from .load import SweepData, _metric


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


def make_figures(data: SweepData, derived: Derived) -> tuple[dict[str, Any], dict[str, int]]:
    """``({name: matplotlib Figure}, {name: number of data series})`` for every plot of the report.

    The series counts (also in ``derived.json``) are: eigenvalues k + 1 (the 2λ line), outliers 3,
    performance 3, distance 2, overlaps the number of heatmaps, branches the number of branches + 1,
    trace 3 (estimate, 2λP, data term; 1 without P), density the number of λ drawn, bottom the number of
    bottom eigenvalues + 1.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    lam = data.lambdas
    k = data.k
    marker = dict(marker="o", markersize=3 if lam.size < 60 else 0)
    two_lam = _positive(2 * lam)
    figs: dict[str, Any] = {}
    series: dict[str, int] = {}
    id_ = data.run_id

    # (1) top-k eigenvalues
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    for j in range(k):
        ax.plot(lam, _positive(data.eigenvalues[:, j]), color=cmap(j / max(k - 1, 1)), lw=1,
                label=(f"λ_{j + 1}" if j in (0, k - 1) else None), **marker)
    ax.plot(lam, two_lam, "k--", lw=1, label="2λ (penalty)")
    ax.set_yscale("log")
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff", title=f"{id_}: top-{k} Hessian eigenvalues")
    ax.legend(loc="best", fontsize=8)
    figs["eigenvalues"], series["eigenvalues"] = fig, k + 1

    # (2) λ1, outliers, gap
    fig = Figure(figsize=(7, 7), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(lam, data.eigenvalues[:, 0] if k else np.full(lam.size, np.nan), "C0", **marker)
    axes[0].set(ylabel="λ₁", title=f"{id_}: top eigenvalue, outliers above the bulk, gap")
    axes[1].plot(lam, derived.n_outliers, "C1", drawstyle="steps-mid", **marker)
    axes[1].set(ylabel="outliers")
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    if np.isfinite(derived.n_outliers).any():
        axes[1].set_ylim(-0.5, max(1.0, float(np.nanmax(derived.n_outliers))) + 0.5)
    axes[2].plot(lam, derived.gap, "C2", **marker)
    _log_if_positive(axes[2], derived.gap)
    axes[2].set(ylabel="λ₁ / λ_k", xlabel="λ")
    figs["outliers"], series["outliers"] = fig, 3

    # (3) losses and accuracy
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    axes[0].plot(lam, _metric(data, "train_loss"), "C0", label="train", **marker)
    axes[0].plot(lam, _metric(data, "test_loss"), "C3", label="test", **marker)
    axes[0].set(ylabel="mean cross-entropy", title=f"{id_}: loss (no penalty) and accuracy")
    axes[0].legend(fontsize=8)
    axes[1].plot(lam, 100 * _metric(data, "test_accuracy"), "C2", **marker)
    axes[1].set(ylabel="test accuracy [%]", xlabel="λ")
    figs["performance"], series["performance"] = fig, 3

    # (4) distance to the anchor and gradient norm
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    dist, grad = _metric(data, "distance_to_anchor"), _metric(data, "grad_norm")
    axes[0].plot(lam, dist, "C4", **marker)
    _log_if_positive(axes[0], dist)
    axes[0].set(ylabel="‖θ − θ_ref‖", title=f"{id_}: distance to the anchor and gradient norm")
    axes[1].plot(lam, grad, "C5", **marker)
    _log_if_positive(axes[1], grad)
    axes[1].set(ylabel="‖∇L_eff‖", xlabel="λ")
    figs["distance"], series["distance"] = fig, 2

    # (5) overlaps: max overlap per index vs λ, and the full matrices of a few neighbouring pairs
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    chosen = _representative_pairs(derived)
    grid = fig.add_gridspec(1, 1 + max(len(chosen), 1), width_ratios=[2.2] + [1] * max(len(chosen), 1))
    ax = fig.add_subplot(grid[0, 0])
    if derived.has_vectors and lam.size > 1:
        im = ax.imshow(derived.max_overlap[1:].T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="magma",
                       interpolation="nearest", extent=(-0.5, lam.size - 1.5, 0.5, k + 0.5))
        ticks = np.unique(np.linspace(0, lam.size - 2, min(6, lam.size - 1)).round().astype(int))
        ax.set_xticks(ticks, [f"{lam[t + 1]:.3g}" for t in ticks])
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="λ (later of the pair)", ylabel="eigenvalue index j",
               title="max_i |⟨v_i(previous λ), v_j(λ)⟩|")
        fig.colorbar(im, ax=ax, shrink=0.8)
        for c, t in enumerate(chosen):
            sub = fig.add_subplot(grid[0, 1 + c])
            a, b, o = derived.pairs[t]
            sub.imshow(o, vmin=0, vmax=1, cmap="magma", origin="upper",
                       interpolation="nearest", extent=(0.5, k + 0.5, k + 0.5, 0.5))
            sub.set(title=f"λ {lam[a]:.3g} → {lam[b]:.3g}", xlabel="j (later)", ylabel="i (earlier)")
        series["overlaps"] = 1 + len(chosen)
    else:
        _no_data(ax, "needs eigenvectors at two or more finished λ")
        series["overlaps"] = 0
    fig.suptitle(f"{id_}: eigenvector overlaps between neighbouring λ")
    figs["overlaps"] = fig

    # (6) branches
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    branches = _branches(data, derived)
    colors = matplotlib.colormaps["tab20"]
    for c, (bid, b) in enumerate(sorted(branches.items())):
        color = colors((2 * c) % 20 + (c // 10) % 2)  # ten dark hues first, then their light twins
        ax.plot(b["lambda"], _positive(np.asarray(b["eigenvalue"])), color=color, lw=1.2, **marker)
    ax.plot(lam, two_lam, "k--", lw=1, label="2λ (penalty)")
    ax.set_yscale("log")
    ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff",
           title=f"{id_}: {len(branches)} branches matched by eigenvector overlap"
           + ("" if derived.has_vectors else " (no eigenvectors: by index)"))
    ax.legend(loc="best", fontsize=8)
    figs["branches"], series["branches"] = fig, len(branches) + 1

    # extras
    if "trace" in data.extras:
        err = data.extras.get("trace_stderr")
        yerr = None if err is None else 2 * err
        trace = data.extras["trace"]
        if data.n_params:  # the penalty's share 2λP is exact in every probe: the data term has the same s.e.
            fig = Figure(figsize=(7, 6), layout="constrained")
            a0, a1 = fig.subplots(2, 1, sharex=True)
            a0.errorbar(lam, trace, yerr=yerr, fmt="o-", ms=3, capsize=2, label="Hutchinson estimate ± 2 s.e.")
            a0.plot(lam, 2 * lam * data.n_params, "k--", lw=1, label="2λP (the penalty's share)")
            a0.set(ylabel="tr ∇²L_eff", title=f"{id_}: Hessian trace")
            a0.legend(fontsize=8)
            a1.errorbar(lam, trace - 2 * lam * data.n_params, yerr=yerr, fmt="o-", ms=3, capsize=2, color="C1")
            a1.set(xlabel="λ", ylabel="tr ∇²(mean CE) = tr − 2λP")
            figs["trace"], series["trace"] = fig, 3
        else:
            fig = Figure(figsize=(7, 4.5), layout="constrained")
            ax = fig.add_subplot()
            ax.errorbar(lam, trace, yerr=yerr, fmt="o-", ms=3, capsize=2, label="Hutchinson estimate ± 2 s.e.")
            ax.set(xlabel="λ", ylabel="tr ∇²L_eff", title=f"{id_}: Hessian trace")
            ax.legend(fontsize=8)
            figs["trace"], series["trace"] = fig, 1
    if "density" in data.extras and "density_grid" in data.extras:
        dens, g = data.extras["density"], data.extras["density_grid"]
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        a0, a1 = fig.subplots(1, 2)
        floor = 1e-8
        if lam.size > 1:
            im = a0.pcolormesh(g, lam, np.log10(np.maximum(dens, floor)), shading="nearest", cmap="viridis")
            fig.colorbar(im, ax=a0, label="log₁₀ density")
            a0.set(xlabel="eigenvalue", ylabel="λ", title="SLQ spectral density")
        else:
            _no_data(a0, "one finished λ: see the right panel")
        pick = np.unique(np.linspace(0, lam.size - 1, min(5, lam.size)).round().astype(int))
        for c, t in enumerate(pick):
            a1.plot(g, np.maximum(dens[t], floor), color=cmap(c / max(len(pick) - 1, 1)), label=f"λ={lam[t]:.3g}")
        a1.set_yscale("log")
        a1.set(xlabel="eigenvalue", ylabel="density", title="at a few λ")
        a1.legend(fontsize=8)
        fig.suptitle(f"{id_}: Hessian spectral density (Gaussian-broadened SLQ)")
        figs["density"], series["density"] = fig, len(pick)
    if "bottom_eigenvalues" in data.extras:
        bot = np.atleast_2d(data.extras["bottom_eigenvalues"])
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for j in range(bot.shape[1]):
            ax.plot(lam, bot[:, j], color=cmap(j / max(bot.shape[1] - 1, 1)), lw=1,
                    label=("λ_min" if j == 0 else None), **marker)
        ax.plot(lam, 2 * lam, "k--", lw=1, label="2λ (penalty)")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set(xlabel="λ", ylabel="eigenvalue of ∇²L_eff", title=f"{id_}: bottom-{bot.shape[1]} eigenvalues")
        ax.legend(fontsize=8)
        figs["bottom"], series["bottom"] = fig, bot.shape[1] + 1
    return figs, series


def _representative_pairs(derived: Derived, most: int = 3) -> list[int]:
    """Neighbouring pairs to show in full: the first, the most mixed (least diagonal overlap), the last."""
    if not derived.pairs:
        return []
    last = len(derived.pairs) - 1
    mixed = min(range(last + 1), key=lambda t: float(np.mean(np.diag(derived.pairs[t][2]))))
    return sorted(dict.fromkeys([0, mixed, last]))[:most]
