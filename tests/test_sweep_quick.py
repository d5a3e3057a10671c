"""The sweep in-process on a tiny configuration, so the quick selection (``-m "not slow"``) runs it too:
every file, the certificates' θ = μ + 2λ in float64, and the writer's summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hessjax import sweep

TINY = dict(train_samples=300, test_samples=100, hessian_samples=200, k=3, max_epochs=2, batch_size=100,
            chunk_size=100, quiet=True)


def test_a_tiny_sweep_writes_certified_eigenvalues(tmp_path):
    summary = sweep.run(lambdas="0,0.05", out=str(tmp_path), **TINY)
    assert summary["finished"] == [0.0, 0.05] and summary["unconverged"] == {} and not summary["diverged"]
    assert [len(b["lambdas"]) for b in summary["batches"]] == [1, 1]
    for lam, label in ((0.0, "0"), (0.05, "0.05")):
        theta = pd.read_csv(tmp_path / f"Hessian-eigenvalues-default-{label}.csv")["eigenvalue"].to_numpy()
        cert = pd.read_csv(tmp_path / f"Hessian-eigenvalue-certificates-default-{label}.csv")
        rec = json.loads((tmp_path / "records" / f"default-{label}.json").read_text())
        np.testing.assert_array_equal(cert["eigenvalue"].to_numpy(), theta)
        mu = np.asarray(rec["data_eigenvalues"])
        assert np.array_equal(theta, mu + 2 * lam)  # the shift, added once in float64
        assert np.all(mu == mu.astype(np.float32))  # μ is the solver's float32 value, unrounded
        assert cert["converged"].all() and np.all(cert["residual"] <= 1e-5 * rec["convergence_scale"])
        rounding = 32 * np.finfo(np.float32).eps * rec["convergence_scale"]  # bounds.OPERATOR_ROUNDING · ε · scale
        assert np.all(cert["error_bound"] <= (cert["residual"] + rounding) * (1 + 1e-12))
    model = pd.read_csv(tmp_path / "Model-default.csv")
    assert model["lambda"].tolist() == [0, 0.05] and model["num_converged_eigs"].tolist() == [3, 3]


def test_a_failed_write_stops_the_sweep_and_keeps_what_was_finished(tmp_path, monkeypatch, capsys):
    """The writer thread fails on the second λ (a full disk, say): the sweep stops with one error line
    and exit status 1, the first λ stays finished, and rerunning finishes the rest."""
    from hessjax import results
    from hessjax.sweep import write

    real = results.write_gradients_csv

    def failing(out, run_id, lam, *args, **kwargs):
        if lam == 0.05:
            raise OSError(28, "No space left on device")
        return real(out, run_id, lam, *args, **kwargs)

    monkeypatch.setattr(write.results, "write_gradients_csv", failing)
    args = ["--out", str(tmp_path), "--lambdas", "0,0.05,0.1", "--train-samples", "300", "--test-samples", "100",
            "--hessian-samples", "200", "--k", "3", "--max-epochs", "2", "--batch-size", "100", "--chunk-size", "100",
            "--quiet"]
    assert sweep.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()  # --quiet: one line per finished batch, then the error
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [err[-1]] and err[-1].startswith("error: writing results failed: OSError") and "rerun" in err[-1]
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["default-0.json"]
    assert not (tmp_path / "records" / "default-0.1.json").exists()  # nothing after the failure was written
    monkeypatch.setattr(write.results, "write_gradients_csv", real)
    assert sweep.main(args) == 0
    model = pd.read_csv(tmp_path / "Model-default.csv")
    assert model["lambda"].tolist() == [0, 0.05, 0.1]


def test_unconverged_pairs_are_flagged_everywhere_and_named_in_one_warning(tmp_path, capsys):
    """A solve given no room (a 5-vector basis, no restarts) leaves pairs unconverged: they are False
    in the certificates CSV, the record and the store, and one warning line names the λ."""
    import xarray as xr

    args = ["--out", str(tmp_path), "--lambdas", "0,0.05", "--train-samples", "300", "--test-samples", "100",
            "--hessian-samples", "200", "--k", "4", "--lanczos-iters", "5", "--max-restarts", "0",
            "--no-multiplicity-check", "--max-epochs", "2", "--batch-size", "100", "--chunk-size", "100", "--quiet"]
    assert sweep.main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    missed = {}
    for label in ("0", "0.05"):
        cert = pd.read_csv(tmp_path / f"Hessian-eigenvalue-certificates-default-{label}.csv")
        rec = json.loads((tmp_path / "records" / f"default-{label}.json").read_text())
        assert cert["converged"].tolist() == rec["eig_converged"]
        assert (cert["residual"] > 1e-5 * rec["convergence_scale"]).tolist() == (~cert["converged"]).tolist()
        missed[label] = int((~cert["converged"]).sum())
    assert sum(missed.values()) > 0  # the setting really leaves pairs unconverged
    shown = [f"{label} ({n} of 4)" for label, n in missed.items() if n]
    assert len(warnings) == 1 and all(s in warnings[0] for s in shown)
    ds = xr.open_zarr(tmp_path / "default.zarr", consolidated=False).sortby("lambda")
    assert (~ds["eig_converged"].values).sum(axis=1).tolist() == list(missed.values())
    model = pd.read_csv(tmp_path / "Model-default.csv")
    assert (4 - model["num_converged_eigs"]).tolist() == list(missed.values())


def test_two_members_walk_their_segments_warm_and_agree_with_cold_starts(tmp_path):
    """``--lambda-batch 2 --segment-length 2`` over 3 λ: member 0 walks [0.01, 0.02], member 1 [0.03];
    0.02 starts from 0.01's eigenvectors (``warm_from``) while the idle member repeats it without being
    solved, so the batch executes no more than 0.02 needs. The spectra equal ``--cold-start``'s to
    the solver's tolerance; training is untouched."""
    lams = "0.01,0.02,0.03"
    warm = sweep.run(lambdas=lams, out=str(tmp_path / "warm"), lambda_batch=2, segment_length=2, **TINY)
    cold = sweep.run(lambdas=lams, out=str(tmp_path / "cold"), lambda_batch=2, segment_length=2, cold_start=True,
                     **TINY)
    assert [b["lambdas"] for b in warm["batches"]] == [[0.01, 0.03], [0.02]]
    second = warm["batches"][1]
    # the idle member that pads the batch repeats 0.02 but is not solved: the batch executed 0.02's products
    assert second["warm"] == [True] and second["batch_matvecs"] == second["own_matvecs"]
    for summary, run in ((warm, "warm"), (cold, "cold")):
        assert summary["unconverged"] == {}, run
    for label, neighbour in (("0.01", None), ("0.02", 0.01), ("0.03", None)):
        w = json.loads((tmp_path / "warm" / "records" / f"default-{label}.json").read_text())
        c = json.loads((tmp_path / "cold" / "records" / f"default-{label}.json").read_text())
        assert w["extra"]["warm_from"] == neighbour and c["extra"]["warm_from"] is None
        assert w["extra"]["lanczos_matvecs"] > 0 and w["extra"]["batch_matvecs"] >= w["extra"]["lanczos_matvecs"]
        mu_w, mu_c = np.asarray(w["data_eigenvalues"]), np.asarray(c["data_eigenvalues"])
        assert np.max(np.abs(mu_w - mu_c)) <= 2e-5 * abs(mu_c[0]), label  # both within tol = 1e-5·|μ₁| of the truth
        np.testing.assert_array_equal(w["distance_to_anchor"], c["distance_to_anchor"])  # training is untouched


def test_a_float64_sweep_resumed_from_the_store_equals_an_uninterrupted_one(tmp_path):
    """The store keeps eigenvectors in float32; a resumed λ starts from that copy of its neighbour's,
    so the uninterrupted float64 run must round its device copy the same way, or the two differ."""
    lams, opts = "0.01,0.02,0.03", dict(TINY, dtype="float64")
    sweep.run(lambdas=lams, out=str(tmp_path / "a"), **opts)
    sweep.run(lambdas=lams, out=str(tmp_path / "b"), **opts)
    for label in ("0.02", "0.03"):  # as if killed after 0.01: those two are not finished
        (tmp_path / "b" / "records" / f"default-{label}.json").unlink()
    resumed = sweep.run(lambdas=lams, out=str(tmp_path / "b"), **opts)
    assert resumed["finished"] == [0.02, 0.03]
    for label in ("0.02", "0.03"):
        a = json.loads((tmp_path / "a" / "records" / f"default-{label}.json").read_text())
        b = json.loads((tmp_path / "b" / "records" / f"default-{label}.json").read_text())
        assert b["extra"]["warm_from"] == a["extra"]["warm_from"] is not None
        assert a["data_eigenvalues"] == b["data_eigenvalues"] and a["residuals"] == b["residuals"], label
        assert a["extra"]["lanczos_matvecs"] == b["extra"]["lanczos_matvecs"]


def test_bad_input_is_refused_before_jax_or_torch_loads(tmp_path):
    """What needs no anchor and no data is checked first: one ``error:`` line, exit 2, nothing created,
    and neither JAX nor torch imported (the refusal takes a fraction of a second)."""
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "out"
    cases = [(["--lambdas", "0:0.1:0"], "NUM"), (["--lambdas", "0.1,0.1"], "duplicate"),
             (["--anchor", str(tmp_path / "none.pth")], "none.pth: no such file"),
             (["--anchor", str(tmp_path)], "is a directory"),
             (["--data-dir", str(tmp_path / "nodata")], "nodata"), (["--tfds-dir", str(tmp_path / "t")], "tfds"),
             (["--dataset", f"npz:{tmp_path / 'x.npz'}"], "x.npz: no such file"),
             (["--shard", "2/2"], "0 <= I < N"), (["--shard", "0/2", "--distributed"], "one or the other"),
             (["--process-id", "1"], "need --distributed"), (["--seeds", "1,1"], "distinct"),
             (["--id", "a/b"], "--id"),
             (["--out", str(blocker / "sub")], "is not a directory")]
    code = ("import json, sys\nfrom hessjax.sweep import main\nresults = []\n"
            "for args in json.loads(sys.argv[1]):\n    results.append(main(['--out', sys.argv[2], *args]))\n"
            "print(json.dumps([results, [m for m in ('jax', 'torch') if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([a for a, _ in cases]), str(out)],
                          capture_output=True, text=True, timeout=120)
    codes, loaded = json.loads(proc.stdout)
    lines = proc.stderr.splitlines()
    assert codes == [2] * len(cases) and loaded == [] and len(lines) == len(cases), proc.stderr
    for line, (args, message) in zip(lines, cases):
        assert line.startswith("error:") and message in line, (args, line)
    assert not out.exists()


def test_the_command_lines_restart_budget_is_the_solvers():
    """``SweepConfig`` spells the solver's default out (importing it would load JAX): the two must agree."""
    from hessjax.lanczos import DEFAULT_MAX_RESTARTS

    assert sweep.SweepConfig().max_restarts == DEFAULT_MAX_RESTARTS
    assert sweep.build_parser().parse_args([]).max_restarts == DEFAULT_MAX_RESTARTS
