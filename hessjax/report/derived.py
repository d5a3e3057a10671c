"""The report's derived quantities: outliers above the bulk and the gap (both on μ = θ − 2λ), neighbour overlaps
and branches."""

from __future__ import annotations

import dataclasses
import math
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
    ggn_outliers: np.ndarray | None = None  # [n] outliers above the bulk of the Gauss–Newton eigenvalues (--ggn)


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
    ggn = data.extras.get("ggn_eigenvalues")
    ggn_outliers = None if ggn is None else outlier_counts(np.atleast_2d(ggn), outlier_factor)[0]
    return Derived(counts, thresholds, gap_ratio(data.mu), branch, matched, max_overlap, pairs, bool(pairs),
                   branching, rows, ggn_outliers)


# --------------------------------------------------------------------------------------------- the branches, for the figures and the summary


def branch_curves(data: SweepData, derived: Derived) -> dict[int, dict[str, list]]:
    """``{id: {"lambda": [...], "eigenvalue": [...], "index": [...]}}`` (index 1-based)."""
    out: dict[int, dict[str, list]] = {}
    for t in range(data.lambdas.size):
        for j in range(data.k):
            bid = int(derived.branch[t, j])
            if bid < 0 or not np.isfinite(data.eigenvalues[t, j]):
                continue
            b = out.setdefault(bid, {"lambda": [], "eigenvalue": [], "index": []})
            b["lambda"].append(float(data.lambdas[t]))
            b["eigenvalue"].append(float(data.eigenvalues[t, j]))
            b["index"].append(j + 1)
    return out


def branch_events(data: SweepData, derived: Derived, values: np.ndarray | None = None) -> dict[str, list]:
    """Where to mark the branch plot, in rows of ``data``: ``{"crossings": [(λ, value)], "avoided":
    [(λ, value)], "discontinuities": [λ between the two]}`` (``values`` default ``data.eigenvalues``)."""
    out = {"crossings": [], "avoided": [], "discontinuities": []}
    res, rows = derived.branching, derived.branch_rows
    if res is None or rows is None:
        return out
    lam = np.asarray(data.lambdas, np.float64)
    ev = np.asarray(data.eigenvalues if values is None else values, np.float64)

    def value(t, bid):
        j = np.flatnonzero(res.branch[t] == bid)
        return float(ev[rows[t], j[0]]) if j.size else math.nan

    for c in res.crossings:
        t0, t1 = c.start, c.interval + 1
        a0, b0, a1, b1 = value(t0, c.a), value(t0, c.b), value(t1, c.a), value(t1, c.b)
        d0, d1 = a0 - b0, a1 - b1
        f = d0 / (d0 - d1) if np.isfinite(d0 - d1) and d0 != d1 else 0.5
        f = min(max(f, 0.0), 1.0)
        out["crossings"].append((lam[rows[t0]] + f * (lam[rows[t1]] - lam[rows[t0]]), a0 + f * (a1 - a0)))
    for e in res.avoided:
        out["avoided"].append((lam[rows[e.index]], 0.5 * (value(e.index, e.a) + value(e.index, e.b))))
    for t in res.discontinuities:
        l0, l1 = lam[rows[t]], lam[rows[t + 1]]
        out["discontinuities"].append(math.sqrt(l0 * l1) if l0 > 0 and l1 > 0 else 0.5 * (l0 + l1))
    return out


def reordered_pairs(derived: Derived) -> int:
    """Neighbouring λ pairs across which some pair of branches crosses (see :class:`hessjax.report.branches.Crossing`)."""
    res = derived.branching
    return 0 if res is None else len({c.interval for c in res.crossings})


def branch_summary(data: SweepData, derived: Derived) -> dict:
    """The branch events for ``derived.json``, with λ values (rows of ``data``)."""
    res = derived.branching
    out = {"reordered_pairs": reordered_pairs(derived), "n_new_branches": 0, "n_crossings": 0,
           "n_avoided_crossings": 0, "n_discontinuities": 0, "crossings": [], "avoided_crossings": [],
           "discontinuities": [], "new_branches": [], "intervals": []}
    rows = derived.branch_rows
    if res is None or rows is None:
        return out
    lam = [float(data.lambdas[r]) for r in rows]
    out.update(
        n_new_branches=len(res.new_branches), n_crossings=len(res.crossings), n_avoided_crossings=len(res.avoided),
        n_discontinuities=len(res.discontinuities),
        crossings=[{"lambda": [lam[c.start], lam[c.interval + 1]], "above_before": c.a, "above_after": c.b}
                   for c in res.crossings],
        avoided_crossings=[{"lambda": lam[e.index], "upper": e.a, "lower": e.b, "gap": e.gap,
                            "rotation_deg": e.rotation, "touching": e.touching} for e in res.avoided],
        discontinuities=[{"lambda": [lam[t], lam[t + 1]], "reason": res.reasons[t]} for t in res.discontinuities],
        new_branches=[{"lambda": lam[t], "index": j + 1, "branch": b} for t, j, b in res.new_branches],
        intervals=[{"lambda": [lam[t], lam[t + 1]], "status": s} for t, s in enumerate(res.status)],
    )
    return out
