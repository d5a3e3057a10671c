"""Studies: independent workers on one output (``--shard``), several seeds, adaptive refinement.

Workers run as separate processes exactly as a Slurm array would start them, write into one ``--out``
and one store, and one of them is killed with SIGKILL in the middle of its part and started again;
the finished output equals a one-process run's file for file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SMALL, sweep

pytestmark = pytest.mark.slow

GRID = "0,0.0002,0.002,0.02,0.05,0.1"
# continuation segments of 2 λ: each worker's part is one segment, as in the one-process run, so every λ
# starts its eigensolve from the same vectors in both (0.02 from 0.002's, read from the store after the kill)
SEGMENTS = ["--segment-length", "2"]
LABELS = ["0", "0.0002", "0.002", "0.02", "0.05", "0.1"]
TIMING = ["seconds"]


def _worker(out, shard, env):
    return subprocess.Popen([sys.executable, "-m", "hessjax.sweep", "--out", str(out), "--lambdas", GRID, "--quiet",
                             *SMALL, *SEGMENTS, "--shard", shard], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _per_lambda_files(out):
    return sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")
                  and not p.name.startswith(("Model-", "manifest-")))


def test_three_workers_one_killed_and_restarted_equal_one_process(tmp_path):
    env = dict(os.environ, HESSJAX_CACHE_DIR=str(REPO / ".jax_cache"))
    shared, single = tmp_path / "shared", tmp_path / "single"
    workers = {s: _worker(shared, s, env) for s in ("0/3", "1/3", "2/3")}
    # worker 1/3 owns 0.002 and 0.02: kill it once its first λ is finished, in the middle of its part
    deadline = time.time() + 300
    while time.time() < deadline and not (shared / "records" / "default-0.002.json").exists():
        time.sleep(0.02)
    workers["1/3"].send_signal(signal.SIGKILL)
    workers["1/3"].wait()
    for s in ("0/3", "2/3"):
        _, err = workers[s].communicate(timeout=600)
        assert workers[s].returncode == 0, err[-2000:]
    assert (shared / "records" / "default-0.002.json").exists()
    assert not (shared / "records" / "default-0.02.json").exists()  # its second λ was lost with it
    restarted = _worker(shared, "1/3", env)
    _, err = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, err[-2000:]
    sweep("--out", single, "--lambdas", GRID, "--quiet", *SMALL, *SEGMENTS)

    assert _per_lambda_files(shared) == _per_lambda_files(single) and len(_per_lambda_files(shared)) == 6 * 5
    for name in _per_lambda_files(single):
        assert (shared / name).read_bytes() == (single / name).read_bytes(), name
    a, b = pd.read_csv(single / "Model-default.csv"), pd.read_csv(shared / "Model-default.csv")
    assert len(b) == 6  # no lost or torn rows
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))
    manifest = json.loads((shared / "manifest-default.json").read_text())
    assert sorted(manifest["lambdas"]) == sorted(LABELS)
    import xarray as xr

    ds = xr.open_zarr(shared / "default.zarr", consolidated=False).sortby("lambda")
    ref = xr.open_zarr(single / "default.zarr", consolidated=False).sortby("lambda")
    assert bool(ds["done"].all()) and ds["lambda"].values.tolist() == ref["lambda"].values.tolist()
    for name in ("eigenvalues", "data_eigenvalues", "residuals", "weights", "eigenvectors"):
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
    assert not list(shared.glob(".tmp-*")) and not list((shared / "records").glob(".tmp-*"))


def test_shard_refusals(tmp_path):
    for args, message in ((["--shard", "3/3"], "0 <= I < N"), (["--shard", "x"], "expected I/N"),
                          (["--shard", "slurm"], "SLURM_ARRAY_TASK_ID"),
                          (["--shard", "0/2", "--refine", "distance"], "--refine decides")):
        proc = sweep("--out", tmp_path, "--lambdas", "0,0.1", *SMALL, *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_slurm_array_environment_picks_the_part(tmp_path):
    proc = sweep("--out", tmp_path, "--lambdas", GRID, *SMALL, "--shard", "slurm", "--dry-run",
                 env={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert "worker 1 of 3" in proc.stdout and "2 to run" in proc.stdout


def test_seeds_and_refinement(tmp_path):
    """Two seeds, each its own run id; refinement by distance adds λ between 0 (far from the anchor)
    and 0.1 (held at it), as ordinary finished λ of each run."""
    sweep("--out", tmp_path, "--lambdas", "0,0.1", "--quiet", *SMALL, "--seeds", "0,1", "--refine", "distance",
          "--refine-budget", "2", "--init", "random")
    for seed in (0, 1):
        run_id = f"default-seed{seed}"
        model = pd.read_csv(tmp_path / f"Model-{run_id}.csv")
        assert model["lambda"].tolist() == [0, 0.001, 0.01, 0.1]  # a decade below 0.1, then below 0.01
        assert (tmp_path / f"Hessian-eigenvalues-{run_id}-0.001.csv").exists()
        manifest = json.loads((tmp_path / f"manifest-{run_id}.json").read_text())
        assert manifest["config"]["seed"] == seed
    w0 = pd.read_csv(tmp_path / "gradients-default-seed0-0.csv")["gradient"].to_numpy()
    w1 = pd.read_csv(tmp_path / "gradients-default-seed1-0.csv")["gradient"].to_numpy()
    assert not np.allclose(w0, w1)  # different seeds, different trainings
