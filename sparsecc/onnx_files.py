"""ONNX files written and read without extra copies of the weights.

A model's weights dominate its size (VGG-16: 553 MB of 553 MB), and every
``SerializeToString`` / ``onnx.load`` / ONNX Runtime session made from bytes
holds another full copy of them. Here the weights are streamed between the
numpy arrays of the graph and the file, one tensor at a time:

- :func:`export_skeleton` exports the graph with its large initializers left
  empty (dims and dtype only), for ONNX shape inference and for building files;
- :func:`write_model` writes a model either as one self-contained file or with
  its weights in ``<name>.data`` next to it (needed above protobuf's 2 GB
  limit), streaming each array into the file;
- :class:`~sparsecc.session_files.SessionFiles` keeps temporary copies on disk, with external
  data, for ONNX Runtime sessions to load from a path (:mod:`sparsecc.session_files`);
- :func:`read_weights` replaces the lazily loaded constants of an imported graph
  by numpy arrays read once (external data straight from its file), so the
  protobuf copy can be freed and graph copies share one array per weight.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from sparsecc.weight_origins import remember_origin

# Initializers at most this large stay inside the graph proto (shape constants, biases of small
# layers): ONNX shape inference reads their values (data propagation), so they must be present.
INLINE_THRESHOLD = 1024
# protobuf cannot parse a message of 2 GiB or more; models whose weights come near it are written
# with external data (the margin leaves room for the graph itself).
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_ABOVE = PROTOBUF_LIMIT - 64 * 2**20
# ONNX Runtime can memory-map external data whose offsets are page-aligned.
ALIGNMENT = 4096
# onnx 1.23 writes IR 14 by default and ONNX Runtime 1.31 reads at most 13; IR 10 covers
# opsets up to 21 and every ONNX Runtime since 1.16, so saved models are capped there.
ORT_MAX_IR_VERSION = 10


def clamp_ir_version(proto: onnx.ModelProto) -> None:
    """Lower the IR version to one ONNX Runtime accepts, but never below what the opsets need."""
    needed = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    proto.ir_version = max(needed, min(proto.ir_version, ORT_MAX_IR_VERSION))


# The default ONNX domain, by both of its names.
DEFAULT_DOMAINS = ("", "ai.onnx")
# Model-level fields of the input file that its users read (class names in metadata_props, the
# producer, the doc string); onnx-graphsurgeon keeps only the graph, so they are carried beside it.
MODEL_SCALAR_FIELDS = ("producer_name", "producer_version", "domain", "model_version", "doc_string")


def model_fields(proto: onnx.ModelProto) -> dict:
    """The model-level fields of ``proto`` to carry into every model written from it."""
    fields = {name: getattr(proto, name) for name in MODEL_SCALAR_FIELDS if getattr(proto, name)}
    if proto.metadata_props:
        fields["metadata_props"] = [(p.key, p.value) for p in proto.metadata_props]
    other = [(o.domain, o.version) for o in proto.opset_import if o.domain not in DEFAULT_DOMAINS]
    if other:
        fields["opset_imports"] = other
    return fields


def apply_model_fields(proto: onnx.ModelProto, fields: dict | None) -> None:
    """Write the fields :func:`model_fields` read back into ``proto`` (opset imports of other domains
    are added where the graph no longer declares them)."""
    for name in MODEL_SCALAR_FIELDS:
        if name in (fields or {}):
            setattr(proto, name, fields[name])
    if (fields or {}).get("metadata_props"):
        del proto.metadata_props[:]
        for key, value in fields["metadata_props"]:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    declared = {o.domain for o in proto.opset_import}
    for domain, version in (fields or {}).get("opset_imports", []):
        if domain not in declared:
            proto.opset_import.append(onnx.helper.make_opsetid(domain, version))


def _nbytes(constant: gs.Constant) -> int:
    values = constant._values  # LazyValues know their size without loading
    return int(values.nbytes)


def _exportable(constant: gs.Constant) -> bool:
    """True when the array is written as it is (gs converts float32 to another export dtype itself)."""
    export = constant.export_dtype
    return export is None or np.dtype(constant.dtype) == _as_numpy(export)


def _as_numpy(dtype) -> np.dtype | None:
    try:
        return np.dtype(dtype)
    except TypeError:
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
        except Exception:  # an ONNX type numpy does not have (bfloat16, float8)
            return None


def export_skeleton(graph: gs.Graph, threshold: int = INLINE_THRESHOLD, fields: dict | None = None
                    ) -> tuple[onnx.ModelProto, list[tuple[onnx.TensorProto, np.ndarray]]]:
    """Export the graph with its initializers above ``threshold`` bytes left empty.

    Returns the proto and, for each emptied initializer, its TensorProto (name, dims and
    dtype set, no data) with the array that holds its values. Nothing is copied: the arrays
    are the graph's own. ``fields`` (:func:`model_fields`) are the model-level
    fields to write. Defaults to none.
    """
    graph.cleanup().toposort()
    large = {name: t for name, t in graph.tensors().items()
             if isinstance(t, gs.Constant) and _nbytes(t) > threshold and _exportable(t)}
    # the array objects themselves (a file-backed np.memmap stays one: SessionFiles links its file)
    arrays = {name: t.values if isinstance(t.values, np.ndarray) else np.asarray(t.values)
              for name, t in large.items()}
    try:
        for name, tensor in large.items():
            tensor._values = np.empty(0, arrays[name].dtype)
        proto = gs.export_onnx(graph)
    finally:
        for name, tensor in large.items():
            tensor._values = arrays[name]
    apply_model_fields(proto, fields)
    clamp_ir_version(proto)
    emptied = []
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL and not init.external_data:
            init.data_location = onnx.TensorProto.DEFAULT  # a flag kept from an import; the data is inline
        if init.name in arrays:
            del init.dims[:]
            init.dims.extend(arrays[init.name].shape)
            init.ClearField("raw_data")
            emptied.append((init, arrays[init.name]))
    return proto, emptied


def write_model(graph: gs.Graph, path: str | os.PathLike, external: bool | None = None,
                fields: dict | None = None) -> Path:
    """Write the graph to ``path``, streaming the weights (no serialised copy of them).

    Args:
        graph: The graph (it is cleaned up and sorted, as every export does).
        path: The .onnx file; with external data, ``<name>.data`` is written beside it.
        external: Weights in ``<name>.data``; None decides by size (external above ~2 GB,
            which protobuf cannot hold). Defaults to None.
        fields: Model-level fields to write (metadata_props, producer, doc string ...; see
            :func:`model_fields`). Defaults to none.
    """
    proto, emptied = export_skeleton(graph, fields=fields)
    return write_skeleton(proto, emptied, path, external)


def write_skeleton(proto: onnx.ModelProto, emptied: list[tuple[onnx.TensorProto, np.ndarray]],
                   path: str | os.PathLike, external: bool | None = None) -> Path:
    """Write a proto from :func:`export_skeleton` with its arrays (see :func:`write_model`)."""
    if sys.byteorder != "little":  # ONNX stores raw data little-endian
        raise NotImplementedError("writing ONNX files on a big-endian machine")
    path = Path(path)
    total = sum(int(a.nbytes) for _, a in emptied) + proto.ByteSize()
    if external is None:
        external = total > EXTERNAL_ABOVE
    if external:
        _write_external(proto, emptied, path)
    else:
        if total > PROTOBUF_LIMIT:
            raise ValueError(f"{total} bytes cannot be one ONNX file (protobuf's limit is 2 GiB); "
                             "write it with external data")
        _write_inline(proto, emptied, path)
    return path


def external_data_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".data")


def _write_external(proto: onnx.ModelProto, emptied, path: Path) -> None:
    data_path = external_data_path(path)
    offset = 0
    with open(data_path, "wb") as handle:
        for init, array in emptied:
            pad = -offset % ALIGNMENT
            handle.write(b"\0" * pad)
            offset += pad
            handle.write(raw_bytes(array))
            set_external(init, data_path.name, offset, int(array.nbytes))
            offset += int(array.nbytes)
    with open(path, "wb") as handle:
        handle.write(proto.SerializeToString())


def set_external(init: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Point an initializer at ``length`` bytes of the file ``location`` from ``offset``."""
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value


def _write_inline(proto: onnx.ModelProto, emptied, path: Path) -> None:
    """One self-contained file: the graph without the large initializers, then each of them.

    protobuf merges repeated occurrences of a message field, so a ModelProto followed by
    ``graph { initializer { ... raw_data } }`` fragments parses as one model whose graph has
    every initializer; each fragment is written straight from its array.
    """
    large = {init.name for init, _ in emptied}
    head = onnx.ModelProto()
    head.CopyFrom(proto)  # small: the large initializers hold no data
    kept = [init for init in head.graph.initializer if init.name not in large]
    head.graph.ClearField("initializer")
    head.graph.initializer.extend(kept)
    with open(path, "wb") as handle:
        handle.write(head.SerializeToString())
        for init, array in emptied:
            header = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=list(init.dims))
            header_bytes = header.SerializeToString()
            raw_field = _tag(9) + _varint(array.nbytes)  # TensorProto.raw_data
            tensor_size = len(header_bytes) + len(raw_field) + array.nbytes
            initializer = _tag(5) + _varint(tensor_size)  # GraphProto.initializer
            graph_size = len(initializer) + tensor_size
            handle.write(_tag(7) + _varint(graph_size) + initializer + header_bytes + raw_field)  # ModelProto.graph
            handle.write(raw_bytes(array))


def raw_bytes(array: np.ndarray) -> memoryview:
    """The bytes of an array as they go into a file (C order, no copy where it is contiguous)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _tag(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_weights(graph: gs.Graph, base_dir: str | os.PathLike | None) -> None:
    """Load every lazily imported constant into a numpy array, once.

    Constants that refer to external data are read straight from their file (``base_dir``
    is the folder of the .onnx file); the others are decoded from the proto, which the
    caller can then drop. Afterwards copies of the graph share one array per weight.
    """
    from onnx.external_data_helper import uses_external_data

    from sparsecc.graphutil import all_tensors

    for tensor in all_tensors(graph):
        if not isinstance(tensor, gs.Constant) or not isinstance(tensor._values, gs.ir.tensor.LazyValues):
            continue
        if isinstance(tensor._values, gs.ir.tensor.SparseValues):
            continue
        proto = tensor._values.tensor
        if uses_external_data(proto):
            tensor._values = _read_external(proto, Path(base_dir or "."))
            tensor.data_location = None  # the values are in memory now; where they are written is decided then
        elif _as_numpy(proto.data_type) is not None:
            tensor._values = onnx.numpy_helper.to_array(proto)


def inside_folder(base_dir: Path, location: str, name: str) -> Path:
    """The external data file, which the model must name inside its folder (as ONNX Runtime requires):
    no absolute path, no ``..`` out of it. (A symbolic link there is the user's layout, and followed.)"""
    normal = os.path.normpath(location) if location else ""
    if not normal or os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise ValueError(f"the external data of '{name}' is named '{location}', outside the model's folder")
    return base_dir / normal


def _read_external(proto: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    info = {entry.key: entry.value for entry in proto.external_data}
    dtype = _as_numpy(proto.data_type)
    shape = tuple(proto.dims)
    if dtype is None:  # a type numpy lacks: let onnx decode it
        onnx.external_data_helper.load_external_data_for_tensor(proto, str(base_dir))
        return onnx.numpy_helper.to_array(proto)
    location = inside_folder(base_dir, info.get("location", ""), proto.name)
    count = int(np.prod(shape, dtype=object))  # Python ints: a declared size never overflows
    offset = int(info.get("offset", 0))
    if "length" in info and int(info["length"]) != count * dtype.itemsize:
        raise ValueError(f"'{proto.name}' holds {info['length']} bytes, but its shape {list(shape)} of "
                         f"{dtype.name} needs {count * dtype.itemsize}")
    size = location.stat().st_size
    if offset < 0 or offset + count * dtype.itemsize > size:  # checked before anything is allocated
        from sparsecc.limits import human_bytes

        raise ValueError(f"'{proto.name}' declares {human_bytes(count * dtype.itemsize)} ({list(shape)} "
                         f"{dtype.name}) at offset {offset} of {location.name}, which holds {human_bytes(size)}")
    with open(location, "rb") as handle:
        handle.seek(offset)
        array = np.fromfile(handle, dtype=dtype.newbyteorder("<"), count=count)
    if array.size != count:
        raise EOFError(f"external data of '{proto.name}' is truncated in {location}")
    array = array.astype(dtype, copy=False).reshape(shape)
    remember_origin(array, location, offset)
    return array


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse an .onnx file leaving the large weights in the file.

    The initializers' ``raw_data`` above :data:`INLINE_THRESHOLD` bytes are turned into
    external-data references to the .onnx file itself (offset and length of the bytes in it),
    so the parsed proto is small: :func:`read_weights` then reads each weight straight into its
    array. A proto holding the weights would stay alive as long as anything refers to any part
    of it (onnx-graphsurgeon keeps such references), doubling the memory the model takes.
    A file that cannot be scanned this way is parsed as usual.
    """
    import mmap

    path = Path(path)
    with open(path, "rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return onnx.load(str(path), load_external_data=False)
    try:
        stripped = _strip_model(memoryview(view), path.name)
    except (IndexError, ValueError):  # not protobuf as expected: let onnx say what is wrong
        stripped = None
    finally:
        view.close()
    if stripped is None:
        return onnx.load(str(path), load_external_data=False)
    return onnx.load_from_string(bytes(stripped))


def _fields(buf, start: int, end: int):
    """(field number, wire type, start of the field, start of its value, end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
            yield number, wire, field_start, pos, pos
        elif wire == 1:
            yield number, wire, field_start, pos, pos + 8
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, field_start, pos, pos + length
            pos += length
        elif wire == 5:
            yield number, wire, field_start, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf field")


def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _strip_model(buf, location: str) -> bytearray | None:
    out = bytearray()
    stripped_any = False
    for number, wire, start, value, end in _fields(buf, 0, len(buf)):
        if number == 7 and wire == 2:  # ModelProto.graph
            graph, stripped = _strip_graph(buf, value, end, location)
            stripped_any |= stripped
            out += _tag(7) + _varint(len(graph)) + graph
        else:
            out += buf[start:end]
    return out if stripped_any else None


def _strip_graph(buf, begin: int, end: int, location: str) -> tuple[bytearray, bool]:
    out = bytearray()
    stripped_any = False
    for number, wire, start, value, stop in _fields(buf, begin, end):
        if number == 5 and wire == 2:  # GraphProto.initializer
            tensor = _strip_tensor(buf, value, stop, location)
            if tensor is not None:
                out += _tag(5) + _varint(len(tensor)) + tensor
                stripped_any = True
                continue
        out += buf[start:stop]
    return out, stripped_any


def _strip_tensor(buf, begin: int, end: int, location: str) -> bytearray | None:
    """The TensorProto with its raw_data replaced by a reference to where it lies in the file."""
    out = bytearray()
    raw = None
    for number, wire, start, value, stop in _fields(buf, begin, end):
        if number == 9 and wire == 2:  # raw_data
            raw = (value, stop - value)
        elif number in (13, 14):  # already external: leave the tensor as it is
            return None
        else:
            out += buf[start:stop]
    if raw is None or raw[1] <= INLINE_THRESHOLD:
        return None
    for key, text in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        entry = _tag(1) + _varint(len(key)) + key.encode() + _tag(2) + _varint(len(text.encode())) + text.encode()
        out += _tag(13) + _varint(len(entry)) + entry  # TensorProto.external_data
    out += _varint(14 << 3 | 0) + _varint(onnx.TensorProto.EXTERNAL)  # TensorProto.data_location
    return out
