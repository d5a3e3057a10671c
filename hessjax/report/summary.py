"""Writing a report: ``derived.csv``, ``derived.json``, the plots and ``summary.md``.

``summary.md`` says which quantities are on μ = θ − 2λ (the data Hessian: μ₁…μ_k, the outliers, the
gap, the branches, the SLQ density) and lists every pair whose converged flag is False (top-k and
bottom-k), with its residual and error bound.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import results
from ..results import UsageError
from .branches import DEFAULT_MIN_OVERLAP, UNIQUE_OVERLAP
from .derived import DEFAULT_OUTLIER_FACTOR, Derived, branch_curves, branch_summary, compute_derived
from .figures import make_figures
from .load import SweepData, find_run_ids, load_sweep
from .plotting import log_lambda_axis, save_figure
from .text import csv_cell, short_number
from .walks import DEFAULT_HYSTERESIS_THRESHOLD, WalkComparison, compare_walks, descending_partner, plot_walks

FORMATS = ("png", "svg")


def _columns(data: SweepData, derived: Derived) -> dict[str, np.ndarray]:
    n, k = data.lambdas.size, data.k
    cols: dict[str, np.ndarray] = {"lambda": data.lambdas}
    for m in ("train_loss", "test_loss", "test_accuracy", "grad_norm", "distance_to_anchor", "max_residual",
              "gradient_overlap", "displacement_overlap"):
        cols[m] = data.metric(m)
    mu = data.mu
    cols["lambda_1"] = data.eigenvalues[:, 0] if k else np.full(n, np.nan)
    cols["lambda_k"] = _last_finite(data.eigenvalues)
    cols["mu_1"] = mu[:, 0] if k else np.full(n, np.nan)
    cols["mu_k"] = _last_finite(mu)
    cols["gap"] = derived.gap
    cols["n_outliers"] = derived.n_outliers
    cols["outlier_threshold"] = derived.outlier_threshold
    if "trace" in data.extras:
        cols["trace"] = data.extras["trace"]
        cols["trace_stderr"] = data.extras.get("trace_stderr", np.full(n, np.nan))
        if data.n_params:
            cols["trace_data"] = data.extras["trace"] - 2 * data.lambdas * data.n_params
    if data.eig_converged is not None:
        cols["n_unconverged"] = np.sum(~data.eig_converged & np.isfinite(data.eigenvalues), axis=1)
    if "bottom_eigenvalues" in data.extras:
        cols["lambda_min"] = np.atleast_2d(data.extras["bottom_eigenvalues"])[:, 0]
        cols["mu_min"] = cols["lambda_min"] - 2 * data.lambdas
        cols["lambda_c"] = data.metric("lambda_c")
    if "ggn_eigenvalues" in data.extras:
        g = np.atleast_2d(data.extras["ggn_eigenvalues"])
        cols["ggn_1"] = g[:, 0]
        cols["ggn_outliers"] = derived.ggn_outliers
        for j in range(g.shape[1]):
            cols[f"ggn_{j + 1}"] = g[:, j]
    for j in range(k):
        cols[f"eig_{j + 1}"] = data.eigenvalues[:, j]
    for j in range(k):
        cols[f"mu_{j + 1}"] = mu[:, j]
    for j in range(k):
        cols[f"branch_{j + 1}"] = derived.branch[:, j]
    for j in range(k):
        cols[f"overlap_prev_{j + 1}"] = derived.matched_overlap[:, j]
    return cols


def _last_finite(values: np.ndarray) -> np.ndarray:
    return np.array([r[np.isfinite(r)][-1] if np.isfinite(r).any() else np.nan for r in values])


def _headline(data: SweepData, derived: Derived, branches: Mapping) -> list[tuple[str, str]]:
    lam = data.lambdas
    lo, hi = 0, lam.size - 1

    def at(values, fmt="{:.4g}") -> str:
        values = np.asarray(values, np.float64)
        text = [("—" if not np.isfinite(values[i]) else fmt.format(values[i])) for i in (lo, hi)]
        return text[0] if lo == hi else f"{text[0]} → {text[1]}"

    acc = data.metric("test_accuracy")
    rows = [
        ("run id / source", f"{data.run_id} / {'Zarr store' if data.source == 'zarr' else 'per-λ CSV files'}"),
        ("λ finished", f"{lam.size} of {data.total_lambdas}, λ ∈ [{lam[lo]:.4g}, {lam[hi]:.4g}]"),
        ("parameters P / k", f"{data.n_params if data.n_params else '?'} / {data.k}"),
        ("μ₁ (smallest → largest λ)", at(data.mu[:, 0] if data.k else np.full(lam.size, np.nan))),
        ("θ₁ = μ₁ + 2λ", at(data.eigenvalues[:, 0] if data.k else np.full(lam.size, np.nan))),
        ("outliers above the bulk (on μ)", at(derived.n_outliers, "{:.0f}")),
        ("gap μ₁/μ_k", at(derived.gap, "{:.3g}")),
        ("unconverged pairs", _unconverged_count(data)),
        ("train loss", at(data.metric("train_loss"))),
        ("test loss", at(data.metric("test_loss"))),
        ("test accuracy", at(100 * acc, "{:.2f}%")),
    ]
    if np.isfinite(acc).any():
        best = int(np.nanargmax(acc))
        rows.append(("best test accuracy", f"{100 * acc[best]:.2f}% at λ = {lam[best]:.4g}"))
    rows += [
        ("‖θ − θ_ref‖", at(data.metric("distance_to_anchor"))),
        ("‖∇L_eff‖ (max)", "—" if not np.isfinite(data.metric("grad_norm")).any()
         else f"{np.nanmax(data.metric('grad_norm')):.3g}"),
        _branch_headline(derived, branches),
    ]
    if derived.has_vectors:
        rows.append(("lowest matched overlap", f"{np.nanmin(derived.matched_overlap):.3f}"
                     if np.isfinite(derived.matched_overlap).any() else "—"))
    if "trace" in data.extras:
        rows.append(("Hessian trace", at(data.extras["trace"])))
    if "bottom_eigenvalues" in data.extras:
        rows.append(("θ_min (bottom-k)", at(np.atleast_2d(data.extras["bottom_eigenvalues"])[:, 0])))
        rows.append(("μ_min = θ_min − 2λ", at(np.atleast_2d(data.extras["bottom_eigenvalues"])[:, 0] - 2 * lam)))
        lam_c = data.metric("lambda_c")
        if np.isfinite(lam_c).any():
            convex = np.isfinite(lam_c) & (lam >= lam_c)
            rows.append(("λ_c = max(0, −μ_min/2)", at(lam_c)))
            rows.append(("L_eff locally convex (λ ≥ λ_c)", f"at {int(convex.sum())} of {lam.size} λ" + (
                f", from λ = {lam[convex][0]:.4g}" if convex.any() else "")))
    if np.isfinite(data.metric("gradient_overlap")).any():
        rows.append(("∇CE in the top-k eigenspace", at(data.metric("gradient_overlap"), "{:.3f}")))
        rows.append(("θ − θ_ref in the top-k eigenspace", at(data.metric("displacement_overlap"), "{:.3g}")))
    if "ggn_eigenvalues" in data.extras:
        g = np.atleast_2d(data.extras["ggn_eigenvalues"])
        rows.append(("g₁ (Gauss–Newton)", at(g[:, 0])))
        rows.append(("outliers of G" + (f" (K = {data.num_classes} classes)" if data.num_classes else ""),
                     at(derived.ggn_outliers, "{:.0f}")))
    return rows


def _unconverged_count(data: SweepData) -> str:
    if not data.has_flags:
        return "unknown (no converged flags: no certificates written)"
    total = int(np.isfinite(data.eigenvalues).sum()) if data.eig_converged is not None else 0
    if "bottom_converged" in data.extras:
        total += int(np.isfinite(np.atleast_2d(data.extras["bottom_eigenvalues"])).sum())
    return f"{len(data.unconverged())} of {total}"


def _branch_headline(derived: Derived, branches: Mapping) -> tuple[str, str]:
    name = "branches / new / crossings / avoided crossings / discontinuities"
    if not derived.has_vectors or derived.branching is None:
        return name, f"{len(branches)} / — / — / — / — (no eigenvectors)"
    b = derived.branching
    return name, (f"{len(branches)} / {len(b.new_branches)} / {len(b.crossings)} / {len(b.avoided)} / "
                  f"{len(b.discontinuities)}")


@dataclasses.dataclass
class ReportResult:
    directory: Path  # OUT/report-ID
    files: list[Path]  # every file written
    derived: dict  # the content of derived.json
    figures: dict  # name -> matplotlib Figure (only with keep_figures=True)


def render_report(out: str | Path, run_id: str | None = None, *, source: str = "auto",
                  outlier_factor: float = DEFAULT_OUTLIER_FACTOR, min_overlap: float = DEFAULT_MIN_OVERLAP,
                  formats: Sequence[str] = FORMATS, keep_figures: bool = False,
                  hysteresis_threshold: float = DEFAULT_HYSTERESIS_THRESHOLD) -> ReportResult:
    """Read run ``run_id`` of ``out`` (:func:`load_sweep`) and write its report into ``out/report-ID/``;
    for the ascending walk of ``--init follow`` with its ``ID-descending`` beside it, the comparison of the
    two walks too (:mod:`hessjax.report.walks`)."""
    check_settings(outlier_factor, min_overlap, formats)
    data = load_sweep(out, run_id, source=source)
    partner = descending_partner(data.run_id, find_run_ids(out)) if Path(out).is_dir() else None
    walks = None
    if partner is not None:
        walks = compare_walks(data, load_sweep(out, partner, source=source), hysteresis_threshold)
    return write_report(data, Path(out) / f"report-{data.run_id}", outlier_factor=outlier_factor,
                        min_overlap=min_overlap, formats=formats, keep_figures=keep_figures, walks=walks)


def check_settings(outlier_factor, min_overlap, formats) -> None:
    if not (math.isfinite(outlier_factor) and outlier_factor > 0):
        raise UsageError(f"--outlier-factor {outlier_factor}: must be a positive number")
    if not UNIQUE_OVERLAP - 1e-12 <= min_overlap <= 1:
        raise UsageError(f"--min-overlap {min_overlap}: must be in [1/√2 ≈ 0.7071, 1] (a unique match)")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--formats {','.join(formats)}: choose from {', '.join(FORMATS)}")


def write_report(data: SweepData, directory: str | Path, *, outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
                 min_overlap: float = DEFAULT_MIN_OVERLAP, formats: Sequence[str] = FORMATS,
                 keep_figures: bool = False, walks: WalkComparison | None = None) -> ReportResult:
    """Compute the derived quantities of ``data`` and write every report file into ``directory``
    (with ``walks``, the comparison of the two walks of ``--init follow``: ``walks.csv``, ``walks.*``).

    Returns the files written, the content of ``derived.json`` and (``keep_figures=True``) the figures.
    """
    check_settings(outlier_factor, min_overlap, formats)
    derived = compute_derived(data, outlier_factor=outlier_factor, min_overlap=min_overlap)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    cols = _columns(data, derived)
    lines = [",".join(cols)] + [",".join(csv_cell(c[i]) for c in cols.values()) for i in range(data.lambdas.size)]
    files.append(results.atomic_write(directory / "derived.csv",
                                      lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")))

    figs, series = make_figures(data, derived)
    if walks is not None:
        figs["walks"], series["walks"] = plot_walks(walks, data.run_id)
        wcols = walks.columns()
        wlines = [",".join(wcols)] + [",".join(csv_cell(c[i]) for c in wcols.values())
                                      for i in range(walks.lambdas.size)]
        files.append(results.atomic_write(directory / "walks.csv",
                                          lambda tmp: tmp.write_text("\n".join(wlines) + "\n", encoding="utf-8")))
    plots = {}
    for name, fig in figs.items():
        paths = save_figure(fig, directory, name, formats)
        files.extend(paths)
        plots[name] = {"files": [p.name for p in paths], "series": series[name],
                       "lines": sum(len(ax.lines) for ax in fig.axes)}

    branches = branch_curves(data, derived)
    headline = _headline(data, derived, branches)
    if walks is not None:
        headline += _walks_headline(walks)
    report = {
        "run_id": data.run_id,
        "source": data.source,
        "k": data.k,
        "n_params": data.n_params,
        "n_lambdas": int(data.lambdas.size),
        "total_lambdas": data.total_lambdas,
        "settings": {"outlier_factor": outlier_factor, "min_overlap": min_overlap},
        "mu_source": data.mu_source,
        "lambda_axis": _lambda_axis(data.lambdas),
        "unconverged": data.unconverged() if data.has_flags else None,
        "definitions": {
            "mu_j": "μ_j = θ_j − 2λ, the data Hessian's eigenvalue (eig_j = θ_j is ∇²L_eff's); "
                    "as written by the sweep, else θ_j − 2λ in float64",
            "n_outliers": "#{i: μ_i > outlier_factor · median over the top k of μ_j}; "
                          "null when that median ≤ 0",
            "outlier_threshold": "outlier_factor · median over the top k of μ_j (on μ)",
            "gap": "μ_1 / μ_k (null when μ_k ≤ 0)",
            "overlap_prev_j": "|⟨v_i(previous λ), v_j(λ)⟩| of the uniquely matched i (> min_overlap ≥ 1/√2), "
                              "or the smallest principal cosine of a continued subspace; null for a branch that "
                              "starts, restarts or is new",
            "branch_j": "branch id of eigenvalue j (hessjax.report.branches: unique matches, near-degenerate "
                        "clusters and rotating subspaces continued; new after a discontinuity)",
            "gradient_overlap": "‖V_kᵀ ∇CE‖² / ‖∇CE‖²: the share of the data gradient in the top-k eigenspace",
            "displacement_overlap": "‖V_kᵀ (θ − θ_ref)‖² / ‖θ − θ_ref‖²: the share of the displacement there",
            "lambda_c": "max(0, −μ_min/2) with μ_min the smallest data eigenvalue (--bottom-k): L_eff is "
                        "locally convex at these weights exactly when λ ≥ λ_c",
            "ggn_j": "the j-th eigenvalue of the Gauss–Newton part G = (1/N) Σ Jᵀ(diag p − ppᵀ)J of the data "
                     "Hessian (--ggn); ggn_outliers counted as n_outliers",
        },
        "columns": cols,
        "max_overlap": derived.max_overlap,
        "branches": {str(b): v for b, v in branches.items()},
        "n_branches": len(branches),
        **branch_summary(data, derived),
        "extras": sorted(data.extras),
        "plots": plots,
        "headline": dict(headline),
    }
    text = json.dumps(results.jsonable(report), indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    files.append(results.atomic_write(directory / "derived.json", lambda tmp: tmp.write_text(text, encoding="utf-8")))

    md = _summary_markdown(data, headline, plots, outlier_factor, min_overlap, formats)
    files.append(results.atomic_write(directory / "summary.md", lambda tmp: tmp.write_text(md, encoding="utf-8")))
    if not keep_figures:
        figs = {}
    return ReportResult(directory, files, report, figs)


def _walks_headline(walks: WalkComparison) -> list[tuple[str, str]]:
    lam = walks.lambdas[walks.differ]
    where = (f", λ ∈ [{lam.min():.4g}, {lam.max():.4g}]" if lam.size else "")
    kind = "‖θ_asc − θ_desc‖" if walks.exact else "its lower bound |Δ‖θ − θ_ref‖|"
    return [("walks up / down (--init follow)", f"{walks.lambdas.size} common λ; they differ (relative branch "
             f"distance > {walks.threshold:g}, {kind}) at {lam.size}{where}")]


def _lambda_axis(lam: np.ndarray) -> str:
    if not log_lambda_axis(lam):
        return "linear"
    return "log, λ = 0 apart" if np.any(lam == 0) else "log"


def _unconverged_section(data: SweepData) -> list[str]:
    out = ["## Unconverged eigenpairs", ""]
    if not data.has_flags:
        return out + ["No converged flags in this sweep's output (no certificates: e.g. the torch pipeline); "
                      "nothing can be said about which pairs met the solver's tolerance.", ""]
    rows = data.unconverged()
    if not rows:
        return out + ["None: every pair found met the solver's tolerance.", ""]
    out += [f"{len(rows)} pairs did not meet the solver's tolerance; they are hollow red circles in the "
            "eigenvalue plots and are not results:", "",
            "| λ | top/bottom | index | θ | μ = θ − 2λ | residual | error bound |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['lambda']:.6g} | {r['kind']} | {r['index']} | {short_number(r['eigenvalue'])} | {short_number(r['mu'])} | "
            f"{short_number(r['residual'])} | {short_number(r['error_bound'])} |" for r in rows]
    return out + [""]


def _summary_markdown(data, headline, plots, outlier_factor, min_overlap, formats) -> str:
    fmt = "png" if "png" in formats else formats[0]
    out = [f"# Hessian sweep report: `{data.run_id}`", "", "| quantity | value |", "|---|---|"]
    out += [f"| {name} | {value} |" for name, value in headline]
    source = ("as written by the sweep (`data_eigenvalues`)" if data.mu_source == "written"
              else "computed here as θ − 2λ in float64 (no `data_eigenvalues` written)")
    axis = _lambda_axis(data.lambdas)
    out += [
        "",
        "Definitions: λ is the penalty of L_eff = mean CE + λ‖θ − θ_ref‖², which adds exactly 2λI to the "
        "Hessian: θ_i (eigenvalues of ∇²L_eff) = μ_i + 2λ, with μ_i the eigenvalues of the data Hessian "
        f"∇²(mean CE), {source}. **Everything the shift would dominate is on μ**: the μ plot (log y), "
        f"*outliers above the bulk* — μ_i > {outlier_factor:g} × the median of μ_1 … μ_{data.k} (saturates "
        "near k/2: then k is too small to reach the bulk) —, the *gap* μ₁/μ_k, the branches and the SLQ "
        "density (broadened on the nodes less 2λ). θ is plotted with the 2λ line. "
        "*Branches* (on μ): an eigenvector continues its "
        f"branch only through a unique match, |⟨v_i, v_j⟩| > {min_overlap:.4g} (≥ 1/√2); a near-degenerate "
        "cluster, or a plane in which the vectors rotate, continues as a subspace when all its principal "
        "cosines exceed that; otherwise the branch ends and the newcomer starts a new one. *Crossing*: two "
        "branches swap their order of value while each keeps its vector. *Avoided crossing*: their gap has "
        "a local minimum without a swap while the vectors turn into each other by more than 45°. "
        "*Discontinuity*: ‖θ − θ_ref‖ jumped by more than ×2 beyond what a smooth penalty path allows "
        "(non-increasing, at most like 1/λ), or no eigenvector matches: nothing continues across it and "
        "the branches restart (not counted as new). *Top-k shares*: ‖V_kᵀu‖²/‖u‖² for the data gradient ∇CE and "
        "the displacement θ − θ_ref. *λ_c* = max(0, −μ_min/2): L_eff is locally convex where λ ≥ λ_c. "
        "*Gauss–Newton split* (`--ggn`): H = G + (H − G) with G = (1/N) Σ Jᵀ(diag p − ppᵀ)J positive "
        "semi-definite and label-free; its outliers are expected near the number of classes K. "
        f"λ axis: {axis}"
        + (" (λ > 0 span two decades or more; λ = 0 is drawn in the narrow panel at the left)"
           if axis.startswith("log") else "") + ". Per-λ values are in `derived.csv`/`derived.json`.",
        "",
    ]
    out += _unconverged_section(data)
    titles = {
        "data_eigenvalues": "Data-Hessian eigenvalues μ = θ − 2λ", "eigenvalues": "Top-k eigenvalues θ of ∇²L_eff",
        "outliers": "μ₁, outliers and gap (on μ)", "performance": "Loss and accuracy",
        "distance": "Distance to the anchor", "overlaps": "Eigenvector overlaps",
        "branches": "Eigenvalue branches (on μ)", "trace": "Hessian trace", "density": "Spectral density of μ",
        "bottom": "Bottom eigenvalues (θ and μ) and where L_eff is convex",
        "subspace": "Gradient and displacement in the top-k eigenspace",
        "ggn": "The Gauss–Newton split H = G + (H − G)",
        "walks": "The two walks of --init follow (hysteresis)",
    }
    for name in plots:
        out += [f"## {titles.get(name, name)}", "", f"![{name}]({name}.{fmt})", ""]
    return "\n".join(out)
