"""Writing a finished λ batch: every file of every λ, then its record; optionally in a background thread.

**Order per λ** (crash safety): the per-λ files (``.pth``, CSVs) → the store row (its ``done`` flag
last) → the record (its presence means "finished"). Every file is written atomically. After a batch,
``Model-ID.csv`` and the manifest are rebuilt from all finished records under the run's lock, so
several workers writing into one directory never lose or tear a row.

**Overlap** (:class:`BatchWriter`): while the device computes batch ``b + 1`` a single writer thread
fetches and writes batch ``b``. At most one batch waits: the main thread blocks on
:meth:`BatchWriter.submit` only when a batch is already waiting behind the one being written, so
memory is bounded by two batches of results. A writer error is raised in the main thread at its next call, and every λ
whose record was written before it stays finished.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np

from .. import results
from ..bounds import OPERATOR_ROUNDING, error_bounds, shifted

__all__ = ["BatchWriter", "WriteError", "store_extras", "write_lambda"]


class WriteError(RuntimeError):
    """Writing a finished λ failed (disk full, permissions…); the λ written before it are kept."""


def store_extras(config) -> dict:
    """The optional store arrays of this configuration (see :meth:`hessjax.results.SweepStore.create`)."""
    extras = {"gradient_overlap": ("float64", (), ()), "displacement_overlap": ("float64", (), ())}
    if config.trace:
        extras |= {"trace": ("float64", (), ()), "trace_stderr": ("float64", (), ())}
    if config.density:
        shape = (config.density_probes, config.density_iters)
        extras |= {"slq_nodes": ("float64", shape, ("probe", "node")),
                   "slq_weights": ("float64", shape, ("probe", "node"))}
    if config.bottom_k:
        extras |= {"bottom_eigenvalues": ("float64", (config.bottom_k,), ("bottom",)),
                   "bottom_residuals": ("float64", (config.bottom_k,), ("bottom",)),
                   "bottom_converged": ("bool", (config.bottom_k,), ("bottom",)),
                   "lambda_c": ("float64", (), ())}
    if getattr(config, "ggn", False):
        extras |= {"ggn_eigenvalues": ("float64", (config.k,), ("ggn",)),
                   "ggn_residuals": ("float64", (config.k,), ("ggn",)),
                   "ggn_converged": ("bool", (config.k,), ("ggn",))}
    return extras


def _extra_results(ex, lam: float, n_params: int) -> tuple[dict, dict]:
    """(record ``extra`` entries, store ``extras`` arrays) of one λ's :class:`hessjax.engine.Extras`.

    The engine computes them on the data Hessian; the ``L_eff`` values written here add the penalty's
    ``2λI`` in float64: ``2λP`` to the trace, ``2λ`` to every SLQ node and bottom eigenvalue. The
    convexity threshold ``λ_c = max(0, −μ_min/2)`` is the λ above which ``L_eff`` is locally convex at
    these weights (``θ_min = μ_min + 2λ ≥ 0``); the Gauss–Newton eigenvalues are the data term's (no shift).
    """
    record, arrays = {}, {}
    if ex.trace is not None:
        trace = float(ex.trace.trace) + 2.0 * lam * n_params
        record |= {"trace": trace, "trace_stderr": float(ex.trace.stderr), "data_trace": float(ex.trace.trace)}
        arrays |= {"trace": trace, "trace_stderr": ex.trace.stderr}
    if ex.slq is not None:
        arrays |= {"slq_nodes": shifted(ex.slq.nodes, lam), "slq_weights": ex.slq.weights}
    if ex.bottom is not None:
        theta = shifted(ex.bottom.eigenvalues, lam)
        record |= {"lambda_min": float(theta[0]), "lambda_min_residual": float(ex.bottom.residuals[0]),
                   "bottom_eigenvalues": theta.tolist(),
                   "bottom_residuals": [float(v) for v in ex.bottom.residuals],
                   "bottom_converged": [bool(v) for v in ex.bottom.converged]}
        lambda_c = max(0.0, -float(ex.bottom.eigenvalues[0]) / 2.0)
        record["lambda_c"] = lambda_c
        arrays |= {"bottom_eigenvalues": theta, "bottom_residuals": ex.bottom.residuals,
                   "bottom_converged": ex.bottom.converged, "lambda_c": lambda_c}
    if ex.ggn is not None:
        g = np.asarray(ex.ggn.eigenvalues, np.float64)
        record |= {"ggn_max": float(g[0]), "ggn_eigenvalues": g.tolist(),
                   "ggn_residuals": [float(v) for v in ex.ggn.residuals],
                   "ggn_converged": [bool(v) for v in ex.ggn.converged]}
        arrays |= {"ggn_eigenvalues": g, "ggn_residuals": ex.ggn.residuals, "ggn_converged": ex.ggn.converged}
    return record, arrays


def _write_extra_files(out, run_id, lam, ex) -> None:
    """``Hessian-density-ID-L2.csv``, ``Hessian-bottom-eigenvalues-ID-L2.csv`` (``L_eff`` values: ``2λ``
    added in float64) and ``GGN-eigenvalues-ID-L2.csv``, where asked for."""
    if ex.slq is not None:
        results.write_density_csv(out, run_id, lam, shifted(ex.slq.nodes, lam), ex.slq.weights)
    if ex.bottom is not None:
        results.write_bottom_eigenvalues_csv(out, run_id, lam, shifted(ex.bottom.eigenvalues, lam),
                                             ex.bottom.residuals, ex.bottom.converged)
    if ex.ggn is not None:
        results.write_ggn_eigenvalues_csv(out, run_id, lam, ex.ggn.eigenvalues, ex.ggn.residuals, ex.ggn.converged)


def write_lambda(ctx, store, lam: float, a, s, seconds: float, neighbour=None, *, init_from=None,
                 follow: bool = False) -> dict:
    """Every file of one λ, then the store row, then its record (last: its presence means finished).

    ``a`` is the λ's :class:`hessjax.engine.Analysis` and ``s`` its training state, as numpy rows
    (``a.eig.batch_matvecs``: the products its device's batch executed); ``neighbour`` the λ
    whose eigenvectors started its Lanczos (recorded as ``warm_from`` when the warm start was kept,
    i.e. did not fall back to a cold start). With ``--init follow`` (``follow``) the record's
    ``init_from`` is the label of the λ whose converged weights started its training (``None``: the
    walk's start). A diverged λ gets a record (and a ``Model`` row) but no weights, gradient or eigen files.
    """
    import jax

    config, out, run_id, anchor = ctx.config, ctx.out, ctx.run_id, ctx.anchor
    diverged = bool(s.diverged) or not np.isfinite(a.train_loss) or not np.all(np.isfinite(a.weights))
    eig = a.eig  # of the data Hessian: μ
    theta = shifted(eig.eigenvalues, lam)  # of ∇²L_eff, in float64
    eps = float(np.finfo(np.asarray(eig.eigenvalues).dtype).eps)
    bounds = error_bounds(eig.eigenvalues, eig.residuals, OPERATOR_ROUNDING * eps * float(eig.scale))
    nan = float("nan")
    extra_record, extra_arrays = _extra_results(a.extras, lam, anchor.num_params)
    overlaps = {"gradient_overlap": float(a.gradient_overlap), "displacement_overlap": float(a.displacement_overlap)}
    extra_record, extra_arrays = overlaps | extra_record, overlaps | extra_arrays
    record = results.make_record(
        lam,
        train_loss=nan if diverged else a.train_loss,
        test_loss=nan if diverged else a.test_loss,
        test_accuracy=nan if diverged else a.test_accuracy,
        epochs=int(s.epoch),
        best_epoch=int(s.best_epoch),
        converged=bool(s.converged),
        diverged=diverged,
        grad_norm=nan if diverged else a.grad_norm,
        distance_to_anchor=nan if diverged else a.distance_to_anchor,
        seconds=seconds,
        eigenvalues=() if diverged else theta,
        residuals=() if diverged else eig.residuals,
        eig_converged=() if diverged else eig.converged,
        data_eigenvalues=() if diverged else eig.eigenvalues,
        error_bounds=() if diverged else bounds,
        convergence_scale=nan if diverged else eig.scale,
        extra={"best_epoch": int(s.best_epoch), "lanczos_matvecs": int(eig.num_matvecs),
               "batch_matvecs": int(eig.batch_matvecs), "lanczos_restarts": int(eig.num_restarts),
               "warm_from": neighbour if bool(eig.warm) else None,
               **({"init_from": None if init_from is None else results.lambda_label(init_from)} if follow else {}),
               "seed": int(ctx.seed), **(extra_record if not diverged else {})},
    )
    if diverged:
        store.write(record)
    else:
        _, unravel = jax.flatten_util.ravel_pytree(anchor.params)
        ctx.anchor_io.save_state_dict(results.pth_path(out, run_id, lam), unravel(a.weights), anchor)
        results.write_gradients_csv(out, run_id, lam, ctx.names, a.gradient)
        results.write_eigenvalues_csv(out, run_id, lam, theta)
        results.write_certificates_csv(out, run_id, lam, theta, eig.eigenvalues, eig.residuals, bounds, eig.converged)
        results.write_eigenvectors(out, run_id, lam, ctx.names, eig.eigenvectors, config.eigenvectors)
        _write_extra_files(out, run_id, lam, a.extras)
        store.write(record, gradient=a.gradient, weights=a.weights, eigenvectors=eig.eigenvectors,
                    extras=extra_arrays)
    results.write_record(out, run_id, record)
    return record


class BatchWriter:
    """Runs write jobs one at a time, in a background thread (``overlap=True``) or inline.

    :meth:`submit` blocks while one job is already waiting (bounded memory) and returns the seconds
    it blocked; a job's exception is re-raised, as :class:`WriteError`, by the next :meth:`submit`
    or by :meth:`close`.
    """

    def __init__(self, overlap: bool = True):
        self.overlap = overlap
        self._error: BaseException | None = None
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._thread = None
        if overlap:
            self._thread = threading.Thread(target=self._loop, name="hessjax-writer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                self._error = err
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise WriteError(f"writing results failed: {type(err).__name__}: {err}") from err

    def submit(self, job: Callable[[], object]) -> float:
        """Queue ``job`` (or run it now without overlap); the seconds the caller was blocked."""
        self._raise()
        t0 = time.perf_counter()
        if self._thread is None:
            job()
        else:
            self._jobs.put(job)
        return time.perf_counter() - t0

    def drain(self) -> float:
        """Wait until every queued job is written; the seconds waited."""
        t0 = time.perf_counter()
        if self._thread is not None:
            self._jobs.join()
        self._raise()
        return time.perf_counter() - t0

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (also after an error in the main thread)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self._raise()
