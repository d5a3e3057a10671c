"""Test configuration, set once: float64 available everywhere, a persistent compilation cache.

Production code derives every dtype from its inputs, so float32 tests pass float32 arrays
explicitly; float64 references are then available without toggling flags inside test bodies.
"""

import os
import pathlib
import subprocess
import sys

import jax
import pytest
import torch

jax.config.update("jax_enable_x64", True)
_cache = pathlib.Path(os.environ.get("HESSJAX_TEST_CACHE", pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "hessjax" / "data" / "mnist"


ANCHOR = REPO / "anchors" / "default.pth"
SMALL = ["--train-samples", "600", "--test-samples", "300", "--hessian-samples", "400", "--k", "4",
         "--max-epochs", "3", "--batch-size", "100", "--chunk-size", "250", "--eigenvectors", "csv"]


def sweep(*args, env=None, check=True, timeout=600):
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("HESSJAX_CACHE_DIR", str(REPO / ".jax_cache"))
    proc = subprocess.run([sys.executable, "-m", "hessjax.sweep", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def read_pth(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """A small real sweep, run once per session the way a user runs it."""
    out = tmp_path_factory.mktemp("base")
    sweep("--out", out, "--lambdas", "0,0.0002,0.02", "--quiet", *SMALL)
    return out
