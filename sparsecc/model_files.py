"""The files a model is read from: its external data located, confined to the model's folder and
checked against the sizes it declares, before anything is read or allocated (the main graph's
initializers are read by :func:`sparsecc.onnx_files.read_weights`, which checks them the same way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from sparsecc.onnx_files import _as_numpy, inside_folder


def inline_nested_external_data(proto: onnx.ModelProto, base_dir: Path) -> None:
    """Read into the proto the external data of tensors that are not main-graph initializers (Constant
    nodes, subgraphs): the graph is run from temporary copies, which only carry the initializers' data.
    Each is checked (inside the model's folder, within its file) before it is read."""
    from onnx.external_data_helper import uses_external_data

    from sparsecc.limits import human_bytes

    for tensor in _nested_tensors(proto.graph):
        if not uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = inside_folder(base_dir, info.get("location", ""), tensor.name)
        offset, size = int(info.get("offset", 0)), location.stat().st_size
        dtype = _as_numpy(tensor.data_type)
        length = int(info["length"]) if "length" in info else \
            int(np.prod(list(tensor.dims), dtype=object)) * (dtype.itemsize if dtype else 1)
        if offset < 0 or offset + length > size:
            raise ValueError(f"'{tensor.name}' declares {human_bytes(length)} at offset {offset} of {location.name}, "
                             f"which holds {human_bytes(size)}")
        with open(location, "rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _nested_tensors(graph: onnx.GraphProto, main: bool = True):
    """The tensors of Constant-like node attributes, and of subgraphs (their initializers too)."""
    if not main:
        yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _nested_tensors(attribute.g, main=False)
            for subgraph in attribute.graphs:
                yield from _nested_tensors(subgraph, main=False)


def declared_weight_bytes(graph: gs.Graph) -> int:
    """The bytes the graph's constants declare (read from their shapes, before any is loaded)."""
    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            values = tensor._values
            if isinstance(values, gs.ir.tensor.LazyValues):
                dtype = _as_numpy(values.tensor.data_type)
                total += int(np.prod(list(values.tensor.dims), dtype=object)) * (dtype.itemsize if dtype else 1)
            else:
                total += int(values.nbytes)
    return total


def external_data_files(proto: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """The files a model's external data lies in (the model's inputs besides the .onnx file)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    found = []
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location:
                path = (base_dir / location).resolve()
                if path not in found:
                    found.append(path)
    return found
