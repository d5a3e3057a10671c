"""The MLP, the loss and the HVP against dense float64 references and their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hessjax
from hessjax.models import FlaxMLP, from_flax_variables, to_flax_variables
from hessjax.hvp import dataset_cross_entropy

SIZES = (6, 5, 4, 3)  # 35 + 24 + 15 = 74 parameters
EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)
# float64 against references (numpy forward pass, jax.grad, jax.hessian), relative: measured ≤ 1.5 eps
# (logits 1.0, losses ≤ 1.5, gradients ≤ 0.33, Hessian products ≤ 1.2 eps), bound 8 eps (≥ 5×)
TOL64 = 8 * EPS64


@pytest.fixture(scope="module")
def problem():
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    params = hessjax.init_mlp(k1, SIZES, jnp.float64)
    anchor = hessjax.init_mlp(k2, SIZES, jnp.float64)
    x = jax.random.uniform(k3, (23, SIZES[0]), jnp.float64)
    y = jax.random.randint(k4, (23,), 0, SIZES[-1])
    v = hessjax.init_mlp(k5, SIZES, jnp.float64)
    return params, anchor, x, y, v


def dense_hessian(f, params):
    flat, unravel = ravel_pytree(params)
    return jax.jit(jax.hessian(lambda z: f(unravel(z))))(flat)


def test_params_layout_matches_torch_linear():
    params = hessjax.init_mlp(jax.random.PRNGKey(1))
    assert [(w.shape, b.shape) for w, b in params] == [((128, 784), (128,)), ((128, 128), (128,)), ((10, 128), (10,))]
    flat, _ = ravel_pytree(params)
    assert flat.shape == (118_282,) and flat.dtype == jnp.float32
    # parameters_to_vector order: layer 0 weight (row-major), layer 0 bias, layer 1 weight, ...
    np.testing.assert_array_equal(flat[:784], params[0][0][0])
    np.testing.assert_array_equal(flat[128 * 784: 128 * 784 + 128], params[0][1])


def test_init_distribution_is_torch_default():
    """Every weight and bias ``U(-a, a)``, ``a = 1/√fan_in``: bounds, second moment and a KS test."""
    scipy_stats = pytest.importorskip("scipy.stats")
    params = hessjax.init_mlp(jax.random.PRNGKey(2), (784, 128, 128, 10), jnp.float64)
    biases = []
    for (w, b), fan_in in zip(params, (784, 128, 128)):
        bound = 1 / np.sqrt(fan_in)
        w, b = np.asarray(w) / bound, np.asarray(b) / bound  # U(-1, 1) if right
        assert np.all(np.abs(w) <= 1) and np.all(np.abs(b) <= 1)
        # E[u²] = 1/3 with sd √(4/45)/√n per mean of n: within 5 sd (1.4% for 100k weights, 12% for 1280)
        assert abs(np.mean(w**2) - 1 / 3) <= 5 * np.sqrt(4 / 45 / w.size)
        assert scipy_stats.kstest(w.ravel(), "uniform", args=(-1, 2)).pvalue > 1e-3
        biases.append(b)
    # the 266 biases pooled (10 alone would not tell zeros from U(-a, a))
    b = np.concatenate(biases)
    assert abs(np.mean(b**2) - 1 / 3) <= 5 * np.sqrt(4 / 45 / b.size)
    assert scipy_stats.kstest(b, "uniform", args=(-1, 2)).pvalue > 1e-3


def test_apply_mlp_definition(problem):
    params, _, x, _, _ = problem
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ np.asarray(w).T + np.asarray(b)
        if i < len(params) - 1:
            h = 1 / (1 + np.exp(-h))
    np.testing.assert_allclose(hessjax.apply_mlp(params, x), h, rtol=TOL64)


def test_effective_loss_definition(problem):
    params, anchor, x, y, _ = problem
    logits = np.asarray(hessjax.apply_mlp(params, x))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y)), np.asarray(y)].mean()
    dist = np.sum((np.asarray(ravel_pytree(params)[0]) - np.asarray(ravel_pytree(anchor)[0])) ** 2)
    np.testing.assert_allclose(hessjax.effective_loss(params, anchor, 0.37, x, y), ce + 0.37 * dist, rtol=TOL64)


def test_float64_lambda_does_not_promote_float32_model(problem):
    params, anchor, x, y, _ = problem
    p32, a32, x32 = jax.tree_util.tree_map(lambda t: t.astype(jnp.float32), (params, anchor, x))
    out = hessjax.effective_loss(p32, a32, np.float64(0.01), x32, y)
    assert out.dtype == jnp.float32
    # and λ still acts: the float64 loss of the same float32 values (the penalty is 9% of it), within the
    # rounding of a float32 mean of 23 log-sum-exps (measured 0.27 eps, bound 3 eps)
    f64 = jax.tree_util.tree_map(lambda t: t.astype(jnp.float64), (p32, a32, x32))
    ref = float(hessjax.effective_loss(*f64[:2], 0.01, f64[2], y))
    assert abs(float(out) - ref) <= 3 * EPS32 * ref


def test_hvp_equals_dense_hessian(problem):
    params, anchor, x, y, v = problem
    f = lambda p: hessjax.effective_loss(p, anchor, 0.05, x, y)
    H = dense_hessian(f, params)
    expected = H @ ravel_pytree(v)[0]
    got = ravel_pytree(hessjax.hvp(f, params, v))[0]
    assert np.linalg.norm(got - expected) <= TOL64 * np.linalg.norm(expected)


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 23, 100])
def test_chunked_dataset_functions_equal_unchunked(problem, chunk_size):
    params, anchor, x, y, v = problem
    lam = 0.2
    chunks = hessjax.chunk_data(x, y, chunk_size)
    f = lambda p: hessjax.effective_loss(p, anchor, lam, x, y)
    # the chunked functions jitted, as the sweep runs them; the references unchunked
    loss, ce, grad, matvec = (jax.jit(fn) for fn in (hessjax.dataset_loss, dataset_cross_entropy,
                                                      hessjax.dataset_grad, hessjax.flat_hessian_matvec))
    np.testing.assert_allclose(loss(params, anchor, lam, chunks), f(params), rtol=TOL64)
    np.testing.assert_allclose(ce(params, chunks), hessjax.cross_entropy(params, x, y), rtol=TOL64)
    g_ref = np.asarray(ravel_pytree(jax.grad(f)(params))[0])
    g = np.asarray(ravel_pytree(grad(params, anchor, lam, chunks))[0])
    assert np.linalg.norm(g - g_ref) <= TOL64 * np.linalg.norm(g_ref)
    hv_ref = dense_hessian(f, params) @ ravel_pytree(v)[0]
    hv = matvec(ravel_pytree(v)[0], params, anchor, lam, chunks)
    assert np.linalg.norm(hv - hv_ref) <= TOL64 * np.linalg.norm(hv_ref)


def test_penalty_shifts_the_spectrum_by_two_lambda(problem):
    params, anchor, x, y, _ = problem
    H0 = dense_hessian(lambda p: hessjax.effective_loss(p, anchor, 0.0, x, y), params)
    H1 = dense_hessian(lambda p: hessjax.effective_loss(p, anchor, 0.3, x, y), params)
    np.testing.assert_allclose(np.linalg.eigvalsh(H1), np.linalg.eigvalsh(H0) + 0.6, atol=1e-12)


def test_hvp_vmaps_over_lambda_like_a_loop(problem):
    params, anchor, x, y, v = problem
    chunks = hessjax.chunk_data(x, y, 10)
    flat_v = ravel_pytree(v)[0]
    lams = jnp.array([0.0, 0.01, 0.5])
    batched = jax.jit(jax.vmap(hessjax.flat_hessian_matvec, in_axes=(None, None, None, 0, None)))(
        flat_v, params, anchor, lams, chunks)
    single = jax.jit(hessjax.flat_hessian_matvec)
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(batched[i], single(flat_v, params, anchor, lam, chunks), rtol=1e-13)


def test_flax_module_equals_pure_functions(problem):
    params, _, x, _, _ = problem
    model = FlaxMLP(sizes=SIZES)
    variables = to_flax_variables(params)
    np.testing.assert_array_equal(model.apply(variables, x), hessjax.apply_mlp(params, x))
    back = from_flax_variables(variables)
    for (w, b), (w2, b2) in zip(params, back):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    # Flax's own initialisation has the same structure, and converts to a working params tuple.
    own = model.init(jax.random.PRNGKey(0), x)
    converted = from_flax_variables(own)
    assert hessjax.layer_sizes(converted) == SIZES
    np.testing.assert_allclose(model.apply(own, x), hessjax.apply_mlp(converted, x), rtol=1e-12)


def test_chunk_data_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        hessjax.chunk_data(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))
    with pytest.raises(ValueError, match="samples"):
        hessjax.chunk_data(jnp.zeros((4, 3)), jnp.zeros((5,), jnp.int32))


@pytest.mark.parametrize("sizes, chunk_size", [((6, 3), 23), ((6, 5, 3), 7), ((6, 5, 4, 3), 7), ((6, 4, 5, 4, 3), 10)])
def test_linearized_hvp_equals_dense_hessian(sizes, chunk_size):
    from hessjax.linearized import linearize_hessian, linearized_flat_hessian_matvec

    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(11), 5)
    params = hessjax.init_mlp(k1, sizes, jnp.float64)
    anchor = hessjax.init_mlp(k2, sizes, jnp.float64)
    x = jax.random.uniform(k3, (23, sizes[0]), jnp.float64)
    y = jax.random.randint(k4, (23,), 0, sizes[-1])
    chunks = hessjax.chunk_data(x, y, chunk_size)
    lin = jax.jit(linearize_hessian)(params, chunks)
    H = dense_hessian(lambda p: hessjax.effective_loss(p, anchor, 0.07, x, y), params)
    matvec = jax.jit(linearized_flat_hessian_matvec)
    for v in jax.random.normal(k5, (3, H.shape[0]), jnp.float64):
        got = matvec(v, lin, 0.07, chunks)
        assert np.linalg.norm(got - H @ v) <= TOL64 * np.linalg.norm(H @ v)
