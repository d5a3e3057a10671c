"""Lanczos and top-k eigenpairs against dense references with prescribed spectra.

Operators are ``A = U diag(λ) Uᵀ`` with a random orthogonal ``U`` (float64 unless stated), passed
to the solver as a traced parameter of ``matvec(v, a) = a @ v``; the solver is jitted once per
static configuration to keep compiles few.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax.lanczos import EigResult, LanczosDecomp, lanczos_tridiag, top_k_eigenpairs

KEY = jax.random.key(7)


def _operator(evals, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    evals = np.asarray(evals, np.float64)
    u, _ = np.linalg.qr(rng.standard_normal((evals.size, evals.size)))
    return ((u * evals) @ u.T).astype(dtype)


def _start(dim, seed=1, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(dim).astype(dtype))


def _dense_matvec(v, a):
    return a @ v


def _shifted_matvec(v, a, sigma):
    return a @ v + sigma * v


@functools.partial(jax.jit, static_argnames=("k", "num_iters", "tol", "max_restarts"))
def _solve(v0, a, key, *, k, num_iters=None, tol=1e-10, max_restarts=30) -> EigResult:
    return top_k_eigenpairs(_dense_matvec, v0, k, num_iters, params=(a,), tol=tol, max_restarts=max_restarts,
                            key=key)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _tridiag(v0, a, *, num_iters) -> LanczosDecomp:
    return lanczos_tridiag(_dense_matvec, v0, num_iters, params=(a,), key=KEY)


def _sign_fixed(vecs):
    """Rows signed so that each row's largest-|entry| is positive (the solver's convention)."""
    peak = vecs[np.arange(len(vecs)), np.argmax(np.abs(vecs), axis=1)]
    return vecs * np.where(peak < 0, -1.0, 1.0)[:, None]


def _relation_error(a, dec: LanczosDecomp):
    q = np.asarray(dec.basis)
    betas = np.asarray(dec.betas)
    t = np.diag(np.asarray(dec.alphas)) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    r = a @ q.T - q.T @ t
    r[:, -1] -= betas[-1] * np.asarray(dec.next_vector)
    return np.abs(r).max(), np.abs(q @ q.T - np.eye(len(q))).max()


def test_lanczos_relation_and_orthonormality():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((60, 60))
    a = (a + a.T) / 2
    v0 = _start(60)
    dec = _tridiag(v0, jnp.asarray(a), num_iters=20)
    scale = np.linalg.norm(a, 2)
    rel, orth = _relation_error(a, dec)
    assert dec.basis.shape == (20, 60) and dec.alphas.shape == dec.betas.shape == (20,)
    assert rel <= 1e-12 * scale and orth <= 1e-12
    nxt = np.asarray(dec.next_vector)
    assert abs(np.linalg.norm(nxt) - 1) <= 1e-12 and np.abs(np.asarray(dec.basis) @ nxt).max() <= 1e-12
    assert np.all(np.asarray(dec.betas) > 1e-3 * scale)
    np.testing.assert_allclose(np.asarray(dec.basis[0]), np.asarray(v0) / np.linalg.norm(v0), atol=1e-15)


def test_shift_invariance_under_jit_and_vmap():
    """Lanczos on ``A + σI`` from the same vector: same basis and β, α shifted by σ (σ traced, batched)."""
    a = jnp.asarray(_operator(np.linspace(-3, 5, 60), seed=4))
    v0 = _start(60, seed=5)
    run = jax.jit(jax.vmap(lambda s: lanczos_tridiag(_shifted_matvec, v0, 20, params=(a, s), key=KEY)))
    sigmas = jnp.asarray([0.0, 2.5])
    dec = run(sigmas)
    ref = _tridiag(v0, a, num_iters=20)  # unbatched, unshifted
    for i, s in enumerate(np.asarray(sigmas)):
        np.testing.assert_allclose(dec.basis[i], ref.basis, atol=1e-9)
        np.testing.assert_allclose(dec.betas[i], ref.betas, rtol=1e-9)
        np.testing.assert_allclose(dec.alphas[i], ref.alphas + s, atol=1e-9)


# A spectrum with a close pair, an exactly degenerate pair, a triple and large negative eigenvalues.
_TOP = np.array([10.0, 9.5, 9.5, 9.0, 8.0, 8.0, 8.0, 7.0, 6.99, 6.5, 6.0, 5.5])
_SPECTRUM = np.concatenate([_TOP, [-20.0, -15.0], np.random.default_rng(11).uniform(-12, 5, 106)])


def test_prescribed_spectrum_with_multiplicities():
    a = _operator(_SPECTRUM, seed=12)
    k = _TOP.size
    res = _solve(_start(a.shape[0], seed=13), jnp.asarray(a), KEY, k=k)
    lam, u = np.linalg.eigh(a)
    lam, u = lam[::-1][:k], u[:, ::-1][:, :k].T
    vals, vecs = np.asarray(res.eigenvalues), np.asarray(res.eigenvectors)
    assert vals.shape == (k,) and vecs.shape == (k, a.shape[0])
    # a converged Ritz value is within its residual (≤ tol·|λ₁| = 1e-9) of an eigenvalue; measured 2.7e-14
    np.testing.assert_allclose(vals, _TOP, atol=1e-10 * 10)  # multiplicities included
    np.testing.assert_allclose(vecs @ vecs.T, np.eye(k), atol=1e-10)
    # well-separated eigenvalues: the vector itself, with the sign convention
    gaps = np.minimum(np.abs(np.diff(_TOP, prepend=np.inf)), np.abs(np.diff(_TOP, append=-np.inf)))
    sep = gaps > 0.1
    assert sep.sum() >= 4
    np.testing.assert_allclose(vecs[sep], _sign_fixed(u)[sep], atol=1e-10 * 10 / 0.1)  # r/gap; measured 6e-15
    # degenerate clusters: the eigenspace
    for value in (9.5, 8.0):
        c = np.isclose(_TOP, value)
        np.testing.assert_allclose(vecs[c].T @ vecs[c], u[c].T @ u[c], atol=1e-8)
    peaks = vecs[np.arange(k), np.argmax(np.abs(vecs), axis=1)]
    assert np.all(peaks > 0)
    recomputed = np.linalg.norm(a @ vecs.T - vecs.T * vals, axis=0)
    np.testing.assert_allclose(np.asarray(res.residuals), recomputed, atol=1e-12 * 10)
    assert np.all(np.asarray(res.residuals) <= 1e-10 * 10) and bool(np.all(res.converged))
    assert res.num_matvecs.dtype == jnp.int32 and res.num_restarts.dtype == jnp.int32


def test_the_probe_finds_copies_hidden_from_the_krylov_space():
    """``v0`` has exactly no component along the second copy of 9 nor along two copies of 7.5.

    For a diagonal operator the Krylov space of ``v0`` then never sees them, even through rounding:
    only the fresh random vectors of the completeness probes can (a probe's vector holds one direction
    of each eigenspace, so the two hidden copies of 7.5 take two probes). Same key → bitwise the same
    result.
    """
    spectrum = np.concatenate([[10.0, 9.0, 9.0, 8.0, 7.5, 7.5, 7.5, 7.0],
                               np.random.default_rng(21).uniform(-5, 6.5, 92)])
    a = jnp.asarray(np.diag(spectrum))
    v0 = np.random.default_rng(22).standard_normal(100)
    v0[[2, 5, 6]] = 0.0
    v0 = jnp.asarray(v0)
    res = _solve(v0, a, KEY, k=8)
    np.testing.assert_allclose(np.asarray(res.eigenvalues), spectrum[:8], atol=1e-10 * 10)  # tol·|λ₁|
    assert bool(np.all(res.converged)) and int(res.num_restarts) > 0
    again = _solve(v0, a, KEY, k=8)
    for x, y in zip(res, again):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    other = _solve(v0, a, jax.random.key(8), k=8)
    np.testing.assert_allclose(np.asarray(other.eigenvalues), spectrum[:8], atol=1e-10 * 10)
    # without the probes the hidden copies stay hidden: what the check is for
    blind = top_k_eigenpairs(_dense_matvec, v0, 8, params=(a,), tol=1e-10, key=KEY, multiplicity_check=False)
    assert not np.allclose(np.asarray(blind.eigenvalues), spectrum[:8], atol=1e-6)
    assert int(blind.num_matvecs) < int(res.num_matvecs)


def test_crowded_spectrum_needs_restarts():
    spectrum = np.concatenate([1.0 - 0.01 * np.arange(6), np.random.default_rng(31).uniform(-1, 0.94, 144)])
    a = _operator(spectrum, seed=32)
    v0 = _start(150, seed=33)
    res = _solve(v0, jnp.asarray(a), KEY, k=6, num_iters=20)
    assert bool(np.all(res.converged)) and int(res.num_restarts) > 0
    np.testing.assert_allclose(np.asarray(res.eigenvalues), spectrum[:6], atol=1e-10)  # tol·|λ₁|
    # one pass only: not converged, and the reported residuals (from the stored products) are the true ones
    one = _solve(v0, jnp.asarray(a), KEY, k=6, num_iters=20, max_restarts=0)
    assert int(one.num_restarts) == 0 and int(one.num_matvecs) == 20  # residuals need no extra products
    vecs, vals = np.asarray(one.eigenvectors), np.asarray(one.eigenvalues)
    recomputed = np.linalg.norm(a @ vecs.T - vecs.T * vals, axis=0)
    np.testing.assert_allclose(np.asarray(one.residuals), recomputed, rtol=1e-8)
    assert recomputed.max() > 1e-6
    np.testing.assert_array_equal(np.asarray(one.converged), recomputed <= 1e-10 * abs(vals[0]))


def test_float32():
    """Float32 top 5 against ``numpy.linalg.eigh`` of the same float32 matrix in float64."""
    eps, norm = float(np.finfo(np.float32).eps), 4.0
    spectrum = np.concatenate([[4.0, 3.5, 3.2, 3.0, 2.8], np.random.default_rng(41).uniform(-3, 2.5, 75)])
    a = jnp.asarray(_operator(spectrum, seed=42, dtype=np.float32))
    res = _solve(_start(80, seed=43, dtype=np.float32), a, KEY, k=5, tol=1e-5)
    assert res.eigenvalues.dtype == res.eigenvectors.dtype == res.residuals.dtype == jnp.float32
    assert bool(np.all(res.converged))
    a64 = np.asarray(a, np.float64)
    lam, u = np.linalg.eigh(a64)
    lam, u = lam[::-1], u[:, ::-1].T
    vals, vecs = np.asarray(res.eigenvalues, np.float64), np.asarray(res.eigenvectors, np.float64)
    # the true residuals, in float64: converged for real (measured ≤ 7.5e-7·|λ₁|), and the reported ones
    # are the true ones up to the float32 rounding of A v (measured within 0.2 eps·‖A‖; bound 2 eps·‖A‖)
    true = np.linalg.norm(a64 @ vecs.T - vecs.T * vals, axis=0)
    assert np.all(true <= 1e-5 * abs(vals[0]))
    assert np.all(np.abs(np.asarray(res.residuals, np.float64) - true) <= 2 * eps * norm)
    # Ritz values from a float32 Krylov basis (these vectors: |VᵀV − I| = 4.5 eps): measured within
    # 4.1 eps·‖A‖ of eigh; bound 16 eps·‖A‖ (r²/gap ≤ 1e-10 is negligible)
    assert np.all(np.abs(vals - lam[:5]) <= 16 * eps * norm)
    np.testing.assert_allclose(vecs @ vecs.T, np.eye(5), atol=20 * eps)  # ~eps·√80 per entry; 4.4× margin
    # eigenvectors, sign convention included: Davis–Kahan ‖v − u‖ ≤ √2·(r + 2 eps·‖A‖)/gap (measured
    # ≤ 0.13 of it; the gaps are 0.2 to 0.5)
    gaps = np.array([np.abs(np.delete(lam, i) - lam[i]).min() for i in range(5)])
    err = np.linalg.norm(vecs - _sign_fixed(u[:5]), axis=1)
    assert np.all(err <= np.sqrt(2) * (true + 2 * eps * norm) / gaps), (err, gaps)


def test_invariant_subspace_of_low_rank_operator():
    """Rank 4 < num_iters: the Krylov space closes; zeros appear in the top k, no NaN."""
    rng = np.random.default_rng(51)
    b = rng.standard_normal((60, 4))
    a = b @ b.T
    lam = np.linalg.eigvalsh(a)[::-1]
    res = _solve(_start(60, seed=52), jnp.asarray(a), KEY, k=7, num_iters=20)
    vals = np.asarray(res.eigenvalues)
    assert np.all(np.isfinite(vals)) and np.all(np.isfinite(np.asarray(res.eigenvectors)))
    np.testing.assert_allclose(vals, lam[:7], atol=1e-10 * lam[0])
    assert bool(np.all(res.converged))
    dec = _tridiag(_start(60, seed=52), jnp.asarray(a), num_iters=20)
    rel, orth = _relation_error(a, dec)
    assert np.all(np.isfinite(np.asarray(dec.basis))) and rel <= 1e-12 * lam[0] and orth <= 1e-12
    assert np.any(np.asarray(dec.betas) == 0)


def test_jit_compiles_once_and_vmaps_over_params():
    """``λ`` in ``params``: one trace for two different batches of ``λ``; eigenvalues shift by ``2λ``."""
    traces = []

    def matvec(v, a, lam):
        traces.append(1)
        return a @ v + 2 * lam * v

    spectrum = np.concatenate([[3.0, 2.0, 1.5, 1.0], np.random.default_rng(61).uniform(-2, 0.5, 36)])
    a = jnp.asarray(_operator(spectrum, seed=62))
    v0 = _start(40, seed=63)
    solve = jax.jit(jax.vmap(
        lambda lam: top_k_eigenpairs(matvec, v0, 4, params=(a, lam), tol=1e-10, key=KEY)))
    n_traces = []
    for lams in (jnp.asarray([0.0, 0.5]), jnp.asarray([0.25, 1.5])):
        res = solve(lams)
        n_traces.append(len(traces))
        expected = spectrum[:4][None, :] + 2 * np.asarray(lams)[:, None]
        np.testing.assert_allclose(np.asarray(res.eigenvalues), expected, atol=1e-9)
        assert bool(np.all(res.converged))
    assert n_traces[0] > 0 and n_traces[1] == n_traces[0]


def test_bad_arguments_raise():
    a = jnp.eye(10)
    v0 = jnp.ones(10)
    cases = [
        (dict(k=0), "k=0"),
        (dict(k=10), "k=10"),
        (dict(k=2.0), "k=2.0"),
        (dict(k=True), "k=True"),
        (dict(k=3, num_iters=3), "num_iters=3"),
        (dict(k=3, num_iters=11), "num_iters=11"),
        (dict(k=3, max_restarts=-1), "max_restarts=-1"),
        (dict(k=3, tol=-1.0), "tol=-1.0"),
        (dict(k=3, params=a), "params"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("params", (a,))
        with pytest.raises(ValueError, match=message):
            top_k_eigenpairs(_dense_matvec, v0, **kwargs)
    with pytest.raises(ValueError, match="v0"):
        top_k_eigenpairs(_dense_matvec, jnp.ones((2, 5)), 1, params=(a,))
    with pytest.raises(ValueError, match="v0"):
        top_k_eigenpairs(_dense_matvec, jnp.ones(10, jnp.int32), 1, params=(a,))
    with pytest.raises(ValueError, match="matvec"):
        top_k_eigenpairs(None, v0, 1)
    with pytest.raises(ValueError, match="matvec returned shape"):
        top_k_eigenpairs(lambda v: v[:5], v0, 1)
    with pytest.raises(ValueError, match="num_iters=0"):
        lanczos_tridiag(_dense_matvec, v0, 0, params=(a,))


def test_a_batch_applies_each_members_operator_only_while_it_extends():
    """Three members that need very different numbers of products (a well separated top, a crowded
    one, a crowded one in a small basis): with ``param_axes`` each member's operator is applied only
    while it extends — the products the batch executed, counted at the operator, are the sum of the
    members' own — and each member's result is what it gets alone; without, every member's operator
    runs until the slowest member is done."""
    from hessjax.lanczos import top_k_eigenpairs_batched

    dim, k = 120, 4
    rng = np.random.default_rng(3)
    tops = [np.array([10.0, 8, 6, 4]), 1.0 - 0.002 * np.arange(4), 1.0 - 0.004 * np.arange(4)]
    mats = np.stack([_operator(np.concatenate([t, rng.uniform(-1, 0.9 * t[-1], dim - k)]), seed=i)
                     for i, t in enumerate(tops)])
    v0 = jnp.asarray(rng.standard_normal((3, dim)))
    keys = jnp.stack([jax.random.key(i) for i in range(3)])
    applied = []

    def matvec(v, a):  # [b, P] rows of the members the solver asks for
        jax.debug.callback(lambda n: applied.append(int(n)), v.shape[0])
        return jnp.einsum("bij,bj->bi", a, v)

    def solve(axes, live=None):
        applied.clear()
        res = jax.jit(lambda v, a: top_k_eigenpairs_batched(matvec, v, k, 16, params=(a,), tol=1e-10, keys=keys,
                                                            param_axes=axes, live=live))(v0, jnp.asarray(mats))
        jax.block_until_ready(res)
        jax.effects_barrier()
        return res, sum(applied)

    lockstep, executed_lockstep = solve(None)
    member, executed_member = solve((0,))
    own = [int(n) for n in member.num_matvecs]
    assert len(set(own)) == 3  # the members do need different numbers of products
    assert executed_member == sum(own)
    assert [int(n) for n in member.batch_matvecs] == [executed_member] * 3
    # lockstep: every member's operator at every step of the batch (its passes end with the slowest)
    assert executed_lockstep >= 3 * max(own) > executed_member
    assert [int(n) for n in lockstep.batch_matvecs] == [executed_lockstep] * 3
    assert [int(n) for n in lockstep.num_matvecs] == own
    for i in range(3):
        alone = _solve(v0[i], jnp.asarray(mats[i]), keys[i], k=k, num_iters=16, tol=1e-10)
        evals = np.linalg.eigvalsh(mats[i])[::-1][:k]
        assert bool(np.all(member.converged[i]))
        np.testing.assert_allclose(np.asarray(member.eigenvalues[i]), evals, atol=1e-12)
        np.testing.assert_allclose(np.asarray(member.eigenvalues[i]), np.asarray(alone.eigenvalues), atol=1e-13)
        assert int(alone.num_matvecs) == own[i]
    # a member left out (an idle member padding a batch) is done from the start: no products, zeros
    partial, executed_partial = solve((0,), jnp.asarray([True, False, True]))
    assert executed_partial == own[0] + own[2] and int(partial.num_matvecs[1]) == 0
    assert not np.any(np.asarray(partial.eigenvalues[1])) and not np.any(np.asarray(partial.converged[1]))
    np.testing.assert_array_equal(np.asarray(partial.eigenvalues[::2]), np.asarray(member.eigenvalues[::2]))
    with pytest.raises(ValueError, match="param_axes"):
        top_k_eigenpairs_batched(matvec, v0, k, params=(jnp.asarray(mats),), param_axes=(0, None))
    with pytest.raises(ValueError, match="leading axis"):
        top_k_eigenpairs_batched(matvec, v0, k, params=(jnp.asarray(mats[:2]),), param_axes=(0,))
