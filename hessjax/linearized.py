r"""The data Hessian at a fixed θ, linearized once and applied many times: the MLP's R-operator, and
:func:`hessian_operator`, the products a model's eigensolves use.

:func:`hessjax.hvp.dataset_hvp` recomputes the forward pass and the gradient's backward pass for
every ``v`` (forward-over-reverse, about 4.75 forward passes of work). At a fixed ``θ`` — a whole
Lanczos run — those do not depend on ``v``. For an MLP :func:`linearize_hessian` stores what the
product needs, so that :func:`linearized_dataset_hvp` costs about 2.6 forward passes: the exact ``∇²``
of the mean cross-entropy by Pearlmutter's R-operator, for any smooth activation σ
(:mod:`hessjax.models.activations`). Any other model's products are forward-over-reverse.

With ``h_0 = x``, ``z_l = h_{l-1} W_lᵀ + b_l``, ``h_l = σ(z_l)``, ``p = softmax(z_L)``,
``δ_L = p − e_y``, ``e_l = δ_{l+1} W_{l+1}``, ``δ_l = e_l ⊙ σ'(z_l)``, the product with
``v = (V_l, c_l)`` is, per sample,

.. math::  ż_l = ḣ_{l-1} W_lᵀ + h_{l-1} V_lᵀ + c_l,\quad ḣ_0 = 0,\quad ḣ_l = σ'(z_l) ⊙ ż_l,\\
           δ̇_L = p ⊙ ż_L − p\,(pᵀ ż_L),\quad
           δ̇_l = (δ̇_{l+1} W_{l+1} + δ_{l+1} V_{l+1}) ⊙ σ'(z_l) + e_l ⊙ σ''(z_l) ⊙ ż_l,\\
           (Hv)_{W_l} = δ̇_lᵀ h_{l-1} + δ_lᵀ ḣ_{l-1},\qquad (Hv)_{b_l} = Σ δ̇_l,

summed over samples and divided by ``N``: the same numbers as ``jax.linearize(jax.grad(f), θ)``
applied to ``v`` (and as torch's double backward, :func:`hessjax.bridges.hvp_torch`), up to
rounding. ``δ_L`` and ``δ̇_L`` are formed without cancellation
(:func:`hessjax.loss.softmax_minus_onehot`, :func:`hessjax.loss.softmax_jvp`): as written above
they lose a factor ``1/(1 − p_y)`` of float32 accuracy on confidently classified samples, which
held the float32 residuals of the trained model's top 30 at ~1e-5·|λ₁| (benchmarks/RESULTS.md).
The residuals are ``h_l``, ``e_l ⊙ σ''(z_l)``, ``δ_l`` (``l ≥ 2``) and ``p`` (:class:`LinearizedHessian`);
``σ'(z_l)`` is recomputed from ``h_l`` where the activation allows (sigmoid, tanh, softplus) and stored
otherwise (GELU), and ``x`` is read from the chunks again, never copied. Memory: all residuals of the
data set at once, not one chunk.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .hvp import Chunks, flat_hessian_matvec, num_samples
from .loss import cast_lam, softmax_jvp, softmax_minus_onehot
from .models import DEFAULT_PRECISION, Activation, Model, Params, get_activation

__all__ = ["HessianOperator", "LinearizedHessian", "hessian_operator", "linearize_hessian",
           "linearized_dataset_hvp", "linearized_flat_hessian_matvec"]


class _Residuals(NamedTuple):
    """Per-sample quantities of one forward/backward pass that the Hessian's R-operator needs.

    Shapes for a chunk of ``C`` samples of an ``L``-layer MLP with hidden widths ``h_1 … h_{L-1}``
    and ``K`` classes (a leading ``[n]`` axis when stacked over full chunks).
    """

    hidden: tuple  # L-1 arrays [C, h_l]: h_l = σ(z_l)
    curvature: tuple  # L-1 arrays [C, h_l]: κ_l = e_l ⊙ σ''(z_l), e_l = ∂ℓ/∂h_l
    deltas: tuple  # L-1 arrays [C, h_{l}] for l = 2 … L: δ_l = ∂ℓ/∂z_l (δ_L = p − onehot(y), [C, K])
    probs: jax.Array  # [C, K] softmax of the logits
    slopes: tuple  # L-1 arrays [C, h_l]: σ'(z_l) where it does not follow from h_l (GELU), else ()


class LinearizedHessian(NamedTuple):
    """The mean cross-entropy's Hessian at a fixed ``θ`` as stored residuals (see :func:`linearize_hessian`).

    A pytree of arrays: it passes through ``jit``, ``vmap`` and :func:`hessjax.top_k_eigenpairs`'s
    ``params`` as a traced argument. Size: ``(3L − 4)·h + 2K`` numbers per sample for ``L`` layers
    of hidden width ``h`` and ``K`` classes — 660 for 784-128-128-10, 2.6 kB per sample in float32
    (158 MB for 60,000 samples), ``(L − 1)·h`` more for GELU; the inputs ``x`` are not stored.
    """

    params: Params  # θ, the point of linearization
    full: _Residuals  # of the full chunks, every array with a leading [n, C]
    rest: _Residuals  # of the remainder chunk, leading [R] (R may be 0)


def _mm(a, b, precision):
    return jnp.matmul(a, b, precision=precision)


def _activation(activation) -> Activation:
    return activation if isinstance(activation, Activation) else get_activation(activation)


def _times_slope(act: Activation, a, h, slope):
    """``a ⊙ σ'(z)``; for the sigmoid as ``a·h·(1 − h)``, the order of its products since hessjax began."""
    return a * h * (1 - h) if act.name == "sigmoid" else a * slope


def _chunk_residuals(params: Params, x, y, act: Activation, precision) -> _Residuals:
    """One forward and backward pass of the summed cross-entropy over a chunk ``x`` ``[C, in]``."""
    num_layers = len(params)
    hidden, pre, h = [], [], x
    for i, (w, b) in enumerate(params):
        z = _mm(h, w.T, precision) + b
        if i < num_layers - 1:
            h = act.fn(z)
            hidden.append(h)
            pre.append(z)
    probs = jax.nn.softmax(z, axis=-1)
    delta = softmax_minus_onehot(probs, y)
    deltas, curvature, slopes = [delta], [], []
    for l in range(num_layers - 1, 0, -1):  # hidden layer l (1-based), fed by δ_{l+1}
        e = _mm(delta, params[l][0], precision)  # ∂ℓ/∂h_l
        h, z = hidden[l - 1], (None if act.from_output else pre[l - 1])
        slope = act.slope(z, h)  # σ'(z_l)
        delta = e * slope
        if act.curve_ratio is not None:
            curvature.append(e * slope * act.curve_ratio(h))  # e_l ⊙ σ''(z_l), σ'' = σ' · (σ''/σ')
        else:
            curvature.append(e * act.curve(z, h))
        if not act.from_output:
            slopes.append(slope)
        if l > 1:
            deltas.append(delta)
    return _Residuals(tuple(hidden), tuple(reversed(curvature)), tuple(reversed(deltas)), probs,
                      tuple(reversed(slopes)))


def _chunk_rop(params: Params, res: _Residuals, x, v: Params, act: Activation, precision) -> Params:
    """``Σ_{samples of the chunk} ∇²ℓ(θ) · v`` from the chunk's residuals (Pearlmutter's R-operator)."""
    num_layers = len(params)
    inputs = (x,) + tuple(res.hidden)  # h_0 … h_{L-1}
    slopes = res.slopes if res.slopes else tuple(act.slope(None, h) for h in res.hidden)
    zdots, hdots, hdot = [], [None], None
    for l, ((w, _), (vw, vb)) in enumerate(zip(params, v)):  # forward: ż_l, ḣ_l
        zdot = _mm(inputs[l], vw.T, precision) + vb
        if l > 0:
            zdot = zdot + _mm(hdot, w.T, precision)
        zdots.append(zdot)
        if l < num_layers - 1:
            hdot = slopes[l] * zdot
            hdots.append(hdot)
    p, zl = res.probs, zdots[-1]
    ddot = softmax_jvp(p, zl)  # δ̇_L = (diag p − p pᵀ) ż_L
    out = [None] * num_layers
    for l in range(num_layers - 1, -1, -1):  # backward: δ̇_l and the products for layer l
        gw = _mm(ddot.T, inputs[l], precision)
        gb = jnp.sum(ddot, axis=0)
        if l > 0:
            delta = res.deltas[l - 1]  # δ_{l+1} in 1-based numbering
            gw = gw + _mm(delta.T, hdots[l], precision)
            edot = _mm(ddot, params[l][0], precision) + _mm(delta, v[l][0], precision)
            ddot = _times_slope(act, edot, inputs[l], slopes[l - 1]) + res.curvature[l - 1] * zdots[l - 1]
        out[l] = (gw, gb)
    return tuple(out)


def linearize_hessian(params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION,
                      activation="sigmoid") -> LinearizedHessian:
    """One forward and backward pass of the MLP over the data set at ``θ``, kept for many Hessian
    products there (see the module docstring)."""
    act = _activation(activation)
    full = lax.map(lambda xy: _chunk_residuals(params, xy[0], xy[1], act, precision), (chunks.x, chunks.y))
    rest = _chunk_residuals(params, chunks.x_rest, chunks.y_rest, act, precision)
    return LinearizedHessian(params, full, rest)


def linearized_dataset_hvp(lin: LinearizedHessian, lam, v: Params, chunks: Chunks, *,
                           precision=DEFAULT_PRECISION, activation="sigmoid"):
    """:func:`hessjax.hvp.dataset_hvp` at ``lin.params`` from a :func:`linearize_hessian` of the same
    ``chunks`` (and activation): ``(1/N) Σ_chunks H_c v + 2λ v``, a pytree like ``v``."""
    act = _activation(activation)
    params = lin.params

    def body(acc, args):
        res, x = args
        return jax.tree_util.tree_map(jnp.add, acc, _chunk_rop(params, res, x, v, act, precision)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    hv, _ = lax.scan(body, zeros, (lin.full, chunks.x))
    if chunks.y_rest.shape[0]:
        hv = jax.tree_util.tree_map(jnp.add, hv, _chunk_rop(params, lin.rest, chunks.x_rest, v, act, precision))
    n = num_samples(chunks)
    lam = cast_lam(lam, params)
    return jax.tree_util.tree_map(lambda h, vi: h / n + 2 * lam * vi, hv, v)


def linearized_flat_hessian_matvec(v: jax.Array, lin: LinearizedHessian, lam, chunks: Chunks, *,
                                   precision=DEFAULT_PRECISION, activation="sigmoid") -> jax.Array:
    """:func:`hessjax.flat_hessian_matvec` from a :func:`linearize_hessian`, on flat vectors.

    Fits :func:`hessjax.top_k_eigenpairs` with ``params=(lin, lam, chunks)``: linearize once per
    ``θ``, then every Lanczos step costs about 2.6 forward passes instead of 4.75.
    """
    _, unravel = ravel_pytree(lin.params)
    hv = linearized_dataset_hvp(lin, lam, unravel(v), chunks, precision=precision, activation=activation)
    return ravel_pytree(hv)[0]


# ----------------------------------------------------------------------------------------------
# the products of any model


class HessianOperator(NamedTuple):
    """How a model's data Hessian is applied at a fixed θ.

    ``state = linearize(params, chunks, precision)`` once per θ (a pytree: it is traced, vmapped and
    sliced per λ-batch member like any operator parameter), then
    ``matvec(v, state, lam, chunks, precision) -> (∇²(mean CE) + 2λI) v`` on flat vectors.
    """

    linearize: Callable
    matvec: Callable
    kind: str  # "r-operator" (an MLP's stored residuals) or "forward-over-reverse" (jax.jvp of jax.grad)


def hessian_operator(model: Model) -> HessianOperator:
    """The Hessian products of ``model``: the R-operator for an MLP, forward-over-reverse otherwise
    (:func:`hessjax.hvp.flat_hessian_matvec`, memory bounded by one chunk; nothing stored per θ)."""
    if model.mlp is not None:
        act = model.mlp.activation

        def lin(params, chunks, precision):
            return linearize_hessian(params, chunks, precision=precision, activation=act)

        def mv(v, state, lam, chunks, precision):
            return linearized_flat_hessian_matvec(v, state, lam, chunks, precision=precision, activation=act)

        return HessianOperator(lin, mv, "r-operator")

    def keep(params, chunks, precision):
        return params

    def products(v, params, lam, chunks, precision):
        return flat_hessian_matvec(v, params, None, lam, chunks, precision=precision, apply=model.apply)

    return HessianOperator(keep, products, "forward-over-reverse")
