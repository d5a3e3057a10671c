"""The report's derived quantities: outliers above the bulk, the gap, neighbour overlaps and branches."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .branches import DEFAULT_MIN_OVERLAP, BranchResult, gram_matrix, match_branches

if TYPE_CHECKING:
    from .load import SweepData

DEFAULT_OUTLIER_FACTOR = 3.0


def outlier_counts(eigenvalues: np.ndarray, lambdas: np.ndarray, factor: float = DEFAULT_OUTLIER_FACTOR):
    """``(counts [n], thresholds [n])``: ``#{i : λ_i − 2λ > factor · median_j(λ_j − 2λ)}`` per row.

    ``eigenvalues`` ``[n, k]`` (NaN ignored), ``lambdas`` ``[n]``. The threshold is in units of
    ``∇²L_eff`` (i.e. ``2λ + factor · median``); both are NaN where the median is ≤ 0 or undefined.
    """
    mu = np.asarray(eigenvalues, np.float64) - 2 * np.asarray(lambdas, np.float64)[:, None]
    counts = np.full(mu.shape[0], np.nan)
    thresholds = np.full(mu.shape[0], np.nan)
    for i, row in enumerate(mu):
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        med = float(np.median(row))
        if med > 0:
            counts[i] = float(np.sum(row > factor * med))
            thresholds[i] = factor * med + 2 * float(lambdas[i])
    return counts, thresholds


def gap_ratio(eigenvalues: np.ndarray) -> np.ndarray:
    """``[n]`` ``λ_1 / λ_k`` over the finite eigenvalues of each row; NaN when ``λ_k ≤ 0`` or undefined."""
    ev = np.asarray(eigenvalues, np.float64)
    out = np.full(ev.shape[0], np.nan)
    for i, row in enumerate(ev):
        row = row[np.isfinite(row)]
        if row.size and row[-1] > 0:
            out[i] = row[0] / row[-1]
    return out


@dataclasses.dataclass
class Derived:
    """What the report computes from a :class:`SweepData` (rows as ``data.lambdas``)."""

    n_outliers: np.ndarray  # [n] float (NaN: undefined)
    outlier_threshold: np.ndarray  # [n] in units of ∇²L_eff
    gap: np.ndarray  # [n] λ₁/λ_k
    branch: np.ndarray  # [n, k] int branch id of each eigenvalue, 0, 1, … in order of appearance; -1: none
    matched_overlap: np.ndarray  # [n, k] overlap with which eigenvalue j continues its branch (NaN: new)
    max_overlap: np.ndarray  # [n, k] max_i |⟨v_i(previous λ), v_j(λ)⟩| (NaN: no previous λ with vectors)
    pairs: list  # [(a, b, O [k, k])] neighbouring rows a < b that both have eigenvectors
    has_vectors: bool  # at least one such pair
    branching: BranchResult | None = None  # crossings, avoided crossings, discontinuities (rows: branch_rows)
    branch_rows: list | None = None  # the rows of data that have eigenvectors, as numbered in branching


def compute_derived(data: SweepData, *, outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
                    min_overlap: float = DEFAULT_MIN_OVERLAP) -> Derived:
    """Outliers, gap, neighbour overlaps and branches; eigenvectors read one λ at a time.

    Neighbours are consecutive finished λ that have eigenvectors (a diverged λ, or one whose vector
    file is missing, is stepped over and its eigenvalues get branch ``-1``). Branches follow the rules of
    :mod:`~hessjax.report.branches` on ``μ = θ − 2λ``, with ‖θ − θ_ref‖ (and a ``best_epoch`` metric
    where there is one) marking discontinuities. Without any eigenvectors
    the branches are the eigenvalue indices. A NaN eigenvalue (fewer than k found) has branch ``-1``.
    """
    n, k = data.lambdas.size, data.k
    counts, thresholds = outlier_counts(data.eigenvalues, data.lambdas, outlier_factor)
    rows, pairs = [], []
    previous = None
    for i in range(n):
        current = data.eigenvectors(i)
        if current is None or current.shape[0] < k:
            continue
        if previous is not None and previous[1].shape == current.shape:
            pairs.append((previous[0], i, gram_matrix(previous[1], current)[:k, :k]))
        elif previous is not None:  # a different P: cannot be compared
            pairs.append((previous[0], i, None))
        rows.append(i)
        previous = (i, current)
    pairs = [(a, b, None if g is None else np.abs(g), g) for a, b, g in pairs]
    branch = np.tile(np.arange(k), (n, 1))
    matched = np.full((n, k), np.nan)
    max_overlap = np.full((n, k), np.nan)
    branching = None
    if rows:
        branch[:] = -1
        distance, best_epoch = data.metrics.get("distance_to_anchor"), data.metrics.get("best_epoch")
        branching = match_branches([g for _, _, _, g in pairs], k, min_overlap,  # on μ = θ − 2λ
                                   eigenvalues=data.eigenvalues[rows] - 2 * data.lambdas[rows, None],
                                   distances=None if distance is None else np.asarray(distance)[rows],
                                   lambdas=data.lambdas[rows],
                                   best_epochs=None if best_epoch is None else np.asarray(best_epoch)[rows])
        branch[rows], matched[rows] = branching.branch, branching.matched
        for _, b, o, _ in pairs:
            if o is not None:
                max_overlap[b] = o.max(axis=0)
    branch[~np.isfinite(data.eigenvalues)] = -1
    relabel: dict[int, int] = {}
    for bid in branch.ravel():  # ids 0, 1, … in order of appearance
        if bid >= 0:
            relabel.setdefault(int(bid), len(relabel))
    branch = np.vectorize(lambda b: relabel.get(int(b), -1), otypes=[np.int64])(branch) if branch.size else branch
    pairs = [(a, b, o) for a, b, o, _ in pairs if o is not None]
    return Derived(counts, thresholds, gap_ratio(data.eigenvalues), branch, matched, max_overlap, pairs, bool(pairs),
                   branching, rows)
