"""Hessian-vector products by forward-over-reverse differentiation (Pearlmutter's trick).

``H v = d/dε ∇f(θ + ε v)|₀``, computed as ``jax.jvp(jax.grad(f), (θ,), (v,))``: one gradient
and one forward-mode sweep through it, about 4–5 forward passes, and ``H`` is never formed.

Over a whole data set the data term is a mean over ``N`` samples; :func:`dataset_hvp` takes it in
fixed-size chunks under ``lax.scan`` (memory bounded by one chunk) plus one exact remainder chunk,
and divides by ``N``, never by a padded count.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .loss import cast_lam, anchor_penalty, cross_entropy_sum, softmax_jvp, softmax_minus_onehot
from .model import DEFAULT_PRECISION, Params, apply_mlp

DEFAULT_CHUNK_SIZE = 10_000


def hvp(f: Callable, params, v):
    """``∇²f(params) · v`` for a scalar function ``f`` of a pytree, as a pytree like ``params``."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


class Chunks(NamedTuple):
    """A data set split into ``n`` full chunks of ``C`` samples and one remainder of ``R < C``."""

    x: jax.Array  # [n, C, in]
    y: jax.Array  # [n, C]
    x_rest: jax.Array  # [R, in]
    y_rest: jax.Array  # [R]


def chunk_data(x: jax.Array, y: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Chunks:
    """Split ``x`` ``[N, in]`` / ``y`` ``[N]`` into full chunks and the exact remainder (static shapes)."""
    n_samples = x.shape[0]
    if n_samples < 1:
        raise ValueError("the data set is empty")
    if y.shape[0] != n_samples:
        raise ValueError(f"x has {n_samples} samples but y has {y.shape[0]}")
    chunk_size = int(min(max(int(chunk_size), 1), n_samples))
    n_full = n_samples // chunk_size
    cut = n_full * chunk_size
    return Chunks(
        x[:cut].reshape((n_full, chunk_size) + x.shape[1:]),
        y[:cut].reshape((n_full, chunk_size)),
        x[cut:],
        y[cut:],
    )


def _sum_over_chunks(fn: Callable, chunks: Chunks, init):
    """``Σ fn(x_c, y_c)`` over every chunk and the remainder, as a pytree like ``init``."""

    def body(acc, xy):
        return jax.tree_util.tree_map(jnp.add, acc, fn(*xy)), None

    acc, _ = lax.scan(body, init, (chunks.x, chunks.y))
    if chunks.y_rest.shape[0]:
        acc = jax.tree_util.tree_map(jnp.add, acc, fn(chunks.x_rest, chunks.y_rest))
    return acc


def _num_samples(chunks: Chunks) -> int:
    return chunks.y.shape[0] * chunks.y.shape[1] + chunks.y_rest.shape[0]


def dataset_loss(params: Params, anchor: Params, lam, chunks: Chunks, *, precision=DEFAULT_PRECISION):
    """``L_eff`` over the whole chunked data set: mean cross-entropy over ``N`` + ``λ‖θ − θ_ref‖²``."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    total = _sum_over_chunks(lambda x, y: cross_entropy_sum(params, x, y, precision=precision),
                             chunks, jnp.zeros((), dtype))
    return total / _num_samples(chunks) + cast_lam(lam, params) * anchor_penalty(params, anchor)


def dataset_cross_entropy(params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION):
    """Mean cross-entropy over the whole chunked data set (no penalty)."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    total = _sum_over_chunks(lambda x, y: cross_entropy_sum(params, x, y, precision=precision),
                             chunks, jnp.zeros((), dtype))
    return total / _num_samples(chunks)


def dataset_grad(params: Params, anchor: Params, lam, chunks: Chunks, *, precision=DEFAULT_PRECISION):
    """``∇L_eff`` over the whole data set, accumulated chunk by chunk; a pytree like ``params``."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    g = _sum_over_chunks(
        lambda x, y: jax.grad(cross_entropy_sum)(params, x, y, precision=precision), chunks, zeros)
    n = _num_samples(chunks)
    lam = cast_lam(lam, params)
    return jax.tree_util.tree_map(lambda gi, p, a: gi / n + 2 * lam * (p - a), g, params, anchor)


def dataset_hvp(params: Params, anchor: Params, lam, v: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION):
    """``∇²L_eff(θ) · v`` over the whole data set: ``(1/N) Σ_chunks H_c v + 2λ v``.

    Each chunk's HVP is a forward-over-reverse :func:`hvp` of its summed cross-entropy, so memory
    is bounded by one chunk; the anchor penalty's Hessian ``2λI`` is added exactly.
    """
    del anchor  # the penalty's Hessian does not depend on the anchor
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    hv = _sum_over_chunks(
        lambda x, y: hvp(lambda p: cross_entropy_sum(p, x, y, precision=precision), params, v), chunks, zeros)
    n = _num_samples(chunks)
    lam = cast_lam(lam, params)
    return jax.tree_util.tree_map(lambda h, vi: h / n + 2 * lam * vi, hv, v)


def flat_hessian_matvec(v: jax.Array, params: Params, anchor: Params, lam, chunks: Chunks, *,
                        precision=DEFAULT_PRECISION) -> jax.Array:
    """:func:`dataset_hvp` on flat vectors in PyTorch ``parameters_to_vector`` order.

    Its signature ``matvec(v, *operator_params)`` fits :func:`hessjax.top_k_eigenpairs`, which passes
    ``(params, anchor, lam, chunks)`` through as traced arguments.
    """
    _, unravel = ravel_pytree(params)
    return ravel_pytree(dataset_hvp(params, anchor, lam, unravel(v), chunks, precision=precision))[0]


def dataset_accuracy(params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION):
    """Fraction of the chunked data set whose arg-max logit is its label."""

    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    hits = _sum_over_chunks(
        lambda x, y: jnp.sum(jnp.argmax(apply_mlp(params, x, precision=precision), axis=-1) == y).astype(dtype),
        chunks, jnp.zeros((), dtype))
    return hits / _num_samples(chunks)


# ----------------------------------------------------------------------------------------------
# many products at one θ: the forward and backward pass computed once


class _Residuals(NamedTuple):
    """Per-sample quantities of one forward/backward pass that the Hessian's R-operator needs.

    Shapes for a chunk of ``C`` samples of an ``L``-layer MLP with hidden widths ``h_1 … h_{L-1}``
    and ``K`` classes (a leading ``[n]`` axis when stacked over full chunks).
    """

    hidden: tuple  # L-1 arrays [C, h_l]: h_l = σ(z_l)
    curvature: tuple  # L-1 arrays [C, h_l]: κ_l = e_l ⊙ σ''(z_l), e_l = ∂ℓ/∂h_l
    deltas: tuple  # L-1 arrays [C, h_{l}] for l = 2 … L: δ_l = ∂ℓ/∂z_l (δ_L = p − onehot(y), [C, K])
    probs: jax.Array  # [C, K] softmax of the logits


class LinearizedHessian(NamedTuple):
    """The mean cross-entropy's Hessian at a fixed ``θ`` as stored residuals (see :func:`linearize_hessian`).

    A pytree of arrays: it passes through ``jit``, ``vmap`` and :func:`hessjax.top_k_eigenpairs`'s
    ``params`` as a traced argument. Size: ``(3L − 4)·h + 2K`` numbers per sample for ``L`` layers
    of hidden width ``h`` and ``K`` classes — 660 for 784-128-128-10, 2.6 kB per sample in float32
    (158 MB for 60,000 samples); the inputs ``x`` are not stored (they are read from the chunks).
    """

    params: Params  # θ, the point of linearization
    full: _Residuals  # of the full chunks, every array with a leading [n, C]
    rest: _Residuals  # of the remainder chunk, leading [R] (R may be 0)


def _mm(a, b, precision):
    return jnp.matmul(a, b, precision=precision)


def _chunk_residuals(params: Params, x, y, precision) -> _Residuals:
    """One forward and backward pass of the summed cross-entropy over a chunk ``x`` ``[C, in]``."""
    num_layers = len(params)
    hidden, h = [], x
    for i, (w, b) in enumerate(params):
        z = _mm(h, w.T, precision) + b
        if i < num_layers - 1:
            h = jax.nn.sigmoid(z)
            hidden.append(h)
    probs = jax.nn.softmax(z, axis=-1)
    delta = softmax_minus_onehot(probs, y)
    deltas, curvature = [delta], []
    for l in range(num_layers - 1, 0, -1):  # hidden layer l (1-based), fed by δ_{l+1}
        e = _mm(delta, params[l][0], precision)  # ∂ℓ/∂h_l
        h = hidden[l - 1]
        slope = h * (1 - h)  # σ'(z_l)
        delta = e * slope
        curvature.append(e * slope * (1 - 2 * h))  # e_l ⊙ σ''(z_l), σ'' = σ'(1 − 2σ)
        if l > 1:
            deltas.append(delta)
    return _Residuals(tuple(hidden), tuple(reversed(curvature)), tuple(reversed(deltas)), probs)


def _chunk_rop(params: Params, res: _Residuals, x, v: Params, precision) -> Params:
    """``Σ_{samples of the chunk} ∇²ℓ(θ) · v`` from the chunk's residuals (Pearlmutter's R-operator)."""
    num_layers = len(params)
    inputs = (x,) + tuple(res.hidden)  # h_0 … h_{L-1}
    zdots, hdots, hdot = [], [None], None
    for l, ((w, _), (vw, vb)) in enumerate(zip(params, v)):  # forward: ż_l, ḣ_l
        zdot = _mm(inputs[l], vw.T, precision) + vb
        if l > 0:
            zdot = zdot + _mm(hdot, w.T, precision)
        zdots.append(zdot)
        if l < num_layers - 1:
            h = inputs[l + 1]
            hdot = h * (1 - h) * zdot
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
            h = inputs[l]
            ddot = edot * h * (1 - h) + res.curvature[l - 1] * zdots[l - 1]
        out[l] = (gw, gb)
    return tuple(out)


def linearize_hessian(params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION) -> LinearizedHessian:
    r"""One forward and backward pass over the data set at ``θ``, kept for many Hessian products there.

    :func:`dataset_hvp` recomputes the forward pass and the gradient's backward pass for every ``v``
    (forward-over-reverse, about 4.75 forward passes of work). At a fixed ``θ`` — a whole Lanczos
    run — those do not depend on ``v``; this stores what the product needs, so that
    :func:`linearized_dataset_hvp` costs about 2.6 forward passes: the exact ``∇²`` of the mean
    cross-entropy by Pearlmutter's R-operator for the sigmoid MLP of :func:`hessjax.apply_mlp`.

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
    The residuals are ``h_l``, ``e_l ⊙ σ''(z_l)``, ``δ_l`` (``l ≥ 2``) and ``p``
    (:class:`LinearizedHessian`); ``σ'(z_l) = h_l(1 − h_l)`` is recomputed, and ``x`` is read from
    ``chunks`` again, never copied. Memory: all residuals of the data set at once, not one chunk.
    """
    full = lax.map(lambda xy: _chunk_residuals(params, xy[0], xy[1], precision), (chunks.x, chunks.y))
    rest = _chunk_residuals(params, chunks.x_rest, chunks.y_rest, precision)
    return LinearizedHessian(params, full, rest)


def linearized_dataset_hvp(lin: LinearizedHessian, lam, v: Params, chunks: Chunks, *,
                           precision=DEFAULT_PRECISION):
    """:func:`dataset_hvp` at ``lin.params`` from a :func:`linearize_hessian` of the same ``chunks``:
    ``(1/N) Σ_chunks H_c v + 2λ v``, a pytree like ``v``."""
    params = lin.params

    def body(acc, args):
        res, x = args
        return jax.tree_util.tree_map(jnp.add, acc, _chunk_rop(params, res, x, v, precision)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    hv, _ = lax.scan(body, zeros, (lin.full, chunks.x))
    if chunks.y_rest.shape[0]:
        hv = jax.tree_util.tree_map(jnp.add, hv, _chunk_rop(params, lin.rest, chunks.x_rest, v, precision))
    n = _num_samples(chunks)
    lam = cast_lam(lam, params)
    return jax.tree_util.tree_map(lambda h, vi: h / n + 2 * lam * vi, hv, v)


def linearized_flat_hessian_matvec(v: jax.Array, lin: LinearizedHessian, lam, chunks: Chunks, *,
                                   precision=DEFAULT_PRECISION) -> jax.Array:
    """:func:`flat_hessian_matvec` from a :func:`linearize_hessian`, on flat vectors.

    Fits :func:`hessjax.top_k_eigenpairs` with ``params=(lin, lam, chunks)``: linearize once per
    ``θ``, then every Lanczos step costs about 2.6 forward passes instead of 4.75.
    """
    _, unravel = ravel_pytree(lin.params)
    return ravel_pytree(linearized_dataset_hvp(lin, lam, unravel(v), chunks, precision=precision))[0]
