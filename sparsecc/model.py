"""Loading, holding and saving ONNX models.

A :class:`Model` is an onnx-graphsurgeon graph (the IR passes edit) plus what
sparsecc knows about where it came from and the concrete input shapes used for
analysis. Loading checks the file thoroughly so that a bad file fails here,
with one clear message, rather than deep inside a pass. Saving is atomic and
writes an IR version the installed ONNX Runtime accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnx_graphsurgeon as gs

from sparsecc.errors import ModelLoadError, ShapeError
from sparsecc.model_files import external_data_files, inline_nested_external_data
# model_fields, apply_model_fields and clamp_ir_version live with the file format; imported here too
from sparsecc.onnx_files import (DEFAULT_DOMAINS, apply_model_fields, clamp_ir_version, model_fields, read_onnx,
                                 read_weights)

if TYPE_CHECKING:
    from sparsecc.feeds import FeedOptions

# Default-domain opsets sparsecc has been written and tested against.
SUPPORTED_OPSETS = range(9, 23)
# Older opsets are upgraded to this one by the canonical pass `upgrade-opset` (onnx.version_converter),
# from the oldest ONNX Runtime runs, so that the conversion is verified like every other pass.
CANONICAL_OPSET = 17
UPGRADABLE_OPSETS = range(7, SUPPORTED_OPSETS.start)


@dataclass
class Model:
    """An ONNX graph being compiled, with its provenance.

    Attributes:
        graph: The onnx-graphsurgeon graph; passes edit it in place.
        source: Where the model came from (a path, or a description), for messages.
        input_shapes: Concrete shape of every graph input, used for analysis
            (MACs, shapes of weight layers) and for verification inputs.
        fields: Model-level fields of the input file (:func:`model_fields`), written into
            every model saved from this one.
        feeds: The inputs verification and timing use (user data, value ranges); None for
            the defaults of :mod:`sparsecc.feeds`.
    """

    graph: gs.Graph
    source: str = "<memory>"
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    files: tuple[Path, ...] = ()  # the files it was read from (the .onnx and its external data)
    fields: dict = field(default_factory=dict)
    feeds: "FeedOptions | None" = None

    def copy(self) -> "Model":
        return Model(self.graph.copy(), self.source, dict(self.input_shapes), self.files, self.fields, self.feeds)

    def to_onnx(self) -> onnx.ModelProto:
        """Export to an ONNX ModelProto that ONNX Runtime accepts, with the input's model-level fields."""
        self.graph.cleanup().toposort()
        proto = gs.export_onnx(self.graph)
        apply_model_fields(proto, self.fields)
        clamp_ir_version(proto)
        return proto

    def to_bytes(self) -> bytes:
        return self.to_onnx().SerializeToString()

    def opset(self) -> int:
        return default_opset(self.graph.import_domains or [], self.graph.opset)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model, streaming the weights (external data ``<name>.data`` above 2 GB).

        The files are written beside their targets and renamed over them: a file there is replaced
        whole, and a symbolic link there is replaced, never written through.
        """
        from sparsecc.onnx_files import write_model
        from sparsecc.outputs import OutputFiles

        path = Path(path)
        with OutputFiles() as files:
            write_model(self.graph, files.stage_folder(path.parent) / path.name, fields=self.fields)
            files.commit()
        return path

    def static_input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The concrete input shapes, or a ShapeError naming what is dynamic."""
        missing = [t for t in self.graph.inputs if t.name not in self.input_shapes]
        if missing:
            described = ", ".join(f"'{t.name}' {format_shape(t.shape)}" for t in missing)
            example = " ".join(f"--shape {t.name}:{example_shape(t.shape)}" for t in missing)
            raise ShapeError(
                f"the model has dynamic input dimensions ({described}) and sparsecc needs concrete "
                "shapes to count MACs and to verify rewrites",
                where=self.source,
                fix=f"give them on the command line, e.g. {example} (or shapes= in the Python API); the "
                    f"example takes {example_explanation()}",
            )
        return dict(self.input_shapes)


def format_shape(shape) -> str:
    if shape is None:
        return "[unknown]"
    return "[" + ", ".join(str(d) for d in shape) + "]"


# Sizes proposed for dynamic dimensions, by what the dimension is. A 1x1 image or a one-token
# sequence compiles, but prunes and times a model nobody runs.
EXAMPLE_BATCH = 1
EXAMPLE_IMAGE_SIDE = 224
EXAMPLE_SEQUENCE = 128
_DIM_HINTS = ((("batch", "n", "b", "bs", "batch_size", "n_batch"), EXAMPLE_BATCH),
              (("height", "width", "h", "w", "img_h", "img_w", "y", "x"), EXAMPLE_IMAGE_SIDE),
              (("seq", "sequence", "seq_len", "sequence_length", "length", "len", "tokens", "time", "t"),
               EXAMPLE_SEQUENCE))


def example_dims(shape) -> list[int | None]:
    """A realistic concrete shape for a (partly) dynamic one; None for a dimension nothing suggests a size for.

    Known sizes are kept. A named dynamic dimension is sized by its name (batch 1, height/width
    224, sequence 128); an unnamed one by its place: the first is the batch (1); in a 4-D
    tensor the last two are an image's height and width (224); in a 3-D tensor the second is a
    sequence (128).
    """
    if shape is None:
        return [EXAMPLE_BATCH, 3, EXAMPLE_IMAGE_SIDE, EXAMPLE_IMAGE_SIDE]
    dims = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
            continue
        name = str(dim).strip().lower() if isinstance(dim, str) else ""
        size = next((value for names, value in _DIM_HINTS if name in names or
                     any(name.startswith(n) for n in names if len(n) > 2)), None)
        if size is None:
            if axis == 0:
                size = EXAMPLE_BATCH
            elif len(shape) == 4 and axis >= 2:
                size = EXAMPLE_IMAGE_SIDE
            elif len(shape) == 3 and axis == 1:
                size = EXAMPLE_SEQUENCE
        dims.append(size)
    return dims


def example_shape(shape) -> str:
    dims = example_dims(shape)
    # a dimension nothing suggests a size for is left for the user to fill in, by its name
    return "x".join(str(d) if d is not None else f"<{shape[axis] or 'size'}>" for axis, d in enumerate(dims))


def example_explanation() -> str:
    return (f"{EXAMPLE_BATCH} for the batch, {EXAMPLE_IMAGE_SIDE}x{EXAMPLE_IMAGE_SIDE} for an image's height "
            f"and width, {EXAMPLE_SEQUENCE} for a sequence; use the sizes the model runs at in deployment, "
            "since pruning decisions and timings are made at these shapes")


def default_opset(import_domains, fallback: int | None) -> int:
    for opset in import_domains:
        if opset.domain in DEFAULT_DOMAINS:
            return opset.version
    return fallback or 0


def parse_shape_overrides(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` strings (the ``--shape`` option)."""
    from sparsecc.errors import OptionError

    from sparsecc.limits import MAX_DIMENSION

    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims and len(dims) < 1000 else ()
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) <= 0:
            raise OptionError(f"cannot read the shape '{spec[:200]}'",
                              fix="write --shape INPUT_NAME:1x3x224x224 (positive dimensions separated by x)")
        if max(shape) > MAX_DIMENSION:
            raise OptionError(f"the shape '{spec[:200]}' has a dimension above the limit of {MAX_DIMENSION} (2^31 - 1)",
                              fix="give the sizes the model runs at")
        shapes[name] = shape
    return shapes


def check_input_sizes(graph: gs.Graph, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse input shapes whose tensors this machine could not hold, before anything is allocated."""
    import numpy as np

    from sparsecc.limits import MAX_INPUT_SHARE_OF_MEMORY, human_bytes, physical_memory

    memory = physical_memory()
    if not memory:
        return
    sizes = {}
    for tensor in graph.inputs:
        if tensor.name in shapes:
            try:
                itemsize = np.dtype(tensor.dtype).itemsize if tensor.dtype is not None else 4
            except TypeError:
                itemsize = 4
            sizes[tensor.name] = int(np.prod(shapes[tensor.name], dtype=object)) * itemsize
    total = sum(sizes.values())
    limit = int(memory * MAX_INPUT_SHARE_OF_MEMORY)
    if total > limit:
        largest = max(sizes, key=sizes.get)
        raise ShapeError(f"the inputs take {human_bytes(total)} at these shapes ('{largest}' "
                         f"{format_shape(shapes[largest])}: {human_bytes(sizes[largest])}); the limit is "
                         f"{MAX_INPUT_SHARE_OF_MEMORY:.0%} of this machine's {human_bytes(memory)} of memory "
                         f"({human_bytes(limit)}), since the checks hold each input and what is computed from it",
                         where=source, fix="give smaller shapes with --shape (a batch of 1, the image size used "
                                           "in deployment)")


def check_model_file(path: str | os.PathLike) -> Path:
    """The path, if it names a file; else the one error every command gives for a missing model."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError("the file does not exist", where=str(path), fix="check the path")
    if not path.is_file():
        raise ModelLoadError("this is not a file", where=str(path), fix="give the path of an .onnx file")
    return path


def load_model(path: str | os.PathLike, shapes: dict[str, tuple[int, ...]] | None = None) -> Model:
    """Read, check and import an ONNX model; never modifies the file.

    Args:
        path: The .onnx file (external data next to it is loaded too).
        shapes: Concrete shapes for inputs with dynamic dimensions. Defaults to none
            (inputs that are already static need none).

    Raises:
        ModelLoadError: the file is missing, not ONNX, truncated, invalid, or of an unsupported opset.
        ShapeError: a given shape does not fit its input.
    """
    path = check_model_file(path)
    where = str(path)
    try:
        # the weights stay in their file(s) until read_weights puts each straight into its array
        proto = read_onnx(path)
    except Exception as exc:  # protobuf raises several types; all mean the same to the user
        raise ModelLoadError(
            f"this is not a readable ONNX file ({type(exc).__name__}: {exc})",
            where=where,
            fix="check that the file is a complete ONNX model (re-export or re-download it if it was truncated)",
        ) from None
    files = (path.resolve(), *external_data_files(proto, path.parent))
    try:
        inline_nested_external_data(proto, path.parent)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"the model's external data cannot be read ({type(exc).__name__}: {exc})", where=where,
                             fix="keep the data file(s) the model names next to the .onnx file") from None
    model = model_from_proto(proto, source=where, shapes=shapes, file=path)
    model.files = files
    del proto  # the graph's constants still refer to it until their arrays are read
    _check_weight_bytes(model.graph, where)
    try:
        read_weights(model.graph, path.resolve().parent)  # never relative to the current folder
    except (OSError, ValueError, EOFError) as exc:
        fix = ("keep the .data file(s) the model names next to the .onnx file" if isinstance(exc, OSError)
               else "re-export the model: a weight's data does not match its shape (a truncated or foreign .data "
                    "file?)")
        raise ModelLoadError(f"the model's external data cannot be read ({type(exc).__name__}: {exc})", where=where,
                             fix=fix) from None
    return model


def _check_weight_bytes(graph: gs.Graph, where: str) -> None:
    """Refuse a model whose weights declare more bytes than the machine has, before reading any."""
    from sparsecc.limits import human_bytes, physical_memory
    from sparsecc.model_files import declared_weight_bytes

    memory = physical_memory()
    declared = declared_weight_bytes(graph)
    if memory and declared > memory:
        raise ModelLoadError(f"the model's weights declare {human_bytes(declared)}, more than this machine's "
                             f"{human_bytes(memory)} of memory (the limit)", where=where,
                             fix="check the model's tensor shapes (a corrupted file?), or compile on a machine with "
                                 "more memory")


def model_from_proto(proto: onnx.ModelProto, source: str = "<memory>",
                     shapes: dict[str, tuple[int, ...]] | None = None, file: Path | None = None) -> Model:
    """Check and import an in-memory ModelProto (see :func:`load_model`).

    ``file`` is the file the proto was read from: the checker then reads it itself, which finds
    external data next to it and spares a serialised copy of the weights."""
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and len(proto.graph.output) == 0):
        raise ModelLoadError(
            "the file parsed but holds no ONNX graph (it may be truncated or not an ONNX model)",
            where=source, fix="re-export or re-download the model")
    opset = default_opset(proto.opset_import, None)
    if opset not in SUPPORTED_OPSETS and opset not in UPGRADABLE_OPSETS:
        too_old = opset < UPGRADABLE_OPSETS.start
        raise ModelLoadError(
            f"default-domain opset {opset} is not supported (sparsecc compiles opsets "
            f"{SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} and upgrades opsets "
            f"{UPGRADABLE_OPSETS.start}-{UPGRADABLE_OPSETS.stop - 1}"
            + ("; ONNX Runtime does not run older ones, so an upgrade could not be verified)" if too_old else ")"),
            where=source,
            fix="convert it first: onnx.version_converter.convert_version(model, 17), "
                "or re-export from PyTorch with opset_version=17")
    try:
        if file is None or not _check_as_read(proto, file):
            onnx.checker.check_model(str(file) if file is not None else proto)
    except Exception as exc:
        raise ModelLoadError(f"the model is not valid ONNX: {exc}".strip(), where=source,
                             fix="re-export the model; `python -m onnx.checker` shows the same error") from None
    try:
        graph = gs.import_onnx(proto)
    except Exception as exc:
        raise ModelLoadError(f"the graph cannot be imported ({type(exc).__name__}: {exc})", where=source,
                             fix="re-export the model with a current exporter") from None
    model = Model(graph, source, fields=model_fields(proto))
    model.input_shapes = resolve_input_shapes(graph, shapes or {}, source)
    check_input_sizes(graph, model.input_shapes, source)
    return model


def _check_as_read(proto: onnx.ModelProto, file: Path) -> bool:
    """Check a model read by ``read_onnx`` without the checker parsing the whole file again.

    The proto as read refers to its large weights in ``file`` (offset and length). The checker
    refuses external data outside the model's folder and hard links, so the graph is checked with
    those weights declared as graph inputs of the same type and shape; their sizes are checked as
    they are read (read_weights). Returns False where that does not apply (external data in other
    files): the caller then checks the file itself.
    """
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    external = [t for t in proto.graph.initializer if uses_external_data(t)]
    locations = {e.value for t in _get_all_tensors(proto) if uses_external_data(t) for e in t.external_data
                 if e.key == "location"}
    if locations != {file.name}:  # data in other files, or in Constant nodes and subgraphs: the checker reads them
        return False
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # small: the weights are not in it
    names = {t.name for t in external}
    kept = [t for t in copy.graph.initializer if t.name not in names]
    copy.graph.ClearField("initializer")
    copy.graph.initializer.extend(kept)
    inputs = {i.name for i in copy.graph.input}
    for tensor in external:
        if tensor.name not in inputs:
            copy.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                       list(tensor.dims)))
    onnx.checker.check_model(copy)
    return True


def resolve_input_shapes(graph: gs.Graph, overrides: dict[str, tuple[int, ...]], source: str) -> dict:
    """Concrete input shapes: static ones as they are, dynamic ones from ``overrides``."""
    names = {t.name for t in graph.inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ShapeError(f"--shape names {unknown}, which is not an input of the model",
                         where=source, fix=f"the inputs are {sorted(names)}")
    resolved: dict[str, tuple[int, ...]] = {}
    for tensor in graph.inputs:
        declared = tensor.shape
        if tensor.name in overrides:
            given = overrides[tensor.name]
            if declared is not None and len(declared) != len(given):
                raise ShapeError(f"--shape gives {len(given)} dimensions for input '{tensor.name}', "
                                 f"which has {len(declared)} {format_shape(declared)}", where=source,
                                 fix=f"give a shape like {example_shape(declared)}")
            for axis, (want, got) in enumerate(zip(declared or [], given)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise ShapeError(f"--shape sets dimension {axis} of input '{tensor.name}' to {got}, "
                                     f"but the model fixes it to {want}", where=source,
                                     fix=f"use {example_shape(declared)}")
            resolved[tensor.name] = tuple(given)
        elif declared is not None and all(isinstance(d, int) and d > 0 for d in declared):
            resolved[tensor.name] = tuple(declared)
    return resolved


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    clamp_ir_version(proto)
    data = proto.SerializeToString()
    write_bytes_atomic(path, data)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file atomically (see :func:`sparsecc.outputs.write_bytes_atomic`)."""
    from sparsecc.outputs import write_bytes_atomic as write

    write(path, data)
