"""A state dict's tensors as a model's layers, by an explicit table: never by guessing from names.

Two ways, both refusing with an :class:`~hessjax.bridges.tensors.AnchorError` that names the key and
the expected and found shape:

* **The MLP chain** (:func:`mlp_layers`): every 2-D ``<module>.weight`` paired with the 1-D
  ``<module>.bias`` of the same module, ordered by checking each shape against a chain from
  ``n_inputs`` to ``n_classes`` (any width when ``None``): key order when it chains, otherwise the one
  ordering the shapes allow. The anchor's own chain defines the architecture. A convolution kernel
  (a 3-D or higher weight) is refused as "not an MLP anchor".
* **A model's table** (:func:`table_layers`): the tensors of the model's parameters, exactly, by key
  (after a common ``module.``-style prefix) where the keys are the model's, else in state-dict order,
  each shape checked against the model's.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import NamedTuple, Sequence

import torch

from .tensors import FLOAT_DTYPES, AnchorError

__all__ = ["Layer", "chain_sizes", "check_finite", "check_state_dict", "common_prefix", "layer_chain", "mlp_layers",
           "shape_str", "table_layers"]

_MAX_LAYERS = 64


class Layer(NamedTuple):
    """One layer of a state dict: its module path, its keys and its tensors, in parameter order."""

    module: str  # e.g. "module.fc1" ("" for bare "weight" / "bias" keys)
    keys: tuple  # (weight key, bias key) for Linear / Conv2d layers
    tensors: tuple  # (weight, bias)


def shape_str(t) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def _split_key(key: str) -> tuple[str, str] | None:
    """``"fc1.weight" -> ("fc1", "weight")``; ``"weight" -> ("", "weight")``; else None."""
    module, _, leaf = key.rpartition(".")
    return (module, leaf) if leaf in ("weight", "bias") else None


def common_prefix(modules: Sequence[str]) -> str:
    """The dotted path shared by every module, with its trailing dot (``"module."``) or ``""``."""
    parts = [m.split(".") if m else [] for m in modules]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    # never swallow a whole module name (a single layer "fc" keeps prefix "")
    if parts and len(common) == min(len(p) for p in parts):
        common = common[:-1]
    return "".join(c + "." for c in common)


def check_state_dict(state_dict, where: str, expected: str) -> None:
    """Refuse anything but a non-empty mapping."""
    if not isinstance(state_dict, Mapping):
        raise AnchorError(f"{where}: expected a state dict (a dict of tensors), found {type(state_dict).__name__}")
    if not state_dict:
        raise AnchorError(f"{where}: the state dict is empty; expected {expected}")


def _check_tensor(key, value, where: str, what: str) -> None:
    if not isinstance(key, str):
        raise AnchorError(f"{where}: key {key!r} is a {type(key).__name__}, expected a str like 'fc1.weight'")
    if not isinstance(value, torch.Tensor):
        raise AnchorError(f"{where}: key {key!r} holds a {type(value).__name__}, expected a tensor ({what})")
    if value.layout != torch.strided or value.is_quantized:
        raise AnchorError(f"{where}: key {key!r} is a {value.layout} / quantized tensor, expected a dense one")
    if value.dtype not in FLOAT_DTYPES:
        raise AnchorError(f"{where}: key {key!r} has dtype {value.dtype}, expected a float dtype "
                          f"({', '.join(str(d) for d in FLOAT_DTYPES)})")


def _one_dtype(state_dict: Mapping, where: str, what: str) -> torch.dtype:
    """Every entry checked, and the one dtype they all share."""
    dtype = first_key = None
    for key in state_dict.keys():
        value = state_dict[key]
        _check_tensor(key, value, where, what)
        if dtype is None:
            dtype, first_key = value.dtype, key
        elif value.dtype != dtype:
            raise AnchorError(f"{where}: key {key!r} has dtype {value.dtype} but {first_key!r} has {dtype}; "
                              "every tensor of an anchor must share one dtype")
    return dtype


def check_finite(layers: Sequence[Layer], where: str) -> None:
    """Refuse a NaN or Inf anywhere, naming the first tensor (parameter order) that has one."""
    for layer in layers:
        for key, t in zip(layer.keys, layer.tensors):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if n_nan or n_inf:
                raise AnchorError(f"{where}: key {key!r} {shape_str(t)} has {n_nan} NaN and {n_inf} Inf values; "
                                  "an anchor must be finite")


# --------------------------------------------------------------------------------------- the MLP chain


class _Linear(NamedTuple):
    module: str
    wkey: str
    bkey: str
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor  # [out]


_NOT_MLP = ("this is not an MLP anchor: give the model it belongs to (--model lenet, or --model MODULE:ATTR "
            "for your own)")


def mlp_layers(state_dict: Mapping, where: str, n_inputs: int, n_classes: int | None,
               sizes: tuple | None) -> tuple[list[Layer], torch.dtype]:
    """The ``Linear`` layers of ``state_dict`` in chain order (see the module docstring), and their dtype."""
    ends = f"{n_inputs} -> ... -> {n_classes if n_classes is not None else 'the classes'}"
    check_state_dict(state_dict, where, f"Linear weight/bias pairs chaining {ends}")
    what = "only Linear weight/bias pairs are accepted"
    dtype = _one_dtype(state_dict, where, what)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key in state_dict.keys():
        value = state_dict[key]
        split = _split_key(key)
        if split is None:
            raise AnchorError(f"{where}: unexpected tensor {key!r} {shape_str(value)}: only Linear "
                              "'<module>.weight' / '<module>.bias' pairs are accepted")
        modules.setdefault(split[0], {})[split[1]] = value
    linears = _chain_order(_pair_layers(modules, where), where, n_inputs, n_classes, sizes)
    return [Layer(m, (wk, bk), (w, b)) for m, wk, bk, w, b in linears], dtype


def _pair_layers(modules: dict[str, dict[str, torch.Tensor]], where: str) -> list[_Linear]:
    """Each module's 2-D weight with its 1-D bias of as many rows, in key order (at most
    ``_MAX_LAYERS`` of them)."""
    layers = []
    for module, pair in modules.items():
        wkey, bkey = (f"{module}.weight", f"{module}.bias") if module else ("weight", "bias")
        if "weight" not in pair:
            raise AnchorError(f"{where}: key {bkey!r} {shape_str(pair['bias'])} has no weight {wkey!r}")
        w = pair["weight"]
        if w.ndim >= 3:
            raise AnchorError(f"{where}: key {wkey!r} has shape {shape_str(w)}, expected a 2-D [out, in] weight; a "
                              f"{w.ndim}-D weight is a convolution kernel, so {_NOT_MLP}")
        if "bias" not in pair:
            raise AnchorError(f"{where}: key {wkey!r} {shape_str(w)} has no bias {bkey!r}; "
                              "every Linear layer needs its bias")
        b = pair["bias"]
        if w.ndim != 2:
            raise AnchorError(f"{where}: key {wkey!r} has shape {shape_str(w)}, expected a 2-D [out, in] weight")
        if b.ndim != 1 or b.shape[0] != w.shape[0]:
            raise AnchorError(f"{where}: key {bkey!r} has shape {shape_str(b)}, expected [{w.shape[0]}] "
                              f"(the rows of {wkey!r} {shape_str(w)})")
        layers.append(_Linear(module, wkey, bkey, w, b))
    if len(layers) > _MAX_LAYERS:
        raise AnchorError(f"{where}: {len(layers)} layers, more than the {_MAX_LAYERS} accepted")
    return layers


def _layer_shapes(layers: Sequence[_Linear]) -> list[tuple[int, int]]:
    """``(in, out)`` of each layer."""
    return [(int(layer.weight.shape[1]), int(layer.weight.shape[0])) for layer in layers]


def _chain_orders(shapes: list[tuple[int, int]], n_inputs: int, n_classes: int | None, limit: int = 2):
    """Up to ``limit`` orderings (as shape sequences) of the multiset ``shapes`` of ``(in, out)`` that
    chain ``n_inputs -> ... -> n_classes`` (any end for ``None``) using every layer once."""
    counts = collections.Counter(shapes)
    found: list[list[tuple[int, int]]] = []
    path: list[tuple[int, int]] = []

    def visit(width: int) -> None:
        if len(found) >= limit:
            return
        if len(path) == len(shapes):
            if n_classes is None or width == n_classes:
                found.append(list(path))
            return
        for shape in sorted(counts):
            if shape[0] == width and counts[shape]:
                counts[shape] -= 1
                path.append(shape)
                visit(shape[1])
                path.pop()
                counts[shape] += 1

    visit(n_inputs)
    return found


def _chain_order(layers: list[_Linear], where: str, n_inputs: int, n_classes: int | None, sizes) -> list[_Linear]:
    """The layers ordered so that their shapes chain ``n_inputs -> ... -> n_classes`` (exactly
    ``sizes`` when given): key order if it does, otherwise the one order the shapes allow; no order,
    or more than one, is refused."""
    shapes = _layer_shapes(layers)
    if _chains(shapes, n_inputs, n_classes, sizes):
        return layers
    table = ", ".join(f"{layer.wkey!r} {shape_str(layer.weight)}" for layer in layers)
    orders = [o for o in _chain_orders(shapes, n_inputs, n_classes) if sizes is None or chain_sizes(o) == sizes]
    if not orders:
        last = n_classes if n_classes is not None else "the classes"
        expected = " -> ".join(map(str, sizes)) if sizes else f"{n_inputs} -> ... -> {last}"
        raise AnchorError(f"{where}: {_diagnose(layers, n_inputs, n_classes, sizes)}; the weights "
                          f"[{table}] do not chain {expected} in any order (a layer missing, extra or "
                          "of the wrong shape)")
    dupes = sorted(s for s, c in collections.Counter(shapes).items() if c > 1)
    if len(orders) > 1 or dupes:
        raise AnchorError(f"{where}: the weights [{table}] do not chain in key order, and their shapes "
                          "allow more than one order; refusing to guess")
    by_shape = dict(zip(shapes, layers))
    return [by_shape[s] for s in orders[0]]


def _diagnose(layers, n_inputs, n_classes, sizes) -> str:
    """Where the key-order chain first breaks: the key, its shape and the shape expected there."""
    if sizes is not None and len(layers) != len(sizes) - 1:
        return f"expected {len(sizes) - 1} layers for sizes {sizes}, found {len(layers)}"
    width, source = n_inputs, f"the {n_inputs} inputs"
    for i, (_, wkey, _, w, _) in enumerate(layers):
        out = "*" if sizes is None else sizes[i + 1]
        if w.shape[1] != width or (sizes is not None and w.shape[0] != out):
            return f"key {wkey!r} has shape {shape_str(w)}, expected [{out}, {width}] (fed by {source})"
        width, source = int(w.shape[0]), repr(wkey)
    wkey, w = layers[-1][1], layers[-1][3]
    return (f"key {wkey!r} has shape {shape_str(w)}, expected [{n_classes}, {w.shape[1]}] "
            f"(the last layer must give the {n_classes} classes)")


def _is_chain(shapes) -> bool:
    return all(a[1] == b[0] for a, b in zip(shapes[:-1], shapes[1:]))


def chain_sizes(shapes) -> tuple[int, ...]:
    """``(in, hidden..., out)`` of a chain of ``(in, out)`` shapes."""
    return (shapes[0][0],) + tuple(out for _, out in shapes)


def _chains(shapes, n_inputs, n_classes, sizes) -> bool:
    ok = _is_chain(shapes) and shapes[0][0] == n_inputs and (n_classes is None or shapes[-1][1] == n_classes)
    return ok and (sizes is None or chain_sizes(shapes) == sizes)


def layer_chain(layers: Sequence[Layer]) -> tuple[int, ...]:
    """The width chain of MLP layers from :func:`mlp_layers`."""
    return chain_sizes([(int(layer.tensors[0].shape[1]), int(layer.tensors[0].shape[0])) for layer in layers])


# ------------------------------------------------------------------------------------------ a model's table


def table_layers(state_dict: Mapping, where: str, model_name: str, keys: Sequence[Sequence[str]] | None,
                 shapes: Sequence[Sequence[Sequence[int]]]) -> tuple[list[Layer], torch.dtype]:
    """The tensors of ``state_dict`` as the layers of a model with parameter ``shapes`` per layer (and
    torch ``keys`` per layer, or ``None``), and their dtype.

    By key where the state dict's keys, less a common dotted prefix, are exactly the model's; otherwise
    in state-dict order. Every shape must be the model's; a missing, extra or misshapen tensor is refused.
    """
    flat_shapes = [tuple(int(s) for s in shape) for layer in shapes for shape in layer]
    check_state_dict(state_dict, where, f"the {len(flat_shapes)} parameter tensors of model {model_name!r}")
    dtype = _one_dtype(state_dict, where, f"the parameters of model {model_name!r}")
    names = list(state_dict.keys())
    flat_keys = [k for layer in keys for k in layer] if keys is not None else None
    prefix = common_prefix([n.rpartition(".")[0] for n in names]) if len(names) > 1 else ""
    stripped = [n[len(prefix):] for n in names]
    if flat_keys is not None and sorted(stripped) == sorted(flat_keys):
        ordered = [prefix + k for k in flat_keys]  # by name
    else:
        ordered = names  # in state-dict order
    table = ", ".join(f"{n!r} {shape_str(state_dict[n])}" for n in names[:12]) + (" ..." if len(names) > 12 else "")
    for i, expected in enumerate(flat_shapes):
        label = f"parameter {i}" + (f" ({flat_keys[i]!r})" if flat_keys is not None else "")
        if i >= len(ordered):
            raise AnchorError(f"{where}: {len(names)} tensors, but model {model_name!r} has {len(flat_shapes)} "
                              f"parameters: {label} [{', '.join(map(str, expected))}] is missing; found [{table}]")
        t = state_dict[ordered[i]]
        if tuple(t.shape) != expected:
            raise AnchorError(f"{where}: key {ordered[i]!r} has shape {shape_str(t)}, but model {model_name!r} "
                              f"expects [{', '.join(map(str, expected))}] for its {label}"
                              f"{_mlp_hint(state_dict, flat_shapes)}")
    if len(ordered) > len(flat_shapes):
        extra = ordered[len(flat_shapes):]
        raise AnchorError(f"{where}: {len(names)} tensors, but model {model_name!r} has {len(flat_shapes)} "
                          f"parameters; unexpected {', '.join(repr(e) for e in extra[:5])}")
    layers, i = [], 0
    for layer in shapes:
        chosen = ordered[i: i + len(layer)]
        layers.append(Layer(chosen[0].rpartition(".")[0], tuple(chosen), tuple(state_dict[c] for c in chosen)))
        i += len(layer)
    return layers, dtype


def _mlp_hint(state_dict: Mapping, flat_shapes) -> str:
    """A hint when a state dict of only 2-D/1-D tensors meets a model with convolution kernels."""
    anchor_mlp = all(state_dict[k].ndim <= 2 for k in state_dict)
    model_conv = any(len(s) >= 3 for s in flat_shapes)
    return " (the anchor holds only Linear layers: an MLP anchor? use --model mlp)" if anchor_mlp and model_conv else ""
