"""The output layer: λ parsing and labels, per-λ files, records, Model CSV, the Zarr store, manifest, atomicity."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hessjax import results as R

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"fc1.weight": (4, 3), "fc1.bias": (4,), "fc2.weight": (2, 4), "fc2.bias": (2,)}  # P = 26
P = 26
K = 3


def bits32(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def awkward_float32(n, seed=0):
    """Random float32 over many magnitudes, plus zeros, extremes and subnormals."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    special = np.array([0.0, -0.0, 1e-45, -1.4e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 1 / 3], np.float32)
    x[: special.size] = special
    return x


def record(lam, **overrides):
    base = dict(
        train_loss=0.125, test_loss=0.25, test_accuracy=0.9375, epochs=7, converged=True, diverged=False,
        grad_norm=1e-3, distance_to_anchor=2.5, seconds=3.25,
        eigenvalues=[3.0, 2.0, 1.0], residuals=[1e-6, np.nan, 1e-4], eig_converged=[True, False, True],
        timings={"train": 2.0, "hessian": 1.0},
    )
    base.update(overrides)
    return R.make_record(lam, **base)


# ------------------------------------------------------------------------------------------ λ values


def test_parse_linspace_grid_rounded_to_12_digits():
    lams = R.parse_lambdas("0:0.1:501")
    assert lams.dtype == np.float64 and lams.shape == (501,)
    assert lams[0] == 0.0 and lams[-1] == 0.1
    assert lams[3] == 0.0006 and np.linspace(0, 0.1, 501)[3] != 0.0006  # the rounding matters
    assert np.all(np.diff(lams) > 0)
    np.testing.assert_allclose(lams, np.linspace(0, 0.1, 501), rtol=1e-11, atol=0)


def test_parse_comma_list_keeps_order_and_single_values():
    np.testing.assert_array_equal(R.parse_lambdas(" 0.1, 0,1e-5 "), [0.1, 0.0, 1e-5])
    np.testing.assert_array_equal(R.parse_lambdas("0.5"), [0.5])
    np.testing.assert_array_equal(R.parse_lambdas("0.2:0.2:1"), [0.2])
    np.testing.assert_array_equal(R.parse_lambdas("0.2:0:3"), [0.2, 0.1, 0.0])  # descending as given
    (zero,) = R.parse_lambdas("-0")
    assert zero == 0.0 and np.signbit(zero) == False  # noqa: E712
    assert R.parse_lambdas("0.1,0.30000000000000004")[1] == 0.3


@pytest.mark.parametrize(
    "spec",
    [
        "", "   ", "abc", "0.1,x", "-0.1", "0,-1e-9", "0:-1:3", "nan", "0.1,inf", "0:inf:3",
        "0.1,0.1", "0.1,0.1000000000001", "1:1.0000000000001:3",  # duplicates after 12-digit rounding
        "0:1:0", "0:1:-3", "0:1:2.5", "0:1:abc", "0:1:1", "0:1", "0:1:2:3", "0.1,,0.2", "0.1,", ",0.1",
    ],
)
def test_parse_refusals(spec):
    with pytest.raises(R.UsageError):
        R.parse_lambdas(spec)
    assert issubclass(R.UsageError, ValueError)


def test_labels():
    assert [R.lambda_label(v) for v in (0.0, 0.0002, 0.1, 1e-05, 2.0, 0.0006)] == [
        "0", "0.0002", "0.1", "0.00001", "2", "0.0006"
    ]
    assert R.lambda_label(R.parse_lambdas("0:0.1:501")[3]) == "0.0006"


@pytest.mark.parametrize("bad", ["", ".hidden", "-x", "a/b", "a b", "a,b"])
def test_run_id_refusals(bad):
    with pytest.raises(R.UsageError):
        R.check_run_id(bad)


# ------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.csv"

    def failing(tmp):
        tmp.write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        R.atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        R.atomic_write(target, failing)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.csv"]
    R.atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_atomic_path_keeps_suffix_and_prefix(tmp_path):
    with R.atomic_path(tmp_path / "a.npy") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(R.TEMP_PREFIX) and tmp.suffix == ".npy"
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_remove_temp_files(tmp_path):
    (tmp_path / "records").mkdir()
    leftovers = [tmp_path / ".tmp-1234-Model-r.csv", tmp_path / "records" / ".tmp-99-r-0.1.json"]
    for p in leftovers:
        p.write_text("x")
    (tmp_path / "Model-r.csv").write_text("keep")
    assert R.remove_temp_files(tmp_path, older_than_s=3600) == []  # fresh: maybe another host's
    assert sorted(R.remove_temp_files(tmp_path, older_than_s=0)) == sorted(leftovers)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["Model-r.csv"]


def test_check_writable(tmp_path):
    assert R.check_writable(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe is gone
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(R.UsageError, match="not a directory"):
        R.check_writable(a_file)
    with pytest.raises(R.UsageError):
        R.check_writable(a_file / "sub")


# ------------------------------------------------------------------------------------------ per-λ files


def test_parameter_names_follow_state_dict_order():
    names = R.parameter_names(SHAPES)
    assert names.shape == (P,)
    assert names[0] == "fc1.weight" and names[11] == "fc1.weight" and names[12] == "fc1.bias"
    assert names[16] == "fc2.weight" and names[-1] == "fc2.bias" and names[-3] == "fc2.weight"


def test_gradients_csv_round_trips_float32_bitwise(tmp_path):
    names = R.parameter_names(SHAPES)
    grad = awkward_float32(P)
    path = R.write_gradients_csv(tmp_path, "run", 0.0002, names, grad)
    assert path.name == "gradients-run-0.0002.csv"
    assert path.read_text().splitlines()[0] == "parameter,gradient"
    df = pd.read_csv(path)
    assert list(df.columns) == ["parameter", "gradient"] and len(df) == P
    assert df["parameter"].tolist() == names.tolist()
    np.testing.assert_array_equal(bits32(df["gradient"].to_numpy()), bits32(grad))
    back = np.loadtxt(path, delimiter=",", skiprows=1, usecols=1, dtype=np.float32)
    np.testing.assert_array_equal(bits32(back), bits32(grad))


def test_eigenvalue_csv_formats_by_dtype(tmp_path):
    ev32 = np.array([3.4028235e38, 1 / 3, 1e-7, -2.5e-12], np.float32)
    path = R.write_eigenvalues_csv(tmp_path, "run", 0.1, ev32)
    assert path.name == "Hessian-eigenvalues-run-0.1.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "eigenvalue" and len(lines) == 5 and lines[2] == "0.333333343"
    np.testing.assert_array_equal(bits32(pd.read_csv(path)["eigenvalue"].to_numpy()), bits32(ev32))

    ev64 = np.array([1 / 3, 1e-300, -np.pi])
    path = R.write_eigenvalues_csv(tmp_path, "run", 0.1, ev64)
    back = pd.read_csv(path)["eigenvalue"].to_numpy()
    np.testing.assert_array_equal(back.view(np.uint64), ev64.view(np.uint64))
    with pytest.raises(ValueError, match="largest first"):
        R.write_eigenvalues_csv(tmp_path, "run", 0.1, np.array([1.0, 2.0]))


@pytest.mark.parametrize("fmt", ["csv", "npy", "none"])
def test_eigenvectors_formats(tmp_path, fmt):
    names = R.parameter_names(SHAPES)
    vecs = np.stack([awkward_float32(P, seed=s) for s in range(K)])  # [k, P]
    path = R.write_eigenvectors(tmp_path, "run", 1e-5, names, vecs, fmt)
    if fmt == "none":
        assert path is None and list(tmp_path.iterdir()) == []
        return
    assert path.name == f"Hessian-eigenvectors-run-0.00001.{fmt}"
    if fmt == "csv":
        assert path.read_text().splitlines()[0] == "parameter,v1,v2,v3"
        df = pd.read_csv(path)
        assert df["parameter"].tolist() == names.tolist()
        for j in range(K):
            np.testing.assert_array_equal(bits32(df[f"v{j + 1}"].to_numpy()), bits32(vecs[j]))
    else:
        back = np.load(path)
        assert back.shape == (P, K) and back.dtype == np.float32
        np.testing.assert_array_equal(bits32(back), bits32(vecs.T))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_eigenvectors_refuse_wrong_layout_and_format(tmp_path):
    names = R.parameter_names(SHAPES)
    with pytest.raises(ValueError, match=r"\[k, P=26\]"):
        R.write_eigenvectors(tmp_path, "run", 0.1, names, np.zeros((P, K), np.float32))
    with pytest.raises(R.UsageError):
        R.write_eigenvectors(tmp_path, "run", 0.1, names, np.zeros((K, P), np.float32), "hdf5")
    with pytest.raises(ValueError, match="commas"):
        R.write_gradients_csv(tmp_path, "run", 0.1, np.array(["a,b"] * P), np.zeros(P, np.float32))


# ------------------------------------------------------------------------------------------ records, Model CSV


def test_records_and_model_csv_rebuilt_ascending(tmp_path):
    for lam in (0.1, 0.0, 0.0006):
        R.write_record(tmp_path, "run", record(lam))
    diverged = record(0.05, train_loss=np.inf, test_loss=np.nan, test_accuracy=0.1, converged=False, diverged=True,
                      eigenvalues=[], residuals=[], eig_converged=[])
    R.write_record(tmp_path, "run", diverged)
    R.write_record(tmp_path, "run-b", record(0.3))  # another run id sharing a prefix
    (tmp_path / "records" / ".tmp-dead-run-0.2.json").write_text("{")  # a killed writer's leftover
    assert json.loads((tmp_path / "records" / "run-0.05.json").read_text())["train_loss"] is None  # strict JSON

    done = R.finished_lambdas(tmp_path, "run")
    assert list(done) == [0.0, 0.0006, 0.05, 0.1]
    assert done[0.0006]["max_residual"] == 1e-4 and done[0.0006]["num_converged_eigs"] == 2
    assert np.isnan(done[0.0006]["residuals"][1]) and np.isnan(done[0.05]["train_loss"])
    assert done[0.1]["timings"] == {"train": 2.0, "hessian": 1.0}

    for _ in range(2):  # rebuilt, never appended
        path = R.write_model_csv(tmp_path, "run")
    assert path.name == "Model-run.csv"
    assert path.read_text().splitlines()[0] == ",".join(R.MODEL_COLUMNS)
    assert path.read_text().startswith("lambda,train_loss,test_loss,test_accuracy,epochs,converged,diverged,")
    df = pd.read_csv(path)
    assert df["lambda"].tolist() == [0.0, 0.0006, 0.05, 0.1]
    assert df["diverged"].tolist() == [False, False, True, False]
    assert df["converged"].tolist() == [True, True, False, True]
    row = df.set_index("lambda").loc[0.05]
    assert np.isnan(row["train_loss"]) and np.isnan(row["test_loss"]) and np.isnan(row["max_residual"])
    assert row["num_converged_eigs"] == 0
    assert df.loc[0, "test_accuracy"] == 0.9375 and df.loc[0, "epochs"] == 7 and df.loc[0, "seconds"] == 3.25


# ------------------------------------------------------------------------------------------ Zarr store


def open_ds(path):
    xr = pytest.importorskip("xarray")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path).load()


def arrays_for(lam):
    rng = np.random.default_rng(int(lam * 1e6))
    return dict(
        gradient=rng.standard_normal(P).astype(np.float32),
        weights=rng.standard_normal(P).astype(np.float32),
        eigenvectors=rng.standard_normal((K, P)).astype(np.float32),
    )


def test_store_write_read_with_xarray(tmp_path):
    path = R.store_path(tmp_path, "run")
    store = R.SweepStore.create(path, [0.0, 0.1, 0.0002], n_params=P, k=K, attrs={"run_id": "run"})
    store.write(record(0.1), **arrays_for(0.1))
    store.write(record(0.0, diverged=True, converged=False, train_loss=np.nan, eigenvalues=[]),
                gradient=arrays_for(0.0)["gradient"])

    ds = open_ds(path)
    assert ds.sizes == {"lambda": 3, "eig": K, "parameter": P}
    assert ds.attrs["run_id"] == "run" and ds.attrs["n_params"] == P
    assert ds["lambda"].dtype == np.float64 and ds["eig"].values.tolist() == [1, 2, 3]
    assert ds["eigenvectors"].dims == ("lambda", "eig", "parameter") and ds["eigenvectors"].dtype == np.float32
    a = ds.sel({"lambda": 0.1})
    assert bool(a.done) and float(a.train_loss) == 0.125 and int(a.epochs) == 7 and bool(a.converged)
    np.testing.assert_array_equal(a.eigenvalues.values, [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(a.eig_converged.values, [True, False, True])
    np.testing.assert_array_equal(a.residuals.values, [1e-6, np.nan, 1e-4])
    for name, value in arrays_for(0.1).items():
        np.testing.assert_array_equal(a[name].values, value)
    d = ds.sel({"lambda": 0.0})  # diverged: written, NaN where nothing was given
    assert bool(d.done) and bool(d.diverged) and np.isnan(float(d.train_loss))
    assert np.all(np.isnan(d.eigenvalues.values)) and np.all(np.isnan(d.eigenvectors.values))
    np.testing.assert_array_equal(d.gradient.values, arrays_for(0.0)["gradient"])
    u = ds.sel({"lambda": 0.0002})  # unfinished
    assert not bool(u.done) and np.isnan(float(u.train_loss)) and int(u.epochs) == -1
    assert np.all(np.isnan(u.eigenvectors.values)) and np.all(np.isnan(u.weights.values))
    assert store.done_lambdas().tolist() == [0.0, 0.1]
    assert store.index(0.0002) == 2 and store.index(0.1 + 1e-17) == 1
    with pytest.raises(KeyError):
        store.index(0.3)


def test_store_kill_between_data_and_done_flag(tmp_path):
    path = R.store_path(tmp_path, "run")
    store = R.SweepStore.create(path, [0.0, 0.1], n_params=P, k=K)
    store.write(record(0.1), **arrays_for(0.1))
    # A writer dying after the scalars but before the big arrays and the done flag (here: a bad shape).
    bad = dict(arrays_for(0.0), eigenvectors=np.zeros((P, K), np.float32))
    with pytest.raises(ValueError):
        store.write(record(0.0), **bad)
    with pytest.raises(ValueError):  # a rewrite of a finished λ that dies clears its flag too
        store.write(record(0.1, train_loss=9.0), **dict(arrays_for(0.1), weights=np.zeros(3, np.float32)))
    ds = open_ds(path)
    assert ds.done.values.tolist() == [False, False]
    assert float(ds.train_loss.sel({"lambda": 0.0})) == 0.125  # the data that did land is not trusted...
    assert R.SweepStore(path).done_lambdas().size == 0  # ...because done is False


def test_store_grid_extension_keeps_data(tmp_path):
    path = R.store_path(tmp_path, "run")
    store = R.SweepStore.create(path, [0.0, 0.1], n_params=P, k=K)
    store.write(record(0.1), **arrays_for(0.1))
    idx = R.SweepStore.create(path, [0.1, 0.3, 0.2], n_params=P, k=K).ensure_lambdas([0.1, 0.3, 0.2])
    assert idx.tolist() == [1, 2, 3]
    assert store.ensure_lambdas([0.3]).tolist() == [2]  # idempotent
    ds = open_ds(path)
    assert ds["lambda"].values.tolist() == [0.0, 0.1, 0.3, 0.2]
    assert ds.done.values.tolist() == [False, True, False, False]
    np.testing.assert_array_equal(ds.eigenvectors.sel({"lambda": 0.1}).values, arrays_for(0.1)["eigenvectors"])
    assert np.all(np.isnan(ds.gradient.sel({"lambda": 0.2}).values))
    store.write(record(0.2), **arrays_for(0.2))  # an old handle writes a new λ
    ds = open_ds(path).sortby("lambda")
    assert ds["lambda"].values.tolist() == [0.0, 0.1, 0.2, 0.3]
    assert ds.done.values.tolist() == [False, True, True, False]
    with pytest.raises(R.UsageError, match="k=3"):
        R.SweepStore.create(path, [0.1], n_params=P, k=K + 1)


def test_store_two_processes_write_different_lambdas(tmp_path):
    path = R.store_path(tmp_path, "run")
    lams = [0.0, 0.1, 0.2]
    R.SweepStore.create(path, lams, n_params=P, k=K)
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_results as T
        from hessjax import results as R
        lam = float(sys.argv[1]); store = R.SweepStore({str(path)!r})
        for _ in range(20):
            store.write(T.record(lam, epochs=int(lam * 10)), **T.arrays_for(lam))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(lam)]) for lam in (0.0, 0.2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ds = open_ds(path)
    assert ds.done.values.tolist() == [True, False, True]
    assert ds.epochs.values.tolist() == [0, -1, 2]
    for lam in (0.0, 0.2):
        for name, value in arrays_for(lam).items():
            np.testing.assert_array_equal(ds[name].sel({"lambda": lam}).values, value)


# ------------------------------------------------------------------------------------------ manifest, config


CONFIG = {"epochs": 10, "lr": 0.01, "k": 30, "lanczos": {"iters": 90, "reortho": "full"}, "lambdas": [0.0, 0.1]}


def test_manifest_contents(tmp_path):
    R.write_record(tmp_path, "run", record(0.1))
    path = R.write_manifest(tmp_path, "run", CONFIG, anchor_sha256="ab" * 32, devices=["cpu:0"],
                            matmul_precision="highest")
    m = json.loads(path.read_text())
    assert path.name == "manifest-run.json" and m["schema_version"] == R.SCHEMA_VERSION
    assert m["config"] == {k: v for k, v in CONFIG.items() if k != "lambdas"}
    assert m["anchor_sha256"] == "ab" * 32 and m["devices"] == ["cpu:0"] and m["matmul_precision"] == "highest"
    assert set(m["versions"]) >= {"python", "jax", "jaxlib", "flax", "optax", "numpy", "torch", "zarr"}
    assert m["versions"]["numpy"] == np.__version__
    assert m["lambdas"]["0.1"]["seconds"] == 3.25 and m["lambdas"]["0.1"]["timings"]["train"] == 2.0
    assert m["lambdas"]["0.1"]["residuals"] == [1e-6, None, 1e-4]
    anchor = tmp_path / "anchor.pth"
    anchor.write_bytes(b"abc")
    assert R.sha256_file(anchor) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_check_config(tmp_path):
    assert R.check_config(tmp_path, "run", CONFIG) is None  # fresh
    R.write_manifest(tmp_path, "run", CONFIG, anchor_sha256="a" * 64)
    grown = dict(CONFIG, lambdas=[0.0, 0.05, 0.1, 0.2])  # a grid change is not a configuration change
    assert R.check_config(tmp_path, "run", grown, anchor_sha256="a" * 64)["config"]["epochs"] == 10
    changed = dict(CONFIG, lr=0.02, lanczos={"iters": 60, "reortho": "full"}, seed=1)
    with pytest.raises(R.UsageError) as err:
        R.check_config(tmp_path, "run", changed)
    msg = str(err.value)
    assert "lr" in msg and "lanczos.iters" in msg and "seed" in msg and "epochs" not in msg and "\n" not in msg
    with pytest.raises(R.UsageError, match="anchor_sha256"):
        R.check_config(tmp_path, "run", CONFIG, anchor_sha256="b" * 64)
    assert R.check_config(tmp_path, "other", changed) is None  # other run ids are independent


def test_overwrite_discards_only_that_run(tmp_path):
    names = R.parameter_names(SHAPES)
    for rid in ("run", "run-b"):
        R.write_gradients_csv(tmp_path, rid, 0.1, names, np.zeros(P, np.float32))
        R.write_eigenvalues_csv(tmp_path, rid, 0.1, np.ones(K))
        R.write_eigenvectors(tmp_path, rid, 0.1, names, np.zeros((K, P), np.float32), "csv")
        R.write_eigenvectors(tmp_path, rid, 0.1, names, np.zeros((K, P), np.float32), "npy")
        R.pth_path(tmp_path, rid, 0.1).write_bytes(b"pth")
        R.SweepStore.create(R.store_path(tmp_path, rid), [0.1], n_params=P, k=K)
        R.write_record(tmp_path, rid, record(0.1))
        R.write_model_csv(tmp_path, rid)
        R.write_manifest(tmp_path, rid, CONFIG, anchor_sha256=None)
    before_b = sorted(p.name for p in tmp_path.rglob("*") if "run-b" in p.name)
    changed = dict(CONFIG, lr=1.0)
    with pytest.raises(R.UsageError):
        R.check_config(tmp_path, "run", changed)
    assert R.check_config(tmp_path, "run", changed, overwrite=True) is None
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_relative_to(
        tmp_path / "run-b.zarr"))
    assert not any(("-run-0.1" in n or n.endswith("-run.csv") or n.endswith("-run.json") or n.startswith("run.zarr")
                    or n == "records/run-0.1.json") for n in left), left
    assert sorted(p.name for p in tmp_path.rglob("*") if "run-b" in p.name) == before_b
    assert R.finished_lambdas(tmp_path, "run") == {} and list(R.finished_lambdas(tmp_path, "run-b")) == [0.1]
    R.write_manifest(tmp_path, "run", changed, anchor_sha256=None)
    assert R.check_config(tmp_path, "run", changed) is not None


def test_store_extras_are_declared_written_and_added_later(tmp_path):
    import xarray as xr

    path = tmp_path / "x.zarr"
    store = R.SweepStore.create(path, [0.0, 0.1], n_params=5, k=2,
                                extras={"trace": ("float64", (), ()), "slq_nodes": ("float64", (3, 4), ("probe", "node"))})
    rec = R.make_record(0.1, train_loss=1, test_loss=1, test_accuracy=0.5, epochs=1, converged=True, diverged=False,
                        grad_norm=1, distance_to_anchor=1, seconds=1, eigenvalues=[2.0, 1.0])
    store.write(rec, extras={"trace": 7.5, "slq_nodes": np.arange(12.0).reshape(3, 4)})
    store = R.SweepStore.create(path, [0.0, 0.1, 0.2], n_params=5, k=2,
                                extras={"bottom_eigenvalues": ("float64", (2,), ("bottom",))})
    ds = xr.open_zarr(path).sortby("lambda")
    assert ds["trace"].sel({"lambda": 0.1}).item() == 7.5 and np.isnan(ds["trace"].sel({"lambda": 0.0}).item())
    assert ds["slq_nodes"].dims == ("lambda", "probe", "node") and ds["slq_nodes"].shape == (3, 3, 4)
    np.testing.assert_array_equal(ds["slq_nodes"].sel({"lambda": 0.1}).values, np.arange(12.0).reshape(3, 4))
    assert ds["bottom_eigenvalues"].shape == (3, 2) and np.isnan(ds["bottom_eigenvalues"].values).all()


def test_fast_float32_cells_read_back_bit_for_bit(tmp_path):
    """The per-parameter files' fixed-width cells: every float32 (subnormals, extremes, neighbours of
    powers of ten, signed zeros, random magnitudes) reads back as itself with pandas and numpy."""
    rng = np.random.default_rng(0)
    f32 = np.finfo(np.float32)
    special = [0.0, -0.0, 1.0, -1.0, f32.max, -f32.max, f32.tiny, f32.smallest_subnormal, -f32.smallest_subnormal,
               9.99999997e-07, 1e-6, 99999.9922, 1e5, 0.1, 0.2, 1 / 3]
    powers = np.float32(10.0) ** np.arange(-44, 39, dtype=np.float64)
    near = np.concatenate([np.nextafter(powers.astype(np.float32), np.float32(0)),
                           np.nextafter(powers.astype(np.float32), np.float32(np.inf))])
    spread = rng.standard_normal(3000) * 10.0 ** rng.uniform(-45, 38, 3000)
    values = np.concatenate([np.asarray(special, np.float32), near, spread.astype(np.float32)])
    values = values[np.isfinite(values)]
    pad = (-values.size) % 3
    matrix = np.concatenate([values, np.ones(pad, np.float32)]).reshape(-1, 3)
    names = np.array([f"layer{i // 7}.weight" for i in range(matrix.shape[0])], dtype=object)
    path = R.write_eigenvectors(tmp_path, "run", 0.5, names, matrix.T, "csv")
    df = pd.read_csv(path)
    assert list(df.columns) == ["parameter", "v1", "v2", "v3"] and df["parameter"].tolist() == names.tolist()
    back = df[["v1", "v2", "v3"]].to_numpy(np.float64).astype(np.float32)
    assert np.array_equal(back.view(np.uint32), matrix.view(np.uint32))  # bit for bit, signs of zeros included
    rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2, 3), dtype=np.float64).astype(np.float32)
    assert np.array_equal(rows.view(np.uint32), matrix.view(np.uint32))
    # a non-finite value falls back to %-formatting, still one value per cell
    matrix[0, 0] = np.nan
    back = pd.read_csv(R.write_eigenvectors(tmp_path, "run", 0.25, names, matrix.T, "csv"))[["v1", "v2", "v3"]]
    assert np.isnan(back.iloc[0, 0]) and np.array_equal(back.to_numpy(np.float32)[1:], matrix[1:])


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """A temporary file names its writer (pid@host): a dead writer's is removed at once, a live
    writer's never (here a sleeping child process stands for a live worker), whatever their age."""
    import subprocess
    import sys

    from hessjax.results.atomic import _temp_name

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        mine = _temp_name("gradients-r-0.1.csv")
        live_tmp = tmp_path / mine.replace(f"{os.getpid()}@", f"{live.pid}@")
        dead_tmp = tmp_path / mine.replace(f"{os.getpid()}@", f"{dead.pid}@")
        for p in (live_tmp, dead_tmp):
            p.write_text("partial")
            os.utime(p, (0, 0))  # very old: age alone must not decide for this host's files
        assert R.remove_temp_files(tmp_path) == [dead_tmp]
        assert live_tmp.exists()
    finally:
        live.kill()
        live.wait()
    assert R.remove_temp_files(tmp_path) == [live_tmp]
    other_host = tmp_path / ".tmp-1@elsewhere~0a1b2c3d~Model-r.csv"
    other_host.write_text("x")
    assert R.remove_temp_files(tmp_path) == []  # another host's, fresh: it may be alive
    os.utime(other_host, (0, 0))
    assert R.remove_temp_files(tmp_path) == [other_host]


def test_log_grids():
    np.testing.assert_allclose(R.parse_lambdas("1e-6:0.1:6:log"), np.geomspace(1e-6, 0.1, 6), rtol=1e-12)
    grid = R.parse_lambdas("0,1e-6:0.1:200:log")
    assert grid.size == 201 and grid[0] == 0 and grid[1] == 1e-6 and grid[-1] == 0.1
    assert np.allclose(np.diff(np.log(grid[1:])), np.log(1e5) / 199, rtol=1e-9)
    mixed = R.parse_lambdas("0,0.001:0.003:3,0.01:1:3:log")
    np.testing.assert_array_equal(mixed, [0, 0.001, 0.002, 0.003, 0.01, 0.1, 1.0])
    for bad, match in (("0:0.1:5:log", "START > 0"), ("1e-3:1e-1:5:lin", "START:STOP:NUM:log"),
                       ("1e-3:1e-1:0:log", "NUM must be"), ("1e-3,1e-3:1:3:log", "duplicate")):
        with pytest.raises(R.UsageError, match=match):
            R.parse_lambdas(bad)
