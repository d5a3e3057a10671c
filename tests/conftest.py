"""Test configuration, set once: float64 available everywhere, a persistent compilation cache.

Production code derives every dtype from its inputs, so float32 tests pass float32 arrays
explicitly; float64 references are then available without toggling flags inside test bodies.
"""

import os
import pathlib

import jax

jax.config.update("jax_enable_x64", True)
_cache = pathlib.Path(os.environ.get("HESSJAX_TEST_CACHE", pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "hessjax" / "data" / "mnist"
