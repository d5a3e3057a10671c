r"""Top-``k`` eigenpairs of a symmetric operator by thick-restarted Lanczos, fully compiled.

The operator is only seen through ``matvec(v, *params) -> A v`` on flat vectors ``[P]``; its
parameters travel as traced arguments, so the whole solver ``jit``\ s once and ``vmap``\ s over
them (e.g. over the penalty ``λ``, whose Hessian is exactly ``2λI``).

**Lanczos with full reorthogonalisation.** With orthonormal rows ``q_0 … q_j`` of the basis ``Q``
filled, column ``j`` is processed as

.. math::  w = A q_j,\qquad h = Q w,\; w \leftarrow w - Q^\top h, \qquad
           \beta = \lVert w\rVert, \qquad q_{j+1} = w / \beta .

The projection is done in three stages: on ``q_{j-1}`` and ``q_j``, which the three-term recurrence
couples to (two dot products), then one classical Gram–Schmidt pass over every filled row, and a
second pass only when the first removed more than ``1 − 1/√2`` of the vector (the
Daniel–Gragg–Kaufman–Stewart criterion: "twice is enough"). After the local step the full pass only
removes rounding, so the second pass is rarely needed and each column costs one read of the basis in
each direction. Products with the basis use ``precision`` (``HIGHEST`` by default: no TF32 on
GPUs). The coefficients ``h`` are written into row and column ``j`` of a dense projected matrix
``T = Qᵀ A Q`` and ``β`` at ``T[j+1, j]``, so ``A Q_n = Q_n T_n + r bᵀ`` holds exactly with the
residual row ``r = q_n`` and its coupling ``b = T[n, :n]``; from a single start ``T_n`` is the
Lanczos tridiagonal matrix plus rounding, after a thick restart an arrow matrix. Every product
``A q_j`` is also kept (``products``, a second ``[m + 1, P]`` array), so that ``A y`` of any
combination ``y`` of basis rows is known without a new matvec.

**Invariant subspaces.** When ``β`` vanishes relative to the operator scale (``β ≤ ε‖A‖``) or a
second Gram–Schmidt pass removed more than half of the vector (what was left was rounding), the
Krylov space is numerically invariant: the next row is a fresh random vector orthogonalised against
the basis and the coupling is set to ``0``, so ``T`` stays exact.

**Ritz pairs, early exit, certificate and thick restart.** ``T_n = S Θ Sᵀ`` (``jnp.linalg.eigh``;
the unused rows of the fixed-size ``T_m`` are decoupled below the spectrum); Ritz vectors
``Y = Sᵀ Q`` are one matmul; the recurrence's estimate of the residual of pair ``i`` is ``|bᵀ s_i|``
(after a plain Lanczos pass the familiar ``|β s_{n,i}|``). A pass checks the estimates every ``CHECK_EVERY``
columns once it holds ``k_keep = k + (m − k)//2`` of them and ends as soon as the top ``k`` satisfy
``|bᵀ s_i| ≤ tol·s`` (on the real Hessian at ``k = 30`` that is after ~76 of ``m = 120`` columns);
otherwise it runs to ``m``. The pass is then *certified*: the top ``k`` Ritz vectors and their
products ``A y_i = Sᵀ (A Q)`` (the operator's own stored outputs, no new matvec) give the true
residuals ``‖A y_i − θ_i y_i‖``, and only these decide convergence — the estimate merely ends a
pass, so a pass whose estimate was too optimistic (lost orthogonality, rounding) is followed by
another instead of returning unconverged pairs. Until convergence the iteration keeps the top
``k_keep`` Ritz vectors (and their products ``A Y``), puts the residual row after them (their
arrow coupling ``bᵀ S`` goes into ``T``) and extends the basis again. No coupling is ever dropped.

**Completeness: the probe.** A Krylov space can miss an eigenvalue of the top ``k``: a single
start vector holds one vector per eigenspace, so a second copy of a degenerate eigenvalue is not
found in exact arithmetic, and a *warm* start (below) lies almost inside the old top-``k``
subspace, so an eigenvalue that has risen into the top ``k`` since is nearly invisible to it. Once
the top ``k`` have converged a *probe* keeps only them (``Y``, with their stored products) and runs
``max((m − k)//4, 12)`` Lanczos columns (22 for ``k = 30, m = 120``) from a fresh random vector
orthogonal to ``Y``: with full reorthogonalisation that is Lanczos on the deflated operator
``(I − YYᵀ) A (I − YYᵀ)``, and ``T`` is the exact projection of ``A`` on ``span(Y, probe)``, so its
Ritz values are lower bounds of the eigenvalues (Cauchy interlacing). If its top ``k`` rise above
the converged ones by more than ``tol·s`` (plus ``100 ε·max|θ|`` of rounding), an eigenvalue above
``θ_k`` outside ``span(Y)`` is
proven: the iteration goes on from that basis (a thick restart; the dropped coupling of ``Y`` is
within the tolerance, and the certificate decides) until convergence and another probe; the solver
stops when a probe finds nothing new (at most ``min(k, 8)`` probes of at most ``m − k`` columns;
none when ``m ≥ P − 1`` or ``max_restarts = 0``).
What it certifies: a random vector's Krylov space of degree ``max((m − k)//4, 12)`` in the
complement of the returned vectors holds no Ritz value above ``θ_k + tol·s`` — the same degree the
random row of the former locking pass had (it shared its 45 columns with the residual row), at
half the products. A missed eigenvalue that stands clear of the rest of the complement's spectrum
is found (the tests hide copies and newcomers from the Krylov space exactly); one inside a dense
cluster just below ``θ_k`` may take more than one probe, as with any short random Krylov probe.

**Warm starts.** With ``warm_start`` (e.g. the eigenvectors of a neighbouring λ) the first pass
starts from their sum — a vector almost inside the new top-``k`` subspace when the operator has
barely changed — and checks its estimates every ``CHECK_EVERY`` columns from column ``k + 2`` on
instead of ``k_keep``, so a good start ends the pass early. Everything after is the cold solver's:
certificate, thick restarts, probe. A warm start that has not converged after
``min(3, max_restarts)`` restarts (before its first probe: once it has converged it is an ordinary
solve) is abandoned and the solve begins again from ``v0`` with its whole budget (the products of
both are counted; ``EigResult.warm`` says which start the result came from; with
``max_restarts = 0`` a failed warm pass is followed by the one cold pass); warm vectors that are not
finite (a diverged neighbour) mean a cold start at once.

**Convergence scale.** A pair has converged when ``‖A v − θ v‖ ≤ tol·s`` with
``s = max(|θ_1|, |θ_min|)``, the spectral norm of the projected matrix (``θ_min`` its lowest Ritz
value). For a positive semi-definite operator (a data-loss Hessian near a minimum, up to small
negative eigenvalues) that is ``|θ_1|``; where ``θ_1`` is tiny next to negative eigenvalues it is
floored at the operator's own scale, so a tolerance is always reachable in floating point.
Relative to ``|θ_1|`` the test is invariant to scaling ``A`` but *not* to shifting it: a known
shift such as the penalty's ``2λI`` belongs outside the solve (solve ``A``, add the shift after),
or it loosens the test on the small eigenvalues by ``|θ_1 + shift| / |θ_1|``.

**Result.** The top ``k`` Ritz vectors are normalised and signed so each one's largest-magnitude
entry is positive. Their residuals ``‖A v − θ v‖`` are computed from the stored products
(``A v = Sᵀ (A Q)`` by linearity: the operator's own outputs, not the recurrence), so they cost no
matvec and do catch a loss of orthogonality or a corrupted recurrence; ``converged`` is the same
test that ended the iteration. Everything (the restart
loop, each Lanczos pass, the breakdown, exit, probe and fallback logic) runs inside
``lax.while_loop`` over preallocated arrays ``[m + 1, P]``; there is no host round trip.

**Batches.** The solver is written for a batch of ``B`` independent operators
(:func:`top_k_eigenpairs_batched`; :func:`top_k_eigenpairs` is its batch of one). Every loop
condition and branch is decided once for the batch (``any`` over members), a member that has stopped
only stops writing (row-sized selects, never basis-sized ones), the second Gram–Schmidt pass runs
only where a member needs it, and a random vector is drawn only when a member starts a probe or meets an invariant
subspace. The loops run until the slowest member is done; with ``param_axes`` a member's operator
is applied only while it extends (the batch executes the sum of its members' products), without it
the whole batch's at every step. ``vmap`` of :func:`top_k_eigenpairs` also works, but evaluates
every branch for every member.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .krylov import (CHECK_EVERY, LanczosDecomp, check_num_iters, check_param_axes, check_start, check_warm,
                     coupling, default_num_iters, first_pass, lanczos_tridiag, member_products, needs_second,
                     random_orthogonal, ritz, second_pass, start_vector)
from .operators import apply_operator, as_int, check_operator

Array = jax.Array

__all__ = ["DEFAULT_MAX_RESTARTS", "EigResult", "LanczosDecomp", "default_num_iters", "lanczos_tridiag",
           "probe_steps", "top_k_eigenpairs", "top_k_eigenpairs_batched"]

#: Restarts allowed after the first Lanczos pass (probes included).
DEFAULT_MAX_RESTARTS = 30

_MAX_PROBES = 8  # completeness probes at most (each one that finds something is followed by another)
_PROBE_STEPS = 12  # at least this many columns per probe
_WARM_RESTARTS = 3  # restarts a warm start may take before it falls back to the cold start vector
_START, _THICK, _PROBE, _COLD = 0, 1, 2, 3  # how the next pass begins


class EigResult(NamedTuple):
    """Top-``k`` eigenpairs of a symmetric operator, largest algebraic first."""

    eigenvalues: Array  # [k] Ritz values θ_1 ≥ … ≥ θ_k, working dtype
    eigenvectors: Array  # [k, P] unit rows; each row's largest-|entry| is positive
    residuals: Array  # [k] true ‖A v_i − θ_i v_i‖, A v_i from the operator's stored products
    converged: Array  # [k] bool, residuals ≤ tol·scale
    num_matvecs: Array  # [] int32, operator applications
    num_restarts: Array  # [] int32, restarts after the first pass (probes and a cold fallback included)
    scale: Array  # [] the convergence scale max(|θ_1|, |θ_min|) of the basis (θ_min its lowest Ritz value)
    warm: Array  # [] bool, the result comes from the warm start (False: cold start, or the warm one fell back)
    batch_matvecs: Array  # [] int32, operator applications its batch executed for all its members (alone: its own)


class _State(NamedTuple):
    """One member's carry of the restart loop (``R = m + 1`` basis rows); the solver carries a
    batch of them (a leading member axis on every field)."""

    basis: Array  # [R, P] rows 0..n-1 Krylov basis, row n the residual row
    products: Array  # [R, P] row j: A q_j for the rows j < n
    proj: Array  # [R, R] T = Qᵀ A Q from the Gram–Schmidt coefficients
    theta: Array  # [m] Ritz values of T[:m, :m], descending
    ritz: Array  # [m, m] their eigenvectors S (columns)
    ref: Array  # [k] top-k Ritz values when the last probe started
    anorm: Array  # [] running max ‖A q_j‖, the operator scale
    filled: Array  # [] int32 n ≤ m, columns processed by the last pass
    action: Array  # [] int32 how the next pass begins: _START, _THICK, _PROBE or _COLD
    verified: Array  # [] bool, the last probe found nothing new
    warm: Array  # [] bool, iterating from the warm start (not yet fallen back)
    probes: Array  # [] int32, probes made since the last start
    tries: Array  # [] int32, restarts since the last start
    num_matvecs: Array  # [] int32
    num_restarts: Array  # [] int32, passes after the first (probes and a cold restart included)
    executed: Array  # [] int32, products the whole batch executed (the same in every member's carry)
    done: Array  # [] bool
    out_theta: Array  # [k] the certified result, set aside when the member is done
    out_vectors: Array  # [k, P]
    out_residuals: Array  # [k]
    out_scale: Array  # []
    out_converged: Array  # [k] bool
    out_warm: Array  # [] bool


def top_k_eigenpairs(matvec: Callable, v0: Array, k: int, num_iters: int | None = None, *, params=(),
                     tol=1e-5, max_restarts: int = DEFAULT_MAX_RESTARTS, key=None,
                     precision=lax.Precision.HIGHEST, multiplicity_check: bool = True,
                     warm_start: Array | None = None) -> EigResult:
    r"""The ``k`` largest (algebraic) eigenpairs of a symmetric operator ``A``.

    Args:
      matvec: ``matvec(v, *params) -> A v`` for ``v`` ``[P]``; ``A`` must be symmetric.
      v0: start vector ``[P]`` (any nonzero norm); its dtype is the working dtype of everything.
        With ``warm_start`` it is the cold start vector of the fallback.
      k: number of eigenpairs, ``1 ≤ k < P`` (static).
      num_iters: Krylov basis size ``m``, ``k < m ≤ P`` (static); default
        :func:`default_num_iters` (``min(P, max(2k + 20, 4k))``).
      params: tuple of operator parameters passed to ``matvec`` as traced arguments.
      tol: converged when ``‖A v_i − θ_i v_i‖ ≤ tol·s`` for every ``i ≤ k``, with the scale
        ``s = max(|θ_1|, |θ_min|)`` (``θ_min`` the lowest Ritz value of the basis: ``|θ_1|`` for a
        positive semi-definite ``A``, the operator's norm where negative eigenvalues dominate).
      max_restarts: restarts allowed after the first pass (static), probes included.
      key: PRNG key for the random vectors of invariant-subspace restarts and probes; default a
        fixed key, so results are reproducible for given ``key`` and ``v0``.
      precision: of every product with the basis (Gram–Schmidt, Ritz vectors).
      multiplicity_check: make the completeness probes that find an eigenvalue the Krylov space
        missed — a second copy of a degenerate one, or one a warm start is blind to (static;
        default True). Each costs ``max((m − k)/4, 12)`` matvecs (22 for ``k = 30``).
      warm_start: ``[g, P]`` eigenvectors of a nearby operator (e.g. the previous λ's top k), or
        ``None``: the iteration starts from their sum and checks for convergence from its first
        columns on; it falls back to ``v0`` if it has not converged after ``min(3, max_restarts)`` restarts.

    Returns:
      :class:`EigResult`. Its ``residuals`` are true residuals ``‖A v − θ v‖`` of the returned
      pairs, from the stored products of the operator; ``converged`` is ``residuals ≤ tol·scale``,
      the same test that ends the iteration; ``num_matvecs`` counts every product (the probes and
      a failed warm start included).

    The algorithm (thick restart, exact arrow coupling, invariant subspaces, warm starts and the
    completeness probes) is described in the module docstring. Works under ``jax.jit`` (``matvec``,
    ``k``, ``num_iters``, ``max_restarts`` static) and ``jax.vmap`` over ``v0`` and ``params``.
    """
    v0, params, key = check_start(matvec, v0, params, key)
    warm = None
    if warm_start is not None:
        warm = jnp.asarray(warm_start)
        if warm.ndim != 2:
            raise ValueError(f"warm_start must be vectors [g, P], got shape {warm.shape}")
        warm = warm[None]

    def one(v, *op_params):  # the batched operator of a batch of one
        return apply_operator(matvec, v[0], op_params)[None]

    res = top_k_eigenpairs_batched(one, v0[None], k, num_iters, params=params, tol=tol, max_restarts=max_restarts,
                                   keys=key[None], precision=precision, multiplicity_check=multiplicity_check,
                                   warm_start=warm)
    return jax.tree_util.tree_map(lambda a: a[0], res)


def top_k_eigenpairs_batched(matvec_batch: Callable, v0: Array, k: int, num_iters: int | None = None, *,
                             params=(), tol=1e-5, max_restarts: int = DEFAULT_MAX_RESTARTS, keys=None,
                             precision=lax.Precision.HIGHEST, multiplicity_check: bool = True,
                             warm_start: Array | None = None, use_warm: Array | None = None,
                             param_axes: tuple | None = None, live: Array | None = None) -> EigResult:
    r""":func:`top_k_eigenpairs` of ``B`` independent symmetric operators at once, without ``vmap``.

    ``matvec_batch(V, *params) -> [B, P]`` applies member ``b``'s operator to row ``b`` of ``V``
    ``[B, P]`` (e.g. ``jax.vmap(matvec, in_axes=(0, 0, None))`` over batched and shared parameters);
    ``v0`` ``[B, P]``; ``keys`` ``[B]`` PRNG keys (default: one fixed key for every member);
    ``warm_start`` ``[B, g, P]`` with ``use_warm`` ``[B]`` bool (default all): which members start
    warm (a member whose warm vectors are not finite starts cold). Every field of the
    :class:`EigResult` gains a leading ``B``; member ``b``'s result is the one
    :func:`top_k_eigenpairs` returns for it alone, to rounding (same algorithm, same random draws;
    the batched products may round differently). Use this
    rather than ``vmap(top_k_eigenpairs)`` for a batch: under ``vmap`` every data-dependent branch of
    the solver runs for every member and whole bases are selected at every step, while here the batch
    decides each branch once (``any`` over members) and a stopped member only stops writing.
    ``num_matvecs`` counts each member's own products, ``batch_matvecs`` those the batch executed.

    ``param_axes`` says which ``params`` hold the members' leading axis (``0``) and which are shared
    (``None``), as ``vmap``'s ``in_axes``. Given, each step applies ``matvec_batch`` to the members
    still extending only, one member at a time (a batch of one, its rows of the batched ``params``
    sliced out): the batch executes the sum of its members' products, and a member that has stopped
    costs the others no product. ``None``: ``matvec_batch`` is applied to the whole batch at every
    step of the batch's loops, so the batch executes at least ``B`` times its slowest member's
    products (more when the members' passes end at different columns). ``live`` ``[B]`` bool
    (default all): the members to solve; the others are done from the start, with zero results and
    no products of their own (e.g. the idle members that pad a batch).
    """
    v0 = jnp.asarray(v0)
    if v0.ndim != 2 or v0.shape[0] < 1 or v0.shape[1] < 1:
        raise ValueError(f"v0 must be a batch of flat vectors [B, P], got shape {v0.shape}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise ValueError(f"v0 must have a real floating dtype (the working dtype), got {v0.dtype}")
    params = check_operator(matvec_batch, params)
    if param_axes is not None:
        param_axes = check_param_axes(param_axes, params, v0.shape[0])
    dim = v0.shape[1]
    k = as_int("k", k)
    if not 1 <= k < dim:
        raise ValueError(f"k={k} must satisfy 1 <= k < P (P={dim}); use numpy.linalg.eigh for the full spectrum")
    m = check_num_iters(num_iters, k, dim)
    max_restarts = as_int("max_restarts", max_restarts, 0)
    if isinstance(tol, (int, float)) and not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol={tol!r} must be a finite number >= 0")
    if keys is None:
        keys = jnp.stack([jax.random.key(0)] * v0.shape[0])
    warm = None if warm_start is None else check_warm(jnp.asarray(warm_start), v0)
    if warm is not None:
        use_warm = _member_mask("use_warm", use_warm, v0)
    live = None if live is None else _member_mask("live", live, v0)
    sizes = _Sizes.of(k, m, dim, bool(multiplicity_check), max_restarts)
    solver = _Solver(matvec_batch, params, sizes, jnp.asarray(tol, v0.dtype), max_restarts, precision, keys, v0,
                     param_axes)
    return solver.solve(warm, use_warm, live)


def _member_mask(name: str, mask, v0: Array) -> Array:
    """A ``[B]`` bool per member of the batch ``v0``; ``None``: all."""
    mask = jnp.ones(v0.shape[:1], jnp.bool_) if mask is None else jnp.asarray(mask, jnp.bool_)
    if mask.shape != v0.shape[:1]:
        raise ValueError(f"{name} must have shape {v0.shape[:1]}, got {mask.shape}")
    return mask


def probe_steps(k: int, m: int) -> int:
    """Products of one completeness probe: ``max((m − k)//4, 12)`` columns within ``m − k`` (22 for k = 30)."""
    return min(max((m - k) // 4, _PROBE_STEPS), m - k)


class _Sizes(NamedTuple):
    """The static shape of a solve."""

    k: int  # pairs wanted
    m: int  # Krylov basis size
    n_rows: int  # m + 1: rows of the basis and product arrays (the last one for the residual row)
    k_keep: int  # Ritz vectors kept by a thick restart, k + (m − k)//2
    probe_steps: int  # columns of a completeness probe, max((m − k)//4, 12) within m − k
    max_probes: int  # completeness probes at most, min(k, 8); 0: no check
    warm_restarts: int  # restarts a warm start may take before it falls back to a cold start

    @classmethod
    def of(cls, k: int, m: int, dim: int, multiplicity_check: bool, max_restarts: int) -> "_Sizes":
        # no probe when the basis is (almost) the whole space: there is nothing left to miss
        probes = min(k, _MAX_PROBES) if multiplicity_check and dim - m >= 2 else 0
        return cls(k, m, m + 1, k + (m - k) // 2, probe_steps(k, m), probes, min(_WARM_RESTARTS, max_restarts))


class _Certificate(NamedTuple):
    """The top ``k`` Ritz pairs of a basis, with what decides convergence."""

    theta: Array  # [k] Ritz values, descending
    vectors: Array  # [k, P] unit Ritz vectors, largest-|entry| positive
    residuals: Array  # [k] ‖A v − θ v‖, A v from the stored products
    scale: Array  # [] max(|θ_1|, |θ_min|): the convergence scale
    converged: Array  # [k] bool, residuals ≤ tol·scale


def _convergence_scale(theta: Array, n) -> Array:
    """``max(|θ_1|, |θ_min|)`` over the first ``n`` Ritz values (descending): the spectral norm of
    ``T_n``, a lower bound of ``‖A‖`` that is ``|θ_1|`` whenever no negative Ritz value is larger."""
    low = theta[jnp.maximum(n - 1, 0)]
    return jnp.maximum(jnp.abs(theta[0]), jnp.abs(low))


class _Pass(NamedTuple):
    """Carry of one pass over every member (leading axis ``B``)."""

    j: Array  # [B] int32, next column
    basis: Array  # [B, R, P]
    products: Array  # [B, R, P]
    proj: Array  # [B, R, R]
    anorm: Array  # [B]
    num_matvecs: Array  # [B] int32, also the salt of the member's invariant-subspace random vectors
    executed: Array  # [B] int32, the batch's products so far (the same in every row)
    active: Array  # [B] bool, still extending


def _set_row(a, i, row):
    return lax.dynamic_update_slice(a, row[None], (i, jnp.zeros_like(i)))


def _get_row(a, i):
    return lax.dynamic_index_in_dim(a, i, keepdims=False)


class _Solver:
    """The steps of the thick-restart solver over a batch of ``B`` independent operators.

    Written for the batch rather than ``vmap``-ed over it: a ``vmap`` of data-dependent loops and
    branches evaluates every branch for every member and selects over whole ``[B, m + 1, P]`` bases
    at every step. Here every loop condition and branch is decided for the whole batch (``any``
    over members), members that have stopped only stop writing (row-sized selects, never
    basis-sized ones) and, with ``param_axes``, get no product, the second Gram–Schmidt pass runs
    only when a member needs it, a random vector is drawn only when a member meets an invariant
    subspace or starts a probe, and Ritz values are computed only when some member is at a check
    point. A member's numbers do not depend on the others'.

    One iteration of the outer loop: begin a pass (the first start, a thick restart, a completeness
    probe or a cold restart after a failed warm start — one formula, :meth:`restart`), extend each
    active member's basis column by column until its early-exit estimate says its top ``k`` may have
    converged (or to the pass's end), certify every member's top ``k`` with their true residuals from
    the stored products, and decide. The certificate alone decides convergence, so the early exit and
    the returned ``converged`` flags are the same test. A member that is done keeps its certified
    result; the batch stops when every member is done.
    """

    def __init__(self, matvec_batch, params, sizes: _Sizes, tol, max_restarts: int, precision, keys, cold_v0,
                 param_axes=None):
        self.matvec, self.params, self.sz, self.tol = matvec_batch, params, sizes, tol
        self.param_axes = param_axes
        self.max_restarts, self.precision = max_restarts, precision
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        self.key_start, self.key_invariant, self.key_probe = (fold(keys, i) for i in range(3))
        self.cold = jax.vmap(start_vector)(cold_v0, self.key_start)  # [B, P] unit cold start vectors

    def mm(self, a, b):
        return jnp.matmul(a, b, precision=self.precision)

    def pad(self, s):  # [m, c] -> [n_rows, c], a zero row for the residual
        return jnp.zeros((self.sz.n_rows, s.shape[1]), s.dtype).at[:self.sz.m].set(s)

    def initial_state(self, warm_vectors, use_warm, live=None) -> _State:
        sz, dtype = self.sz, self.cold.dtype
        n, dim = self.cold.shape
        if warm_vectors is None:
            start, use_warm = self.cold, jnp.zeros((n,), jnp.bool_)
        else:
            total = jnp.sum(warm_vectors.astype(dtype), axis=1)  # [B, P]: every old eigenvector, weight 1
            norm = jnp.linalg.norm(total, axis=1)
            use_warm = use_warm & jnp.isfinite(norm) & (norm > 0)
            start = jnp.where(use_warm[:, None], total / jnp.where(use_warm, norm, 1)[:, None], self.cold)
        basis0 = jnp.zeros((n, sz.n_rows, dim), dtype).at[:, 0].set(start)
        z = lambda *shape, dt=dtype: jnp.zeros((n, *shape), dt)  # noqa: E731
        return _State(
            basis=basis0, products=jnp.zeros_like(basis0), proj=z(sz.n_rows, sz.n_rows), theta=z(sz.m),
            ritz=z(sz.m, sz.m), ref=z(sz.k), anorm=z(), filled=z(dt=jnp.int32), action=z(dt=jnp.int32) + _START,
            verified=z(dt=jnp.bool_), warm=use_warm, probes=z(dt=jnp.int32), tries=z(dt=jnp.int32),
            num_matvecs=z(dt=jnp.int32), num_restarts=z(dt=jnp.int32), executed=z(dt=jnp.int32),
            done=z(dt=jnp.bool_) if live is None else ~live, out_theta=z(sz.k), out_vectors=z(sz.k, dim),
            out_residuals=z(sz.k), out_scale=z(), out_converged=z(sz.k, dt=jnp.bool_), out_warm=z(dt=jnp.bool_))

    # -- beginning a pass (per member) ------------------------------------------------------------

    def restart(self, st: _State, keep, coupled):
        """One member: keep the top ``keep ≤ k_keep`` Ritz vectors and their products, then the
        residual row with its arrow coupling ``bᵀ S`` (``coupled``; a probe puts a fresh row there
        instead). ``keep = 0`` is a start."""
        sz, dtype = self.sz, st.basis.dtype
        cols = (jnp.arange(sz.k_keep) < keep).astype(dtype)
        s = st.ritz[:, :sz.k_keep] * cols
        y = self.mm(self.pad(s).T, st.basis)  # [k_keep, P], rows ≥ keep zero
        ay = self.mm(self.pad(s).T, st.products)  # A y, by linearity from the stored products
        res = _get_row(st.basis, st.filled)
        basis = _set_row(st.basis.at[:sz.k_keep].set(y), keep, res)
        products = st.products.at[:sz.k_keep].set(ay)
        arrow = self.mm(coupling(st.proj, sz.m, st.filled), s)[0] * coupled  # [k_keep]
        proj = jnp.zeros((sz.n_rows, sz.n_rows), dtype)
        proj = proj.at[jnp.arange(sz.k_keep), jnp.arange(sz.k_keep)].set(st.theta[:sz.k_keep] * cols)
        proj = lax.dynamic_update_slice(proj, arrow[None], (keep, jnp.int32(0)))
        proj = lax.dynamic_update_slice(proj, arrow[:, None], (jnp.int32(0), keep))
        return basis, products, proj

    def keep_of(self, action, filled):
        """Ritz vectors kept: none to start, ``min(k_keep, filled)`` for a thick restart (a basis
        shorter than ``k_keep`` after a probe), the top ``k`` for a probe."""
        sz = self.sz
        thick = jnp.minimum(sz.k_keep, filled)
        keep = jnp.where(action == _PROBE, sz.k, jnp.where(action == _THICK, thick, 0))
        return keep.astype(jnp.int32)

    def begin(self, st: _State):
        """Every member's restart (done members too: their result is kept aside); then, drawn only
        when some member needs it, a fresh random row for a probe or the cold start vector for a
        warm start that failed. Returns the pass's basis, products, projection, first column,
        reference values, first check column and end column."""
        sz = self.sz
        is_probe = (st.action == _PROBE) & ~st.done
        is_cold = (st.action == _COLD) & ~st.done
        keep = jax.vmap(self.keep_of)(st.action, st.filled)
        basis, products, proj = jax.vmap(self.restart)(st, keep, (~is_probe).astype(st.basis.dtype))

        def fresh_rows(basis):
            def one(basis, keep, key, probes, cold, probe, restart_cold):
                kept = (jnp.arange(sz.n_rows) < keep).astype(basis.dtype)
                row = jnp.where(probe, random_orthogonal(jax.random.fold_in(key, probes), basis, kept,
                                                         self.precision), cold)
                return _set_row(basis, keep, jnp.where(probe | restart_cold, row, _get_row(basis, keep)))
            return jax.vmap(one)(basis, keep, self.key_probe, st.probes, self.cold, is_probe, is_cold)

        basis = lax.cond(jnp.any(is_probe | is_cold), fresh_rows, lambda b: b, basis)
        ref = jnp.where(is_probe[:, None], st.theta[:, :sz.k], st.ref)
        early = (st.action == _START) & st.warm  # a warm start is checked from its first columns on
        min_fill = jnp.where(is_probe, sz.m, jnp.where(early, sz.k + CHECK_EVERY, sz.k_keep)).astype(jnp.int32)
        end = jnp.where(is_probe, sz.k + sz.probe_steps, sz.m).astype(jnp.int32)
        return basis, products, proj, keep, ref, min_fill, end

    # -- one pass ---------------------------------------------------------------------------------

    def products_of(self, q, active):
        """``A_b q_b`` for every member ``b``: the whole batch in one call, or, with ``param_axes``,
        only the active members' (:func:`hessjax.krylov.member_products`)."""
        if self.param_axes is None:
            return self.matvec(q, *self.params)
        return member_products(self.matvec, self.params, self.param_axes, q, active)

    def estimates(self, proj, n, s):
        """``|bᵀ s_i|`` of the top k: the recurrence's residual estimates (exact up to rounding)."""
        b = coupling(proj, self.sz.m, n)
        return jnp.linalg.norm(self.mm(b, s[:, :self.sz.k]), axis=0)

    def stop(self, proj, n):
        """One member at a check point: do the estimates of its top k meet the tolerance?"""
        theta, s = ritz(proj, self.sz.m, n)
        return jnp.all(self.estimates(proj, n, s) <= self.tol * _convergence_scale(theta, n))

    def step(self, c: _Pass, j0, min_fill, end) -> _Pass:
        """Column ``j`` of every active member: ``A q_j``, Gram–Schmidt, the next row, the coupling."""
        sz, prec = self.sz, self.precision
        dtype = c.basis.dtype
        eps = jnp.finfo(dtype).eps
        rows = jnp.arange(sz.n_rows)
        q = jax.vmap(_get_row)(c.basis, c.j)
        w0 = self.products_of(q, c.active).astype(dtype)  # [B, P]
        mask = (rows[None, :] < (c.j + 1)[:, None]).astype(dtype)  # the filled rows
        w, h, n0, n1 = jax.vmap(functools.partial(first_pass, precision=prec))(w0, c.basis, c.j, mask)
        need = c.active & needs_second(n0, n1)

        def second(w, h):
            w2, h2, ok = jax.vmap(functools.partial(second_pass, precision=prec))(w, c.basis, mask, n1)
            return (jnp.where(need[:, None], w2, w), h + jnp.where(need[:, None], h2, 0), ok | ~need)

        w, h, ok = lax.cond(jnp.any(need), second, lambda w, h: (w, h, jnp.ones_like(need)), w, h)
        beta = jnp.linalg.norm(w, axis=1)
        anorm = jnp.where(c.active, jnp.maximum(c.anorm, jnp.linalg.norm(w0, axis=1)), c.anorm)
        invariant = ~ok | (beta <= eps * anorm)
        q_next = w / jnp.where(beta > 0, beta, 1)[:, None]

        def fresh(q_next):
            keys = jax.vmap(jax.random.fold_in)(self.key_invariant, c.num_matvecs)
            f = jax.vmap(functools.partial(random_orthogonal, precision=prec))(keys, c.basis, mask)
            return jnp.where(invariant[:, None], f, q_next)

        q_next = lax.cond(jnp.any(invariant & c.active), fresh, lambda q: q, q_next)
        beta = jnp.where(invariant, 0, beta)
        nxt = c.j + 1

        def write(basis, products, proj, j, nxt, h, beta, q_next, w0, active):
            new_proj = proj.at[:, j].set(h).at[j, :].set(h).at[nxt, j].set(beta).at[j, nxt].set(beta)
            return (_set_row(basis, nxt, jnp.where(active, q_next, _get_row(basis, nxt))),
                    _set_row(products, j, jnp.where(active, w0, _get_row(products, j))),
                    jnp.where(active, new_proj, proj))

        basis, products, proj = jax.vmap(write)(c.basis, c.products, c.proj, c.j, nxt, h, beta, q_next, w0, c.active)
        n = c.j + c.active.astype(jnp.int32)
        due = c.active & (n >= min_fill) & ((n - j0) % CHECK_EVERY == 0) & (n < end)
        halt = lax.cond(jnp.any(due), lambda: due & jax.vmap(self.stop)(proj, n), lambda: jnp.zeros_like(due))
        ran = jnp.sum(c.active, dtype=jnp.int32) if self.param_axes is not None else jnp.int32(c.active.shape[0])
        return _Pass(n, basis, products, proj, anorm, c.num_matvecs + c.active.astype(jnp.int32), c.executed + ran,
                     c.active & ~halt & (n < end))

    def run_pass(self, st, basis, products, proj, j0, min_fill, end) -> _Pass:
        init = _Pass(j0, basis, products, proj, st.anorm, st.num_matvecs, st.executed, ~st.done & (j0 < end))
        return lax.while_loop(lambda c: jnp.any(c.active), lambda c: self.step(c, j0, min_fill, end), init)

    # -- certificate and decision (per member) ------------------------------------------------------

    def certify(self, basis, products, theta, ritz, filled) -> _Certificate:
        """The top k Ritz pairs with their true residuals ``‖A v − θ v‖``: ``A v = Sᵀ (A Q)`` by
        linearity from the operator's own stored outputs, so no matvec is spent."""
        k = self.sz.k
        s = self.pad(ritz[:, :k])
        vecs = self.mm(s.T, basis)  # [k, P], one matmul
        applied = self.mm(s.T, products)
        norms = jnp.linalg.norm(vecs, axis=1, keepdims=True)
        peak = jnp.take_along_axis(vecs, jnp.argmax(jnp.abs(vecs), axis=1)[:, None], axis=1)
        sign = jnp.where(peak < 0, -1, 1).astype(vecs.dtype) / jnp.where(norms > 0, norms, 1)
        vecs, applied = vecs * sign, applied * sign
        residuals = jnp.linalg.norm(applied - theta[:k, None] * vecs, axis=1)
        scale = _convergence_scale(theta, filled)
        return _Certificate(theta[:k], vecs, residuals, scale, residuals <= self.tol * scale)

    def decide(self, st: _State, c: _Pass, ref) -> _State:
        """One member after its pass: Ritz pairs, certificate, what next; its result is set aside the
        first time it is done."""
        sz = self.sz
        theta, s = ritz(c.proj, sz.m, c.j)
        cert = self.certify(c.basis, c.products, theta, s, c.j)
        conv = jnp.all(cert.converged)
        eps = jnp.finfo(c.basis.dtype).eps
        is_probe = st.action == _PROBE
        rise = jnp.max(theta[:sz.k] - ref)
        found_new = is_probe & (rise > self.tol * cert.scale + 100 * eps * jnp.max(jnp.abs(theta[:sz.k])))
        verified = jnp.where(is_probe, ~found_new, st.verified)
        probes = st.probes + is_probe.astype(jnp.int32)
        can_probe = probes < sz.max_probes
        restarted = (st.action != _START) & (st.action != _COLD)
        tries = st.tries + restarted.astype(jnp.int32)  # restarts since the last (warm or cold) start
        # the warm budget runs until the warm start first converges (its probe may still find more)
        warm_failed = st.warm & ~conv & (tries >= sz.warm_restarts) & (st.probes == 0)
        finish = (conv & (verified | ~can_probe)) | ((tries >= self.max_restarts) & ~warm_failed)
        action = jnp.where(warm_failed, _COLD, jnp.where(conv & can_probe & ~verified, _PROBE, _THICK))
        cold = warm_failed & ~finish  # start again from the cold start vector, with the whole budget
        new = finish & ~st.done
        keep_old = lambda old, upd: jnp.where(st.done, old, upd)  # noqa: E731
        pick = lambda old, upd: jnp.where(new, upd, old)  # noqa: E731
        return _State(
            c.basis, c.products, c.proj, theta, s, ref, c.anorm, c.j, action.astype(jnp.int32),
            keep_old(st.verified, verified & ~cold), st.warm & ~cold, jnp.where(cold, 0, probes),
            jnp.where(cold, 0, tries), c.num_matvecs,
            keep_old(st.num_restarts, st.num_restarts + (st.action != _START).astype(jnp.int32)), c.executed,
            st.done | finish, pick(st.out_theta, cert.theta), pick(st.out_vectors, cert.vectors),
            pick(st.out_residuals, cert.residuals), pick(st.out_scale, cert.scale),
            pick(st.out_converged, cert.converged), pick(st.out_warm, st.warm))

    def iterate(self, st: _State) -> _State:
        basis, products, proj, j0, ref, min_fill, end = self.begin(st)
        c = self.run_pass(st, basis, products, proj, j0, min_fill, end)
        return jax.vmap(self.decide)(st, c, ref)

    def solve(self, warm_vectors=None, use_warm=None, live=None) -> EigResult:
        st = lax.while_loop(lambda st: jnp.any(~st.done), self.iterate,
                            self.initial_state(warm_vectors, use_warm, live))
        return EigResult(st.out_theta, st.out_vectors, st.out_residuals, st.out_converged, st.num_matvecs,
                         st.num_restarts, st.out_scale, st.out_warm, st.executed)
