"""The Zarr v3 store of a whole sweep (:class:`SweepStore`), one row per λ."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .grid import UsageError, lambda_label, round_lambda
from .manifest import SCHEMA_VERSION
from .records import float_or_nan, jsonable

__all__ = ["SweepStore"]

# name -> (dtype, fill, trailing dims); every array's first dimension is "lambda" with chunk size 1.
_SCALARS = {
    "train_loss": ("float64", np.nan),
    "test_loss": ("float64", np.nan),
    "test_accuracy": ("float64", np.nan),
    "grad_norm": ("float64", np.nan),
    "distance_to_anchor": ("float64", np.nan),
    "max_residual": ("float64", np.nan),
    "convergence_scale": ("float64", np.nan),
    "seconds": ("float64", np.nan),
    "epochs": ("int32", -1),
    "best_epoch": ("int32", -1),
    "num_converged_eigs": ("int32", -1),
    "converged": ("bool", False),
    "diverged": ("bool", False),
}
_LAMBDA_COORD_CHUNK = 4096
_PER_EIG = {"eigenvalues": ("float64", np.nan), "data_eigenvalues": ("float64", np.nan),
            "residuals": ("float64", np.nan), "error_bounds": ("float64", np.nan), "eig_converged": ("bool", False)}
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
        train_loss, test_loss, test_accuracy, grad_norm, distance_to_anchor, max_residual,
        convergence_scale, seconds   [lambda] float64, NaN until written
        epochs, best_epoch, num_converged_eigs   [lambda] int32, -1 until written
        converged, diverged          [lambda] bool, False until written
        eigenvalues (θ of ∇²L_eff), data_eigenvalues (μ = θ − 2λ), residuals, error_bounds
                                     [lambda, eig] float64 NaN;   eig_converged [lambda, eig] bool
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
                    "use another --id or --overwrite"
                )
            store._add_extras(extras or {})
            store.ensure_lambdas(lambdas, _force_consolidate=bool(extras))
            return store
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.update(
            jsonable({"schema_version": SCHEMA_VERSION, "n_params": int(n_params), "k": int(k), **(attrs or {})})
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
            group[name][i] = np.asarray(float_or_nan(value) if dtype == "float64" else value, dtype=dtype)
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

    def eigenvectors(self, lam: float) -> np.ndarray:
        """``[k, P]`` float32: the eigenvectors of λ (row j = eigenvector j+1; NaN where none were written)."""
        return self.row("eigenvectors", lam)

    def row(self, name: str, lam: float) -> np.ndarray:
        """λ's row of the array ``name`` (e.g. ``"weights"``, ``"gradient"``, ``"eigenvectors"``), as stored."""
        group = self._group("r")
        return np.asarray(group[name][self.index(lam, _lambdas=group["lambda"][:])])

    def done(self) -> np.ndarray:
        """``[n]`` bool in storage order."""
        return np.asarray(self._group("r")["done"][:], dtype=bool)

    def done_lambdas(self) -> np.ndarray:
        """The λ whose row is complete, ascending."""
        return np.sort(self.lambdas[self.done()])
