"""Eigenvector overlaps between neighbouring λ and the branches matched through them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .derived import Derived
    from .load import SweepData

DEFAULT_MIN_OVERLAP = 0.5


def overlap_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[k_a, k_b]`` ``|⟨a_i, b_j⟩| / (‖a_i‖ ‖b_j‖)`` of the rows of ``a`` and ``b`` (float64 products)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        o = np.abs(a @ b.T) / np.outer(na, nb)
    return np.nan_to_num(o, nan=0.0)


def match_branches(overlaps: Sequence[np.ndarray | None], k: int, min_overlap: float = DEFAULT_MIN_OVERLAP):
    """Follow eigenpairs across ``n = len(overlaps) + 1`` neighbouring λ.

    ``overlaps[t]`` is ``[k, k]`` ``O_ij = |⟨v_i(λ_t), v_j(λ_{t+1})⟩|`` or ``None`` (no eigenvectors).
    Returns ``(branch [n, k] int, matched [n, k] float)``: the branch id of eigenvalue ``j`` at ``λ_t``,
    and the overlap with which it continues its branch (NaN at ``t = 0``, for a new branch, and where
    ``overlaps[t-1]`` is ``None``). The optimal assignment maximises ``Σ O_{i σ(i)}``
    (``linear_sum_assignment`` on ``−O``); matches below ``min_overlap`` start new branches.
    """
    from scipy.optimize import linear_sum_assignment

    n = len(overlaps) + 1
    branch = np.zeros((n, k), np.int64)
    matched = np.full((n, k), np.nan)
    branch[0] = np.arange(k)
    next_id = k
    for t, o in enumerate(overlaps):
        fresh = np.ones(k, bool)
        if o is not None:
            o = np.asarray(o, np.float64)
            rows, cols = linear_sum_assignment(-o)
            for i, j in zip(rows, cols):
                if o[i, j] >= min_overlap:
                    branch[t + 1, j] = branch[t, i]
                    matched[t + 1, j] = o[i, j]
                    fresh[j] = False
        for j in np.flatnonzero(fresh):
            branch[t + 1, j] = next_id
            next_id += 1
    return branch, matched


def _branches(data: SweepData, derived: Derived) -> dict[int, dict[str, list]]:
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


def _reordered_pairs(derived: Derived) -> int:
    """Neighbouring λ pairs across which some continuing branch changes its eigenvalue index (a crossing)."""
    count = 0
    for a, b, _ in derived.pairs:
        before = {int(bid): j for j, bid in enumerate(derived.branch[a])}
        if any(np.isfinite(derived.matched_overlap[b, j]) and before.get(int(bid), j) != j
               for j, bid in enumerate(derived.branch[b])):
            count += 1
    return count
