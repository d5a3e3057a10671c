"""One Hessian-vector product of the real model: hessjax against PyTorch, side by side.

    python benchmarks/hvp.py --samples 60000 --json hvp.json

``∇²L_eff(θ) · v`` for the 784-128-128-10 MLP at the shipped anchor's weights (``θ = θ_ref``,
``L_eff = mean CE + λ‖θ − θ_ref‖²``, λ = ``--lam``) over the first ``--samples`` MNIST training
samples, in float32, with one seeded random ``v`` shared by every method:

* ``hessjax``             — ``jit(hessjax.flat_hessian_matvec)``: forward-over-reverse over chunks
                            (forward and gradient recomputed for every v; ~4.75 forward passes);
* ``hessjax_linearized``  — ``jax.linearize(jax.grad(L_eff), θ)`` once, then its linear map per v;
* ``hessjax_rop``         — ``hessjax.linearized.linearize_hessian`` once, then
                            ``linearized_flat_hessian_matvec`` per v (what a sweep's Lanczos uses);
* ``torch``               — ``hessjax.bridges.hvp_torch``: double backward, graph rebuilt per v;
* ``torch_graph_reuse``   — ``hessjax.bridges.TorchHVP``: gradient graph built once (PyHessian's way);
* ``torch_func``          — ``torch.func.jvp(torch.func.grad(f), (θ,), (v,))``: forward-over-reverse.

Correctness is checked first (every method against torch's double backward and against a
float64 HVP, ``‖a − b‖/‖b‖ ≤ 1e-5``); then the methods are timed in interleaved rounds with the
float32 GEMM rate measured in the same rounds (``gemm_gflops``), and peak RSS is measured for each
method alone in a fresh process. One-time costs (linearization, graph build) are reported separately.
FLOPs: ``4.75 × 2·N·Σ in·out`` per from-scratch HVP, ``2.6 ×`` when the linearization or graph is reused.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

FROM_SCRATCH, REUSED = 4.75, 2.6
JAX_METHODS = ("hessjax", "hessjax_linearized", "hessjax_rop")
TORCH_METHODS = ("torch", "torch_graph_reuse", "torch_func")
TORCH1_METHODS = ("torch_1thread", "torch_graph_reuse_1thread")  # the same with torch.set_num_threads(1)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
FLOP_FACTOR = {"hessjax": FROM_SCRATCH, "hessjax_linearized": REUSED, "hessjax_rop": REUSED,
               "torch": FROM_SCRATCH, "torch_graph_reuse": REUSED, "torch_func": FROM_SCRATCH,
               "torch_1thread": FROM_SCRATCH, "torch_graph_reuse_1thread": REUSED}
TOL = 1e-5


# ------------------------------------------------------------------------------------------ JAX side


def jax_setup(params_np, x_np, y_np, lam: float, chunk_size: int, dtype="float32"):
    """Device arrays and the three compiled JAX products; returns ``{method: (one_time, apply)}``.

    ``one_time()`` returns the state that ``apply(state, v)`` needs (``None`` for from-scratch).
    """
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from hessjax.hvp import chunk_data, dataset_grad, flat_hessian_matvec
    from hessjax.linearized import linearize_hessian, linearized_flat_hessian_matvec

    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params_np)
    chunks = chunk_data(jnp.asarray(x_np, dtype), jnp.asarray(y_np, jnp.int32), chunk_size)
    lam = jnp.asarray(lam, dtype)
    flat, unravel = ravel_pytree(params)

    scratch = jax.jit(flat_hessian_matvec)

    def flat_grad(theta, anchor, lam, chunks):
        return ravel_pytree(dataset_grad(unravel(theta), anchor, lam, chunks))[0]

    linearize = jax.jit(lambda theta, anchor, lam, chunks: jax.linearize(
        lambda t: flat_grad(t, anchor, lam, chunks), theta)[1])
    apply_lin = jax.jit(lambda lin, v: lin(v))
    rop_state = jax.jit(linearize_hessian)
    rop = jax.jit(linearized_flat_hessian_matvec)
    methods = {
        "hessjax": (lambda: None, lambda st, v: scratch(v, params, params, lam, chunks)),
        "hessjax_linearized": (lambda: linearize(flat, params, lam, chunks), lambda lin, v: apply_lin(lin, v)),
        "hessjax_rop": (lambda: rop_state(params, chunks), lambda st, v: rop(v, st, lam, chunks)),
    }
    return methods, flat


def jax_float64_reference(params_np, x_np, y_np, lam: float, chunk_size: int, v_np) -> np.ndarray:
    """``∇²L_eff · v`` in float64 by ``flat_hessian_matvec`` (needs ``jax_enable_x64``)."""
    import jax
    import jax.numpy as jnp

    from hessjax.hvp import chunk_data, flat_hessian_matvec

    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params_np)
    chunks = chunk_data(jnp.asarray(x_np, jnp.float64), jnp.asarray(y_np, jnp.int32), chunk_size)
    out = jax.jit(flat_hessian_matvec)(jnp.asarray(v_np, jnp.float64), params, params, jnp.float64(lam), chunks)
    return np.asarray(out, np.float64)


# ------------------------------------------------------------------------------------------ torch side


def torch_setup(params_np, x_np, y_np, lam: float, device: str, dtype="float32"):
    """``{method: (one_time, apply)}`` for the three torch products on ``device``."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp

    from hessjax.bridges.torch_ref import TorchHVP, TorchMLP, hvp_torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    params = tuple((np.asarray(w, dtype), np.asarray(b, dtype)) for w, b in params_np)
    model = TorchMLP.from_params(params).to(device)
    anchor = [t.detach().clone() for t in model.parameters()]
    x = torch.from_numpy(np.asarray(x_np, dtype)).to(device)
    y = torch.from_numpy(np.asarray(y_np, np.int64)).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    lam_t = torch.tensor(lam, dtype=tdtype, device=device)

    def loss_flat(theta):
        ps = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        penalty = sum(torch.sum(torch.square(ps[n] - a)) for n, a in zip(names, anchor))
        return F.cross_entropy(functional_call(model, ps, (x,)), y) + lam_t * penalty

    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hvp_func = lambda v: jvp(grad(loss_flat), (theta0,), (v,))[1]  # noqa: E731

    def done(t):
        sync()
        return t

    methods = {
        "torch": (lambda: None, lambda st, v: done(hvp_torch(model, anchor, lam, x, y, v))),
        "torch_graph_reuse": (lambda: done(TorchHVP(model, anchor, lam, x, y)), lambda op, v: done(op(v))),
        "torch_func": (lambda: None, lambda st, v: done(hvp_func(v).detach())),
    }
    return methods, (lambda a: torch.from_numpy(np.asarray(a, dtype)).to(device))


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, np.float64)


def rel(a, b) -> float:
    a, b = _to_numpy(a), _to_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------ child


def child(args) -> None:
    """One method alone in this fresh process: its peak RSS (and device memory) and a quick timing."""
    params, x, y = C.read_problem(args.problem)
    method = args.child
    v_np = np.random.default_rng(1).standard_normal(sum(w.size + b.size for w, b in params)).astype(np.float32)
    if method in JAX_METHODS:
        import jax

        if args.device == "cpu":
            jax.config.update("jax_platforms", "cpu")
        methods, _ = jax_setup(params, x, y, args.lam, args.chunk_size)
        del x
        gc.collect()
        import jax.numpy as jnp

        v = jnp.asarray(v_np)
        block = jax.block_until_ready
        one_time, apply = methods[method]
        block(apply(one_time(), v))  # compile (and a first run) before the measured phase
        gc.collect()
    else:
        import torch

        device = "cuda" if args.device == "gpu" else "cpu"
        methods, to_dev = torch_setup(params, x, y, args.lam, device)
        v = to_dev(v_np)
        block = lambda a: a  # noqa: E731  (the torch callables synchronise)
        one_time, apply = methods[method]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
    before = C.rss_mb()
    reset = C.reset_peak_rss()
    block(apply(one_time(), v))
    peak = C.peak_rss_mb()
    out = {"method": method, "rss_before_mb": before, "peak_rss_mb": peak, "peak_reset": reset,
           "lifetime_peak_rss_mb": C.resource.getrusage(C.resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if method in JAX_METHODS:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats and args.device != "cpu":
            out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
    elif args.device == "gpu":
        out["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    state = one_time()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        block(apply(state, v))
        times.append(time.perf_counter() - t0)
    out["isolated_seconds"] = C.stats(times)
    C.child_result(out)


# ------------------------------------------------------------------------------------------ workers


def worker(args) -> None:
    """The methods of one framework in this process, timed one call at a time for the parent."""
    params, x, y = C.read_problem(args.problem)
    n_params = sum(w.size + b.size for w, b in params)
    v_np = np.random.default_rng(1).standard_normal(n_params).astype(np.float32)
    gemm_n = 2048
    a_np = np.random.default_rng(0).standard_normal((gemm_n, gemm_n), dtype=np.float32)
    st: dict = {}
    if args.worker == "jax":
        import jax

        if args.device == "cpu":
            jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_enable_x64", True)  # for the float64 reference; float32 arrays are explicit
        import jax.numpy as jnp

        methods, _ = jax_setup(params, x, y, args.lam, args.chunk_size)
        v = jnp.asarray(v_np)
        block = jax.block_until_ready
        a = jnp.asarray(a_np)
        mm = jax.jit(lambda a: jnp.matmul(a, a, precision=jax.lax.Precision.HIGHEST))
        gemm = lambda: mm(a).block_until_ready()  # noqa: E731
        reference = lambda: jax_float64_reference(params, x, y, args.lam, args.chunk_size, v_np)  # noqa: E731
    else:
        import torch

        device = "cuda" if args.device == "gpu" else "cpu"
        methods, to_dev = torch_setup(params, x, y, args.lam, device)
        if args.worker == "torch1":
            torch.set_num_threads(1)
            methods = {"torch_1thread": methods["torch"], "torch_graph_reuse_1thread": methods["torch_graph_reuse"]}
        v = to_dev(v_np)
        block = lambda r: r  # noqa: E731  (the torch callables synchronise)
        at = to_dev(a_np)

        def gemm():
            torch.mm(at, at)
            if device == "cuda":
                torch.cuda.synchronize()

        def reference():
            m64, to64 = torch_setup(params, x, y, args.lam, device, "float64")
            return _to_numpy(m64["torch"][1](None, to64(v_np)))

    def setup():
        once = {}
        for m, (one_time, apply) in methods.items():
            block(apply(block(one_time()), v))  # compile / first run
            t0 = time.perf_counter()
            st[m] = block(one_time())
            once[m] = time.perf_counter() - t0
        return {"one_time_seconds": once}

    def hvp(method, path):
        np.save(path, _to_numpy(block(methods[method][1](st[method], v))))
        return {}

    def timing(method, n=1):
        if method == "gemm":
            return {"seconds": C.timed(gemm, n)}
        apply = methods[method][1]
        return {"seconds": C.timed(lambda: block(apply(st[method], v)), n)}

    def ref(path):
        np.save(path, reference())
        return {}

    C.serve({"setup": setup, "hvp": hvp, "time": timing, "reference": ref, "info": lambda: C.machine()})


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=60000, help="first N MNIST training samples")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up call each)")
    p.add_argument("--chunk-size", type=int, default=10000, help="hessjax chunk size (the sweep's default)")
    p.add_argument("--lam", type=float, default=0.01)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: gpu when jax's default backend is one")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method peak-RSS processes")
    p.add_argument("--no-single-thread", action="store_true",
                   help="skip the extra single-thread torch baselines (timed on CPU by default)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    C.add_worker_arguments(p)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.worker:
        worker(args)
        return 0

    device = C.resolve_device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="hessjax-bench-")
    tmpdir = Path(tmp.name)
    npz = C.problem_npz(args.samples, tmpdir / "problem.npz")
    params, _, _ = C.read_problem(npz)
    n_params = sum(w.size + b.size for w, b in params)
    fwd = C.forward_flops(params, args.samples)
    print(f"HVP of 784-128-128-10 at the anchor, N={args.samples}, P={n_params}, λ={args.lam}, float32, "
          f"device {device}; load {C.load()}", flush=True)
    common = ["--problem", str(npz), "--chunk-size", str(args.chunk_size), "--lam", str(args.lam),
              "--device", device]
    frameworks = ("jax", "torch") + (("torch1",) if device == "cpu" and not args.no_single_thread else ())
    workers = {fw: C.Worker([__file__, "--worker", fw, *common], env=ONE_THREAD if fw == "torch1" else None,
                            name=fw) for fw in frameworks}
    try:
        once = {}
        for w in workers.values():
            once.update(w.call(op="setup")["one_time_seconds"])
        owner = {m: workers["jax"] for m in JAX_METHODS} | {m: workers["torch"] for m in TORCH_METHODS}
        if "torch1" in workers:
            owner |= {m: workers["torch1"] for m in TORCH1_METHODS}

        # ---- correctness first
        out = {}
        for m, w in owner.items():
            w.call(op="hvp", method=m, path=str(tmpdir / f"{m}.npy"))
            out[m] = np.load(tmpdir / f"{m}.npy")
        for fw in ("jax", "torch"):
            workers[fw].call(op="reference", path=str(tmpdir / f"ref_{fw}.npy"))
        ref64, torch64 = np.load(tmpdir / "ref_jax.npy"), np.load(tmpdir / "ref_torch.npy")
        errors = {m: {"vs_torch": rel(out[m], out["torch"]), "vs_float64": rel(out[m], ref64)} for m in out}
        errors["float64_jax_vs_torch"] = rel(ref64, torch64)
        print("relative errors ‖a−b‖/‖b‖ (float32 vs torch double backward | vs float64 hessjax):")
        for m in out:
            print(f"  {m:20s} {errors[m]['vs_torch']:.2e} | {errors[m]['vs_float64']:.2e}")
        print(f"  float64 hessjax vs float64 torch: {errors['float64_jax_vs_torch']:.2e}", flush=True)
        bad = [m for m in out if max(errors[m].values()) > TOL] + (
            ["float64"] if errors["float64_jax_vs_torch"] > 1e-10 else [])
        if bad:
            print(f"error: {bad} disagree beyond {TOL}; not timing", file=sys.stderr)
            return 1

        # ---- timing: methods and GEMM rates in interleaved rounds, each framework in its own process
        jobs = {m: (w, {"op": "time", "method": m}) for m, w in owner.items()}
        jobs["gemm_jax"] = (workers["jax"], {"op": "time", "method": "gemm"})
        jobs["gemm_torch"] = (workers["torch"], {"op": "time", "method": "gemm"})
        load_before = C.load()
        times = C.interleaved_workers(jobs, args.repeats)
        load_after = C.load()
        info = {fw: w.call(op="info") for fw, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()

    n = 2048
    gemm = {k: C.stats(2.0 * n ** 3 / np.asarray(times[f"gemm_{k}"]["samples"]) / 1e9) for k in ("jax", "torch")}
    gemm_gflops = gemm["jax"]["median"]
    med = {m: times[m]["median"] for m in owner}
    gflops = {m: FLOP_FACTOR[m] * fwd / med[m] / 1e9 for m in med}
    machine = info["jax"] | {k: v for k, v in info["torch"].items() if k.startswith("torch")}
    machine["timing"] = ("interleaved rounds (order rotating), JAX and torch each in its own worker process, one "
                         "warm-up call each; every call blocks on its result")
    result = {
        "samples": args.samples, "params": int(n_params), "lam": args.lam, "dtype": "float32",
        "chunk_size": args.chunk_size, "repeats": args.repeats, "device": device,
        "hessjax_seconds": med["hessjax"],
        "hessjax_linearized_seconds": med["hessjax_linearized"],
        "hessjax_rop_seconds": med["hessjax_rop"],
        "torch_seconds": med["torch"],
        "torch_graph_reuse_seconds": med["torch_graph_reuse"],
        "torch_func_seconds": med["torch_func"],
        "torch_1thread_seconds": med.get("torch_1thread"),
        "torch_graph_reuse_1thread_seconds": med.get("torch_graph_reuse_1thread"),
        "ratio": med["hessjax"] / med["torch"],
        "ratios": {
            "hessjax/torch": med["hessjax"] / med["torch"],
            "hessjax_linearized/torch": med["hessjax_linearized"] / med["torch"],
            "hessjax_rop/torch": med["hessjax_rop"] / med["torch"],
            "hessjax_linearized/torch_graph_reuse": med["hessjax_linearized"] / med["torch_graph_reuse"],
            "hessjax_rop/torch_graph_reuse": med["hessjax_rop"] / med["torch_graph_reuse"],
            "hessjax/torch_func": med["hessjax"] / med["torch_func"],
            **({"hessjax_rop/torch_1thread": med["hessjax_rop"] / med["torch_1thread"],
                "hessjax_rop/torch_graph_reuse_1thread": med["hessjax_rop"] / med["torch_graph_reuse_1thread"]}
               if "torch_1thread" in med else {}),
        },
        "ratios_per_round": {
            "hessjax/torch": C.ratio_stats(times["hessjax"], times["torch"]),
            "hessjax_rop/torch": C.ratio_stats(times["hessjax_rop"], times["torch"]),
            "hessjax_rop/torch_graph_reuse": C.ratio_stats(times["hessjax_rop"], times["torch_graph_reuse"]),
            "hessjax_linearized/torch_graph_reuse": C.ratio_stats(times["hessjax_linearized"],
                                                                  times["torch_graph_reuse"]),
        },
        "rel_error": errors["hessjax"]["vs_torch"],
        "rel_errors": errors,
        "gflops": gflops["hessjax"],
        "gflops_by_method": gflops,
        "fraction_of_gemm": {m: g / gemm_gflops for m, g in gflops.items()},
        "flops_per_hvp": {"forward": fwd, "from_scratch": FROM_SCRATCH * fwd, "reused": REUSED * fwd},
        "gemm_gflops": gemm_gflops,
        "gemm": {"shape": [n, n, n], "jax": gemm["jax"], "torch": gemm["torch"]},
        "one_time_seconds": {m: once[m] for m in ("hessjax_linearized", "hessjax_rop", "torch_graph_reuse")},
        "times": times,
        "load_before_after": [load_before, load_after],
        "machine": machine,
    }

    print(f"\n{'method':22s} {'median s [min–max]':>32s} {'GFLOP/s':>8s} {'of GEMM':>8s}")
    for m in med:
        print(f"{m:22s} {C.fmt(times[m]):>32s} {gflops[m]:8.1f} {gflops[m] / gemm_gflops:8.0%}")
    print(f"GEMM 2048² float32: jax {C.fmt(gemm['jax'], 'GFLOP/s')}, torch {C.fmt(gemm['torch'], 'GFLOP/s')}")
    print("ratios (of medians):", ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))
    print("ratios per round (median [min–max]):",
          ", ".join(f"{k} {C.fmt(v, '')}" for k, v in result["ratios_per_round"].items()))
    print("one-time costs:", ", ".join(f"{k} {v:.3f} s" for k, v in result["one_time_seconds"].items()))
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, jax {machine['versions']['jax']} "
          f"({machine.get('jax_devices')}), torch {machine['versions']['torch']} ({machine.get('torch_threads')} "
          f"threads); load average before/after timing: {load_before} / {load_after}", flush=True)

    # ---- peak RSS, one method per fresh process
    if not args.no_memory:
        mem = {}
        for m in JAX_METHODS + TORCH_METHODS:
            mem[m] = C.run_child([__file__, "--child", m, *common])
            print(f"peak RSS {m:20s} {mem[m]['peak_rss_mb']:7.0f} MB (before the HVP {mem[m]['rss_before_mb']:.0f} MB"
                  + (f", device peak {mem[m]['device_peak_mb']:.0f} MB" if "device_peak_mb" in mem[m] else "")
                  + f"); timed alone: {C.fmt(mem[m]['isolated_seconds'])}", flush=True)
        result["memory"] = mem
        result["peak_rss_mb"] = {m: mem[m]["peak_rss_mb"] for m in mem}
    C.write_json(args.json, result)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
