"""Hessian-vector products by forward-over-reverse differentiation (Pearlmutter's trick).

``H v = d/dε ∇f(θ + ε v)|₀``, computed as ``jax.jvp(jax.grad(f), (θ,), (v,))``: one gradient
and one forward-mode sweep through it, about 4–5 forward passes, and ``H`` is never formed.

Over a whole data set the data term is a mean over ``N`` samples; :func:`dataset_hvp` takes it in
fixed-size chunks under ``lax.scan`` (memory bounded by one chunk) plus one exact remainder chunk,
and divides by ``N``, never by a padded count.

Every function takes the model's forward pass as ``apply`` (default the sigmoid MLP), so it serves
any :class:`hessjax.models.Model`. For an MLP, :mod:`hessjax.linearized` applies the same Hessian
faster at a fixed θ (its R-operator); :func:`hessjax.linearized.hessian_operator` picks the
products a model's eigensolves use.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .loss import anchor_penalty, cast_lam, cross_entropy_sum
from .models import DEFAULT_PRECISION, Params, apply_mlp

DEFAULT_CHUNK_SIZE = 10_000


def hvp(f: Callable, params, v):
    """``∇²f(params) · v`` for a scalar function ``f`` of a pytree, as a pytree like ``params``."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


class Chunks(NamedTuple):
    """A data set split into ``n`` full chunks of ``C`` samples and one remainder of ``R < C``."""

    x: jax.Array  # [n, C, *input_shape]
    y: jax.Array  # [n, C]
    x_rest: jax.Array  # [R, *input_shape]
    y_rest: jax.Array  # [R]


def chunk_data(x: jax.Array, y: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Chunks:
    """Split ``x`` ``[N, *input_shape]`` / ``y`` ``[N]`` into full chunks and the exact remainder (static shapes)."""
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


def num_samples(chunks: Chunks) -> int:
    """``N``, the samples of ``chunks``."""
    return chunks.y.shape[0] * chunks.y.shape[1] + chunks.y_rest.shape[0]


def dataset_loss(params: Params, anchor: Params, lam, chunks: Chunks, *, precision=DEFAULT_PRECISION,
                 apply=apply_mlp):
    """``L_eff`` over the whole chunked data set: mean cross-entropy over ``N`` + ``λ‖θ − θ_ref‖²``."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    total = _sum_over_chunks(lambda x, y: cross_entropy_sum(params, x, y, precision=precision, apply=apply),
                             chunks, jnp.zeros((), dtype))
    return total / num_samples(chunks) + cast_lam(lam, params) * anchor_penalty(params, anchor)


def dataset_cross_entropy(params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION, apply=apply_mlp):
    """Mean cross-entropy over the whole chunked data set (no penalty)."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    total = _sum_over_chunks(lambda x, y: cross_entropy_sum(params, x, y, precision=precision, apply=apply),
                             chunks, jnp.zeros((), dtype))
    return total / num_samples(chunks)


def dataset_grad_parts(params: Params, anchor: Params, lam, chunks: Chunks, *, precision=DEFAULT_PRECISION,
                       apply=apply_mlp):
    """``(∇ mean CE, ∇L_eff)`` over the whole data set, accumulated chunk by chunk; pytrees like ``params``.
    ``∇L_eff = ∇ mean CE + 2λ(θ − θ_ref)``, the data term computed once for both."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    g = _sum_over_chunks(
        lambda x, y: jax.grad(cross_entropy_sum)(params, x, y, precision=precision, apply=apply), chunks, zeros)
    n = num_samples(chunks)
    lam = cast_lam(lam, params)
    data = jax.tree_util.tree_map(lambda gi: gi / n, g)
    return data, jax.tree_util.tree_map(lambda d, p, a: d + 2 * lam * (p - a), data, params, anchor)


def dataset_grad(params: Params, anchor: Params, lam, chunks: Chunks, *, precision=DEFAULT_PRECISION,
                 apply=apply_mlp):
    """``∇L_eff`` over the whole data set, accumulated chunk by chunk; a pytree like ``params``."""
    return dataset_grad_parts(params, anchor, lam, chunks, precision=precision, apply=apply)[1]


def dataset_hvp(params: Params, anchor: Params, lam, v: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION,
                apply=apply_mlp):
    """``∇²L_eff(θ) · v`` over the whole data set: ``(1/N) Σ_chunks H_c v + 2λ v``.

    Each chunk's HVP is a forward-over-reverse :func:`hvp` of its summed cross-entropy, so memory
    is bounded by one chunk; the anchor penalty's Hessian ``2λI`` is added exactly.
    """
    del anchor  # the penalty's Hessian does not depend on the anchor
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    def chunk_hvp(x, y):
        return hvp(lambda p: cross_entropy_sum(p, x, y, precision=precision, apply=apply), params, v)

    hv = _sum_over_chunks(chunk_hvp, chunks, zeros)
    n = num_samples(chunks)
    lam = cast_lam(lam, params)
    return jax.tree_util.tree_map(lambda h, vi: h / n + 2 * lam * vi, hv, v)


def flat_hessian_matvec(v: jax.Array, params: Params, anchor: Params, lam, chunks: Chunks, *,
                        precision=DEFAULT_PRECISION, apply=apply_mlp) -> jax.Array:
    """:func:`dataset_hvp` on flat vectors in PyTorch ``parameters_to_vector`` order.

    Its signature ``matvec(v, *operator_params)`` fits :func:`hessjax.top_k_eigenpairs`, which passes
    ``(params, anchor, lam, chunks)`` through as traced arguments.
    """
    _, unravel = ravel_pytree(params)
    return ravel_pytree(dataset_hvp(params, anchor, lam, unravel(v), chunks, precision=precision, apply=apply))[0]


def dataset_accuracy(params: Params, chunks: Chunks, *, precision=DEFAULT_PRECISION, apply=apply_mlp):
    """Fraction of the chunked data set whose arg-max logit is its label."""

    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    hits = _sum_over_chunks(
        lambda x, y: jnp.sum(jnp.argmax(apply(params, x, precision=precision), axis=-1) == y).astype(dtype),
        chunks, jnp.zeros((), dtype))
    return hits / num_samples(chunks)
