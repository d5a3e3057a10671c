"""Branches of constructed operator families with known answers (numpy only, no sweep)."""

import math

import numpy as np
import pytest

from hessjax.report.branches import (CONTINUED, NEW, RESTART, START, STATUS_CONTINUED, STATUS_DISCONTINUITY,
                                     STATUS_NO_VECTORS, AvoidedCrossing, Crossing, clusters_of, gram_matrix,
                                     match_branches, overlap_matrix)


def _basis(p, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))[0]


def _top(h, k):
    """Top-k eigenvalues (largest first) and eigenvectors (rows) of a symmetric matrix, as a solver gives."""
    w, v = np.linalg.eigh(h)
    order = np.argsort(-w)[:k]
    return w[order], v[:, order].T


def _follow(values, vectors, **kw):
    grams = [gram_matrix(a, b) for a, b in zip(vectors[:-1], vectors[1:])]
    return match_branches(grams, eigenvalues=np.asarray(values), **kw)


def _family(diagonals, basis, k):
    """H(s) = Q diag(μ(s), −1, …) Qᵀ for each row of ``diagonals``: the solver's top-k values and vectors."""
    p = basis.shape[0]
    tops = [_top(basis @ np.diag(np.pad(d, (0, p - len(d)), constant_values=-1.0)) @ basis.T, k) for d in diagonals]
    return np.stack([w for w, _ in tops]), np.stack([v for _, v in tops])


def _ids_of(result, values, wanted):
    """The branch id at each λ of the eigenvalue equal to ``wanted[t]``."""
    return [int(result.branch[t, np.argmin(np.abs(values[t] - w))]) for t, w in enumerate(wanted)]


def test_true_crossing_is_followed_by_the_vectors():
    s = np.linspace(0, 1, 6)  # A = 2 − s and B = 1 + s cross at s = 0.5, between λ indices 2 and 3
    a, b = 2 - s, 1 + s
    diagonals = np.stack([np.full_like(s, 4.0), a, b, np.full_like(s, 0.2), np.full_like(s, 0.1)], axis=1)
    values, vectors = _family(diagonals, _basis(8, 0), k=3)
    res = _follow(values, vectors)
    assert res.status == [STATUS_CONTINUED] * 5 and res.discontinuities == []
    assert res.n_branches == 3 and res.new_branches == []
    ida, idb = _ids_of(res, values, a), _ids_of(res, values, b)
    assert ida == [1] * 6 and idb == [2] * 6  # each branch keeps its direction through the crossing
    assert res.branch[:, 1].tolist() == [1, 1, 1, 2, 2, 2]  # the index changes hands
    assert res.crossings == [Crossing(2, 1, 2, 2)] and res.avoided == []
    assert (res.origin[1:] == CONTINUED).all() and (res.origin[0] == START).all()
    assert np.all(res.matched[1:] > 0.999)


def test_avoided_crossing_follows_the_ordered_values():
    # the 2×2 block [[s, g], [g, −s]]: the values 0 ± √(s² + g²) approach to 2g at s = 0 and part again,
    # while the vectors turn by ~90° over the grid, ~30° per step
    s = np.linspace(-1, 1, 11)
    g = 0.1
    q = _basis(6, 1)
    vals, vecs = [], []
    for x in s:
        h = np.zeros((6, 6))
        h[:2, :2] = [[x, g], [g, -x]]
        h[2, 2], h[3, 3], h[4, 4], h[5, 5] = 10.0, -5.0, -6.0, -7.0
        w, v = _top(q @ h @ q.T, 3)
        vals.append(w)
        vecs.append(v)
    values, vectors = np.stack(vals), np.stack(vecs)
    res = _follow(values, vectors)
    assert res.status == [STATUS_CONTINUED] * 10 and res.n_branches == 3 and res.new_branches == []
    assert (res.branch == [0, 1, 2]).all()  # no swap: the branches are the ordered values
    assert res.crossings == []
    assert len(res.avoided) == 1
    e = res.avoided[0]
    assert (e.index, e.a, e.b) == (5, 1, 2) and e.gap == pytest.approx(2 * g) and not e.touching
    assert 80 < e.rotation < 90  # 2·(atan(1/(2·5))/2 − …): nearly the full quarter turn
    # the same family with no coupling is a true crossing (between s = −0.2 … 0.2 the values meet at 0)
    vals, vecs = [], []
    for x in s[[0, 2, 4, 6, 8, 10]]:
        h = np.diag([x, -x, 10.0, -5.0, -6.0, -7.0])
        w, v = _top(q @ h @ q.T, 3)
        vals.append(w)
        vecs.append(v)
    res = _follow(np.stack(vals), np.stack(vecs))
    assert res.avoided == [] and res.crossings == [Crossing(2, 1, 2, 2)]


def test_degenerate_pair_rotating_inside_its_eigenspace_is_one_subspace():
    rng = np.random.default_rng(2)
    q = _basis(12, 3)
    n, k = 8, 4
    vals, vecs = [], []
    for t in range(n):
        phi = rng.uniform(0, 2 * np.pi)  # a fresh random rotation inside the pair's plane at every λ
        rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
        pair = (q[:, 1:3] @ rot).T * rng.choice([-1, 1], size=(2, 1))
        vecs.append(np.stack([q[:, 0], pair[0], pair[1], q[:, 3]]))
        eps = 1e-5 * rng.standard_normal(2)
        vals.append([5.0 + 0.1 * t, 3.0 + eps[0], 3.0 + eps[1], 1.0 - 0.05 * t])
    values, vectors = np.asarray(vals), np.stack(vecs)
    values[:, 1:3] = -np.sort(-values[:, 1:3], axis=1)
    res = _follow(values, vectors)
    assert res.status == [STATUS_CONTINUED] * (n - 1)
    assert res.n_branches == k and res.new_branches == []
    assert (res.branch == np.arange(k)).all()
    assert res.crossings == [] and res.avoided == []
    assert all(c == [(1, 2)] for c in res.clusters)
    assert np.allclose(res.matched[1:, 1:3], 1, atol=1e-12)  # principal cosines of the plane
    # the unique-match rule alone cannot follow the pair: some steps have no overlap above 1/√2
    ov = [overlap_matrix(a[1:3], b[1:3]) for a, b in zip(vectors[:-1], vectors[1:])]
    assert any(o.max() < 0.9 for o in ov)
    # without the cluster (tolerance 0) the plane still continues as a rotating subspace
    res0 = _follow(values, vectors, rel_tol=0.0)
    assert res0.n_branches == k and res0.new_branches == [] and res0.discontinuities == []


def test_discontinuity_is_marked_once_and_restarts_the_branches():
    q, other = _basis(200, 4), _basis(200, 5)
    n, k = 7, 5
    lambdas = 10.0 ** np.arange(n)  # a log grid: d ∝ 1/λ falls ×10 per step without a jump
    distances = 3.0 / lambdas
    distances[4:] *= 50  # the training landed elsewhere at λ index 4: d grows ×5 there
    values = np.tile([9.0, 7.0, 5.0, 3.0, 1.0], (n, 1)) + 0.01 * np.arange(n)[:, None]
    vectors = np.stack([(other if t >= 4 else q)[:, :k].T for t in range(n)])
    res = _follow(values, vectors, distances=distances, lambdas=lambdas)
    assert res.discontinuities == [3] and res.status.count(STATUS_DISCONTINUITY) == 1
    assert "θ_ref" in res.reasons[3]
    assert res.new_branches == []  # no flood of new branches: they restart
    assert (res.origin[4] == RESTART).all() and (res.origin[5:] == CONTINUED).all()
    assert res.branch[:4].tolist() == [list(range(k))] * 4 and res.branch[4:].tolist() == [list(range(k, 2 * k))] * 3
    assert res.crossings == [] and res.avoided == []
    # the same without the distance jump: the vectors alone still mark it (nothing matches)
    res = _follow(values, vectors, distances=3.0 / lambdas, lambdas=lambdas)
    assert res.discontinuities == [3] and res.reasons[3] == "no eigenvector matches" and res.new_branches == []
    # a distance jump alone is a discontinuity even where the vectors would match
    same = np.stack([q[:, :k].T] * n)
    res = _follow(values, same, distances=distances, lambdas=lambdas)
    assert res.discontinuities == [3] and res.n_branches == 2 * k
    # a jump of the best epoch, and none where the change is small
    epochs = np.array([20, 22, 25, 24, 90, 88, 85])
    res = _follow(values, same, best_epochs=epochs)
    assert res.discontinuities == [3] and "best epoch" in res.reasons[3]
    res = _follow(values, same, best_epochs=np.array([20, 22, 25, 30, 34, 40, 44]))
    assert res.discontinuities == [] and res.n_branches == k
    # no comparable vectors: the branches restart without a discontinuity
    grams = [gram_matrix(same[0], same[0])] * 2 + [None] + [gram_matrix(same[0], same[0])] * 3
    res = match_branches(grams, eigenvalues=values)
    assert res.status[2] == STATUS_NO_VECTORS and res.discontinuities == [] and (res.origin[3] == RESTART).all()


def test_newcomer_rising_into_the_top_k_is_one_new_branch():
    d = np.array([1.0, 2.0, 2.5, 3.5, 3.8, 4.5])  # D passes C (3) between λ indices 2 and 3
    diagonals = np.stack([np.full(6, 5.0), np.full(6, 4.0), np.full(6, 3.0), d, np.full(6, 0.5)], axis=1)
    values, vectors = _family(diagonals, _basis(9, 6), k=3)
    res = _follow(values, vectors)
    assert res.status == [STATUS_CONTINUED] * 5 and res.discontinuities == []
    assert res.new_branches == [(3, 2, 3)]  # at λ index 3, eigenvalue 3, branch 3
    assert res.n_branches == 4
    assert res.branch[:, 2].tolist() == [2, 2, 2, 3, 3, 1]  # at index 5 D (4.5) passed B (4) too
    assert res.branch[:, 1].tolist() == [1, 1, 1, 1, 1, 3]
    assert res.crossings == [Crossing(4, 1, 3, 4)]  # D over B, between λ indices 4 and 5
    assert res.avoided == []


def test_match_rules_on_given_overlaps():
    # 0.8 with the second vector is the unique match of the first; the second's best (0.6) is not unique
    g = np.array([[0.1, 0.8], [0.6, 0.1]])
    res = match_branches([g], eigenvalues=np.array([[2.0, 1.0], [2.5, 0.5]]))
    assert res.branch.tolist() == [[0, 1], [2, 0]] and res.new_branches == [(1, 0, 2)]
    assert res.matched[1, 1] == pytest.approx(0.8) and np.isnan(res.matched[1, 0])
    with pytest.raises(ValueError, match="unique"):
        match_branches([g], min_overlap=0.5)
    # a NaN eigenvalue has no branch
    res = match_branches([np.eye(2)], eigenvalues=np.array([[2.0, 1.0], [2.0, np.nan]]))
    assert res.branch.tolist() == [[0, 1], [0, -1]]
    assert clusters_of(np.array([5.0, 4.9999, 4.99985, 3.0, np.nan]), 1e-4).tolist() == [0, 0, 0, 1, -1]
    np.testing.assert_allclose(overlap_matrix(np.array([[3.0, 4.0]]), np.array([[0.0, -2.0], [1.0, 0.0]])),
                               [[0.8, 0.6]])
    np.testing.assert_allclose(gram_matrix(np.array([[3.0, 4.0]]), np.array([[0.0, -2.0], [1.0, 0.0]])),
                               [[-0.8, 0.6]])
    assert isinstance(AvoidedCrossing(0, 0, 1, 0.0, 0.0, False), tuple) and NEW != RESTART
    assert math.isclose(1 / math.sqrt(2), 0.7071067811865476)
