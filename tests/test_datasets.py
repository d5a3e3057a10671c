"""``--dataset``: a user's ``.npz`` and tfds data sets, every refusal naming the file and the array, and
the fit of data to a model (input shape, classes). Nothing here downloads."""

import numpy as np
import pytest

from hessjax.datasets import fit_to_model, load_dataset, parse_dataset, reshape_inputs
from hessjax.mnist import DataError


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), "y_train": np.arange(40) % 10,
              "x_test": rng.integers(0, 256, (15, 28, 28), dtype=np.uint8), "y_test": np.arange(15) % 10}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_uint8_is_scaled_as_to_tensor_and_floats_are_taken_as_they_are(tmp_path):
    spec = _npz(tmp_path / "d.npz")
    data = load_dataset(spec, train_samples=30)
    raw = np.load(tmp_path / "d.npz")
    assert data.x_train.shape == (30, 28, 28) and data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.x_train, raw["x_train"][:30].astype(np.float32) / np.float32(255))
    assert data.x_test.shape == (15, 28, 28) and data.name == spec and len(data.sha256) == 64
    floats = np.random.default_rng(1).normal(size=(40, 3, 4)).astype(np.float64)
    data = load_dataset(_npz(tmp_path / "f.npz", x_train=floats, x_test=floats[:15]), dtype=np.float64)
    np.testing.assert_array_equal(data.x_train, floats)


@pytest.mark.parametrize("overrides, message", [
    ({"x_test": None}, r"no array 'x_test'; an .npz data set holds x_train, y_train, x_test, y_test"),
    ({"y_train": np.eye(10)[np.arange(40) % 10]}, r"y_train has shape \[40, 10\], expected \[N\] class indices"),
    ({"y_train": np.arange(39) % 10}, r"x_train holds 40 samples but y_train holds 39 labels"),
    ({"y_train": (np.arange(40) % 10).astype(np.float32)}, r"y_train has dtype float32, expected integer"),
    ({"y_test": np.r_[np.arange(14) % 10, -1]}, r"y_test\[14\] = -1: labels are class indices"),
    ({"x_train": np.zeros((40,), np.uint8)}, r"x_train has shape \[40\], expected \[N, ...\]"),
    ({"x_train": np.zeros((40, 28, 28), np.int16)}, r"x_train has dtype int16: inputs are uint8 .* or floats"),
    ({"x_train": np.full((40, 4), np.nan)}, r"x_train: sample 0 has NaN or Inf values"),
    ({"x_test": np.zeros((15, 27, 28), np.uint8)}, r"train samples are \[28, 28\] but test samples are \[27, 28\]"),
])
def test_npz_refusals_name_the_file_and_the_array(tmp_path, overrides, message):
    spec = _npz(tmp_path / "d.npz", **overrides)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(spec)
    assert str(tmp_path / "d.npz") in str(info.value)


def test_npz_refuses_pickles_corrupt_files_and_bad_specs(tmp_path):
    objects = np.empty(40, object)
    with pytest.raises(DataError, match=r"holding Python objects, which are refused"):
        load_dataset(_npz(tmp_path / "o.npz", y_train=objects))
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"not a readable .npz file"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")
    with pytest.raises(DataError, match=r"no such file"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    with pytest.raises(DataError, match=r"is a directory"):
        load_dataset(f"npz:{tmp_path}")
    with pytest.raises(DataError, match=r"train_samples=41 must be between 1 and 40"):
        load_dataset(_npz(tmp_path / "d.npz"), train_samples=41)
    with pytest.raises(DataError, match=r"--data-dir names MNIST's IDX files"):
        load_dataset(_npz(tmp_path / "d.npz"), data_dir=tmp_path)
    for bad in ("cifar10", "npz:", "tfds", "hf:mnist"):
        with pytest.raises(DataError, match=r"--dataset .*: expected mnist"):
            parse_dataset(bad)
    assert parse_dataset("tfds:fashion_mnist") == ("tfds", "fashion_mnist")


def test_reshape_inputs_flattens_and_drops_unit_axes_but_never_transposes():
    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 784)
    img = reshape_inputs(x, (1, 28, 28))
    np.testing.assert_array_equal(img[1, 0, 3], x[1, 84:112])  # row-major, as torch's view
    np.testing.assert_array_equal(reshape_inputs(img, (784,)), x)
    np.testing.assert_array_equal(reshape_inputs(x.reshape(2, 28, 28, 1), (1, 28, 28)), img)
    with pytest.raises(DataError, match=r"\[3, 32, 32\] do not fit the model's input \[32, 32, 3\] \(same size, other "
                                        r"layout: the data are channels-first"):
        reshape_inputs(np.zeros((2, 3, 32, 32)), (32, 32, 3))
    with pytest.raises(DataError, match=r"\[3, 32, 32\] do not fit the model's input \[1, 28, 28\]$"):
        reshape_inputs(np.zeros((2, 3, 32, 32)), (1, 28, 28))


def test_fit_to_model_checks_every_label_against_the_classes(tmp_path):
    data = load_dataset(_npz(tmp_path / "d.npz", y_test=np.r_[np.arange(14) % 10, 10]))
    with pytest.raises(DataError, match=r"y_test\[14\] = 10 is out of range for model 'lenet', whose 10 outputs are "
                                        r"the classes 0..9"):
        fit_to_model(data, (1, 28, 28), 10, "lenet")
    fitted = fit_to_model(data, (1, 28, 28), 11, "eleven")
    assert fitted.x_train.shape == (40, 1, 28, 28) and fitted.x_test.shape == (15, 1, 28, 28)


def test_tfds_dataset_by_name_is_channels_first(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_dataset("tfds:mnist", tfds_dir=tmp_path, train_samples=4)
        source = tfds.data_source("mnist", split="train", data_dir=str(tmp_path), download=False)
        expected = np.stack([np.transpose(source[i]["image"], (2, 0, 1)) for i in range(4)])
    assert data.x_train.shape == (4, 1, 28, 28) and data.x_test.shape == (6, 1, 28, 28) and data.name == "tfds:mnist"
    np.testing.assert_array_equal(data.x_train * 255, expected)
    with pytest.raises(DataError, match=r"(?s)cannot open a prepared 'fashion_mnist' in .*never downloads"):
        load_dataset("tfds:fashion_mnist", tfds_dir=tmp_path)
