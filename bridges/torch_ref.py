"""The PyTorch ground truth: the same MLP, loss, gradient, Hessian-vector product and top-k eigensolver.

Everything here is written the way a PyTorch user would write it, independently of the JAX code,
so that agreement between the two is evidence for both:

* :class:`TorchMLP` is ``nn.Sequential(Linear, Sigmoid, Linear, Sigmoid, ..., Linear)`` (or Tanh,
  Softplus, GELU); its state dict keys are ``0.weight``, ``0.bias``, ``2.weight``, ... and
  ``parameters_to_vector(model.parameters())`` is ``ravel_pytree(params)[0]`` of the hessjax params
  it was built from (:meth:`TorchMLP.from_params` copies the tensors bit for bit).
* :class:`TorchLeNet` is LeNet-5 exactly as :mod:`hessjax.models.lenet` (keys ``0.*``, ``3.*``,
  ``7.*``, ``9.*``, ``11.*``); :func:`torch_module` gives the torch module of any model that has one.
* :func:`effective_loss_torch` is ``F.cross_entropy(model(x), y) + λ Σ_p ‖p − p_ref‖²``.
* :func:`hvp_torch` is a double backward (``autograd.grad(..., create_graph=True)``, then the
  gradient of ``g · v``) through the whole effective loss, so the penalty's ``2λI`` is *computed*
  here, not added by hand as in :func:`hessjax.dataset_hvp`; :class:`TorchHVP` builds the gradient
  graph once and reuses it for every ``v``, as PyHessian does.
* :func:`top_k_eigsh` runs ARPACK (``scipy.sparse.linalg.eigsh``, ``which='LA'``) on any matvec.

Flat vectors are torch tensors ``[P]`` in ``parameters_to_vector`` order. Precision: on CPU torch
float32 matmuls are true float32; on CUDA this module does not change
``torch.backends.cuda.matmul.allow_tf32`` (off by default), matching hessjax's ``Precision.HIGHEST``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from hessjax.models import DEFAULT_SIZES, Model, Params, get_activation, layer_sizes

from . import EXPORTS
from .tensors import as_numpy, numpy_to_tensor, tensor_to_numpy, to_jax

__all__ = list(EXPORTS["torch_ref"])


# --------------------------------------------------------------------------- model and parameters


def _torch_activation(name: str) -> nn.Module:
    return getattr(nn, get_activation(name).torch_name)()


class _LoadParams:
    """``load_params``: copy hessjax params into a module's ``parameters()``, bit for bit."""

    def load_params(self, params: Params) -> None:
        """Copy hessjax ``params`` into this model, bit for bit (shapes and dtype must match)."""
        tensors = torch_params_from_jax(params)
        own = list(self.parameters())
        if len(tensors) != len(own):
            raise ValueError(f"params have {len(tensors) // 2} layers, the model has {len(own) // 2}")
        with torch.no_grad():
            for p, t in zip(own, tensors):
                if p.shape != t.shape or p.dtype != t.dtype:
                    raise ValueError(f"param {list(t.shape)} {t.dtype} does not fit {list(p.shape)} {p.dtype}")
                p.copy_(t)


class TorchMLP(_LoadParams, nn.Sequential):
    """``Linear → act → ... → Linear`` over the width chain ``sizes`` (784-128-128-10 by default), with
    ``activation`` (sigmoid, tanh, softplus or gelu: ``nn.Sigmoid``, ``nn.Tanh``, ``nn.Softplus()``,
    ``nn.GELU()``) after every hidden layer."""

    def __init__(self, sizes: Sequence[int] = DEFAULT_SIZES, dtype: torch.dtype = torch.float32,
                 activation: str = "sigmoid"):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes={sizes} must list at least two positive layer widths")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(_torch_activation(activation))
        super().__init__(*layers)
        self.sizes = sizes

    @classmethod
    def from_params(cls, params: Params, activation: str = "sigmoid") -> "TorchMLP":
        """A model holding exactly the bits of hessjax ``params`` (sizes and dtype taken from them)."""
        tensors = torch_params_from_jax(params)
        model = cls(layer_sizes(params), dtype=tensors[0].dtype, activation=activation)
        model.load_params(params)
        return model

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]


class TorchLeNet(_LoadParams, nn.Sequential):
    """LeNet-5 exactly as :mod:`hessjax.models.lenet`: ``Conv2d(1,6,5), Sigmoid, AvgPool2d(2), Conv2d(6,16,5),
    Sigmoid, AvgPool2d(2), Flatten, Linear(256,120), Sigmoid, Linear(120,84), Sigmoid, Linear(84,10)``
    on ``[N, 1, 28, 28]`` (flat ``[N, 784]`` inputs are viewed as such)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__(nn.Conv2d(1, 6, 5, dtype=dtype), nn.Sigmoid(), nn.AvgPool2d(2),
                         nn.Conv2d(6, 16, 5, dtype=dtype), nn.Sigmoid(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(256, 120, dtype=dtype), nn.Sigmoid(), nn.Linear(120, 84, dtype=dtype), nn.Sigmoid(),
                         nn.Linear(84, 10, dtype=dtype))

    def forward(self, x):
        return super().forward(x.reshape(x.shape[0], 1, 28, 28))

    @classmethod
    def from_params(cls, params: Params) -> "TorchLeNet":
        """A LeNet holding exactly the bits of hessjax ``params``."""
        model = cls(dtype=torch_params_from_jax(params)[0].dtype)
        model.load_params(params)
        return model


def torch_module(model: Model, params: Params | None = None) -> nn.Module:
    """The torch module of a hessjax ``model`` (:class:`TorchMLP` of its widths and activation,
    :class:`TorchLeNet`, or what a user model's ``torch_module()`` builds), holding ``params`` bit for
    bit when given. ``ValueError`` for a model without a torch counterpart."""
    if model.mlp is not None:
        module = TorchMLP(model.mlp.sizes, activation=model.mlp.activation.name)
    elif model.name == "lenet":
        module = TorchLeNet()
    elif model.torch_module is not None:
        module = model.torch_module()
    else:
        raise ValueError(f"model {model.name!r} has no torch module: give it one (make_model(..., torch_module=...))")
    if params is not None:
        tensors = torch_params_from_jax(params)
        module = module.to(tensors[0].dtype)
        own = list(module.parameters())
        if len(own) != len(tensors) or any(p.shape != t.shape for p, t in zip(own, tensors)):
            raise ValueError(f"model {model.name!r}: the torch module's parameters "
                             f"{[list(p.shape) for p in own]} do not fit {[list(t.shape) for t in tensors]}")
        with torch.no_grad():
            for p, t in zip(own, tensors):
                p.copy_(t)
    return module


def torch_params_from_jax(params: Params) -> list[torch.Tensor]:
    """``[w0, b0, w1, b1, ...]``: CPU torch copies of hessjax ``params``, bit for bit, in
    ``parameters()`` order (also the form :func:`effective_loss_torch` takes the anchor in)."""
    return [numpy_to_tensor(as_numpy(a)) for pair in params for a in pair]


def jax_params_from_torch(model_or_tensors) -> Params:
    """hessjax params (jax arrays, bit for bit) from a :class:`TorchMLP` or ``[w0, b0, w1, b1, ...]``."""
    tensors = list(model_or_tensors.parameters()) if isinstance(model_or_tensors, nn.Module) else list(model_or_tensors)
    arrays = [to_jax(tensor_to_numpy(t), "torch parameters") for t in tensors]  # float64 needs x64
    return tuple(zip(arrays[0::2], arrays[1::2]))


# --------------------------------------------------------------------------- loss, gradient, HVP


def _data(model: nn.Module, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in the model's dtype and ``y`` as int64 class indices, as CPU tensors."""
    dtype = next(model.parameters()).dtype
    x = x if isinstance(x, torch.Tensor) else numpy_to_tensor(as_numpy(x))
    y = y if isinstance(y, torch.Tensor) else numpy_to_tensor(as_numpy(y))
    return x.to(dtype), y.to(torch.int64)


def _anchor(model: nn.Module, anchor_tensors) -> list[torch.Tensor]:
    params = list(model.parameters())
    anchor = [t if isinstance(t, torch.Tensor) else numpy_to_tensor(as_numpy(t)) for t in anchor_tensors]
    if len(anchor) != len(params) or any(a.shape != p.shape for a, p in zip(anchor, params)):
        raise ValueError("anchor_tensors must be [w0, b0, w1, b1, ...] shaped like model.parameters(); "
                         "use torch_params_from_jax(anchor_params)")
    return [a.to(p.dtype).detach() for a, p in zip(anchor, params)]


def effective_loss_torch(model: nn.Module, anchor_tensors, lam, x, y) -> torch.Tensor:
    """``F.cross_entropy(model(x), y) + λ Σ_p ‖p − p_ref‖²`` (mean over the batch; sum over every
    weight and bias), a scalar tensor in the model's dtype with its autograd graph."""
    x, y = _data(model, x, y)
    params = list(model.parameters())
    lam = torch.as_tensor(float(lam), dtype=params[0].dtype)
    penalty = sum(torch.sum(torch.square(p - a)) for p, a in zip(params, _anchor(model, anchor_tensors)))
    return F.cross_entropy(model(x), y) + lam * penalty


def grad_torch(model: nn.Module, anchor_tensors, lam, x, y) -> torch.Tensor:
    """``∇L_eff`` as a flat ``[P]`` tensor in ``parameters_to_vector`` order."""
    params = [p for p in model.parameters()]
    loss = effective_loss_torch(model, anchor_tensors, lam, x, y)
    return _flatten(torch.autograd.grad(loss, params))


def _flatten(tensors) -> torch.Tensor:
    """Tensors shaped like ``parameters()`` as one flat ``[P]`` tensor in ``parameters_to_vector`` order
    (``reshape``, not ``view``: a convolution's gradient may come back in another memory layout)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _flat_v(model: nn.Module, v) -> list[torch.Tensor]:
    """A flat ``[P]`` vector cut into tensors shaped like ``model.parameters()``, in their dtype."""
    params = list(model.parameters())
    v = v if isinstance(v, torch.Tensor) else numpy_to_tensor(as_numpy(v))
    n = sum(p.numel() for p in params)
    if v.shape != (n,):
        raise ValueError(f"v has shape {list(v.shape)}, expected [{n}]")
    v = v.to(params[0].dtype)
    out, start = [], 0
    for p in params:
        out.append(v[start:start + p.numel()].view_as(p))
        start += p.numel()
    return out


def hvp_torch(model: nn.Module, anchor_tensors, lam, x, y, v) -> torch.Tensor:
    """``∇²L_eff · v`` by double backward: ``g = autograd.grad(L, θ, create_graph=True)``, then
    ``autograd.grad(g · v, θ)``. ``v`` and the result are flat ``[P]`` (``parameters_to_vector`` order)."""
    params = list(model.parameters())
    loss = effective_loss_torch(model, anchor_tensors, lam, x, y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vs = _flat_v(model, v)
    gv = sum(torch.sum(g * vi) for g, vi in zip(grads, vs))
    return _flatten(torch.autograd.grad(gv, params))


class TorchHVP:
    """``v ↦ ∇²L_eff · v`` with the gradient graph built once and reused for every ``v`` (PyHessian's
    ``hessian_vector_product``: ``autograd.grad(g, θ, grad_outputs=v, retain_graph=True)``).

    Holds the graph of one full forward/backward (memory of the whole batch); ``num_matvecs`` counts calls.
    """

    def __init__(self, model: nn.Module, anchor_tensors, lam, x, y):
        self.params = list(model.parameters())
        self.model = model
        loss = effective_loss_torch(model, anchor_tensors, lam, x, y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.num_matvecs = 0

    def __call__(self, v) -> torch.Tensor:
        self.num_matvecs += 1
        hv = torch.autograd.grad(self.grads, self.params, grad_outputs=_flat_v(self.model, v),
                                 retain_graph=True)
        return _flatten(hv)

    def numpy_matvec(self, v: np.ndarray) -> np.ndarray:
        """The same on numpy vectors (float64 out), the form :func:`top_k_eigsh` takes."""
        return tensor_to_numpy(self(np.ascontiguousarray(v).ravel())).astype(np.float64)


class TorchGGN:
    """``v ↦ G v``, the generalized Gauss–Newton matrix of the mean cross-entropy,
    ``(1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n v``, by ``torch.func.jvp`` and ``torch.func.vjp`` of the
    forward pass (the textbook softmax Hessian; a float64 reference needs nothing more careful)."""

    def __init__(self, model: nn.Module, x):
        from torch.func import functional_call

        self.model = model
        dtype = next(model.parameters()).dtype
        self.x = (x if isinstance(x, torch.Tensor) else numpy_to_tensor(as_numpy(x))).to(dtype)
        self.names = [n for n, _ in model.named_parameters()]
        self.params = tuple(p.detach() for p in model.parameters())
        self.forward = lambda *ps: functional_call(model, dict(zip(self.names, ps)), (self.x,))
        self.num_matvecs = 0

    def __call__(self, v) -> torch.Tensor:
        from torch.func import jvp, vjp

        self.num_matvecs += 1
        z, u = jvp(self.forward, self.params, tuple(_flat_v(self.model, v)))
        p = torch.softmax(z, dim=-1)
        w = p * (u - torch.sum(p * u, dim=-1, keepdim=True))
        _, pullback = vjp(self.forward, *self.params)
        return _flatten(pullback(w)) / self.x.shape[0]

    def numpy_matvec(self, v: np.ndarray) -> np.ndarray:
        return tensor_to_numpy(self(np.ascontiguousarray(v).ravel())).astype(np.float64)


# --------------------------------------------------------------------------- eigensolver


class EigshResult(NamedTuple):
    """Top-k eigenpairs from ARPACK, largest first."""

    eigenvalues: np.ndarray  # [k] descending
    eigenvectors: np.ndarray  # [k, P] unit norm, largest-|entry| positive
    residuals: np.ndarray  # [k] ‖H u − λ u‖ per pair (one extra matvec each)
    num_matvecs: int  # matvecs ARPACK used (not counting the residuals)


def fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip each row of ``vectors`` ``[k, P]`` so that its largest-|entry| (first on ties) is positive."""
    vectors = np.array(vectors, copy=True)
    idx = np.argmax(np.abs(vectors), axis=1)
    signs = np.sign(vectors[np.arange(vectors.shape[0]), idx])
    signs[signs == 0] = 1
    return vectors * signs[:, None]


def top_k_eigsh(hvp_fn: Callable[[np.ndarray], np.ndarray], P: int, k: int, tol: float = 0.0,
                v0: np.ndarray | None = None, *, ncv: int | None = None, maxiter: int | None = None) -> EigshResult:
    """The ``k`` largest (algebraic) eigenpairs of the symmetric operator ``hvp_fn`` on ``R^P``.

    ``scipy.sparse.linalg.eigsh(LinearOperator, k, which='LA')`` (implicitly restarted Lanczos,
    ARPACK) in float64; ``hvp_fn`` maps a float64 numpy ``[P]`` to an array-like ``[P]`` (e.g.
    :meth:`TorchHVP.numpy_matvec`, or ``lambda v: hvp_torch(...).numpy()``). ``tol`` is ARPACK's
    relative accuracy (0: machine precision). ``v0`` defaults to a fixed seeded Gaussian so runs are
    reproducible (ARPACK's own default start is random per call).
    """
    if not 1 <= k < P:
        raise ValueError(f"k={k} must be in [1, P={P})")
    count = [0]

    def matvec(v):
        count[0] += 1
        return np.asarray(as_numpy(hvp_fn(np.asarray(v, dtype=np.float64).ravel())), dtype=np.float64).ravel()

    if v0 is None:
        v0 = np.random.default_rng(0).standard_normal(P)
    op = scipy.sparse.linalg.LinearOperator((P, P), matvec=matvec, dtype=np.float64)
    vals, vecs = scipy.sparse.linalg.eigsh(op, k=k, which="LA", tol=tol, v0=np.asarray(v0, dtype=np.float64),
                                           ncv=ncv, maxiter=maxiter)
    num_matvecs = count[0]
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], fix_signs(vecs[:, order].T)
    residuals = np.array([np.linalg.norm(matvec(u) - lam * u) for lam, u in zip(vals, vecs)])
    return EigshResult(vals, vecs, residuals, num_matvecs)
