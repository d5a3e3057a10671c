"""MNIST as host numpy arrays, read from the four standard IDX files.

The reference source is the copy shipped in ``hessjax/data/mnist`` (see its README): the
original IDX files of LeCun, Cortes and Burges, re-gzipped. Images are flattened row-major to
``[N, 784]`` and scaled to ``uint8 / 255`` in the requested float dtype, which is bit-for-bit
what torchvision's ``ToTensor()`` followed by ``.view(-1, 784)`` gives in float32; labels are
int32. "The first ``N`` samples" always means the first ``N`` in the file's order, so a subset is
the same in JAX, in torch and on every run.

Every problem with the input (missing directory or file, truncated file, bad magic number,
corrupt gzip stream, wrong image size, image/label count mismatch, label out of range, checksum
mismatch, bad sample count) raises :class:`DataError`, whose message names the file or
directory and what was wrong. Nothing here downloads anything.

Checksums: when the directory a file is read from holds a ``SHA256SUMS`` file listing it (as the
shipped copy does), :func:`load_mnist` checks the SHA-256 of the bytes it has just read. That
costs about 10 ms on the shipped files (the bytes are already in memory), so it is always done.
:func:`verify_checksums` checks every listed file on its own.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import zlib
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = [
    "DEFAULT_DATA_DIR",
    "DataError",
    "ENV_VAR",
    "MNIST",
    "check_samples",
    "load_mnist",
    "read_idx",
    "resolve_data_dir",
    "tfds_examples",
    "to_float",
    "verify_checksums",
]

#: The copy of MNIST shipped inside the package (installed as package data, see pyproject.toml).
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parent / "data" / "mnist"

#: Environment variable naming a directory to use instead of :data:`DEFAULT_DATA_DIR`.
ENV_VAR = "HESSJAX_DATA_DIR"

_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_TEST_IMAGES = "t10k-images-idx3-ubyte"
_TEST_LABELS = "t10k-labels-idx1-ubyte"
_STEMS = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)
_TORCHVISION_SUBDIR = ("MNIST", "raw")  # torchvision.datasets.MNIST(root) keeps its files here

_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_ROWS = _COLS = 28
_NUM_CLASSES = 10
_GZIP_MAGIC = b"\x1f\x8b"
_CHECKSUM_FILE = "SHA256SUMS"
# tfds does not declare importlib_resources and pillow, which reading MNIST needs.
_TFDS_EXTRA = "pip install 'hessjax[tfds]' (tensorflow-datasets, importlib_resources, pillow)"

# IDX type codes (third byte of the magic number); multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class MNIST(NamedTuple):
    """The train and test splits as host arrays (callers put them on devices)."""

    x_train: np.ndarray  # [N_train, 784] float, uint8 / 255 in [0, 1]
    y_train: np.ndarray  # [N_train] int32 in 0..9
    x_test: np.ndarray  # [N_test, 784] float, uint8 / 255 in [0, 1]
    y_test: np.ndarray  # [N_test] int32 in 0..9


class DataError(ValueError):
    """Bad or missing input data; the message names the file or directory and what was wrong."""


# --------------------------------------------------------------------------------------------
# Directories


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The MNIST directory: ``data_dir`` if given, else ``$HESSJAX_DATA_DIR`` if set and
    non-empty, else :data:`DEFAULT_DATA_DIR`. Raises :class:`DataError` if it is not a directory."""
    if data_dir is not None:
        path, origin = pathlib.Path(data_dir), "data_dir argument"
    elif os.environ.get(ENV_VAR):
        path, origin = pathlib.Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        path, origin = DEFAULT_DATA_DIR, "the shipped default"
    path = path.expanduser()
    if not path.exists():
        raise DataError(f"MNIST data directory {path} (from {origin}) does not exist")
    if not path.is_dir():
        raise DataError(f"MNIST data directory {path} (from {origin}) is not a directory")
    return path


def _find_files(data_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The four files, plain or ``.gz`` (plain preferred), all from one directory: ``data_dir``
    itself or, failing any file there, torchvision's ``data_dir/MNIST/raw``."""
    candidates = [data_dir, data_dir.joinpath(*_TORCHVISION_SUBDIR)]

    def lookup(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
        return None

    folder = next((c for c in candidates if any(lookup(c, s) for s in _STEMS)), None)
    if folder is None:
        raise DataError(
            f"missing files: none of {', '.join(_STEMS)} (plain or .gz) in {data_dir} "
            f"or in {candidates[1]} (torchvision's layout)"
        )
    found = {}
    for stem in _STEMS:
        found[stem] = lookup(folder, stem)
        if found[stem] is None:
            raise DataError(f"missing file: no {stem} or {stem}.gz in {folder}")
    return found


# --------------------------------------------------------------------------------------------
# IDX files


def _read_bytes(path: pathlib.Path) -> tuple[bytes, bytes]:
    """(the file's bytes as stored, the decompressed bytes); gzip detected by its magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    if raw[:2] != _GZIP_MAGIC:
        return raw, raw
    try:
        return raw, gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip stream: {err}") from err


def _parse_idx(path: pathlib.Path, data: bytes) -> np.ndarray:
    """Read-only array over ``data`` (an IDX file's decompressed bytes), header checked."""
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, too short for an IDX magic number")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: bad magic number 0x{magic:08X}: not an IDX file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated: {len(data)} bytes, too short for the {ndim}-dimensional IDX header"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DataError(
            f"{path}: truncated: header (shape {shape}) promises {expected} data bytes, found {found}"
        )
    if found > expected:
        raise DataError(
            f"{path}: {found - expected} bytes beyond the {expected} data bytes its header "
            f"(shape {shape}) promises"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file, gzipped or not (told by the magic bytes ``1f 8b``, not by
    the extension), with the file's shape and dtype (native byte order). Checks the magic number
    and that the byte count matches the header; raises :class:`DataError` naming the file."""
    path = pathlib.Path(path)
    _, data = _read_bytes(path)
    arr = _parse_idx(path, data)
    return arr.astype(arr.dtype.newbyteorder("="))  # a writable, native-order copy


def _read_checksums(folder: pathlib.Path) -> dict[str, str] | None:
    """``{file name: sha256 hex}`` from ``folder/SHA256SUMS`` (``sha256sum`` format), or None."""
    sums_path = folder / _CHECKSUM_FILE
    if not sums_path.is_file():
        return None
    sums = {}
    for lineno, line in enumerate(sums_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{sums_path}: line {lineno} is not '<sha256>  <file name>': {line!r}")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def _check_digest(path: pathlib.Path, raw: bytes, sums: dict[str, str] | None) -> None:
    if sums is None or path.name not in sums:
        return
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sums[path.name]:
        raise DataError(
            f"{path}: SHA-256 {digest} does not match {sums[path.name]} "
            f"listed in {path.parent / _CHECKSUM_FILE}"
        )


def verify_checksums(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Check every file listed in ``SHA256SUMS`` of the MNIST directory (resolved as in
    :func:`resolve_data_dir`, torchvision's ``MNIST/raw`` layout included) and return the names
    checked. Raises :class:`DataError` if there is no ``SHA256SUMS``, a listed file is missing, or
    a digest differs. (:func:`load_mnist` already checks the files it reads.)"""
    folder = _find_files(resolve_data_dir(data_dir))[_TRAIN_IMAGES].parent
    sums = _read_checksums(folder)
    if sums is None:
        raise DataError(f"no {_CHECKSUM_FILE} in {folder}")
    for name in sums:
        path = folder / name
        if not path.is_file():
            raise DataError(f"missing file: {path}, listed in {folder / _CHECKSUM_FILE}")
        _check_digest(path, path.read_bytes(), sums)
    return sorted(sums)


def _read_checked(path: pathlib.Path, magic: int, sums: dict[str, str] | None) -> np.ndarray:
    raw, data = _read_bytes(path)
    _check_digest(path, raw, sums)
    arr = _parse_idx(path, data)
    if int.from_bytes(data[:4], "big") != magic:
        raise DataError(
            f"{path}: bad magic number 0x{int.from_bytes(data[:4], 'big'):08X}, "
            f"expected 0x{magic:08X} ({'images' if magic == _IMAGES_MAGIC else 'labels'})"
        )
    return arr


def _read_split(images_path: pathlib.Path, labels_path: pathlib.Path, sums) -> tuple:
    images = _read_checked(images_path, _IMAGES_MAGIC, sums)
    if images.shape[1:] != (_ROWS, _COLS):
        raise DataError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
            f"expected {_ROWS}x{_COLS}"
        )
    labels = _read_checked(labels_path, _LABELS_MAGIC, sums)
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"count mismatch: {images_path} holds {images.shape[0]} images "
            f"but {labels_path} holds {labels.shape[0]} labels"
        )
    _check_labels(labels, str(labels_path))
    return images.reshape(images.shape[0], _ROWS * _COLS), labels


def _check_labels(labels: np.ndarray, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= _NUM_CLASSES))
    if bad.size:
        raise DataError(
            f"{where}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0..9 "
            f"({bad.size} such labels)"
        )


# --------------------------------------------------------------------------------------------
# Loading


def check_samples(n: Any, split: str, available: int, where: str) -> int:
    """``available`` if ``n`` is None, else ``n`` once checked to be an int in 1..available."""
    if n is None:
        return available
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise DataError(f"{split}_samples={n!r} must be an int or None ({where})")
    if not 1 <= n <= available:
        raise DataError(
            f"{split}_samples={n} must be between 1 and {available}, "
            f"the number of {split} samples available in {where}"
        )
    return int(n)


def to_float(images: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """uint8 → ``dtype`` in [0, 1] by division (ToTensor's ``x.float().div(255)``, not × 1/255)."""
    out = images.astype(dtype)
    np.divide(out, dtype.type(255), out=out)
    return out


def _examples_to_arrays(examples: Sequence[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """tfds-style MNIST examples (``{"image": uint8[28, 28, 1], "label": int}``) → ``uint8[N,
    784]`` images and int32 ``[N]`` labels, each example checked."""
    images = np.empty((len(examples), _ROWS * _COLS), np.uint8)
    labels = np.empty((len(examples),), np.int64)
    for i, ex in enumerate(examples):
        try:
            image, label = np.asarray(ex["image"]), np.asarray(ex["label"])
        except (KeyError, TypeError, IndexError) as err:
            raise DataError(f"{where}: example {i} is not a {{'image', 'label'}} mapping") from err
        if image.dtype != np.uint8 or image.shape not in ((_ROWS, _COLS), (_ROWS, _COLS, 1)):
            raise DataError(
                f"{where}: example {i} has a {image.dtype}{list(image.shape)} image, "
                f"expected uint8[28, 28, 1]"
            )
        if label.shape != () or not np.issubdtype(label.dtype, np.integer):
            raise DataError(f"{where}: example {i} has label {label!r}, expected one integer")
        images[i] = image.reshape(-1)
        labels[i] = label
    _check_labels(labels, where)
    return images, labels.astype(np.int32)


def tfds_examples(name: str, data_dir, samples: dict) -> dict[str, list]:
    """``{split: [example, ...]}``: the first ``samples[split]`` examples (all for ``None``) of each
    split of the *prepared* tensorflow-datasets ``name`` in ``data_dir`` (``None``: tfds's default),
    read with ``tfds.data_source(..., download=False)``; :class:`DataError` if tfds is missing, the
    data are not prepared there, or a count is out of range. Never downloads or prepares."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(f"source='tfds' needs {_TFDS_EXTRA} (import failed: {err})") from err
    if data_dir is not None:
        data_dir = pathlib.Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise DataError(f"tfds data directory {data_dir} does not exist or is not a directory")
    where_dir = str(data_dir) if data_dir is not None else "tfds's default data_dir"
    out = {}
    for split, n in samples.items():
        where = f"tfds {name!r} split {split!r} in {where_dir}"
        try:
            ds = tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                                  download=False)
            available = len(ds)
        except ImportError as err:  # tfds imports some of its dependencies lazily
            raise DataError(f"source='tfds' needs {_TFDS_EXTRA} (import failed: {err})") from err
        except Exception as err:  # tfds reports an unprepared directory in many ways
            raise DataError(
                f"cannot open a prepared {name!r} in {where_dir}: {type(err).__name__}: "
                f"{str(err).rstrip('.')}. "
                "hessjax never downloads; prepare it (needs TensorFlow and the network) with "
                f"tfds.builder({name!r}, data_dir=..., file_format='array_record')"
                ".download_and_prepare()"
            ) from err
        n = check_samples(n, split, available, where)
        try:
            out[split] = [ds[i] for i in range(n)]  # decoding the PNGs needs pillow
        except ImportError as err:
            raise DataError(f"source='tfds' needs {_TFDS_EXTRA} (import failed: {err})") from err
    return out


def _load_tfds(data_dir, train_samples, test_samples) -> tuple:
    examples = tfds_examples("mnist", data_dir, {"train": train_samples, "test": test_samples})
    where_dir = str(pathlib.Path(data_dir).expanduser()) if data_dir is not None else "tfds's default data_dir"
    return (*_examples_to_arrays(examples["train"], f"tfds 'mnist' split 'train' in {where_dir}"),
            *_examples_to_arrays(examples["test"], f"tfds 'mnist' split 'test' in {where_dir}"))


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    train_samples: int | None = None,
    test_samples: int | None = None,
    source: str = "idx",
    dtype=np.float32,
) -> MNIST:
    """MNIST as :class:`MNIST` host arrays: ``x`` is ``[N, 784]`` ``dtype`` equal to ``uint8 / 255``
    (torchvision's ``ToTensor`` in float32), ``y`` is ``[N]`` int32.

    Args:
      data_dir: for ``source="idx"``, a directory holding ``train-images-idx3-ubyte``,
        ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``,
        each plain or gzipped (``.gz``; plain preferred when both exist), directly or in
        torchvision's ``MNIST/raw/`` below it; ``None`` means ``$HESSJAX_DATA_DIR`` or else the
        shipped copy (:func:`resolve_data_dir`). For ``source="tfds"``, a tensorflow-datasets
        ``data_dir`` in which ``mnist`` has already been prepared in the ``array_record`` format;
        ``None`` means tfds's own default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      train_samples, test_samples: keep the first ``N`` samples of each split, in the source's
        order (``1 <= N <=`` available); ``None`` keeps all.
      source: ``"idx"`` (the reference) or ``"tfds"``.
      dtype: floating dtype of the images.

    ``source="tfds"`` reads with ``tfds.data_source(..., download=False)``, needs the optional
    extra (``pip install 'hessjax[tfds]'``) but not TensorFlow, and never downloads or prepares.
    Its examples are the same 60,000 + 10,000 images, but **in a different order** from the IDX
    files (tfds shuffles them when preparing), so its first ``N`` samples are a different subset
    and results do not match the IDX source sample for sample. It is never the default.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise DataError(f"dtype={dtype!r} is not a numpy dtype") from err
    if not np.issubdtype(dtype, np.floating):
        raise DataError(f"dtype={dtype} must be a floating dtype")
    if source == "idx":
        files = _find_files(resolve_data_dir(data_dir))
        sums = _read_checksums(files[_TRAIN_IMAGES].parent)
        x_tr, y_tr = _read_split(files[_TRAIN_IMAGES], files[_TRAIN_LABELS], sums)
        x_te, y_te = _read_split(files[_TEST_IMAGES], files[_TEST_LABELS], sums)
        n_tr = check_samples(train_samples, "train", len(y_tr), str(files[_TRAIN_IMAGES]))
        n_te = check_samples(test_samples, "test", len(y_te), str(files[_TEST_IMAGES]))
        x_tr, y_tr, x_te, y_te = x_tr[:n_tr], y_tr[:n_tr], x_te[:n_te], y_te[:n_te]
    elif source == "tfds":
        x_tr, y_tr, x_te, y_te = _load_tfds(data_dir, train_samples, test_samples)
    else:
        raise DataError(f"source={source!r} must be 'idx' or 'tfds'")
    return MNIST(
        x_train=to_float(x_tr, dtype),
        y_train=y_tr.astype(np.int32),
        x_test=to_float(x_te, dtype),
        y_test=y_te.astype(np.int32),
    )
