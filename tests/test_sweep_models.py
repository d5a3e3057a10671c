"""``--model``, ``--activation`` and ``--dataset`` end to end: LeNet on its shipped anchor, a tanh MLP on a
user's ``.npz``, and a user's own Flax CNN — each run as a user runs it, its written weights loaded back
into its torch module with ``strict=True``, and its μ checked against float64 torch + scipy ``eigsh``
at those weights (:mod:`hessjax.bridges.verify`). Every refusal is one ``error:`` line and exit 2."""

import json

import numpy as np
import pytest
import torch

from conftest import REPO, sweep
from hessjax.bridges import TorchLeNet, TorchMLP
from hessjax.bridges.verify import verify_run

TINY = ["--train-samples", "400", "--test-samples", "200", "--hessian-samples", "128", "--k", "3",
        "--max-epochs", "2", "--batch-size", "100", "--chunk-size", "64", "--quiet"]
CNN = REPO / "examples" / "small_cnn.py"


def _small_cnn():
    import importlib.util

    spec = importlib.util.spec_from_file_location("small_cnn_example", CNN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    """A user's data set: the first 600 MNIST images 2×2-average-pooled to 14×14 floats, as an .npz."""
    from hessjax import load_mnist

    data = load_mnist(train_samples=500, test_samples=200)
    pool = lambda x: x.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))  # noqa: E731
    path = tmp_path_factory.mktemp("npz") / "mnist14.npz"
    np.savez(path, x_train=pool(data.x_train), y_train=data.y_train, x_test=pool(data.x_test), y_test=data.y_test)
    return path


def _check(out, run_id, module, lam="0.01"):
    state = torch.load(out / f"model_weights-{run_id}-{lam}.pth", weights_only=True)
    module.load_state_dict(state, strict=True)  # torch's own module, its own keys and layouts
    result = verify_run(out, run_id)
    for row in result["lambdas"]:
        assert row["ok"] and row["max_error_over_mu1"] <= 1e-5 and row["bound_violations"] == 0, row
    return result


@pytest.mark.slow
def test_lenet_on_its_shipped_anchor_matches_float64_torch(tmp_path):
    out = tmp_path / "lenet"
    sweep("--model", "lenet", "--out", out, "--lambdas", "0.01", *TINY)
    manifest = json.loads((out / "manifest-lenet.json").read_text())
    assert manifest["config"]["model"] == "lenet" and manifest["extra"]["model"]["num_params"] == 44_426
    assert list(manifest["extra"]["model"]["parameters"])[:2] == ["0.weight", "0.bias"]
    result = _check(out, "lenet", TorchLeNet())
    assert result["model"] == "lenet" and result["samples"] == 128


@pytest.mark.slow
def test_a_tanh_mlp_on_a_users_npz_matches_float64_torch_and_resumes(tmp_path, mnist_npz):
    anchor = tmp_path / "mlp196.pth"
    torch.manual_seed(0)
    torch.save(TorchMLP((196, 24, 10), activation="tanh").state_dict(), anchor)
    out = tmp_path / "out"
    args = ["--dataset", f"npz:{mnist_npz}", "--activation", "tanh", "--anchor", anchor, "--out", out, "--lambdas",
            "0,0.01", *TINY]
    sweep(*args)
    _check(out, "mlp196", TorchMLP((196, 24, 10), activation="tanh"))
    again = sweep(*args)
    assert "0 λ finished" not in again.stderr  # quiet: nothing printed, nothing redone
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 2
    # another data file under the same id is another configuration
    data = dict(np.load(mnist_npz))
    data["x_train"] = data["x_train"][::-1].copy()
    changed = tmp_path / "changed.npz"
    np.savez(changed, **data)
    mnist_npz.write_bytes(changed.read_bytes())
    proc = sweep(*args, check=False)
    assert proc.returncode == 2 and "dataset_sha256" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_users_flax_cnn_matches_float64_torch(tmp_path):
    twin = _small_cnn().torch_module()
    torch.manual_seed(1)
    anchor = tmp_path / "cnn.pth"
    torch.save(twin.state_dict(), anchor)
    out = tmp_path / "out"
    sweep("--model", f"{CNN}:model", "--anchor", anchor, "--out", out, "--lambdas", "0.01", "--init", "anchor",
          *TINY)
    manifest = json.loads((out / "manifest-cnn.json").read_text())
    assert manifest["config"]["model"] == f"{CNN}:model" and len(manifest["config"]["model_sha256"]) == 64
    _check(out, "cnn", _small_cnn().torch_module())


def _refused(capsys, *args):
    from hessjax.sweep import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def test_model_and_data_refusals_are_one_line_before_any_work(tmp_path, capsys, mnist_npz):
    out = tmp_path / "out"
    common = ["--out", out, "--lambdas", "0", "--quiet", "--train-samples", "100", "--test-samples", "50"]
    lenet_anchor = REPO / "anchors" / "lenet.pth"
    assert "a 4-D weight is a convolution kernel, so this is not an MLP anchor" in _refused(
        capsys, "--anchor", lenet_anchor, *common)
    assert "an MLP anchor? use --model mlp" in _refused(capsys, "--model", "lenet", "--anchor",
                                                       REPO / "anchors" / "default.pth", *common)
    assert "'relu' is refused" in _refused(capsys, "--activation", "relu", *common)
    assert "applies to the MLP only" in _refused(capsys, "--model", "lenet", "--activation", "tanh", *common)
    assert "--model 'resnet'" in _refused(capsys, "--model", "resnet", *common)
    assert "needs --anchor" in _refused(capsys, "--model", f"{CNN}:model", *common)
    assert "fed by the 196 inputs" in _refused(capsys, "--dataset", f"npz:{mnist_npz}", *common)
    assert "samples of shape [14, 14] do not fit the model's input [1, 28, 28]" in _refused(
        capsys, "--model", "lenet", "--dataset", f"npz:{mnist_npz}", *common)
    labels = tmp_path / "labels.npz"
    d = dict(np.load(mnist_npz))
    d["y_train"] = d["y_train"].copy()
    d["y_train"][7] = 10
    np.savez(labels, **d)
    assert "y_train[7] = 10 is out of range" in _refused(capsys, "--model", "lenet", "--dataset", f"npz:{labels}",
                                                         *common)
    assert "expected mnist" in _refused(capsys, "--dataset", "cifar10", *common)
    assert not out.exists() or not any(out.iterdir())


def test_dry_run_names_the_model_and_the_data(tmp_path, capsys):
    from hessjax.sweep import main

    assert main(["--model", "lenet", "--dry-run", "--out", str(tmp_path / "o"), "--lambdas", "0,0.1"]) == 0
    text = capsys.readouterr().out
    assert "model         lenet: LeNet-5" in text and "P=44,426" in text
    assert "data          mnist: 60,000 train / 10,000 test / 60,000 Hessian samples of [1, 28, 28], 10 classes" in text
