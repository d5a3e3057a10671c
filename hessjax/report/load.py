"""Reading a sweep: the finished λ of one run from its Zarr store or its per-λ CSV/npy files.

Besides θ (the eigenvalues of ``∇²L_eff``) a :class:`SweepData` carries μ = θ − 2λ (the data
Hessian's): the store's ``data_eigenvalues`` or the certificates CSV's ``data_eigenvalue`` where the
sweep wrote them, else ``θ − 2λ`` in float64 (the torch pipeline's output); the per-pair residuals,
error bounds and converged flags where written; the bottom-k eigenvalues with their residuals and
flags; and the SLQ density broadened on μ (the stored nodes, which are θ-nodes, less 2λ).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .. import results
from ..results import UsageError, lambda_label
from ..density import slq_to_density

#: Optional arrays of the store that get their own plot: name -> dimension names.
EXTRA_ARRAYS = {
    "trace": ("lambda",),  # Hutchinson estimate of tr ∇²L_eff
    "trace_stderr": ("lambda",),  # its standard error
    "density": ("lambda", "grid"),  # SLQ spectral density on density_grid, integrating to 1
    "density_grid": ("grid",),  # the grid (coordinate), ascending
    "bottom_eigenvalues": ("lambda", "bottom"),  # smallest eigenvalues of ∇²L_eff (θ), ascending
    "bottom_residuals": ("lambda", "bottom"),  # their residuals
    "bottom_converged": ("lambda", "bottom"),  # 1.0 where the pair met the solver's tolerance, else 0.0
    "ggn_eigenvalues": ("lambda", "ggn"),  # top k of the Gauss–Newton part G of the data Hessian (--ggn)
    "ggn_residuals": ("lambda", "ggn"),
    "ggn_converged": ("lambda", "ggn"),
}
METRICS = ("train_loss", "test_loss", "test_accuracy", "grad_norm", "distance_to_anchor", "max_residual", "epochs",
           "best_epoch", "converged", "diverged", "gradient_overlap", "displacement_overlap", "lambda_c")
_LABEL_RE = r"[0-9]+(?:\.[0-9]+)?"


@dataclasses.dataclass
class SweepData:
    """The finished λ of one run, ascending; eigenvectors are read lazily, one λ at a time."""

    run_id: str
    source: str  # "zarr" or "csv"
    lambdas: np.ndarray  # [n] float64 ascending, finished λ only
    metrics: dict[str, np.ndarray]  # name -> [n] float64 (NaN where unknown), names from METRICS
    eigenvalues: np.ndarray  # [n, k] float64, largest first, NaN-padded
    total_lambdas: int  # λ in the grid so far (finished or not), as far as the files tell
    n_params: int | None = None
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # EXTRA_ARRAYS found, rows as lambdas
    vector_reader: Callable[[int], np.ndarray | None] | None = None  # i -> [k, P] rows, or None
    # The certificates, [n, k] like eigenvalues, or None where the sweep did not write them:
    data_eigenvalues: np.ndarray | None = None  # μ as written (store data_eigenvalues / certificates CSV)
    residuals: np.ndarray | None = None  # ‖Hv − μv‖ of the written unit eigenvector
    error_bounds: np.ndarray | None = None  # bound on |μ − μ_true|
    eig_converged: np.ndarray | None = None  # bool: the pair met the solver's tolerance
    num_classes: int | None = None  # K, the model's outputs (store attribute or manifest), where known
    weight_reader: Callable[[int], np.ndarray] | None = None  # i -> [P] weights (the store only), or None

    def metric(self, name: str) -> np.ndarray:
        """``[n]`` values of metric ``name``, NaN where the sweep did not write it."""
        return self.metrics.get(name, np.full(self.lambdas.size, np.nan))

    @property
    def k(self) -> int:
        return int(self.eigenvalues.shape[1])

    @property
    def mu(self) -> np.ndarray:
        """``[n, k]`` data-Hessian eigenvalues μ: as written by the sweep where it did, else ``θ − 2λ`` (float64)."""
        shifted = np.asarray(self.eigenvalues, np.float64) - 2.0 * np.asarray(self.lambdas, np.float64)[:, None]
        if self.data_eigenvalues is None or self.data_eigenvalues.shape != shifted.shape:
            return shifted
        return np.where(np.isfinite(self.data_eigenvalues), self.data_eigenvalues, shifted)

    @property
    def mu_source(self) -> str:
        """Where :attr:`mu` comes from: ``"written"`` (by the sweep) or ``"θ − 2λ"`` (computed here)."""
        written = self.data_eigenvalues is not None and self.data_eigenvalues.shape == self.eigenvalues.shape
        return "written" if written and np.isfinite(self.data_eigenvalues).any() else "θ − 2λ"

    def unconverged(self) -> list[dict]:
        """Every pair flagged as not converged, top-k then bottom-k, ascending λ:
        ``{"lambda", "kind" ("top"/"bottom"), "index" (1-based), "eigenvalue" (θ), "mu", "residual",
        "error_bound"}``. A pair with a NaN eigenvalue (not found, diverged λ) is not listed; without
        flags (no certificates) nothing is."""
        out = []
        lam = self.lambdas
        if self.eig_converged is not None:
            mu = self.mu
            for i, j in zip(*np.nonzero(~np.asarray(self.eig_converged, bool) & np.isfinite(self.eigenvalues))):
                out.append({"lambda": float(lam[i]), "kind": "top", "index": int(j) + 1,
                            "eigenvalue": float(self.eigenvalues[i, j]), "mu": float(mu[i, j]),
                            "residual": _at(self.residuals, i, j), "error_bound": _at(self.error_bounds, i, j)})
        if "bottom_converged" in self.extras and "bottom_eigenvalues" in self.extras:
            bot = np.atleast_2d(self.extras["bottom_eigenvalues"])
            flags = np.atleast_2d(self.extras["bottom_converged"])
            res = self.extras.get("bottom_residuals")
            for i, j in zip(*np.nonzero((flags < 0.5) & np.isfinite(bot))):
                out.append({"lambda": float(lam[i]), "kind": "bottom", "index": int(j) + 1,
                            "eigenvalue": float(bot[i, j]), "mu": float(bot[i, j] - 2.0 * lam[i]),
                            "residual": _at(None if res is None else np.atleast_2d(res), i, j),
                            "error_bound": math.nan})
        out.sort(key=lambda r: (r["lambda"], r["kind"] != "top", r["index"]))
        return out

    @property
    def has_flags(self) -> bool:
        """Whether the sweep wrote converged flags (top-k certificates or bottom-k flags)."""
        return self.eig_converged is not None or "bottom_converged" in self.extras

    def eigenvectors(self, i: int) -> np.ndarray | None:
        """``[k, P]`` float32 eigenvectors of the i-th finished λ (row j = eigenvector j+1), or ``None``
        when there are none (not written, or NaN as for a diverged λ)."""
        if self.vector_reader is None:
            return None
        vecs = self.vector_reader(i)
        if vecs is None or vecs.ndim != 2 or vecs.shape[0] == 0 or not np.any(np.isfinite(vecs)):
            return None
        bad = ~np.all(np.isfinite(vecs), axis=1)  # NaN padding of missing pairs: zero, so they match nothing
        if bad.any():
            vecs = np.where(bad[:, None], 0, vecs).astype(vecs.dtype)
        return vecs


def _at(values: np.ndarray | None, i: int, j: int) -> float:
    return math.nan if values is None else float(values[i, j])


def density_on_mu(extras: dict[str, np.ndarray], lambdas: np.ndarray) -> dict[str, np.ndarray]:
    """A stored ``density`` over θ on ``density_grid`` re-gridded onto μ = θ − 2λ (linear interpolation,
    zero outside the stored grid), renormalised to integrate to 1 per λ."""
    grid, dens = np.asarray(extras["density_grid"], np.float64), np.atleast_2d(extras["density"])
    lambdas = np.asarray(lambdas, np.float64)
    mu_grid = np.linspace(grid[0] - 2.0 * float(lambdas.max(initial=0.0)), grid[-1], grid.size)
    out = np.full((dens.shape[0], mu_grid.size), np.nan)
    for t, row in enumerate(dens):
        if np.isfinite(row).all():
            out[t] = np.interp(mu_grid + 2.0 * lambdas[t], grid, row, left=0.0, right=0.0)
            total = float(np.sum(np.diff(mu_grid) * (out[t, 1:] + out[t, :-1]) / 2))
            out[t] /= total if total > 0 else 1.0
    return {"density": out, "density_grid": mu_grid}


def find_run_ids(out: str | Path) -> list[str]:
    """Run ids with a store, a ``Model-ID.csv`` or eigenvalue files in ``out``, sorted."""
    out = Path(out)
    ids = set()
    for p in out.iterdir():
        name = p.name
        if name.startswith(results.TEMP_PREFIX):
            continue
        if name.endswith(".zarr") and (p / "zarr.json").is_file():
            ids.add(name[: -len(".zarr")])
        elif m := re.fullmatch(r"Model-(.+)\.csv", name):
            ids.add(m.group(1))
        elif m := re.fullmatch(rf"Hessian-eigenvalues-(.+)-{_LABEL_RE}\.csv", name):
            ids.add(m.group(1))
    return sorted(ids)


def _resolve(out: str | Path, run_id: str | None) -> tuple[Path, str]:
    out = Path(out)
    if not out.exists():
        raise UsageError(f"{str(out)!r} does not exist")
    if not out.is_dir():
        raise UsageError(f"{str(out)!r} is not a directory")
    ids = find_run_ids(out)
    if run_id is None:
        if not ids:
            raise UsageError(f"{str(out)!r} holds no sweep results (no ID.zarr, Model-ID.csv or eigenvalue files)")
        if len(ids) > 1:
            raise UsageError(f"{str(out)!r} holds several runs ({', '.join(ids)}); choose one with --id")
        return out, ids[0]
    if run_id not in ids:
        found = f" (found: {', '.join(ids)})" if ids else ""
        raise UsageError(f"{str(out)!r} holds no results of run {run_id!r}{found}")
    return out, run_id


def load_sweep(out: str | Path, run_id: str | None = None, *, source: str = "auto") -> SweepData:
    """The finished part of run ``run_id`` (default: the only run) in ``out``.

    ``source``: ``"zarr"`` (the store), ``"csv"`` (the per-λ files) or ``"auto"`` (the store if present).
    Raises :class:`UsageError` for a missing/empty directory, an ambiguous or unknown id, or no finished λ.
    """
    if source not in ("auto", "zarr", "csv"):
        raise UsageError(f"--source {source!r}: expected auto, zarr or csv")
    out, run_id = _resolve(out, run_id)
    store = results.store_path(out, run_id)
    has_store = (store / "zarr.json").is_file()
    if source == "zarr" and not has_store:
        raise UsageError(f"{str(store)!r} is not a Zarr store")
    data = _load_zarr(store, run_id) if has_store and source != "csv" else _load_files(out, run_id)
    if data.lambdas.size == 0:
        raise UsageError(f"run {run_id!r} in {str(out)!r} has no finished λ yet")
    return data


def _load_zarr(path: Path, run_id: str) -> SweepData:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)  # fresh metadata mid-sweep
        lam = np.asarray(group["lambda"][:], np.float64)
        done = np.asarray(group["done"][:], bool)
    except (KeyError, ValueError, OSError) as err:
        raise UsageError(f"{str(path)!r} is not a readable sweep store: {err}") from None
    n = min(lam.size, done.size)  # the coordinate grows last when the grid is extended
    rows = np.flatnonzero(done[:n] & np.isfinite(lam[:n]))
    rows = rows[np.argsort(lam[rows], kind="stable")]
    names = set(group.array_keys())

    def take(name: str) -> np.ndarray:
        return np.asarray(group[name][:n])[rows]

    metrics = {m: take(m).astype(np.float64) for m in METRICS if m in names}
    eigenvalues = take("eigenvalues").astype(np.float64) if "eigenvalues" in names else np.zeros((rows.size, 0))
    certificates = {name: (take(name).astype(bool if name == "eig_converged" else np.float64)
                           if name in names else None)
                    for name in ("data_eigenvalues", "residuals", "error_bounds", "eig_converged")}
    extras = {}
    for name, dims in EXTRA_ARRAYS.items():
        if name in names:
            extras[name] = (take(name) if dims[0] == "lambda" else np.asarray(group[name][:])).astype(np.float64)
    if {"slq_nodes", "slq_weights"} <= names and rows.size:  # θ-nodes: broadened on μ = θ − 2λ
        extras.update(slq_to_density(take("slq_nodes") - 2.0 * lam[rows][:, None, None], take("slq_weights")))
    elif "density" in extras and "density_grid" in extras and rows.size:
        extras.update(density_on_mu(extras, lam[rows]))
    reader = None
    if "eigenvectors" in names:
        vectors = group["eigenvectors"]

        def reader(i: int) -> np.ndarray:
            return np.asarray(vectors[int(rows[i])])

    weights = None
    if "weights" in names:
        stored_weights = group["weights"]

        def weights(i: int) -> np.ndarray:
            return np.asarray(stored_weights[int(rows[i])])

    n_params = group.attrs.get("n_params")
    n_params = None if n_params is None else int(n_params)
    classes = group.attrs.get("num_classes") or _manifest_classes(path.parent, run_id)
    return SweepData(run_id, "zarr", lam[rows], metrics, eigenvalues, int(n), n_params, extras, reader,
                     **certificates, num_classes=None if classes is None else int(classes), weight_reader=weights)


def _manifest_classes(out: Path, run_id: str) -> int | None:
    """The model's number of classes as the sweep's manifest records it (None: not recorded)."""
    try:
        manifest = results.read_manifest(out, run_id)
    except UsageError:
        return None
    classes = ((manifest or {}).get("extra") or {}).get("model", {}).get("num_classes")
    return None if classes is None else int(classes)


def _parse_cell(text: str) -> float:
    text = text.strip()
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_model_csv(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return np.zeros(0), {}
    key = next((c for c in ("lambda", "L2", "l2", "lam") if c in rows[0]), None)
    if key is None:
        raise UsageError(f"{str(path)!r} has no lambda column")
    lams = np.array([_parse_cell(r[key]) for r in rows])
    metrics = {m: np.array([_parse_cell(r[m]) for r in rows]) for m in METRICS if m in rows[0]}
    return lams, metrics


def _files_lambdas(out: Path, run_id: str) -> dict[float, str]:
    pattern = re.compile(rf"Hessian-eigenvalues-{re.escape(run_id)}-({_LABEL_RE})\.csv")
    found = {}
    for p in out.iterdir():
        if m := pattern.fullmatch(p.name):
            found[results.round_lambda(float(m.group(1)))] = m.group(1)
    return found


def _load_files(out: Path, run_id: str) -> SweepData:
    """Model-ID.csv (its rows are the finished λ), else the records, else the eigenvalue files present."""
    on_disk = _files_lambdas(out, run_id)
    model = _read_model_csv(results.model_csv_path(out, run_id))
    if model is not None:
        lams, metrics = model
    elif records := results.finished_lambdas(out, run_id):
        lams = np.array(list(records))
        metrics = {m: np.array([float(r.get(m, r.get("extra", {}).get(m, math.nan))) for r in records.values()])
                   for m in METRICS}
    else:
        lams, metrics = np.array(sorted(on_disk)), {}
    order = np.argsort(lams, kind="stable")
    lams = np.array([results.round_lambda(v) for v in lams[order]])
    metrics = {m: v[order] for m, v in metrics.items()}
    labels = [on_disk.get(lam, lambda_label(lam)) for lam in lams]

    values = []
    for label in labels:
        path = out / f"Hessian-eigenvalues-{run_id}-{label}.csv"
        values.append(np.loadtxt(path, skiprows=1, ndmin=1, dtype=np.float64) if path.is_file() else np.zeros(0))
    k = max((v.size for v in values), default=0)
    eigenvalues = np.full((lams.size, k), np.nan)
    for i, v in enumerate(values):
        eigenvalues[i, : v.size] = v

    if "grad_norm" not in metrics or np.all(np.isnan(metrics["grad_norm"])):
        norms = []
        for label in labels:
            path = out / f"gradients-{run_id}-{label}.csv"
            norms.append(float(np.linalg.norm(np.loadtxt(path, delimiter=",", skiprows=1, usecols=1, ndmin=1)))
                         if path.is_file() else math.nan)
        metrics["grad_norm"] = np.array(norms)

    def reader(i: int) -> np.ndarray | None:
        npy = out / f"Hessian-eigenvectors-{run_id}-{labels[i]}.npy"
        text = out / f"Hessian-eigenvectors-{run_id}-{labels[i]}.csv"
        if npy.is_file():
            vecs = np.load(npy, allow_pickle=False).T  # stored [P, k]
        elif text.is_file():
            with open(text, encoding="utf-8") as f:
                ncol = len(f.readline().split(","))
            vecs = np.loadtxt(text, delimiter=",", skiprows=1, usecols=range(1, ncol), dtype=np.float32, ndmin=2).T
        else:
            return None
        return np.ascontiguousarray(vecs, dtype=np.float32)

    certificates = _read_certificates(out, run_id, labels, k)
    extras = _read_flagged(out, run_id, labels, "Hessian-bottom-eigenvalues", "bottom")
    extras.update(_read_flagged(out, run_id, labels, "GGN-eigenvalues", "ggn"))
    extras.update(_read_density(out, run_id, labels, lams))
    total = len(set(lams.tolist()) | set(on_disk))
    return SweepData(run_id, "csv", lams, metrics, eigenvalues, total, _num_params(out, run_id, labels), extras, reader,
                     **certificates, num_classes=_manifest_classes(out, run_id))


def _num_params(out: Path, run_id: str, labels) -> int | None:
    """P from the first λ with a gradient file (a header and one row per parameter) or ``.npy`` eigenvectors."""
    for label in labels:
        grad = out / f"gradients-{run_id}-{label}.csv"
        if grad.is_file():
            with open(grad, "rb") as f:
                return sum(1 for line in f if line.strip()) - 1
        npy = out / f"Hessian-eigenvectors-{run_id}-{label}.npy"
        if npy.is_file():
            return int(np.load(npy, mmap_mode="r", allow_pickle=False).shape[0])
    return None


def _read_flagged_csv(path: Path) -> dict[str, np.ndarray] | None:
    """Columns of a certificates / bottom-eigenvalues CSV (``converged`` as 1.0/0.0), or None if absent."""
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {c: np.array([_parse_cell(r[c]) for r in rows]) for c in rows[0]}


def _read_certificates(out: Path, run_id: str, labels: list[str], k: int) -> dict:
    """``Hessian-eigenvalue-certificates-ID-L2.csv`` of every λ as ``[n, k]`` arrays (NaN/True where a λ
    has none); all None when no λ has one (the torch pipeline writes none)."""
    n = len(labels)
    tables = [_read_flagged_csv(out / f"Hessian-eigenvalue-certificates-{run_id}-{label}.csv") for label in labels]
    if all(t is None for t in tables):
        return {}
    cols = {"data_eigenvalues": "data_eigenvalue", "residuals": "residual", "error_bounds": "error_bound",
            "eig_converged": "converged"}
    arrays = {name: np.full((n, k), np.nan) for name in cols}
    for i, t in enumerate(tables):
        for name, col in cols.items():
            if t and col in t:
                v = t[col][:k]
                arrays[name][i, : v.size] = v
    arrays["eig_converged"] = ~(arrays["eig_converged"] == 0.0)  # only an explicit False is unconverged
    return arrays


def _read_flagged(out: Path, run_id: str, labels: list[str], stem: str, prefix: str) -> dict[str, np.ndarray]:
    """``{stem}-ID-L2.csv`` files (``eigenvalue,residual,converged``: ``--bottom-k``, ``--ggn``) as the store's
    ``{prefix}_eigenvalues``, ``{prefix}_residuals`` and ``{prefix}_converged`` extras."""
    tables = [_read_flagged_csv(out / f"{stem}-{run_id}-{label}.csv") for label in labels]
    m = max((len(t.get("eigenvalue", ())) for t in tables if t), default=0)
    if m == 0:
        return {}
    columns = {f"{prefix}_eigenvalues": "eigenvalue", f"{prefix}_residuals": "residual",
               f"{prefix}_converged": "converged"}
    extras = {name: np.full((len(labels), m), np.nan) for name in columns}
    for i, t in enumerate(tables):
        for name, col in columns.items():
            if t and col in t:
                extras[name][i, : t[col].size] = t[col]
    return extras


def _read_density(out: Path, run_id: str, labels: list[str], lams: np.ndarray) -> dict[str, np.ndarray]:
    """``Hessian-density-ID-L2.csv`` (``--density``: θ-nodes per probe) broadened on μ = θ − 2λ."""
    tables = [_read_flagged_csv(out / f"Hessian-density-{run_id}-{label}.csv") for label in labels]
    shapes = {(int(np.nanmax(t["probe"])) + 1, t["node"].size) for t in tables if t and "node" in t}
    if not shapes or len(shapes) > 1:
        return {}
    probes, total = shapes.pop()
    nodes = np.full((len(labels), probes, total // probes), np.nan)
    weights = np.zeros_like(nodes)
    for i, t in enumerate(tables):
        if t and "node" in t:
            nodes[i] = t["node"].reshape(probes, -1) - 2.0 * lams[i]
            weights[i] = t["weight"].reshape(probes, -1)
    return slq_to_density(nodes, weights)

