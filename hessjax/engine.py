"""The compiled per-batch programs of a sweep: ``jit(vmap(...))`` over a batch of λ, sharded over
devices along a ``lam`` mesh axis.

For a global batch of ``G = B × devices`` λ values, :class:`Programs` holds four programs, each
compiled once per shape and reused for every batch:

* ``init``   — the starting point's ``L_eff`` and fresh Adam state for every member;
* ``epoch``  — one training epoch of every member (a member that has stopped stays frozen);
* ``analyze``— at each member's best weights: train/test loss and accuracy, ``∇L_eff``,
  ``‖θ − θ_ref‖`` and the top-k eigenpairs of the *data* Hessian ``∇²(mean CE)`` by Lanczos over
  the first ``hessian_samples``;
* ``healthy``— whether each member's training stayed finite, decided on the devices, so the next batch
  knows which warm starts it may use without a trip to the host.

**The shift stays out of float32.** ``∇²L_eff = ∇²(mean CE) + 2λI`` exactly: the penalty shifts
every eigenvalue by ``2λ`` and changes no eigenvector. Carried through float32 products and Ritz
values, ``2λ = 0.2`` costs a few ulps of 0.2 — ``1e-4`` of a small data eigenvalue ``μ ≈ 1e-3`` —
and a tolerance relative to ``|θ_1| = |μ_1 + 2λ|`` would accept residuals 15× larger than at
``λ = 0``. So every spectral quantity here (top k, bottom k, trace, density) is computed on the
unshifted data Hessian, to a tolerance relative to ``|μ_1|``; the sweep adds ``2λ`` (``2λP`` for the
trace) in float64 when it writes the ``L_eff`` values.

The host calls ``epoch`` once per epoch only to report progress and to stop when every member has
stopped; nothing inside an epoch or inside Lanczos returns to the host. Data and anchor are
replicated on every device; λ and every per-member state are split along the mesh's ``lam`` axis.

Randomness that belongs to one λ (the Lanczos start vector and its restart vectors) is keyed by the
seed and by the bits of λ's float64 value, never by its position in the grid or its batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from .ggn import flat_ggn_matvec
from .hvp import Chunks, dataset_accuracy, dataset_cross_entropy, dataset_grad_parts
from .lanczos import DEFAULT_MAX_RESTARTS, EigResult, top_k_eigenpairs, top_k_eigenpairs_batched
from .linearized import hessian_operator
from .loss import anchor_penalty
from .models import DEFAULT_PRECISION, Model, Params, layer_sizes, mlp
from .spectral import SLQResult, TraceEstimate, bottom_k_eigenpairs, hutchinson_trace, slq_density
from .training import TrainConfig, TrainState, epoch_order, init_state, train_epoch

_LANCZOS_STREAM, _PROBE_STREAM = 2, 3


class SpectrumConfig(NamedTuple):
    """Static Lanczos settings."""

    k: int = 30
    num_iters: int | None = None  # Krylov basis size; None: top_k_eigenpairs' default (4k for k=30)
    tol: float = 1e-5  # residual ≤ tol·max(|μ₁|, |μ_min|) for every returned pair (data Hessian μ)
    max_restarts: int = DEFAULT_MAX_RESTARTS  # the solver's own default, for the top k and the bottom k
    trace_probes: int = 0  # Hutchinson probes (0: no trace estimate)
    density_probes: int = 0  # stochastic Lanczos quadrature probes (0: no density)
    density_iters: int = 80  # Lanczos steps per SLQ probe
    bottom_k: int = 0  # smallest eigenpairs (0: none)
    multiplicity_check: bool = True  # completeness probes for missed eigenvalues (max((m − k)/4, 12) matvecs each)
    member_products: bool = True  # a λ batch applies each member's Hessian only while that member extends
    ggn: bool = False  # also the top k of the Gauss–Newton part G of the data Hessian


class Extras(NamedTuple):
    """The optional per-λ spectral quantities; a field is ``None`` when it was not asked for."""

    trace: TraceEstimate | None  # Hutchinson tr ∇²L_eff: trace [], stderr [], samples [probes]
    slq: SLQResult | None  # SLQ nodes and weights [probes, density_iters]
    bottom: EigResult | None  # bottom_k smallest eigenpairs, ascending
    ggn: EigResult | None  # top k of the generalized Gauss–Newton matrix G of the mean cross-entropy


class Analysis(NamedTuple):
    """What a sweep records for one λ; under ``vmap`` every field gains a leading λ axis."""

    train_loss: jax.Array  # [] mean cross-entropy over the training samples (no penalty)
    test_loss: jax.Array  # [] mean cross-entropy over the test samples
    test_accuracy: jax.Array  # [] in [0, 1]
    gradient: jax.Array  # [P] ∇L_eff over the training samples, PyTorch flat order
    grad_norm: jax.Array  # [] ‖∇L_eff‖
    distance_to_anchor: jax.Array  # [] ‖θ − θ_ref‖
    gradient_overlap: jax.Array  # [] ‖Vₖᵀ ∇CE‖² / ‖∇CE‖²: the data gradient's share in the top-k eigenspace
    displacement_overlap: jax.Array  # [] ‖Vₖᵀ (θ − θ_ref)‖² / ‖θ − θ_ref‖²: the displacement's share there
    weights: jax.Array  # [P] the weights analysed, PyTorch flat order
    eig: EigResult  # top-k eigenpairs μ of the data Hessian ∇²(mean CE) over the Hessian samples
    extras: Extras  # trace, density and bottom eigenpairs of the data Hessian, where asked for


def probe_key(seed: int) -> jax.Array:
    """The key of the trace and density probes, shared by every λ of a run."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), _PROBE_STREAM)


def lambda_keys(seed: int, lams) -> np.ndarray:
    """``[n, 2]`` uint32 PRNG keys, one per λ, from the seed and λ's float64 bits (host-side, exact)."""
    bits = np.asarray(lams, np.float64).reshape(-1).view(np.uint64)
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _LANCZOS_STREAM)
    keys = [jax.random.fold_in(jax.random.fold_in(base, int(b >> np.uint64(32))), int(b & np.uint64(0xFFFFFFFF)))
            for b in bits]
    return np.stack([np.asarray(k) for k in keys]) if keys else np.zeros((0, 2), np.uint32)


class _Prepared(NamedTuple):
    """One member's analysis before its eigensolve."""

    flat: jax.Array  # [P] the weights
    grad: jax.Array  # [P] ∇L_eff over the training samples
    data_grad: jax.Array  # [P] ∇ mean CE over the training samples
    lin: object  # the data Hessian linearized at θ (hessian_operator(model).linearize): a pytree
    unshifted: jax.Array  # [] 0 in λ's dtype: the data Hessian, without the penalty's 2λI
    v0: jax.Array  # [P] Lanczos start vector
    k_restart: jax.Array  # key of the solver's random vectors
    k_bottom: jax.Array  # key of the bottom-k solve


def model_for(model: Model | None, params: Params) -> Model:
    """``model``, or for ``None`` the sigmoid MLP of ``params``' widths (the library's default)."""
    return mlp(layer_sizes(params)) if model is None else model


def _prepare(params: Params, anchor: Params, lam, key, train: Chunks, hess: Chunks, precision, model) -> _Prepared:
    flat, _ = ravel_pytree(params)
    data_grad, grad = dataset_grad_parts(params, anchor, lam, train, precision=precision, apply=model.apply)
    k_start, k_restart, k_bottom = jax.random.split(key, 3)
    v0 = jax.random.normal(k_start, flat.shape, flat.dtype)
    lin = hessian_operator(model).linearize(params, hess, precision)
    return _Prepared(flat, ravel_pytree(grad)[0], ravel_pytree(data_grad)[0], lin, jnp.zeros_like(lam), v0,
                     k_restart, k_bottom)


def subspace_share(vectors: jax.Array, u: jax.Array, precision=DEFAULT_PRECISION) -> jax.Array:
    """``‖Vᵀu‖² / ‖u‖²`` for orthonormal rows ``vectors`` ``[k, P]``: the fraction of ``u``'s squared norm in
    their span, in [0, 1]; NaN for ``u = 0``."""
    c = jnp.matmul(vectors, u, precision=precision)
    norm2 = jnp.vdot(u, u)
    return jnp.where(norm2 > 0, jnp.vdot(c, c) / jnp.where(norm2 > 0, norm2, 1), jnp.nan)


def _eig_options(spectrum: SpectrumConfig, precision) -> dict:
    return dict(tol=spectrum.tol, max_restarts=spectrum.max_restarts, precision=precision,
                multiplicity_check=spectrum.multiplicity_check)


def _finish(params: Params, anchor: Params, key, train: Chunks, test: Chunks, hess: Chunks, pre: _Prepared,
            eig: EigResult, spectrum: SpectrumConfig, probes, precision, model: Model) -> Analysis:
    apply = model.apply
    anchor_flat = ravel_pytree(anchor)[0]
    return Analysis(
        train_loss=dataset_cross_entropy(params, train, precision=precision, apply=apply),
        test_loss=dataset_cross_entropy(params, test, precision=precision, apply=apply),
        test_accuracy=dataset_accuracy(params, test, precision=precision, apply=apply),
        gradient=pre.grad,
        grad_norm=jnp.linalg.norm(pre.grad),
        distance_to_anchor=jnp.sqrt(anchor_penalty(params, anchor)),
        gradient_overlap=subspace_share(eig.eigenvectors, pre.data_grad, precision),
        displacement_overlap=subspace_share(eig.eigenvectors, pre.flat - anchor_flat, precision),
        weights=pre.flat,
        eig=eig,
        extras=_extras(params, pre.lin, pre.unshifted, hess, pre.flat, eig, pre.k_bottom,
                       jax.random.fold_in(key, 7) if probes is None else probes, spectrum, precision, model),
    )


def analyze(params: Params, anchor: Params, lam, key, train: Chunks, test: Chunks, hess: Chunks,
            spectrum: SpectrumConfig, *, probes=None, precision=DEFAULT_PRECISION, warm_start=None,
            model: Model | None = None) -> Analysis:
    """Metrics, gradient and top-k eigenpairs of the data Hessian of one member at ``params``.

    The eigenpairs are those of ``∇²(mean CE)``, without the penalty's ``2λI`` (see the module
    docstring); ``∇²L_eff`` has the same eigenvectors and the eigenvalues ``μ + 2λ``. ``model`` is
    a :class:`hessjax.models.Model` (default: the sigmoid MLP of ``params``' widths). For an MLP ``θ``
    is fixed during the Lanczos run, so the forward and backward pass over the Hessian samples are
    done once (:func:`hessjax.linearized.linearize_hessian`) and every Lanczos step applies only the
    R-operator (about 2.6 instead of 4.75 forward passes per product; memory: the residuals of all
    ``hess`` samples, 2.6 kB per sample for 784-128-128-10 in float32); any other model's products
    are forward-over-reverse (:func:`hessjax.linearized.hessian_operator`). The products use ``precision``.
    ``warm_start`` ``[g, P]`` (e.g. a neighbouring λ's eigenvectors) starts Lanczos from their sum
    (:func:`hessjax.lanczos.top_k_eigenpairs`); ``None``: from λ's random vector.
    For a batch of members use :func:`analyze_batch`, not ``vmap`` of this.
    """
    model = model_for(model, params)
    pre = _prepare(params, anchor, lam, key, train, hess, precision, model)
    eig = top_k_eigenpairs(functools.partial(hessian_operator(model).matvec, precision=precision), pre.v0,
                           spectrum.k, spectrum.num_iters, params=(pre.lin, pre.unshifted, hess), key=pre.k_restart,
                           warm_start=warm_start, **_eig_options(spectrum, precision))
    return _finish(params, anchor, key, train, test, hess, pre, eig, spectrum, probes, precision, model)


def analyze_batch(params: Params, anchor: Params, lams, keys, train: Chunks, test: Chunks, hess: Chunks,
                  spectrum: SpectrumConfig, *, probes=None, precision=DEFAULT_PRECISION, warm_start=None,
                  use_warm=None, live=None, model: Model | None = None) -> Analysis:
    """:func:`analyze` for a batch of members (``params``, ``lams``, ``keys`` with a leading ``B``):
    the per-member parts under ``vmap``, the eigensolve by
    :func:`hessjax.lanczos.top_k_eigenpairs_batched`, whose branches are decided once per batch.
    ``warm_start`` ``[B, g, P]`` and ``use_warm`` ``[B]``: the members that start from the sum of
    their warm vectors; ``live`` ``[B]`` (default all): the members whose eigenpairs are wanted (the
    others get zeros and cost no product). Each member's result equals its :func:`analyze` alone."""
    model = model_for(model, anchor)
    pre = jax.vmap(lambda p, lam, key: _prepare(p, anchor, lam, key, train, hess, precision, model))(
        params, lams, keys)
    matvec = jax.vmap(functools.partial(hessian_operator(model).matvec, precision=precision),
                      in_axes=(0, 0, 0, None))
    eig = top_k_eigenpairs_batched(matvec, pre.v0, spectrum.k, spectrum.num_iters,
                                   params=(pre.lin, pre.unshifted, hess), keys=pre.k_restart,
                                   warm_start=warm_start, use_warm=use_warm,
                                   param_axes=(0, 0, None) if spectrum.member_products and lams.shape[0] > 1 else None,
                                   live=live,
                                   **_eig_options(spectrum, precision))
    return jax.vmap(lambda p, key, pr, e: _finish(p, anchor, key, train, test, hess, pr, e, spectrum, probes,
                                                  precision, model))(params, keys, pre, eig)


def _extras(params, lin, lam, hess, flat, eig, k_bottom, probes, spectrum: SpectrumConfig, precision,
            model) -> Extras:
    """Trace, density and bottom eigenpairs over the same linearized data Hessian as the top k, and the
    top k of its Gauss–Newton part (:mod:`hessjax.ggn`) over the same samples.

    The Hutchinson and SLQ probes come from the key ``probes`` (:func:`probe_key`), shared by every
    λ of a sweep (common random numbers: differences between λ are then the differences of the
    weights, not probe noise; two λ trained to the same weights give identical samples). The
    bottom-k start vector is λ's own; its restart budget is ``spectrum.max_restarts``, as the top k's.
    """
    matvec = functools.partial(hessian_operator(model).matvec, precision=precision)
    ops, dim, dtype = (lin, lam, hess), flat.shape[0], flat.dtype
    k_trace, k_slq = jax.random.split(probes)
    trace = slq = bottom = ggn = None
    if spectrum.trace_probes:
        trace = hutchinson_trace(matvec, k_trace, spectrum.trace_probes, dim, dtype, params=ops, precision=precision)
    if spectrum.density_probes:
        slq = slq_density(matvec, k_slq, spectrum.density_probes, spectrum.density_iters, dim, dtype, params=ops,
                          precision=precision)
    if spectrum.bottom_k:
        v0 = jax.random.normal(k_bottom, flat.shape, dtype)
        bottom = bottom_k_eigenpairs(matvec, v0, spectrum.bottom_k, params=ops, shift=eig.eigenvalues[0],
                                     tol=spectrum.tol, max_restarts=spectrum.max_restarts,
                                     key=jax.random.fold_in(k_bottom, 1), precision=precision)
    if spectrum.ggn:
        k_ggn = jax.random.fold_in(k_bottom, 2)
        v0 = jax.random.normal(k_ggn, flat.shape, dtype)
        ggn = top_k_eigenpairs(functools.partial(flat_ggn_matvec, precision=precision, apply=model.apply), v0,
                               spectrum.k, spectrum.num_iters, params=(params, hess), tol=spectrum.tol,
                               max_restarts=spectrum.max_restarts, key=jax.random.fold_in(k_ggn, 1),
                               precision=precision, multiplicity_check=spectrum.multiplicity_check)
    return Extras(trace, slq, bottom, ggn)


def lambda_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all, across hosts) with one ``lam`` axis."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("lam",), axis_types=(AxisType.Auto,), devices=devices)


class Programs:
    """The four compiled programs of a sweep, for fixed data shapes and settings."""

    def __init__(self, mesh, train_config: TrainConfig, spectrum: SpectrumConfig, *, precision=DEFAULT_PRECISION,
                 model: Model | None = None):
        self.mesh = mesh
        self.model = model
        self.split = NamedSharding(mesh, P("lam"))
        self.replicated = NamedSharding(mesh, P())
        self.train_config = train_config
        self.spectrum = spectrum
        cfg, spec = train_config, spectrum

        def init(start, anchor, lams, train):
            apply = model_for(model, anchor).apply
            return jax.vmap(lambda lam: init_state(start, anchor, lam, train, cfg, precision=precision,
                                                   apply=apply))(lams)

        def init_follow(default, previous, stored, source, previous_ok, anchor, lams, train):
            # --init follow: member i starts from its predecessor's converged weights — the previous batch's
            # same member (source 1, if it stayed finite) or stored weights (source 2, flat [G, P]) — else
            # from the default start; the store keeps weights in float32, so a float64 sweep rounds its
            # device copy alike and a resumed λ starts exactly as an uninterrupted one
            apply = model_for(model, anchor).apply
            _, unravel = ravel_pytree(default)
            use_prev, use_store = (source == 1) & previous_ok, source == 2

            def one(prev, flat_stored, use_p, use_s, lam):
                prev = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32).astype(a.dtype), prev)
                start = jax.tree_util.tree_map(lambda s, p, d: jnp.where(use_s, s, jnp.where(use_p, p, d)),
                                               unravel(flat_stored), prev, default)
                return init_state(start, anchor, lam, train, cfg, precision=precision, apply=apply)

            states = jax.vmap(one)(previous, stored, use_prev, use_store, lams)
            return states, use_prev | use_store

        def epoch(states, anchor, lams, x, y, train, seed, epoch_index):
            order = epoch_order(seed, epoch_index, x.shape[0])  # one permutation shared by every λ
            apply = model_for(model, anchor).apply
            return jax.vmap(
                lambda s, lam: train_epoch(s, anchor, lam, x, y, train, order, cfg, precision=precision, apply=apply)
            )(states, lams)

        def analyze_all(params, anchor, lams, keys, train, test, hess, probes, warm_previous, warm_stored, source,
                        previous_ok, live):
            # source per member: 0 cold, 1 the previous batch's same member, 2 vectors from the store
            # the store keeps eigenvectors in float32: a float64 sweep rounds its device copy the same way,
            # so a resumed λ (vectors from the store) starts exactly as an uninterrupted one
            use = (source == 2) | ((source == 1) & previous_ok)
            warm_previous = warm_previous.astype(jnp.float32).astype(warm_previous.dtype)
            warm = jnp.where((source == 2)[:, None, None], warm_stored, warm_previous)
            return analyze_batch(params, anchor, lams, keys, train, test, hess, spec, probes=probes,
                                 precision=precision, warm_start=warm, use_warm=use, live=live, model=model)

        def healthy(states, analysis):  # what the writer calls not diverged, decided on the device
            finite = jnp.isfinite(analysis.train_loss) & jnp.all(jnp.isfinite(analysis.weights), axis=1)
            return ~states.diverged & finite

        split = self.split
        self.init = jax.jit(init, out_shardings=split)
        self.init_follow = jax.jit(init_follow, out_shardings=split)
        self.epoch = jax.jit(epoch, out_shardings=split, donate_argnums=0)
        # members are independent: each device solves its own rows in its own loops (no lockstep
        # across devices, and a member's operator is sliced only on the device that holds it)
        lam, rep = P("lam"), P()
        local = jax.shard_map(analyze_all, mesh=mesh, in_specs=(lam, rep, lam, lam, rep, rep, rep, rep, lam, lam, lam,
                                                                lam, lam), out_specs=lam, check_vma=False)

        def analyze(params, anchor, lams, keys, train, test, hess, probes, warm_previous, warm_stored, source,
                    previous_ok, fill):
            # fill[i]: the member that member i repeats (i itself for a live one); an idle member is not
            # solved, and takes its eigenpairs from the member it repeats (the next batch may start from them)
            live = fill == jnp.arange(fill.shape[0], dtype=fill.dtype)
            out = local(params, anchor, lams, keys, train, test, hess, probes, warm_previous, warm_stored, source,
                        previous_ok, live)
            return out._replace(eig=jax.tree_util.tree_map(lambda a: a[fill], out.eig))

        self.analyze = jax.jit(analyze, out_shardings=split)
        self.healthy = jax.jit(healthy, out_shardings=split)

    def compilations(self) -> dict[str, int]:
        """How many times each program was compiled (1 each for a sweep whose batches share a shape)."""
        return {"init": self.init._cache_size() + self.init_follow._cache_size(), "epoch": self.epoch._cache_size(),
                "analyze": self.analyze._cache_size(), "healthy": self.healthy._cache_size()}

    def put_split(self, array) -> jax.Array:
        """A host array ``[G, ...]`` split along its first axis over the mesh (each process supplies
        the global array; only its addressable shards are used)."""
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, self.split, lambda idx: array[idx])

    def put_replicated(self, tree):
        """A pytree of host or device arrays, replicated on every device of the mesh."""
        def put(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, self.replicated, lambda idx: a[idx])
        return jax.tree_util.tree_map(put, tree)


def gather(array) -> np.ndarray:
    """The whole of a λ-split array on the host, from every process when there are several."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def train_batch(programs: Programs, start, anchor, lams, x, y, train, seed: int, max_epochs: int,
                on_epoch=None, states=None) -> TrainState:
    """Train every member of a λ batch to its stopping epoch, one compiled epoch per call.

    The host reads back only the ``stopped`` flags (and, for ``on_epoch(epoch, states)``, whatever
    the callback asks for) between epochs; it stops when every member has stopped. ``states``: the
    members' epoch-0 states when they start from different points (``Programs.init_follow``);
    otherwise every member starts from ``start``.
    """
    if states is None:
        states = programs.init(start, anchor, lams, train)
    for epoch in range(1, max_epochs + 1):
        if bool(np.all(gather(states.stopped))):
            break
        states = programs.epoch(states, anchor, lams, x, y, train, seed, epoch)
        if on_epoch is not None:
            on_epoch(epoch, states)
    return states


def local_rows(tree) -> dict[int, object]:
    """``{global row: pytree of numpy rows}`` for the rows of a λ-split pytree this process holds."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    per_leaf: list[dict[int, np.ndarray]] = []
    for leaf in leaves:
        rows = {}
        for shard in leaf.addressable_shards:
            start = shard.index[0].start or 0
            data = np.asarray(shard.data)
            for i in range(data.shape[0]):
                rows.setdefault(start + i, data[i])
        per_leaf.append(rows)
    common = sorted(set.intersection(*(set(r) for r in per_leaf))) if per_leaf else []
    return {i: jax.tree_util.tree_unflatten(treedef, [r[i] for r in per_leaf]) for i in common}


__all__ = ["Analysis", "Extras", "Programs", "SpectrumConfig", "TrainConfig", "TrainState", "analyze", "analyze_batch",
           "gather", "lambda_keys", "lambda_mesh", "local_rows", "model_for", "probe_key", "train_batch"]
