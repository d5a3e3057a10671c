"""The accelerator check's table, from the JSON files ``benchmarks/gpu.sh`` wrote in ``OUT``.

    python benchmarks/gpu_table.py OUT

s/λ (the sweep at λ-batch 8), ms per Hessian-vector product (hessjax's R-operator and torch's double
backward and graph reuse, same device, 60,000 samples), the host-blocked fraction of a batch, and
the peak device memory; a figure whose step did not finish is printed as "–".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _fmt(value, scale=1.0, digits=3) -> str:
    return "–" if value is None else f"{value * scale:.{digits}g}"


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    hvp, sweep, proxies = _load(out, "hvp"), _load(out, "sweep"), _load(out, "proxies")
    per_lambda = None
    seconds = (sweep.get("seconds") or {}).get("hessjax_b8") or {}
    if seconds.get("samples") and sweep.get("lambdas_run"):
        per_lambda = min(seconds["samples"]) / sweep["lambdas_run"]["hessjax_b8"]
    blocked = ((proxies.get("a_blocked") or {}).get("overlapped") or {}).get("fraction")
    peak = proxies.get("peak_device_bytes")
    rows = [
        ("s per λ, sweep at λ-batch 8 (60,000 samples, k = 10, 2 epochs)", _fmt(per_lambda)),
        ("ms per product, hessjax R-operator", _fmt(hvp.get("hessjax_rop_seconds"), 1e3)),
        ("ms per product, hessjax forward-over-reverse", _fmt(hvp.get("hessjax_seconds"), 1e3)),
        ("ms per product, torch double backward", _fmt(hvp.get("torch_seconds"), 1e3)),
        ("ms per product, torch graph reuse", _fmt(hvp.get("torch_graph_reuse_seconds"), 1e3)),
        ("host-blocked fraction of a batch (λ-batch 4, writes overlapped)", _fmt(blocked)),
        ("peak device memory, GB", _fmt(None if peak is None else peak / 1e9)),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
