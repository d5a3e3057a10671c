"""``python -m hessjax.sweep``: train the MLP for every λ of a grid under the anchor-regularized
loss, then write the top-k Hessian eigenpairs at each converged point, in the original pipeline's
files and in one consolidated Zarr store.

This is the one module that parses arguments, reads and writes files, and composes the compiled
programs of :mod:`hessjax.engine`. Run ``python -m hessjax.sweep --help`` for every option, and
``--dry-run`` to see the plan (λ count, batches, devices, estimated time and disk) before a long run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .anchors import default_anchor_path

DEFAULT_LAMBDAS = "0:0.1:501"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Every setting of a sweep. Defaults are the command line's (see ``--help`` for the reasons)."""

    anchor: str | None = None  # None: the shipped default anchor
    out: str = "results"
    run_id: str | None = None  # None: the anchor file's stem
    seed: int = 0
    lambdas: str = DEFAULT_LAMBDAS
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
    chunk_size: int = 10_000
    # spectrum
    k: int = 30
    lanczos_iters: int | None = None
    tol: float = 1e-5
    max_restarts: int = 20
    multiplicity_check: bool = True
    dtype: str = "float32"
    precision: str = "highest"
    # optional spectral extras
    trace: bool = False
    trace_probes: int = 100
    density: bool = False
    density_probes: int = 10
    density_iters: int = 80
    bottom_k: int = 0
    # scale
    lambda_batch: int | None = None
    distributed: bool = False
    # output
    eigenvectors: str = "csv"
    overwrite: bool = False
    quiet: bool = False
    dry_run: bool = False

    def fingerprint(self) -> dict:
        """The settings that determine a λ's results: a rerun into the same directory must match
        them (the grid, the batching and the output knobs are free to change)."""
        free = {"lambdas", "out", "overwrite", "quiet", "dry_run", "lambda_batch", "distributed", "eigenvectors"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in free}


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


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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
        description="Train the MLP for every λ of a grid under mean CE + λ‖θ − θ_ref‖² and write the top-k "
                    "Hessian eigenpairs at each converged point.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--anchor", default=None, help="anchor .pth state dict (default: the shipped anchor)")
    g.add_argument("--out", default=d.out, help="output directory")
    g.add_argument("--id", dest="run_id", default=None, help="run id in file names (default: the anchor's stem)")
    g.add_argument("--seed", type=_nonneg_int, default=d.seed, help="seed of the initialisation, batch order and Lanczos")
    g.add_argument("--lambdas", default=d.lambdas, help="START:STOP:NUM (inclusive, like numpy.linspace) or a comma list")
    g = p.add_argument_group("training (Adam, early stopping on a plateau of L_eff over the training samples)")
    g.add_argument("--lr", type=_positive_float, default=d.lr)
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="mini-batch size; the last partial batch of an epoch is kept, as torch's DataLoader does")
    g.add_argument("--max-epochs", type=_nonneg_int, default=d.max_epochs, help="epoch cap (0: no training)")
    g.add_argument("--patience", type=_positive_int, default=d.patience,
                   help="stop after this many epochs without an improvement of L_eff by more than --min-delta")
    g.add_argument("--min-delta", type=_nonneg_float, default=d.min_delta)
    g.add_argument("--init", choices=("random", "anchor"), default=d.init,
                   help="start every λ from one seeded fresh initialisation, or from the anchor itself")
    g = p.add_argument_group("data (MNIST; the first N samples of each split in file order)")
    g.add_argument("--data-dir", default=None,
                   help="directory of the four IDX files (default: $HESSJAX_DATA_DIR, else the copy shipped with hessjax)")
    g.add_argument("--tfds-dir", default=None,
                   help="a prepared tensorflow-datasets directory to read instead (never downloads; example order differs)")
    g.add_argument("--train-samples", type=_positive_int, default=None, help="default: all 60,000")
    g.add_argument("--test-samples", type=_positive_int, default=None, help="default: all 10,000")
    g.add_argument("--hessian-samples", type=_positive_int, default=None, help="default: the training samples")
    g.add_argument("--chunk-size", type=_positive_int, default=d.chunk_size,
                   help="samples per chunk of full-data losses, gradients and HVPs (bounds memory)")
    g = p.add_argument_group("spectrum (Lanczos with full reorthogonalisation and thick restarts)")
    g.add_argument("--k", type=_positive_int, default=d.k, help="number of top eigenpairs")
    g.add_argument("--lanczos-iters", type=_positive_int, default=None, help="Krylov basis size (default 4k, at least 2k+20)")
    g.add_argument("--tol", type=_positive_float, default=d.tol, help="residual tolerance relative to |λ₁|")
    g.add_argument("--max-restarts", type=_nonneg_int, default=d.max_restarts)
    g.add_argument("--no-multiplicity-check", dest="multiplicity_check", action="store_false",
                   help="skip the locking pass that finds a second copy of a degenerate eigenvalue in the top k "
                        "(saves about (lanczos-iters − k)/2 HVPs per λ: 45 of ~121 at the defaults)")
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
                   help="also the k smallest eigenvalues (where L_eff turns locally convex)")
    g = p.add_argument_group("scale")
    g.add_argument("--lambda-batch", type=_positive_int, default=None,
                   help="λ values per device in one compiled program (default: 1 on CPU, 8 on GPU/TPU)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() and shard λ over every host's devices")
    g = p.add_argument_group("output")
    g.add_argument("--eigenvectors", choices=("csv", "npy", "none"), default=d.eigenvectors,
                   help="per-λ eigenvector file format; every eigenvector is always in the Zarr store")
    g.add_argument("--overwrite", action="store_true", help="discard this id's earlier results in --out and start afresh")
    g.add_argument("--quiet", action="store_true", help="no progress bar; one log line per λ batch")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p


# --------------------------------------------------------------------------------------- the run


class _Progress:
    """A tqdm bar over λ (updated per epoch with the current loss), or plain log lines."""

    def __init__(self, total: int, quiet: bool):
        self.quiet = quiet
        self.bar = None
        if not quiet and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="λ", dynamic_ncols=True, file=sys.stderr)

    def epoch(self, batch: int, n_batches: int, epoch: int, loss: float, running: int):
        if self.bar is not None:
            self.bar.set_postfix_str(f"batch {batch}/{n_batches} epoch {epoch} L_eff {loss:.4g} running {running}")

    def done(self, n: int, message: str):
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _default_lambda_batch(platform_name: str) -> int:
    # On a CPU a vmapped batch runs no faster than a loop (XLA:CPU parallelises each matmul, not the
    # batch), so batching only adds padding; accelerators are underfilled by one 784-128-128-10 MLP.
    return 1 if platform_name == "cpu" else 8


def run(config: SweepConfig | None = None, **overrides) -> dict:
    """Run (or resume) a sweep; the function behind ``python -m hessjax.sweep``.

    Returns a summary dict: ``out``, ``run_id``, ``finished`` (λ values finished in this call),
    ``skipped`` (already finished before), ``diverged``, ``store`` (path of the Zarr store).
    Raises :class:`hessjax.results.UsageError`, :class:`hessjax.mnist.DataError` or
    :class:`hessjax.bridges.AnchorError` before any work on bad input.
    """
    config = dataclasses.replace(config or SweepConfig(), **overrides)
    from . import results
    from .mnist import load_mnist

    # ---- validate everything before any work
    lams = results.parse_lambdas(config.lambdas)
    if config.eigenvectors not in ("csv", "npy", "none"):
        raise results.UsageError(f"--eigenvectors must be csv, npy or none, got {config.eigenvectors!r}")
    if config.init not in ("random", "anchor"):
        raise results.UsageError(f"--init must be random or anchor, got {config.init!r}")
    import jax

    _enable_compilation_cache(jax)
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if config.distributed:
        jax.distributed.initialize()
    from .bridges import anchor as anchor_io

    anchor_path = Path(config.anchor) if config.anchor else default_anchor_path()
    with jax.enable_x64(True):  # a float64 anchor is read exactly, then cast to --dtype below
        anchor = anchor_io.load_anchor(anchor_path)
        anchor = anchor._replace(params=jax.tree_util.tree_map(np.asarray, anchor.params))
    run_id = config.run_id or anchor_path.stem
    results.check_run_id(run_id)
    if config.tfds_dir and config.data_dir:
        raise results.UsageError("give either --data-dir (IDX files) or --tfds-dir (a prepared tfds directory)")
    data = load_mnist(config.tfds_dir or config.data_dir, train_samples=config.train_samples,
                      test_samples=config.test_samples, source="tfds" if config.tfds_dir else "idx")
    n_train = data.x_train.shape[0]
    n_hess = config.hessian_samples or n_train
    if n_hess > n_train:
        raise results.UsageError(
            f"--hessian-samples {n_hess} exceeds the {n_train} training samples (it takes the first N of them)")
    k_max = anchor.num_params
    if config.k > k_max:
        raise results.UsageError(f"--k {config.k} exceeds the number of parameters {k_max}")
    out = Path(config.out)
    if not config.dry_run:
        results.check_writable(out)

    devices = jax.devices()
    platform_name = devices[0].platform
    per_device = config.lambda_batch or _default_lambda_batch(platform_name)
    global_batch = per_device * len(devices)

    finished = {} if config.overwrite else results.finished_lambdas(out, run_id)
    todo = [float(v) for v in sorted(lams) if float(v) not in finished]
    batches = [todo[i: i + global_batch] for i in range(0, len(todo), global_batch)]
    if config.dry_run:
        _print_plan(config, anchor, run_id, lams, todo, batches, devices, per_device, n_train, n_hess,
                    data.x_test.shape[0])
        return {"out": str(out), "run_id": run_id, "finished": [], "skipped": sorted(finished), "diverged": [],
                "store": str(out / f"{run_id}.zarr"), "dry_run": True}

    fingerprint = config.fingerprint() | {"anchor": str(anchor_path), "run_id": run_id}
    if jax.process_index() == 0:
        results.check_config(out, run_id, fingerprint, overwrite=config.overwrite, anchor_sha256=anchor.sha256)
        results.write_manifest(out, run_id, fingerprint, anchor_sha256=anchor.sha256,
                               devices=[str(d) for d in devices], matmul_precision=config.precision)

    return _execute(config, anchor, anchor_io, run_id, out, lams, todo, batches, finished, data, n_hess,
                    per_device, devices, fingerprint)


def _enable_compilation_cache(jax) -> None:
    """Reuse compiled programs across runs (a resumed or repeated sweep skips its compile time):
    JAX's persistent cache in ``$HESSJAX_CACHE_DIR`` (default ``~/.cache/hessjax/xla``), unless the
    user configured one already; ``HESSJAX_CACHE_DIR=off`` disables it."""
    where = os.environ.get("HESSJAX_CACHE_DIR", str(Path.home() / ".cache" / "hessjax" / "xla"))
    if where == "off" or jax.config.jax_compilation_cache_dir:
        return
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _precision(name: str):
    from jax import lax

    return {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH, "default": lax.Precision.DEFAULT}[name]


def _execute(config, anchor, anchor_io, run_id, out, lams, todo, batches, finished, data, n_hess, per_device,
             devices, fingerprint) -> dict:
    import jax
    import jax.numpy as jnp

    from . import engine, results
    from .hvp import chunk_data
    from .training import TrainConfig, initial_params

    dtype = jnp.dtype(config.dtype)
    precision = _precision(config.precision)
    train_cfg = TrainConfig(config.lr, config.batch_size, config.max_epochs, config.patience, config.min_delta)
    spectrum = engine.SpectrumConfig(config.k, config.lanczos_iters, config.tol, config.max_restarts,
                                     config.trace_probes if config.trace else 0,
                                     config.density_probes if config.density else 0, config.density_iters,
                                     config.bottom_k, config.multiplicity_check)
    mesh = engine.lambda_mesh(devices)
    programs = engine.Programs(mesh, train_cfg, spectrum, precision=precision)
    global_batch = per_device * len(devices)

    anchor_params = jax.tree_util.tree_map(lambda t: np.asarray(t, dtype), anchor.params)
    start = anchor_params if config.init == "anchor" else jax.tree_util.tree_map(
        np.asarray, initial_params(config.seed, anchor.sizes, dtype))
    x_train = np.asarray(data.x_train, dtype)
    rep = programs.put_replicated
    x, y = rep(x_train), rep(data.y_train)
    train = rep(chunk_data(x_train, data.y_train, config.chunk_size))
    test = rep(chunk_data(np.asarray(data.x_test, dtype), data.y_test, config.chunk_size))
    hess = rep(chunk_data(x_train[:n_hess], data.y_train[:n_hess], config.chunk_size))
    anchor_dev, start_dev = rep(anchor_params), rep(start)
    probes = rep(engine.probe_key(config.seed))
    names = np.asarray(anchor_io.parameter_names(anchor))

    store_path = results.store_path(out, run_id)
    all_lams = sorted(set(float(v) for v in lams) | set(finished))
    if jax.process_index() == 0:
        store = results.SweepStore.create(store_path, all_lams, n_params=anchor.num_params, k=config.k,
                                          attrs={"run_id": run_id, "parameter_keys": [k for pair in anchor.keys
                                                                                      for k in pair]},
                                          extras=_store_extras(config))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("hessjax store ready")
    store = results.SweepStore(store_path)

    progress = _Progress(len(todo), config.quiet)
    done_now, diverged = [], []
    try:
        for b, batch in enumerate(batches, 1):
            t0 = time.perf_counter()
            padded = batch + [batch[-1]] * (global_batch - len(batch))  # repeats; their results are dropped
            lam_arr = programs.put_split(np.asarray(padded, dtype))
            keys = programs.put_split(engine.lambda_keys(config.seed, padded))
            def report(epoch, states, b=b, n=len(batch)):
                if not config.quiet:
                    loss = engine.gather(states.loss)[:n]
                    running = int((~engine.gather(states.stopped)[:n]).sum())
                    progress.epoch(b, len(batches), epoch, float(np.nanmean(loss)), running)

            states = engine.train_batch(programs, start_dev, anchor_dev, lam_arr, x, y, train, config.seed,
                                        config.max_epochs, report)
            analysis = programs.analyze(states.best_params, anchor_dev, lam_arr, keys, train, test, hess, probes)
            rows_a = engine.local_rows(analysis)
            rows_s = engine.local_rows(states._replace(params=(), opt_state=(), best_params=()))
            seconds = (time.perf_counter() - t0) / len(batch)
            for i, lam in enumerate(batch):
                if i not in rows_a:
                    continue  # another host holds this λ and writes it
                rec = _write_lambda(config, anchor, anchor_io, run_id, out, store, names, lam, rows_a[i],
                                    rows_s[i], seconds)
                done_now.append(lam)
                if rec["diverged"]:
                    diverged.append(lam)
            results.write_model_csv(out, run_id)
            if jax.process_index() == 0:
                results.write_manifest(out, run_id, fingerprint, anchor_sha256=anchor.sha256,
                                       devices=[str(d) for d in devices], matmul_precision=config.precision)
            progress.done(len(batch), f"batch {b}/{len(batches)}: λ {batch[0]:g}…{batch[-1]:g} done "
                                      f"({seconds:.1f} s per λ)")
    finally:
        progress.close()
    return {"out": str(out), "run_id": run_id, "finished": done_now, "skipped": sorted(finished),
            "diverged": diverged, "store": str(store_path), "compilations": programs.compilations()}


def _store_extras(config: SweepConfig) -> dict:
    """The optional store arrays of this configuration (see :meth:`hessjax.results.SweepStore.create`)."""
    extras = {}
    if config.trace:
        extras |= {"trace": ("float64", (), ()), "trace_stderr": ("float64", (), ())}
    if config.density:
        shape = (config.density_probes, config.density_iters)
        extras |= {"slq_nodes": ("float64", shape, ("probe", "node")),
                   "slq_weights": ("float64", shape, ("probe", "node"))}
    if config.bottom_k:
        extras |= {"bottom_eigenvalues": ("float64", (config.bottom_k,), ("bottom",)),
                   "bottom_residuals": ("float64", (config.bottom_k,), ("bottom",))}
    return extras


def _extra_results(ex) -> tuple[dict, dict]:
    """(record ``extra`` entries, store ``extras`` arrays) of one λ's :class:`hessjax.engine.Extras`."""
    record, arrays = {}, {}
    if ex.trace is not None:
        record |= {"trace": float(ex.trace.trace), "trace_stderr": float(ex.trace.stderr)}
        arrays |= {"trace": ex.trace.trace, "trace_stderr": ex.trace.stderr}
    if ex.slq is not None:
        arrays |= {"slq_nodes": ex.slq.nodes, "slq_weights": ex.slq.weights}
    if ex.bottom is not None:
        record |= {"lambda_min": float(ex.bottom.eigenvalues[0]), "lambda_min_residual": float(ex.bottom.residuals[0]),
                   "bottom_eigenvalues": [float(v) for v in ex.bottom.eigenvalues],
                   "bottom_residuals": [float(v) for v in ex.bottom.residuals]}
        arrays |= {"bottom_eigenvalues": ex.bottom.eigenvalues, "bottom_residuals": ex.bottom.residuals}
    return record, arrays


def _write_extra_files(out, run_id, lam, ex) -> None:
    """``Hessian-density-ID-L2.csv`` and ``Hessian-bottom-eigenvalues-ID-L2.csv``, where asked for."""
    from . import results

    if ex.slq is not None:
        results.write_density_csv(out, run_id, lam, ex.slq.nodes, ex.slq.weights)
    if ex.bottom is not None:
        results.write_bottom_eigenvalues_csv(out, run_id, lam, ex.bottom.eigenvalues, ex.bottom.residuals)


def _write_lambda(config, anchor, anchor_io, run_id, out, store, names, lam, a, s, seconds) -> dict:
    """Every file of one λ, then the store row, then its record (last: its presence means finished).

    A diverged λ gets a record (and a ``Model`` row) but no weights, gradient or eigen files.
    """
    import jax

    from . import results

    diverged = bool(s.diverged) or not np.isfinite(a.train_loss) or not np.all(np.isfinite(a.weights))
    eig = a.eig
    nan = float("nan")
    extra_record, extra_arrays = _extra_results(a.extras)
    record = results.make_record(
        lam,
        train_loss=nan if diverged else a.train_loss,
        test_loss=nan if diverged else a.test_loss,
        test_accuracy=nan if diverged else a.test_accuracy,
        epochs=int(s.epoch),
        converged=bool(s.converged),
        diverged=diverged,
        grad_norm=nan if diverged else a.grad_norm,
        distance_to_anchor=nan if diverged else a.distance_to_anchor,
        seconds=seconds,
        eigenvalues=() if diverged else eig.eigenvalues,
        residuals=() if diverged else eig.residuals,
        eig_converged=() if diverged else eig.converged,
        extra={"best_epoch": int(s.best_epoch), "lanczos_matvecs": int(eig.num_matvecs),
               "lanczos_restarts": int(eig.num_restarts), **(extra_record if not diverged else {})},
    )
    if diverged:
        store.write(record)
    else:
        _, unravel = jax.flatten_util.ravel_pytree(anchor.params)
        anchor_io.save_state_dict(results.pth_path(out, run_id, lam), unravel(a.weights), anchor)
        results.write_gradients_csv(out, run_id, lam, names, a.gradient)
        results.write_eigenvalues_csv(out, run_id, lam, eig.eigenvalues)
        results.write_eigenvectors(out, run_id, lam, names, eig.eigenvectors, config.eigenvectors)
        _write_extra_files(out, run_id, lam, a.extras)
        store.write(record, gradient=a.gradient, weights=a.weights, eigenvectors=eig.eigenvectors,
                    extras=extra_arrays)
    results.write_record(out, run_id, record)
    return record


def _print_plan(config, anchor, run_id, lams, todo, batches, devices, per_device, n_train, n_hess, n_test):
    k, P = config.k, anchor.num_params
    m = config.lanczos_iters or min(P, max(2 * k + 20, 4 * k))
    flops_fwd = 2 * sum(a * b for a, b in zip(anchor.sizes[:-1], anchor.sizes[1:]))  # per sample
    epochs = min(config.max_epochs, 40)  # a typical plateau; the cap bounds it
    train_flops = epochs * n_train * flops_fwd * 4  # forward + backward per step, and the epoch's L_eff
    # first pass (often stops early; here counted whole) and locking pass; residuals cost no products
    hvps = m + ((m - k + 1) // 2 if config.multiplicity_check else 0)
    lanczos_flops = hvps * (2.6 * n_hess * flops_fwd + 4 * (m + 9) * P)  # R-operator + Gram–Schmidt
    # rough sustained rates on a 2-core CPU (a 60,000-sample epoch takes ~1 s; the HVP rate is in
    # benchmarks/RESULTS.md); an accelerator's are a guess, not a measurement
    train_rate, hvp_rate = (50e9, 120e9) if devices[0].platform == "cpu" else (5e12, 20e12)
    per_lambda = train_flops / train_rate + lanczos_flops / hvp_rate
    bytes_per_lambda = P * 4 + P * 16 + k * 16 + (P * k * 15 if config.eigenvectors == "csv" else
                                                    P * k * 4 if config.eigenvectors == "npy" else 0)
    bytes_store = P * k * 4 + 2 * P * 4
    lines = [
        f"run id        {run_id}",
        f"anchor        {config.anchor or default_anchor_path()}  (chain {'-'.join(map(str, anchor.sizes))}, P={P:,})",
        f"λ grid        {len(lams)} values in [{min(lams):g}, {max(lams):g}]; {len(lams) - len(todo)} finished, "
        f"{len(todo)} to run",
        f"devices       {len(devices)} × {devices[0].platform} ({devices[0].device_kind}); {per_device} λ per device, "
        f"{len(batches)} batches of up to {per_device * len(devices)}",
        f"data          {n_train:,} train / {n_test:,} test / {n_hess:,} Hessian samples",
        f"training      Adam lr={config.lr} batch {config.batch_size}, ≤{config.max_epochs} epochs, "
        f"patience {config.patience}, min-delta {config.min_delta}, init {config.init}",
        f"spectrum      top {k}, Krylov basis {m}, tol {config.tol}·|λ₁|, {config.dtype}, precision {config.precision}",
        f"estimate      ~{per_lambda:.0f} s per λ (assuming ~{epochs} epochs), ~{per_lambda * len(todo) / 3600:.1f} h "
        f"for the {len(todo)} to run",
        f"disk          ~{bytes_per_lambda * len(todo) / 1e9:.2f} GB of per-λ files "
        f"(eigenvectors {config.eigenvectors}) + ~{bytes_store * len(todo) / 1e9:.2f} GB in the Zarr store",
    ]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success (diverged λ are recorded, not errors), 2 with one ``error:`` line
    on bad input, 130 on Ctrl-C (finished λ are kept; rerun to resume)."""
    args = build_parser().parse_args(argv)
    config = SweepConfig(**vars(args))
    from .bridges.anchor import AnchorError
    from .mnist import DataError
    from .results import UsageError

    try:
        summary = run(config)
    except (UsageError, DataError, AnchorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished λ values are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    if not config.quiet and not config.dry_run:
        print(f"{len(summary['finished'])} λ finished, {len(summary['skipped'])} already done, "
              f"{len(summary['diverged'])} diverged; results in {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
