"""The output layer of a λ sweep: command-line values, per-λ files, per-λ records, the Zarr store, the manifest.

numpy and file I/O only: nothing here imports jax, and torch is reached only through ``hessjax.bridges``
(by the caller). Every file is written atomically (:func:`atomic_path`): a temporary ``.tmp-*`` sibling in
the same directory, fsynced, then ``os.replace``-d onto its name, so a reader (or a resumed sweep) sees
either the old file, the whole new one, or nothing.

Layout of ``OUT`` for run id ``ID`` (``L2`` = :func:`lambda_label` of λ)::

    gradients-ID-L2.csv              parameter,gradient            P rows, PyTorch flat order
    Hessian-eigenvalues-ID-L2.csv    eigenvalue                    k rows, largest first
    Hessian-eigenvectors-ID-L2.csv   parameter,v1,...,vk           P rows   (format "csv")
    Hessian-eigenvectors-ID-L2.npy   float32 [P, k], column j = eigenvector j+1   (format "npy")
    Model-ID-L2.pth                  trained weights (written by the caller via hessjax.bridges)
    records/ID-L2.json               per-λ record, written LAST: its presence means "λ finished"
    Model-ID.csv                     one row per finished λ, ascending; rebuilt from the records
    manifest-ID.json                 configuration, anchor SHA-256, versions, per-λ timings
    ID.zarr/                         Zarr v3 store of the whole sweep (:class:`SweepStore`)

Order of writes for one λ (the caller's sweep): per-λ files (CSV/npy/pth) → ``SweepStore.write`` (its
``done`` flag last) → :func:`write_record` → :func:`write_model_csv` and :func:`write_manifest`.
A kill anywhere before the record leaves the λ unfinished, and a resumed sweep recomputes it.

Float formats: float32 arrays are written ``%.9g`` (9 significant digits: reads back bitwise as the same
float32), anything else as float64 ``%.17g`` (reads back bitwise as the same float64).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import secrets
import shutil
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "EIGVEC_FORMATS",
    "MODEL_COLUMNS",
    "SCHEMA_VERSION",
    "TEMP_PREFIX",
    "SweepStore",
    "UsageError",
    "atomic_path",
    "atomic_write",
    "check_config",
    "check_run_id",
    "check_writable",
    "collect_versions",
    "discard_run",
    "bottom_eigenvalues_path",
    "density_path",
    "eigenvalues_path",
    "eigenvectors_path",
    "finished_lambdas",
    "gradients_path",
    "lambda_label",
    "make_record",
    "manifest_path",
    "model_csv_path",
    "parameter_names",
    "parse_lambdas",
    "pth_path",
    "read_manifest",
    "record_path",
    "remove_temp_files",
    "round_lambda",
    "sha256_file",
    "store_path",
    "write_bottom_eigenvalues_csv",
    "write_density_csv",
    "write_eigenvalues_csv",
    "write_eigenvectors",
    "write_gradients_csv",
    "write_manifest",
    "write_model_csv",
    "write_record",
]

SCHEMA_VERSION = 1
TEMP_PREFIX = ".tmp-"
EIGVEC_FORMATS = ("csv", "npy", "none")
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
)
#: Columns appended to ``Model-ID.csv`` when a record's ``extra`` has them (``--trace``, ``--bottom-k``).
OPTIONAL_MODEL_COLUMNS = ("trace", "trace_stderr", "lambda_min", "lambda_min_residual")
_FLOAT_FIELDS = (
    "train_loss", "test_loss", "test_accuracy", "grad_norm", "distance_to_anchor", "max_residual", "seconds"
)
_LIST_FIELDS = ("eigenvalues", "residuals")
_SIG_DIGITS = 12
_LABEL_RE = r"[0-9]+(?:\.[0-9]+)?"  # what lambda_label gives for a finite λ >= 0
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_CSV_BLOCK_ROWS = 8192


class UsageError(ValueError):
    """Bad command-line input or a refused request; the CLI prints ``str(err)`` (one line) and exits 2."""


# --------------------------------------------------------------------------------------------- λ values


def round_lambda(value: float) -> float:
    """``value`` rounded to 12 significant digits (so ``3 * 0.0002`` is ``0.0006``); ``-0.0`` becomes ``0.0``."""
    return float(f"{float(value):.{_SIG_DIGITS}g}") + 0.0


def _parse_number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--lambdas {spec!r}: {what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--lambdas {spec!r}: {what} {text.strip()!r} is not finite")
    if value < 0:
        raise UsageError(f"--lambdas {spec!r}: {what} {text.strip()!r} is negative; λ must be >= 0")
    return value


def parse_lambdas(spec: str) -> np.ndarray:
    """Parse ``--lambdas`` into a float64 array ``[n]``, each value rounded to 12 significant digits.

    Two forms:

    * ``START:STOP:NUM`` — ``NUM`` values from START to STOP inclusive, as ``numpy.linspace(START, STOP, NUM)``
      (descending if START > STOP). ``NUM`` must be an integer >= 1; ``NUM = 1`` requires ``START == STOP``
      (numpy would silently drop STOP; here that is refused as a likely typo).
    * ``A,B,C`` — a comma list (one number alone is a list of one), kept in the user's order.

    The order is returned as given; the sweep runs λ sorted ascending and every table is written ascending.
    Refused with :class:`UsageError`: an empty spec or item, a non-number, NaN/Inf, a negative value,
    a bad ``NUM``, and values that coincide after rounding.
    """
    text = str(spec).strip()
    if not text:
        raise UsageError("--lambdas is empty; give START:STOP:NUM or a comma list such as 0,0.001,0.01")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"--lambdas {spec!r}: expected START:STOP:NUM (three fields), got {len(parts)}")
        start = _parse_number(parts[0], "START", spec)
        stop = _parse_number(parts[1], "STOP", spec)
        num_text = parts[2].strip()
        if not re.fullmatch(r"[+]?[0-9]+", num_text):
            raise UsageError(f"--lambdas {spec!r}: NUM {num_text!r} is not a whole number")
        num = int(num_text)
        if num < 1:
            raise UsageError(f"--lambdas {spec!r}: NUM must be >= 1, got {num}")
        if num == 1 and start != stop:
            raise UsageError(f"--lambdas {spec!r}: NUM=1 with START != STOP; use a single value or START:START:1")
        raw = np.linspace(start, stop, num).tolist()
    else:
        raw = []
        for i, item in enumerate(text.split(",")):
            if not item.strip():
                raise UsageError(f"--lambdas {spec!r}: item {i + 1} is empty")
            raw.append(_parse_number(item, f"item {i + 1}", spec))
    values = np.array([round_lambda(v) for v in raw], dtype=np.float64)
    uniq, counts = np.unique(values, return_counts=True)
    if np.any(counts > 1):
        dups = ", ".join(lambda_label(v) for v in uniq[counts > 1][:5])
        raise UsageError(f"--lambdas {spec!r}: duplicate values after rounding to 12 digits: {dups}")
    return values


def lambda_label(lam: float) -> str:
    """The λ as it appears in file names: ``numpy.format_float_positional(λ, trim='-')``.

    Shortest round-trip digits, never an exponent: ``0``, ``0.0002``, ``0.1``, ``0.00001``.
    """
    return np.format_float_positional(float(lam), trim="-")


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is usable in file names (letters, digits, ``_.+-``; not starting with ``.``/``-``)."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise UsageError(f"--run-id {run_id!r}: use letters, digits and _ . + - (not first: . or -)")
    return run_id


# --------------------------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary name is ``.tmp-<random>-<name>`` (hidden, same suffix as ``path`` so e.g. ``np.save``
    adds nothing). On an exception it is removed and ``path`` is left untouched. A kill leaves at most a
    ``.tmp-*`` file, which no reader takes for a result (see :func:`remove_temp_files`).
    """
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened/fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` to write the file, then move it atomically onto ``path``; return ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_temp_files(out: str | os.PathLike, older_than_s: float = 24 * 3600.0) -> list[Path]:
    """Remove ``.tmp-*`` leftovers (of killed writers) in ``out`` and ``out/records`` older than ``older_than_s``.

    The age threshold protects temporaries that another live process (another host) is writing now.
    """
    import time

    now = time.time()
    removed = []
    for directory in (Path(out), Path(out) / "records"):
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.is_file() and now - p.stat().st_mtime >= older_than_s:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` (and parents) if needed and check a file can be written there; else :class:`UsageError`."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--out {str(out)!r} exists and is not a directory") from None
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} cannot be created: {err.strerror or err}") from None
    if not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is not a directory")
    probe = out / f"{TEMP_PREFIX}{secrets.token_hex(4)}-probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} is not writable: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return out


# --------------------------------------------------------------------------------------------- paths


def gradients_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"gradients-{run_id}-{lambda_label(lam)}.csv"


def eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-eigenvalues-{run_id}-{lambda_label(lam)}.csv"


def eigenvectors_path(out, run_id: str, lam: float, fmt: str = "csv") -> Path:
    if fmt not in ("csv", "npy"):
        raise ValueError(f"fmt={fmt!r}: expected 'csv' or 'npy'")
    return Path(out) / f"Hessian-eigenvectors-{run_id}-{lambda_label(lam)}.{fmt}"


def density_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-density-{run_id}-{lambda_label(lam)}.csv"


def bottom_eigenvalues_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / f"Hessian-bottom-eigenvalues-{run_id}-{lambda_label(lam)}.csv"


def pth_path(out, run_id: str, lam: float) -> Path:
    """Where the caller writes the trained weights of λ (``hessjax.bridges.save_state_dict``)."""
    return Path(out) / f"model_weights-{run_id}-{lambda_label(lam)}.pth"


def model_csv_path(out, run_id: str) -> Path:
    return Path(out) / f"Model-{run_id}.csv"


def record_path(out, run_id: str, lam: float) -> Path:
    return Path(out) / "records" / f"{run_id}-{lambda_label(lam)}.json"


def manifest_path(out, run_id: str) -> Path:
    return Path(out) / f"manifest-{run_id}.json"


def store_path(out, run_id: str) -> Path:
    return Path(out) / f"{run_id}.zarr"


# --------------------------------------------------------------------------------------------- CSV / npy


def parameter_names(shapes: Mapping[str, Sequence[int]]) -> np.ndarray:
    """``[P]`` names in PyTorch flat order: each state-dict key repeated over its tensor's ``prod(shape)``.

    ``shapes`` is ordered like the anchor's state dict, e.g. ``{k: tuple(v.shape) for k, v in sd.items()}``.
    """
    keys = list(shapes)
    sizes = [int(np.prod(shapes[k], dtype=np.int64)) for k in keys]
    return np.repeat(np.array(keys, dtype=object), sizes)


def _float_format(dtype) -> tuple[str, np.dtype]:
    return ("%.9g", np.dtype(np.float32)) if np.dtype(dtype) == np.float32 else ("%.17g", np.dtype(np.float64))


def _check_names(names, n: int) -> np.ndarray:
    names = np.asarray(names, dtype=object)
    if names.shape != (n,):
        raise ValueError(f"parameter names: expected shape ({n},), got {names.shape}")
    bad = [s for s in set(names.tolist()) if not isinstance(s, str) or any(c in s for c in ',"\n\r')]
    if bad:
        raise ValueError(f"parameter names must be strings without commas, quotes or newlines: {bad[:3]}")
    return names


def _write_table(path: Path, header: str, names: np.ndarray | None, values: np.ndarray) -> Path:
    """Write ``header`` then one row per ``values[i]`` (``[n, m]``), prefixed by ``names[i]`` if given."""
    fmt, dtype = _float_format(values.dtype)
    values = np.asarray(values, dtype=dtype)
    n, m = values.shape
    row = ("%s," if names is not None else "") + ",".join([fmt] * m) + "\n"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(header + "\n")
        for lo in range(0, n, _CSV_BLOCK_ROWS):
            block = values[lo : lo + _CSV_BLOCK_ROWS].astype(np.float64)  # float32 -> float64 is exact
            cells = np.empty((block.shape[0], m + (names is not None)), dtype=object)
            if names is not None:
                cells[:, 0] = names[lo : lo + _CSV_BLOCK_ROWS]
                cells[:, 1:] = block
            else:
                cells[:] = block
            f.write((row * block.shape[0]) % tuple(cells.ravel().tolist()))  # one C-level format per block
    return path


def write_gradients_csv(out, run_id: str, lam: float, names, gradient) -> Path:
    """``gradients-ID-L2.csv``: header ``parameter,gradient``, ``P`` rows in PyTorch flat order.

    ``names`` ``[P]`` (see :func:`parameter_names`), ``gradient`` ``[P]`` (float32 -> ``%.9g``).
    """
    gradient = np.asarray(gradient)
    if gradient.ndim != 1:
        raise ValueError(f"gradient: expected shape [P], got {gradient.shape}")
    names = _check_names(names, gradient.shape[0])
    return _write_table(gradients_path(out, run_id, lam), "parameter,gradient", names, gradient[:, None])


def _check_descending(eigenvalues: np.ndarray) -> None:
    finite = eigenvalues[np.isfinite(eigenvalues)]
    if np.any(np.diff(finite) > 0):
        raise ValueError("eigenvalues must be ordered largest first")


def write_eigenvalues_csv(out, run_id: str, lam: float, eigenvalues) -> Path:
    """``Hessian-eigenvalues-ID-L2.csv``: header ``eigenvalue``, ``k`` rows, largest first (as given; checked)."""
    eigenvalues = np.asarray(eigenvalues)
    if eigenvalues.ndim != 1:
        raise ValueError(f"eigenvalues: expected shape [k], got {eigenvalues.shape}")
    _check_descending(eigenvalues)
    return _write_table(eigenvalues_path(out, run_id, lam), "eigenvalue", None, eigenvalues[:, None])


def write_eigenvectors(out, run_id: str, lam: float, names, eigenvectors, fmt: str = "csv") -> Path | None:
    """Write the eigenvectors of λ; ``eigenvectors`` is ``[k, P]``: row ``j`` is eigenvector ``j+1``.

    * ``fmt="csv"``: ``Hessian-eigenvectors-ID-L2.csv``, header ``parameter,v1,...,vk``, ``P`` rows:
      column ``vj`` is eigenvector ``j`` (the transpose of the argument, as in the original pipeline).
    * ``fmt="npy"``: ``Hessian-eigenvectors-ID-L2.npy``, C-order ``[P, k]`` with the argument's dtype:
      the same layout as the CSV (column ``j`` = eigenvector ``j+1``, as ``numpy.linalg.eigh``).
    * ``fmt="none"``: nothing; returns ``None``.
    """
    if fmt not in EIGVEC_FORMATS:
        raise UsageError(f"--eigenvectors {fmt!r}: expected one of {', '.join(EIGVEC_FORMATS)}")
    if fmt == "none":
        return None
    vectors = np.asarray(eigenvectors)
    n = len(names)
    if vectors.ndim != 2 or vectors.shape[1] != n:
        raise ValueError(f"eigenvectors: expected shape [k, P={n}] (row j = eigenvector j+1), got {vectors.shape}")
    path = eigenvectors_path(out, run_id, lam, fmt)
    if fmt == "npy":
        return atomic_write(path, lambda tmp: np.save(tmp, np.ascontiguousarray(vectors.T)))
    names = _check_names(names, n)
    header = "parameter," + ",".join(f"v{j + 1}" for j in range(vectors.shape[0]))
    return _write_table(path, header, names, vectors.T)


def write_density_csv(out, run_id: str, lam: float, nodes, weights) -> Path:
    """``Hessian-density-ID-L2.csv``: header ``probe,node,weight``, one row per SLQ node of each probe.

    ``nodes``/``weights`` ``[probes, m]`` (:class:`hessjax.spectral.SLQResult`), written with
    ``%.17g`` whatever their dtype.
    """
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    if nodes.ndim != 2 or nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape}: expected the same shape [probes, m]")
    probe = np.repeat(np.arange(nodes.shape[0]), nodes.shape[1])
    values = np.stack([nodes.ravel(), weights.ravel()], axis=1).astype(np.float64)
    return _write_table(density_path(out, run_id, lam), "probe,node,weight", probe, values)


def write_bottom_eigenvalues_csv(out, run_id: str, lam: float, eigenvalues, residuals) -> Path:
    """``Hessian-bottom-eigenvalues-ID-L2.csv``: header ``eigenvalue,residual``, smallest first (as given)."""
    values = np.stack([np.asarray(eigenvalues), np.asarray(residuals)], axis=1)
    return _write_table(bottom_eigenvalues_path(out, run_id, lam), "eigenvalue,residual", None, values)


# --------------------------------------------------------------------------------------------- records


def _jsonable(x):
    """Plain JSON values: numpy scalars/arrays to Python, non-finite floats to ``null`` (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
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


def _nan(x) -> float:
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
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The record of one finished λ (a plain dict; NaN where a value is unknown, e.g. losses of a diverged λ).

    ``eigenvalues``, ``residuals`` ``[k]`` (largest eigenvalue first), ``eig_converged`` ``[k]`` bool;
    ``max_residual`` (NaN-ignoring max, NaN if none) and ``num_converged_eigs`` are derived from them.
    ``timings`` is e.g. ``{"train": s, "hessian": s, "write": s}``; ``extra`` any JSON-able details.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    residuals = np.asarray(residuals, dtype=np.float64).reshape(-1)
    eig_converged = np.asarray(eig_converged, dtype=bool).reshape(-1)
    _check_descending(eigenvalues)
    finite_res = residuals[~np.isnan(residuals)]
    return {
        "lambda": round_lambda(lam),
        "label": lambda_label(round_lambda(lam)),
        "train_loss": float(train_loss),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "epochs": int(epochs),
        "converged": bool(converged),
        "diverged": bool(diverged),
        "grad_norm": float(grad_norm),
        "distance_to_anchor": float(distance_to_anchor),
        "max_residual": float(finite_res.max()) if finite_res.size else math.nan,
        "num_converged_eigs": int(eig_converged.sum()),
        "seconds": float(seconds),
        "eigenvalues": eigenvalues.tolist(),
        "residuals": residuals.tolist(),
        "eig_converged": eig_converged.tolist(),
        "timings": {str(k): float(v) for k, v in (timings or {}).items()},
        "extra": dict(extra or {}),
    }


def _decode_record(rec: dict) -> dict:
    for key in _FLOAT_FIELDS:
        rec[key] = _nan(rec.get(key))
    for key in _LIST_FIELDS:
        rec[key] = [_nan(v) for v in rec.get(key, [])]
    rec["timings"] = {k: _nan(v) for k, v in rec.get("timings", {}).items()}
    return rec


def write_record(out, run_id: str, record: Mapping) -> Path:
    """Write ``records/ID-L2.json`` atomically; call it LAST for a λ, after its files and its store write.

    Strict JSON: non-finite floats are stored as ``null`` and read back as NaN.
    """
    path = record_path(out, run_id, record["lambda"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_text(path, json.dumps(_jsonable(dict(record)), indent=1, allow_nan=False) + "\n")


def finished_lambdas(out, run_id: str) -> dict[float, dict]:
    """``{λ: record}`` of every finished λ of ``run_id`` in ``out``, ascending in λ.

    A record that cannot be read (should not happen: records are written atomically) is warned about and
    treated as unfinished, so the sweep recomputes that λ.
    """
    directory = Path(out) / "records"
    if not directory.is_dir():
        return {}
    pattern = re.compile(rf"{re.escape(run_id)}-({_LABEL_RE})\.json")
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
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))  # shortest round-trip digits; "nan" / "inf"


def write_model_csv(out, run_id: str, records: Mapping[float, Mapping] | None = None) -> Path:
    """Rebuild ``Model-ID.csv`` (atomically, never appended) from the records, one row per λ ascending.

    Header: ``lambda,train_loss,test_loss,test_accuracy,epochs,converged,diverged,grad_norm,
    distance_to_anchor,max_residual,num_converged_eigs,seconds``, then those of
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
    return _write_text(model_csv_path(out, run_id), "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- manifest


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
    return {k: v for k, v in _jsonable(dict(config)).items() if k not in set(ignore)}


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
    text = json.dumps(_jsonable(manifest), indent=1, allow_nan=False) + "\n"
    return _write_text(manifest_path(out, run_id), text)


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
    diffs = _diff_keys(previous.get("config", {}), _normalise(config, ignore))
    old_sha = previous.get("anchor_sha256")
    if anchor_sha256 is not None and old_sha is not None and old_sha != anchor_sha256:
        diffs.append("anchor_sha256")
    if diffs:
        shown = ", ".join(diffs[:10]) + (f" and {len(diffs) - 10} more" if len(diffs) > 10 else "")
        raise UsageError(
            f"run {run_id!r} in {str(out)!r} was made with a different configuration (differs: {shown}); "
            "use another --run-id, or --overwrite to discard its results"
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

    unlink_matching(out / "records", re.compile(rf"{rid}-{_LABEL_RE}\.json"))
    unlink_matching(out, re.compile(rf"manifest-{rid}\.json|Model-{rid}\.csv"))
    unlink_matching(
        out,
        re.compile(
            rf"(?:gradients|Hessian-eigenvalues)-{rid}-{_LABEL_RE}\.csv"
            rf"|Hessian-eigenvectors-{rid}-{_LABEL_RE}\.(?:csv|npy)|model_weights-{rid}-{_LABEL_RE}\.pth"
            rf"|Hessian-(?:density|bottom-eigenvalues)-{rid}-{_LABEL_RE}\.csv"
        ),
    )
    store = store_path(out, run_id)
    if store.is_dir():
        shutil.rmtree(store)
        removed.append(store)
    return removed


# --------------------------------------------------------------------------------------------- Zarr store

# name -> (dtype, fill, trailing dims); every array's first dimension is "lambda" with chunk size 1.
_SCALARS = {
    "train_loss": ("float64", np.nan),
    "test_loss": ("float64", np.nan),
    "test_accuracy": ("float64", np.nan),
    "grad_norm": ("float64", np.nan),
    "distance_to_anchor": ("float64", np.nan),
    "max_residual": ("float64", np.nan),
    "seconds": ("float64", np.nan),
    "epochs": ("int32", -1),
    "num_converged_eigs": ("int32", -1),
    "converged": ("bool", False),
    "diverged": ("bool", False),
}
_LAMBDA_COORD_CHUNK = 4096
_PER_EIG = {"eigenvalues": ("float64", np.nan), "residuals": ("float64", np.nan), "eig_converged": ("bool", False)}
_PER_PARAM = {"gradient": ("float32", np.nan), "weights": ("float32", np.nan)}


def _quiet_consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(str(path))


class SweepStore:
    """The whole sweep in one Zarr v3 store, ``xarray.open_zarr(path)``-readable.

    Arrays (dimension names in brackets; every array is chunked 1 along ``lambda``, whole along the rest,
    so writers of different λ never touch the same chunk file — several processes or hosts may write
    different λ at once without coordination; the ``lambda`` coordinate itself, written only by the
    coordinator, is chunked 4096)::

        lambda [lambda] float64 (coordinate)           eig [eig] int32 = 1..k (coordinate)
        train_loss, test_loss, test_accuracy, grad_norm, distance_to_anchor, max_residual, seconds
                                     [lambda] float64, NaN until written
        epochs, num_converged_eigs   [lambda] int32, -1 until written
        converged, diverged          [lambda] bool, False until written
        eigenvalues, residuals       [lambda, eig] float64 NaN;   eig_converged [lambda, eig] bool
        gradient, weights            [lambda, parameter] float32 NaN
        eigenvectors                 [lambda, eig, parameter] float32 NaN (row j = eigenvector j+1)
        done                         [lambda] bool: written LAST by :meth:`write`; only rows with done
                                     are complete (a writer killed mid-λ leaves done False)

    λ are stored in the order they were added (a grid extension appends); use :meth:`index` or
    ``ds.sortby("lambda")``. Only the coordinating process calls :meth:`create` / :meth:`ensure_lambdas`
    (they change metadata and re-consolidate it), before workers write.
    """

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        group = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        self.n_params = int(group.attrs["n_params"])
        self.k = int(group.attrs["k"])

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        lambdas,
        *,
        n_params: int,
        k: int,
        attrs: Mapping[str, Any] | None = None,
        extras: Mapping[str, tuple] | None = None,
    ) -> "SweepStore":
        """Create the store for ``lambdas`` (or open an existing one, check ``n_params``/``k``, and extend it).

        ``extras`` declares optional per-λ arrays, ``{name: (dtype, tail_shape, tail_dims)}`` (e.g.
        ``{"trace": ("float64", (), ())}``), NaN-filled, chunked 1 along ``lambda`` like the rest, and
        written by :meth:`write`'s ``extras``; arrays missing from an existing store are added.
        """
        import zarr

        path = Path(path)
        if (path / "zarr.json").exists():
            store = cls(path)
            if (store.n_params, store.k) != (int(n_params), int(k)):
                raise UsageError(
                    f"{path} holds P={store.n_params}, k={store.k}, not P={n_params}, k={k}; "
                    "use another --run-id or --overwrite"
                )
            store._add_extras(extras or {})
            store.ensure_lambdas(lambdas, _force_consolidate=bool(extras))
            return store
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.update(
            _jsonable({"schema_version": SCHEMA_VERSION, "n_params": int(n_params), "k": int(k), **(attrs or {})})
        )
        n0 = 0

        def new(name, dtype, fill, tail_shape, tail_dims, lambda_chunk=1):
            group.create_array(
                name,
                shape=(n0, *tail_shape),
                chunks=(lambda_chunk, *[max(1, s) for s in tail_shape]),
                dtype=dtype,
                fill_value=fill,
                dimension_names=("lambda", *tail_dims),
            )

        new("lambda", "float64", np.nan, (), (), lambda_chunk=_LAMBDA_COORD_CHUNK)  # written by the coordinator only
        for name, (dtype, fill) in _SCALARS.items():
            new(name, dtype, fill, (), ())
        for name, (dtype, fill) in _PER_EIG.items():
            new(name, dtype, fill, (k,), ("eig",))
        for name, (dtype, fill) in _PER_PARAM.items():
            new(name, dtype, fill, (n_params,), ("parameter",))
        new("eigenvectors", "float32", np.nan, (k, n_params), ("eig", "parameter"))
        new("done", "bool", False, (), ())
        eig = group.create_array("eig", shape=(k,), chunks=(max(1, k),), dtype="int32", dimension_names=("eig",))
        eig[:] = np.arange(1, k + 1, dtype=np.int32)
        store = cls(path)
        store._add_extras(extras or {})
        store.ensure_lambdas(lambdas, _force_consolidate=True)
        return store

    def _add_extras(self, extras: Mapping[str, tuple]) -> None:
        group = self._group()
        n = group["lambda"].shape[0]
        for name, (dtype, tail_shape, tail_dims) in extras.items():
            if name in group:
                continue
            fill = False if np.dtype(dtype) == np.bool_ else (-1 if np.issubdtype(np.dtype(dtype), np.integer)
                                                                 else np.nan)
            group.create_array(name, shape=(n, *tail_shape), chunks=(1, *[max(1, d) for d in tail_shape]),
                               dtype=dtype, fill_value=fill, dimension_names=("lambda", *tail_dims))

    def _group(self, mode: str = "r+"):
        import zarr

        return zarr.open_group(str(self.path), mode=mode, use_consolidated=False)

    @property
    def lambdas(self) -> np.ndarray:
        """``[n]`` float64, in storage order (fresh from disk)."""
        return np.asarray(self._group("r")["lambda"][:], dtype=np.float64)

    def ensure_lambdas(self, values, *, _force_consolidate: bool = False) -> np.ndarray:
        """Append the λ of ``values`` not yet in the store (all arrays grow along ``lambda``, new rows are
        fill/NaN, done False); return the ``[len(values)]`` indices of ``values``. Existing data is kept.

        Coordinator only. Idempotent, and a run killed half-way is repaired by calling it again.
        """
        values = [round_lambda(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64))]
        group = self._group()
        current = [round_lambda(v) for v in group["lambda"][:]]
        known = set(current)
        new = [v for v in dict.fromkeys(values) if v not in known]
        target = len(current) + len(new)
        names = [name for name, _ in group.arrays() if name not in ("lambda", "eig")]
        stale = any(group[name].shape[0] != target for name in names)
        if new or stale:
            for name in names:  # data arrays first, the coordinate last
                arr = group[name]
                if arr.shape[0] != target:
                    arr.resize((target, *arr.shape[1:]))
            lam = group["lambda"]
            lam.resize((target,))
            if new:
                lam[len(current) :] = np.asarray(new, dtype=np.float64)
        if new or stale or _force_consolidate:
            _quiet_consolidate(self.path)
        return np.array([self.index(v, _lambdas=current + new) for v in values], dtype=np.int64)

    def index(self, lam: float, *, _lambdas=None) -> int:
        """Position of λ along ``lambda`` (matched after 12-digit rounding); ``KeyError`` if absent."""
        lambdas = [round_lambda(v) for v in (self.lambdas if _lambdas is None else _lambdas)]
        try:
            return lambdas.index(round_lambda(lam))
        except ValueError:
            raise KeyError(f"λ={lambda_label(lam)} is not in {self.path}") from None

    def write(self, record: Mapping, *, gradient=None, weights=None, eigenvectors=None,
              extras: Mapping[str, Any] | None = None) -> int:
        """Write one finished λ: ``done`` False, the scalars and per-eigenvalue values of ``record``
        (:func:`make_record`), ``gradient``/``weights`` ``[P]``, ``eigenvectors`` ``[k, P]`` (row j =
        eigenvector j+1; ``None`` leaves NaN, e.g. for a diverged λ), then ``done`` True. Returns the index.

        Fewer than ``k`` eigenvalues are padded with NaN. Rewriting a λ is allowed (resume after a kill).
        """
        group = self._group()
        i = self.index(record["lambda"], _lambdas=group["lambda"][:])
        group["done"][i] = False
        for name, (dtype, _) in _SCALARS.items():
            value = record[name]
            group[name][i] = np.asarray(_nan(value) if dtype == "float64" else value, dtype=dtype)
        for name, (dtype, fill) in _PER_EIG.items():
            row = np.full(self.k, fill, dtype=dtype)
            got = np.asarray(record.get(name, []), dtype=dtype).reshape(-1)[: self.k]
            row[: got.size] = got
            group[name][i] = row
        for name, value, shape in (
            ("gradient", gradient, (self.n_params,)),
            ("weights", weights, (self.n_params,)),
            ("eigenvectors", eigenvectors, (self.k, self.n_params)),
        ):
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float32)
            if value.shape != shape:
                short = value.ndim == 2 and value.shape[0] < self.k and value.shape[1] == self.n_params
                if name == "eigenvectors" and short:
                    padded = np.full(shape, np.nan, dtype=np.float32)
                    padded[: value.shape[0]] = value
                    value = padded
                else:
                    raise ValueError(f"{name}: expected shape {list(shape)}, got {list(value.shape)}")
            group[name][i] = value
        for name, value in (extras or {}).items():
            group[name][i] = np.asarray(value, dtype=group[name].dtype)
        group["done"][i] = True
        return i

    def done(self) -> np.ndarray:
        """``[n]`` bool in storage order."""
        return np.asarray(self._group("r")["done"][:], dtype=bool)

    def done_lambdas(self) -> np.ndarray:
        """The λ whose row is complete, ascending."""
        return np.sort(self.lambdas[self.done()])
