"""The offline data sets: fixed splits, shapes, preprocessing, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from sparsecc.data import check_input_shape, load_dataset, load_photographs, resize_bilinear
from sparsecc.errors import OptionError, ShapeError


def test_digits_split_is_the_one_the_zoo_checkpoints_were_scored_on():
    from sparsecc import zoo

    split = load_dataset("digits")
    x_val, y_val = zoo.load_eval_data("resnet18-digits")
    assert split.x_train.shape == (1437, 1, 32, 32) and split.x_test.shape == (360, 1, 32, 32)
    np.testing.assert_array_equal(split.y_test, y_val)
    np.testing.assert_allclose(split.x_test, x_val, atol=1e-5)


def test_mnist5k_split_is_fixed_stratified_and_normalised():
    split = load_dataset("mnist5k")
    assert split.x_train.shape == (4000, 1, 32, 32) and split.x_test.shape == (1000, 1, 32, 32)
    assert split.x_test.dtype == np.float32 and split.y_test.dtype == np.int64
    assert np.bincount(split.y_test).tolist() == [100] * 10
    assert abs(float(split.x_train.mean())) < 1e-4 and abs(float(split.x_train.std()) - 1) < 1e-3
    # seeded: the same test images every time (checked on a fixed digest of the labels)
    assert split.y_test[:10].tolist() == load_dataset("mnist5k").y_test[:10].tolist()
    # train and test do not share images
    train = {row.tobytes() for row in split.x_train.reshape(len(split.x_train), -1)}
    assert not any(row.tobytes() in train for row in split.x_test.reshape(len(split.x_test), -1)[:200])


def test_unknown_data_set_is_a_clear_error():
    with pytest.raises(OptionError, match="unknown data set 'cifar'") as err:
        load_dataset("cifar")
    assert "mnist5k" in err.value.fix and "digits" in err.value.fix


@pytest.mark.parametrize("shape", [[1, 3, 32, 32], [1, 1, 28, 28], [1, 1024]])
def test_input_shape_that_does_not_fit_is_a_clear_error(shape):
    with pytest.raises(ShapeError, match="does not fit data set 'digits'") as err:
        check_input_shape(load_dataset("digits"), shape, "m.onnx")
    assert err.value.where == "m.onnx"


def test_input_shape_with_symbolic_batch_fits():
    check_input_shape(load_dataset("digits"), ["batch", 1, 32, 32], "m.onnx")
    check_input_shape(load_dataset("digits"), [4, 1, 32, 32], "m.onnx")


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(images), size=(32, 32), mode="bilinear",
                                               align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(images, (32, 32)), expected, atol=1e-6)


def test_photographs_are_real_images_at_the_asked_size():
    names, images = load_photographs((64, 48), names=("astronaut", "camera", "china"))
    assert names == ["astronaut", "camera", "china"] and images.shape == (3, 3, 64, 48)
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1
    _, gray = load_photographs((16, 16), channels=1, names=("chelsea",))
    assert gray.shape == (1, 1, 16, 16)
    with pytest.raises(OptionError, match="unknown photograph"):
        load_photographs(names=("nope",))
