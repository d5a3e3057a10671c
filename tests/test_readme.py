"""The README's Python examples run as written against a real (small) sweep's output."""

import re

import numpy as np
import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow


def python_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture
def workdir(base_run, tmp_path, monkeypatch):
    (tmp_path / "results").symlink_to(base_run)
    (tmp_path / "anchors").symlink_to(REPO / "anchors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_the_loading_examples():
    blocks = python_blocks()
    assert any("flat_to_state_dict" in b for b in blocks)
    assert any("xr.open_zarr" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(workdir, index):
    code = python_blocks()[index]
    namespace = {}
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    if "perturbed" in namespace:  # the PyTorch example: θ + 0.1·v1 really moved along v1
        model, perturbed, v1 = namespace["model"], namespace["perturbed"], namespace["v1"]
        moved = torch.nn.utils.parameters_to_vector(perturbed.values()) - torch.nn.utils.parameters_to_vector(
            model.state_dict().values())
        np.testing.assert_allclose(moved.numpy(), 0.1 * v1, rtol=1e-5, atol=1e-7)
    if "metrics" in namespace:
        assert 0.02 in namespace["metrics"].index
        assert namespace["v"].shape[1] == 118_282
        assert not np.isnan(namespace["top"].sel({"lambda": 0.02}).values).any()
    if "s" in namespace and hasattr(namespace["s"], "error_bounds"):  # hessjax.spectrum at one point
        s = namespace["s"]
        assert s.converged.all() and s.eigenvalues.shape == (5,) and s.eigenvectors.shape == (5, 44_426)
        assert np.all(np.diff(s.eigenvalues) <= 0) and np.all(s.error_bounds < 1e-4 * s.eigenvalues[0])
    if "eig" in namespace:  # the library example
        eig = namespace["eig"]
        assert bool(eig.converged.all()) and eig.eigenvalues.shape == (10,)
        assert float(namespace["loss"]) > 0
