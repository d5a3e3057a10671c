"""Running a sweep's batches: the compiled programs on the devices, the λ loop, and the refinement rounds.

For each run id (one per seed) :func:`execute_run` opens the run under its lock (configuration check,
manifest, store template with the whole grid), then loops over batches: the device trains and analyses
batch ``b + 1`` while the writer thread writes batch ``b`` (:class:`hessjax.sweep.write.BatchWriter`).
With ``--refine`` it then asks :func:`hessjax.refine.next_lambdas` for new λ where the chosen
indicator changes most and runs them as ordinary λ of the run, until the budget is spent.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from .. import engine, refine, results
from . import plan
from .write import BatchWriter, store_extras, write_lambda

__all__ = ["Compute", "RunContext", "execute_run", "schedule", "unconverged_pairs", "unconverged_warning"]


@dataclasses.dataclass
class RunContext:
    """One run id of a sweep: what its writer needs to know."""

    config: object  # SweepConfig
    inputs: object  # plan.Inputs
    run_id: str
    seed: int
    anchor_io: object  # hessjax.bridges.anchor
    names: np.ndarray  # [P] parameter names, PyTorch flat order
    devices: list
    walk: str = "ascending"  # --init follow: which walk this run id is (the other is ID-descending)

    @property
    def out(self):
        return self.inputs.out

    @property
    def anchor(self):
        return self.inputs.anchor

    @property
    def fingerprint(self) -> dict:
        extra = {}
        if self.inputs.data.sha256:  # the .npz's bytes: a changed file is another data set
            extra["dataset_sha256"] = self.inputs.data.sha256
        if self.inputs.model_sha256:  # the source of a user's model: changed code is another model
            extra["model_sha256"] = self.inputs.model_sha256
        if self.config.init == "follow":
            extra["walk"] = self.walk
        return self.config.fingerprint() | {"seed": self.seed, "anchor": str(self.inputs.anchor_path),
                                            "run_id": self.run_id} | extra


def _precision(name: str):
    from jax import lax

    return {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH, "default": lax.Precision.DEFAULT}[name]


class Compute:
    """The compiled programs and the replicated inputs of a sweep, built once and used for every
    batch of every seed (the seed enters the programs as a traced argument, so nothing recompiles)."""

    def __init__(self, config, inputs, devices, per_device: int):
        import jax
        import jax.numpy as jnp

        from ..hvp import chunk_data
        from ..training import TrainConfig

        self.config, self.inputs = config, inputs
        self.dtype = jnp.dtype(config.dtype)
        train_cfg = TrainConfig(config.lr, config.batch_size, config.max_epochs, config.patience, config.min_delta)
        spectrum = engine.SpectrumConfig(config.k, config.lanczos_iters, config.tol, config.max_restarts,
                                         config.trace_probes if config.trace else 0,
                                         config.density_probes if config.density else 0, config.density_iters,
                                         config.bottom_k, config.multiplicity_check, config.member_products,
                                         config.ggn)
        self.programs = engine.Programs(engine.lambda_mesh(devices), train_cfg, spectrum,
                                        precision=_precision(config.precision), model=inputs.model)
        self.global_batch = per_device * len(devices)
        data, n_hess, dtype = inputs.data, inputs.n_hess, self.dtype
        rep = self.programs.put_replicated
        x_train = np.asarray(data.x_train, dtype)
        self.x, self.y = rep(x_train), rep(data.y_train)
        self.train = rep(chunk_data(x_train, data.y_train, config.resolved_chunk_size))
        self.test = rep(chunk_data(np.asarray(data.x_test, dtype), data.y_test, config.resolved_chunk_size))
        # the Hessian's samples are the first n_hess training samples: all of them by default, then the
        # training chunks on the devices serve both
        self.hess = self.train if n_hess == x_train.shape[0] else rep(
            chunk_data(x_train[:n_hess], data.y_train[:n_hess], config.resolved_chunk_size))
        self.anchor_params = jax.tree_util.tree_map(lambda t: np.asarray(t, dtype), inputs.anchor.params)
        self.anchor_dev = rep(self.anchor_params)
        self._zeros = None  # [G, k, P] and [G] on the devices: "no warm vectors", made on first use
        self._broadcast = None  # --init follow: the start broadcast to [G, ...], compiled on first use
        self._probe_keys = {}  # seed -> the replicated key of the trace and density probes

    def start(self, seed: int, walk: str = "ascending"):
        """The replicated starting weights of every λ of seed ``seed`` (with ``--init follow``: of the first
        λ of each member's walk, the seeded initialisation going up and the anchor going down)."""
        import jax

        from ..training import initial_params

        if self.config.init == "anchor" or (self.config.init == "follow" and walk == "descending"):
            return self.anchor_dev
        return self.programs.put_replicated(
            jax.tree_util.tree_map(np.asarray, initial_params(seed, self.inputs.model, self.dtype)))

    def batch(self, slots, seed: int, start, previous=None, store=None, on_epoch=None):
        """Dispatch training and analysis of one batch; returns ``(states, analysis)`` as device
        arrays, still computing.

        ``slots`` has one :class:`hessjax.sweep.plan.Slot` (or ``None``: nothing to do) per member
        of the global batch, or fewer; empty members repeat a live one (their training runs with the
        batch, their Lanczos does not: they take the eigenpairs of the member they repeat, and their
        results are not written). ``previous`` is the batch before's
        ``(eigenvectors, healthy, best weights)`` on the devices, ``store`` the run's store (for
        ``"store"`` slots). Also returns, with ``--init follow``, which members started from their
        predecessor's weights (``[G]`` bool on the devices; ``None`` otherwise).
        """
        slots = list(slots) + [None] * (self.global_batch - len(slots))
        live = [i for i, s in enumerate(slots) if s is not None]
        fill = [i if slots[i] is not None else live[i % len(live)] for i in range(len(slots))]
        padded = [slots[i] for i in fill]
        p = self.programs
        lam_arr = p.put_split(np.asarray([s.lam for s in padded], self.dtype))
        keys = p.put_split(engine.lambda_keys(seed, [s.lam for s in padded]))
        codes = {"cold": 0, "init": 0, "previous": 1, "store": 2}
        source = np.asarray([codes[s.source] for s in padded], np.int32)
        start_source = np.asarray([codes[s.start] for s in padded], np.int32)
        if previous is None and (np.any(source == 1) or np.any(start_source == 1)):
            raise RuntimeError("a batch continues from the batch before, but there is none")
        warm_previous, previous_ok, previous_params = previous if previous is not None else self._no_previous(start)
        states0 = followed = None
        if self.config.init == "follow":
            stored = self._stored_weights([s.start_from if s.start == "store" else None for s in padded], store)
            states0, followed = p.init_follow(start, previous_params, stored, p.put_split(start_source), previous_ok,
                                              self.anchor_dev, lam_arr, self.train)
        states = engine.train_batch(p, start, self.anchor_dev, lam_arr, self.x, self.y, self.train, seed,
                                    self.config.max_epochs, on_epoch, states=states0)
        warm_stored = self._stored([s.neighbour if s.source == "store" else None for s in padded], store)
        analysis = p.analyze(states.best_params, self.anchor_dev, lam_arr, keys, self.train, self.test, self.hess,
                             self._probe_key(seed), warm_previous, warm_stored,
                             p.put_split(source), previous_ok, p.put_split(np.asarray(fill, np.int32)))
        return states, analysis, followed

    def _probe_key(self, seed: int):
        if seed not in self._probe_keys:
            self._probe_keys[seed] = self.programs.put_replicated(engine.probe_key(seed))
        return self._probe_keys[seed]

    def _no_previous(self, start=None):
        """``(eigenvectors [G, k, P], healthy [G], weights)`` of "no batch before": zeros on the devices
        (weights: ``start`` for every member, used only by ``--init follow``)."""
        import jax

        if self._zeros is None:
            k, n_params, g = self.config.k, self.inputs.anchor.num_params, self.global_batch
            self._zeros = (self.programs.put_split(np.zeros((g, k, n_params), self.dtype)),
                           self.programs.put_split(np.zeros((g,), bool)))
        weights = None
        if self.config.init == "follow":  # start broadcast to every member, on the devices
            if self._broadcast is None:
                import jax.numpy as jnp

                g = self.global_batch
                self._broadcast = jax.jit(lambda t: jax.tree_util.tree_map(
                    lambda a: jnp.broadcast_to(a, (g, *a.shape)), t), out_shardings=self.programs.split)
            weights = self._broadcast(start)
        return (*self._zeros, weights)

    def _stored_weights(self, neighbours, store):
        """``[G, P]`` on the devices: each ``"store"`` member's predecessor's weights, zeros elsewhere."""
        rows = np.zeros((len(neighbours), self.inputs.anchor.num_params), self.dtype)
        for i, v in enumerate(neighbours):
            if v is not None:
                rows[i] = store.row("weights", v)
        return self.programs.put_split(rows)

    def _stored(self, neighbours, store):
        """``[G, k, P]`` on the devices: each ``"store"`` member's neighbour's eigenvectors, zeros elsewhere."""
        if all(v is None for v in neighbours):
            return self._no_previous()[0]
        rows = np.zeros((len(neighbours), self.config.k, self.inputs.anchor.num_params), self.dtype)
        for i, v in enumerate(neighbours):
            if v is not None:
                rows[i] = store.eigenvectors(v)
        return self.programs.put_split(rows)


class _Progress:
    """A tqdm bar over λ (updated per epoch with the current loss), or plain log lines."""

    def __init__(self, total: int, quiet: bool):
        self.quiet = quiet
        self.bar = None
        if not quiet and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="λ", dynamic_ncols=True, file=sys.stderr)

    def epoch(self, batch: int, epoch: int, loss: float, running: int):
        if self.bar is not None:
            self.bar.set_postfix_str(f"batch {batch} epoch {epoch} L_eff {loss:.4g} running {running}")

    def add(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def done(self, n: int, message: str):
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _coordinator() -> bool:
    import jax

    return jax.process_index() == 0


def _write_manifest(ctx) -> None:
    data = ctx.inputs.data
    extra = {"model": ctx.inputs.model.summary(),
             "dataset": {"name": data.name, "sha256": data.sha256 or None, "train_samples": int(data.x_train.shape[0]),
                         "test_samples": int(data.x_test.shape[0]), "hessian_samples": int(ctx.inputs.n_hess)}}
    results.write_manifest(ctx.out, ctx.run_id, ctx.fingerprint, anchor_sha256=ctx.anchor.sha256,
                           devices=[str(d) for d in ctx.devices], matmul_precision=ctx.config.precision, extra=extra)


def open_run(ctx, all_lams) -> "results.SweepStore":
    """Check the configuration against earlier results, write the manifest and create (or extend) the
    store with every λ of the grid — under the run's lock, so that the first of several workers creates
    the template and the others find it; with ``--distributed`` the coordinating process does it."""
    import jax

    config, out, run_id, anchor = ctx.config, ctx.out, ctx.run_id, ctx.anchor
    if _coordinator():
        with results.run_lock(out, run_id):
            results.check_config(out, run_id, ctx.fingerprint, overwrite=config.overwrite,
                                 anchor_sha256=anchor.sha256)
            _write_manifest(ctx)
            results.SweepStore.create(
                results.store_path(out, run_id), all_lams, n_params=anchor.num_params, k=config.k,
                attrs={"run_id": run_id, "seed": ctx.seed, "parameter_keys": [k for pair in anchor.keys for k in pair],
                       "num_classes": int(ctx.inputs.model.num_classes), "model": ctx.inputs.model.name},
                extras=store_extras(config))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"hessjax store ready {run_id}")
    return results.SweepStore(results.store_path(out, run_id))


def _write_job(ctx, store, slots, states, analysis, t0, report, progress, followed=None):
    """The writer's job for one batch: fetch the rows this process holds, write each λ, rebuild the
    run's tables under its lock, and note the batch in ``report``."""
    live = [(i, s) for i, s in enumerate(slots) if s is not None]
    lams = [s.lam for _, s in live]

    def job():
        rows_a = engine.local_rows(analysis)  # blocks until the batch is computed
        t_done = time.perf_counter()
        # batches overlap (b + 1 is dispatched while b still computes): a batch's time is from the
        # later of its dispatch and the previous batch's completion to its own completion
        t_start = max(t0, report.get("last_done") or t0)
        report["last_done"] = t_done
        rows_s = engine.local_rows(states._replace(params=(), opt_state=(), best_params=()))
        rows_f = engine.local_rows(followed) if followed is not None else {}
        seconds = (t_done - t_start) / len(live)
        for i, slot in live:
            if i not in rows_a:
                continue  # another process holds this λ and writes it
            init_from = slot.start_from if (followed is not None and bool(rows_f[i])) else None
            rec = write_lambda(ctx, store, slot.lam, rows_a[i], rows_s[i], seconds, slot.neighbour,
                               init_from=init_from, follow=followed is not None)
            report["finished"].append(slot.lam)
            if rec["diverged"]:
                report["diverged"].append(slot.lam)
        with results.run_lock(ctx.out, ctx.run_id):
            results.write_model_csv(ctx.out, ctx.run_id)
            if _coordinator():
                _write_manifest(ctx)
        report["batches"].append({"lambdas": lams, "compute_s": t_done - t_start,
                                  "write_s": time.perf_counter() - t_done,
                                  "own_matvecs": [int(rows_a[i].eig.num_matvecs) for i, _ in live if i in rows_a],
                                  "warm": [bool(rows_a[i].eig.warm) for i, _ in live if i in rows_a],
                                  "batch_matvecs": [int(rows_a[i].eig.batch_matvecs) for i, _ in live if i in rows_a]})
        progress.done(len(live), f"λ {results.lambda_label(lams[0])}…{results.lambda_label(lams[-1])} done "
                                 f"({seconds:.1f} s per λ)")

    return job


def _run_batches(ctx, compute, store, batches, writer, progress, report, start) -> None:
    """Every batch of ``batches`` (lists of :class:`hessjax.sweep.plan.Slot`): dispatch it, hand it
    to the writer, go on with the next; a batch continues from the one before on the devices."""
    previous = None
    for slots in batches:
        t0 = time.perf_counter()
        b = len(report["blocked"]) + 1  # batches dispatched so far, this one included
        live = [i for i, s in enumerate(slots) if s is not None]

        def on_epoch(epoch, states, b=b, live=live):
            if not ctx.config.quiet:
                loss = engine.gather(states.loss)[live]
                running = int((~engine.gather(states.stopped)[live]).sum())
                progress.epoch(b, epoch, float(np.nanmean(loss)), running)

        states, analysis, followed = compute.batch(slots, ctx.seed, start, previous, store, on_epoch)
        previous = (analysis.eig.eigenvectors, compute.programs.healthy(states, analysis), states.best_params)
        for leaf in _leaves(analysis):  # start the device-to-host copies now
            leaf.copy_to_host_async()
        blocked = writer.submit(_write_job(ctx, store, slots, states, analysis, t0, report, progress, followed))
        report["blocked"].append({"lambdas": [s.lam for s in slots if s is not None], "blocked_s": blocked,
                                  "wall_s": time.perf_counter() - t0})


def schedule(ctx, compute, todo, part=None):
    """The batches of ``todo``: continuation along segments of ``part`` (or ``--cold-start``); with
    ``--init follow`` one walk per member, downwards for the descending run."""
    return plan.sweep_batches(ctx.config, part if part is not None else todo, todo, compute.global_batch,
                              results.finished_lambdas(ctx.out, ctx.run_id), descending=ctx.walk == "descending")


def _leaves(tree):
    import jax

    return [leaf for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "copy_to_host_async")]


def _indicator_changes(ctx, store, lams: list[float]) -> np.ndarray:
    """The refinement indicator's change across each interval of the finished ``lams`` (ascending)."""
    records = results.finished_lambdas(ctx.out, ctx.run_id)
    kind = ctx.config.refine
    if kind == "distance":
        return refine.indicator_changes(kind, [records[v]["distance_to_anchor"] for v in lams])
    if kind == "mu1":
        return refine.indicator_changes(kind, [(records[v].get("data_eigenvalues") or [np.nan])[0] for v in lams])
    changes, previous = [], None  # overlap: two λ's eigenvectors at a time
    for i, lam in enumerate(lams):
        current = None if records[lam]["diverged"] else store.eigenvectors(lam).astype(np.float64)
        if i:
            changes.append(refine.indicator_changes(kind, [previous, current])[0])
        previous = current
    return np.asarray(changes, np.float64)


def _refine(ctx, compute, store, writer, progress, report, start) -> list[float]:
    """Rounds of refinement until the budget is spent or nothing is left to refine; the λ added."""
    config = ctx.config
    added: list[float] = []
    while len(added) < config.refine_budget:
        writer.drain()  # the indicator needs every finished λ
        finished = results.finished_lambdas(ctx.out, ctx.run_id)
        lams = sorted(finished)
        if len(lams) < 2:
            break
        changes = _indicator_changes(ctx, store, lams)
        new = refine.next_lambdas(lams, changes, count=min(compute.global_batch, config.refine_budget - len(added)),
                                  resolution=config.refine_resolution, threshold=config.refine_threshold)
        new = [results.round_lambda(v) for v in new if results.round_lambda(v) not in finished]
        if not new:
            break
        with results.run_lock(ctx.out, ctx.run_id):
            store.ensure_lambdas(new)
        progress.add(len(new))
        _run_batches(ctx, compute, store, plan.cold_batches(new, compute.global_batch), writer, progress, report,
                     start)
        added.extend(new)
    return added


def execute_run(ctx, compute, todo: list[float], all_lams, part: list[float] | None = None) -> dict:
    """One run id: open it, run ``todo`` (then the refinement rounds), and report what happened.

    ``part`` is this worker's whole share of the grid (default ``todo``): its segments decide which
    λ continues from which (:func:`hessjax.sweep.plan.walk_segments`)."""
    store = open_run(ctx, all_lams)
    progress = _Progress(len(todo), ctx.config.quiet)
    report = {"finished": [], "diverged": [], "batches": [], "blocked": []}
    writer = BatchWriter(overlap=ctx.config.overlap_writes)
    start = compute.start(ctx.seed, ctx.walk)
    try:
        _run_batches(ctx, compute, store, schedule(ctx, compute, todo, part), writer, progress, report, start)
        refined = _refine(ctx, compute, store, writer, progress, report, start) if ctx.config.refine else []
        writer.drain()
    finally:
        progress.close()
        writer.close()
    grid = set(all_lams) | set(refined)
    return {"run_id": ctx.run_id, "finished": sorted(report["finished"]), "diverged": sorted(report["diverged"]),
            "refined": sorted(refined), "store": str(results.store_path(ctx.out, ctx.run_id)),
            "batches": report["batches"], "blocked": report["blocked"],
            "unconverged": unconverged_pairs(results.finished_lambdas(ctx.out, ctx.run_id), grid)}


def unconverged_pairs(records, lams) -> dict[float, int]:
    """``{λ: number of top-k pairs that missed the tolerance}`` over the finished, non-diverged λ of ``lams``."""
    wanted = {results.round_lambda(v) for v in lams}
    missed = {}
    for lam, rec in records.items():
        flags = rec.get("eig_converged", [])
        if lam in wanted and not rec.get("diverged") and not all(flags):
            missed[lam] = len(flags) - int(sum(bool(f) for f in flags))
    return missed


def unconverged_warning(missed: dict[float, int], k: int, run_id: str) -> str | None:
    """The one warning line naming every λ with unconverged pairs, or ``None``."""
    if not missed:
        return None
    shown = ", ".join(f"{results.lambda_label(lam)} ({n} of {k})" for lam, n in sorted(missed.items()))
    return (f"warning: run {run_id}: unconverged eigenpairs at λ = {shown}; they are flagged converged=False in "
            "Hessian-eigenvalue-certificates-*.csv, the records and the store")
