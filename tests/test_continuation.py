"""Warm-started eigensolves along a parameter, against dense ``eigh`` at every step.

A sweep starts each λ's Lanczos from the eigenvectors of its neighbour (:mod:`hessjax.lanczos`,
``warm_start``). A warm start is biased toward the old subspace: an eigenvalue that rises into the
top k from below, or one that crosses the k-th from below, lies (here: exactly) outside the old
eigenvectors, so the Krylov space of their sum does not contain it. The completeness probe — a
Lanczos run from a random vector in the complement of the converged top k — must find it. The
families below keep the eigenvectors fixed (``A(t) = U diag(λ(t)) Uᵀ``), which makes the old
subspace exactly invariant: the hardest case for a warm start, where it is blind but for rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.lanczos import top_k_eigenpairs, top_k_eigenpairs_batched

K, DIM, TOL = 8, 300, 1e-10
STEPS = np.linspace(0.0, 1.0, 11)
_U = np.linalg.qr(np.random.default_rng(3).standard_normal((DIM, DIM)))[0]
_BASE = np.concatenate([10.0 - 0.5 * np.arange(K), np.random.default_rng(4).uniform(-2.0, 5.0, DIM - K)])


def _rising(t):
    """A tail eigenvalue climbs from 4.0 to 8.2: it enters the top 8 (θ_8 = 6.5) between two steps."""
    s = _BASE.copy()
    s[40] = 4.0 + 4.2 * t
    return s


def _crossing(t):
    """θ_7 = 7.0 falls to 5.2 while a tail eigenvalue rises from 5.8 to 7.6: they cross near t = 0.4, and
    the top-8 set changes there; inside the top 8, θ_2 and θ_3 (9.5, 9.0) cross as well."""
    s = _BASE.copy()
    s[6], s[50] = 7.0 - 1.8 * t, 5.8 + 1.8 * t
    s[1], s[2] = 9.5 - 0.8 * t, 9.0 + 0.8 * t
    return s


def _matvec(v, a):
    return a @ v


@functools.partial(jax.jit, static_argnames=("warm", "check"))
def _solve(a, v0, previous, *, warm, check=True):
    return top_k_eigenpairs(_matvec, v0, K, params=(a,), tol=TOL, key=jax.random.key(1), multiplicity_check=check,
                            warm_start=previous if warm else None)


def _walk(family, check=True):
    """Cold solve at the first step, then each step warm from the one before; per step the result and
    the dense reference."""
    out, previous = [], None
    for i, t in enumerate(STEPS):
        spectrum = family(t)
        a = jnp.asarray((_U * spectrum) @ _U.T)
        v0 = jnp.asarray(np.random.default_rng(100 + i).standard_normal(DIM))
        res = _solve(a, v0, previous if previous is not None else jnp.zeros((K, DIM)), warm=previous is not None,
                     check=check)
        out.append((t, spectrum, res))
        previous = res.eigenvectors
    return out


@pytest.mark.parametrize("family", [_rising, _crossing], ids=["enters-from-below", "crosses-the-kth"])
def test_warm_solves_return_the_dense_top_k_at_every_step(family):
    walk = _walk(family)
    for t, spectrum, res in walk:
        order = np.argsort(spectrum)[::-1][:K]
        np.testing.assert_allclose(np.asarray(res.eigenvalues), spectrum[order], atol=1e-8, err_msg=f"t={t}")
        assert bool(np.all(res.converged)), t
        vecs = np.asarray(res.eigenvectors)
        cos = np.abs(np.sum(vecs * _U[:, order].T, axis=1))  # every top-8 value is simple at these steps
        assert np.all(cos > 1 - 1e-8), t
    assert all(bool(res.warm) for _, _, res in walk[1:])  # no fallback was needed
    sets = [frozenset(np.argsort(s)[::-1][:K]) for _, s, _ in walk]
    changed = [i for i in range(1, len(walk)) if sets[i] != sets[i - 1]]
    assert len(changed) == 1  # the newcomer enters at exactly one step ...
    restarts = [int(res.num_restarts) for _, _, res in walk]
    assert restarts[changed[0]] > max(restarts[i] for i in range(1, len(walk)) if i != changed[0])  # ... found there


@pytest.mark.parametrize("family", [_rising, _crossing], ids=["enters-from-below", "crosses-the-kth"])
def test_without_the_probe_a_warm_start_misses_the_newcomer(family):
    """What the probe is for: the same walk with ``multiplicity_check=False`` returns the old top 8."""
    walk = _walk(family, check=False)
    missed = [t for t, spectrum, res in walk
              if not np.allclose(np.asarray(res.eigenvalues), np.sort(spectrum)[::-1][:K], atol=1e-6)]
    assert missed, "the blind warm start found the newcomer anyway: the family no longer tests the probe"


def test_a_warm_start_from_close_vectors_costs_fewer_products_than_a_cold_one():
    """Slowly rotating eigenvectors and drifting eigenvalues (no newcomer): warm is cheaper at every step."""
    skew = np.random.default_rng(5).standard_normal((DIM, DIM)) * 2e-3
    skew = skew - skew.T
    from scipy.linalg import expm

    previous = None
    for i, t in enumerate(STEPS):
        u = _U @ expm(skew * t)
        spectrum = _BASE * (1 + 0.02 * t)
        a = jnp.asarray((u * spectrum) @ u.T)
        v0 = jnp.asarray(np.random.default_rng(200 + i).standard_normal(DIM))
        cold = _solve(a, v0, jnp.zeros((K, DIM)), warm=False)
        np.testing.assert_allclose(np.asarray(cold.eigenvalues), spectrum[:K], atol=1e-8)
        if previous is not None:
            warm = _solve(a, v0, previous, warm=True)
            np.testing.assert_allclose(np.asarray(warm.eigenvalues), spectrum[:K], atol=1e-8)
            assert bool(np.all(warm.converged)) and bool(warm.warm)
            assert int(warm.num_matvecs) < int(cold.num_matvecs), t
        previous = cold.eigenvectors


def test_unusable_warm_vectors_start_cold_and_a_failed_warm_start_falls_back():
    a = jnp.asarray((_U * _rising(0.0)) @ _U.T)
    v0 = jnp.asarray(np.random.default_rng(9).standard_normal(DIM))
    cold = _solve(a, v0, jnp.zeros((K, DIM)), warm=False)
    nan = _solve(a, v0, jnp.full((K, DIM), jnp.nan), warm=True)  # e.g. a diverged neighbour
    assert not bool(nan.warm)
    for x, y in zip(cold, nan):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # a batch with a member whose warm start is switched off: that member equals its cold solve
    batch = top_k_eigenpairs_batched(jax.vmap(_matvec, in_axes=(0, None)), jnp.stack([v0, v0]), K, params=(a,),
                                     tol=TOL, keys=jnp.stack([jax.random.key(1)] * 2),
                                     warm_start=jnp.stack([cold.eigenvectors, cold.eigenvectors]),
                                     use_warm=jnp.asarray([False, True]))
    assert [bool(w) for w in batch.warm] == [False, True]
    np.testing.assert_allclose(np.asarray(batch.eigenvalues[0]), np.asarray(cold.eigenvalues), atol=1e-12)
    assert int(batch.num_matvecs[1]) < int(batch.num_matvecs[0])


def test_a_warm_start_that_does_not_converge_in_its_budget_falls_back_to_cold():
    """A crowded top (six values 1% apart) and a small basis need several restarts; a warm start from
    unrelated vectors gets ``min(3, max_restarts)`` of them, then the solve starts again from ``v0``."""
    spectrum = np.concatenate([1.0 - 0.01 * np.arange(6), np.random.default_rng(31).uniform(-1, 0.94, 144)])
    u = np.linalg.qr(np.random.default_rng(32).standard_normal((150, 150)))[0]
    a = jnp.asarray((u * spectrum) @ u.T)
    v0 = jnp.asarray(np.random.default_rng(33).standard_normal(150))
    unrelated = jnp.asarray(np.linalg.qr(np.random.default_rng(34).standard_normal((150, 6)))[0].T)
    solve = jax.jit(lambda a, v0, w: top_k_eigenpairs(_matvec, v0, 6, 20, params=(a,), tol=1e-10, max_restarts=1,
                                                      key=jax.random.key(2), warm_start=w))
    res = solve(a, v0, unrelated)
    assert not bool(res.warm) and int(res.num_restarts) >= 2  # the warm pass, its one restart, then cold
    cold = jax.jit(lambda a, v0: top_k_eigenpairs(_matvec, v0, 6, 20, params=(a,), tol=1e-10, max_restarts=1,
                                                  key=jax.random.key(2)))(a, v0)
    assert int(res.num_matvecs) > int(cold.num_matvecs)  # every product counted, the failed warm ones included
    # after the fallback the solve is the cold one, with its whole budget: the same numbers
    for field in ("eigenvalues", "residuals", "converged"):
        np.testing.assert_array_equal(np.asarray(getattr(res, field)), np.asarray(getattr(cold, field)), err_msg=field)
    np.testing.assert_allclose(np.asarray(res.eigenvalues)[np.asarray(res.converged)],
                               spectrum[:6][np.asarray(res.converged)], atol=1e-9)


# -- the sweep's schedule ----------------------------------------------------------------------------


def test_segments_are_walked_one_per_member_and_each_lambda_starts_from_its_predecessor():
    from hessjax.sweep.plan import Slot, walk_segments

    part = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    batches = walk_segments(part, part, 2, set(), 3)  # segments [0, .1, .2] [.3, .4, .5] [.6]
    assert batches == [
        [Slot(0.0, "cold", None), Slot(0.3, "cold", None)],
        [Slot(0.1, "previous", 0.0), Slot(0.4, "previous", 0.3)],
        [Slot(0.2, "previous", 0.1), Slot(0.5, "previous", 0.4)],
        [Slot(0.6, "cold", None), None],  # member 0 goes on with segment 3; member 1 has nothing left
    ]
    # a batch of 1 walks the same segments one after another: the same predecessors
    single = [s for b in walk_segments(part, part, 1, set(), 3) for s in b]
    assert {s.lam: s.neighbour for s in single} == {s.lam: s.neighbour for b in batches for s in b if s}
    # segments shrink so that every member of a big batch has one: 7 λ on 4 members, segments of 2
    assert [[s.lam if s else None for s in b] for b in walk_segments(part, part, 4, set(), 16)] == [
        [0.0, 0.2, 0.4, 0.6], [0.1, 0.3, 0.5, None]]
    # resumed after 0.0, 0.1 and 0.3 were finished: the predecessors come from the store
    todo = [0.2, 0.4, 0.5, 0.6]
    resumed = walk_segments(part, todo, 2, {0.0, 0.1, 0.3}, 3)
    assert resumed == [[Slot(0.2, "store", 0.1), Slot(0.4, "store", 0.3)],
                       [Slot(0.6, "cold", None), Slot(0.5, "previous", 0.4)]]
    # a diverged (unusable) predecessor, and --cold-start
    assert walk_segments(part, [0.2], 1, {0.0}, 3) == [[Slot(0.2, "cold", None)]]
    cold = [s for b in walk_segments(part, part, 2, set(), 3, cold=True) for s in b if s is not None]
    assert sorted(s.lam for s in cold) == part and all(s.source == "cold" for s in cold)

