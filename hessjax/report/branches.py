r"""Eigenvector overlaps between neighbouring λ and the branches followed through them (numpy/scipy only).

:func:`match_branches` follows the top-k eigenpairs of a family of symmetric operators across a grid
(the report passes the data curvature ``μ = θ − 2λ`` of each λ and the signed Gram matrices
``G_t = [⟨v_i(λ_t), v_j(λ_{t+1})⟩]`` of unit eigenvectors). The rules, in the order they are applied to
each interval ``t → t+1`` (``τ`` = ``min_overlap``, at least ``1/√2``):

* **Discontinuity.** The interval is a discontinuity when the training evidently landed in another
  basin: ``‖θ − θ_ref‖`` left the band that a smooth penalty path allows by more than ``jump_factor``
  (default 2) — for a quadratic loss the exact minimiser has ``d(λ)`` non-increasing and ``λ·d(λ)``
  non-decreasing (falling at most like ``1/λ``), so the step ``r = log(d_{t+1}/d_t)`` is a jump when it lies more than ``log(jump_factor)`` above 0 or below
  ``−log(λ_{t+1}/λ_t)`` (no lower bound when ``λ_t ≤ 0``; no band at all without λ) — or the best
  epoch changed by more than ``max(epoch_jump, epoch_rel · max(e_t, e_{t+1}))`` (defaults 10 and 0.5),
  or not one eigenvector matches across it (below). (A jump that stays inside the band, e.g. ×5 on a
  ×10 λ grid where ``d`` falls like ``1/λ``, is only seen when the eigenvectors stop matching.) Nothing
  is continued across a discontinuity; the branches after it *restart* (new ids, origin
  :data:`RESTART`) and are not counted as new.
* **Clusters.** At each λ the finite values, sorted, are grouped by single linkage: neighbours whose
  difference is at most ``rel_tol · max|μ|`` (default ``1e-3``) share a cluster (near-degenerate: the
  individual vectors of a cluster are arbitrary inside its eigenspace).
* **Subspaces.** A cluster of size ``c ≥ 2`` at ``t`` continues a cluster of the same size at ``t+1``
  when all ``c`` singular values of ``G_t[A, B]`` (the cosines of the principal angles) exceed ``τ``;
  its branches are then passed on in order of value, and no crossing can arise inside it.
* **Unique matches.** Each remaining eigenvector continues its branch to the eigenvector with
  ``|G_ij| > τ`` (mutually the best). For unit vectors of an orthonormal set at most one partner can
  exceed ``1/√2`` (``Σ_j G_ij² ≤ 1``), so the match is unique.
* **Rotating subspaces.** The eigenvectors still unmatched are grouped into components (linked by
  ``|G_ij| ≥ link`` (default 1/2) or by sharing a cluster); a component with as many members at ``t``
  as at ``t+1`` whose principal cosines all exceed ``τ`` is a continued subspace inside which the
  vectors rotated: its branches are passed on in order of value.
* **Ends and new branches.** Everything else ends at ``t``; an eigenvector at ``t+1`` that continues
  nothing starts a *new* branch (origin :data:`NEW`, e.g. a direction entering the top k).

Crossings and avoided crossings are then read off the branches:

* **Crossing.** Two branches alive together cross where their order of value swaps: the order of a
  pair is strict at a λ where they are in different clusters (a tie inside one); a crossing is recorded
  when the strict order differs from the previous strict order of the same two branches. Since a
  branch only continues through an eigenvector it keeps (or a subspace passed on in order), the swap is
  one of the vectors, not of labels. ``interval`` is the interval at whose end the new order is seen,
  ``start`` the λ index of the last opposite order (``interval`` when no tie lay in between).
* **Avoided crossing.** Two branches ``a`` directly above ``b`` at consecutive λ whose gap
  ``μ_a − μ_b`` has an interior local minimum at ``λ_{t*}`` without swapping, while their eigenvectors
  rotate into each other across it: over the window where the gap falls towards ``t*`` and rises after
  it, the product ``M`` of the 2×2 blocks of ``G`` of the two branches (the transported overlap between
  the window's ends) has ``M_ab² + M_ba² > M_aa² + M_bb²`` (a rotation of more than 45°); the two must
  be in different clusters at both ends of the window (a pair degenerate throughout is one subspace,
  whatever its vectors do). ``touching`` marks a minimum inside the cluster tolerance: there a crossing
  and an avoided crossing cannot be told apart. An avoided crossing narrower than the grid spacing (all of the rotation in one step, with an
  overlap above ``τ`` across it) is indistinguishable from a crossing and is counted as one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import numpy as np
#: A match is unique above 1/√2; smaller thresholds are refused.
UNIQUE_OVERLAP = 1 / math.sqrt(2)
DEFAULT_MIN_OVERLAP = UNIQUE_OVERLAP
DEFAULT_REL_TOL = 1e-3
DEFAULT_LINK = 0.5
DEFAULT_JUMP_FACTOR = 2.0
DEFAULT_EPOCH_JUMP = 10
DEFAULT_EPOCH_REL = 0.5

# origin codes of an eigenvalue's branch at a λ
NONE, CONTINUED, START, RESTART, NEW = -1, 0, 1, 2, 3
ORIGINS = {NONE: "none", CONTINUED: "continued", START: "first λ", RESTART: "restart", NEW: "new"}
# interval statuses
STATUS_CONTINUED, STATUS_DISCONTINUITY, STATUS_NO_VECTORS = "continued", "discontinuity", "no eigenvectors"


class Crossing(NamedTuple):
    interval: int  # between λ_interval and λ_interval+1 (the new order is seen at its end)
    a: int  # branch above before
    b: int  # branch above after
    start: int  # λ index of the last opposite (strict) order; == interval without a tie in between


class AvoidedCrossing(NamedTuple):
    index: int  # λ index of the smallest gap
    a: int  # upper branch
    b: int  # lower branch
    gap: float  # μ_a − μ_b at index
    rotation: float  # degrees the pair's eigenvectors turned across the window
    touching: bool  # the minimum is inside the cluster tolerance (crossing and avoided crossing alike)


@dataclasses.dataclass
class BranchResult:
    """Branches of ``n`` λ with up to ``k`` eigenpairs each (see the module's rules)."""

    branch: np.ndarray  # [n, k] int64 branch id (0, 1, … in order of appearance; -1 none)
    matched: np.ndarray  # [n, k] overlap with which it continues (a subspace: its smallest cosine); NaN else
    origin: np.ndarray  # [n, k] int8: NONE, CONTINUED, START, RESTART, NEW
    status: list  # [n-1] STATUS_CONTINUED / STATUS_DISCONTINUITY / STATUS_NO_VECTORS
    reasons: list  # [n-1] why an interval is a discontinuity ("" otherwise)
    crossings: list  # [Crossing]
    avoided: list  # [AvoidedCrossing]
    clusters: list  # [n] lists of tuples of eigenvalue indices (clusters of two or more)

    @property
    def n_branches(self) -> int:
        return int(self.branch.max()) + 1 if (self.branch >= 0).any() else 0

    @property
    def discontinuities(self) -> list[int]:
        return [t for t, s in enumerate(self.status) if s == STATUS_DISCONTINUITY]

    @property
    def new_branches(self) -> list[tuple[int, int, int]]:
        """``[(λ index, eigenvalue index, branch id)]`` of the branches that entered (origin NEW)."""
        return [(int(t), int(j), int(self.branch[t, j])) for t, j in zip(*np.nonzero(self.origin == NEW))]


def gram_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[k_a, k_b]`` ``⟨a_i, b_j⟩ / (‖a_i‖ ‖b_j‖)`` of the rows of ``a`` and ``b`` (float64; 0 for zero rows)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = (a @ b.T) / np.outer(na, nb)
    return np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def overlap_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[k_a, k_b]`` ``|⟨a_i, b_j⟩| / (‖a_i‖ ‖b_j‖)`` of the rows of ``a`` and ``b`` (float64 products)."""
    return np.abs(gram_matrix(a, b))


def clusters_of(values: np.ndarray, rel_tol: float = DEFAULT_REL_TOL) -> np.ndarray:
    """``[k]`` cluster label per value (-1 for a non-finite one): single linkage of the sorted finite values
    with neighbours at most ``rel_tol · max|value|`` apart; labels 0, 1, … from the largest value down."""
    values = np.asarray(values, np.float64)
    label = np.full(values.shape, -1, np.int64)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return label
    order = ok[np.argsort(-values[ok], kind="stable")]
    tol = rel_tol * float(np.max(np.abs(values[ok])))
    current = 0
    label[order[0]] = 0
    for prev, i in zip(order[:-1], order[1:]):
        if values[prev] - values[i] > tol:
            current += 1
        label[i] = current
    return label


def _jump(t, distances, lambdas, best_epochs, jump_factor, epoch_jump, epoch_rel) -> str:
    """Why interval ``t`` is a discontinuity by distance or best epoch ("" if it is not)."""
    if distances is not None:
        d0, d1 = float(distances[t]), float(distances[t + 1])
        if np.isfinite(d0) and np.isfinite(d1) and d0 > 0 and d1 > 0:
            r = math.log(d1 / d0)
            lo = -math.inf
            if lambdas is None:
                lo = 0.0  # no λ: no room for the 1/λ decay
            elif lambdas[t] > 0 and lambdas[t + 1] > 0:
                lo = -math.log(lambdas[t + 1] / lambdas[t])
            excess = max(r, lo - r, 0.0)
            if excess > math.log(jump_factor):
                return f"‖θ − θ_ref‖ {d0:.4g} → {d1:.4g}"
    if best_epochs is not None:
        e0, e1 = float(best_epochs[t]), float(best_epochs[t + 1])
        if np.isfinite(e0) and np.isfinite(e1) and abs(e1 - e0) > max(epoch_jump, epoch_rel * max(e0, e1)):
            return f"best epoch {e0:.0f} → {e1:.0f}"
    return ""


def _match_interval(g, v0, v1, c0, c1, valid0, valid1, tau, link):
    """``[(rows at t, cols at t+1, overlap)]`` of what continues across one interval: single pairs and
    subspaces (passed on in order of value)."""
    free0 = {int(i) for i in np.flatnonzero(valid0)}
    free1 = {int(j) for j in np.flatnonzero(valid1)}
    out = []

    def ordered(rows, cols):
        return sorted(rows, key=lambda i: -v0[i]), sorted(cols, key=lambda j: -v1[j])

    def cosines(rows, cols):
        return np.linalg.svd(g[np.ix_(rows, cols)], compute_uv=False)

    # degenerate clusters continued as subspaces
    groups0 = {}
    for i in free0:
        groups0.setdefault(int(c0[i]), []).append(i)
    groups1 = {}
    for j in free1:
        groups1.setdefault(int(c1[j]), []).append(j)
    for rows in groups0.values():
        if len(rows) < 2:
            continue
        for cols in groups1.values():
            if len(cols) != len(rows) or not free1.issuperset(cols):
                continue
            s = cosines(rows, cols)
            if s.min() > tau:
                out.append((*ordered(rows, cols), float(s.min())))
                free0.difference_update(rows)
                free1.difference_update(cols)
                break
    # unique single matches
    if free0 and free1:
        rows, cols = sorted(free0), sorted(free1)
        sub = np.abs(g[np.ix_(rows, cols)])
        for a, i in enumerate(rows):
            b = int(np.argmax(sub[a]))
            if sub[a, b] > tau and int(np.argmax(sub[:, b])) == a:
                out.append(([i], [cols[b]], float(sub[a, b])))
                free0.discard(i)
                free1.discard(cols[b])
    # rotating subspaces among the rest
    if free0 and free1:
        nodes = [(0, i) for i in sorted(free0)] + [(1, j) for j in sorted(free1)]
        parent = {x: x for x in nodes}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(x, y):
            parent[find(x)] = find(y)

        for side, labels, free in ((0, c0, free0), (1, c1, free1)):
            first = {}
            for i in sorted(free):
                union((side, i), first.setdefault(int(labels[i]), (side, i)))
        for i in free0:
            for j in free1:
                if abs(g[i, j]) >= link:
                    union((0, i), (1, j))
        comps = {}
        for x in nodes:
            comps.setdefault(find(x), []).append(x)
        for members in comps.values():
            rows = [i for s, i in members if s == 0]
            cols = [j for s, j in members if s == 1]
            if rows and len(rows) == len(cols):
                s = cosines(rows, cols)
                if s.min() > tau:
                    out.append((*ordered(rows, cols), float(s.min())))
    return out


def match_branches(grams: Sequence[np.ndarray | None], k: int | None = None,
                   min_overlap: float = DEFAULT_MIN_OVERLAP, *, eigenvalues: np.ndarray | None = None,
                   distances: np.ndarray | None = None, lambdas: np.ndarray | None = None,
                   best_epochs: np.ndarray | None = None, rel_tol: float = DEFAULT_REL_TOL,
                   link: float = DEFAULT_LINK, jump_factor: float = DEFAULT_JUMP_FACTOR,
                   epoch_jump: float = DEFAULT_EPOCH_JUMP, epoch_rel: float = DEFAULT_EPOCH_REL) -> BranchResult:
    """Follow eigenpairs across ``n = len(grams) + 1`` neighbouring λ by the rules of this module.

    ``grams[t]`` is ``[k, k]`` ``G_ij = ⟨v_i(λ_t), v_j(λ_{t+1})⟩`` of unit vectors (signed: subspaces need
    the signs; :func:`gram_matrix`), or ``None`` (no comparable eigenvectors: the branches restart).
    ``eigenvalues`` ``[n, k]``: the values ordering and clustering the eigenpairs (the report passes
    ``μ = θ − 2λ``; NaN: no eigenpair, branch -1); default: strictly decreasing with the index.
    ``distances`` ``[n]`` (``‖θ − θ_ref‖``), ``lambdas`` ``[n]`` and ``best_epochs`` ``[n]`` mark
    discontinuities; each may be ``None``. ``min_overlap`` ``τ`` must be at least ``1/√2``.
    """
    if not UNIQUE_OVERLAP - 1e-12 <= min_overlap <= 1:
        raise ValueError(f"min_overlap {min_overlap}: must be in [1/√2, 1] for a match to be unique")
    n = len(grams) + 1
    if eigenvalues is None:
        if k is None:
            k = next((np.shape(g)[0] for g in grams if g is not None), 0)
        eigenvalues = np.tile(-np.arange(k, dtype=np.float64), (n, 1))
    values = np.asarray(eigenvalues, np.float64)
    k = values.shape[1] if k is None else k
    values = values[:, :k]
    if values.shape[0] != n:
        raise ValueError(f"eigenvalues has {values.shape[0]} rows for {n} λ")
    valid = np.isfinite(values)
    labels = np.stack([clusters_of(v, rel_tol) for v in values]) if n else np.zeros((0, k), np.int64)
    branch = np.full((n, k), -1, np.int64)
    matched = np.full((n, k), np.nan)
    origin = np.full((n, k), NONE, np.int8)
    status, reasons, blocks = [], [], []
    next_id = 0

    def fresh(t, j, how):
        nonlocal next_id
        branch[t, j] = next_id
        origin[t, j] = how
        next_id += 1

    if n:
        for j in np.flatnonzero(valid[0]):
            fresh(0, j, START)
    for t, g in enumerate(grams):
        if g is None:
            status.append(STATUS_NO_VECTORS)
            reasons.append("")
            blocks.append(None)
            for j in np.flatnonzero(valid[t + 1]):
                fresh(t + 1, j, RESTART)
            continue
        g = np.asarray(g, np.float64)[:k, :k]
        blocks.append(g)
        why = _jump(t, distances, lambdas, best_epochs, jump_factor, epoch_jump, epoch_rel)
        matches = [] if why else _match_interval(g, values[t], values[t + 1], labels[t], labels[t + 1],
                                                 valid[t], valid[t + 1], min_overlap, link)
        if not why and not matches and valid[t].any() and valid[t + 1].any():
            why = "no eigenvector matches"
        if why:
            status.append(STATUS_DISCONTINUITY)
            reasons.append(why)
            for j in np.flatnonzero(valid[t + 1]):
                fresh(t + 1, j, RESTART)
            continue
        status.append(STATUS_CONTINUED)
        reasons.append("")
        for rows, cols, overlap in matches:
            for i, j in zip(rows, cols):
                branch[t + 1, j] = branch[t, i]
                matched[t + 1, j] = overlap
                origin[t + 1, j] = CONTINUED
        for j in np.flatnonzero(valid[t + 1] & (branch[t + 1] < 0)):
            fresh(t + 1, j, NEW)

    clusters = [[tuple(int(j) for j in np.flatnonzero(lab == c)) for c in np.unique(lab[lab >= 0])
                 if np.sum(lab == c) > 1] for lab in labels]
    crossings = _crossings(branch, values, labels)
    avoided = _avoided(branch, values, labels, blocks)
    return BranchResult(branch, matched, origin, status, reasons, crossings, avoided, clusters)


def _crossings(branch, values, labels) -> list[Crossing]:
    out = []
    last: dict[tuple[int, int], tuple[int, int]] = {}  # (a, b) with a < b -> (sign of μ_a − μ_b, λ index)
    for t in range(branch.shape[0]):
        alive = [(int(branch[t, j]), j) for j in range(branch.shape[1]) if branch[t, j] >= 0]
        alive.sort()
        for x, (a, i) in enumerate(alive):
            for b, j in alive[x + 1:]:
                if labels[t, i] == labels[t, j]:
                    continue  # a tie inside a cluster
                s = 1 if values[t, i] > values[t, j] else -1
                prev = last.get((a, b))
                if prev is not None and prev[0] != s:
                    upper_before, upper_after = (a, b) if prev[0] > 0 else (b, a)
                    out.append(Crossing(t - 1, upper_before, upper_after, prev[1]))
                last[(a, b)] = (s, t)
    out.sort()
    return out


def _avoided(branch, values, labels, blocks) -> list[AvoidedCrossing]:
    n = branch.shape[0]
    adjacent: dict[tuple[int, int], list[int]] = {}  # (upper, lower) -> λ indices where directly adjacent
    pos = []
    for t in range(n):
        js = [j for j in np.argsort(-np.where(np.isfinite(values[t]), values[t], -np.inf), kind="stable")
              if branch[t, j] >= 0]
        pos.append({int(branch[t, j]): int(j) for j in js})
        for j0, j1 in zip(js[:-1], js[1:]):
            adjacent.setdefault((int(branch[t, j0]), int(branch[t, j1])), []).append(t)
    out = []
    for (a, b), ts in adjacent.items():
        runs, run = [], [ts[0]]
        for t in ts[1:]:
            if t == run[-1] + 1 and blocks[t - 1] is not None:
                run.append(t)
            else:
                runs.append(run)
                run = [t]
        runs.append(run)
        for run in runs:
            if len(run) < 3:
                continue
            gap = [values[t, pos[t][a]] - values[t, pos[t][b]] for t in run]
            for m in range(1, len(run) - 1):
                if not gap[m - 1] > gap[m] <= gap[m + 1]:
                    continue
                lo = m
                while lo > 0 and gap[lo - 1] > gap[lo]:
                    lo -= 1
                hi = m
                while hi < len(run) - 1 and gap[hi + 1] >= gap[hi]:
                    hi += 1
                if labels[run[lo], pos[run[lo]][a]] == labels[run[lo], pos[run[lo]][b]] or \
                        labels[run[hi], pos[run[hi]][a]] == labels[run[hi], pos[run[hi]][b]]:
                    continue  # not resolved before and after the minimum: one cluster, not an encounter
                rot = np.eye(2)
                for x in range(lo, hi):
                    t = run[x]
                    rows = [pos[t][a], pos[t][b]]
                    cols = [pos[t + 1][a], pos[t + 1][b]]
                    rot = rot @ blocks[t][np.ix_(rows, cols)]
                off = rot[0, 1] ** 2 + rot[1, 0] ** 2
                diag = rot[0, 0] ** 2 + rot[1, 1] ** 2
                if off > diag:
                    t = run[m]
                    out.append(AvoidedCrossing(t, a, b, float(gap[m]),
                                               math.degrees(math.atan2(math.sqrt(off), math.sqrt(diag))),
                                               bool(labels[t, pos[t][a]] == labels[t, pos[t][b]])))
    out.sort()
    return out
