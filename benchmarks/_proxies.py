"""CPU proxies of what the sweep does on an accelerator (``python benchmarks/sweep.py --proxies``).

(a) host-blocked seconds per batch — the device has nothing queued while the host works: without
    overlap, the whole write of the batch; with it, only the main thread's waits for the writer
    thread — as a fraction of the batch's wall time;
(b) per-λ wall time of a sweep at ``--lambda-batch 8`` ÷ ``--lambda-batch 1``;
(c) Lanczos products a batch executed (as its members record it) ÷ the sum of what its members needed:
    in lockstep every member's product at every step until the slowest member is done, with member
    products (the default) only the products of members still extending;
(d) ``select_n`` operations over basis-sized arrays (``≥ B·(m + 1)·P`` elements) in the batched
    eigensolver's program: the batched solver against ``vmap`` of the single-member solver (how
    the engine batched λ before).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np


def basis_selects(batch: int = 8, k: int = 16, samples: int = 512) -> dict:
    """(d): count ``select_n`` equations with a basis-sized output in both batched programs."""
    import functools

    import jax
    import jax.numpy as jnp

    import hessjax
    from hessjax.hvp import chunk_data
    from hessjax.linearized import linearize_hessian, linearized_flat_hessian_matvec
    from hessjax.lanczos import default_num_iters, top_k_eigenpairs, top_k_eigenpairs_batched

    data = hessjax.load_mnist(train_samples=samples, test_samples=1)
    params = hessjax.init_mlp(jax.random.PRNGKey(0))
    hess = chunk_data(jnp.asarray(data.x_train), jnp.asarray(data.y_train), samples)
    p = sum(w.size + b.size for w, b in params)
    lin = jax.vmap(lambda _: linearize_hessian(params, hess))(jnp.arange(batch))
    lam = jnp.zeros((batch,), jnp.float32)
    v0 = jnp.ones((batch, p), jnp.float32)
    matvec = functools.partial(linearized_flat_hessian_matvec)
    keys = jax.vmap(jax.random.key)(jnp.arange(batch))
    threshold = batch * (default_num_iters(k, p) + 1) * p  # a basis of every member: [B, ≥ m + 1, P]

    def count(fn, *args) -> int:
        jaxpr = jax.make_jaxpr(fn)(*args)
        found = 0

        def walk(j):
            nonlocal found
            for eqn in j.eqns:
                if eqn.primitive.name == "select_n" and any(np.prod(v.aval.shape) >= threshold for v in eqn.outvars):
                    found += 1
                for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else _subjaxprs(eqn):
                    walk(sub)
        walk(jaxpr.jaxpr)
        return found

    vmapped = jax.vmap(lambda v, l, lm, key: top_k_eigenpairs(matvec, v, k, params=(l, lm, hess), key=key))
    batched = lambda v, l, lm, ks: top_k_eigenpairs_batched(  # noqa: E731
        jax.vmap(matvec, in_axes=(0, 0, 0, None)), v, k, params=(l, lm, hess), keys=ks)
    return {"vmap_of_single_solver": count(vmapped, v0, lin, lam, keys),
            "batched_solver": count(batched, v0, lin, lam, keys), "basis_elements": threshold}


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            inner = getattr(item, "jaxpr", None)
            if inner is not None:
                yield inner if hasattr(inner, "eqns") else inner.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def sweep_summary(**settings) -> dict:
    from hessjax.sweep import SweepConfig, run

    with tempfile.TemporaryDirectory(prefix="hessjax-proxy-") as out:
        t0 = time.perf_counter()
        summary = run(SweepConfig(out=out, quiet=True, **settings))
        return summary | {"wall_s": time.perf_counter() - t0}


def blocked_fraction(summary: dict, overlap: bool) -> dict:
    """(a) from a sweep's summary, the first batch (compilation) left out: the seconds the host kept the
    device idle — the whole write of each batch when writes are synchronous (the device has finished
    and the next batch is not dispatched), the waits for the writer thread when they are overlapped —
    over the batches' wall time (dispatch to dispatch)."""
    rows = summary["blocked"][1:] or summary["blocked"]
    writes = summary["batches"][1:] or summary["batches"]
    blocked = float(sum(r["blocked_s"] for r in rows)) if overlap else float(sum(b["write_s"] for b in writes))
    wall = float(sum(r["wall_s"] for r in rows))
    return {"batches": len(rows), "blocked_s": blocked, "wall_s": wall, "fraction": blocked / wall if wall else None}


def product_ratio(summary: dict) -> dict:
    """(c): executed ÷ needed over every batch, on one device: every member records the products its
    device's batch executed (``batch_matvecs``; the sum of the members' own with member products,
    every member at every step of the batch in lockstep) and its own (``own_matvecs``)."""
    executed = sum(max(b["batch_matvecs"]) for b in summary["batches"])
    needed = sum(sum(b["own_matvecs"]) for b in summary["batches"])
    return {"executed": int(executed), "needed": int(needed), "ratio": executed / needed if needed else None}
