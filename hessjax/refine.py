r"""Adaptive refinement of a λ grid: add λ where the trained network changes most.

A coarse grid brackets the transition from training that ends far from the anchor (λ = 0: ~14.8
away on the shipped anchor) to training held at it (λ ≳ 0.02: ~0.03); a linear grid spends most of its
points where nothing changes. :func:`next_lambdas` scores every interval ``(λ_i, λ_{i+1})`` between
finished neighbours by how much an *indicator* changes across it and proposes the midpoints of the
highest-scoring ones; the sweep runs them as ordinary λ (files, store, resume) and asks again, until
its budget of added λ is spent or no interval is both above the score threshold and wider than the
resolution.

Indicators (:data:`INDICATORS`), each a change between the two ends of an interval:

* ``distance`` — ``|log ‖θ − θ_ref‖(λ_i) − log ‖θ − θ_ref‖(λ_{i+1})|``: where the trained weights
  leave the anchor's basin (the distance spans orders of magnitude, so its logarithm);
* ``mu1`` — ``|log μ₁(λ_i) − log μ₁(λ_{i+1})|``: where the data Hessian's top curvature moves;
* ``overlap`` — ``1 − ‖V_iᵀ V_{i+1}‖_F² / k``, one minus the mean squared cosine of the principal
  angles between the two top-k eigenvector subspaces: 0 for the same subspace (whatever rotation
  inside it), 1 for orthogonal ones.

Midpoints are geometric (``√(λ_i λ_{i+1})``) when ``λ_i > 0``, so refinement resolves decades evenly,
and a decade below ``λ_{i+1}`` for the interval starting at ``λ = 0``. An interval is refined only while
``λ_{i+1} − λ_i > resolution · λ_{i+1}`` (relative width). numpy only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["INDICATORS", "indicator_changes", "midpoint", "next_lambdas", "subspace_distance"]

INDICATORS = ("distance", "mu1", "overlap")


def subspace_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 − ‖AᵀB‖_F²/k`` for two ``[k, P]`` sets of orthonormal rows: 0 for one subspace, 1 for orthogonal ones."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [k, P] arrays of the same shape, got {a.shape} and {b.shape}")
    return float(1.0 - np.sum(np.square(a @ b.T)) / a.shape[0])


def _log_change(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.asarray(values, np.float64))
    change = np.abs(np.diff(logs))
    return np.where(np.isfinite(change), change, np.inf)  # a sign change or a zero: maximal


def indicator_changes(indicator: str, values) -> np.ndarray:
    """``[n − 1]`` changes of ``indicator`` between neighbours (λ ascending).

    ``values``: for ``distance`` and ``mu1`` the ``[n]`` positive values per λ; for ``overlap`` the
    ``[n]`` eigenvector sets ``[k, P]`` (or ``None`` for a λ without them, e.g. diverged: its intervals
    score ``inf``). NaN (a diverged λ) scores its intervals ``inf``, so they are refined first.
    """
    if indicator in ("distance", "mu1"):
        v = np.asarray(values, np.float64)
        return np.where(np.isnan(v[:-1]) | np.isnan(v[1:]), np.inf, _log_change(v))
    if indicator == "overlap":
        return np.array([np.inf if a is None or b is None else subspace_distance(a, b)
                         for a, b in zip(values[:-1], values[1:])])
    raise ValueError(f"indicator {indicator!r}: expected one of {', '.join(INDICATORS)}")


def midpoint(lo: float, hi: float) -> float:
    """The geometric midpoint of ``(lo, hi)`` for ``lo > 0``; ``hi / 10`` for ``lo = 0``."""
    return float(np.sqrt(lo * hi)) if lo > 0 else float(hi) / 10.0


def next_lambdas(lams: Sequence[float], changes, *, count: int, resolution: float, threshold: float = 0.0,
                 exclude: Mapping[float, object] | Sequence[float] = ()) -> list[float]:
    """Up to ``count`` new λ: midpoints of the intervals with the largest ``changes``, ascending.

    ``lams`` ascending ``[n]`` and ``changes`` ``[n − 1]`` (:func:`indicator_changes`). An interval is a
    candidate when its change exceeds ``threshold`` and its relative width ``(hi − lo)/hi`` exceeds
    ``resolution``; midpoints already in ``exclude`` (e.g. λ that diverged or are queued) are skipped.
    Ties are broken towards smaller λ. ``[]`` when nothing is left to refine.
    """
    lams = np.asarray(lams, np.float64)
    changes = np.asarray(changes, np.float64)
    if lams.ndim != 1 or changes.shape != (max(lams.size - 1, 0),):
        raise ValueError(f"expected lams [n] and changes [n - 1], got {lams.shape} and {changes.shape}")
    if np.any(np.diff(lams) <= 0):
        raise ValueError("lams must be strictly ascending")
    if not 0 < resolution < 1:
        raise ValueError(f"resolution={resolution}: expected a relative width in (0, 1)")
    skip = {float(v) for v in exclude}
    lo, hi = lams[:-1], lams[1:]
    wide = (hi - lo) > resolution * hi
    order = sorted(np.flatnonzero(wide & (changes > threshold)), key=lambda i: (-changes[i], i))
    picked = []
    for i in order:
        mid = midpoint(lo[i], hi[i])
        if mid in skip or not lo[i] < mid < hi[i]:
            continue
        picked.append(mid)
        if len(picked) == count:
            break
    return sorted(picked)
