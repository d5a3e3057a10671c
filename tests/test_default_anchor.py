"""The shipped default anchor is what anchors/README.md says it is."""

import hashlib
import re

import torch

import hessjax
from hessjax.bridges import TorchMLP, load_anchor
from hessjax.sweep import default_anchor_path

from conftest import REPO


def test_anchor_matches_its_readme_and_reaches_97_percent():
    path = REPO / "anchors" / "default.pth"
    readme = (REPO / "anchors" / "README.md").read_text()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in readme
    anchor = load_anchor(path)
    assert anchor.sizes == (784, 128, 128, 10) and anchor.num_params == 118_282
    data = hessjax.load_mnist()
    acc = float(hessjax.accuracy(anchor.params, data.x_test, data.y_test))
    stated = float(re.search(r"test accuracy \| ([0-9.]+) %", readme).group(1)) / 100
    assert acc >= 0.97 and abs(acc - stated) < 5e-5
    model = TorchMLP()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean())
    assert abs(torch_acc - acc) < 5e-4


def test_default_anchor_path_is_package_data():
    assert default_anchor_path().read_bytes() == (REPO / "anchors" / "default.pth").read_bytes()
