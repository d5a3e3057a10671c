"""The model layer: activations, the MLP's R-operator for each of them, LeNet and convolutional models,
Flax modules and user models — against dense float64 Hessians and against torch on the same weights."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree

import hessjax
from conftest import REPO
from hessjax.hvp import chunk_data, dataset_grad, flat_hessian_matvec
from hessjax.linearized import hessian_operator, linearize_hessian, linearized_flat_hessian_matvec
from hessjax.loss import cross_entropy
from hessjax.models import (ACTIVATIONS, LENET_KEYS, ModelError, from_flax, get_activation, lenet, make_model, mlp,
                            resolve_model)

EPS64 = float(np.finfo(np.float64).eps)
HIGHEST = jax.lax.Precision.HIGHEST


def _problem(model, n=29, seed=0):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = model.init(k1, jnp.float64)
    x = jax.random.uniform(k2, (n, *model.input_shape), jnp.float64, -1.5, 1.5)
    y = jax.random.randint(k3, (n,), 0, model.num_classes)
    v = jax.random.normal(k4, ravel_pytree(params)[0].shape, jnp.float64)
    return params, x, y, v


def _generic(v, params, lam, chunks, model):
    """:func:`flat_hessian_matvec` of ``model``, jitted as the sweep runs it (eager scans are slow)."""
    return jax.jit(lambda v, p, c: flat_hessian_matvec(v, p, None, lam, c, apply=model.apply))(v, params, chunks)


def _operator(op, v, params, chunks):
    """``op.matvec`` at λ = 0 after ``op.linearize``, jitted."""
    return jax.jit(lambda v, p, c: op.matvec(v, op.linearize(p, c, HIGHEST), 0.0, c, HIGHEST))(v, params, chunks)


def _dense(model, params, x, y):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: cross_entropy(unravel(f), x, y, apply=model.apply)))(flat))


# ------------------------------------------------------------------------------------------------ activations


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_are_those_of_the_function(name):
    """σ' and σ'' (from z and h = σ(z)) equal jax.grad of σ, in float64, over [−30, 30]."""
    act = get_activation(name)
    z = jnp.linspace(-30.0, 30.0, 2001, dtype=jnp.float64)
    h = act.fn(z)
    d1 = jax.vmap(jax.grad(act.fn))(z)
    d2 = jax.vmap(jax.grad(jax.grad(act.fn)))(z)
    zz = None if act.from_output else z
    np.testing.assert_allclose(act.slope(zz, h), d1, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(act.curve(zz, h), d2, rtol=1e-7, atol=1e-12)
    if act.curve_ratio is not None:
        np.testing.assert_allclose(act.slope(zz, h) * act.curve_ratio(h), d2, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_is_torchs(name):
    act = get_activation(name)
    z = np.linspace(-8, 8, 401)
    module = getattr(torch.nn, act.torch_name)()
    np.testing.assert_allclose(act.fn(jnp.asarray(z)), module(torch.from_numpy(z)).numpy(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "hardtanh", "ReLU"])
def test_relu_like_activations_are_refused_with_the_reason(name):
    with pytest.raises(ValueError, match=r"refused: .*(piecewise linear|twice differentiable).*softplus"):
        get_activation(name)
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        get_activation("swish2")


# ------------------------------------------------------------------------------------------------ the MLP


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_r_operator_equals_the_dense_hessian_for_every_activation(name):
    model = mlp((6, 5, 4, 3), name)
    params, x, y, v = _problem(model)
    H = _dense(model, params, x, y)
    chunks = chunk_data(x, y, 10)  # 2 full chunks and a remainder of 9
    op = hessian_operator(model)
    assert op.kind == "r-operator"
    got = _operator(op, v, params, chunks)
    np.testing.assert_allclose(got, H @ np.asarray(v), rtol=0, atol=20 * EPS64 * np.abs(H).max() * math.sqrt(H.shape[0]))
    generic = _generic(v, params, 0.0, chunks, model)
    np.testing.assert_allclose(generic, H @ np.asarray(v), rtol=0, atol=20 * EPS64 * np.abs(H).max() * math.sqrt(H.shape[0]))


def test_sigmoid_r_operator_keeps_its_products_bit_for_bit():
    """The sigmoid's R-operator through the Model path is the library's default call, bit for bit."""
    model = mlp((6, 5, 4, 3))
    params, x, y, v = _problem(model)
    chunks = chunk_data(x, y, 10)
    lin = linearize_hessian(params, chunks)
    np.testing.assert_array_equal(hessian_operator(model).matvec(v, lin, 0.3, chunks, HIGHEST),
                                  linearized_flat_hessian_matvec(v, lin, 0.3, chunks))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_matches_torch_for_every_activation(name):
    from hessjax.bridges import TorchMLP, grad_torch, hvp_torch, torch_params_from_jax

    model = mlp((6, 5, 4, 3), name)
    params, x, y, v = _problem(model)
    module = TorchMLP.from_params(params, activation=name)
    np.testing.assert_allclose(module(torch.from_numpy(np.array(x))).detach().numpy(), model.apply(params, x),
                               rtol=1e-13, atol=1e-14)
    anchor = torch_params_from_jax(params)
    np.testing.assert_allclose(hvp_torch(module, anchor, 0.0, np.asarray(x), np.asarray(y), np.asarray(v)).numpy(),
                               flat_hessian_matvec(v, params, params, 0.0, chunk_data(x, y, 100), apply=model.apply),
                               rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grad_torch(module, anchor, 0.2, np.asarray(x), np.asarray(y)).numpy(),
                               ravel_pytree(dataset_grad(params, params, 0.2, chunk_data(x, y, 100),
                                                         apply=model.apply))[0], rtol=1e-11, atol=1e-14)


# ------------------------------------------------------------------------------------------------ convolutions


def _tiny_cnn():
    """conv 2×3×3 on [1, 6, 6] → tanh → 2×2 average pool → dense 8 → softplus → dense 3: 20 + 72 + 27 = 119
    parameters, small enough for a dense float64 Hessian."""

    def apply(params, x, *, precision=HIGHEST):
        (w, b), (w1, b1), (w2, b2) = params
        h = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                         precision=precision) + b[None, :, None, None]
        h = jnp.tanh(h)
        n, c, hh, ww = h.shape
        h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5)).reshape(n, -1)
        h = jax.nn.softplus(jnp.matmul(h, w1.T, precision=precision) + b1)
        return jnp.matmul(h, w2.T, precision=precision) + b2

    return make_model("tiny_cnn", apply, input_shape=(1, 6, 6), shapes=(((2, 1, 3, 3), (2,)), ((8, 8), (8,)),
                                                                        ((3, 8), (3,))),
                      keys=(("c.weight", "c.bias"), ("f1.weight", "f1.bias"), ("f2.weight", "f2.bias")))


def test_cnn_hessian_products_and_top_k_equal_the_dense_hessian():
    model = _tiny_cnn()
    assert model.num_params == 119 and model.num_classes == 3 and model.mlp is None
    params, x, y, v = _problem(model, n=41)
    H = _dense(model, params, x, y)
    chunks = chunk_data(x, y, 16)
    op = hessian_operator(model)
    assert op.kind == "forward-over-reverse"
    got = _operator(op, v, params, chunks)
    np.testing.assert_allclose(got, H @ np.asarray(v), rtol=0, atol=50 * EPS64 * np.abs(H).max())
    s = hessjax.spectrum(model, params, (x, y), k=6, chunk_size=16)
    ref = np.sort(np.linalg.eigvalsh(H))[::-1][:6]
    assert s.converged.all()
    assert np.max(np.abs(s.eigenvalues - ref)) <= 1e-5 * abs(ref[0])
    assert np.all(np.abs(s.eigenvalues - ref) <= s.error_bounds)  # the bounds hold
    # each returned vector is an eigenvector of the dense H with its residual
    for mu, vec, r in zip(s.eigenvalues, s.eigenvectors, s.residuals):
        assert abs(np.linalg.norm(H @ vec - mu * vec) - r) <= 1e-9 * abs(ref[0])


def test_lenet_layout_and_init_are_torchs():
    model = lenet()
    params = model.init(jax.random.PRNGKey(3), jnp.float64)
    assert model.keys == LENET_KEYS and model.input_shape == (1, 28, 28) and model.num_classes == 10
    assert [tuple(a.shape) for layer in params for a in layer] == [
        (6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 256), (120,), (84, 120), (84,), (10, 84), (10,)]
    assert model.num_params == 44_426
    for (w, b), fan_in in zip(params, (25, 150, 256, 120, 84)):  # U(±1/√fan_in): in bounds, spread over them
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(np.asarray(w)).max() <= bound and np.abs(np.asarray(w)).max() > 0.9 * bound
        assert np.abs(np.asarray(b)).max() <= bound


@pytest.fixture(scope="module")
def lenet_problem():
    from hessjax.bridges import TorchLeNet

    model = lenet()
    params, x, y, v = _problem(model, n=24, seed=4)
    x = jnp.abs(x) / 1.5  # images in [0, 1]
    return model, params, x, y, v, TorchLeNet.from_params(params)


def test_lenet_forward_and_state_dict_are_torchs(lenet_problem):
    model, params, x, y, v, module = lenet_problem
    assert list(module.state_dict()) == [k for layer in LENET_KEYS for k in layer]
    np.testing.assert_allclose(module(torch.from_numpy(np.array(x))).detach().numpy(), model.apply(params, x),
                               rtol=1e-12, atol=1e-13)
    # a flat [N, 784] batch is the same images (row-major view)
    flat = np.array(x).reshape(x.shape[0], -1)
    np.testing.assert_allclose(module(torch.from_numpy(flat)).detach().numpy(), model.apply(params, x), rtol=1e-12,
                               atol=1e-13)


def test_lenet_hvp_equals_torch_double_backward(lenet_problem):
    from hessjax.bridges import hvp_torch, torch_params_from_jax

    model, params, x, y, v, module = lenet_problem
    anchor = torch_params_from_jax(params)
    ref = hvp_torch(module, anchor, 0.05, np.asarray(x), np.asarray(y), np.asarray(v)).numpy()
    got = _generic(v, params, 0.05, chunk_data(x, y, 10), model)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_lenet_top_k_equals_torch_eigsh_in_float64(lenet_problem):
    from hessjax.bridges import TorchHVP, top_k_eigsh, torch_params_from_jax

    model, params, x, y, _, module = lenet_problem
    hvp = TorchHVP(module, torch_params_from_jax(params), 0.0, torch.from_numpy(np.array(x)),
                   torch.from_numpy(np.array(y)).long())
    ref = top_k_eigsh(hvp.numpy_matvec, model.num_params, 4, tol=0.0)
    s = hessjax.spectrum(model, params, (x, y), k=4)
    assert s.converged.all() and np.max(np.abs(s.eigenvalues - ref.eigenvalues)) <= 1e-6 * ref.eigenvalues[0]
    assert np.all(np.abs(s.eigenvalues - ref.eigenvalues) <= s.error_bounds)
    assert np.all(np.abs(np.sum(s.eigenvectors * ref.eigenvectors, axis=1)) > 1 - 1e-6)


# ------------------------------------------------------------------------------------------------ Flax, users


def test_from_flax_keeps_torch_layout_and_order():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import small_cnn
    finally:
        sys.path.pop(0)
    model = small_cnn.model()
    assert model.input_shape == (1, 28, 28) and model.num_classes == 10 and model.num_params == 18_898
    params, x, y, v = _problem(model, n=9)
    module = model.torch_module().double()
    assert [tuple(p.shape) for p in module.parameters()] == [tuple(a.shape) for layer in params for a in layer]
    with torch.no_grad():
        for p, a in zip(module.parameters(), [a for layer in params for a in layer]):
            p.copy_(torch.from_numpy(np.asarray(a)))
    np.testing.assert_allclose(module(torch.from_numpy(np.array(x))).detach().numpy(), model.apply(params, x),
                               rtol=1e-12, atol=1e-13)
    from hessjax.bridges import hvp_torch

    ref = hvp_torch(module, [p.detach() for p in module.parameters()], 0.0, np.asarray(x), np.asarray(y),
                    np.asarray(v)).numpy()
    got = _generic(v, params, 0.0, chunk_data(x, y, 4), model)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_from_flax_refuses_stateful_modules():
    import flax.linen as nn

    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True)(nn.Dense(3)(x))

    with pytest.raises(ValueError, match=r"batch_stats.*only stateless modules"):
        from_flax(WithBatchNorm(), (4,))


def test_resolve_model_names_and_user_models(tmp_path, monkeypatch):
    assert resolve_model("mlp", sizes=(4, 3, 2), activation="tanh").mlp.activation.name == "tanh"
    assert resolve_model("lenet").num_params == 44_426
    with pytest.raises(ModelError, match="applies to the MLP only"):
        resolve_model("lenet", activation="tanh")
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        resolve_model("resnet")
    (tmp_path / "mymodels.py").write_text(
        "import jax.numpy as jnp\n"
        "from hessjax.models import make_model\n"
        "def apply(params, x):\n"
        "    (w, b), = params\n"
        "    return x @ w.T + b\n"
        "linear = make_model('lin', apply, input_shape=(5,), shapes=(((3, 5), (3,)),))\n"
        "def factory():\n"
        "    return linear\n"
        "not_a_model = 3\n"
        "def broken():\n"
        "    raise RuntimeError('no GPU')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("mymodels:linear", "mymodels:factory", f"{tmp_path / 'mymodels.py'}:linear"):
        model = resolve_model(spec)
        assert model.name == spec and model.num_params == 18 and model.num_classes == 3
    for spec, message in (("mymodels:nothing", "has no attribute 'nothing'"),
                          ("mymodels:not_a_model", "is a int; expected a hessjax.models.Model"),
                          ("mymodels:broken", "calling it with no arguments failed: RuntimeError: no GPU"),
                          ("no_such_module_xyz:m", "importing no_such_module_xyz failed: ModuleNotFoundError"),
                          ("missing/file.py:m", "does not exist"), (":m", "expected MODULE:ATTR")):
        with pytest.raises(ModelError, match=message):
            resolve_model(spec)


def test_spectrum_takes_a_plain_function_and_a_pytree():
    """Any ``apply(params, x)`` over a dict of arrays: the top k of the dense Hessian, vectors in ravel order."""
    key = jax.random.PRNGKey(7)
    params = {"w": jax.random.normal(key, (3, 4), jnp.float64) * 0.5, "b": jnp.zeros(3, jnp.float64)}
    x = jax.random.normal(jax.random.PRNGKey(8), (50, 4), jnp.float64)
    y = jax.random.randint(jax.random.PRNGKey(9), (50,), 0, 3)

    def apply(p, x):
        return jnp.tanh(x @ p["w"].T) + p["b"]

    flat, unravel = ravel_pytree(params)
    H = np.asarray(jax.hessian(lambda f: cross_entropy(unravel(f), x, y, apply=lambda p, x, precision=None:
                                                       apply(p, x)))(flat))
    s = hessjax.spectrum(apply, params, (x, y), k=3, lam=0.1)
    ref = np.sort(np.linalg.eigvalsh(H))[::-1][:3]
    assert s.converged.all() and np.max(np.abs(s.eigenvalues - ref)) <= 1e-6 * ref[0]
    np.testing.assert_allclose(s.loss_eigenvalues, s.eigenvalues + 0.2, rtol=0, atol=1e-15)
    assert set(s.unravel(s.eigenvectors[0])) == {"w", "b"}
    with pytest.raises(ValueError, match=r"k=15 must be in \[1, P=15\)"):
        hessjax.spectrum(apply, params, (x, y), k=15)
    # the Gauss–Newton part: (1/N) Σ Jᵀ(diag p − ppᵀ)J from the dense Jacobian
    jac = np.asarray(jax.jacfwd(lambda f: apply(unravel(f), x))(flat))
    p = np.asarray(jax.nn.softmax(apply(params, x)))
    h = np.einsum("nk,kl->nkl", p, np.eye(3)) - p[:, :, None] * p[:, None, :]
    g_ref = np.sort(np.linalg.eigvalsh(np.einsum("nkp,nkl,nlq->pq", jac, h, jac) / 50))[::-1][:3]
    g = hessjax.spectrum(apply, params, (x, y), k=3, operator="ggn")
    assert g.converged.all() and np.max(np.abs(g.eigenvalues - g_ref)) <= 1e-6 * g_ref[0]


def test_conv2d_is_lax_convolution():
    """LeNet's im2col convolution equals XLA's cross-correlation (torch's Conv2d), in float64."""
    from hessjax.models.lenet import conv2d

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(12), 3)
    x = jax.random.normal(k1, (3, 4, 11, 9), jnp.float64)
    w = jax.random.normal(k2, (5, 4, 3, 2), jnp.float64)
    b = jax.random.normal(k3, (5,), jnp.float64)
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")) + \
        b[None, :, None, None]
    np.testing.assert_allclose(conv2d(x, w, b), ref, rtol=1e-13, atol=1e-13)
    assert conv2d(x, w, b).shape == (3, 5, 9, 8)
