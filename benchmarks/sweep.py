"""λ values per hour: the hessjax sweep at λ-batch sizes 1, 2, 4, 8 against the torch pipeline.

    python benchmarks/sweep.py --json sweep.json

Both pipelines run end to end with the same settings on a data subset: the shipped anchor, seed
0, random init, Adam (lr 0.0015, batch 128) for ``--epochs`` epochs (patience 5, so every λ trains
the full ``--epochs``), the top ``--k`` Hessian eigenpairs over all ``--train-samples`` training
samples, the metrics over ``--test-samples`` test samples, and every result file written
(eigenvectors as CSV, the default of both). hessjax: ``hessjax.sweep.run(SweepConfig(...,
lambda_batch=B))`` (``jit(vmap)`` over B λ at once, Lanczos tol 1e-5 over the linearized HVP);
torch: ``hessjax.bridges.torch_pipeline.run`` (λ by λ, Adam in eager torch, ``eigsh`` over
``TorchHVP``; its own default ARPACK ``tol=0``, machine precision).

Each configuration runs in its own process: one warm-up run of one batch (compilation, kept in
hessjax's persistent JAX cache, ``$HESSJAX_CACHE_DIR``; ``--fresh-cache`` for an empty one), then
``--repeats`` interleaved timed runs over the whole grid. A hessjax run includes tracing and
loading the compiled programs from that cache (what a resumed sweep pays), not compiling them. On
CPU the torch pipeline also runs single-threaded (``torch_1thread``): on a shared 2-core machine
its default 2-thread OpenMP pool can be many times slower than one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def worker(args) -> None:
    settings = dict(train_samples=args.train_samples, test_samples=args.test_samples, k=args.k,
                    max_epochs=args.epochs, seed=0)
    if args.worker in ("torch", "torch1"):
        if args.worker == "torch1":
            import torch

            torch.set_num_threads(1)
        from hessjax.bridges.torch_pipeline import run as torch_run
        from hessjax.anchors import default_anchor_path

        def once(lambdas, out):
            torch_run(str(default_anchor_path()), out, lambdas=lambdas, quiet=True, **settings)
    else:
        import jax

        if args.device == "cpu":
            jax.config.update("jax_platforms", "cpu")
        from hessjax.sweep import SweepConfig, run

        batch = int(args.worker)

        def once(lambdas, out):
            summary = run(SweepConfig(out=out, lambdas=lambdas, lambda_batch=batch, quiet=True, overwrite=True,
                                      **settings))
            return summary

    def run_grid(lambdas, out):
        t0 = time.perf_counter()
        summary = once(lambdas, out)
        seconds = time.perf_counter() - t0
        extra = {"compilations": summary.get("compilations")} if isinstance(summary, dict) else {}
        return {"seconds": [seconds], **extra}

    import shutil

    def timed_run(lambdas):
        out = tempfile.mkdtemp(prefix="hessjax-bench-sweep-")
        try:
            return run_grid(lambdas, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    C.serve({"run": timed_run, "info": lambda: C.machine()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--lambdas", default="0:0.07:8", help="the grid (START:STOP:NUM or a comma list)")
    p.add_argument("--batches", default="1,2,4,8", help="hessjax λ-batch sizes")
    p.add_argument("--train-samples", type=int, default=2048)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--torch-lambdas", type=int, default=None,
                   help="the torch pipeline runs only the first N λ of the grid (default: all); λ/hour counts them")
    p.add_argument("--no-torch", action="store_true", help="hessjax only")
    p.add_argument("--no-single-thread", action="store_true",
                   help="skip the single-thread torch pipeline (run on CPU by default)")
    p.add_argument("--no-torch-warmup", action="store_true",
                   help="time the torch pipeline's first run (it compiles nothing; saves time on a GPU machine)")
    p.add_argument("--fresh-cache", action="store_true",
                   help="compile into an empty JAX cache (default: hessjax's persistent cache, so a rerun's "
                        "warm-up does not recompile)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--proxies", action="store_true",
                   help="measure the accelerator proxies (a)–(d) of benchmarks/_proxies.py instead")
    p.add_argument("--proxy-variants", default=",".join(PROXY_VARIANTS),
                   help="with --proxies: which (b)/(c) runs, of " + ", ".join(PROXY_VARIANTS) + " (λ-batch 1 or 8; "
                        "lockstep products; cold starts for both batch sizes)")
    p.add_argument("--proxy-samples", type=int, default=60_000,
                   help="training samples of the host-blocked measurement (a) (the README's main settings: 60,000)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.proxies:
        return proxies(args)

    from hessjax.results import parse_lambdas

    lams = [float(v) for v in parse_lambdas(args.lambdas)]
    batches = [int(b) for b in args.batches.split(",")]
    common = ["--train-samples", str(args.train_samples), "--test-samples", str(args.test_samples), "--k",
              str(args.k), "--epochs", str(args.epochs), "--device", args.device]
    cache = tempfile.TemporaryDirectory(prefix="hessjax-bench-xla-") if args.fresh_cache else None
    env = {"HESSJAX_CACHE_DIR": cache.name} if cache else {}
    torch_configs = [] if args.no_torch else ["torch"] + (["torch_1thread"] if args.device != "gpu" and
                                                          not args.no_single_thread else [])
    configs = [f"hessjax_b{b}" for b in batches] + torch_configs
    print(f"sweep of {len(lams)} λ ({args.lambdas}), {args.train_samples} train / {args.test_samples} test samples, "
          f"k={args.k}, {args.epochs} epochs; configurations {configs}; load {C.load()}", flush=True)
    workers = {}
    try:
        for name in configs:
            arg = {"torch": "torch", "torch_1thread": "torch1"}.get(name) or name.removeprefix("hessjax_b")
            workers[name] = C.Worker([__file__, "--worker", arg, *common],
                                     env=env | (ONE_THREAD if name == "torch_1thread" else {}), name=name)
            b = 1 if name.startswith("torch") else int(arg)
            if name.startswith("torch") and args.no_torch_warmup:
                continue
            warm = ",".join(repr(v) for v in lams[:b])
            t = workers[name].call(op="run", lambdas=warm)["seconds"][0]
            print(f"{name:12s} warm-up ({b} λ, compiles): {t:.1f} s", flush=True)
        n_torch = min(args.torch_lambdas or len(lams), len(lams))
        count = {name: n_torch if name.startswith("torch") else len(lams) for name in configs}
        jobs = {name: (workers[name], {"op": "run", "lambdas": ",".join(repr(v) for v in lams[:count[name]])})
                for name in configs}
        load_before = C.load()
        times = C.interleaved_workers(jobs, args.repeats, warmup=0)
        load_after = C.load()
        info = {name: w.call(op="info") for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
        if cache:
            cache.cleanup()

    per_hour = {name: C.stats(3600.0 * count[name] / np.asarray(times[name]["samples"])) for name in configs}
    result = {
        "lambdas": lams, "train_samples": args.train_samples, "test_samples": args.test_samples, "k": args.k,
        "epochs": args.epochs, "repeats": args.repeats, "lambdas_run": count,
        "seconds": times, "lambdas_per_hour": per_hour,
        "lambdas_per_hour_median": {n: per_hour[n]["median"] for n in configs},
        "speedup_vs_torch": ({n: per_hour[n]["median"] / per_hour["torch"]["median"] for n in configs}
                             if "torch" in per_hour else None),
        "speedup_vs_best_torch": ({n: per_hour[n]["median"] / max(per_hour[t]["median"] for t in torch_configs)
                                   for n in configs} if torch_configs else None),
        "thread_settings": {"hessjax": "XLA:CPU default (all cores)", "torch": "torch default (all cores)",
                            "torch_1thread": "torch.set_num_threads(1), OMP/MKL/OPENBLAS_NUM_THREADS=1"},
        "load_before_after": [load_before, load_after],
        "machine": info[configs[0]] | {"timing": "each configuration in its own process, one warm-up batch, then "
                                                 "interleaved timed runs of the whole grid, files written"},
    }
    print(f"\n{'configuration':14s} {'λ':>3s} {'seconds per grid [min–max]':>30s} {'λ/hour':>8s} {'vs torch':>9s} "
          f"{'vs best torch':>13s}")
    for n in configs:
        vs = f"{result['speedup_vs_torch'][n]:8.2f}×" if result["speedup_vs_torch"] else ""
        vb = f"{result['speedup_vs_best_torch'][n]:12.2f}×" if result["speedup_vs_best_torch"] else ""
        print(f"{n:14s} {count[n]:3d} {C.fmt(times[n]):>30s} {per_hour[n]['median']:8.0f} {vs:>9s} {vb:>13s}")
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, jax {m['versions']['jax']}, torch "
          f"{m['versions']['torch']}; load average before/after timing: {load_before} / {load_after}")
    C.write_json(args.json, result)
    return 0


PROXY_VARIANTS = {  # name: (λ-batch, settings) of the (b) and (c) runs
    "b1": (1, {}), "b8-lockstep": (8, {"member_products": False}), "b8": (8, {}),
    "b1-cold": (1, {"cold_start": True}), "b8-cold": (8, {"cold_start": True})}


def proxies(args) -> int:
    """(a)–(d) of benchmarks/_proxies.py: before (synchronous writes; vmap of the single-member solver)
    and now, printed as one table and written to --json after each proxy (complete: true at the end)."""
    import _proxies as X
    import jax

    asked = args.proxy_variants.split(",")
    unknown = sorted(set(asked) - set(PROXY_VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown --proxy-variants {', '.join(unknown)} (known: {', '.join(PROXY_VARIANTS)})")
    small = dict(lambdas="0:0.07:8", train_samples=2048, test_samples=2000, k=16, max_epochs=2, seed=0)
    main_settings = dict(lambdas="0:0.1:6", train_samples=args.proxy_samples, k=30, lambda_batch=4, seed=0)
    result = {"complete": False, "settings": {"b_c": small, "a": main_settings}, "machine": C.machine()}

    def save(**parts):  # after each proxy, so that a run cut short (gpu.sh's time limit) keeps what it measured
        stats = jax.devices()[0].memory_stats() or {}  # None on CPU
        result.update(parts, peak_device_bytes=stats.get("peak_bytes_in_use"))
        C.write_json(args.json, result)

    print(f"accelerator proxies on {C.cpu_model()}, load {C.load()}", flush=True)
    d = X.basis_selects()
    print(f"(d) basis-sized select_n in the batched eigensolver: vmap of one solver {d['vmap_of_single_solver']}, "
          f"batched solver {d['batched_solver']}", flush=True)
    save(d_basis_selects=d)
    blocked = {}
    for overlap in (False, True):
        summary = X.sweep_summary(**main_settings, overlap_writes=overlap)
        blocked[overlap] = X.blocked_fraction(summary, overlap)
        print(f"    writes {'overlapped' if overlap else 'synchronous'}: {blocked[overlap]['blocked_s']:.1f} s "
              f"blocked of {blocked[overlap]['wall_s']:.1f} s", flush=True)
    print(f"(a) host-blocked fraction, λ-batch 4, {args.proxy_samples} samples: synchronous writes "
          f"{blocked[False]['fraction']:.3f}, overlapped {blocked[True]['fraction']:.3f}", flush=True)
    save(a_blocked={"synchronous": blocked[False], "overlapped": blocked[True]})
    per_lambda, products = {}, {}
    for name, (batch, extra) in PROXY_VARIANTS.items():
        if name not in asked:
            continue
        X.sweep_summary(**small, **extra, lambda_batch=batch)  # warm-up: compile (kept in the persistent cache)
        summary = X.sweep_summary(**small, **extra, lambda_batch=batch)
        per_lambda[name] = summary["wall_s"] / 8
        products[name] = X.product_ratio(summary)
        print(f"    {name}: {per_lambda[name]:.2f} s per λ, products executed ÷ needed "
              f"{products[name]['executed']} / {products[name]['needed']} = {products[name]['ratio']:.3f}", flush=True)
        save(b_per_lambda_s=per_lambda, c_products=products)
    ratio = lambda a, b: per_lambda[a] / per_lambda[b] if a in per_lambda and b in per_lambda else None  # noqa: E731
    b, b_lockstep, b_cold = ratio("b8", "b1"), ratio("b8-lockstep", "b1"), ratio("b8-cold", "b1-cold")
    show = lambda x, f=".2f": "—" if x is None else format(x, f)  # noqa: E731
    print(f"(b) per-λ wall time, batch 8 ÷ batch 1: lockstep {show(b_lockstep)}, member products {show(b)} "
          f"(both with cold starts: {show(b_cold)})", flush=True)
    print(f"(c) products executed ÷ needed at batch 8: lockstep "
          f"{show(products.get('b8-lockstep', {}).get('ratio'), '.3f')}, member products "
          f"{show(products.get('b8', {}).get('ratio'), '.3f')}", flush=True)
    save(b_ratio=b, b_ratio_lockstep=b_lockstep, b_ratio_cold_starts=b_cold, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
