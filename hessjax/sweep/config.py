"""The settings of a sweep and its command line: :class:`SweepConfig` and :func:`build_parser`."""

from __future__ import annotations

import argparse
import dataclasses
import math

__all__ = ["DEFAULT_LAMBDAS", "SweepConfig", "build_parser"]

DEFAULT_LAMBDAS = "0:0.1:501"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Every setting of a sweep. Defaults are the command line's (see ``--help`` for the reasons)."""

    anchor: str | None = None  # None: the shipped anchor of the model (mlp, lenet)
    out: str = "results"
    run_id: str | None = None  # None: the anchor file's stem
    seed: int = 0
    lambdas: str = DEFAULT_LAMBDAS
    seeds: str | None = None  # several seeds, each its own run id "ID-seedS" (e.g. "0,1,2" or "0:5")
    # studies
    refine: str | None = None  # adaptive refinement indicator: distance, mu1 or overlap
    refine_budget: int = 20  # at most this many λ added by refinement
    refine_resolution: float = 0.02  # stop refining an interval once (hi − lo) ≤ this · hi
    refine_threshold: float = 0.05  # refine only intervals whose indicator changes by more than this
    shard: str | None = None  # "I/N" (0-based) or "slurm": this worker's contiguous part of the grid
    # model and data
    model: str = "mlp"  # mlp, lenet or MODULE:ATTR
    activation: str | None = None  # the MLP's hidden activation; None: sigmoid
    dataset: str = "mnist"  # mnist, npz:PATH or tfds:NAME
    # training
    lr: float = 0.0015
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5
    min_delta: float = 1e-4
    init: str = "random"
    # data
    data_dir: str | None = None
    tfds_dir: str | None = None
    train_samples: int | None = None
    test_samples: int | None = None
    hessian_samples: int | None = None
    chunk_size: int | None = None  # None: 10,000 for the MLP, 1,000 for any other model (see --help)
    # spectrum
    k: int = 30
    lanczos_iters: int | None = None
    tol: float = 1e-5
    max_restarts: int = 30  # hessjax.lanczos.DEFAULT_MAX_RESTARTS (not imported: the command line loads without JAX)
    multiplicity_check: bool = True
    cold_start: bool = False  # every λ's Lanczos from its own random vector (no continuation)
    segment_length: int = 16  # λ per continuation segment; each segment's first λ starts cold
    dtype: str = "float32"
    precision: str = "highest"
    # optional spectral extras
    trace: bool = False
    trace_probes: int = 100
    density: bool = False
    density_probes: int = 10
    density_iters: int = 80
    bottom_k: int = 0
    ggn: bool = False  # the top k of the Gauss–Newton part of the data Hessian too
    # scale
    lambda_batch: int | None = None
    member_products: bool = True  # a batch applies each member's Hessian only while that member extends
    distributed: bool = False
    coordinator: str | None = None  # jax.distributed's coordinator address HOST:PORT (default: detected)
    num_processes: int | None = None
    process_id: int | None = None
    # output
    eigenvectors: str = "csv"
    overwrite: bool = False
    quiet: bool = False
    dry_run: bool = False
    overlap_writes: bool = True  # write batch b while batch b+1 computes (False: write, then compute)

    @property
    def resolved_chunk_size(self) -> int:
        """``--chunk-size``, or its default for the model: 10,000 samples for the MLP, whose products are
        matmuls, and 1,000 for any other model — XLA:CPU's convolutions sum a chunk's samples in float32
        with an error that grows with the chunk (measured on examples/small_cnn.py: a Hessian-vector product
        1.6e-5 from float64 at 5,000 samples per chunk, 1.1e-6 at 500), at no cost in speed."""
        if self.chunk_size is not None:
            return int(self.chunk_size)
        return 10_000 if self.model == "mlp" else 1_000

    def fingerprint(self) -> dict:
        """The settings that determine a λ's results: a rerun into the same directory must match
        them (the grid, the batching and the output knobs are free to change)."""
        free = {"lambdas", "out", "overwrite", "quiet", "dry_run", "lambda_batch", "distributed", "eigenvectors",
                "coordinator", "num_processes", "process_id", "seeds", "refine", "refine_budget",
                "refine_resolution", "refine_threshold", "shard", "overlap_writes", "member_products"}
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in free}
        settings["chunk_size"] = self.resolved_chunk_size
        # the model and the data at their defaults are what every run before them had: left out, so that
        # those runs still resume
        for key, default in (("model", "mlp"), ("activation", None), ("dataset", "mnist"), ("ggn", False)):
            if settings[key] == default:
                del settings[key]
        return settings


# ----------------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _activation(text: str) -> str:
    from ..models import get_activation

    try:
        return get_activation(text).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _nonneg_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (exit status 2), like every other refusal."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = SweepConfig()
    p = _Parser(
        prog="python -m hessjax.sweep",
        description="Train a model (the MLP, LeNet or your own) for every λ of a grid under mean CE + "
                    "λ‖θ − θ_ref‖² and write the top-k Hessian eigenpairs at each converged point.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--anchor", default=None,
                   help="anchor .pth state dict (default: the shipped anchor of --model mlp or lenet; required for "
                        "MODULE:ATTR)")
    g.add_argument("--out", default=d.out, help="output directory")
    g.add_argument("--id", dest="run_id", default=None, help="run id in file names (default: the anchor's stem)")
    g.add_argument("--seed", type=_nonneg_int, default=d.seed, help="seed of the initialisation, batch order and Lanczos")
    g.add_argument("--lambdas", default=d.lambdas,
                   help="START:STOP:NUM (inclusive, like numpy.linspace), START:STOP:NUM:log (START > 0, like "
                        "numpy.geomspace), or a comma list of values and such ranges, e.g. 0,1e-6:0.1:200:log")
    g.add_argument("--seeds", default=None,
                   help="run the grid once per seed (a comma list or START:STOP, STOP excluded), each as its own "
                        "run id ID-seedS; overrides --seed")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model,
                   help="mlp (widths from the anchor), lenet (LeNet-5, sigmoid, average pooling), or MODULE:ATTR: a "
                        "hessjax.models.Model, a Flax module or a factory of either in an importable module or a "
                        ".py file (see the README)")
    g.add_argument("--activation", type=_activation, default=None,
                   help="the MLP's hidden activation: sigmoid (default), tanh, softplus or gelu; ReLU-like ones are "
                        "refused (the loss is not C² there)")
    g.add_argument("--dataset", default=d.dataset,
                   help="mnist (the shipped copy, or --data-dir / --tfds-dir), npz:PATH (x_train, y_train, x_test, "
                        "y_test; uint8 scaled by 1/255, floats as is) or tfds:NAME (a prepared tfds data set in "
                        "--tfds-dir; never downloads)")
    g = p.add_argument_group("adaptive refinement (adds λ where the trained network changes most)")
    g.add_argument("--refine", choices=("distance", "mu1", "overlap"), default=None,
                   help="indicator: |Δ log ‖θ − θ_ref‖|, |Δ log μ₁| or 1 − the top-k subspace overlap between "
                        "neighbouring λ")
    g.add_argument("--refine-budget", type=_positive_int, default=d.refine_budget, help="most λ to add")
    g.add_argument("--refine-resolution", type=_fraction, default=d.refine_resolution,
                   help="refine an interval only while (hi − lo) > RESOLUTION·hi")
    g.add_argument("--refine-threshold", type=_nonneg_float, default=d.refine_threshold,
                   help="refine only intervals whose indicator changes by more than this")
    g = p.add_argument_group("training (Adam, early stopping on a plateau of L_eff over the training samples)")
    g.add_argument("--lr", type=_positive_float, default=d.lr)
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="mini-batch size; the last partial batch of an epoch is kept, as torch's DataLoader does")
    g.add_argument("--max-epochs", type=_nonneg_int, default=d.max_epochs, help="epoch cap (0: no training)")
    g.add_argument("--patience", type=_positive_int, default=d.patience,
                   help="stop after this many epochs without an improvement of L_eff by more than --min-delta")
    g.add_argument("--min-delta", type=_nonneg_float, default=d.min_delta)
    g.add_argument("--init", choices=("random", "anchor", "follow"), default=d.init,
                   help="start every λ from one seeded fresh initialisation, or from the anchor itself; follow: each "
                        "λ from its predecessor's converged weights, walking the sorted grid up from the "
                        "initialisation (run ID) and down from the anchor (run ID-descending), so the report can "
                        "compare the two branches (hysteresis)")
    g = p.add_argument_group("data (the first N samples of each split in file order)")
    g.add_argument("--data-dir", default=None,
                   help="MNIST: directory of the four IDX files (default: $HESSJAX_DATA_DIR, else the copy shipped "
                        "with hessjax)")
    g.add_argument("--tfds-dir", default=None,
                   help="a prepared tensorflow-datasets directory: MNIST from there (example order differs), or the "
                        "data of --dataset tfds:NAME (never downloads)")
    g.add_argument("--train-samples", type=_positive_int, default=None, help="default: all (60,000 for MNIST)")
    g.add_argument("--test-samples", type=_positive_int, default=None, help="default: all (10,000 for MNIST)")
    g.add_argument("--hessian-samples", type=_positive_int, default=None, help="default: the training samples")
    g.add_argument("--chunk-size", type=_positive_int, default=d.chunk_size,
                   help="samples per chunk of full-data losses, gradients and HVPs (bounds memory; default 10,000 for "
                        "the MLP, 1,000 for other models, whose float32 convolution sums lose accuracy over larger "
                        "chunks)")
    g = p.add_argument_group("spectrum (Lanczos with full reorthogonalisation and thick restarts)")
    g.add_argument("--k", type=_positive_int, default=d.k, help="number of top eigenpairs")
    g.add_argument("--lanczos-iters", type=_positive_int, default=None, help="Krylov basis size (default 4k, at least 2k+20)")
    g.add_argument("--tol", type=_positive_float, default=d.tol, help="every returned pair has ‖Hv − μv‖ ≤ TOL·|μ₁| (μ: the data Hessian's eigenvalues; "
                        "floored by the operator's norm where |μ₁| is tiny)")
    g.add_argument("--max-restarts", type=_nonneg_int, default=d.max_restarts)
    g.add_argument("--no-multiplicity-check", dest="multiplicity_check", action="store_false",
                   help="skip the completeness probe that finds an eigenvalue the Krylov space missed (a degenerate "
                        "copy, or a newcomer a warm start is blind to); saves max((lanczos-iters − k)/4, 12) HVPs "
                        "per λ: 22 at the defaults")
    g.add_argument("--cold-start", action="store_true",
                   help="start every λ's Lanczos from its own random vector; by default each λ continues from the "
                        "eigenvectors of its finished neighbour in the grid (falling back to a cold start when that "
                        "does not converge within 3 restarts)")
    g.add_argument("--segment-length", type=_positive_int, default=d.segment_length,
                   help="λ per continuation segment (consecutive λ of this worker's part; each segment's first λ "
                        "starts cold, the others from their predecessor; a batch's members walk different segments, "
                        "so segments are shortened to ⌈part / batch⌉ λ where that is less)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    g.add_argument("--precision", choices=("highest", "high", "default"), default=d.precision,
                   help="matmul precision of every forward pass, HVP and reorthogonalisation")
    g = p.add_argument_group("extras (written per λ, into the store and Model-ID.csv; see python -m hessjax.report)")
    g.add_argument("--trace", action="store_true", help="Hutchinson estimate of tr ∇²L_eff with its standard error")
    g.add_argument("--trace-probes", type=_positive_int, default=d.trace_probes, help="Rademacher probes")
    g.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    g.add_argument("--density-probes", type=_positive_int, default=d.density_probes)
    g.add_argument("--density-iters", type=_positive_int, default=d.density_iters, help="Lanczos steps per probe")
    g.add_argument("--bottom-k", type=_nonneg_int, default=d.bottom_k,
                   help="also the k smallest eigenvalues, and the convexity threshold λ_c = max(0, −μ_min/2) above "
                        "which L_eff is locally convex")
    g.add_argument("--ggn", action="store_true",
                   help="also the top k of the generalized Gauss–Newton matrix Jᵀ H_CE J of the data loss (by jvp/vjp, "
                        "never formed): the split H = G + (H − G), written to GGN-eigenvalues-ID-L2.csv")
    g = p.add_argument_group("scale")
    g.add_argument("--lambda-batch", type=_positive_int, default=None,
                   help="λ values per device in one compiled program (default: 1 on CPU, 8 on GPU/TPU)")
    g.add_argument("--lockstep-products", dest="member_products", action="store_false",
                   help="apply every member's Hessian at every Lanczos step, the device's whole λ batch in one "
                        "call, until its slowest member is done; by default each member's product is computed only "
                        "while it extends, one member after another, so a batch executes just what its members "
                        "need (lockstep may pay on an accelerator where one member's product does not fill it)")
    g.add_argument("--shard", default=None,
                   help="I/N: be worker I (0-based) of N independent workers, each taking its contiguous part of "
                        "the grid into the same --out; 'slurm' takes I and N from SLURM_ARRAY_TASK_ID/_MIN/_COUNT")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() and shard λ over every process's devices (one "
                        "program: if a process dies, all stop; see --shard for independent workers)")
    g.add_argument("--coordinator", default=None,
                   help="with --distributed: the coordinator's HOST:PORT (default: detected from the cluster, "
                        "e.g. Slurm)")
    g.add_argument("--num-processes", type=_positive_int, default=None, help="with --distributed: process count")
    g.add_argument("--process-id", type=_nonneg_int, default=None, help="with --distributed: this process's index")
    g = p.add_argument_group("output")
    g.add_argument("--eigenvectors", choices=("csv", "npy", "none"), default=d.eigenvectors,
                   help="per-λ eigenvector file format; every eigenvector is always in the Zarr store")
    g.add_argument("--overwrite", action="store_true", help="discard this id's earlier results in --out and start afresh")
    g.add_argument("--quiet", action="store_true", help="no progress bar; one log line per λ batch")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p
