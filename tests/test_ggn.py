"""The Gauss–Newton matrix G = (1/N) Σ J_nᵀ (diag p_n − p_n p_nᵀ) J_n: its products against the dense
matrix from the Jacobian, its known structure (symmetric, PSD, rank ≤ N(K − 1), label-free, equal to
the Hessian for a model linear in θ), and its eigenvalues against torch's jvp/vjp in float64."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hessjax.ggn import flat_ggn_matvec
from hessjax.hvp import chunk_data, flat_hessian_matvec
from hessjax.models import make_model, mlp


def _dense_ggn(model, params, x):
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacfwd(lambda f: model.apply(unravel(f), x))(flat))  # [N, K, P]
    p = np.asarray(jax.nn.softmax(model.apply(params, x)))
    h = np.einsum("nk,kl->nkl", p, np.eye(p.shape[1])) - p[:, :, None] * p[:, None, :]
    return np.einsum("nkp,nkl,nlq->pq", jac, h, jac) / x.shape[0]


def _products(model):
    """G·v and H·v of ``model``, jitted as the sweep runs them (eager scans dispatch op by op)."""
    ggn = jax.jit(lambda v, p, c: flat_ggn_matvec(v, p, c, apply=model.apply))
    hess = jax.jit(lambda v, p, c: flat_hessian_matvec(v, p, None, 0.0, c, apply=model.apply))
    return ggn, hess


def _problem(model, n, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = model.init(k1, jnp.float64)
    x = jax.random.normal(k2, (n, *model.input_shape), jnp.float64)
    y = jax.random.randint(k3, (n,), 0, model.num_classes)
    v = jax.random.normal(k4, ravel_pytree(params)[0].shape, jnp.float64)
    return params, x, y, v


def test_ggn_products_equal_the_dense_matrix_and_have_its_structure():
    model = mlp((5, 4, 3), "tanh")  # P = 24 + 15 = 39
    params, x, y, v = _problem(model, 7)
    G = _dense_ggn(model, params, x)
    ggn, hess = _products(model)
    got = ggn(v, params, chunk_data(x, y, 3))
    np.testing.assert_allclose(got, G @ np.asarray(v), rtol=1e-12, atol=1e-14)
    evals = np.linalg.eigvalsh(G)
    assert np.allclose(G, G.T, atol=1e-15) and evals.min() > -1e-14 * evals.max()
    assert np.sum(evals > 1e-12 * evals.max()) <= 7 * (3 - 1)  # rank ≤ N(K − 1)
    # labels do not enter G; they do enter H
    y2 = (y + 1) % 3
    np.testing.assert_array_equal(got, ggn(v, params, chunk_data(x, y2, 3)))
    assert not np.allclose(hess(v, params, chunk_data(x, y, 3)), hess(v, params, chunk_data(x, y2, 3)))


def test_ggn_is_the_hessian_of_a_model_linear_in_its_parameters():
    """Softmax regression: z = W x + b is linear in θ, so R = 0 and H = G exactly."""
    model = make_model("linear", lambda p, x: x @ p[0][0].T + p[0][1], input_shape=(6,),
                       shapes=(((4, 6), (4,)),))
    params, x, y, v = _problem(model, 20, seed=3)
    chunks = chunk_data(x, y, 8)
    ggn, hess = _products(model)
    np.testing.assert_allclose(ggn(v, params, chunks), hess(v, params, chunks), rtol=1e-12, atol=1e-15)


def test_ggn_top_k_equals_torch_jvp_vjp_in_float64():
    from hessjax import engine
    from hessjax.bridges import TorchGGN, TorchMLP, top_k_eigsh

    model = mlp((12, 8, 5), "softplus")
    params, x, y, _ = _problem(model, 64, seed=5)
    ref = top_k_eigsh(TorchGGN(TorchMLP.from_params(params, activation="softplus"), np.asarray(x)).numpy_matvec,
                      model.num_params, 4, tol=0.0)
    spectrum = engine.SpectrumConfig(k=4, num_iters=40, tol=1e-10, ggn=True, multiplicity_check=True)
    chunks = chunk_data(x, y, 32)
    a = jax.jit(lambda p: engine.analyze(p, p, 0.0, jax.random.PRNGKey(0), chunks, chunks, chunks, spectrum,
                                         model=model))(params)
    assert bool(np.all(a.extras.ggn.converged))
    np.testing.assert_allclose(a.extras.ggn.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-9 * ref.eigenvalues[0])
    assert np.all(np.abs(np.sum(np.asarray(a.extras.ggn.eigenvectors) * ref.eigenvectors, axis=1)) > 1 - 1e-8)
