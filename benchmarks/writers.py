"""Seconds to write one λ's per-parameter files (P = 118,282; k = 30), each format, atomically
(temporary file, fsync, rename), best of ``--repeats``; every value read back and compared bit for bit.

    python benchmarks/writers.py

``%.9g`` is the formatting the sweep used before (one ``%`` per block of rows); ``fixed-width`` is
:mod:`hessjax.results.csvfloat` (what the sweep writes now); ``npy`` is ``--eigenvectors npy``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from hessjax.results import parameter_names, tables  # noqa: E402

SHAPES = {"0.weight": (128, 784), "0.bias": (128,), "2.weight": (128, 128), "2.bias": (128,),
          "4.weight": (10, 128), "4.bias": (10,)}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    names = parameter_names(SHAPES)
    vecs = (rng.standard_normal((30, names.size)) * 10.0 ** rng.uniform(-6, -1, (30, names.size))).astype(np.float32)
    grad = vecs[0].copy()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for what, values in (("eigenvectors", vecs.T), ("gradient", grad[:, None])):
            header = "parameter," + ",".join(f"v{j + 1}" for j in range(values.shape[1]))
            for fmt, fast in (("%.9g", False), ("fixed-width", True)):
                path = out / f"{what}-{fast}.csv"
                seconds = best(lambda: tables._write_table(path, header, names, values, fast=fast), args.repeats)
                back = pd.read_csv(path).iloc[:, 1:].to_numpy(np.float64).astype(np.float32)
                assert np.array_equal(back.view(np.uint32), values.view(np.uint32)), (what, fmt)
                rows[(what, fmt)] = {"seconds": seconds, "megabytes": path.stat().st_size / 1e6}
        path = out / "v.npy"
        seconds = best(lambda: tables.atomic_write(path, lambda t: np.save(t, np.ascontiguousarray(vecs.T))),
                       args.repeats)
        rows[("eigenvectors", "npy")] = {"seconds": seconds, "megabytes": path.stat().st_size / 1e6}
    print(f"per-λ files, P = {names.size}, k = 30, best of {args.repeats} on {C.cpu_model()} (load {C.load()})")
    print(f"{'file':14s} {'format':12s} {'seconds':>8s} {'MB':>6s} {'speed-up':>9s}")
    for (what, fmt), r in rows.items():
        base = rows.get((what, "%.9g"), r)["seconds"]
        print(f"{what:14s} {fmt:12s} {r['seconds']:8.3f} {r['megabytes']:6.1f} {base / r['seconds']:8.1f}×")
    C.write_json(args.json, {f"{w}/{f}": r for (w, f), r in rows.items()} | {"machine": C.machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
