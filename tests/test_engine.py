"""The compiled per-batch programs: a λ batch gives each member what it gets alone.

A tiny float64 network on synthetic data keeps this in the quick selection: one batch whose members
behave differently (different training lengths; one converges in the first Lanczos pass, one needs
a restart; one diverges) against each
member run as a batch of one (which takes the un-vmapped path of ``Programs.analyze``), and the
top-k against a dense float64 reference of the data Hessian at the analysed weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hessjax
from hessjax import engine
from hessjax.hvp import chunk_data
from hessjax.training import TrainConfig, initial_params

SIZES = (10, 6, 3)
_NUM_PARAMS = sum((a + 1) * b for a, b in zip(SIZES[:-1], SIZES[1:]))
LAMS = (0.0, 0.3, 1e308)  # a plateau after a few epochs, an early plateau, overflow at the start (diverged)


@pytest.fixture(scope="module")
def problem():
    k1, k2 = jax.random.split(jax.random.PRNGKey(11))
    x = np.asarray(jax.random.uniform(k1, (48, SIZES[0]), jnp.float64))
    y = np.asarray(jax.random.randint(k2, (48,), 0, SIZES[-1]), np.int32)
    anchor = hessjax.init_mlp(jax.random.PRNGKey(5), SIZES, jnp.float64)
    start = initial_params(0, SIZES, jnp.float64)
    programs = engine.Programs(engine.lambda_mesh(), TrainConfig(lr=0.02, batch_size=16, max_epochs=12, patience=2,
                                                                 min_delta=1e-3),
                               engine.SpectrumConfig(k=3, num_iters=32, tol=1e-10, bottom_k=2, trace_probes=4,
                                                     multiplicity_check=False, ggn=True))
    chunks = chunk_data(x, y, 20)
    rep = programs.put_replicated
    return dict(programs=programs, x=rep(x), y=rep(y), chunks=rep(chunks), anchor=rep(anchor), start=rep(start),
                probes=rep(engine.probe_key(0)), raw=(x, y, anchor))


def _run(problem, lams, programs=None):
    p = programs or problem["programs"]
    lam_arr = p.put_split(np.asarray(lams, np.float64))
    keys = p.put_split(engine.lambda_keys(0, lams))
    states = engine.train_batch(p, problem["start"], problem["anchor"], lam_arr, problem["x"], problem["y"],
                                problem["chunks"], 0, 12)
    c = problem["chunks"]
    n = len(lams)
    none = p.put_split(np.zeros((n, 3, _NUM_PARAMS), np.float64))  # cold starts: no warm vectors
    analysis = p.analyze(states.best_params, problem["anchor"], lam_arr, keys, c, c, c, problem["probes"], none, none,
                         p.put_split(np.zeros(n, np.int32)), p.put_split(np.zeros(n, bool)),
                         p.put_split(np.arange(n, dtype=np.int32)))
    return jax.device_get(states), jax.device_get(analysis)


@pytest.fixture(scope="module")
def three_members(problem):
    """The batch of all three members (states, analysis), run once for the tests below."""
    return _run(problem, LAMS)


def test_a_batch_gives_each_member_what_it_gets_alone(problem, three_members):
    states, batch = three_members
    assert list(states.diverged) == [False, False, True]
    assert len(set(int(e) for e in states.epoch[:2])) == 2  # the members stop at different epochs
    restarts = [int(r) for r in batch.eig.num_restarts[:2]]
    assert min(restarts) == 0 < max(restarts)  # one converges in its first pass, the other needs a restart
    for i, lam in enumerate(LAMS):
        s1, a1 = _run(problem, [lam])
        assert int(s1.epoch[0]) == int(states.epoch[i]) and bool(s1.diverged[0]) == bool(states.diverged[i])
        assert int(s1.best_epoch[0]) == int(states.best_epoch[i])
        if states.diverged[i]:
            continue
        np.testing.assert_allclose(a1.weights[0], batch.weights[i], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(a1.eig.eigenvalues[0], batch.eig.eigenvalues[i], rtol=1e-11)
        np.testing.assert_array_equal(a1.eig.converged[0], batch.eig.converged[i])
        np.testing.assert_allclose(a1.extras.bottom.eigenvalues[0], batch.extras.bottom.eigenvalues[i],
                                   atol=1e-11 * abs(float(batch.eig.eigenvalues[i][0])))
        np.testing.assert_allclose(a1.extras.trace.samples[0], batch.extras.trace.samples[i], rtol=1e-11)


def test_the_spectrum_is_the_data_hessians_against_a_dense_reference(problem, three_members):
    """``analyze`` solves the unshifted data Hessian ∇²(mean CE): the penalty's 2λI is the writer's."""
    states, batch = three_members
    x, y, anchor = problem["raw"]
    for i, lam in enumerate(LAMS[:2]):
        params = jax.tree_util.tree_map(lambda a: a[i], states.best_params)
        flat, unravel = ravel_pytree(params)
        dense = jax.hessian(lambda f: hessjax.cross_entropy(unravel(f), x, y))(flat)
        evals = np.linalg.eigvalsh(np.asarray(dense))[::-1]
        mu = batch.eig.eigenvalues[i]
        assert bool(np.all(batch.eig.converged[i]))
        np.testing.assert_allclose(mu, evals[:3], atol=1e-9 * evals[0])
        np.testing.assert_allclose(batch.extras.bottom.eigenvalues[i], evals[::-1][:2], atol=1e-8 * evals[0])
        assert np.max(np.abs(batch.eig.residuals[i])) <= 1e-10 * float(batch.eig.scale[i])
        # the data term's trace estimate is unbiased for tr ∇²(mean CE), without 2λP
        est = batch.extras.trace
        assert abs(float(est.trace[i]) - np.trace(np.asarray(dense))) <= 5 * float(est.stderr[i])
        # the Gauss–Newton part: (1/N) Σ J_nᵀ (diag p − ppᵀ) J_n from the dense Jacobian of the logits
        jac = jax.jacfwd(lambda f: hessjax.apply_mlp(unravel(f), x))(flat)  # [N, K, P]
        p = jax.nn.softmax(hessjax.apply_mlp(params, x))
        h_out = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
        G = np.asarray(jnp.einsum("nkp,nkl,nlq->pq", jac, h_out, jac)) / x.shape[0]
        g = np.linalg.eigvalsh(G)[::-1]
        assert bool(np.all(batch.extras.ggn.converged[i]))
        np.testing.assert_allclose(batch.extras.ggn.eigenvalues[i], g[:3], atol=1e-9 * g[0])
        # the overlaps of the data gradient and the displacement with the top-3 eigenspace, densely
        vecs = np.linalg.eigh(np.asarray(dense))[1][:, ::-1][:, :3]
        g_data = np.asarray(ravel_pytree(jax.grad(hessjax.cross_entropy)(params, x, y))[0])
        disp = np.asarray(flat) - np.asarray(ravel_pytree(anchor)[0])
        for got, u in ((batch.gradient_overlap[i], g_data), (batch.displacement_overlap[i], disp)):
            np.testing.assert_allclose(got, np.sum((vecs.T @ u) ** 2) / (u @ u), rtol=1e-7)


def test_programs_compile_once_per_batch_shape(problem, three_members):
    # three_members compiled the programs for a batch of 3; other λ of the same shape reuse them
    before = problem["programs"].compilations()
    _run(problem, [0.05, 0.15, 0.25])
    assert problem["programs"].compilations() == before


def test_member_products_and_lockstep_give_the_same_results(problem, three_members):
    """By default a member's Hessian is applied only while it extends (the batch executes the sum of
    its members' products); ``member_products=False`` applies the whole batch's at every step until
    its slowest member is done. Same algorithm, same numbers; only what the batch executed differs."""
    base = problem["programs"]
    lockstep = engine.Programs(base.mesh, base.train_config, base.spectrum._replace(member_products=False))
    _, member = three_members
    _, locked = _run(problem, LAMS, lockstep)
    own = [int(n) for n in member.eig.num_matvecs]
    assert [int(n) for n in locked.eig.num_matvecs] == own and own[0] != own[1]
    assert [int(n) for n in member.eig.batch_matvecs] == [sum(own)] * 3
    assert all(int(n) >= 2 * max(own) for n in locked.eig.batch_matvecs)
    np.testing.assert_allclose(member.eig.eigenvalues, locked.eig.eigenvalues, rtol=1e-12)
    np.testing.assert_array_equal(member.eig.converged, locked.eig.converged)
