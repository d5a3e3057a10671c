r"""Spectral summaries of a symmetric operator beyond its top ``k``: trace, density and bottom ``k``.

Like :mod:`hessjax.lanczos`, every function sees the operator only through ``matvec(v, *params)``
on flat vectors ``[P]`` and passes ``params`` through as traced arguments, so each one ``jit``\ s
once and ``vmap``\ s over the operator's parameters (for a sweep, ``(params, anchor, lam, chunks)``
of :func:`hessjax.hvp.flat_hessian_matvec`, with the penalty's exact ``2λI`` inside). Nothing is
jitted here; the caller composes ``jit(vmap(...))`` once.

**Probes.** Probe ``i`` of ``key`` is ``z_i = rademacher(fold_in(key, i), (P,), dtype)`` (entries
``±1``), independent of how probes are batched: ``batch_size`` probes go through one ``vmap``\ ped
matvec at a time under ``lax.map`` (memory: ``batch_size`` HVPs, and for SLQ ``batch_size`` Lanczos
bases ``[m + 1, P]``). :func:`probe_vectors` regenerates them.

**Hutchinson** (:func:`hutchinson_trace`). ``E[zᵀAz] = tr A`` for Rademacher ``z``; the estimate
is the mean of ``s_i = z_iᵀ A z_i`` over ``N`` probes, its standard error ``std(s, ddof=1)/√N``.
The variance of one sample is ``2 Σ_{i≠j} A_ij²``. For ``∇²L_eff`` every sample is exactly
``2λP`` above the data term's (``zᵀ(2λI)z = 2λ‖z‖² = 2λP``).

**Stochastic Lanczos quadrature** (:func:`slq_density`; Ubaru, Chen & Saad 2017, PyHessian's
``density``). Per probe, ``m`` steps of Lanczos with full reorthogonalisation from ``q = z/√P``
(:func:`hessjax.lanczos.lanczos_tridiag`) give ``T = S Θ Sᵀ``; the nodes are the Ritz values
``θ_j`` and the weights ``w_j = S_{0j}²`` (they sum to 1). Then

.. math::  \sum_j w_j f(θ_j) ≈ q^\top f(A)\, q, \qquad
           E\big[q^\top f(A)\, q\big] = \tfrac1P \operatorname{tr} f(A),

exact for polynomials of degree ``≤ 2m − 1`` and, when ``m ≥ P``, for every ``f`` (:func:`slq_estimate`).
The spectral density ``φ(t) = (1/P) Σ δ(t − λ_i)`` is estimated by the average over probes of
``Σ_j w_j δ(t − θ_j)``, broadened by a Gaussian of width ``σ`` (:func:`hessjax.density.density_on_grid`, numpy).

**Bottom k** (:func:`bottom_k_eigenpairs`). The top ``k`` of ``σI − A`` by
:func:`hessjax.lanczos.top_k_eigenpairs` (the Krylov space does not depend on ``σ``, only the
convergence scale ``tol·|σ − λ_min|`` does), then Rayleigh quotients and true residuals of ``A``.

Precision: every probe inner product and every product with the Lanczos basis runs in
``precision`` (``HIGHEST`` by default: no TF32 on GPUs); the HVP's own precision is the caller's.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .krylov import lanczos_tridiag
from .lanczos import EigResult, top_k_eigenpairs
from .operators import apply_operator, as_int, check_operator

Array = jax.Array

__all__ = [
    "SLQResult",
    "TraceEstimate",
    "bottom_k_eigenpairs",
    "hutchinson_trace",
    "probe_vectors",
    "slq_density",
    "slq_estimate",
]

_DEFAULT_TRACE_BATCH = 8
_DEFAULT_SLQ_BATCH = 1


class TraceEstimate(NamedTuple):
    """Hutchinson estimate of ``tr A`` (or SLQ estimate of ``tr f(A)``)."""

    trace: Array  # [] mean of the samples
    stderr: Array  # [] std(samples, ddof=1) / √N; NaN for N = 1
    samples: Array  # [N] one unbiased estimate per probe: z_iᵀ A z_i


class SLQResult(NamedTuple):
    """Gauss quadrature nodes and weights of every probe's Lanczos tridiagonal matrix."""

    nodes: Array  # [N, m] Ritz values θ_j of T, ascending
    weights: Array  # [N, m] squared first components S_{0j}²; each row sums to 1


# ----------------------------------------------------------------------------------------------
# validation (before tracing)


def _check(matvec, num_probes, dim, dtype, params, batch_size, default_batch):
    params = check_operator(matvec, params)
    num_probes = as_int("num_probes", num_probes, 1)
    dim = as_int("dim", dim, 1)
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype={dtype!r} is not a dtype") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype={dtype} must be a real floating dtype (the working dtype)")
    batch_size = default_batch if batch_size is None else as_int("batch_size", batch_size, 1)
    return num_probes, dim, dtype, params, min(batch_size, num_probes)


def _map(fn, num: int, batch_size: int):
    """``fn(i)`` for ``i = 0 … num−1``, ``batch_size`` at a time (vmapped) under ``lax.map``."""
    return lax.map(fn, jnp.arange(num, dtype=jnp.uint32), batch_size=batch_size)


def _probe(key, i, dim: int, dtype) -> Array:
    return jax.random.rademacher(jax.random.fold_in(key, i), (dim,), dtype)


def probe_vectors(key, num_probes: int, dim: int, dtype) -> Array:
    """``[N, P]`` the Rademacher probes that :func:`hutchinson_trace` and :func:`slq_density` use for ``key``."""
    num_probes, dim = as_int("num_probes", num_probes, 1), as_int("dim", dim, 1)
    return jax.vmap(lambda i: _probe(key, i, dim, dtype))(jnp.arange(num_probes, dtype=jnp.uint32))


def _summarise(samples: Array) -> TraceEstimate:
    n = samples.shape[0]
    mean = jnp.mean(samples)
    stderr = jnp.std(samples, ddof=1) / math.sqrt(n) if n > 1 else jnp.full((), jnp.nan, samples.dtype)
    return TraceEstimate(mean, stderr, samples)


# ----------------------------------------------------------------------------------------------
# public API


def hutchinson_trace(matvec: Callable, key, num_probes: int, dim: int, dtype, *, params=(),
                     batch_size: int | None = None, precision=lax.Precision.HIGHEST) -> TraceEstimate:
    """Hutchinson's estimate of ``tr A`` from ``num_probes`` Rademacher probes.

    Args:
      matvec: ``matvec(v, *params) -> A v`` for ``v`` ``[dim]``; ``A`` symmetric (not required for the trace).
      key: PRNG key; probe ``i`` is ``rademacher(fold_in(key, i))`` (see :func:`probe_vectors`).
      num_probes, dim: static ints ``N ≥ 1``, ``P ≥ 1``.
      dtype: working dtype of the probes and samples (e.g. ``jnp.float32`` for the sweep's model).
      params: operator parameters, passed to ``matvec`` as traced arguments (vmap over them freely).
      batch_size: probes per vmapped matvec (static; default 8); the result does not depend on it
        beyond rounding.
      precision: of the inner products ``zᵀ(Az)``.

    Returns:
      :class:`TraceEstimate`: ``trace`` [], ``stderr`` [] (NaN for ``N = 1``), ``samples`` [N].
    """
    num_probes, dim, dtype, params, batch_size = _check(matvec, num_probes, dim, dtype, params, batch_size,
                                                        _DEFAULT_TRACE_BATCH)

    def sample(i):
        z = _probe(key, i, dim, dtype)
        return jnp.dot(z, apply_operator(matvec, z, params), precision=precision)

    return _summarise(_map(sample, num_probes, batch_size))


def slq_density(matvec: Callable, key, num_probes: int, num_iters: int, dim: int, dtype, *, params=(),
                batch_size: int | None = None, precision=lax.Precision.HIGHEST) -> SLQResult:
    """Stochastic Lanczos quadrature: per probe, the nodes and weights of ``m = num_iters`` Lanczos steps.

    Args:
      matvec: ``matvec(v, *params) -> A v``; ``A`` must be symmetric.
      key: PRNG key; probe ``i`` is ``rademacher(fold_in(key, i))`` (see :func:`probe_vectors`), and
        the Lanczos restart vectors of an invariant subspace come from ``fold_in(fold_in(key, i), 1)``.
      num_probes: ``N ≥ 1`` (static).
      num_iters: ``1 ≤ m ≤ P`` (static); PyHessian's default is 100 with ~1 probe.
      dim, dtype: as in :func:`hutchinson_trace`.
      params: operator parameters, traced.
      batch_size: probes tridiagonalised at once (static; default 1: each holds an ``[m + 1, P]`` basis).
      precision: of the Gram–Schmidt products.

    Returns:
      :class:`SLQResult` ``nodes``/``weights`` ``[N, m]``. ``(1/N) Σ_i Σ_j w_ij δ(t − θ_ij)`` estimates
      the spectral density normalised to 1; ``P · mean_i Σ_j w_ij f(θ_ij)`` estimates ``tr f(A)``
      (:func:`slq_estimate`). An invariant subspace (``β = 0``) makes ``T`` block diagonal and the
      nodes of later blocks get weight ``0``, so the quadrature stays exact.
    """
    num_probes, dim, dtype, params, batch_size = _check(matvec, num_probes, dim, dtype, params, batch_size,
                                                        _DEFAULT_SLQ_BATCH)
    m = as_int("num_iters", num_iters, 1)
    if m > dim:
        raise ValueError(f"num_iters={m} must satisfy 1 <= num_iters <= P (P={dim})")

    def quadrature(i):
        z = _probe(key, i, dim, dtype)
        dec = lanczos_tridiag(matvec, z, m, params=params, key=jax.random.fold_in(jax.random.fold_in(key, i), 1),
                              precision=precision)
        off = dec.betas[:-1]
        t = jnp.diag(dec.alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
        theta, s = jnp.linalg.eigh(t)
        return theta, jnp.square(s[0])

    nodes, weights = _map(quadrature, num_probes, batch_size)
    return SLQResult(nodes, weights)


def slq_estimate(result: SLQResult, fn: Callable[[Array], Array], dim: int) -> TraceEstimate:
    """SLQ estimate of ``tr f(A)``: samples ``P · Σ_j w_ij f(θ_ij)`` per probe, their mean and stderr.

    ``fn`` acts elementwise on the nodes (e.g. ``jnp.log`` for a log-determinant, ``lambda t: t**2``).
    For a polynomial of degree ``≤ 2m − 1`` each sample equals ``zᵀ f(A) z`` exactly.
    """
    samples = as_int("dim", dim, 1) * jnp.sum(result.weights * fn(result.nodes), axis=-1)
    return _summarise(samples)


def bottom_k_eigenpairs(matvec: Callable, v0: Array, k: int, num_iters: int | None = None, *, params=(),
                        shift=0.0, tol=1e-5, max_restarts: int | None = None, key=None,
                        precision=lax.Precision.HIGHEST) -> EigResult:
    r"""The ``k`` smallest (algebraic) eigenpairs of a symmetric operator ``A``, ascending.

    Runs :func:`hessjax.lanczos.top_k_eigenpairs` on ``B = σI − A`` (``σ = shift``, traced, passed
    through with ``params``), then recomputes each eigenvalue as the Rayleigh quotient ``vᵀAv`` (no
    cancellation against ``σ``) and the *true* residual ``‖A v − μ v‖`` with one more batched matvec.

    ``shift`` sets only the convergence scale: pairs are converged when their residual is at most
    ``tol·|σ − μ_1|``. With ``σ = 0`` that is ``tol·|λ_min|``, which never stops for a Hessian whose
    smallest eigenvalue is ≈ 0; pass ``σ ≈ λ_max`` (e.g. the top-k result's ``eigenvalues[0]``) to
    make it ``≈ tol·‖A‖``, the scale of the top-k solve.

    Args and defaults are :func:`hessjax.lanczos.top_k_eigenpairs`'s (``max_restarts=None`` uses its
    default). Returns :class:`hessjax.lanczos.EigResult` with ``eigenvalues`` ascending
    ``μ_1 ≤ … ≤ μ_k``, ``eigenvectors`` ``[k, P]`` (rows), ``residuals`` in ``A``, ``converged`` as
    above and ``num_matvecs`` including the extra ``k``. Vmaps over ``v0``, ``params`` and ``shift``.
    """
    params = check_operator(matvec, params)
    v0 = jnp.asarray(v0)
    dtype = v0.dtype if jnp.issubdtype(v0.dtype, jnp.floating) else jnp.float32  # top_k refuses non-floats
    shift = jnp.asarray(shift).astype(dtype)

    def negated(v, sigma, *op_params):
        return sigma * v - apply_operator(matvec, v, op_params)

    extra = {} if max_restarts is None else {"max_restarts": max_restarts}
    res = top_k_eigenpairs(negated, v0, k, num_iters, params=(shift, *params), tol=tol, key=key,
                           precision=precision, **extra)
    vecs = res.eigenvectors
    applied = jax.vmap(lambda v: apply_operator(matvec, v, params))(vecs)  # [k, P], one batched matvec
    mu = jnp.einsum("kp,kp->k", vecs, applied, precision=precision)
    order = jnp.argsort(mu)
    mu, vecs, applied = mu[order], vecs[order], applied[order]
    residuals = jnp.linalg.norm(applied - mu[:, None] * vecs, axis=1)
    scale = jnp.abs(shift - mu[0])
    converged = residuals <= jnp.asarray(tol, dtype) * scale
    return EigResult(mu, vecs, residuals, converged, res.num_matvecs + k, res.num_restarts, scale, res.warm,
                     res.batch_matvecs + k)
