"""Trace, spectral density and bottom-k eigenpairs against dense float64 references.

Two kinds of operators: ``A = U diag(λ) Uᵀ`` with a prescribed spectrum (``matvec(v, a) = a @ v``),
and the Hessian of ``L_eff`` of a tiny MLP through :func:`hessjax.hvp.flat_hessian_matvec` with its
sweep parameters ``(params, anchor, lam, chunks)``, whose dense reference is ``jax.hessian`` in float64.
Every probe comes from a fixed key, so the statistical checks (within 5σ) are deterministic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hessjax
from hessjax.hvp import chunk_data, dataset_loss, flat_hessian_matvec
from hessjax.density import density_on_grid
from hessjax.spectral import (SLQResult, TraceEstimate, bottom_k_eigenpairs, hutchinson_trace,
                              probe_vectors, slq_density, slq_estimate)

SIZES = (6, 5, 4, 3)  # P = 35 + 24 + 15 = 74
F64 = jnp.float64
EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def _operator(evals, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    evals = np.asarray(evals, np.float64)
    u, _ = np.linalg.qr(rng.standard_normal((evals.size, evals.size)))
    return ((u * evals) @ u.T).astype(dtype)


def _dense_matvec(v, a):
    return a @ v


def _quadratic_forms(z, a):
    """``zᵢᵀ A zᵢ`` per row of ``z`` in float64, and ``Σ |zᵢ| |A| |zᵢ|``, the scale of its rounding error."""
    z, a = np.asarray(z, np.float64), np.asarray(a, np.float64)
    return np.sum(z * (z @ a), axis=1), np.sum(np.abs(z) * (np.abs(z) @ np.abs(a)), axis=1)


@pytest.fixture(scope="module")
def mlp():
    """Tiny MLP problem: operator params at λ = 0 and the dense Hessian of the data term (float64)."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    params = hessjax.init_mlp(k1, SIZES, F64)
    anchor = hessjax.init_mlp(k2, SIZES, F64)
    x = jax.random.uniform(k3, (29, SIZES[0]), F64)
    y = jax.random.randint(k4, (29,), 0, SIZES[-1])
    chunks = chunk_data(x, y, 8)  # three full chunks and a remainder of 5
    flat, unravel = ravel_pytree(params)
    h0 = np.asarray(jax.jit(jax.hessian(lambda z: dataset_loss(unravel(z), anchor, 0.0, chunks)))(flat))
    return params, anchor, chunks, (h0 + h0.T) / 2


# --------------------------------------------------------------------------------------------- Hutchinson


@functools.partial(jax.jit, static_argnames=("num_probes", "batch_size"))
def _mlp_trace(params, anchor, lams, chunks, key, *, num_probes, batch_size=None) -> TraceEstimate:
    dim = ravel_pytree(params)[0].shape[0]
    return jax.vmap(lambda lam: hutchinson_trace(flat_hessian_matvec, key, num_probes, dim, F64,
                                                 params=(params, anchor, lam, chunks), batch_size=batch_size))(lams)


def test_hutchinson_on_mlp_hessian_within_5_sigma_and_vmaps_over_lambda(mlp):
    params, anchor, chunks, h0 = mlp
    p = h0.shape[0]
    lams = jnp.asarray([0.0, 0.1, 0.7])
    est = _mlp_trace(params, anchor, lams, chunks, jax.random.key(3), num_probes=64)
    assert est.samples.shape == (3, 64) and est.trace.shape == est.stderr.shape == (3,)
    assert est.samples.dtype == F64
    z = probe_vectors(jax.random.key(3), 64, p, F64)
    for i, lam in enumerate(np.asarray(lams)):
        h = h0 + 2 * lam * np.eye(p)
        # every sample is zᵢᵀ H zᵢ for the documented probes, and the standard error is that of these
        # samples (measured: within 2.1 eps·Σ|z||H||z| and 0.2 eps·max Σ|z||H||z|/√N; bounds 16 eps)
        ref, scale = _quadratic_forms(z, h)
        assert np.all(np.abs(np.asarray(est.samples[i]) - ref) <= 16 * EPS64 * scale)
        assert abs(float(est.stderr[i]) - np.std(ref, ddof=1) / 8) <= 16 * EPS64 * scale.max() / 8
        exact = np.linalg.eigvalsh(h).sum()
        assert abs(float(est.trace[i]) - exact) <= 5 * float(est.stderr[i])
    # the penalty adds exactly zᵀ(2λI)z = 2λP to every sample
    np.testing.assert_allclose(est.samples[1:] - est.samples[0], (2 * lams[1:, None] * p) * np.ones((1, 64)),
                               rtol=1e-11)
    # vmap over λ equals a Python loop, and a second call with other λ does not recompile
    single = _mlp_trace(params, anchor, lams[2:], chunks, jax.random.key(3), num_probes=64)
    np.testing.assert_allclose(single.samples[0], est.samples[2], rtol=1e-12)
    _mlp_trace(params, anchor, lams + 0.5, chunks, jax.random.key(3), num_probes=64)
    assert _mlp_trace._cache_size() == 2  # one per λ-batch shape (3 and 1), not one per λ value


def test_hutchinson_is_unbiased_with_the_exact_variance():
    rng = np.random.default_rng(4)
    b = rng.standard_normal((20, 20))
    a = jnp.asarray(b + b.T)
    a_np = np.asarray(a)
    n = 20_000
    est = jax.jit(lambda a: hutchinson_trace(_dense_matvec, jax.random.key(5), n, 20, F64, params=(a,),
                                             batch_size=1000))(a)
    var1 = 2 * (np.sum(a_np**2) - np.sum(np.diag(a_np) ** 2))  # Var(zᵀAz) for Rademacher z
    assert abs(float(est.trace) - np.trace(a_np)) <= 5 * np.sqrt(var1 / n)
    np.testing.assert_allclose(float(est.stderr) ** 2 * n, var1, rtol=0.05)
    # the standard error is std(samples, ddof=1)/√N exactly (ddof=0 would be off by 2.5e-5)
    samples = np.asarray(est.samples)
    np.testing.assert_allclose(float(est.stderr), np.std(samples, ddof=1) / np.sqrt(n), rtol=1e-12)
    # each sample is zᵀAz for the documented probes, whatever the batching
    z = np.asarray(probe_vectors(jax.random.key(5), 50, 20, F64))
    assert set(np.unique(z)) == {-1.0, 1.0}
    np.testing.assert_allclose(est.samples[:50], np.einsum("ip,pq,iq->i", z, a_np, z), rtol=1e-12)
    for batch in (1, 7):
        small = hutchinson_trace(_dense_matvec, jax.random.key(5), 50, 20, F64, params=(a,), batch_size=batch)
        np.testing.assert_allclose(small.samples, est.samples[:50], rtol=1e-12)
    one = hutchinson_trace(_dense_matvec, jax.random.key(5), 1, 20, F64, params=(a,))
    assert one.samples.shape == (1,) and np.isnan(float(one.stderr))
    np.testing.assert_allclose(float(one.trace), est.samples[0], rtol=1e-12)


def test_hutchinson_float32():
    a = jnp.asarray(_operator(np.linspace(0.5, 2.0, 16), seed=2, dtype=np.float32))
    est = hutchinson_trace(_dense_matvec, jax.random.key(0), 256, 16, jnp.float32, params=(a,))
    assert est.trace.dtype == est.samples.dtype == jnp.float32
    # each float32 sample against zᵀAz in float64 on the same float32 A: a 16-term matvec and a 16-term
    # dot product, rounding ≲ eps·√16·Σ|z||A||z| typically; measured 0.76 eps·Σ|z||A||z|, bound 4 eps (5×)
    ref, scale = _quadratic_forms(probe_vectors(jax.random.key(0), 256, 16, jnp.float64), a)
    assert np.all(np.abs(np.asarray(est.samples, np.float64) - ref) <= 4 * EPS32 * scale)
    # the mean and the standard error move by at most the samples' error (measured: 0.4 eps·max Σ|z||A||z|
    # and 0.03 eps·max Σ|z||A||z|/√N; bounds 4 eps·max Σ|z||A||z|, and that over √N for the standard error)
    assert abs(float(est.trace) - ref.mean()) <= 4 * EPS32 * scale.max()
    assert abs(float(est.stderr) - np.std(ref, ddof=1) / 16) <= 4 * EPS32 * scale.max() / 16
    assert abs(float(est.trace) - np.linspace(0.5, 2.0, 16).sum()) <= 5 * float(est.stderr)


# --------------------------------------------------------------------------------------------- SLQ


@functools.partial(jax.jit, static_argnames=("num_probes", "num_iters"))
def _dense_slq(a, key, *, num_probes, num_iters) -> SLQResult:
    return slq_density(_dense_matvec, key, num_probes, num_iters, a.shape[0], a.dtype, params=(a,), batch_size=4)


def test_slq_moments_per_probe_and_within_5_sigma():
    evals = np.concatenate([np.linspace(-0.5, 1.0, 34), [4.0, 6.0, 9.0, 9.5, 12.0, 20.0]])  # bulk + outliers
    n, m, num = evals.size, 12, 40
    a = _operator(evals, seed=1)
    res = _dense_slq(jnp.asarray(a), jax.random.key(11), num_probes=num, num_iters=m)
    nodes, weights = np.asarray(res.nodes), np.asarray(res.weights)
    assert nodes.shape == weights.shape == (num, m)
    assert np.all(np.diff(nodes, axis=1) >= 0)  # ascending (weights are squares; p = 0 below sums them to 1)
    q = np.asarray(probe_vectors(jax.random.key(11), num, n, F64)) / np.sqrt(n)
    for p in (0, 1, 2):
        per_probe = np.sum(weights * nodes**p, axis=1)
        # Gauss quadrature with m nodes is exact for degree <= 2m - 1: Σ w θ^p = qᵀ A^p q
        exact = np.einsum("ip,pq,iq->i", q, np.linalg.matrix_power(a, p), q)
        np.testing.assert_allclose(per_probe, exact, rtol=1e-10, atol=1e-12)
        est = slq_estimate(res, lambda t, p=p: t**p, n)
        np.testing.assert_allclose(est.samples, n * exact, rtol=1e-10, atol=1e-12 * n)  # P · qᵀAᵖq = zᵀAᵖz
        assert abs(float(est.trace) - np.sum(evals**p)) <= 5 * float(est.stderr) + 1e-9 * n
    # Ritz values lie inside the spectrum and the top one has converged to λ_max
    assert nodes.min() >= evals.min() - 1e-10 and nodes.max() <= evals.max() + 1e-10
    np.testing.assert_allclose(nodes[:, -1], evals.max(), rtol=1e-8)


def test_slq_is_exact_per_probe_with_m_equal_to_n():
    evals = np.array([-2.0, -0.3, 0.0, 0.1, 0.5, 0.5, 1.0, 3.0, 7.0, 7.5])  # a double eigenvalue: a breakdown
    n = evals.size
    a = _operator(evals, seed=3)
    res = _dense_slq(jnp.asarray(a), jax.random.key(2), num_probes=5, num_iters=n)
    nodes, weights = np.asarray(res.nodes), np.asarray(res.weights)
    q = np.asarray(probe_vectors(jax.random.key(2), 5, n, F64)) / np.sqrt(n)
    w_, u = np.linalg.eigh(a)
    for f in (np.exp, np.abs, lambda t: np.sin(3 * t)):
        fa = (u * f(w_)) @ u.T
        np.testing.assert_allclose(np.sum(weights * f(nodes), axis=1), np.einsum("ip,pq,iq->i", q, fa, q),
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-13)
    heavy = nodes[weights > 1e-10]  # nodes with weight are eigenvalues
    assert np.min(np.abs(heavy[:, None] - evals[None, :]), axis=1).max() <= 1e-9


def test_slq_on_mlp_hessian_shifts_by_2_lambda_and_matches_moments(mlp):
    params, anchor, chunks, h0 = mlp
    p = h0.shape[0]

    @jax.jit
    def run(lams):
        return jax.vmap(lambda lam: slq_density(flat_hessian_matvec, jax.random.key(8), 6, 20, p, F64,
                                                params=(params, anchor, lam, chunks), batch_size=3))(lams)

    res = run(jnp.asarray([0.0, 0.25]))
    nodes, weights = np.asarray(res.nodes), np.asarray(res.weights)
    # Krylov spaces do not see a shift: same weights, nodes moved by exactly 2λ
    np.testing.assert_allclose(weights[1], weights[0], atol=1e-9)
    np.testing.assert_allclose(nodes[1], nodes[0] + 0.5, atol=1e-9)
    q = np.asarray(probe_vectors(jax.random.key(8), 6, p, F64)) / np.sqrt(p)
    for k in (1, 2):
        per_probe = np.sum(weights[0] * nodes[0] ** k, axis=1)
        np.testing.assert_allclose(per_probe, np.einsum("ip,pq,iq->i", q, np.linalg.matrix_power(h0, k), q),
                                   rtol=1e-9, atol=1e-12)
        est = slq_estimate(SLQResult(res.nodes[0], res.weights[0]), lambda t, k=k: t**k, p)
        assert abs(float(est.trace) - np.sum(np.linalg.eigvalsh(h0) ** k)) <= 5 * float(est.stderr)


def test_density_on_grid_definition_and_normalisation():
    rng = np.random.default_rng(6)
    nodes = np.sort(rng.uniform(-1, 3, (4, 7)), axis=1)
    weights = rng.dirichlet(np.ones(7), 4)
    sigma = 0.15
    # a grid holding all the mass, and one cut at 1.5 that holds only part of it: there the division by
    # the trapezoid integral is what makes the result a density
    for grid, mass in ((np.linspace(-2.0, 4.0, 601), (1.0, 1.0)), (np.linspace(-2.0, 1.5, 351), (0.3, 0.9))):
        phi = np.asarray(density_on_grid(jnp.asarray(nodes), jnp.asarray(weights), jnp.asarray(grid), sigma))
        gauss = np.exp(-0.5 * ((grid[:, None] - nodes.reshape(-1)[None]) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
        ref = gauss @ weights.reshape(-1) / 4
        assert mass[0] - 1e-6 <= np.trapezoid(ref, grid) <= mass[1] + 1e-6
        np.testing.assert_allclose(phi, ref / np.trapezoid(ref, grid), rtol=1e-12)
        assert abs(np.trapezoid(phi, grid) - 1) <= 1e-12
    # no mass on the grid at all: zeros, not NaN
    far = np.asarray(density_on_grid(jnp.asarray(nodes), jnp.asarray(weights), jnp.linspace(100.0, 101.0, 11), sigma))
    np.testing.assert_array_equal(far, np.zeros(11))


def test_slq_density_approaches_the_true_density():
    """SLQ with 10 Lanczos steps per probe against numpy: per probe, the exact quadrature
    ``Σᵢ (uᵢᵀq)² g(t − λᵢ)`` of ``numpy.linalg.eigh``; over 400 probes, the true density within its
    sampling error."""
    evals = np.concatenate([np.linspace(0.0, 1.0, 30), [3.0, 3.2, 5.0]])
    n, num, sigma = evals.size, 400, 0.3
    a = _operator(evals, seed=5)
    res = _dense_slq(jnp.asarray(a), jax.random.key(9), num_probes=num, num_iters=10)
    grid = np.linspace(-1.0, 6.5, 751)
    est = np.asarray(density_on_grid(res.nodes, res.weights, jnp.asarray(grid), sigma))

    def l1(f, g):
        return np.trapezoid(np.abs(f / np.trapezoid(f, grid) - g / np.trapezoid(g, grid)), grid)

    def kernel(nodes):
        return np.exp(-0.5 * ((grid[:, None] - nodes[None]) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)

    w, u = np.linalg.eigh(a)
    q = np.asarray(probe_vectors(jax.random.key(9), num, n, F64)) / np.sqrt(n)
    per_probe = (q @ u) ** 2 @ kernel(w).T  # [N, G]: each probe's exact (m = n) quadrature
    # 10 Gauss nodes integrate a σ = 0.3 Gaussian of a spectrum in [0, 5] almost exactly: measured L1
    # 4.9e-8, bound 5e-7; wrong nodes or weights are off by O(0.1)
    assert l1(est, per_probe.mean(0)) <= 5e-7
    # the probes' average against the true density: its L1 distance is the sampling error of 400 probes,
    # expected ≈ √(2/π) ∫ sd(t) dt / √N for Gaussian errors with the per-probe sd(t) (0.0114 here;
    # measured 0.0115). Bound 2× that. For scale: a constant density scores 1.29, equal node weights 0.42,
    # the outliers dropped 0.18, the spectrum shifted by 0.05 scores 0.09, the first 10 probes 0.11.
    expected = np.sqrt(2 / np.pi) * np.trapezoid(per_probe.std(0, ddof=1), grid) / np.sqrt(num)
    assert l1(est, kernel(evals).mean(1)) <= 2 * expected


# --------------------------------------------------------------------------------------------- bottom k


@functools.partial(jax.jit, static_argnames=("k", "num_iters"))
def _dense_bottom(v0, a, shift, *, k, num_iters=None):
    return bottom_k_eigenpairs(_dense_matvec, v0, k, num_iters, params=(a,), shift=shift, tol=1e-10,
                               key=jax.random.key(1))


def test_bottom_k_against_eigh():
    evals = np.concatenate([[-3.0, -2.0, -1.9, -0.5, -0.5], np.linspace(0.0, 10.0, 55)])
    a = _operator(evals, seed=7)
    v0 = jnp.asarray(np.random.default_rng(1).standard_normal(evals.size))
    res = _dense_bottom(v0, jnp.asarray(a), 10.0, k=6)
    w, u = np.linalg.eigh(a)
    mu = np.asarray(res.eigenvalues)
    np.testing.assert_allclose(mu, w[:6], atol=1e-9)
    assert np.all(np.diff(mu) >= 0) and bool(np.all(res.converged))
    vecs = np.asarray(res.eigenvectors)
    np.testing.assert_allclose(np.linalg.norm(a @ vecs.T - vecs.T * mu, axis=0), res.residuals, atol=1e-12)
    assert float(np.max(res.residuals)) <= 1e-9 * 13
    np.testing.assert_allclose(np.abs(vecs[:3] @ u[:, :3]), np.eye(3), atol=1e-7)  # simple eigenvalues
    # the double eigenvalue -0.5: both copies found, spanning its eigenspace
    proj = vecs[3:5] @ u[:, 3:5]
    np.testing.assert_allclose(proj @ proj.T, np.eye(2), atol=1e-7)


def test_bottom_k_on_mlp_hessian_vmapped_over_lambda(mlp):
    params, anchor, chunks, h0 = mlp
    p = h0.shape[0]
    w, u = np.linalg.eigh(h0)
    v0 = jnp.asarray(np.random.default_rng(2).standard_normal(p))

    @jax.jit
    def run(lams):
        return jax.vmap(lambda lam: bottom_k_eigenpairs(
            flat_hessian_matvec, v0, 3, 40, params=(params, anchor, lam, chunks), shift=w[-1] + 2 * lam,
            tol=1e-9, key=jax.random.key(4)))(lams)

    lams = np.array([0.0, 0.05])
    res = run(jnp.asarray(lams))
    norm = abs(w).max()
    gaps = np.array([np.abs(np.delete(w, i) - w[i]).min() for i in range(3)])  # 1.4e-3 at the smallest
    for i, lam in enumerate(lams):
        mu, vecs = np.asarray(res.eigenvalues[i]), np.asarray(res.eigenvectors[i])
        h = h0 + 2 * lam * np.eye(p)
        true = np.linalg.norm(h @ vecs.T - vecs.T * mu, axis=0)
        assert bool(np.all(res.converged[i])) and np.all(true <= 1e-9 * (w[-1] - w[0]))
        np.testing.assert_allclose(np.asarray(res.residuals[i]), true, rtol=0, atol=8 * EPS64 * norm)
        # reported residuals measured within 0.04 eps·‖H‖ of the true ones; eigenvalues within 0.6 eps·‖H‖
        # (bound 8 eps·‖H‖ + r²/gap); eigenvectors within 0.18 of the Davis–Kahan bound (r + 8 eps·‖H‖)/gap
        assert np.all(np.abs(mu - w[:3] - 2 * lam) <= 8 * EPS64 * norm + true**2 / gaps)
        signs = np.sign(np.sum(vecs * u[:, :3].T, axis=1))[:, None]
        assert np.all(np.linalg.norm(vecs - signs * u[:, :3].T, axis=1) <= (true + 8 * EPS64 * norm) / gaps)


def test_bottom_k_float32():
    evals = np.linspace(-1.0, 4.0, 40)
    a = jnp.asarray(_operator(evals, seed=8, dtype=np.float32))
    v0 = jnp.ones(40, jnp.float32)
    res = bottom_k_eigenpairs(_dense_matvec, v0, 2, params=(a,), shift=4.0, tol=1e-5)
    assert res.eigenvalues.dtype == jnp.float32
    # against eigh of the same float32 matrix in float64 (its eigenvalues are ≤ 0.07 eps·‖A‖ from `evals`)
    w, u = np.linalg.eigh(np.asarray(a, np.float64))
    mu, vecs = np.asarray(res.eigenvalues, np.float64), np.asarray(res.eigenvectors, np.float64)
    true = np.linalg.norm(np.asarray(a, np.float64) @ vecs.T - vecs.T * mu, axis=0)
    assert bool(np.all(res.converged)) and np.all(true <= 1e-5 * (4.0 - mu[0]))  # converged for real
    # the Rayleigh quotient vᵀAv of a float32 vector, 40-term dot products: a few eps·‖A‖ at most
    # (measured 0.2 eps·‖A‖, bound 2 eps·‖A‖; r²/gap ≈ 3e-11 is negligible)
    assert np.all(np.abs(mu - w[:2]) <= 2 * EPS32 * 4.0)
    # eigenvectors: Davis–Kahan, ‖v − u‖ ≤ √2·(r + 2 eps·‖A‖)/gap (measured 0.09 of it; gap 0.128)
    gap = w[2] - w[1]
    signs = np.sign(np.sum(vecs * u[:, :2].T, axis=1))[:, None]
    assert np.all(np.linalg.norm(vecs - signs * u[:, :2].T, axis=1) <= np.sqrt(2) * (true + 2 * EPS32 * 4.0) / gap)


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hutchinson_trace(_dense_matvec, jax.random.key(0), 0, 4, F64, params=(jnp.eye(4),)), "num_probes=0"),
        (lambda: hutchinson_trace(_dense_matvec, jax.random.key(0), 2.0, 4, F64, params=(jnp.eye(4),)),
         "num_probes=2.0"),
        (lambda: hutchinson_trace(_dense_matvec, jax.random.key(0), 2, 4, jnp.int32, params=(jnp.eye(4),)),
         "dtype=int32"),
        (lambda: hutchinson_trace(_dense_matvec, jax.random.key(0), 2, 4, F64, params=jnp.eye(4)), "params"),
        (lambda: hutchinson_trace(_dense_matvec, jax.random.key(0), 2, 4, F64, batch_size=True), "batch_size"),
        (lambda: slq_density(_dense_matvec, jax.random.key(0), 2, 5, 4, F64, params=(jnp.eye(4),)), "num_iters=5"),
        (lambda: density_on_grid(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.linspace(0, 1, 5), 0.0), "sigma=0.0"),
        (lambda: density_on_grid(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.linspace(0, 1, 5), 0.1), "same shape"),
        (lambda: bottom_k_eigenpairs(_dense_matvec, jnp.ones(4), 4, params=(jnp.eye(4),)), "k=4"),
    ],
)
def test_refusals_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
