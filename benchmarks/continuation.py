"""Continuation across λ: warm-started eigensolves against cold ones, on the same trained weights.

Step 1 runs the sweep as a user does (``python -m hessjax.sweep``, continuation on by default) over
consecutive λ of the default grid into ``OUT`` (skipped for λ already finished there). Step 2 takes
each λ's written weights and, side by side, solves the top k of its data Hessian

* **cold**: from λ's own random vector (what ``--cold-start`` does), and
* **warm**: from the eigenvectors of its predecessor in the grid, read from the store (what the
  sweep does inside a continuation segment; at a segment's first λ the sweep itself starts cold —
  the benchmark prints how closely it reproduces the sweep's eigenvalues, which came from the
  sweep's own batched program),

both with the completeness probe included, and prints per λ the products, the seconds of each
solve, the largest ``|μ_warm − μ_cold| / |μ₁|``, how far the weights moved from the predecessor
(``‖Δθ‖``) and the sine of the largest angle between the two λ's top-k subspaces.

    python benchmarks/continuation.py --out bench-continuation [--lambdas 0:0.004:21] [--json out.json]

About 1 minute per λ at 60,000 samples on a 2-core CPU (training ~35 s, two solves of 60–100 products).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine  # noqa: E402


def run_sweep(args) -> None:
    cmd = [sys.executable, "-m", "hessjax.sweep", "--lambdas", args.lambdas, "--out", str(args.out), "--id", args.id,
           "--k", str(args.k), "--quiet", "--eigenvectors", "none"]
    if args.train_samples:
        cmd += ["--train-samples", str(args.train_samples)]
    print("step 1:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"  sweep done in {time.perf_counter() - t0:.0f} s", flush=True)


def solver(manifest: dict, k: int):
    """A jitted ``solve(flat_weights, key, warm, use_warm) -> EigResult`` at the sweep's settings."""
    import functools

    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from hessjax import load_mnist
    from hessjax.anchors import default_anchor_path
    from hessjax.bridges import load_anchor
    from hessjax.hvp import chunk_data
    from hessjax.linearized import linearize_hessian, linearized_flat_hessian_matvec
    from hessjax.lanczos import top_k_eigenpairs

    cfg = manifest["config"]
    anchor = load_anchor(cfg.get("anchor") or default_anchor_path())
    data = load_mnist(cfg.get("data_dir"), train_samples=cfg.get("train_samples"), test_samples=1)
    n_hess = cfg.get("hessian_samples") or data.x_train.shape[0]
    hess = chunk_data(jnp.asarray(data.x_train[:n_hess], jnp.float32), jnp.asarray(data.y_train[:n_hess]),
                      cfg["chunk_size"])
    _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), anchor.params))
    precision = jax.lax.Precision.HIGHEST
    matvec = functools.partial(linearized_flat_hessian_matvec, precision=precision)

    @functools.partial(jax.jit, static_argnames=("warm",))
    def solve(flat, key, warm_vectors, warm):
        lin = linearize_hessian(unravel(flat), hess, precision=precision)
        k_start, k_restart, _ = jax.random.split(key, 3)
        v0 = jax.random.normal(k_start, flat.shape, flat.dtype)
        return top_k_eigenpairs(matvec, v0, k, cfg["lanczos_iters"], params=(lin, jnp.float32(0), hess),
                                tol=cfg["tol"], max_restarts=cfg["max_restarts"], key=k_restart, precision=precision,
                                multiplicity_check=cfg["multiplicity_check"],
                                warm_start=warm_vectors if warm else None)
    return solve


def timed(fn, *args, **kw):
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kw))
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="sweep output directory (reused if it holds the λ)")
    p.add_argument("--lambdas", default="0:0.004:21", help="consecutive λ of the default grid (0.0002 apart)")
    p.add_argument("--id", default="continuation")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--train-samples", type=int, default=None, help="default: all 60,000")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import jax

    from hessjax import results
    from hessjax.engine import lambda_keys

    run_sweep(args)
    manifest = results.read_manifest(args.out, args.id)
    records = results.finished_lambdas(args.out, args.id)
    store = results.SweepStore(results.store_path(args.out, args.id))
    lams = sorted(v for v in results.parse_lambdas(args.lambdas) if v in records)
    solve = solver(manifest, args.k)
    seed = manifest["config"]["seed"]
    zeros = np.zeros((args.k, store.row("weights", lams[0]).size), np.float32)
    print(f"step 2: cold and warm solves of the top {args.k} at each λ (compiling first)", flush=True)
    flat0 = store.row("weights", lams[0])
    key0 = lambda_keys(seed, [lams[0]])[0]
    for warm in (False, True):  # compile both outside the timings
        timed(solve, flat0, key0, zeros, warm=warm)
    rows = []
    head = (f"{'λ':>8} {'cold':>5} {'warm':>5} {'cold s':>7} {'warm s':>7} {'|Δμ|/|μ₁|':>10} {'‖Δθ‖':>8} "
            f"{'sin∠':>8}  warm kept")
    print(head, flush=True)
    previous = None
    for lam in lams:
        rec = records[lam]
        flat = store.row("weights", lam)
        key = lambda_keys(seed, [lam])[0]
        cold, t_cold = timed(solve, flat, key, zeros, warm=False)
        row = {"lambda": lam, "cold_matvecs": int(cold.num_matvecs), "cold_s": t_cold,
               "cold_converged": bool(np.all(cold.converged)), "mu1": float(cold.eigenvalues[0])}
        if previous is not None:
            w = store.eigenvectors(previous)
            warm, t_warm = timed(solve, flat, key, w, warm=True)
            mu_w, mu_c = np.asarray(warm.eigenvalues, np.float64), np.asarray(cold.eigenvalues, np.float64)
            sub = np.linalg.svd(np.asarray(w, np.float64) @ np.asarray(store.eigenvectors(lam), np.float64).T,
                                compute_uv=False)
            row.update(warm_matvecs=int(warm.num_matvecs), warm_s=t_warm, warm_kept=bool(warm.warm),
                       warm_converged=bool(np.all(warm.converged)),
                       max_diff_over_mu1=float(np.max(np.abs(mu_w - mu_c)) / abs(mu_c[0])),
                       weights_moved=float(np.linalg.norm(flat.astype(np.float64)
                                                          - store.row("weights", previous).astype(np.float64))),
                       sin_subspace=float(np.sqrt(max(0.0, 1 - np.min(sub) ** 2))),
                       sweep_diff_over_mu1=float(np.max(np.abs(mu_w - np.asarray(rec["data_eigenvalues"])))
                                                 / abs(mu_c[0])),
                       sweep_matvecs=int(rec["extra"]["lanczos_matvecs"]))
            print(f"{lam:8.4f} {row['cold_matvecs']:5d} {row['warm_matvecs']:5d} {t_cold:7.1f} {t_warm:7.1f} "
                  f"{row['max_diff_over_mu1']:10.1e} {row['weights_moved']:8.2e} {row['sin_subspace']:8.1e}  "
                  f"{row['warm_kept']}", flush=True)
        else:
            print(f"{lam:8.4f} {row['cold_matvecs']:5d} {'—':>5} {t_cold:7.1f} {'—':>7}  (first λ: no neighbour)",
                  flush=True)
        rows.append(row)
        previous = lam
    warm_rows = [r for r in rows if "warm_matvecs" in r]
    summary = {"machine": machine(), "lambdas": lams, "rows": rows}
    if warm_rows:
        def mean(key, sel=warm_rows):
            return float(np.mean([r[key] for r in sel])) if sel else float("nan")
        summary.update(mean_cold_matvecs=mean("cold_matvecs"), mean_warm_matvecs=mean("warm_matvecs"),
                       mean_cold_s=mean("cold_s"), mean_warm_s=mean("warm_s"),
                       max_diff_over_mu1=max(r["max_diff_over_mu1"] for r in warm_rows),
                       warm_never_more=all(r["warm_matvecs"] <= r["cold_matvecs"] for r in warm_rows),
                       sweep_diff_over_mu1=max(r["sweep_diff_over_mu1"] for r in warm_rows))
        print(f"\nmean products per λ: cold {summary['mean_cold_matvecs']:.1f}, warm {summary['mean_warm_matvecs']:.1f}"
              f" (completeness probe included in both); seconds per solve: cold {summary['mean_cold_s']:.1f}, "
              f"warm {summary['mean_warm_s']:.1f}")
        print(f"largest |μ_warm − μ_cold|/|μ₁|: {summary['max_diff_over_mu1']:.1e}; warm ≤ cold at every λ: "
              f"{summary['warm_never_more']}; the sweep's own warm eigenvalues (its batched program) reproduced to "
              f"{summary['sweep_diff_over_mu1']:.1e}·|μ₁|")
    print(f"machine: {summary['machine'].get('cpu')}, {summary['machine'].get('logical_cpus')} logical CPUs; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
