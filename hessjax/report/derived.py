"""The report's derived quantities: outliers above the bulk and the gap (both on μ = θ − 2λ), neighbour overlaps
and branches."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .branches import DEFAULT_MIN_OVERLAP, BranchResult, gram_matrix, match_branches

if TYPE_CHECKING:
    from .load import SweepData

DEFAULT_OUTLIER_FACTOR = 3.0


def outlier_counts(mu: np.ndarray, factor: float = DEFAULT_OUTLIER_FACTOR):
    """``(counts [n], thresholds [n])``: ``#{i : μ_i > factor · median_j(μ_j)}`` per row of ``mu``.

    ``mu`` ``[n, k]`` are data-Hessian eigenvalues (``θ − 2λ``; NaN ignored); the threshold
    ``factor · median`` is in the same units. Both are NaN where the median is ≤ 0 or undefined.
    """
    mu = np.asarray(mu, np.float64)
    counts = np.full(mu.shape[0], np.nan)
    thresholds = np.full(mu.shape[0], np.nan)
    for i, row in enumerate(mu):
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        med = float(np.median(row))
        if med > 0:
            counts[i] = float(np.sum(row > factor * med))
            thresholds[i] = factor * med
    return counts, thresholds


def gap_ratio(mu: np.ndarray) -> np.ndarray:
    """``[n]`` ``μ_1 / μ_k`` over the finite values of each row of ``mu`` (largest first); NaN when
    ``μ_k ≤ 0`` or undefined. On μ, not θ: ``(μ_1 + 2λ)/(μ_k + 2λ)`` tends to 1 as 2λ grows."""
    ev = np.asarray(mu, np.float64)
    out = np.full(ev.shape[0], np.nan)
    for i, row in enumerate(ev):
        row = row[np.isfinite(row)]
        if row.size and row[-1] > 0:
            out[i] = row[0] / row[-1]
    return out


@dataclasses.dataclass
class Derived:
    """What the report computes from a :class:`SweepData` (rows as ``data.lambdas``)."""

    n_outliers: np.ndarray  # [n] float (NaN: undefined), counted on μ
    outlier_threshold: np.ndarray  # [n] on μ: factor · median(μ_1 … μ_k)
    gap: np.ndarray  # [n] μ₁/μ_k
    branch: np.ndarray  # [n, k] int branch id of each eigenvalue, 0, 1, … in order of appearance; -1: none
    matched_overlap: np.ndarray  # [n, k] overlap with which eigenvalue j continues its branch (NaN: new)
    max_overlap: np.ndarray  # [n, k] max_i |⟨v_i(previous λ), v_j(λ)⟩| (NaN: no previous λ with vectors)
    pairs: list  # [(a, b, O [k, k])] neighbouring rows a < b that both have eigenvectors
    has_vectors: bool  # at least one such pair
    branching: BranchResult | None = None  # crossings, avoided crossings, discontinuities (rows: branch_rows)
    branch_rows: list | None = None  # the rows of data that have eigenvectors, as numbered in branching


def compute_derived(data: SweepData, *, outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
                    min_overlap: float = DEFAULT_MIN_OVERLAP) -> Derived:
    """Outliers and gap (on μ = θ − 2λ, :attr:`SweepData.mu`), neighbour overlaps and branches;
    eigenvectors read one λ at a time.

    Neighbours are consecutive finished λ that have eigenvectors (a diverged λ, or one whose vector
    file is missing, is stepped over and its eigenvalues get branch ``-1``). Branches follow the rules of
    :mod:`~hessjax.report.branches` on ``μ = θ − 2λ``, with ‖θ − θ_ref‖ (and a ``best_epoch`` metric
    where there is one) marking discontinuities. Without any eigenvectors
    the branches are the eigenvalue indices. A NaN eigenvalue (fewer than k found) has branch ``-1``.
    """
    n, k = data.lambdas.size, data.k
    counts, thresholds = outlier_counts(data.mu, outlier_factor)
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
                                   eigenvalues=data.mu[rows],
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
    return Derived(counts, thresholds, gap_ratio(data.mu), branch, matched, max_overlap, pairs, bool(pairs),
                   branching, rows)
