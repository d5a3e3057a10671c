"""``--init follow``: each λ trains from its predecessor's converged weights, up the grid from the seeded
initialisation (run ``ID``) and down from the anchor (``ID-descending``) — against the same training
done by hand with :func:`hessjax.training.train`; resumed walks equal uninterrupted ones bit for bit;
the report compares the two walks (hysteresis)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hessjax.bridges import TorchMLP, load_anchor
from hessjax.datasets import load_dataset
from hessjax.hvp import chunk_data
from hessjax.models import mlp
from hessjax.report.load import SweepData
from hessjax.report.walks import compare_walks, descending_partner
from hessjax.training import TrainConfig, initial_params, train

LAMS = (0.0, 0.1, 0.3)
SETTINGS = dict(lambdas="0,0.1,0.3", init="follow", k=2, max_epochs=6, patience=2, batch_size=20, chunk_size=30,
                lr=0.01, dtype="float64", quiet=True, eigenvectors="none")


@pytest.fixture(scope="module")
def follow_run(tmp_path_factory):
    from hessjax.sweep import run

    root = tmp_path_factory.mktemp("follow")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 8))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    np.savez(root / "data.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    torch.manual_seed(0)
    torch.save(TorchMLP((8, 6, 3), activation="tanh").state_dict(), root / "anchor.pth")
    settings = dict(SETTINGS, dataset=f"npz:{root / 'data.npz'}", anchor=str(root / "anchor.pth"),
                    activation="tanh")
    run(out=str(root / "out"), **settings)
    return root, settings


def _weights(out, run_id):
    import zarr

    group = zarr.open_group(str(out / f"{run_id}.zarr"), mode="r")
    lams = np.asarray(group["lambda"][:])
    return {float(v): np.asarray(group["weights"][i]) for i, v in enumerate(lams)}


def test_each_lambda_trains_from_its_predecessors_weights(follow_run):
    root, settings = follow_run
    out = root / "out"
    data = load_dataset(settings["dataset"], dtype=np.float64)
    model = mlp((8, 6, 3), "tanh")
    anchor = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), load_anchor(root / "anchor.pth", n_inputs=8, n_classes=None).params)
    cfg = TrainConfig(settings["lr"], settings["batch_size"], settings["max_epochs"], settings["patience"], 1e-4)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    chunks = chunk_data(x, y, settings["chunk_size"])
    unravel = jax.flatten_util.ravel_pytree(anchor)[1]
    for run_id, order, start in (("anchor", LAMS, initial_params(0, model, jnp.float64)),
                                 ("anchor-descending", LAMS[::-1], anchor)):
        written = _weights(out, run_id)
        records = {lam: json.loads((out / "records" / f"{run_id}-{label}.json").read_text())
                   for lam, label in zip(LAMS, ("0", "0.1", "0.3"))}
        previous = None
        for lam in order:
            state = train(start, anchor, lam, x, y, chunks, 0, cfg, apply=model.apply)
            best = np.asarray(jax.flatten_util.ravel_pytree(state.best_params)[0])
            np.testing.assert_allclose(written[lam], best, rtol=1e-6, atol=1e-7)  # the store keeps float32
            assert records[lam]["extra"]["init_from"] == previous
            previous = {0.0: "0", 0.1: "0.1", 0.3: "0.3"}[lam]
            start = unravel(jnp.asarray(best.astype(np.float32), jnp.float64))  # rounded as the store keeps it
    # the descending walk's first λ starts at the anchor itself, the ascending walk's at the initialisation
    assert json.loads((out / "records" / "anchor-descending-0.3.json").read_text())["extra"]["init_from"] is None


def test_an_interrupted_walk_resumes_bit_for_bit(follow_run, tmp_path):
    import shutil

    from hessjax.sweep import run

    root, settings = follow_run
    resumed = tmp_path / "out"
    shutil.copytree(root / "out", resumed)
    for name in ("anchor-0.3.json", "anchor-descending-0.json", "anchor-descending-0.1.json"):
        (resumed / "records" / name).unlink()  # as if killed before these were finished
    summary = run(out=str(resumed), **settings)
    assert sorted(summary["runs"][0]["finished"]) == [0.3] and sorted(summary["runs"][1]["finished"]) == [0.0, 0.1]
    for run_id in ("anchor", "anchor-descending"):
        a, b = _weights(root / "out", run_id), _weights(resumed, run_id)
        for lam in LAMS:
            np.testing.assert_array_equal(a[lam], b[lam])
        for label in ("0", "0.1", "0.3"):
            ra = json.loads((root / "out" / "records" / f"{run_id}-{label}.json").read_text())
            rb = json.loads((resumed / "records" / f"{run_id}-{label}.json").read_text())
            assert ra["eigenvalues"] == rb["eigenvalues"] and ra["extra"]["init_from"] == rb["extra"]["init_from"]


def test_the_report_compares_the_two_walks(follow_run):
    from hessjax.report import main

    root, _ = follow_run
    assert main([str(root / "out"), "--quiet"]) == 0
    table = np.genfromtxt(root / "out" / "report-anchor" / "walks.csv", delimiter=",", names=True)
    up, down = _weights(root / "out", "anchor"), _weights(root / "out", "anchor-descending")
    for row in table:
        lam = float(row["lambda"])
        np.testing.assert_allclose(row["branch_distance"], np.linalg.norm(up[lam].astype(np.float64) - down[lam]),
                                   rtol=1e-12)
    assert (root / "out" / "report-anchor" / "walks.png").stat().st_size > 5000
    assert (root / "out" / "report-anchor-descending" / "summary.md").exists()


def _data(lams, distances, weights=None, mu1=None):
    lams = np.asarray(lams, np.float64)
    reader = None if weights is None else (lambda i: np.asarray(weights[i]))
    return SweepData("r", "zarr", lams, {"distance_to_anchor": np.asarray(distances, np.float64),
                                         "train_loss": np.zeros(lams.size)},
                     np.asarray(mu1 if mu1 is not None else np.ones((lams.size, 1))), lams.size, weight_reader=reader)


def test_compare_walks_marks_where_the_branches_part():
    # the same basin at λ = 1 (end points 0.1 apart, 2 from the anchor); other basins at λ = 0
    up = _data([0.0, 1.0], [3.0, 2.0], weights=[[3.0, 0.0], [2.0, 0.0]])
    down = _data([0.0, 0.5, 1.0], [3.0, 2.5, 2.0], weights=[[0.0, 3.0], [0.0, 2.5], [1.9, 0.0]])
    cmp = compare_walks(up, down)
    assert cmp.exact and cmp.lambdas.tolist() == [0.0, 1.0]
    np.testing.assert_allclose(cmp.branch_distance, [np.sqrt(18.0), 0.1])
    assert cmp.differ.tolist() == [True, False]
    # without weights: the lower bound |Δ‖θ − θ_ref‖| sees nothing where both are 3 from the anchor
    blind = compare_walks(_data([0.0, 1.0], [3.0, 2.0]), _data([0.0, 1.0], [3.0, 0.5]))
    assert not blind.exact and blind.differ.tolist() == [False, True]
    assert descending_partner("a", ["a", "a-descending"]) == "a-descending"
    assert descending_partner("a-descending", ["a", "a-descending"]) is None
    with pytest.raises(ValueError, match="threshold"):
        compare_walks(up, down, threshold=0)


def test_workers_each_walk_their_own_part(follow_run, tmp_path):
    """``--shard`` with ``--init follow``: each worker's part is its own walk (its first λ from the walk's
    start), both walks of both workers land in one output."""
    from hessjax.sweep import run

    root, settings = follow_run
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        run(out=str(out), shard=shard, **settings)
    init_from = {}
    for run_id in ("anchor", "anchor-descending"):
        for label in ("0", "0.1", "0.3"):
            init_from[run_id, label] = json.loads((out / "records" / f"{run_id}-{label}.json").read_text())[
                "extra"]["init_from"]
    # worker 0 holds λ = 0 only, worker 1 λ = 0.1 and 0.3
    assert init_from["anchor", "0"] is None and init_from["anchor", "0.1"] is None and init_from["anchor", "0.3"] == "0.1"
    assert init_from["anchor-descending", "0.3"] is None and init_from["anchor-descending", "0.1"] == "0.3"
    assert init_from["anchor-descending", "0"] is None
    # worker 1's ascending walk is the one-process walk's from λ = 0.1 on only if it starts alike: it starts at
    # the initialisation instead of at λ = 0's weights, so its weights differ from the uninterrupted walk's
    assert not np.array_equal(_weights(out, "anchor")[0.1], _weights(root / "out", "anchor")[0.1])
    np.testing.assert_array_equal(_weights(out, "anchor")[0.0], _weights(root / "out", "anchor")[0.0])
