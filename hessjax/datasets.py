"""The data a sweep trains on and takes the Hessian over: MNIST, a user's ``.npz``, or a tfds dataset.

``--dataset`` names one of

* ``mnist`` — the shipped IDX files (or ``--data-dir``; ``--tfds-dir`` reads a prepared tfds copy),
  images flattened to ``[N, 784]`` (:mod:`hessjax.mnist`);
* ``npz:PATH`` — a numpy ``.npz`` holding ``x_train``, ``y_train``, ``x_test``, ``y_test``: inputs
  ``[N, ...]`` of any per-sample shape, ``uint8`` scaled by ``1/255`` (torchvision's ``ToTensor``),
  floats taken as they are; integer labels ``[N]``. Read with ``allow_pickle=False``;
* ``tfds:NAME`` — the ``train`` and ``test`` splits of a *prepared* tensorflow-datasets image
  classification set (``image``, ``label`` features) in ``--tfds-dir`` or tfds's default directory,
  never downloaded; images ``[H, W, C]`` become channels-first ``[C, H, W]`` (torch's layout) and are
  scaled by ``1/255``.

Every problem — a missing file or key, a non-numeric or non-finite input, labels that are not
integers, not one per sample, or negative, train and test of different shapes — raises
:class:`~hessjax.mnist.DataError` naming the file and the array. Whether the data fit a model (its
input shape, its number of classes) is :func:`fit_to_model`'s question, asked before any work.
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import zipfile
from typing import NamedTuple, Sequence

import numpy as np

from .mnist import DataError, check_samples, load_mnist, tfds_examples, to_float

__all__ = ["DATASET_HELP", "Dataset", "fit_to_model", "load_dataset", "parse_dataset", "reshape_inputs"]

DATASET_HELP = "mnist (the shipped copy), npz:PATH (x_train, y_train, x_test, y_test) or tfds:NAME (prepared)"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Dataset(NamedTuple):
    """The train and test splits as host arrays (callers put them on devices)."""

    x_train: np.ndarray  # [N_train, ...] float
    y_train: np.ndarray  # [N_train] int32, ≥ 0
    x_test: np.ndarray  # [N_test, ...] float, the train split's per-sample shape
    y_test: np.ndarray  # [N_test] int32
    name: str = "mnist"  # what --dataset said
    sha256: str = ""  # of the .npz file's bytes ("" for the others)

    @property
    def sample_shape(self) -> tuple:
        """The per-sample shape of the inputs."""
        return tuple(self.x_train.shape[1:])


def parse_dataset(spec: str) -> tuple[str, str]:
    """``"mnist"`` → ``("mnist", "")``, ``"npz:PATH"`` → ``("npz", PATH)``, ``"tfds:NAME"`` → ``("tfds",
    NAME)``; :class:`DataError` otherwise."""
    text = str(spec).strip()
    if text == "mnist":
        return "mnist", ""
    kind, sep, arg = text.partition(":")
    if sep and kind in ("npz", "tfds") and arg:
        return kind, arg
    raise DataError(f"--dataset {spec!r}: expected {DATASET_HELP}")


def load_dataset(spec: str = "mnist", *, data_dir=None, tfds_dir=None, train_samples: int | None = None,
                 test_samples: int | None = None, dtype=np.float32) -> Dataset:
    """The data set ``spec`` (see the module docstring), the first ``train_samples`` / ``test_samples``
    of each split (all for ``None``), inputs in ``dtype``: images (uint8) are scaled by 1/255 in float32,
    as torchvision's ``ToTensor`` does, and then cast; float inputs are taken in ``dtype`` as they are."""
    kind, arg = parse_dataset(spec)
    dtype = np.dtype(dtype)
    if kind == "mnist":
        if tfds_dir and data_dir:
            raise DataError("give either --data-dir (IDX files) or --tfds-dir (a prepared tfds directory)")
        data = load_mnist(tfds_dir or data_dir, train_samples=train_samples, test_samples=test_samples,
                          source="tfds" if tfds_dir else "idx")
        return Dataset(data.x_train.astype(dtype), data.y_train, data.x_test.astype(dtype), data.y_test, name="mnist")
    if data_dir:
        raise DataError(f"--data-dir names MNIST's IDX files; it does not apply to --dataset {spec}")
    if kind == "npz":
        return _load_npz(arg, train_samples, test_samples, dtype)
    return _load_tfds(arg, tfds_dir, train_samples, test_samples, dtype)


# ------------------------------------------------------------------------------------------------ .npz


def _load_npz(path_text: str, train_samples, test_samples, dtype: np.dtype) -> Dataset:
    path = pathlib.Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file (--dataset npz:PATH)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .npz file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: no array {', '.join(repr(m) for m in missing)}; an .npz data set holds "
                                f"{', '.join(_NPZ_KEYS)} (found {', '.join(npz.files) or 'none'})")
            arrays = {k: npz[k] for k in _NPZ_KEYS}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable .npz file (truncated, corrupt, or holding Python objects, which "
                        f"are refused): {type(err).__name__}: {reason}") from err
    splits = []
    for split, n in (("train", train_samples), ("test", test_samples)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"{path}"
        _check_split(x, y, split, where)
        n = check_samples(n, split, y.shape[0], where)
        splits += [_inputs(x[:n], f"{where}: x_{split}", dtype), y[:n].astype(np.int32)]
    _check_same_shape(splits[0], splits[2], str(path))
    return Dataset(*splits, name=f"npz:{path_text}", sha256=hashlib.sha256(raw).hexdigest())


def _check_split(x: np.ndarray, y: np.ndarray, split: str, where: str) -> None:
    if x.ndim < 2:
        raise DataError(f"{where}: x_{split} has shape {list(x.shape)}, expected [N, ...] with one row per sample")
    if x.shape[0] < 1:
        raise DataError(f"{where}: x_{split} holds no samples")
    if y.ndim != 1:
        raise DataError(f"{where}: y_{split} has shape {list(y.shape)}, expected [N] class indices "
                        "(not one-hot rows)")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: x_{split} holds {x.shape[0]} samples but y_{split} holds {y.shape[0]} labels")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{where}: y_{split} has dtype {y.dtype}, expected integer class indices")
    if y.size and int(y.min()) < 0:
        bad = int(np.flatnonzero(y < 0)[0])
        raise DataError(f"{where}: y_{split}[{bad}] = {int(y[bad])}: labels are class indices 0, 1, ...")


def _inputs(x: np.ndarray, where: str, dtype: np.dtype) -> np.ndarray:
    """uint8 → ``/255`` in float32 as torchvision's ``ToTensor``, then ``dtype``; floats in ``dtype`` as they
    are; anything else refused; all finite."""
    if x.dtype == np.uint8:
        return to_float(x, np.dtype(np.float32)).astype(dtype)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where} has dtype {x.dtype}: inputs are uint8 (scaled by 1/255) or floats (taken as is)")
    out = x.astype(dtype)
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out.reshape(out.shape[0], -1)).any(axis=1))[0])
        raise DataError(f"{where}: sample {bad} has NaN or Inf values (in {dtype})")
    return out


def _check_same_shape(x_train: np.ndarray, x_test: np.ndarray, where: str) -> None:
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{where}: train samples are {list(x_train.shape[1:])} but test samples are "
                        f"{list(x_test.shape[1:])}")


# ------------------------------------------------------------------------------------------------ tfds


def _load_tfds(name: str, tfds_dir, train_samples, test_samples, dtype: np.dtype) -> Dataset:
    examples = tfds_examples(name, tfds_dir, {"train": train_samples, "test": test_samples})
    where_dir = tfds_dir or "tfds's default data_dir"
    splits = []
    for split in ("train", "test"):
        images, labels = _tfds_arrays(examples[split], f"tfds {name!r} split {split!r} in {where_dir}")
        splits += [to_float(images, np.dtype(np.float32)).astype(dtype), labels]
    _check_same_shape(splits[0], splits[2], f"tfds {name!r}")
    return Dataset(*splits, name=f"tfds:{name}")


def _tfds_arrays(examples: Sequence, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Examples ``{"image": uint8[H, W, C], "label": int}`` → ``uint8[N, C, H, W]`` and int32 ``[N]``."""
    first = None
    images, labels = [], []
    for i, ex in enumerate(examples):
        try:
            image, label = np.asarray(ex["image"]), np.asarray(ex["label"])
        except (KeyError, TypeError, IndexError) as err:
            raise DataError(f"{where}: example {i} has no 'image' and 'label' features (hessjax reads image "
                            "classification data sets)") from err
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DataError(f"{where}: example {i} has a {image.dtype}{list(image.shape)} image, expected uint8 "
                            "[H, W, C]")
        image = image[:, :, None] if image.ndim == 2 else image
        first = image.shape if first is None else first
        if image.shape != first:
            raise DataError(f"{where}: example {i} is {list(image.shape)}, the first was {list(first)}: images "
                            "of one size are needed")
        if label.shape != () or not np.issubdtype(label.dtype, np.integer) or int(label) < 0:
            raise DataError(f"{where}: example {i} has label {label!r}, expected one class index ≥ 0")
        images.append(np.transpose(image, (2, 0, 1)))
        labels.append(int(label))
    if not images:
        raise DataError(f"{where}: no examples")
    return np.stack(images), np.asarray(labels, np.int32)


# ------------------------------------------------------------------------------------------ data vs model


def reshape_inputs(x: np.ndarray, input_shape: Sequence[int], where: str = "the data") -> np.ndarray:
    """``x`` ``[N, ...]`` as ``[N, *input_shape]`` where the per-sample shapes differ only by flattening
    (row-major, torch's ``view``) or size-1 axes; :class:`DataError` for anything else (a channels-last
    image for a channels-first model, another size)."""
    have, want = tuple(x.shape[1:]), tuple(int(s) for s in input_shape)
    if have == want:
        return x
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    if math.prod(have) == math.prod(want) and (len(have) == 1 or len(want) == 1 or squeeze(have) == squeeze(want)):
        return x.reshape((x.shape[0],) + want)
    raise DataError(f"{where}: samples of shape [{', '.join(map(str, have))}] do not fit the model's input "
                    f"[{', '.join(map(str, want))}]" + (
                        " (same size, other layout: the data are channels-first, as torch's; transpose inside "
                        "the model, or give the .npz in the model's layout)"
                        if math.prod(have) == math.prod(want) else ""))


def fit_to_model(data: Dataset, input_shape: Sequence[int], num_classes: int, model_name: str) -> Dataset:
    """``data`` with its inputs shaped for the model (:func:`reshape_inputs`), once every label is
    checked to be one of the model's ``num_classes`` classes; :class:`DataError` otherwise."""
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        if y.size and int(y.max()) >= num_classes:
            bad = int(np.flatnonzero(y >= num_classes)[0])
            raise DataError(f"{data.name}: y_{split}[{bad}] = {int(y[bad])} is out of range for model "
                            f"{model_name!r}, whose {num_classes} outputs are the classes 0..{num_classes - 1}")
    where = f"{data.name} (model {model_name!r})"
    return data._replace(x_train=reshape_inputs(data.x_train, input_shape, where),
                         x_test=reshape_inputs(data.x_test, input_shape, where))
