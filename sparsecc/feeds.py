"""The inputs verification and timing feed a model: user data, value ranges, realistic defaults.

Random standard-normal floats suit image and feature inputs, but not integer inputs that mean
something (a sample rate, token ids, a mask): a voice-activity detector fed a sample rate of 0 or 1
fails inside ONNX Runtime. So, per input and in this order:

1. data the user gives (``--input NAME:FILE.npy``, or an ``.npz`` whose arrays are named after inputs);
2. a value range the user gives (``--input-range NAME:LOW:HIGH``): uniform in [LOW, HIGH];
3. for integer and bool inputs, a default by name (:data:`NAMED_DEFAULTS`: a sample rate is 16000,
   a mask is all ones, token type ids are 0, token ids are in [0, 100));
4. otherwise standard-normal floats and integers in {0, 1} (valid indices of anything).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsecc.errors import OptionError

# (pattern on the lower-cased input name, (low, high) inclusive) for integer and bool inputs
NAMED_DEFAULTS = (
    (r"(^|_)(sr|sample_?rate|sampling_?rate|rate)$", (16000, 16000)),
    (r"mask", (1, 1)),
    (r"token_?type", (0, 0)),
    (r"(input|token)_?ids?$|^ids$|tokens?$", (0, 99)),
)


@dataclass
class FeedOptions:
    """What the user said about the model's inputs.

    Attributes:
        data: Arrays to feed, by input name (their shapes become the compile shapes).
        ranges: (low, high) per input name: random values drawn uniformly in [low, high].
    """

    data: dict[str, np.ndarray] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def key(self) -> tuple:
        """What identifies these feeds (for caching outputs computed on them)."""
        return (tuple((n, a.shape, str(a.dtype), hash(a.tobytes())) for n, a in sorted(self.data.items())),
                tuple(sorted(self.ranges.items())))


def parse_input_files(specs: list[str] | None) -> dict[str, np.ndarray]:
    """``NAME:FILE.npy`` (one input) or ``FILE.npz`` / ``NAME:FILE.npz`` (arrays named after inputs, or the
    one array of the file for NAME)."""
    data: dict[str, np.ndarray] = {}
    for spec in specs or []:
        name, sep, path = spec.rpartition(":") if not spec.endswith(".npz") or ":" in spec else ("", "", spec)
        if not path or (not sep and not path.endswith(".npz")):
            raise OptionError(f"cannot read the input '{spec}'",
                              fix="write --input NAME:FILE.npy (or FILE.npz with arrays named after the inputs)")
        if not Path(path).is_file():
            raise OptionError(f"the input file '{path}' does not exist", where=spec, fix="check the path")
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OptionError(f"cannot read '{path}' as a numpy file ({exc})", where=spec,
                              fix="save the array with numpy.save (.npy) or numpy.savez (.npz)") from None
        if isinstance(loaded, np.ndarray):
            data[name] = loaded
            continue
        arrays = {key: loaded[key] for key in loaded.files}
        if name:
            if name in arrays:
                data[name] = arrays[name]
            elif len(arrays) == 1:
                data[name] = next(iter(arrays.values()))
            else:
                raise OptionError(f"'{path}' holds {sorted(arrays)}, none named '{name}'", where=spec,
                                  fix=f"name the array '{name}' in the .npz, or give a .npy file")
        else:
            data.update(arrays)
    return data


def parse_input_ranges(specs: list[str] | None) -> dict[str, tuple[float, float]]:
    """``NAME:LOW:HIGH`` strings (the ``--input-range`` option)."""
    ranges = {}
    for spec in specs or []:
        parts = spec.rsplit(":", 2)
        try:
            low, high = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            low = high = float("nan")
        if len(parts) != 3 or not parts[0] or not low <= high:
            raise OptionError(f"cannot read the input range '{spec}'",
                              fix="write --input-range NAME:LOW:HIGH with LOW <= HIGH, e.g. sr:16000:16000")
        ranges[parts[0]] = (low, high)
    return ranges


def check_feed_options(options: FeedOptions, inputs: dict[str, tuple], source: str) -> None:
    """Every named input exists; given data has the input's rank, fixed dims and a castable type.

    ``inputs`` maps each graph input to (declared shape, numpy dtype)."""
    for name in list(options.data) + list(options.ranges):
        if name not in inputs:
            raise OptionError(f"--input/--input-range names '{name}', which is not an input of the model",
                              where=source, fix=f"the inputs are {sorted(inputs)}")
    for name, array in options.data.items():
        declared, dtype = inputs[name]
        if declared is not None and (len(declared) != array.ndim or any(
                isinstance(d, int) and d > 0 and d != got for d, got in zip(declared, array.shape))):
            raise OptionError(f"the data given for input '{name}' has shape {list(array.shape)}, but the input "
                              f"is {list(declared)}", where=source, fix="give an array of the input's shape")
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise OptionError(f"the data given for input '{name}' is {array.dtype}, the input takes {dtype}",
                              where=source, fix=f"save the array as {dtype}")


def named_default(name: str, dtype: np.dtype) -> tuple[int, int] | None:
    """The default value range of an integer or bool input, by its name (None: nothing known)."""
    if np.issubdtype(dtype, np.floating):
        return None
    lowered = name.lower()
    return next((bounds for pattern, bounds in NAMED_DEFAULTS if re.search(pattern, lowered)), None)


def make_feeds(specs, seed: int, iterations: int = 1, options: FeedOptions | None = None
               ) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for ``specs`` ((name, shape, dtype) each), following the rules of this module."""
    rng = np.random.default_rng(seed)
    options = options or FeedOptions()
    feeds = []
    for _ in range(iterations):
        feed = {}
        for name, shape, dtype in specs:
            dtype = np.dtype(dtype)
            given = options.data.get(name)
            if given is not None and tuple(given.shape) == tuple(shape):
                feed[name] = given.astype(dtype, copy=False)
                continue
            if given is not None:  # a second shape: the data tiled along the batch, random elsewhere
                tiled = _tile_batch(given, shape)
                if tiled is not None:
                    feed[name] = tiled.astype(dtype, copy=False)
                    continue
            bounds = options.ranges.get(name) or named_default(name, dtype)
            if bounds is not None:
                low, high = bounds
                if np.issubdtype(dtype, np.floating):
                    feed[name] = rng.uniform(low, high, shape).astype(dtype)
                else:
                    feed[name] = rng.integers(int(low), int(high), shape, endpoint=True).astype(dtype)
            elif np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal(shape).astype(dtype)
            else:
                feed[name] = rng.integers(0, 2, shape).astype(dtype)
        feeds.append(feed)
    return feeds


def _tile_batch(array: np.ndarray, shape) -> np.ndarray | None:
    shape = tuple(shape)
    if array.ndim != len(shape) or array.shape[1:] != shape[1:] or shape[0] % max(array.shape[0], 1):
        return None
    return np.concatenate([array] * (shape[0] // array.shape[0]), axis=0)


# A second shape checks that symbolic dimensions stay symbolic: the batch doubles, and a dimension of
# another name grows by this many (a multiple of 32 keeps every stride of a detector's pyramid whole).
SECOND_SHAPE_GROWTH = 32


def second_shapes(declared: dict[str, list | None], compile_shapes: dict[str, tuple[int, ...]]
                  ) -> dict[str, tuple[int, ...]] | None:
    """Input shapes at which to check a compiled model again, or None when no input dim is symbolic.

    The first symbolic dimension (the batch, by convention) goes to 2x its compile size; every other
    symbolic dimension grows by :data:`SECOND_SHAPE_GROWTH`. Dimensions of one name move together
    (``height`` of two inputs stays equal).
    """
    sizes: dict[str, int] = {}
    shapes = {}
    changed = False
    for name, shape in compile_shapes.items():
        dims = declared.get(name)
        if dims is None or len(dims) != len(shape):
            shapes[name] = tuple(shape)
            continue
        new = []
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(dim, int) and dim > 0:
                new.append(size)
                continue
            key = dim if isinstance(dim, str) and dim else f"{name}:{axis}"
            if key not in sizes:
                sizes[key] = 2 * size if axis == 0 else size + SECOND_SHAPE_GROWTH
            new.append(sizes[key])
            changed = True
        shapes[name] = tuple(new)
    return shapes if changed else None


def describe_feeds(specs, options: FeedOptions | None) -> str:
    """One line per input: what it was fed (for messages)."""
    options = options or FeedOptions()
    lines = []
    for name, shape, dtype in specs:
        dtype = np.dtype(dtype)
        if name in options.data:
            what = "the data given with --input"
        elif name in options.ranges or named_default(name, dtype):
            low, high = options.ranges.get(name) or named_default(name, dtype)
            what = f"values in [{low:g}, {high:g}]" + ("" if name in options.ranges else " (default for its name)")
        elif np.issubdtype(dtype, np.floating):
            what = "standard-normal random values"
        else:
            what = "random 0/1 values"
        lines.append(f"'{name}' {list(shape)} {dtype.name}: {what}")
    return "; ".join(lines)
