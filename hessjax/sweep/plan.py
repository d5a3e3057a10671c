"""What a sweep will do, decided before any work: its inputs checked and loaded, the seeds and run ids,
this worker's part of the grid, the λ batches, and the ``--dry-run`` plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import results
from ..anchors import default_anchor_path
from ..datasets import fit_to_model, load_dataset
from ..mnist import DataError
from ..models import BUILTIN_MODELS, ModelError, get_activation, is_user_model, resolve_model
from ..results import UsageError
from .checks import INITS, check_settings, parse_seeds, parse_shard

#: The walks of --init follow, and the suffix of each one's run id.
WALKS = {"ascending": "", "descending": "-descending"}

__all__ = ["INITS", "WALKS", "Inputs", "Slot", "cold_batches", "default_lambda_batch", "load_inputs", "parse_seeds",
           "parse_shard", "print_plan", "segments", "shard_part", "sweep_batches", "walk_segments"]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The checked inputs of a sweep, shared by every seed (run id) it runs."""

    lams: np.ndarray  # [n] the grid, float64, as given
    anchor: object  # hessjax.bridges.Anchor (numpy params)
    anchor_path: Path
    data: object  # hessjax.datasets.Dataset, inputs shaped for the model
    model: object  # hessjax.models.Model
    model_sha256: str  # of a user model's source file ("" for the built-in models)
    n_hess: int
    out: Path
    seeds: tuple[int, ...]
    several_seeds: bool  # --seeds was given: every seed is its own run id ID-seedS
    base_id: str
    shard: tuple[int, int] | None  # (I, N): this worker's part of the grid, or None for all of it

    def run_id(self, seed: int, walk: str = "ascending") -> str:
        """``ID`` for a single ``--seed``, ``ID-seedS`` for each of ``--seeds``; ``-descending`` appended for
        the descending walk of ``--init follow``."""
        base = f"{self.base_id}-seed{seed}" if self.several_seeds else self.base_id
        return base + WALKS[walk]


def shard_part(lams, shard: tuple[int, int] | None) -> list[float]:
    """This worker's contiguous part of the sorted grid (worker ``I`` of ``N`` takes the ``I``-th of
    ``N`` near-equal runs; every λ belongs to exactly one worker)."""
    ordered = sorted(float(v) for v in lams)
    if shard is None:
        return ordered
    index, total = shard
    n = len(ordered)
    return ordered[index * n // total: (index + 1) * n // total]


class Slot(NamedTuple):
    """One member of a λ batch and where its eigensolve starts."""

    lam: float
    source: str  # "cold" (λ's random vector), "previous" (this member's result in the batch before), "store"
    neighbour: float | None  # the λ whose eigenvectors start this one's Lanczos (None: cold)
    start: str = "init"  # --init follow: "previous", "store" (the predecessor's weights) or "init" (the walk's start)
    start_from: float | None = None  # the λ whose converged weights start this one's training (None: the start)


def segments(part: list[float], length: int) -> list[list[float]]:
    """``part`` (ascending) cut into consecutive runs of ``length`` λ (the last may be shorter)."""
    return [part[i: i + length] for i in range(0, len(part), length)]


def walk_segments(part: list[float], todo, size: int, usable, length: int,
                  cold: bool = False, follow: bool = False) -> list[list[Slot | None]]:
    """The batches of a sweep with continuation across λ.

    ``part`` (this worker's λ) is cut into segments of ``length`` consecutive λ (:func:`segments`),
    shortened to ``⌈len(part) / size⌉`` where that is less, so that every member of a batch has a
    segment to walk (a short grid on many devices runs in parallel, cold, rather than one λ per batch);
    member ``i`` of every batch walks segments ``i, i + size, i + 2·size, …`` one λ per batch, and
    each λ starts from the eigenvectors of its predecessor in its segment: computed by the same
    member in the batch before (``"previous"``), or finished earlier and read from the store
    (``"store"``; ``usable`` holds the finished, non-diverged λ). A segment's first λ, a λ whose
    predecessor diverged, and every λ with ``cold`` start from their own random vector.

    Which λ starts from which depends only on ``part``, ``length`` and ``size`` — not on what was
    finished before — so a resumed sweep with the same batch size starts every λ from the same vectors
    as an uninterrupted one (the store holds them in float32, and the device copy is rounded alike).
    A resume with another batch size or device count is still certified, but not bitwise the same.
    ``None`` marks a member with nothing left to do in that batch. ``part`` is walked in the order
    given (descending for a descending walk). With ``follow`` (``--init follow``) the same predecessor
    also starts each λ's training, whatever ``cold`` says of its eigensolve (``Slot.start``).
    """
    runs = segments(part, max(1, min(length, -(-len(part) // size))))
    wanted = set(todo)
    before = {run[j]: run[j - 1] for run in runs for j in range(1, len(run))}
    queues = [[v for run in runs[i::size] for v in run if v in wanted] for i in range(size)]
    batches = []
    for t in range(max((len(q) for q in queues), default=0)):
        batch: list[Slot | None] = []
        for q in queues:
            if t >= len(q):
                batch.append(None)
                continue
            lam, neighbour = q[t], before.get(q[t])
            if neighbour is None:
                where = "init"
            elif t > 0 and q[t - 1] == neighbour:
                where = "previous"
            elif neighbour in usable:
                where = "store"
            else:  # the neighbour diverged, or is not finished (lost with a killed worker)
                where = "init"
            start = (where, neighbour if where != "init" else None) if follow else ("init", None)
            if cold or where == "init":
                batch.append(Slot(lam, "cold", None, *start))
            else:
                batch.append(Slot(lam, where, neighbour, *start))
        batches.append(batch)
    return batches


def sweep_batches(config, part: list[float], todo, size: int, records,
                  descending: bool = False) -> list[list[Slot | None]]:
    """:func:`walk_segments` with the sweep's settings: ``records`` are the run's finished λ (their
    non-diverged ones may start a neighbour), ``--segment-length`` and ``--cold-start``. With
    ``--init follow`` every member walks one unbroken run of the (ascending, or ``descending``) part."""
    usable = {lam for lam, rec in records.items() if not rec.get("diverged")}
    follow = config.init == "follow"
    length = max(1, len(part)) if follow else config.segment_length
    return walk_segments(sorted(part, reverse=descending), todo, size, usable, length, cold=config.cold_start,
                         follow=follow)


def cold_batches(lams: list[float], size: int) -> list[list[Slot]]:
    """Batches of ``size`` consecutive λ, every one started cold (the refinement rounds' λ)."""
    return [[Slot(v, "cold", None) for v in lams[i: i + size]] for i in range(0, len(lams), size)]


def default_lambda_batch(platform_name: str) -> int:
    """λ per device: 1 on a CPU (a vmapped batch there runs no faster than a loop: XLA:CPU parallelises
    each matmul, not the batch), 8 on accelerators, which one 784-128-128-10 MLP underfills."""
    return 1 if platform_name == "cpu" else 8


def load_inputs(config, jax, settings=None) -> Inputs:
    """Check every setting (``settings``: what :func:`check_settings` returned, if it ran already) and load
    the anchor and the data; :class:`UsageError` (or the loaders' ``DataError``/``AnchorError``) before any work."""
    lams, seeds, many, shard = settings or check_settings(config)
    data = load_dataset(config.dataset, data_dir=config.data_dir, tfds_dir=config.tfds_dir,
                        train_samples=config.train_samples, test_samples=config.test_samples, dtype=config.dtype)
    anchor_path = _anchor_path(config)
    model, anchor = _model_and_anchor(config, anchor_path, data, jax)
    data = fit_to_model(data, model.input_shape, model.num_classes, model.name)
    base_id = config.run_id or anchor_path.stem
    results.check_run_id(base_id)
    n_train = data.x_train.shape[0]
    n_hess = config.hessian_samples or n_train
    if n_hess > n_train:
        raise UsageError(f"--hessian-samples {n_hess} exceeds the {n_train} training samples (it takes the first N)")
    if config.k > anchor.num_params:
        raise UsageError(f"--k {config.k} exceeds the number of parameters {anchor.num_params}")
    out = Path(config.out)
    if not config.dry_run:
        results.check_writable(out)
    return Inputs(lams, anchor, anchor_path, data, model, _source_sha256(config.model), n_hess, out, seeds, many,
                  base_id, shard)


def _source_sha256(name: str) -> str:
    """The SHA-256 of the source file of a ``MODULE:ATTR`` model ("" for the built-in models)."""
    if not is_user_model(name):
        return ""
    import hashlib
    import importlib.util

    module = name.rpartition(":")[0]
    path = Path(module) if module.endswith(".py") else None
    if path is None:
        spec = importlib.util.find_spec(module)
        path = Path(spec.origin) if spec is not None and spec.origin else None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else ""


def _anchor_path(config) -> Path:
    """``--anchor``, or the shipped anchor of a built-in model; a user's model needs its own."""
    if config.model not in BUILTIN_MODELS and not is_user_model(config.model):
        raise UsageError(f"--model {config.model!r}: use {' or '.join(BUILTIN_MODELS)}, or MODULE:ATTR for your own "
                         "(a hessjax.models.Model, a Flax module or a factory of either)")
    if config.anchor:
        return Path(config.anchor)
    if is_user_model(config.model):
        raise UsageError(f"--model {config.model} needs --anchor: a .pth state dict of its parameters (θ_ref), "
                         "e.g. torch.save(module.state_dict(), path)")
    return default_anchor_path(config.model)


def _model_and_anchor(config, anchor_path: Path, data, jax):
    """The model and the anchor matched to it: an MLP takes its widths from the anchor (which must start
    at the data's sample size); any other model's parameters must be exactly the anchor's tensors."""
    from ..bridges import anchor as anchor_io

    try:
        if config.model == "mlp":
            get_activation(config.activation or "sigmoid")
            with jax.enable_x64(True):  # a float64 anchor is read exactly, then cast to --dtype later
                anchor = anchor_io.load_anchor(anchor_path, n_inputs=int(np.prod(data.sample_shape)), n_classes=None)
                anchor = anchor._replace(params=jax.tree_util.tree_map(np.asarray, anchor.params))
            model = resolve_model("mlp", sizes=anchor.sizes, activation=config.activation)
        else:
            model = resolve_model(config.model, activation=config.activation, input_shape=data.sample_shape)
            with jax.enable_x64(True):
                anchor = anchor_io.load_anchor(anchor_path, model=model)
                anchor = anchor._replace(params=jax.tree_util.tree_map(np.asarray, anchor.params))
    except (ModelError, ValueError) as err:
        if isinstance(err, (anchor_io.AnchorError, DataError)):
            raise
        raise UsageError(str(err)) from None
    return model, anchor


def forward_flops(model) -> float:
    """Floating-point operations of one sample's forward pass: the MLP's matmuls counted, any other
    model's from XLA's cost analysis of its compiled forward pass."""
    if model.mlp is not None:
        sizes = model.mlp.sizes
        return 2.0 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    import jax
    import jax.numpy as jnp

    params = jax.eval_shape(lambda key: model.init(key, jnp.float32), jax.random.PRNGKey(0))
    sample = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
    try:
        cost = jax.jit(model.apply).lower(params, sample).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or 2.0 * model.num_params
    except Exception:  # an estimate only: a backend without cost analysis falls back to 2 flops per weight
        return 2.0 * model.num_params


def print_plan(config, inputs: Inputs, run_id: str, todo, batches, devices, per_device) -> None:
    """The ``--dry-run`` summary: grid, devices, batches, data, settings, and estimates of time and disk."""
    from ..lanczos import default_num_iters, probe_steps

    anchor, lams = inputs.anchor, inputs.lams
    n_train, n_test, n_hess = inputs.data.x_train.shape[0], inputs.data.x_test.shape[0], inputs.n_hess
    k, P = config.k, anchor.num_params
    m = config.lanczos_iters or default_num_iters(k, P)
    flops_fwd = forward_flops(inputs.model)  # per sample
    epochs = min(config.max_epochs, 40)  # a typical plateau; the cap bounds it
    train_flops = epochs * n_train * flops_fwd * 4  # forward + backward per step, and the epoch's L_eff
    # a cold first pass (often stops early; here counted whole) and the completeness probe; residuals cost
    # no products; a warm start usually needs fewer
    hvps = m + (probe_steps(k, m) if config.multiplicity_check else 0)
    lanczos_flops = hvps * (2.6 * n_hess * flops_fwd + 4 * (m + 9) * P)  # R-operator + Gram–Schmidt
    # rough sustained rates on a 2-core CPU (a 60,000-sample epoch takes ~1 s; the HVP rate is in
    # benchmarks/RESULTS.md); an accelerator's are a guess, not a measurement
    train_rate, hvp_rate = (50e9, 120e9) if devices[0].platform == "cpu" else (5e12, 20e12)
    per_lambda = train_flops / train_rate + lanczos_flops / hvp_rate
    bytes_per_lambda = P * 4 + P * 26 + k * 120 + (P * k * 16 if config.eigenvectors == "csv" else
                                                    P * k * 4 if config.eigenvectors == "npy" else 0)
    bytes_store = P * k * 4 + 2 * P * 4
    part = "" if inputs.shard is None else f" (worker {inputs.shard[0]} of {inputs.shard[1]}: its part)"
    lines = [
        f"run id        {run_id}" + (f"  (and {len(inputs.seeds) - 1} more seeds)" if len(inputs.seeds) > 1 else ""),
        f"model         {inputs.model.name}: {inputs.model.description}, P={P:,}",
        f"anchor        {inputs.anchor_path}" + (f"  (chain {'-'.join(map(str, anchor.sizes))})" if anchor.sizes else ""),
        f"λ grid        {len(lams)} values in [{min(lams):g}, {max(lams):g}]{part}; {len(todo)} to run",
        f"devices       {len(devices)} × {devices[0].platform} ({devices[0].device_kind}); {per_device} λ per device, "
        f"{len(batches)} batches of up to {per_device * len(devices)}",
        f"data          {inputs.data.name}: {n_train:,} train / {n_test:,} test / {n_hess:,} Hessian samples of "
        f"[{', '.join(map(str, inputs.model.input_shape))}], {inputs.model.num_classes} classes",
        f"training      Adam lr={config.lr} batch {config.batch_size}, ≤{config.max_epochs} epochs, "
        f"patience {config.patience}, min-delta {config.min_delta}, init {config.init}",
        f"spectrum      top {k} of the data Hessian (θ = μ + 2λ written in float64), Krylov basis {m}, "
        f"tol {config.tol}·|μ₁|, {config.dtype}, precision {config.precision}",
        "continuation  " + ("off (--cold-start): every λ from its own random vector" if config.cold_start else
                            f"segments of {config.segment_length} consecutive λ; each λ from its predecessor's "
                            "eigenvectors, a segment's first λ cold"),
        f"estimate      ~{per_lambda:.0f} s per λ (assuming ~{epochs} epochs), ~{per_lambda * len(todo) / 3600:.1f} h "
        f"for the {len(todo)} to run" + (f", for each of {len(inputs.seeds)} seeds" if len(inputs.seeds) > 1 else ""),
        f"disk          ~{bytes_per_lambda * len(todo) / 1e9:.2f} GB of per-λ files "
        f"(eigenvectors {config.eigenvectors}) + ~{bytes_store * len(todo) / 1e9:.2f} GB in the Zarr store",
    ]
    if config.refine:
        lines.append(f"refinement    by {config.refine}: up to {config.refine_budget} more λ, resolution "
                     f"{config.refine_resolution}, threshold {config.refine_threshold}")
    print("\n".join(lines))
