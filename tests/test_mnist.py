"""MNIST loading: the shipped copy against its README's checks, the IDX reader against small fake
files (every malformed input must raise DataError naming the file), and the optional tfds source's
plumbing under ``tfds.testing.mock_data``. Nothing here downloads."""

import gzip
import hashlib
import pathlib
import sys

import numpy as np
import pytest

from conftest import MNIST_DIR, REPO
from hessjax import mnist
from hessjax.mnist import DataError, load_mnist, read_idx, resolve_data_dir, verify_checksums

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ---------------------------------------------------------------------------------------------
# Helpers: small IDX files


def idx_bytes(arr, magic=None):
    """IDX encoding of a uint8 array (magic 0x0800 | ndim unless given)."""
    arr = np.asarray(arr, np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def fake_arrays(n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_mnist(folder, arrays, gz=False):
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (NAMES[key] + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / NAMES[key]).write_bytes(data)
    return folder


@pytest.fixture
def fake(tmp_path):
    arrays = fake_arrays()
    return write_mnist(tmp_path / "mnist", arrays), arrays


@pytest.fixture(scope="module")
def shipped():
    return load_mnist(MNIST_DIR)


# ---------------------------------------------------------------------------------------------
# The shipped copy


def test_shipped_shapes_and_dtypes(shipped):
    assert shipped.x_train.shape == (60000, 784) and shipped.x_train.dtype == np.float32
    assert shipped.y_train.shape == (60000,) and shipped.y_train.dtype == np.int32
    assert shipped.x_test.shape == (10000, 784) and shipped.x_test.dtype == np.float32
    assert shipped.y_test.shape == (10000,) and shipped.y_test.dtype == np.int32
    for x in (shipped.x_train, shipped.x_test):
        assert x.min() == 0.0 and x.max() == 1.0


def test_shipped_label_counts(shipped):
    assert np.bincount(shipped.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(shipped.y_test, minlength=10).tolist() == TEST_COUNTS


def test_shipped_pixel_statistics(shipped):
    x = shipped.x_train  # moments accumulated in float64, without a float64 copy
    mean = float(x.mean(dtype=np.float64))
    std = float(np.sqrt(np.einsum("ij,ij->", x, x, dtype=np.float64) / x.size - mean**2))
    assert round(mean, 4) == 0.1307
    assert round(std, 4) == 0.3081


def test_images_are_uint8_over_255_row_major(shipped):
    raw = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (10000, 28, 28) and raw.dtype == np.uint8
    # ToTensor: img.float().div(255), then .view(-1, 784); bit-for-bit in float32.
    np.testing.assert_array_equal(shipped.x_test, raw.reshape(10000, 784).astype(np.float32) / np.float32(255))
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(shipped.y_test, labels)


def test_float64(fake):
    folder, arrays = fake
    data = load_mnist(folder, dtype=np.float64)
    assert data.x_train.dtype == np.float64
    np.testing.assert_array_equal(data.x_train, arrays["train_images"].reshape(5, 784) / 255.0)


def test_default_dir_is_the_shipped_copy_and_package_data(monkeypatch):
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
    assert mnist.DEFAULT_DATA_DIR == MNIST_DIR.resolve()
    assert resolve_data_dir() == mnist.DEFAULT_DATA_DIR
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/mnist/*" in pyproject["tool"]["setuptools"]["package-data"]["hessjax"]


def test_shipped_checksums():
    assert verify_checksums(MNIST_DIR) == sorted(n + ".gz" for n in NAMES.values())


def test_gzipped_and_plain_shipped_files_identical(shipped, tmp_path):
    for name in NAMES.values():
        (tmp_path / name).write_bytes(gzip.decompress((MNIST_DIR / (name + ".gz")).read_bytes()))
    plain = load_mnist(tmp_path)
    for a, b in zip(shipped, plain):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_first_n_samples(shipped):
    data = load_mnist(MNIST_DIR, train_samples=100, test_samples=7)
    assert [a.shape[0] for a in data] == [100, 100, 7, 7]
    np.testing.assert_array_equal(data.x_train, shipped.x_train[:100])
    np.testing.assert_array_equal(data.y_train, shipped.y_train[:100])
    np.testing.assert_array_equal(data.x_test, shipped.x_test[:7])
    np.testing.assert_array_equal(data.y_test, shipped.y_test[:7])
    assert data.x_train.flags.c_contiguous and data.x_train.flags.writeable


# ---------------------------------------------------------------------------------------------
# Reader and directory layout on fake files


def test_fake_round_trip(fake):
    folder, arrays = fake
    data = load_mnist(folder)
    np.testing.assert_array_equal(data.x_train, arrays["train_images"].reshape(5, 784).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(data.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(data.x_test * 255, arrays["test_images"].reshape(3, 784))
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"])


def test_gzipped_and_plain_fake_files_identical(tmp_path):
    arrays = fake_arrays()
    plain = load_mnist(write_mnist(tmp_path / "plain", arrays))
    gz = load_mnist(write_mnist(tmp_path / "gz", arrays, gz=True))
    for a, b in zip(plain, gz):
        np.testing.assert_array_equal(a, b)


def test_gzip_detected_by_magic_not_extension(tmp_path):
    arr = fake_arrays()["train_labels"]
    (tmp_path / "gz_without_suffix").write_bytes(gzip.compress(idx_bytes(arr)))
    (tmp_path / "plain_with_suffix.gz").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "gz_without_suffix"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain_with_suffix.gz"), arr)


def test_read_idx_big_endian_types(tmp_path):
    arr = (np.arange(6).reshape(2, 3) - 3).astype(">i4")
    path = tmp_path / "ints"
    path.write_bytes((0x0C02).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + arr.tobytes())
    out = read_idx(path)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.int32 and out.dtype.isnative and out.flags.writeable


def test_torchvision_raw_layout(tmp_path):
    arrays = fake_arrays()
    write_mnist(tmp_path / "MNIST" / "raw", arrays, gz=True)
    data = load_mnist(tmp_path)
    np.testing.assert_array_equal(data.y_train, arrays["train_labels"])


def test_env_var_precedence(fake, tmp_path, monkeypatch):
    folder, arrays = fake
    other = write_mnist(tmp_path / "other", fake_arrays(n_train=4, n_test=2, seed=1))
    monkeypatch.setenv(mnist.ENV_VAR, str(folder))
    assert resolve_data_dir() == folder
    assert resolve_data_dir(other) == other  # the argument wins over the variable
    np.testing.assert_array_equal(load_mnist().y_train, arrays["train_labels"])
    assert load_mnist(other).x_train.shape == (4, 784)
    monkeypatch.setenv(mnist.ENV_VAR, "")  # empty means unset
    assert resolve_data_dir() == mnist.DEFAULT_DATA_DIR
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere.*HESSJAX_DATA_DIR"):
        load_mnist()


def test_checksums_checked_on_load(fake):
    folder, _ = fake
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in NAMES.values()]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    load_mnist(folder)
    assert verify_checksums(folder) == sorted(NAMES.values())
    path = folder / NAMES["test_labels"]
    data = bytearray(path.read_bytes())
    data[-1] = (data[-1] + 1) % 10  # still a valid label: only the checksum can notice
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: SHA-256 .* does not match"):
        load_mnist(folder)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: SHA-256"):
        verify_checksums(folder)


def test_verify_checksums_without_sums_file(fake):
    with pytest.raises(DataError, match="no SHA256SUMS in .*mnist"):
        verify_checksums(fake[0])


# ---------------------------------------------------------------------------------------------
# Every bad input raises DataError naming the file and the problem


def _replace(key, data):
    def edit(folder, arrays):
        (folder / NAMES[key]).write_bytes(data(arrays) if callable(data) else data)
    return edit


def _gzip_then(key, mangle):
    def edit(folder, arrays):
        (folder / NAMES[key]).unlink()
        (folder / (NAMES[key] + ".gz")).write_bytes(mangle(gzip.compress(idx_bytes(arrays[key]))))
    return edit


def _flip_middle(b):
    b = bytearray(b)
    for i in range(20, 40):
        b[i] ^= 0xFF
    return bytes(b)


BAD_INPUTS = {
    "missing file": (
        lambda folder, arrays: (folder / NAMES["test_labels"]).unlink(),
        r"missing file: no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz in .*mnist",
    ),
    "truncated data": (
        _replace("train_images", lambda a: idx_bytes(a["train_images"])[:-10]),
        r"train-images-idx3-ubyte: truncated: header \(shape \(5, 28, 28\)\) promises 3920 data bytes, found 3910",
    ),
    "truncated header": (
        _replace("train_labels", b"\x00\x00\x08\x01\x00"),
        r"train-labels-idx1-ubyte: truncated: 5 bytes, too short for the 1-dimensional IDX header",
    ),
    "empty file": (_replace("test_images", b""), r"t10k-images-idx3-ubyte: truncated: 0 bytes"),
    "trailing bytes": (
        _replace("test_labels", lambda a: idx_bytes(a["test_labels"]) + b"\x00"),
        r"t10k-labels-idx1-ubyte: 1 bytes beyond the 3 data bytes",
    ),
    "not IDX": (
        _replace("train_images", b"PK\x03\x04" + bytes(100)),
        r"train-images-idx3-ubyte: bad magic number 0x504B0304: not an IDX file",
    ),
    "labels file as images": (
        _replace("train_images", lambda a: idx_bytes(a["train_labels"])),
        r"train-images-idx3-ubyte: bad magic number 0x00000801, expected 0x00000803 \(images\)",
    ),
    "int32 labels": (
        _replace("test_labels", lambda a: (0x0C01).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(12)),
        r"t10k-labels-idx1-ubyte: bad magic number 0x00000C01, expected 0x00000801 \(labels\)",
    ),
    "corrupt gzip": (
        _gzip_then("train_images", _flip_middle),
        r"train-images-idx3-ubyte\.gz: corrupt gzip stream",
    ),
    "truncated gzip": (
        _gzip_then("test_images", lambda b: b[: len(b) // 2]),
        r"t10k-images-idx3-ubyte\.gz: corrupt gzip stream",
    ),
    "count mismatch": (
        _replace("train_labels", lambda a: idx_bytes(a["train_labels"][:4])),
        r"count mismatch: .*train-images-idx3-ubyte holds 5 images but .*train-labels-idx1-ubyte holds 4 labels",
    ),
    "wrong dims": (
        _replace("test_images", lambda a: idx_bytes(a["test_images"][:, :27, :])),
        r"t10k-images-idx3-ubyte: images are 27x28, expected 28x28",
    ),
    "label out of range": (
        _replace("train_labels", idx_bytes(np.array([1, 2, 10, 3, 4]))),
        r"train-labels-idx1-ubyte: label 10 at index 2 is outside 0\.\.9",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_files_raise(fake, case):
    folder, arrays = fake
    edit, message = BAD_INPUTS[case]
    edit(folder, arrays)
    with pytest.raises(DataError, match=message):
        load_mnist(folder)


def test_bad_directories_raise(tmp_path):
    with pytest.raises(DataError, match=r"MNIST data directory .*nope \(from data_dir argument\) does not exist"):
        load_mnist(tmp_path / "nope")
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(DataError, match=r"a_file .* is not a directory"):
        load_mnist(tmp_path / "a_file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"missing files: none of train-images-idx3-ubyte.* in .*empty"):
        load_mnist(tmp_path / "empty")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_samples": 0}, r"train_samples=0 must be between 1 and 5, .*train-images-idx3-ubyte"),
        ({"train_samples": 6}, r"train_samples=6 must be between 1 and 5"),
        ({"train_samples": -1}, r"train_samples=-1 must be between 1 and 5"),
        ({"test_samples": 4}, r"test_samples=4 must be between 1 and 3, .*t10k-images-idx3-ubyte"),
        ({"train_samples": 2.0}, r"train_samples=2\.0 must be an int or None"),
        ({"test_samples": True}, r"test_samples=True must be an int or None"),
    ],
)
def test_bad_sample_counts_raise(fake, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_mnist(fake[0], **kwargs)


def test_bad_arguments_raise(fake):
    assert load_mnist(fake[0], train_samples=np.int64(5)).x_train.shape == (5, 784)
    with pytest.raises(DataError, match=r"source='torchvision' must be 'idx' or 'tfds'"):
        load_mnist(fake[0], source="torchvision")
    with pytest.raises(DataError, match=r"dtype=int32 must be a floating dtype"):
        load_mnist(fake[0], dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# The optional tfds source


def _tfds_example(image, label):
    return {"image": image[:, :, None], "label": np.int64(label)}


def test_tfds_examples_to_arrays():
    arrays = fake_arrays()
    examples = [_tfds_example(im, lab) for im, lab in zip(arrays["train_images"], arrays["train_labels"])]
    images, labels = mnist._examples_to_arrays(examples, "here")
    np.testing.assert_array_equal(images, arrays["train_images"].reshape(5, 784))
    np.testing.assert_array_equal(labels, arrays["train_labels"])
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    bad = [_tfds_example(arrays["train_images"][0].astype(np.float32), 1)]
    with pytest.raises(DataError, match=r"here: example 0 has a float32\[28, 28, 1\] image"):
        mnist._examples_to_arrays(bad, "here")
    with pytest.raises(DataError, match=r"here: label 11 at index 1 is outside 0\.\.9"):
        mnist._examples_to_arrays(examples[:1] + [_tfds_example(arrays["train_images"][0], 11)], "here")


def test_tfds_missing_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError, match=r"pip install 'hessjax\[tfds\]'"):
        load_mnist(tmp_path, source="tfds")


def test_tfds_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    real_data_source = tfds.data_source

    def recording_data_source(*args, **kwargs):
        calls.append((args, kwargs))
        return real_data_source(*args, **kwargs)

    monkeypatch.setattr(tfds, "data_source", recording_data_source)
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_mnist(tmp_path, source="tfds", train_samples=5)
        expected = real_data_source("mnist", split="train", data_dir=str(tmp_path), download=False)
        expected = [expected[i] for i in range(5)]
        with pytest.raises(DataError, match=r"test_samples=8 must be between 1 and 7, .*'mnist' split 'test'"):
            load_mnist(tmp_path, source="tfds", test_samples=8)
    assert [a.shape for a in data] == [(5, 784), (5,), (7, 784), (7,)]
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.x_train * 255, np.stack([e["image"].reshape(784) for e in expected]))
    np.testing.assert_array_equal(data.y_train, [int(e["label"]) for e in expected])
    assert [c[1]["split"] for c in calls[:2]] == ["train", "test"]
    assert all(c[0] == ("mnist",) and c[1]["download"] is False for c in calls)
    assert all(c[1]["data_dir"] == str(tmp_path) for c in calls)


def test_tfds_unprepared_or_missing_dir(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=r"(?s)cannot open a prepared 'mnist' in .*hessjax never downloads"):
        load_mnist(tmp_path, source="tfds")  # empty directory, download=False
    with pytest.raises(DataError, match=r"tfds data directory .*nope does not exist"):
        load_mnist(tmp_path / "nope", source="tfds")
