"""``hessjax.spectrum``: the certified top-k of any model's data Hessian at given parameters, in one call.

    import hessjax
    s = hessjax.spectrum("lenet", params, (x, y), k=10)
    s.eigenvalues, s.error_bounds, s.converged      # [10] largest first, |μ − μ_true| ≤ bound, bool

The counterpart of PyHessian's ``hessian(model, criterion, data=(x, y)).eigenvalues(top_n=k)``, with
what PyHessian does not give: every pair's true residual, an error bound on its eigenvalue, a
converged flag, and the completeness probe that finds an eigenvalue the Krylov space missed. The
Hessian is that of the mean cross-entropy over ``data`` — the *data* Hessian μ; with ``lam`` the
eigenvalues of ``L_eff = CE + λ‖θ − θ_ref‖²`` are ``μ + 2λ`` (``loss_eigenvalues``, added in
float64), with the same eigenvectors.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .bounds import OPERATOR_ROUNDING, error_bounds, shifted
from .ggn import flat_ggn_matvec
from .hvp import Chunks, chunk_data, flat_hessian_matvec
from .lanczos import DEFAULT_MAX_RESTARTS, top_k_eigenpairs
from .linearized import hessian_operator
from .models import DEFAULT_PRECISION, Model, layer_sizes, mlp, resolve_model

__all__ = ["Spectrum", "spectrum"]


class Spectrum(NamedTuple):
    """The certified top-k eigenpairs of a data Hessian (numpy arrays, largest first)."""

    eigenvalues: np.ndarray  # [k] μ of ∇²(mean CE), float64
    eigenvectors: np.ndarray  # [k, P] unit vectors in ravel_pytree(params) order (torch's for a hessjax Model)
    residuals: np.ndarray  # [k] true ‖H v − μ v‖ of the returned unit vectors
    error_bounds: np.ndarray  # [k] |μ − μ_true| ≤ bound (residual / Kato–Temple, plus the operator's rounding)
    converged: np.ndarray  # [k] bool: residual ≤ tol · scale
    loss_eigenvalues: np.ndarray  # [k] μ + 2λ: the eigenvalues of L_eff, float64
    num_matvecs: int  # Hessian-vector products used, the completeness probe included
    scale: float  # the convergence scale ≈ |μ₁|
    unravel: Callable  # flat [P] → a pytree like params: s.unravel(s.eigenvectors[0])


def _forward(model, params) -> tuple[Callable, Model | None]:
    """``(apply(params, x, *, precision), the hessjax Model or None)`` for what :func:`spectrum` accepts."""
    if isinstance(model, str):
        model = mlp(layer_sizes(params)) if model == "mlp" else resolve_model(model)
    if isinstance(model, Model):
        return model.apply, model
    if hasattr(model, "apply") and hasattr(model, "init"):  # a Flax module with its variables as params
        return (lambda p, x, *, precision=None: model.apply(p, x)), None
    if callable(model):
        return (lambda p, x, *, precision=None: model(p, x)), None
    raise TypeError(f"model must be a hessjax Model, 'mlp', 'lenet', a Flax module or a function apply(params, x); "
                    f"got {type(model).__name__}")


def _chunks(data, dtype, chunk_size: int, input_shape=None) -> Chunks:
    if isinstance(data, Chunks):
        return data
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        x, y = data.x_train, data.y_train
    else:
        try:
            x, y = data
        except (TypeError, ValueError):
            raise TypeError("data must be (x, y), a hessjax Dataset or Chunks") from None
    x, y = jnp.asarray(x, dtype), jnp.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"data: x {list(x.shape)} and y {list(y.shape)} must be [N, ...] inputs and [N] labels")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"data: y has dtype {y.dtype}, expected integer class indices")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        if int(np.prod(x.shape[1:])) != int(np.prod(input_shape)):
            raise ValueError(f"data: samples of shape {list(x.shape[1:])} do not fit the model's input "
                             f"{list(input_shape)}")
        x = x.reshape((x.shape[0], *input_shape))  # row-major, as torch's view
    return chunk_data(x, y.astype(jnp.int32), chunk_size)


def spectrum(model, params, data, k: int = 10, *, lam: float = 0.0, tol: float = 1e-5, num_iters: int | None = None,
             max_restarts: int = DEFAULT_MAX_RESTARTS, seed: int = 0, chunk_size: int | None = None,
             precision=DEFAULT_PRECISION, multiplicity_check: bool = True, operator: str = "hessian") -> Spectrum:
    """The top ``k`` eigenpairs of the data Hessian ``∇²(mean CE)`` of ``model`` at ``params`` over ``data``.

    Args:
      model: a :class:`hessjax.models.Model` (its parameters in torch's layout), ``"mlp"`` (the sigmoid
        MLP of ``params``' widths) or ``"lenet"``, a Flax module (``params``: its variables), or any
        ``apply(params, x) -> logits [N, K]`` over a pytree ``params``.
      params: the point, a pytree; its dtype is the working dtype (float64 needs ``jax_enable_x64``).
      data: ``(x, y)`` with ``x`` ``[N, ...]`` and integer labels ``y`` ``[N]``, a
        :class:`hessjax.datasets.Dataset` (its training split) or :class:`hessjax.Chunks`; the mean is
        over all ``N``, computed in chunks of ``chunk_size`` samples (default 10,000 for a hessjax MLP, 1,000
        otherwise: float32 convolution sums lose accuracy over larger chunks).
      k: eigenpairs wanted, ``1 ≤ k < P``.
      lam: λ of the anchor penalty, for ``loss_eigenvalues = μ + 2λ`` only (it changes no eigenvector).
      tol: every pair converged has ``‖Hv − μv‖ ≤ tol · max(|μ₁|, |μ_min|)``.
      num_iters, max_restarts, multiplicity_check: as :func:`hessjax.top_k_eigenpairs`.
      seed: of the start vector and the random restarts.
      precision: of every matmul and convolution.
      operator: ``"hessian"`` (the data Hessian) or ``"ggn"`` (its Gauss–Newton part
        ``(1/N) Σ Jᵀ(diag p − ppᵀ)J``, :mod:`hessjax.ggn`; ``loss_eigenvalues`` are then ``g + 2λ``, the
        Gauss–Newton matrix of ``L_eff``).

    The products are the R-operator for a hessjax MLP (:mod:`hessjax.linearized`) and
    forward-over-reverse (``jax.jvp`` of ``jax.grad``) otherwise. One compiled program per call.
    """
    if operator not in ("hessian", "ggn"):
        raise ValueError(f"operator={operator!r} must be 'hessian' or 'ggn'")
    apply, hj_model = _forward(model, params)
    flat, unravel = ravel_pytree(params)
    n_params = flat.shape[0]
    if not 1 <= int(k) < n_params:
        raise ValueError(f"k={k} must be in [1, P={n_params})")
    if chunk_size is None:
        chunk_size = 10_000 if hj_model is not None and hj_model.mlp is not None else 1_000
    chunks = _chunks(data, flat.dtype, chunk_size, None if hj_model is None else hj_model.input_shape)
    if operator == "ggn":
        def linearize(p, c, precision):
            return p

        def matvec(v, p, lam_, c, precision):
            return flat_ggn_matvec(v, p, c, precision=precision, apply=apply)
    elif hj_model is not None:
        op = hessian_operator(hj_model)
        linearize, matvec = op.linearize, op.matvec
    else:
        def linearize(p, c, precision):
            return p

        def matvec(v, p, lam_, c, precision):
            return flat_hessian_matvec(v, p, None, lam_, c, precision=precision, apply=apply)

    @jax.jit
    def solve(params, chunks, key):
        k_start, k_restart = jax.random.split(key)
        v0 = jax.random.normal(k_start, flat.shape, flat.dtype)
        state = linearize(params, chunks, precision)
        zero = jnp.zeros((), flat.dtype)
        return top_k_eigenpairs(functools.partial(matvec, precision=precision), v0, int(k), num_iters,
                                params=(state, zero, chunks), tol=tol, max_restarts=max_restarts, key=k_restart,
                                precision=precision, multiplicity_check=multiplicity_check)

    eig = jax.device_get(solve(params, chunks, jax.random.PRNGKey(seed)))
    mu = np.asarray(eig.eigenvalues)
    eps = float(np.finfo(mu.dtype).eps)
    bounds = error_bounds(mu, eig.residuals, OPERATOR_ROUNDING * eps * float(eig.scale))
    return Spectrum(mu.astype(np.float64), np.asarray(eig.eigenvectors), np.asarray(eig.residuals, np.float64),
                    bounds, np.asarray(eig.converged), shifted(mu, lam), int(eig.num_matvecs), float(eig.scale),
                    unravel)
