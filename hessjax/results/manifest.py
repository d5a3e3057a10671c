"""The manifest (``manifest-ID.json``: configuration, anchor SHA-256, versions, per-λ timings), the check
that one run id holds one configuration, and the discarding of a run's results.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from .atomic import write_text
from .grid import LABEL_RE, UsageError, check_run_id, lambda_label
from .paths import manifest_path, store_path
from .records import finished_lambdas, jsonable

__all__ = [
    "SCHEMA_VERSION",
    "check_config",
    "collect_versions",
    "discard_run",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]

SCHEMA_VERSION = 2  # 2: eigenvalues of the data Hessian, the 2λ shift added in float64, certificates


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def collect_versions() -> dict[str, str | None]:
    """Versions of python and the installed packages of the pipeline (from package metadata: imports nothing)."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("hessjax", "jax", "jaxlib", "flax", "optax", "numpy", "torch", "zarr"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_manifest(out, run_id: str) -> dict | None:
    path = manifest_path(out, run_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); remove it or use --overwrite") from None


def _normalise(config: Mapping, ignore: Sequence[str]) -> dict:
    return {k: v for k, v in jsonable(dict(config)).items() if k not in set(ignore)}


def write_manifest(
    out,
    run_id: str,
    config: Mapping[str, Any],
    *,
    anchor_sha256: str | None,
    devices: Sequence[str] = (),
    matmul_precision: str | None = None,
    records: Mapping[float, Mapping] | None = None,
    extra: Mapping[str, Any] | None = None,
    ignore: Sequence[str] = ("lambdas",),
) -> Path:
    """Write ``manifest-ID.json`` atomically. Call once at the start (after :func:`check_config`) and again
    after each finished λ; the per-λ section is merged from the records (``records`` or read from disk).

    Keys: ``schema_version, run_id, created, updated, config`` (without the ``ignore`` keys: the λ grid is
    not part of the configuration), ``anchor_sha256, versions, devices, matmul_precision, lambdas``
    (``{label: {lambda, seconds, timings, epochs, converged, diverged, max_residual, num_converged_eigs,
    eig_converged, residuals}}``) and ``extra``.
    """
    if records is None:
        records = finished_lambdas(out, run_id)
    previous = None
    with contextlib.suppress(UsageError):
        previous = read_manifest(out, run_id)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    per_lambda_keys = ("lambda", "seconds", "timings", "epochs", "converged", "diverged", "max_residual",
                       "num_converged_eigs", "eig_converged", "residuals")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "config": _normalise(config, ignore),
        "anchor_sha256": anchor_sha256,
        "versions": collect_versions(),
        "devices": [str(d) for d in devices],
        "matmul_precision": None if matmul_precision is None else str(matmul_precision),
        "lambdas": {
            lambda_label(lam): {k: rec.get(k) for k in per_lambda_keys} for lam, rec in sorted(records.items())
        },
        "extra": dict(extra or {}),
    }
    text = json.dumps(jsonable(manifest), indent=1, allow_nan=False) + "\n"
    return write_text(manifest_path(out, run_id), text)


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = []
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if key not in a or key not in b:
                diffs.append(name)
            else:
                diffs.extend(_diff_keys(a[key], b[key], name + "."))
        return diffs
    return [] if a == b else [prefix.rstrip(".") or "<config>"]


def check_config(
    out,
    run_id: str,
    config: Mapping[str, Any],
    *,
    overwrite: bool = False,
    anchor_sha256: str | None = None,
    ignore: Sequence[str] = ("lambdas",),
) -> dict | None:
    """Refuse to mix results of different configurations under one run id; return the previous manifest.

    * No manifest for ``run_id`` in ``out``: returns ``None`` (a fresh run).
    * A manifest whose ``config`` equals ``config`` (after JSON normalisation, without the ``ignore`` keys,
      so extending or changing the λ grid reuses the finished λ) and whose ``anchor_sha256`` matches (when
      given): returns it; the sweep resumes and skips :func:`finished_lambdas`.
    * Otherwise :class:`UsageError` naming the differing keys (dotted for nested dicts).
    * ``overwrite=True``: :func:`discard_run` first — every per-λ file, record, ``Model-ID.csv``, the store
      and the manifest of ``run_id`` are deleted (other run ids in ``out`` are untouched) — and return ``None``.

    Call :func:`write_manifest` right after, so that even a run killed before its first λ is guarded.
    """
    check_run_id(run_id)
    if overwrite:
        discard_run(out, run_id)
        return None
    previous = read_manifest(out, run_id)
    if previous is None:
        return None
    if previous.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(
            f"run {run_id!r} in {str(out)!r} was written by schema {previous.get('schema_version')} of hessjax's "
            f"results, this is schema {SCHEMA_VERSION}; use another --out or --id, or --overwrite to discard it"
        )
    diffs = _diff_keys(previous.get("config", {}), _normalise(config, ignore))
    old_sha = previous.get("anchor_sha256")
    if anchor_sha256 is not None and old_sha is not None and old_sha != anchor_sha256:
        diffs.append("anchor_sha256")
    if diffs:
        shown = ", ".join(diffs[:10]) + (f" and {len(diffs) - 10} more" if len(diffs) > 10 else "")
        raise UsageError(
            f"run {run_id!r} in {str(out)!r} was made with a different configuration (differs: {shown}); "
            "use another --id, or --overwrite to discard its results"
        )
    return previous


def discard_run(out, run_id: str) -> list[Path]:
    """Delete every result of ``run_id`` in ``out`` (records first, then the manifest, files and store)."""
    check_run_id(run_id)
    out = Path(out)
    if not out.is_dir():
        return []
    rid = re.escape(run_id)
    removed: list[Path] = []

    def unlink_matching(directory: Path, pattern: re.Pattern) -> None:
        if directory.is_dir():
            for p in sorted(directory.iterdir()):
                if pattern.fullmatch(p.name) and (p.is_file() or p.is_symlink()):
                    p.unlink()
                    removed.append(p)

    unlink_matching(out / "records", re.compile(rf"{rid}-{LABEL_RE}\.json"))
    unlink_matching(out, re.compile(rf"manifest-{rid}\.json|Model-{rid}\.csv"))
    unlink_matching(
        out,
        re.compile(
            rf"(?:gradients|Hessian-eigenvalues)-{rid}-{LABEL_RE}\.csv"
            rf"|Hessian-eigenvectors-{rid}-{LABEL_RE}\.(?:csv|npy)|model_weights-{rid}-{LABEL_RE}\.pth"
            rf"|Hessian-(?:density|bottom-eigenvalues|eigenvalue-certificates)-{rid}-{LABEL_RE}\.csv"
        ),
    )
    store = store_path(out, run_id)
    if store.is_dir():
        shutil.rmtree(store)
        removed.append(store)
    return removed
