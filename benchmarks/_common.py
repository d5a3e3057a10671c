"""Helpers shared by the benchmark scripts (not part of hessjax; imported by path, not installed).

* :func:`machine` — what a result ran on: CPU model, cores, affinity, load, thread settings of
  every framework, device kind and package versions.
* :func:`interleaved` — wall-time statistics of several callables measured side by side: one
  warm-up call each, then rounds that call every callable once (the order rotates each round), so a
  burst of load from other processes hits every method alike; every callable blocks on its result
  (``jax.block_until_ready`` / ``torch.cuda.synchronize``) before it returns.
* :func:`stats` — median, min, max and quartiles of a list of samples.
* :func:`gemm_rates` — the float32 matmul rate of this machine (jnp 2048², torch 2048², numpy 2048²).
* :func:`run_child` / :func:`child_result` — a fresh Python process for one measurement (peak RSS
  of one framework alone, or a baseline under its own thread environment variables), answering one
  JSON line on stdout.
* :func:`reset_peak_rss` / :func:`peak_rss_mb` — the peak resident set size of a phase of a
  process (``/proc/self/clear_refs`` ``5`` resets ``VmHWM``; Linux).
* :class:`Worker` / :func:`serve` — a persistent benchmark process answering JSON requests, and
  :func:`add_worker_arguments`, the hidden options by which a script starts itself as one.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH-RESULT "
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS", "KMP_BLOCKTIME",
              "OMP_WAIT_POLICY", "CUDA_VISIBLE_DEVICES")


# ------------------------------------------------------------------------------------------ machine


#: Methods that need a peer package, and the package (``pip install -c constraints.txt -e '.[bench]'``).
PEERS = {"pyhessian": "pyhessian", "matfree": "matfree"}


def installed_peers(methods: list[str]) -> list[str]:
    """``methods`` without those whose peer package is not installed; one line for each one skipped."""
    import importlib.util

    kept = []
    for m in methods:
        package = PEERS.get(m)
        if package and importlib.util.find_spec(package) is None:
            print(f"skipping {m}: {package} is not installed (pip install -e '.[bench]')", flush=True)
        else:
            kept.append(m)
    return kept


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other processes share this machine)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine(extra: dict | None = None) -> dict:
    """A description of where this process runs; imports nothing heavy itself."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1_5_15": load(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "torch", "numpy", "scipy", "matfree",
                      "pyhessian", "hessjax")},
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    if "jax" in sys.modules:
        import jax

        devs = jax.devices()
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in devs]
        info["jax_threads"] = ("XLA:CPU default: one intra-op thread per core"
                               if jax.default_backend() == "cpu" else "n/a (accelerator)")
        info["device_kind"] = devs[0].device_kind
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
                        for p in threadpool_info()]
    except ImportError:
        pass
    if extra:
        info.update(extra)
    return info


# ------------------------------------------------------------------------------------------ timing


def stats(samples) -> dict:
    """``median``, ``min``, ``max``, ``q1``, ``q3``, ``n`` and the raw samples (seconds or a rate)."""
    a = np.asarray(samples, np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "min": float(a.min()), "max": float(a.max()), "q1": float(q1), "q3": float(q3),
            "n": int(a.size), "samples": [float(s) for s in a]}


def fmt(s: dict, unit: str = "s", scale: float = 1.0) -> str:
    """``median [min–max]`` of a :func:`stats` dict."""
    return f"{s['median'] * scale:.4g} {unit} [{s['min'] * scale:.4g}–{s['max'] * scale:.4g}]"


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                pause: float = 0.0) -> dict[str, dict]:
    """Wall-time :func:`stats` of each callable, measured in interleaved rounds.

    Each callable must block until its result is ready. ``warmup`` untimed calls each first (compile,
    caches, thread pools), then ``repeats`` rounds; round ``r`` starts at callable ``r mod len``.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: stats(t) for n, t in times.items()}


def ratio_stats(a: dict, b: dict) -> dict:
    """Round-by-round ratios ``a / b`` of two interleaved :func:`stats` (same rounds)."""
    return stats(np.asarray(a["samples"]) / np.asarray(b["samples"]))


def gemm_rates(n: int = 2048, repeats: int = 7, frameworks=("jax", "torch", "numpy")) -> dict:
    """float32 ``n × n`` matmul rates (GFLOP/s stats) of the frameworks already imported."""
    flops = 2.0 * n ** 3
    fns = {}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    if "jax" in frameworks and "jax" in sys.modules:
        import jax
        import jax.numpy as jnp

        ja = jnp.asarray(a)
        mm = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
        fns["jax"] = lambda: mm(ja).block_until_ready()
    if "torch" in frameworks and "torch" in sys.modules:
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        ta = torch.from_numpy(a).to(dev)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def tmm():
            torch.mm(ta, ta)
            sync()

        fns["torch"] = tmm
    if "numpy" in frameworks:
        fns["numpy"] = lambda: a @ a
    times = interleaved(fns, repeats)
    return {k: stats(flops / np.asarray(v["samples"]) / 1e9) for k, v in times.items()}


# ------------------------------------------------------------------------------------------ processes


def _proc_status_mb(field: str) -> float | None:
    """``field`` (e.g. ``VmRSS``) of ``/proc/self/status`` in MB, or ``None`` where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB since the last :func:`reset_peak_rss` (``VmHWM``), or since start."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else float("nan")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_result(obj: dict) -> None:
    """Print the one line :func:`run_child` reads."""
    print(RESULT_PREFIX + json.dumps(obj), flush=True)


def run_child(argv: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``python argv...`` in a fresh process (``env`` added to this one's) and return its result line."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, *argv], env=full_env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"child {argv} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def write_json(path, obj) -> None:
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")
        print(f"wrote {path}")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ------------------------------------------------------------------------------------------ the problem


def problem_npz(samples: int, path: Path) -> Path:
    """The anchor's float32 weights and the first ``samples`` MNIST training samples, in one ``.npz``
    (children read it without importing torch or the anchor loader)."""
    from hessjax import load_mnist
    from hessjax.anchors import default_anchor_path
    from hessjax.bridges import load_anchor

    anchor = load_anchor(default_anchor_path())
    data = load_mnist(train_samples=samples)
    arrays = {"x": np.asarray(data.x_train, np.float32), "y": np.asarray(data.y_train, np.int64)}
    for i, (w, b) in enumerate(anchor.params):
        arrays[f"w{i}"] = np.asarray(w, np.float32)
        arrays[f"b{i}"] = np.asarray(b, np.float32)
    np.savez(path, **arrays)
    return path


def read_problem(path) -> tuple[tuple, np.ndarray, np.ndarray]:
    """``(params as ((w, b), ...) numpy float32, x [N, 784] float32, y [N] int64)`` from :func:`problem_npz`."""
    with np.load(path) as z:
        n_layers = sum(1 for k in z.files if k.startswith("w"))
        params = tuple((z[f"w{i}"], z[f"b{i}"]) for i in range(n_layers))
        return params, z["x"], z["y"]


def forward_flops(params, n_samples: int) -> float:
    """``2 · N · Σ in·out``: the matmul FLOPs of one forward pass over ``N`` samples."""
    return 2.0 * n_samples * sum(int(np.prod(w.shape)) for w, _ in params)


# ------------------------------------------------------------------------------------------ workers


class Worker:
    """A persistent benchmark process (``python argv...``) answering one JSON request at a time.

    Frameworks are timed in separate workers so that one framework's idle thread pool (OpenMP or
    XLA's, spinning after a parallel region) never competes with the other's, while the parent still
    alternates between them round by round. While one worker runs, the others wait on a pipe.
    """

    def __init__(self, argv: list[str], env: dict | None = None, name: str = ""):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.name = name or " ".join(argv)
        self.proc = subprocess.Popen([sys.executable, *argv], env=full_env, cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.log: list[str] = []

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} died (exit {self.proc.wait()}); its output:\n"
                                   + "".join(self.log[-40:]))
            if line.startswith(RESULT_PREFIX):
                answer = json.loads(line[len(RESULT_PREFIX):])
                if "error" in answer:
                    raise RuntimeError(f"worker {self.name}: {answer['error']}")
                return answer
            self.log.append(line)
            print(f"  [{self.name}] {line}", end="", flush=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden options of a script that starts itself as a :class:`Worker`: ``--worker NAME``
    (which worker this process is) and ``--problem PATH`` (the :func:`problem_npz` file it reads)."""
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--problem", default=None, help=argparse.SUPPRESS)


def serve(handlers: dict[str, Callable[..., dict]]) -> None:
    """The worker side of :class:`Worker`: read requests ``{"op": name, ...}`` until stdin closes."""
    import traceback

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.pop("op")
        try:
            answer = handlers[op](**request)
        except Exception as exc:  # reported to the parent, which raises
            traceback.print_exc(file=sys.stdout)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        child_result(answer)


def timed(fn: Callable[[], object], n: int = 1) -> list[float]:
    """Wall times of ``n`` calls of ``fn`` (which blocks on its result)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved_workers(jobs: dict[str, tuple[Worker, dict]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Like :func:`interleaved` for methods that live in workers: ``jobs[name] = (worker, request)``,
    where the request makes the worker time one call and answer ``{"seconds": [...]}``."""
    names = list(jobs)
    for name in names:
        w, req = jobs[name]
        for _ in range(warmup):
            w.call(**req)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            w, req = jobs[name]
            times[name].extend(w.call(**req)["seconds"])
    return {n: stats(t) for n, t in times.items()}


def resolve_device(device: str) -> str:
    """``cpu`` or ``gpu``: ``auto`` asks JAX's default backend in a child process (so this process
    starts no framework)."""
    if device != "auto":
        return device
    backend = run_child(["-c", "import jax, sys; sys.path.insert(0, 'benchmarks'); import _common as C; "
                               "C.child_result({'backend': jax.default_backend()})"])["backend"]
    return "cpu" if backend == "cpu" else "gpu"
