"""The two walks of ``--init follow``: the ascending branch (run ``ID``, from the initialisation) and the
descending one (run ``ID-descending``, from the anchor), compared λ by λ.

Each λ of a walk is trained from its predecessor's converged weights, so a walk stays in a basin as long
as it exists. Where the two walks end at different weights for the same λ the landscape has several
basins there and the path taken decides which one training finds: hysteresis. At λ both walks finished,

* the branch distance ``d = ‖θ_asc − θ_desc‖`` (from the stores' weights; without them its lower bound
  ``|‖θ_asc − θ_ref‖ − ‖θ_desc − θ_ref‖|``, which the triangle inequality gives),
* relative to how far either walk moved from the anchor: ``r = d / max(‖θ_asc − θ_ref‖, ‖θ_desc − θ_ref‖)``,
* and the two walks *differ* where ``r > threshold`` (default 0.5: the two end points are further apart
  than half the larger distance to the anchor — not the same minimum reached along two paths).

The train losses and μ₁ of both walks are drawn beside ``r``, the λ where they differ shaded.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .load import SweepData
from .plotting import dot_style, lambda_rows, log_if_positive, new_figure

__all__ = ["DEFAULT_HYSTERESIS_THRESHOLD", "DESCENDING", "WalkComparison", "compare_walks", "descending_partner",
           "plot_walks"]

DESCENDING = "-descending"
DEFAULT_HYSTERESIS_THRESHOLD = 0.5


def descending_partner(run_id: str, ids) -> str | None:
    """``ID-descending`` when it is among ``ids`` (the ascending walk ``ID``'s partner), else None."""
    partner = run_id + DESCENDING
    return partner if partner in set(ids) and not run_id.endswith(DESCENDING) else None


@dataclasses.dataclass
class WalkComparison:
    """The two walks at the λ both finished (ascending)."""

    lambdas: np.ndarray  # [n]
    loss: tuple  # ([n] ascending, [n] descending) train loss
    distance: tuple  # ([n], [n]) ‖θ − θ_ref‖
    mu1: tuple  # ([n], [n]) top data eigenvalue
    branch_distance: np.ndarray  # [n] ‖θ_asc − θ_desc‖ (or its lower bound, see exact)
    relative: np.ndarray  # [n] branch_distance / max of the two distances to the anchor
    differ: np.ndarray  # [n] bool: relative > threshold
    exact: bool  # branch_distance from the weights (True) or the lower bound from the distances (False)
    threshold: float

    def columns(self) -> dict[str, np.ndarray]:
        return {"lambda": self.lambdas, "train_loss_ascending": self.loss[0], "train_loss_descending": self.loss[1],
                "distance_ascending": self.distance[0], "distance_descending": self.distance[1],
                "mu1_ascending": self.mu1[0], "mu1_descending": self.mu1[1],
                "branch_distance": self.branch_distance, "relative_branch_distance": self.relative,
                "differ": self.differ.astype(np.int64)}


def compare_walks(up: SweepData, down: SweepData, threshold: float = DEFAULT_HYSTERESIS_THRESHOLD) -> WalkComparison:
    """The comparison at the λ both walks finished (see the module docstring)."""
    if not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"the hysteresis threshold must be a positive number, got {threshold}")
    common = np.intersect1d(up.lambdas, down.lambdas)
    iu = np.searchsorted(up.lambdas, common)
    idown = np.searchsorted(down.lambdas, common)

    def pick(name):
        return up.metric(name)[iu], down.metric(name)[idown]

    d_up, d_down = pick("distance_to_anchor")
    exact = up.weight_reader is not None and down.weight_reader is not None
    if exact:
        dist = np.array([float(np.linalg.norm(np.asarray(up.weight_reader(int(a)), np.float64)
                                              - np.asarray(down.weight_reader(int(b)), np.float64)))
                         for a, b in zip(iu, idown)])
    else:
        dist = np.abs(d_up - d_down)
    scale = np.fmax(d_up, d_down)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(scale > 0, dist / scale, np.where(dist > 0, np.inf, 0.0))
    mu = (up.mu[iu, 0] if up.k else np.full(common.size, np.nan),
          down.mu[idown, 0] if down.k else np.full(common.size, np.nan))
    return WalkComparison(common, pick("train_loss"), (d_up, d_down), mu, dist, relative,
                          np.isfinite(relative) & (relative > threshold) | np.isinf(relative), exact, threshold)


def plot_walks(cmp: WalkComparison, run_id: str):
    """``(figure, series)``: train loss, ‖θ − θ_ref‖, μ₁ of both walks and the relative branch distance."""
    lam = cmp.lambdas
    fig = new_figure((7, 9))
    rows = lambda_rows(fig, lam, 4)
    for row, (a, b), label in zip(rows, (cmp.loss, cmp.distance, cmp.mu1),
                                  ("train loss (mean CE)", "‖θ − θ_ref‖", "μ₁")):
        row.plot(lam, a, "C0", label="ascending (from the initialisation)", **dot_style(lam))
        row.plot(lam, b, "C3", ls="--", label="descending (from the anchor)", **dot_style(lam))
        log_if_positive(row, a, b)
        row.set(ylabel=label)
    rows[3].plot(lam, cmp.relative, "k", **dot_style(lam))
    rows[3].axhline(cmp.threshold, color="0.5", lw=0.8, ls=":")
    rows[3].set(ylabel="‖θ_asc − θ_desc‖ / max ‖θ − θ_ref‖" + ("" if cmp.exact else " (lower bound)"))
    for row in rows:
        for t in np.flatnonzero(cmp.differ):
            for ax in row.axes:
                if (lam[t] > 0) == (ax is row.main) or row.zero is None:
                    ax.axvline(lam[t], color="C1", alpha=0.25, lw=6)
    rows[0].legend(fontsize=8)
    rows[0].set(title=f"{run_id}: the walks up and down the λ grid (shaded: they differ — hysteresis)")
    return fig, 7
