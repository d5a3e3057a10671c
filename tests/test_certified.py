"""The solver's certificate (true residuals decide convergence) and the error bounds written per pair."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.bounds import error_bounds, shifted
from hessjax.lanczos import top_k_eigenpairs

KEY = jax.random.key(3)


def _operator(evals, seed):
    u, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(evals), len(evals))))
    return (u * np.asarray(evals, np.float64)) @ u.T


def _matvec(v, a):
    return a @ v


@functools.partial(jax.jit, static_argnames=("k", "num_iters", "max_restarts", "tol", "multiplicity_check"))
def _solve(v0, a, *, k, num_iters, max_restarts, tol, multiplicity_check=True):
    return top_k_eigenpairs(_matvec, v0, k, num_iters, params=(a,), tol=tol, max_restarts=max_restarts, key=KEY,
                            multiplicity_check=multiplicity_check)


def test_an_optimistic_estimate_does_not_end_the_solve():
    """The recurrence's residual estimates fill the projected matrix symmetrically, so they cannot see
    an antisymmetric part of the operator: here one inside an invariant block that holds the top 3,
    where the Krylov space of ``v0`` closes and every estimate is 0. The true residuals from the
    stored products see it. A solver whose exit trusted the estimates stops after its first pass (12
    products) with ``converged = False``; this one keeps restarting until its budget is spent, and
    never reports a pair as converged that is not."""
    rng = np.random.default_rng(5)
    block = _operator([10.0, 9.0, 8.0, 7.0, 6.8, 6.6, 6.4, 6.2, 6.0, 5.8], seed=6)
    skew = rng.standard_normal((10, 10))
    a = np.zeros((60, 60))
    a[:10, :10] = block + 1e-4 * (skew - skew.T)
    a[10:, 10:] = np.diag(rng.uniform(-1, 5, 50))
    v0 = np.zeros(60)
    v0[:10] = rng.standard_normal(10)
    res = _solve(jnp.asarray(v0), jnp.asarray(a), k=3, num_iters=20, max_restarts=4, tol=1e-10,
                 multiplicity_check=False)
    vecs, vals = np.asarray(res.eigenvectors), np.asarray(res.eigenvalues)
    true = np.linalg.norm(a @ vecs.T - vecs.T * vals, axis=0)
    np.testing.assert_allclose(np.asarray(res.residuals), true, rtol=1e-8)
    assert true.min() > 1e-10 * float(res.scale)  # no pair meets the tolerance ...
    assert not np.any(np.asarray(res.converged))  # ... none is reported converged ...
    assert int(res.num_restarts) == 4  # ... and the solver retried until its budget was spent


def test_converged_flags_are_the_exit_test_and_the_scale_is_reported():
    spectrum = np.concatenate([[5.0, 4.0, 3.0, 2.5], np.random.default_rng(7).uniform(-9, 2, 76)])
    a = _operator(spectrum, seed=8)
    res = _solve(jnp.asarray(np.random.default_rng(9).standard_normal(80)), jnp.asarray(a), k=4, num_iters=24,
                 max_restarts=30, tol=1e-9)
    # a negative eigenvalue (−9) dominates |θ₁| = 5: the scale is the projected matrix's norm, ≤ ‖A‖
    assert 5.0 < float(res.scale) <= np.abs(spectrum).max() * (1 + 1e-12)
    np.testing.assert_array_equal(np.asarray(res.converged), np.asarray(res.residuals) <= 1e-9 * float(res.scale))
    assert bool(np.all(res.converged))
    np.testing.assert_allclose(np.asarray(res.eigenvalues), spectrum[:4], atol=1e-8)


@pytest.mark.parametrize("passes", [0, 1, 30])
def test_error_bounds_hold_against_the_dense_spectrum(passes):
    """Unconverged (one short pass), partly converged and converged pairs of a spectrum with a close
    pair: every written bound holds, the quadratic bound where it applies is far below the residual,
    and it is never claimed for the last pair or inside a cluster wider than the residuals allow."""
    spectrum = np.concatenate([[3.0, 2.0, 1.999, 1.5, 1.0], np.random.default_rng(11).uniform(-1, 0.9, 95)])
    a = _operator(spectrum, seed=12)
    res = _solve(jnp.asarray(np.random.default_rng(13).standard_normal(100)), jnp.asarray(a), k=5, num_iters=14,
                 max_restarts=passes, tol=1e-12)
    mu, r = np.asarray(res.eigenvalues, np.float64), np.asarray(res.residuals, np.float64)
    bound = error_bounds(mu, r)
    exact = np.linalg.eigvalsh(a)
    nearest = np.min(np.abs(mu[:, None] - exact[None, :]), axis=1)
    assert np.all(nearest <= bound * (1 + 1e-9) + 1e-14)
    assert np.all(bound <= r) and bound[-1] == r[-1]
    separated = (np.abs(np.diff(mu, prepend=np.inf)) > 10 * r.max()) & (np.abs(np.diff(mu, append=-np.inf)) > 10 * r.max())
    separated[-1] = False
    if r.max() > 0 and separated.any():
        assert np.all(bound[separated] <= 0.2 * r[separated])


def test_float32_bounds_with_the_rounding_term_hold_against_float64():
    """Solved on the float32 operator, certified with ``OPERATOR_ROUNDING·ε·scale`` added: every bound
    holds against the eigenvalues of the exact (float64) operator; without the term most would not."""
    from hessjax.bounds import OPERATOR_ROUNDING

    spectrum = np.concatenate([[4.0, 3.0, 2.5, 2.0, 1.8], np.random.default_rng(17).uniform(-1, 1.5, 195)])
    a64 = _operator(spectrum, seed=18)
    res = _solve(jnp.asarray(np.random.default_rng(19).standard_normal(200), jnp.float32),
                 jnp.asarray(a64, jnp.float32), k=5, num_iters=40, max_restarts=30, tol=1e-5)
    mu, r = np.asarray(res.eigenvalues, np.float64), np.asarray(res.residuals, np.float64)
    err = np.abs(mu - spectrum[:5])
    eps = float(np.finfo(np.float32).eps)
    assert np.all(err <= error_bounds(mu, r, OPERATOR_ROUNDING * eps * float(res.scale)))
    assert np.sum(err <= error_bounds(mu, r)) < 5  # the float32 operator's rounding is what the term is for


def test_error_bounds_cases():
    mu = np.array([3.0, 2.0, 1.0])
    np.testing.assert_allclose(error_bounds(mu, [0.1, 0.1, 0.1]), [0.01 / 0.8, 0.01 / 0.8, 0.1])
    np.testing.assert_array_equal(error_bounds(mu, [0.5, 0.6, 0.1]), [0.5, 0.6, 0.1])  # gaps ≤ residuals
    assert error_bounds(mu, [np.nan, 0.1, 0.1])[0] == np.inf
    np.testing.assert_array_equal(error_bounds([1.0], [0.25]), [0.25])
    np.testing.assert_allclose(error_bounds(mu, [0.1, 0.1, 0.1], rounding=0.5), [0.5125, 0.5125, 0.6])
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        error_bounds(mu, [0.1, 0.1])


def test_shift_is_exact_in_float64():
    mu = np.float32([0.0151234, 0.0008123])
    theta = shifted(mu, 0.1)
    assert theta.dtype == np.float64
    np.testing.assert_array_equal(theta - 0.2, np.float64(mu) + 0.2 - 0.2)
    assert np.max(np.abs((theta - 0.2) - np.float64(mu)) / np.float64(mu)) < 1e-13
