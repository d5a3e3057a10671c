"""Anchor .pth round trips for every accepted layout, and every refusal with its message.

Round trips are checked bit for bit (``uint8`` views), and the written file must load with
``load_state_dict(strict=True)`` into the module the anchor came from.
"""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree
from torch import nn
from torch.nn.utils import parameters_to_vector

from hessjax.bridges import (
    AnchorError,
    flat_to_state_dict,
    load_anchor,
    parameter_names,
    params_to_state_dict,
    save_state_dict,
    state_dict_to_params,
)
from hessjax.models import init_mlp


# --------------------------------------------------------------------------- modules of every layout


def _fill(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic, distinct values in every parameter (an explicit generator, no global seed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    return module


def _sequential(sizes=(784, 128, 128, 10), dtype=torch.float32) -> nn.Module:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b, dtype=dtype)] + ([nn.Sigmoid()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class Named(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.fc1 = nn.Linear(784, 128, dtype=dtype)
        self.fc2 = nn.Linear(128, 128, dtype=dtype)
        self.fc3 = nn.Linear(128, 10, dtype=dtype)

    def forward(self, x):
        return self.fc3(torch.sigmoid(self.fc2(torch.sigmoid(self.fc1(x)))))


class Reversed(nn.Module):
    """Layers registered out of forward order: keys do not chain, the shapes decide (uniquely)."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(64, 10)
        self.inp = nn.Linear(784, 32)
        self.mid = nn.Linear(32, 64)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _sequential((784, 32, 10))


# name -> (module factory, how the file wraps the state dict, expected sizes, expected weight keys)
LAYOUTS = {
    "sequential": (_sequential, None, (784, 128, 128, 10), ("0.weight", "2.weight", "4.weight")),
    "named": (Named, None, (784, 128, 128, 10), ("fc1.weight", "fc2.weight", "fc3.weight")),
    "dataparallel": (lambda: nn.DataParallel(Named()), None, (784, 128, 128, 10),
                     ("module.fc1.weight", "module.fc2.weight", "module.fc3.weight")),
    "ckpt_state_dict": (_sequential, "state_dict", (784, 128, 128, 10), ("0.weight", "2.weight", "4.weight")),
    "ckpt_model_state_dict": (Named, "model_state_dict", (784, 128, 128, 10),
                              ("fc1.weight", "fc2.weight", "fc3.weight")),
    "wide_256": (lambda: _sequential((784, 256, 256, 10)), None, (784, 256, 256, 10),
                 ("0.weight", "2.weight", "4.weight")),
    "float64": (lambda: Named(torch.float64), None, (784, 128, 128, 10), ("fc1.weight", "fc2.weight", "fc3.weight")),
    "bfloat16": (lambda: _sequential(dtype=torch.bfloat16), None, (784, 128, 128, 10),
                 ("0.weight", "2.weight", "4.weight")),
    "nested_net": (Nested, None, (784, 32, 10), ("net.0.weight", "net.2.weight")),
    "registered_out_of_order": (Reversed, None, (784, 32, 64, 10), ("inp.weight", "mid.weight", "out.weight")),
}


def _write(path, module: nn.Module, container: str | None):
    sd = module.state_dict()
    if container is None:
        torch.save(sd, path)
    else:
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        torch.save({"epoch": 3, container: sd, "optimizer": opt.state_dict(), "note": "trained"}, path)
    return sd


def _bits(a) -> np.ndarray:
    """The raw bytes of a torch tensor or jax/numpy array (bfloat16 included)."""
    if isinstance(a, torch.Tensor):
        return a.detach().contiguous().view(torch.uint8).numpy()
    return np.ascontiguousarray(np.asarray(a)).view(np.uint8)


def _same_bits(a, b) -> bool:
    return _bits(a).shape == _bits(b).shape and np.array_equal(_bits(a), _bits(b))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_round_trip_every_layout(tmp_path, layout):
    factory, container, sizes, weight_keys = LAYOUTS[layout]
    module = _fill(factory(), seed=1)
    src = tmp_path / "anchor.pth"
    original = _write(src, module, container)

    anchor = load_anchor(src)
    assert anchor.sizes == sizes
    assert tuple(w for w, _ in anchor.keys) == weight_keys
    assert tuple(b for _, b in anchor.keys) == tuple(w[: -len("weight")] + "bias" for w in weight_keys)
    assert anchor.state_dict_keys == tuple(original)
    assert anchor.dtype == next(module.parameters()).dtype
    assert anchor.container == container
    assert anchor.prefix == {"dataparallel": "module.", "nested_net": "net."}.get(layout, "")
    assert len(anchor.sha256) == 64
    for (w, b), (wk, bk) in zip(anchor.params, anchor.keys):
        assert _same_bits(w, original[wk]) and _same_bits(b, original[bk])

    # write back untouched: the same keys, order, dtype and bits; loads strictly into the source module
    dst = tmp_path / "out.pth"
    save_state_dict(dst, anchor.params, anchor)
    written = torch.load(dst, map_location="cpu", weights_only=True)
    assert list(written) == list(original)
    for key in original:
        assert written[key].dtype == original[key].dtype and _same_bits(written[key], original[key]), key
    fresh = factory()
    fresh.load_state_dict(written, strict=True)
    for key, value in fresh.state_dict().items():
        assert _same_bits(value, original[key])

    again = load_anchor(dst)
    assert again.keys == anchor.keys and again.state_dict_keys == anchor.state_dict_keys
    assert all(_same_bits(p, q) for p, q in zip(jax.tree.leaves(again.params), jax.tree.leaves(anchor.params)))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the atomic write left nothing behind


def test_save_after_change_and_state_dict_to_params(tmp_path):
    module = _fill(Named(), seed=2)
    torch.save(module.state_dict(), tmp_path / "a.pth")
    anchor = load_anchor(tmp_path / "a.pth")
    moved = jax.tree.map(lambda p: p + 1, anchor.params)
    save_state_dict(tmp_path / "a.pth", moved, anchor)  # overwrite in place, atomically
    fresh = Named()
    fresh.load_state_dict(torch.load(tmp_path / "a.pth", weights_only=True), strict=True)
    back = state_dict_to_params(fresh.state_dict(), anchor)
    assert all(_same_bits(p, q) for p, q in zip(jax.tree.leaves(back), jax.tree.leaves(moved)))
    with pytest.raises(AnchorError, match=r"missing \['fc3.bias'\]"):
        state_dict_to_params({k: v for k, v in fresh.state_dict().items() if k != "fc3.bias"}, anchor)
    with pytest.raises(ValueError, match=r"'fc2.weight' has shape \[128, 127\], expected \[128, 128\]"):
        save_state_dict(tmp_path / "b.pth", ((moved[0]), (moved[1][0][:, :127], moved[1][1]), moved[2]), anchor)
    assert not (tmp_path / "b.pth").exists()


# --------------------------------------------------------------------------- flat vectors


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_flat_to_state_dict_inverts_ravel_pytree(tmp_path, dtype):
    sizes = (784, 32, 16, 10)
    params = init_mlp(jax.random.PRNGKey(0), sizes, dtype)
    module = _sequential(sizes, dtype=torch.float32 if dtype == jnp.float32 else torch.float64)
    torch.save(module.state_dict(), tmp_path / "a.pth")
    anchor = load_anchor(tmp_path / "a.pth")

    flat = ravel_pytree(params)[0]
    sd = flat_to_state_dict(flat, anchor)
    expected = params_to_state_dict(params, anchor)
    assert list(sd) == list(expected)
    for key in sd:
        assert sd[key].shape == expected[key].shape and _same_bits(sd[key], expected[key]), key
    module.load_state_dict(sd, strict=True)
    assert _same_bits(parameters_to_vector(module.parameters()), flat)

    # the vector keeps its own dtype (a float64 eigenvector of a float32 model stays float64)
    v64 = np.random.default_rng(0).standard_normal(anchor.num_params)
    sd64 = flat_to_state_dict(v64, anchor)
    assert all(t.dtype == torch.float64 for t in sd64.values())
    assert _same_bits(parameters_to_vector(list(sd64.values())), v64)
    with pytest.raises(ValueError, match=rf"expected \[{anchor.num_params}\]"):
        flat_to_state_dict(v64[:-1], anchor)


def test_parameter_names(tmp_path):
    module = _fill(Reversed(), seed=3)  # key order out, in, mid; flat order follows the chain
    torch.save(module.state_dict(), tmp_path / "a.pth")
    anchor = load_anchor(tmp_path / "a.pth")
    names = parameter_names(anchor)
    assert len(names) == anchor.num_params == 784 * 32 + 32 + 32 * 64 + 64 + 64 * 10 + 10
    assert names[0] == "inp.weight" and names[784 * 32 - 1] == "inp.weight" and names[784 * 32] == "inp.bias"
    assert names[-1] == "out.bias" and names[-11] == "out.weight"
    index = flat_to_state_dict(np.arange(anchor.num_params), anchor)
    for key, idx in index.items():
        assert {names[i] for i in idx.flatten().tolist()} == {key}


# --------------------------------------------------------------------------- refusals


def _good_sd():
    return collections.OrderedDict(_fill(_sequential(), seed=4).state_dict())


def _refused(path, *fragments, **kwargs):
    with pytest.raises(AnchorError) as info:
        load_anchor(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_refuses_missing_file_and_directory(tmp_path):
    _refused(tmp_path / "nope.pth", "no such file")
    _refused(tmp_path, "is a directory")


def test_refuses_empty_truncated_and_non_pickle(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_good_sd(), good)
    data = good.read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    _refused(tmp_path / "empty.pth", "empty")
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "truncated.pth", "not a readable torch file")
    (tmp_path / "text.pth").write_bytes(b"this is not a pickle at all\n")
    _refused(tmp_path / "text.pth", "not a readable torch file")


def _edited(tmp_path, name, edit):
    sd = _good_sd()
    edit(sd)
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_refuses_bad_layers(tmp_path):
    def drop(*keys):
        return lambda sd: [sd.pop(k) for k in keys]

    # the last layer missing: the chain ends at 128, not 10
    _refused(_edited(tmp_path, "m1.pth", drop("4.weight", "4.bias")),
             "'2.weight' has shape [128, 128], expected [10, 128]", "10 classes")
    # a middle layer missing between equal widths chains 784 -> 128 -> 10; pinning sizes refuses it
    path = _edited(tmp_path, "m2.pth", drop("2.weight", "2.bias"))
    assert load_anchor(path).sizes == (784, 128, 10)
    _refused(path, "expected 3 layers", "found 2", sizes=(784, 128, 128, 10))
    # a layer without its bias, a bias without its weight
    _refused(_edited(tmp_path, "b1.pth", drop("2.bias")), "'2.weight' [128, 128] has no bias '2.bias'")
    _refused(_edited(tmp_path, "b2.pth", drop("2.weight")), "'2.bias' [128] has no weight '2.weight'")
    # an extra layer that does not chain
    _refused(_edited(tmp_path, "e1.pth", lambda sd: sd.update({"extra.weight": torch.zeros(5, 128),
                                                               "extra.bias": torch.zeros(5)})),
             "'extra.weight' has shape [5, 128], expected [*, 10]")
    # extra tensors and entries that are not weight/bias pairs
    _refused(_edited(tmp_path, "e2.pth", lambda sd: sd.update({"bn.running_mean": torch.zeros(128)})),
             "unexpected tensor 'bn.running_mean' [128]")
    _refused(_edited(tmp_path, "e3.pth", lambda sd: sd.update({"epoch": 3})), "'epoch' holds a int")
    # wrong shapes
    _refused(_edited(tmp_path, "s1.pth", lambda sd: sd.update({"2.weight": torch.zeros(128, 100)})),
             "'2.weight' has shape [128, 100], expected [*, 128]")
    _refused(_edited(tmp_path, "s2.pth", lambda sd: sd.update({"2.bias": torch.zeros(127)})),
             "'2.bias' has shape [127], expected [128]")
    _refused(_edited(tmp_path, "s3.pth", lambda sd: sd.update({"0.weight": torch.zeros(128, 783)})),
             "'0.weight' has shape [128, 783], expected [*, 784]")
    _refused(_edited(tmp_path, "s4.pth", lambda sd: sd.update({"0.weight": torch.zeros(128, 784, 1)})),
             "'0.weight' has shape [128, 784, 1], expected a 2-D")
    # layers whose order cannot be told from their shapes
    _refused(_edited(tmp_path, "o1.pth", lambda sd: sd.update(
        {"0.weight": sd.pop("0.weight"), "0.bias": sd.pop("0.bias"), "9.weight": torch.zeros(128, 128),
         "9.bias": torch.zeros(128)})), "more than one order")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_refuses_non_float_dtype(tmp_path, dtype):
    path = _edited(tmp_path, "d.pth", lambda sd: sd.update({"2.weight": torch.zeros(128, 128, dtype=dtype)}))
    _refused(path, f"'2.weight' has dtype {dtype}, expected a float dtype")


def test_refuses_mixed_dtypes(tmp_path):
    path = _edited(tmp_path, "d.pth", lambda sd: sd.update({"2.bias": sd["2.bias"].double()}))
    _refused(path, "'2.bias' has dtype torch.float64 but '0.weight' has torch.float32")


@pytest.mark.parametrize("value, label", [(float("nan"), "3 NaN and 0 Inf"), (float("-inf"), "0 NaN and 3 Inf")])
def test_refuses_non_finite(tmp_path, value, label):
    def poison(sd):
        sd["2.weight"][5, :3] = value

    _refused(_edited(tmp_path, "n.pth", poison), f"'2.weight' [128, 128] has {label}")


def test_refuses_non_dict_and_empty(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    _refused(tmp_path / "list.pth", "expected a state dict", "found list")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    _refused(tmp_path / "tensor.pth", "found Tensor")
    torch.save({}, tmp_path / "empty.pth")
    _refused(tmp_path / "empty.pth", "the state dict is empty")
    torch.save({"state_dict": [1, 2]}, tmp_path / "ckpt.pth")
    _refused(tmp_path / "ckpt.pth", "['state_dict']", "found list")
    torch.save({"state_dict": _good_sd(), "model_state_dict": _good_sd()}, tmp_path / "both.pth")
    _refused(tmp_path / "both.pth", "both 'state_dict' and 'model_state_dict'")


class _OsSystem:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch '{self.target}'",)


class _OpenFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return builtins.open, (str(self.target), "w")


@pytest.mark.parametrize("payload", [_OsSystem, _OpenFile])
@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle", "inside_state_dict"])
def test_refuses_code_carrying_pickle(tmp_path, payload, writer):
    canary = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if writer == "torch_save":
        torch.save(payload(canary), path)
    elif writer == "raw_pickle":
        path.write_bytes(pickle.dumps(payload(canary), protocol=2))
        # the payload is real: a plain unpickle runs it
        pickle.loads(path.read_bytes())
        assert canary.exists()
        canary.unlink()
    else:
        sd = _good_sd()
        sd["extra"] = payload(canary)
        torch.save(sd, path)
    _refused(path, "weights_only=True", "may contain code")
    assert not canary.exists()


# --------------------------------------------------------------------------- command line


def _cli(path):
    return subprocess.run([sys.executable, "-m", "hessjax.bridges.anchor", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model_state_dict": _fill(nn.DataParallel(Named()), seed=5).state_dict()}, good)
    ok = _cli(good)
    assert ok.returncode == 0, ok.stderr
    assert "784 -> 128 -> 128 -> 10" in ok.stdout and "118282" in ok.stdout
    assert load_anchor(good).sha256 in ok.stdout and "module.fc3.bias [10]" in ok.stdout

    bad = _edited(tmp_path, "nan.pth", lambda sd: sd["4.bias"].__setitem__(0, float("nan")))
    out = _cli(bad)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'4.bias' [10] has 1 NaN" in lines[0], out.stderr


def test_cli_main_in_process(tmp_path, capsys):
    from hessjax.bridges.anchor import main

    assert main([str(tmp_path / "missing.pth")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"error: {tmp_path / 'missing.pth'}: no such file\n"
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk")
    assert main([str(tmp_path / "junk.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "junk.pth" in err


# --------------------------------------------------------------------------- the package


def test_import_does_not_import_torch():
    code = "import sys, hessjax.bridges; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_exports_are_listed_once():
    """The package's one list per submodule is that submodule's ``__all__`` (with what it keeps to
    itself), every name resolves lazily to the submodule's object, and the ``TYPE_CHECKING`` imports
    that static analysers read name exactly the same."""
    import ast
    import importlib

    import hessjax.bridges as bridges

    assert sorted(bridges.__all__) == sorted(n for names in bridges.EXPORTS.values() for n in names)
    for module, names in bridges.EXPORTS.items():
        mod = importlib.import_module(f"hessjax.bridges.{module}")
        assert list(mod.__all__[:len(names)]) == list(names)
        assert all(hasattr(mod, name) for name in mod.__all__)
        assert all(getattr(bridges, name) is getattr(mod, name) for name in names)
    with open(bridges.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    typed = {node.module: sorted(a.name for a in node.names) for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert typed == {module: sorted(names) for module, names in bridges.EXPORTS.items()}
