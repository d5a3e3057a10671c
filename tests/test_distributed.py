"""Two processes under ``--distributed`` (JAX's multi-controller runtime, gloo collectives on CPU).

The two processes form one program over two devices, each writing the λ its device holds; the files
equal, bit for bit, those of one process over two devices (forced host devices), which compiles the
same sharded programs. (One process over one device runs a batch of one through the un-vmapped
path, which differs from these at float32 rounding.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, SMALL, sweep

LAMS = "0,0.001,0.01,0.1"
TIMING = ("seconds",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_over_two_devices(tmp_path):
    port = _free_port()
    env = dict(os.environ, HESSJAX_CACHE_DIR=str(REPO / ".jax_cache"))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-m", "hessjax.sweep", "--out", str(tmp_path / "two"), "--lambdas", LAMS,
                               "--quiet", *SMALL, "--distributed", "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    sweep("--out", tmp_path / "one", "--lambdas", LAMS, "--quiet", *SMALL,
          env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir() if p.suffix in (".csv", ".pth"))
    assert names == sorted(p.name for p in two.iterdir() if p.suffix in (".csv", ".pth")) and len(names) == 1 + 4 * 5
    for name in names:
        if name.startswith("Model-"):
            a, b = pd.read_csv(one / name), pd.read_csv(two / name)
            pd.testing.assert_frame_equal(a.drop(columns=list(TIMING)), b.drop(columns=list(TIMING)))
        else:
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
