"""JAX and PyTorch agree on the loss, gradient, HVP and top eigenpairs on the same weights and data.

The torch side (:mod:`hessjax.bridges.torch_ref`) is an independent implementation: ``nn.Sequential``,
``F.cross_entropy``, a double-backward HVP through the whole effective loss (the penalty's ``2λI``
computed, not added), and ARPACK. Vectors are compared by ``‖a − b‖ / ‖b‖``.

* float64, a small 784-16-16-10 model on 600 real MNIST samples: 1e-12 (top 5 eigenvalues 1e-9).
* float32, the real 784-128-128-10 model at a random init on 2000 real MNIST samples: 1e-5.
* a tiny model against its dense Hessian (``jax.hessian`` + ``numpy.linalg.eigh``) checks the torch
  reference itself: HVP columns, graph reuse, the exact ``2λ`` shift, ARPACK and its sign convention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree

from hessjax.bridges import (
    TorchHVP,
    TorchMLP,
    effective_loss_torch,
    fix_signs,
    grad_torch,
    hvp_torch,
    jax_params_from_torch,
    top_k_eigsh,
    torch_params_from_jax,
)
from hessjax.hvp import chunk_data, dataset_grad, dataset_loss, flat_hessian_matvec
from hessjax.lanczos import top_k_eigenpairs
from hessjax.loss import effective_loss
from hessjax.mnist import load_mnist
from hessjax.model import init_mlp

SMALL = (784, 16, 16, 10)

# the JAX side, jitted once here (eager op-by-op dispatch would dominate the runtime)
_loss = jax.jit(effective_loss)
_grad = jax.jit(jax.grad(effective_loss))
_dataset_loss = jax.jit(dataset_loss)
_dataset_grad = jax.jit(dataset_grad)
_matvec = jax.jit(flat_hessian_matvec)
_top_k = jax.jit(top_k_eigenpairs, static_argnums=(0, 2))  # matvec and k static


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _np(t) -> np.ndarray:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


class Problem:
    """One set of weights, anchor, λ and data, in both frameworks."""

    def __init__(self, sizes, dtype, n, lam, chunk_size, seed=0):
        data = load_mnist(train_samples=n, test_samples=1)
        key_p, key_a, key_v = jax.random.split(jax.random.PRNGKey(seed), 3)
        self.params = init_mlp(key_p, sizes, dtype)
        self.anchor = init_mlp(key_a, sizes, dtype)  # θ_ref ≠ θ, so the penalty and its gradient are live
        self.lam = lam
        self.x = jnp.asarray(data.x_train, dtype)
        self.y = jnp.asarray(data.y_train)
        self.chunks = chunk_data(self.x, self.y, chunk_size)
        self.flat, self.unravel = ravel_pytree(self.params)
        self.v = jax.random.normal(key_v, self.flat.shape, dtype)
        self.model = TorchMLP.from_params(self.params)
        self.anchor_t = torch_params_from_jax(self.anchor)
        self.xt, self.yt = torch.from_numpy(np.array(self.x)), torch.from_numpy(np.array(self.y))

    def torch_args(self):
        return self.model, self.anchor_t, self.lam, self.xt, self.yt


@pytest.fixture(scope="module")
def small64():
    return Problem(SMALL, jnp.float64, n=600, lam=1e-3, chunk_size=256)


@pytest.fixture(scope="module")
def real32():
    return Problem((784, 128, 128, 10), jnp.float32, n=2000, lam=1e-3, chunk_size=1000)


def test_same_bits_in_both_frameworks(small64):
    p = small64
    assert p.model.sizes == SMALL and next(p.model.parameters()).dtype == torch.float64
    flat_t = torch.nn.utils.parameters_to_vector(p.model.parameters())
    assert np.array_equal(_np(flat_t), np.asarray(p.flat))  # parameters_to_vector == ravel_pytree, bit for bit
    back = jax_params_from_torch(p.model)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p.params)))
    assert list(dict(p.model.state_dict())) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


@pytest.mark.parametrize("name, tol", [("small64", 1e-12), ("real32", 1e-5)])
def test_loss_grad_hvp_agree(request, name, tol):
    p = request.getfixturevalue(name)
    args = (p.params, p.anchor, p.lam)

    loss_t = effective_loss_torch(*p.torch_args()).item()
    assert rel(_loss(*args, p.x, p.y), loss_t) < tol
    assert rel(_dataset_loss(*args, p.chunks), loss_t) < tol  # chunked: full chunks + remainder

    grad_t = _np(grad_torch(*p.torch_args()))
    assert rel(ravel_pytree(_grad(*args, p.x, p.y))[0], grad_t) < tol
    assert rel(ravel_pytree(_dataset_grad(*args, p.chunks))[0], grad_t) < tol

    hv_t = _np(hvp_torch(*p.torch_args(), np.asarray(p.v)))
    assert rel(_matvec(p.v, *args, p.chunks), hv_t) < tol  # dataset_hvp on flat vectors
    assert rel(_np(TorchHVP(*p.torch_args())(np.asarray(p.v))), hv_t) < tol  # graph reuse, same answer


def test_torch_reference_against_dense_hessian():
    """The torch reference on a tiny float64 model whose Hessian is materialised by ``jax.hessian``."""
    sizes, n, lam = (5, 4, 3), 40, 0.3
    rng = np.random.default_rng(7)

    def layer(fan_in, fan_out):
        return rng.uniform(-0.5, 0.5, (fan_out, fan_in)), rng.uniform(-0.5, 0.5, fan_out)

    params = tuple(layer(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    anchor = tuple(layer(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    x, y = rng.standard_normal((n, sizes[0])), rng.integers(0, sizes[-1], n)
    flat, unravel = ravel_pytree(params)
    hess = np.asarray(jax.jit(jax.hessian(lambda f: effective_loss(unravel(f), anchor, lam, x, y)))(flat))
    big_p = flat.shape[0]

    model, anchor_t = TorchMLP.from_params(params), torch_params_from_jax(anchor)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    op = TorchHVP(model, anchor_t, lam, xt, yt)
    assert rel(np.stack([_np(op(e)) for e in np.eye(big_p)], axis=1), hess) < 1e-13
    v = rng.standard_normal(big_p)
    assert rel(_np(hvp_torch(model, anchor_t, lam, xt, yt, v)), hess @ v) < 1e-13

    # the penalty adds exactly 2λI (computed by the double backward, not added by hand)
    shift = _np(hvp_torch(model, anchor_t, lam, xt, yt, v)) - _np(hvp_torch(model, anchor_t, 0.0, xt, yt, v))
    assert rel(shift, 2 * lam * v) < 1e-13

    # ARPACK on the torch HVP against eigh of the dense Hessian, eigenvectors in the same sign convention
    vals, vecs = np.linalg.eigh(hess)
    res = top_k_eigsh(op.numpy_matvec, big_p, 3, tol=0.0)
    assert rel(res.eigenvalues, vals[::-1][:3]) < 1e-12
    assert np.all(np.diff(res.eigenvalues) <= 0) and np.all(res.residuals < 1e-10)
    assert rel(res.eigenvectors, fix_signs(vecs[:, ::-1][:, :3].T)) < 1e-9
    top = np.abs(res.eigenvectors).argmax(axis=1)
    assert np.all(res.eigenvectors[np.arange(3), top] > 0)


def test_top_eigenpairs_agree_float64(small64):
    p, k = small64, 5
    big_p = p.flat.shape[0]
    torch_res = top_k_eigsh(TorchHVP(*p.torch_args()).numpy_matvec, big_p, k, tol=1e-14)
    assert np.all(torch_res.residuals < 1e-9 * torch_res.eigenvalues[0])

    v0 = jax.random.normal(jax.random.PRNGKey(3), (big_p,), jnp.float64)
    jax_res = _top_k(flat_hessian_matvec, v0, k, params=(p.params, p.anchor, p.lam, p.chunks), tol=1e-12)
    assert np.all(np.asarray(jax_res.converged))
    vals, vecs = np.asarray(jax_res.eigenvalues), np.asarray(jax_res.eigenvectors)
    assert rel(vals, torch_res.eigenvalues) < 1e-9
    # eigenvectors equal up to sign, and equal outright: both use the largest-|entry|-positive convention
    overlaps = np.abs(np.sum(vecs * torch_res.eigenvectors, axis=1))
    assert np.all(overlaps > 1 - 1e-10), overlaps
    assert rel(vecs, torch_res.eigenvectors) < 1e-8
