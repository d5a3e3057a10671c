"""Per-λ records (``records/ID-L2.json``: a λ is finished when its record exists) and ``Model-ID.csv``."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .atomic import write_text
from .grid import LABEL_RE, lambda_label, round_lambda
from .paths import model_csv_path, record_path
from .tables import check_descending

__all__ = [
    "MODEL_COLUMNS",
    "OPTIONAL_MODEL_COLUMNS",
    "finished_lambdas",
    "float_or_nan",
    "jsonable",
    "make_record",
    "write_model_csv",
    "write_record",
]

MODEL_COLUMNS = (
    "lambda",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "epochs",
    "converged",
    "diverged",
    "grad_norm",
    "distance_to_anchor",
    "max_residual",
    "num_converged_eigs",
    "seconds",
    "best_epoch",
)
#: Columns appended to ``Model-ID.csv`` when a record's ``extra`` has them (the top-k overlaps of every
#: sweep, ``--trace``, ``--bottom-k``, ``--ggn``, ``--init follow``).
OPTIONAL_MODEL_COLUMNS = ("gradient_overlap", "displacement_overlap", "trace", "trace_stderr", "lambda_min",
                          "lambda_min_residual", "lambda_c", "ggn_max", "init_from")
_FLOAT_FIELDS = (
    "train_loss", "test_loss", "test_accuracy", "grad_norm", "distance_to_anchor", "max_residual", "seconds",
    "convergence_scale",
)
_LIST_FIELDS = ("eigenvalues", "data_eigenvalues", "residuals", "error_bounds")


def jsonable(x):
    """Plain JSON values: numpy scalars/arrays to Python, non-finite floats to ``null`` (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, str):
        return x
    raise TypeError(f"not JSON-serialisable: {type(x).__name__} {x!r}")


def float_or_nan(x) -> float:
    """``float(x)``, or NaN for ``None`` (strict JSON stores a non-finite float as ``null``)."""
    return math.nan if x is None else float(x)


def make_record(
    lam: float,
    *,
    train_loss: float,
    test_loss: float,
    test_accuracy: float,
    epochs: int,
    converged: bool,
    diverged: bool,
    grad_norm: float,
    distance_to_anchor: float,
    seconds: float,
    eigenvalues=(),
    residuals=(),
    eig_converged=(),
    data_eigenvalues=(),
    error_bounds=(),
    convergence_scale: float = math.nan,
    best_epoch: int = -1,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The record of one finished λ (a plain dict; NaN where a value is unknown, e.g. losses of a diverged λ).

    ``eigenvalues`` θ of ``∇²L_eff`` and ``data_eigenvalues`` μ = θ − 2λ of the data Hessian, ``residuals``
    and ``error_bounds`` (on μ) ``[k]`` (largest eigenvalue first), ``eig_converged`` ``[k]`` bool
    (``residual ≤ tol·convergence_scale``); ``max_residual`` (NaN-ignoring max, NaN if none) and
    ``num_converged_eigs`` are derived from them.
    ``timings`` is e.g. ``{"train": s, "hessian": s, "write": s}``; ``extra`` any JSON-able details.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    residuals = np.asarray(residuals, dtype=np.float64).reshape(-1)
    eig_converged = np.asarray(eig_converged, dtype=bool).reshape(-1)
    check_descending(eigenvalues)
    finite_res = residuals[~np.isnan(residuals)]
    return {
        "lambda": round_lambda(lam),
        "label": lambda_label(round_lambda(lam)),
        "train_loss": float(train_loss),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "epochs": int(epochs),
        "best_epoch": int(best_epoch),
        "converged": bool(converged),
        "diverged": bool(diverged),
        "grad_norm": float(grad_norm),
        "distance_to_anchor": float(distance_to_anchor),
        "max_residual": float(finite_res.max()) if finite_res.size else math.nan,
        "num_converged_eigs": int(eig_converged.sum()),
        "seconds": float(seconds),
        "eigenvalues": eigenvalues.tolist(),
        "data_eigenvalues": np.asarray(data_eigenvalues, np.float64).reshape(-1).tolist(),
        "error_bounds": np.asarray(error_bounds, np.float64).reshape(-1).tolist(),
        "convergence_scale": float(convergence_scale),
        "residuals": residuals.tolist(),
        "eig_converged": eig_converged.tolist(),
        "timings": {str(k): float(v) for k, v in (timings or {}).items()},
        "extra": dict(extra or {}),
    }


def _decode_record(rec: dict) -> dict:
    for key in _FLOAT_FIELDS:
        rec[key] = float_or_nan(rec.get(key))
    for key in _LIST_FIELDS:
        rec[key] = [float_or_nan(v) for v in rec.get(key, [])]
    rec["timings"] = {k: float_or_nan(v) for k, v in rec.get("timings", {}).items()}
    return rec


def write_record(out, run_id: str, record: Mapping) -> Path:
    """Write ``records/ID-L2.json`` atomically; call it LAST for a λ, after its files and its store write.

    Strict JSON: non-finite floats are stored as ``null`` and read back as NaN.
    """
    path = record_path(out, run_id, record["lambda"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(jsonable(dict(record)), indent=1, allow_nan=False) + "\n")


def finished_lambdas(out, run_id: str) -> dict[float, dict]:
    """``{λ: record}`` of every finished λ of ``run_id`` in ``out``, ascending in λ.

    A record that cannot be read (should not happen: records are written atomically) is warned about and
    treated as unfinished, so the sweep recomputes that λ.
    """
    directory = Path(out) / "records"
    if not directory.is_dir():
        return {}
    pattern = re.compile(rf"{re.escape(run_id)}-({LABEL_RE})\.json")
    found = {}
    for p in directory.iterdir():
        if not pattern.fullmatch(p.name):
            continue
        try:
            rec = _decode_record(json.loads(p.read_text(encoding="utf-8")))
            lam = round_lambda(rec["lambda"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"ignoring unreadable record {p}: {err}", stacklevel=2)
            continue
        found[lam] = rec
    return dict(sorted(found.items()))


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))  # shortest round-trip digits; "nan" / "inf"


def write_model_csv(out, run_id: str, records: Mapping[float, Mapping] | None = None) -> Path:
    """Rebuild ``Model-ID.csv`` (atomically, never appended) from the records, one row per λ ascending.

    Header: ``lambda,train_loss,test_loss,test_accuracy,epochs,converged,diverged,grad_norm,
    distance_to_anchor,max_residual,num_converged_eigs,seconds,best_epoch``, then those of
    :data:`OPTIONAL_MODEL_COLUMNS` that some record's ``extra`` holds (``--trace``, ``--bottom-k``).
    ``lambda`` is written as its label,
    floats with shortest round-trip digits (``nan`` for a diverged λ's losses), booleans ``True``/``False``.
    """
    if records is None:
        records = finished_lambdas(out, run_id)
    optional = [c for c in OPTIONAL_MODEL_COLUMNS if any(c in rec.get("extra", {}) for rec in records.values())]
    lines = [",".join(MODEL_COLUMNS + tuple(optional))]
    for lam in sorted(records):
        rec = records[lam]
        cells = [lambda_label(lam)] + [_csv_cell(rec[c]) for c in MODEL_COLUMNS[1:]]
        cells += [_csv_cell(rec.get("extra", {}).get(c, math.nan)) for c in optional]
        lines.append(",".join(cells))
    return write_text(model_csv_path(out, run_id), "\n".join(lines) + "\n")
