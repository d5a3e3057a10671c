"""The report's plots, as matplotlib Figures (matplotlib is imported when they are drawn).

:func:`make_figures` calls one ``_plot_*`` function per plot, in the order of the report; each returns
``(figure, number of data series)``, or ``None`` when the sweep lacks its data (the optional extras).

What is on μ: the data-Hessian eigenvalues ``μ_i = θ_i − 2λ`` (``data_eigenvalues``, log y), the
outlier count, the gap ``μ₁/μ_k``, the branches and the SLQ density; θ (the eigenvalues of
``∇²L_eff``) is drawn with the penalty's ``2λ`` line (``eigenvalues``) and beside μ for the bottom-k.
**λ axis**: log when the λ > 0 span two decades or more (:func:`log_lambda_axis`), with λ = 0 drawn
apart in a narrow panel at the left labelled "λ = 0"; linear otherwise. **Unconverged pairs** (the
sweep's converged flag False) are hollow red circles on the eigenvalue plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .derived import Derived, branch_curves, branch_events
from .load import SweepData
from .plotting import (colormap, dot_style, integer_ticks, lambda_rows, log_if_positive, log_y_positive, mark_unconverged,
                       new_figure, no_data, positive_only)

Drawn = tuple[Any, int]  # (matplotlib Figure, number of data series)


def make_figures(data: SweepData, derived: Derived) -> tuple[dict[str, Any], dict[str, int]]:
    """``({name: matplotlib Figure}, {name: number of data series})`` for every plot of the report.

    The series counts (also in ``derived.json``) are: data_eigenvalues k, eigenvalues k + 1 (the 2λ
    line), each + 1 when unconverged pairs are marked; outliers 3, performance 3, distance 2, overlaps
    the number of heatmaps, branches the number of branches, trace 3 (estimate, 2λP, data term; 1
    without P), density the number of λ drawn, bottom 2 × the number of bottom eigenvalues + 1 (the 2λ
    line), + 1 when unconverged pairs are marked.
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


def representative_pairs(derived: Derived, most: int = 3) -> list[int]:
    """Neighbouring pairs to show in full: the first, the most mixed (least diagonal overlap), the last."""
    if not derived.pairs:
        return []
    last = len(derived.pairs) - 1
    mixed = min(range(last + 1), key=lambda t: float(np.mean(np.diag(derived.pairs[t][2]))))
    return sorted(dict.fromkeys([0, mixed, last]))[:most]


# --------------------------------------------------------------------------------------------- the plots


def _plot_data_eigenvalues(data: SweepData, derived: Derived) -> Drawn:
    """The data-Hessian eigenvalues μ_i = θ_i − 2λ vs λ (log y); unconverged pairs in hollow red."""
    lam, k, mu = data.lambdas, data.k, data.mu
    fig = new_figure((7, 4.5))
    (row,) = lambda_rows(fig, lam)
    cmap = colormap("viridis")
    for j in range(k):
        row.plot(lam, positive_only(mu[:, j]), color=cmap(j / max(k - 1, 1)), lw=1,
                 label=(f"μ_{j + 1}" if j in (0, k - 1) else None), **dot_style(lam))
    marked = mark_unconverged(row, lam, positive_only(mu), data.eig_converged)
    note = log_y_positive(row, mu)
    row.set(ylabel="μ: eigenvalue of ∇²(mean CE)",
            title=f"{data.run_id}: top-{k} data-Hessian eigenvalues μ = θ − 2λ{note}")
    row.legend(loc="best", fontsize=8)
    return fig, k + marked


def _plot_eigenvalues(data: SweepData, derived: Derived) -> Drawn:
    """Top-k eigenvalues θ of ∇²L_eff vs λ (log y) with the penalty's 2λ; unconverged pairs in hollow red."""
    lam, k = data.lambdas, data.k
    fig = new_figure((7, 4.5))
    (row,) = lambda_rows(fig, lam)
    cmap = colormap("viridis")
    for j in range(k):
        row.plot(lam, positive_only(data.eigenvalues[:, j]), color=cmap(j / max(k - 1, 1)), lw=1,
                 label=(f"θ_{j + 1}" if j in (0, k - 1) else None), **dot_style(lam))
    row.plot(lam, positive_only(2 * lam), "k--", lw=1, label="2λ (penalty)")
    marked = mark_unconverged(row, lam, positive_only(data.eigenvalues), data.eig_converged)
    row.set_yscale("log")
    row.set(ylabel="θ: eigenvalue of ∇²L_eff", title=f"{data.run_id}: top-{k} Hessian eigenvalues θ = μ + 2λ")
    row.legend(loc="best", fontsize=8)
    return fig, k + 1 + marked


def _plot_outliers(data: SweepData, derived: Derived) -> Drawn:
    """μ₁, the number of outliers above the bulk and the gap μ₁/μ_k, one panel each (all on μ)."""
    lam, marker = data.lambdas, dot_style(data.lambdas)
    fig = new_figure((7, 7))
    rows = lambda_rows(fig, lam, 3)
    rows[0].plot(lam, data.mu[:, 0] if data.k else np.full(lam.size, np.nan), "C0", **marker)
    rows[0].set(ylabel="μ₁", title=f"{data.run_id}: top data eigenvalue, outliers above the bulk, gap (on μ)")
    rows[1].plot(lam, derived.n_outliers, "C1", drawstyle="steps-mid", **marker)
    rows[1].set(ylabel="outliers")
    integer_ticks(rows[1].main.yaxis)
    if np.isfinite(derived.n_outliers).any():
        rows[1].set_ylim(-0.5, max(1.0, float(np.nanmax(derived.n_outliers))) + 0.5)
    rows[2].plot(lam, derived.gap, "C2", **marker)
    log_if_positive(rows[2], derived.gap)
    rows[2].set(ylabel="μ₁ / μ_k")
    return fig, 3


def _plot_performance(data: SweepData, derived: Derived) -> Drawn:
    """Train and test loss (without the penalty) and test accuracy."""
    lam, marker = data.lambdas, dot_style(data.lambdas)
    fig = new_figure((7, 5.5))
    rows = lambda_rows(fig, lam, 2)
    rows[0].plot(lam, data.metric("train_loss"), "C0", label="train", **marker)
    rows[0].plot(lam, data.metric("test_loss"), "C3", label="test", **marker)
    rows[0].set(ylabel="mean cross-entropy", title=f"{data.run_id}: loss (no penalty) and accuracy")
    rows[0].legend(fontsize=8)
    rows[1].plot(lam, 100 * data.metric("test_accuracy"), "C2", **marker)
    rows[1].set(ylabel="test accuracy [%]")
    return fig, 3


def _plot_distance(data: SweepData, derived: Derived) -> Drawn:
    """‖θ − θ_ref‖ and ‖∇L_eff‖."""
    lam, marker = data.lambdas, dot_style(data.lambdas)
    fig = new_figure((7, 5.5))
    rows = lambda_rows(fig, lam, 2)
    dist, grad = data.metric("distance_to_anchor"), data.metric("grad_norm")
    rows[0].plot(lam, dist, "C4", **marker)
    log_if_positive(rows[0], dist)
    rows[0].set(ylabel="‖θ − θ_ref‖", title=f"{data.run_id}: distance to the anchor and gradient norm")
    rows[1].plot(lam, grad, "C5", **marker)
    log_if_positive(rows[1], grad)
    rows[1].set(ylabel="‖∇L_eff‖")
    return fig, 2


def _plot_overlaps(data: SweepData, derived: Derived) -> Drawn:
    """The max overlap per eigenvalue index vs λ, and the full matrices of a few neighbouring pairs."""
    lam = data.lambdas
    fig = new_figure((11, 4.5))
    chosen = representative_pairs(derived)
    grid = fig.add_gridspec(1, 1 + max(len(chosen), 1), width_ratios=[2.2] + [1] * max(len(chosen), 1))
    ax = fig.add_subplot(grid[0, 0])
    if derived.has_vectors and lam.size > 1:
        _max_overlap_map(fig, ax, lam, data.k, derived.max_overlap)
        for c, t in enumerate(chosen):
            _overlap_matrix_panel(fig.add_subplot(grid[0, 1 + c]), lam, data.k, derived.pairs[t])
        n_series = 1 + len(chosen)
    else:
        no_data(ax, "needs eigenvectors at two or more finished λ")
        n_series = 0
    fig.suptitle(f"{data.run_id}: eigenvector overlaps between neighbouring λ")
    return fig, n_series


def _max_overlap_map(fig, ax, lam: np.ndarray, k: int, max_overlap: np.ndarray) -> None:
    im = ax.imshow(max_overlap[1:].T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="magma",
                   interpolation="nearest", extent=(-0.5, lam.size - 1.5, 0.5, k + 0.5))
    ticks = np.unique(np.linspace(0, lam.size - 2, min(6, lam.size - 1)).round().astype(int))
    ax.set_xticks(ticks, [f"{lam[t + 1]:.3g}" for t in ticks])
    integer_ticks(ax.yaxis)
    ax.set(xlabel="λ (later of the pair)", ylabel="eigenvalue index j",
           title="max_i |⟨v_i(previous λ), v_j(λ)⟩|")
    fig.colorbar(im, ax=ax, shrink=0.8)


def _overlap_matrix_panel(ax, lam: np.ndarray, k: int, pair) -> None:
    a, b, o = pair
    ax.imshow(o, vmin=0, vmax=1, cmap="magma", origin="upper", interpolation="nearest",
              extent=(0.5, k + 0.5, k + 0.5, 0.5))
    ax.set(title=f"λ {lam[a]:.3g} → {lam[b]:.3g}", xlabel="j (later)", ylabel="i (earlier)")


def _plot_branches(data: SweepData, derived: Derived) -> Drawn:
    """Eigenvalue branches on μ = θ − 2λ (log y), lines only where continued; crossings ×, avoided
    crossings ○, discontinuities as dashed vertical lines."""
    lam, mu = data.lambdas, data.mu
    fig = new_figure((7, 4.5))
    (row,) = lambda_rows(fig, lam)
    branches = branch_curves(data, derived)
    colors = colormap("tab20")
    for c, (bid, b) in enumerate(sorted(branches.items())):
        color = colors((2 * c) % 20 + (c // 10) % 2)  # ten dark hues first, then their light twins
        t = np.searchsorted(lam, b["lambda"])  # rows of the branch's λ (exact: the same floats)
        row.plot(b["lambda"], positive_only(mu[t, np.asarray(b["index"]) - 1]), color=color, lw=1.2, **dot_style(lam))
    events = branch_events(data, derived, values=mu)  # markers are collections, not lines: one line per branch
    ax = row.main
    for key, marker, label in (("crossings", "x", "crossing"), ("avoided", "o", "avoided crossing")):
        if events[key]:
            x, y = np.asarray(events[key], np.float64).T
            shown = x > 0 if row.zero is not None else np.ones(x.size, bool)
            ax.scatter(x[shown], positive_only(y[shown]), marker=marker, s=40, zorder=3, label=label,
                       **({"color": "k"} if marker == "x" else {"facecolors": "none", "edgecolors": "k"}))
    if events["discontinuities"]:
        ax.vlines(events["discontinuities"], 0, 1, transform=ax.get_xaxis_transform(), colors="C3",
                  linestyles="dashed", lw=1, label="discontinuity")
    row.set_yscale("log")
    row.set(ylabel="μ: eigenvalue of ∇²(mean CE)",
            title=f"{data.run_id}: {len(branches)} branches followed by eigenvector overlap (on μ)"
            + ("" if derived.has_vectors else " (no eigenvectors: by index)"))
    if events["crossings"] or events["avoided"] or events["discontinuities"]:
        ax.legend(loc="best", fontsize=8)
    return fig, len(branches)


def _plot_trace(data: SweepData, derived: Derived) -> Drawn | None:
    """The Hutchinson trace ± 2 s.e.; with P known also the data term ``tr − 2λP`` below it."""
    if "trace" not in data.extras:
        return None
    lam, trace = data.lambdas, data.extras["trace"]
    err = data.extras.get("trace_stderr")
    yerr = None if err is None else 2 * err
    estimate = dict(fmt="o-", ms=3, capsize=2, label="Hutchinson estimate ± 2 s.e.")
    if not data.n_params:
        fig = new_figure((7, 4.5))
        (row,) = lambda_rows(fig, lam)
        row.errorbar(lam, trace, yerr, **estimate)
        row.set(ylabel="tr ∇²L_eff", title=f"{data.run_id}: Hessian trace")
        row.legend(fontsize=8)
        return fig, 1
    # the penalty's share 2λP is exact in every probe: the data term has the same s.e.
    fig = new_figure((7, 6))
    r0, r1 = lambda_rows(fig, lam, 2)
    r0.errorbar(lam, trace, yerr, **estimate)
    r0.plot(lam, 2 * lam * data.n_params, "k--", lw=1, label="2λP (the penalty's share)")
    r0.set(ylabel="tr ∇²L_eff", title=f"{data.run_id}: Hessian trace")
    r0.legend(fontsize=8)
    r1.errorbar(lam, trace - 2 * lam * data.n_params, yerr, fmt="o-", ms=3, capsize=2, color="C1")
    r1.set(ylabel="tr ∇²(mean CE) = tr − 2λP")
    return fig, 3


def _plot_density(data: SweepData, derived: Derived) -> Drawn | None:
    """The SLQ density of μ (the data Hessian: nodes less 2λ) as a log colour map over (μ, λ), and its
    curves at up to five λ."""
    if "density" not in data.extras or "density_grid" not in data.extras:
        return None
    lam, dens, g = data.lambdas, data.extras["density"], data.extras["density_grid"]
    fig = new_figure((11, 4.5))
    a0, a1 = fig.subplots(1, 2)
    floor = 1e-8
    if lam.size > 1:  # one row per finished λ, evenly spaced whatever the grid (λ = 0 included)
        im = a0.pcolormesh(g, np.arange(lam.size), np.log10(np.maximum(dens, floor)), shading="nearest",
                           cmap="viridis")
        fig.colorbar(im, ax=a0, label="log₁₀ density")
        ticks = np.unique(np.linspace(0, lam.size - 1, min(8, lam.size)).round().astype(int))
        a0.set_yticks(ticks, [f"{lam[t]:.3g}" for t in ticks])
        a0.set(xlabel="μ (eigenvalue of ∇²(mean CE))", ylabel="λ (one row per finished λ)",
               title="SLQ spectral density of μ")
    else:
        no_data(a0, "one finished λ: see the right panel")
    pick = np.unique(np.linspace(0, lam.size - 1, min(5, lam.size)).round().astype(int))
    cmap = colormap("viridis")
    for c, t in enumerate(pick):
        a1.plot(g, np.maximum(dens[t], floor), color=cmap(c / max(len(pick) - 1, 1)), label=f"λ={lam[t]:.3g}")
    a1.set_yscale("log")
    a1.set(xlabel="μ", ylabel="density", title="at a few λ")
    a1.legend(fontsize=8)
    fig.suptitle(f"{data.run_id}: data-Hessian spectral density (Gaussian-broadened SLQ, on μ = θ − 2λ)")
    return fig, len(pick)


def _plot_bottom(data: SweepData, derived: Derived) -> Drawn | None:
    """The smallest eigenvalues: θ of ∇²L_eff with the penalty's 2λ, and μ = θ − 2λ; zero on both;
    unconverged pairs (``bottom_converged`` False) in hollow red."""
    if "bottom_eigenvalues" not in data.extras:
        return None
    lam, bot = data.lambdas, np.atleast_2d(data.extras["bottom_eigenvalues"])
    flags = data.extras.get("bottom_converged")
    fig = new_figure((7, 6.5))
    r0, r1 = lambda_rows(fig, lam, 2)
    cmap = colormap("viridis")
    m = bot.shape[1]
    for j in range(m):
        color = cmap(j / max(m - 1, 1))
        r0.plot(lam, bot[:, j], color=color, lw=1, label=("θ_min" if j == 0 else None), **dot_style(lam))
        r1.plot(lam, bot[:, j] - 2 * lam, color=color, lw=1, label=("μ_min" if j == 0 else None), **dot_style(lam))
    r0.plot(lam, 2 * lam, "k--", lw=1, label="2λ (penalty)")
    marked = mark_unconverged(r0, lam, bot, flags)
    mark_unconverged(r1, lam, bot - 2 * lam[:, None], flags)
    for r in (r0, r1):
        r.axhline(0, color="0.6", lw=0.6)
        r.legend(fontsize=8)
    r0.set(ylabel="θ: eigenvalue of ∇²L_eff", title=f"{data.run_id}: bottom-{m} eigenvalues")
    r1.set(ylabel="μ = θ − 2λ")
    lam_c = data.metric("lambda_c")
    if np.isfinite(lam_c).any():  # where L_eff turns locally convex: λ ≥ λ_c = max(0, −μ_min/2)
        convex = np.isfinite(lam_c) & (lam >= lam_c)
        r1.plot(lam[convex], (bot[:, 0] - 2 * lam)[convex], "s", ls="none", mfc="none", mec="C2", markersize=7,
                label="λ ≥ λ_c: L_eff locally convex")
        r1.legend(fontsize=8)
        return fig, 2 * m + 2 + marked
    return fig, 2 * m + 1 + marked


def _plot_subspace(data: SweepData, derived: Derived) -> Drawn | None:
    """How much of the data gradient ∇CE and of the displacement θ − θ_ref lies in the top-k eigenspace:
    ‖Vₖᵀu‖²/‖u‖² against λ."""
    grad, disp = data.metric("gradient_overlap"), data.metric("displacement_overlap")
    if not (np.isfinite(grad).any() or np.isfinite(disp).any()):
        return None
    lam = data.lambdas
    fig = new_figure((7, 4.5))
    (row,) = lambda_rows(fig, lam)
    row.plot(lam, grad, "C0", label="gradient ∇CE", **dot_style(lam))
    row.plot(lam, disp, "C3", label="displacement θ − θ_ref", **dot_style(lam))
    row.set_ylim(-0.02, 1.02)
    row.set(ylabel=f"‖V_{data.k}ᵀu‖² / ‖u‖²",
            title=f"{data.run_id}: share in the top-{data.k} eigenspace of the data Hessian")
    row.legend(fontsize=8)
    return fig, 2


def _plot_ggn(data: SweepData, derived: Derived) -> Drawn | None:
    """The Gauss–Newton split H = G + (H − G): the top μ_i and g_i against λ (log y where positive), and
    the number of outliers above the bulk of each, with the number of classes K."""
    if "ggn_eigenvalues" not in data.extras:
        return None
    lam, g = data.lambdas, np.atleast_2d(data.extras["ggn_eigenvalues"])
    fig = new_figure((7, 7))
    r0, r1 = lambda_rows(fig, lam, 2)
    mu = data.mu
    for j in range(mu.shape[1]):
        r0.plot(lam, positive_only(mu[:, j]), color="C0", lw=0.8, alpha=0.6, label="μ_i (H)" if j == 0 else None)
    for j in range(g.shape[1]):
        r0.plot(lam, positive_only(g[:, j]), color="C1", lw=0.8, ls="--", label="g_i (G)" if j == 0 else None)
    marked = mark_unconverged(r0, lam, g, data.extras.get("ggn_converged"))
    log_if_positive(r0, positive_only(mu), positive_only(g), span=1.0)
    r0.set(ylabel="eigenvalue", title=f"{data.run_id}: Hessian H and its Gauss–Newton part G (top {g.shape[1]})")
    r0.legend(fontsize=8)
    r1.plot(lam, derived.n_outliers, "C0", drawstyle="steps-mid", label="outliers of H", **dot_style(lam))
    r1.plot(lam, derived.ggn_outliers, "C1", drawstyle="steps-mid", ls="--", label="outliers of G", **dot_style(lam))
    series = 2 * (mu.shape[1] > 0) + 2 + marked
    if data.num_classes:
        r1.axhline(data.num_classes, color="0.5", lw=0.8, ls=":", label=f"K = {data.num_classes} classes")
        series += 1
    integer_ticks(r1.main.yaxis)
    r1.set(ylabel="outliers above the bulk")
    r1.legend(fontsize=8)
    return fig, series


#: The report's plots in order: (name, function of (data, derived) -> (figure, series) or None).
_PLOTS = (
    ("data_eigenvalues", _plot_data_eigenvalues),
    ("eigenvalues", _plot_eigenvalues),
    ("outliers", _plot_outliers),
    ("performance", _plot_performance),
    ("distance", _plot_distance),
    ("overlaps", _plot_overlaps),
    ("branches", _plot_branches),
    ("trace", _plot_trace),
    ("density", _plot_density),
    ("bottom", _plot_bottom),
    ("subspace", _plot_subspace),
    ("ggn", _plot_ggn),
)
