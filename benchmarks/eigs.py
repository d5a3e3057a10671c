"""Top-k Hessian eigenpairs of the real model: hessjax's Lanczos against scipy/ARPACK over torch,
PyHessian and matfree, side by side, each checked against a float64 reference.

    python benchmarks/eigs.py --samples 2048 --k 30 --json eigs.json
    python benchmarks/eigs.py --samples 60000 --k 30 --repeats 1 --warmup 0 \\
        --methods hessjax,scipy_default,scipy_blas1 --json eigs60k.json

The operator is ``∇²L_eff`` of the 784-128-128-10 MLP at the shipped anchor (``θ = θ_ref``, λ =
``--lam``, default 0: the penalty only shifts every eigenvalue by ``2λ``) over the first
``--samples`` MNIST training samples, float32. Methods (``--methods``), each in its own process:

* ``hessjax``        — ``jit`` of what a sweep's ``analyze`` does: ``linearize_hessian`` once, then
                       ``top_k_eigenpairs`` (default settings: m = max(2k+20, 4k), tol 1e-5,
                       30 restarts, the multiplicity check on) over ``linearized_flat_hessian_matvec``;
* ``hessjax_nomc``   — the same with ``multiplicity_check=False`` (``--no-multiplicity-check``): no
                       completeness probe, the guarantee ARPACK gives;
* ``hessjax_fwdrev`` — the same solver over ``flat_hessian_matvec`` (forward-over-reverse per step);
* ``scipy_default``  — ``hessjax.bridges.top_k_eigsh`` (``eigsh(which='LA', tol=0)``) over
                       ``TorchHVP.numpy_matvec``, as ``hessjax.bridges.torch_pipeline`` runs it, with
                       default threads (torch: all cores; OpenBLAS under ARPACK: all cores);
* ``scipy_blas1``    — the same with ``OPENBLAS_NUM_THREADS=1`` (ARPACK's BLAS serial, torch default);
* ``scipy_1thread``  — the same with ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` and ``torch.set_num_threads(1)``;
* ``scipy_double_backward`` — the same eigsh over ``hessjax.bridges.hvp_torch`` (double backward, the
                       graph rebuilt per product), default threads;
* ``pyhessian``      — ``pyhessian.hessian(model, CrossEntropyLoss(), data=(x, y), cuda=False)
                       .eigenvalues(top_n=k)`` with its defaults (power iteration with deflation,
                       maxIter=100, tol=1e-3); its HVPs are counted by wrapping its product function;
* ``matfree``        — ``matfree.eig.eigh_partial(matfree.decomp.tridiag_sym(m))``: one Lanczos pass
                       of ``m`` = hessjax's default basis size with full reorthogonalisation (no
                       restarts), over the same linearized matvec; the top ``k`` Ritz pairs.

Reference: ``top_k_eigenpairs`` in float64 (float64 weights and data, linearized matvec) to
``tol=1e-10``, cached in ``--cache-dir``. Every method's eigenvalues are compared with it (max
relative error) and its eigenvectors' residuals ``‖H u − λ u‖/|λ₁|`` are computed with the float64
operator. Timing: one warm-up solve per method (for hessjax: compilation), then ``--repeats``
interleaved rounds; times exclude compilation and include everything else of a solve (hessjax:
the linearization; scipy: building the torch gradient graph and the ``k`` residual matvecs
``top_k_eigsh`` does).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ALL_METHODS = ("hessjax", "hessjax_nomc", "hessjax_fwdrev", "scipy_default", "scipy_blas1", "scipy_1thread",
               "scipy_double_backward", "pyhessian", "matfree")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
ENV = {"scipy_blas1": {"OPENBLAS_NUM_THREADS": "1"}, "scipy_1thread": ONE_THREAD}
THREADS = {
    "hessjax": "XLA:CPU default (all cores)", "hessjax_nomc": "XLA:CPU default (all cores)",
    "hessjax_fwdrev": "XLA:CPU default (all cores)",
    "matfree": "XLA:CPU default (all cores)",
    "scipy_default": "torch default (all cores); OpenBLAS default (all cores)",
    "scipy_blas1": "torch default (all cores); OPENBLAS_NUM_THREADS=1",
    "scipy_1thread": "torch.set_num_threads(1), OMP/MKL/OPENBLAS_NUM_THREADS=1",
    "scipy_double_backward": "torch default (all cores); OpenBLAS default (all cores)",
    "pyhessian": "torch default (all cores)",
}


# ------------------------------------------------------------------------------------------ workers


class _DoubleBackward:
    """``v ↦ hessjax.bridges.hvp_torch(...)``: the graph rebuilt for every product (counted)."""

    def __init__(self, model, anchor, lam, x, y):
        self.args = (model, anchor, lam, x, y)
        self.num_matvecs = 0

    def __call__(self, v):
        from hessjax.bridges.torch_ref import hvp_torch

        self.num_matvecs += 1
        return hvp_torch(*self.args, v)


def _jax(device: str, x64: bool = False):
    import jax

    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    if x64:
        jax.config.update("jax_enable_x64", True)
    return jax


def worker(args) -> None:
    """One method (or the float64 reference) in this process."""
    params_np, x_np, y_np = C.read_problem(args.problem)
    method, k, lam = args.worker, args.k, args.lam
    handlers = {"info": lambda: C.machine()}
    if method in ("hessjax", "hessjax_nomc", "hessjax_fwdrev", "matfree", "reference"):
        jax = _jax(args.device, x64=method == "reference")
        import jax.numpy as jnp
        from jax.flatten_util import ravel_pytree

        import hessjax
        from hessjax.hvp import chunk_data, flat_hessian_matvec
        from hessjax.linearized import linearize_hessian, linearized_flat_hessian_matvec

        dtype = jnp.float64 if method == "reference" else jnp.float32
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params_np)
        chunks = chunk_data(jnp.asarray(x_np, dtype), jnp.asarray(y_np, jnp.int32), args.chunk_size)
        lam_j = jnp.asarray(lam, dtype)
        flat, unravel = ravel_pytree(params)
        v0 = jax.random.normal(jax.random.key(args.seed), flat.shape, dtype)
        m_default = hessjax.lanczos.default_num_iters(k, flat.size)

        if method in ("hessjax", "hessjax_nomc", "reference"):
            tol, restarts = (1e-10, 200) if method == "reference" else (1e-5, hessjax.lanczos.DEFAULT_MAX_RESTARTS)
            check = method != "hessjax_nomc"

            def solve(params, lam, chunks, v0):
                lin = linearize_hessian(params, chunks)
                return hessjax.top_k_eigenpairs(linearized_flat_hessian_matvec, v0, k, params=(lin, lam, chunks),
                                                tol=tol, max_restarts=restarts, multiplicity_check=check)
        elif method == "hessjax_fwdrev":
            def solve(params, lam, chunks, v0):
                return hessjax.top_k_eigenpairs(flat_hessian_matvec, v0, k, params=(params, params, lam, chunks))
        else:
            from matfree import decomp, eig

            eigh = eig.eigh_partial(decomp.tridiag_sym(m_default, reortho="full"))

            def solve(params, lam, chunks, v0):
                lin = linearize_hessian(params, chunks)
                vals, vecs = eigh(linearized_flat_hessian_matvec, v0, lin, lam, chunks)
                order = jnp.argsort(vals)[::-1][:k]
                return vals[order], vecs[order], jnp.int32(m_default)

        compiled = {}

        def prepare():
            t0 = time.perf_counter()
            compiled["f"] = jax.jit(solve).lower(params, lam_j, chunks, v0).compile()
            return {"compile_seconds": time.perf_counter() - t0}

        def run(path=None):
            t0 = time.perf_counter()
            res = jax.block_until_ready(compiled["f"](params, lam_j, chunks, v0))
            seconds = time.perf_counter() - t0
            if method == "matfree":
                vals, vecs, hvps = res
                extra = {"hvps": int(hvps), "lanczos_steps": m_default}
            else:
                vals, vecs, hvps = res.eigenvalues, res.eigenvectors, res.num_matvecs
                extra = {"hvps": int(hvps), "restarts": int(res.num_restarts), "basis_size": m_default,
                         "own_max_residual_rel": float(jnp.max(res.residuals) / jnp.abs(res.eigenvalues[0])),
                         "converged": int(jnp.sum(res.converged))}
            if path:
                np.savez(path, vals=np.asarray(vals, np.float64), vecs=np.asarray(vecs))  # working dtype
            return {"seconds": [seconds], **extra}

        handlers.update(prepare=prepare, run=run)
        if method == "reference":
            matvec = jax.jit(jax.vmap(linearized_flat_hessian_matvec, in_axes=(0, None, None, None)))
            lin = jax.jit(linearize_hessian)(params, chunks)

            def evaluate(path, ref_path):
                """Eigenvalue errors against the reference and float64 residuals of a method's pairs."""
                with np.load(path) as z:
                    vals, vecs = z["vals"], z["vecs"].astype(np.float64)
                with np.load(ref_path) as z:
                    ref = z["vals"]
                vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
                hv = np.asarray(matvec(jnp.asarray(vecs), lin, lam_j, chunks))
                resid = np.linalg.norm(hv - vals[:, None] * vecs, axis=1)
                n = min(len(vals), len(ref))
                rel = np.abs(np.sort(vals)[::-1][:n] - ref[:n]) / np.abs(ref[:n])
                return {"max_rel_error": float(rel.max()), "rel_errors": rel.tolist(),
                        "max_residual_rel": float(resid.max() / abs(ref[0])), "residuals": resid.tolist(),
                        "within_1e-4": int(np.sum(rel <= 1e-4)), "eigenvalues": np.sort(vals)[::-1].tolist()}

            handlers["evaluate"] = evaluate
    else:
        import torch

        if method == "scipy_1thread":
            torch.set_num_threads(1)
        from hessjax.bridges.torch_ref import TorchHVP, TorchMLP, top_k_eigsh

        device = "cuda" if args.device == "gpu" else "cpu"
        model = TorchMLP.from_params(params_np).to(device)
        anchor = [t.detach().clone() for t in model.parameters()]
        x = torch.from_numpy(x_np).to(device)
        y = torch.from_numpy(y_np).to(device)
        n_params = sum(p.numel() for p in model.parameters())

        def prepare():
            return {"compile_seconds": 0.0}

        if method.startswith("scipy"):
            def run(path=None):
                t0 = time.perf_counter()
                if method == "scipy_double_backward":
                    op = _DoubleBackward(model, anchor, lam, x, y)
                else:
                    op = TorchHVP(model, anchor, lam, x, y)
                if device == "cpu" and method != "scipy_double_backward":
                    matvec = op.numpy_matvec  # what hessjax.bridges.torch_pipeline passes
                else:  # the same product, with the vector moved to the device and back
                    matvec = lambda v: op(torch.as_tensor(np.asarray(v, np.float32), device=device)).cpu(  # noqa: E731
                    ).numpy().astype(np.float64)
                res = top_k_eigsh(matvec, n_params, k, tol=0.0)
                seconds = time.perf_counter() - t0
                if path:
                    np.savez(path, vals=res.eigenvalues, vecs=res.eigenvectors.astype(np.float32))
                return {"seconds": [seconds], "hvps": op.num_matvecs, "eigsh_matvecs": res.num_matvecs}
        else:  # pyhessian
            import importlib

            ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class)

            count = [0]
            original = ph.hessian_vector_product

            def counted(*a, **kw):
                count[0] += 1
                return original(*a, **kw)

            ph.hessian_vector_product = counted
            criterion = torch.nn.CrossEntropyLoss()

            def run(path=None):
                count[0] = 0
                torch.manual_seed(args.seed)
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                h = ph.hessian(model, criterion, data=(x, y), cuda=device == "cuda")
                vals, vecs = h.eigenvalues(top_n=k)
                seconds = time.perf_counter() - t0
                vals = np.asarray(vals, np.float64) + 2 * lam  # PyHessian's loss has no penalty: add its 2λI
                if path:
                    flat = np.stack([torch.cat([t.detach().reshape(-1) for t in v]).cpu().numpy() for v in vecs])
                    np.savez(path, vals=vals, vecs=flat.astype(np.float32))
                model.zero_grad(set_to_none=True)
                return {"seconds": [seconds], "hvps": count[0]}

        handlers.update(prepare=prepare, run=run)
    C.serve(handlers)


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--methods", default=None,
                   help=f"comma list of {','.join(ALL_METHODS)} (default: all; pyhessian and hessjax_fwdrev only "
                        "up to 10,000 samples)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds after the first solve; 0: the first solve (after compiling) is the sample")
    p.add_argument("--warmup", type=int, default=1, help="untimed solves per method before the rounds")
    p.add_argument("--pyhessian-repeats", type=int, default=1,
                   help="PyHessian is slow (hundreds of power iterations): by default its one solve (the "
                        "accuracy check, no warm-up: torch compiles nothing) is its timing sample")
    p.add_argument("--lam", type=float, default=0.0)
    p.add_argument("--chunk-size", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="start vector of the JAX solvers")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "hessjax-bench-cache"),
                   help="where the float64 reference is kept between runs")
    C.add_worker_arguments(p)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(methods) - set(ALL_METHODS))
        if unknown:
            p.error(f"unknown methods {unknown}; choose from {ALL_METHODS}")
    else:
        methods = [m for m in ALL_METHODS
                   if args.samples <= 10_000 or m not in ("pyhessian", "hessjax_fwdrev")]
    methods = C.installed_peers(methods)
    device = C.resolve_device(args.device)

    tmp = tempfile.TemporaryDirectory(prefix="hessjax-bench-")
    tmpdir = Path(tmp.name)
    npz = C.problem_npz(args.samples, tmpdir / "problem.npz")
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()[:16]
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    ref_path = cache / f"eigs_ref_{args.samples}_{args.k}_{args.lam:g}_{args.chunk_size}_{digest}.npz"
    print(f"top-{args.k} eigenpairs of ∇²L_eff, N={args.samples}, λ={args.lam}, float32, device {device}; "
          f"methods {methods}; load {C.load()}", flush=True)
    common = ["--problem", str(npz), "--k", str(args.k), "--lam", str(args.lam), "--chunk-size",
              str(args.chunk_size), "--seed", str(args.seed), "--device", device]

    ref_worker = C.Worker([__file__, "--worker", "reference", *common], name="reference")
    workers = {}
    try:
        ref_info = {}
        if not ref_path.exists():
            ref_worker.call(op="prepare")
            t0 = time.perf_counter()
            r = ref_worker.call(op="run", path=str(ref_path))
            ref_info = {"seconds": time.perf_counter() - t0, "hvps": r["hvps"], "restarts": r["restarts"],
                        "own_max_residual_rel": r["own_max_residual_rel"], "converged": r["converged"]}
            print(f"float64 reference: {ref_info}", flush=True)
        else:
            print(f"float64 reference from {ref_path}")
        ref_eval = ref_worker.call(op="evaluate", path=str(ref_path), ref_path=str(ref_path))
        ref_info["max_residual_rel"] = ref_eval["max_residual_rel"]
        ref_info["eigenvalues"] = ref_eval["eigenvalues"]
        print(f"float64 reference: λ₁ = {ref_eval['eigenvalues'][0]:.6g}, λ_{args.k} = "
              f"{ref_eval['eigenvalues'][-1]:.6g}, max residual {ref_eval['max_residual_rel']:.1e}·|λ₁|", flush=True)

        details = {}
        for m in methods:
            workers[m] = C.Worker([__file__, "--worker", m, *common], env=ENV.get(m), name=m)
            prep = workers[m].call(op="prepare")
            out = tmpdir / f"{m}.npz"
            first = workers[m].call(op="run", path=str(out))  # warm-up solve, also the accuracy check
            acc = ref_worker.call(op="evaluate", path=str(out), ref_path=str(ref_path))
            details[m] = {"threads": THREADS[m], "env": ENV.get(m, {}), "compile_seconds": prep["compile_seconds"],
                          "first_seconds": first["seconds"][0], **{k: v for k, v in first.items() if k != "seconds"},
                          **acc}
            print(f"{m:22s} first solve {first['seconds'][0]:8.2f} s, {first['hvps']} HVPs, max rel error "
                  f"{acc['max_rel_error']:.1e}, max residual {acc['max_residual_rel']:.1e}·|λ₁|, "
                  f"{acc['within_1e-4']}/{args.k} within 1e-4", flush=True)
        single = {"pyhessian"} & set(methods) if args.pyhessian_repeats <= 1 else set()
        if args.repeats == 0:  # the first solve (after compilation) is the one timing sample of every method
            single = set(methods)
        jobs = {m: (workers[m], {"op": "run"}) for m in methods if m not in single}
        load_before = C.load()
        times = C.interleaved_workers(jobs, args.repeats, warmup=max(args.warmup - 1, 0))
        load_after = C.load()
        for m in single:
            times[m] = C.stats([details[m]["first_seconds"]])
        info = {m: w.call(op="info") for m, w in workers.items()}
    finally:
        for w in [ref_worker, *workers.values()]:
            w.close()

    for m in methods:
        details[m]["seconds"] = times[m]
    med = {m: times[m]["median"] for m in methods}
    scipy = [m for m in methods if m.startswith("scipy")]
    best_scipy = min(scipy, key=lambda m: med[m]) if scipy else None
    jax_info = next((info[m] for m in methods if m in ("hessjax", "hessjax_nomc", "hessjax_fwdrev", "matfree")),
                    info[methods[0]])
    torch_info = next((info[m] for m in methods if m.startswith("scipy") or m == "pyhessian"), {})
    machine = jax_info | {k: v for k, v in torch_info.items() if k.startswith("torch") or k == "blas"}
    machine["timing"] = ("each method in its own process (thread environment per method), one warm-up solve, "
                         "then interleaved rounds; JAX compile excluded")
    result = {
        "samples": args.samples, "k": args.k, "lam": args.lam, "dtype": "float32", "device": device,
        "repeats": args.repeats, "methods": methods,
        "hessjax_seconds": med.get("hessjax"),
        "scipy_torch_seconds": med.get("scipy_default"),
        "scipy_torch_best_seconds": med.get(best_scipy) if best_scipy else None,
        "scipy_torch_double_backward_seconds": med.get("scipy_double_backward"),
        "scipy_best_threads": best_scipy,
        "pyhessian_seconds": med.get("pyhessian"),
        "matfree_seconds": med.get("matfree"),
        "ratio_vs_scipy": (med["hessjax"] / med["scipy_default"]) if {"hessjax", "scipy_default"} <= set(med) else None,
        "ratio_vs_scipy_best": (med["hessjax"] / med[best_scipy]) if "hessjax" in med and best_scipy else None,
        "ratio_vs_pyhessian": (med["hessjax"] / med["pyhessian"]) if {"hessjax", "pyhessian"} <= set(med) else None,
        "hessjax_nomc_seconds": med.get("hessjax_nomc"),
        "ratio_nomc_vs_scipy": (med["hessjax_nomc"] / med["scipy_default"])
        if {"hessjax_nomc", "scipy_default"} <= set(med) else None,
        "ratio_nomc_vs_scipy_best": (med["hessjax_nomc"] / med[best_scipy]) if "hessjax_nomc" in med and best_scipy
        else None,
        "ratio_vs_scipy_double_backward": (med["hessjax"] / med["scipy_double_backward"])
        if {"hessjax", "scipy_double_backward"} <= set(med) else None,
        "ratio_nomc_vs_scipy_double_backward": (med["hessjax_nomc"] / med["scipy_double_backward"])
        if {"hessjax_nomc", "scipy_double_backward"} <= set(med) else None,
        "max_rel_error": details["hessjax"]["max_rel_error"] if "hessjax" in details else None,
        "max_residual_rel": details["hessjax"]["max_residual_rel"] if "hessjax" in details else None,
        "hvps": {m: details[m]["hvps"] for m in methods},
        "details": details,
        "reference": {"dtype": "float64", "tol": 1e-10, "path": str(ref_path), **ref_info},
        "load_before_after": [load_before, load_after],
        "machine": machine,
    }
    print(f"\n{'method':22s} {'median s [min–max]':>30s} {'HVPs':>6s} {'max rel err':>11s} {'max resid/|λ₁|':>14s} "
          f"{'<1e-4':>6s}  threads")
    for m in methods:
        d = details[m]
        print(f"{m:22s} {C.fmt(times[m]):>30s} {d['hvps']:6d} {d['max_rel_error']:11.1e} {d['max_residual_rel']:14.1e} "
              f"{d['within_1e-4']:3d}/{args.k}  {d['threads']}")
    for key in ("ratio_vs_scipy", "ratio_vs_scipy_best", "ratio_vs_pyhessian", "ratio_vs_scipy_double_backward",
                "ratio_nomc_vs_scipy", "ratio_nomc_vs_scipy_best", "ratio_nomc_vs_scipy_double_backward"):
        if result[key] is not None:
            print(f"{key}: {result[key]:.3f}" + (f" (best scipy: {best_scipy})" if "best" in key else ""))
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, jax {machine['versions']['jax']}, "
          f"torch {machine['versions']['torch']}; load average before/after timing: {load_before} / {load_after}")
    C.write_json(args.json, result)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
