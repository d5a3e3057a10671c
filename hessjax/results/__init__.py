"""The output layer of a λ sweep: command-line values, per-λ files, per-λ records, the Zarr store, the manifest.

numpy and file I/O only: nothing here imports jax, and torch is reached only through ``hessjax.bridges``
(by the caller). Every file is written atomically (:func:`atomic_path`): a temporary ``.tmp-*`` sibling in
the same directory, fsynced, then ``os.replace``-d onto its name, so a reader (or a resumed sweep) sees
either the old file, the whole new one, or nothing.

Layout of ``OUT`` for run id ``ID`` (``L2`` = :func:`lambda_label` of λ)::

    gradients-ID-L2.csv              parameter,gradient            P rows, PyTorch flat order
    Hessian-eigenvalues-ID-L2.csv    eigenvalue                    k rows, largest first: θ = μ + 2λ (float64)
    Hessian-eigenvalue-certificates-ID-L2.csv
                                     eigenvalue,data_eigenvalue,residual,error_bound,converged   k rows
    Hessian-eigenvectors-ID-L2.csv   parameter,v1,...,vk           P rows   (format "csv")
    Hessian-eigenvectors-ID-L2.npy   float32 [P, k], column j = eigenvector j+1   (format "npy")
    Hessian-density-ID-L2.csv        SLQ nodes and weights (with --density)
    Hessian-bottom-eigenvalues-ID-L2.csv   bottom k with residuals and flags (with --bottom-k)
    model_weights-ID-L2.pth          trained weights (written by the caller via hessjax.bridges)
    records/ID-L2.json               per-λ record, written LAST: its presence means "λ finished"
    Model-ID.csv                     one row per finished λ, ascending; rebuilt from the records
    manifest-ID.json                 configuration, anchor SHA-256, versions, per-λ timings
    ID.zarr/                         Zarr v3 store of the whole sweep (:class:`SweepStore`)

Order of writes for one λ (the caller's sweep): per-λ files (CSV/npy/pth) → ``SweepStore.write`` (its
``done`` flag last) → :func:`write_record` → :func:`write_model_csv` and :func:`write_manifest`.
A kill anywhere before the record leaves the λ unfinished, and a resumed sweep recomputes it.

Modules, one concern each (everything public is re-exported here: ``from hessjax.results import X``):
:mod:`~hessjax.results.grid` (λ values, run ids, :class:`UsageError`), :mod:`~hessjax.results.atomic`
(atomic writes, ``.tmp-*`` leftovers), :mod:`~hessjax.results.paths` (the names above),
:mod:`~hessjax.results.tables` (per-λ CSV/npy files), :mod:`~hessjax.results.records` (records,
``Model-ID.csv``, :func:`jsonable`), :mod:`~hessjax.results.manifest` (manifest, configuration check,
:func:`discard_run`) and :mod:`~hessjax.results.store` (:class:`SweepStore`).

Float formats: the per-parameter float32 files (gradients, eigenvectors) as fixed-width cells like
``+1.23456789e-05`` (:mod:`~hessjax.results.csvfloat`), other float32 values ``%.9g`` (9 significant
digits), anything else as float64 ``%.17g``: every value reads back bitwise as the same float.
"""

from __future__ import annotations

from .atomic import TEMP_PREFIX, atomic_path, atomic_write, check_writable, remove_temp_files, run_lock
from .grid import UsageError, check_run_id, lambda_label, parse_lambdas, round_lambda
from .manifest import (
    SCHEMA_VERSION,
    check_config,
    collect_versions,
    discard_run,
    read_manifest,
    sha256_file,
    write_manifest,
)
from .paths import (
    bottom_eigenvalues_path,
    certificates_path,
    density_path,
    eigenvalues_path,
    eigenvectors_path,
    ggn_eigenvalues_path,
    gradients_path,
    manifest_path,
    model_csv_path,
    pth_path,
    record_path,
    store_path,
)
from .records import (
    MODEL_COLUMNS,
    OPTIONAL_MODEL_COLUMNS,
    finished_lambdas,
    jsonable,
    make_record,
    write_model_csv,
    write_record,
)
from .store import SweepStore
from .tables import (
    EIGVEC_FORMATS,
    parameter_names,
    write_bottom_eigenvalues_csv,
    write_certificates_csv,
    write_density_csv,
    write_eigenvalues_csv,
    write_eigenvectors,
    write_ggn_eigenvalues_csv,
    write_gradients_csv,
)

__all__ = [
    "EIGVEC_FORMATS",
    "MODEL_COLUMNS",
    "OPTIONAL_MODEL_COLUMNS",
    "SCHEMA_VERSION",
    "TEMP_PREFIX",
    "SweepStore",
    "UsageError",
    "atomic_path",
    "atomic_write",
    "check_config",
    "check_run_id",
    "check_writable",
    "certificates_path",
    "collect_versions",
    "discard_run",
    "bottom_eigenvalues_path",
    "density_path",
    "eigenvalues_path",
    "eigenvectors_path",
    "ggn_eigenvalues_path",
    "finished_lambdas",
    "gradients_path",
    "jsonable",
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
    "run_lock",
    "sha256_file",
    "store_path",
    "write_bottom_eigenvalues_csv",
    "write_certificates_csv",
    "write_density_csv",
    "write_eigenvalues_csv",
    "write_eigenvectors",
    "write_ggn_eigenvalues_csv",
    "write_gradients_csv",
    "write_manifest",
    "write_model_csv",
    "write_record",
]
