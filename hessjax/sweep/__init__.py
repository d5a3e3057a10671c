"""``python -m hessjax.sweep``: train the MLP for every λ of a grid under the anchor-regularized
loss, then write the top-k Hessian eigenpairs at each converged point, in the original pipeline's
files and in one consolidated Zarr store.

The sweep is the one part of hessjax that parses arguments, reads and writes files, and composes the
compiled programs of :mod:`hessjax.engine`:

* :mod:`~hessjax.sweep.config` — :class:`SweepConfig` and the command line;
* :mod:`~hessjax.sweep.plan` — the checked inputs, seeds and run ids, a worker's part of the grid,
  the ``--dry-run`` plan;
* :mod:`~hessjax.sweep.execute` — the compiled programs on the devices, the batch loop, refinement;
* :mod:`~hessjax.sweep.write` — every file of a finished λ, written while the next batch computes.

Run ``python -m hessjax.sweep --help`` for every option, and ``--dry-run`` to see the plan (λ count,
batches, devices, estimated time and disk) before a long run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..anchors import default_anchor_path
from .checks import check_settings
from .config import DEFAULT_LAMBDAS, SweepConfig, build_parser

__all__ = ["DEFAULT_LAMBDAS", "SweepConfig", "build_parser", "default_anchor_path", "main", "run",
           "unconverged_pairs", "unconverged_warning"]


def run(config: SweepConfig | None = None, **overrides) -> dict:
    """Run (or resume) a sweep; the function behind ``python -m hessjax.sweep``.

    Returns a summary dict: ``out``, ``run_id``, ``finished`` (λ finished in this call), ``skipped``
    (already finished before), ``diverged``, ``store``, ``unconverged`` (``{λ: pairs}``), ``refined``
    (λ added by ``--refine``) and, per batch, ``batches`` (compute and write seconds, products) and
    ``blocked`` (seconds the main thread waited for the writer). With ``--seeds`` these are per run id
    under ``runs``, and the top-level keys are those of the first seed.
    Raises :class:`hessjax.results.UsageError`, :class:`hessjax.mnist.DataError` or
    :class:`hessjax.bridges.AnchorError` before any work on bad input.
    """
    config = dataclasses.replace(config or SweepConfig(), **overrides)
    settings = check_settings(config)  # before JAX and torch load: bad input is refused at once
    import jax

    from .. import results
    from . import plan
    from .execute import Compute, RunContext, execute_run, unconverged_warning

    _enable_compilation_cache(jax)
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    _initialize_distributed(jax, config)
    inputs = plan.load_inputs(config, jax, settings)
    devices = jax.devices()
    per_device = config.lambda_batch or plan.default_lambda_batch(devices[0].platform)
    global_batch = per_device * len(devices)
    if not config.dry_run:
        results.remove_temp_files(inputs.out)  # the leftovers of dead writers, never a live one's
    part = plan.shard_part(inputs.lams, inputs.shard)
    compute = None
    runs = []
    from ..bridges import anchor as anchor_io

    names = np.asarray(anchor_io.parameter_names(inputs.anchor), dtype=object)  # one array: the writers cache its runs
    walks = tuple(plan.WALKS) if config.init == "follow" else ("ascending",)
    for seed, walk in ((s, w) for s in inputs.seeds for w in walks):
        run_id = inputs.run_id(seed, walk)
        finished = {} if config.overwrite else results.finished_lambdas(inputs.out, run_id)
        todo = [v for v in part if v not in finished]
        if config.dry_run:
            batches = [[s.lam for s in b if s is not None]
                       for b in plan.sweep_batches(config, part, todo, global_batch, finished,
                                                   descending=walk == "descending")]
            plan.print_plan(config, inputs, run_id, todo, batches, devices, per_device)
            return {"out": str(inputs.out), "run_id": run_id, "finished": [], "skipped": sorted(finished),
                    "diverged": [], "store": str(results.store_path(inputs.out, run_id)), "dry_run": True}
        compute = compute or Compute(config, inputs, devices, per_device)
        ctx = RunContext(config, inputs, run_id, seed, anchor_io, names, devices, walk)
        all_lams = sorted({float(v) for v in inputs.lams} | set(finished))
        summary = execute_run(ctx, compute, todo, all_lams, part)
        runs.append(summary | {"skipped": sorted(v for v in finished if v in set(part))})
        line = unconverged_warning(summary["unconverged"], config.k, run_id)
        if line:
            print(line, file=sys.stderr)
    first = runs[0]
    return {"out": str(inputs.out), **first, "compilations": compute.programs.compilations(), "runs": runs}


def __getattr__(name: str):
    if name in ("unconverged_pairs", "unconverged_warning"):  # with the compiled programs, which need JAX
        from . import execute

        return getattr(execute, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _initialize_distributed(jax, config) -> None:
    """With ``--distributed``: ``jax.distributed.initialize`` with the explicit coordinator, process
    count and index where given (else JAX detects them from the cluster); CPU devices then use gloo
    collectives, so a multi-process run also works on CPU-only hosts."""
    given = {"coordinator_address": config.coordinator, "num_processes": config.num_processes,
             "process_id": config.process_id}
    if not config.distributed:  # check_settings refused the explicit ones without --distributed
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success (diverged λ are recorded, not errors), 2 with one ``error:`` line
    on bad input, 1 with one ``error:`` line when writing results fails (every λ finished before it is
    kept), 130 on Ctrl-C (finished λ are kept; rerun to resume)."""
    args = build_parser().parse_args(argv)
    config = SweepConfig(**vars(args))
    from ..mnist import DataError
    from ..results import UsageError

    try:
        check_settings(config)  # in a fraction of a second, before the imports below load JAX and torch
    except (UsageError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..bridges.anchor import AnchorError
    from .write import WriteError

    try:
        summary = run(config)
    except (UsageError, DataError, AnchorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:
        print(f"error: {exc}; every λ finished before it is kept: rerun the same command to resume",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished λ values are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    if not config.quiet and not config.dry_run:
        for r in summary["runs"]:
            print(f"{r['run_id']}: {len(r['finished'])} λ finished ({len(r['refined'])} added by refinement), "
                  f"{len(r['skipped'])} already done, {len(r['diverged'])} diverged; results in {summary['out']}")
    return 0
