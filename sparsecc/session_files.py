"""Temporary model files for ONNX Runtime sessions, and weights mapped back from files.

ONNX Runtime loading a model by path reads the weights straight into its own buffers (1.0 s and
1x the weights for VGG-16, against 4.6 s and 2.8x from serialised bytes): :class:`SessionFiles`
keeps such files, with one shared external data file, writing each array once.
:func:`release_to_files` lets copies kept only to be compared against map their weights from
those files instead of holding them.
"""

from __future__ import annotations

import gc
import hashlib
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.onnx_files import ALIGNMENT, INLINE_THRESHOLD, export_skeleton, raw_bytes, set_external
from sparsecc.weight_origins import forget_origins_in, origin_of, remember_origin, resident_by_origin, weak

# outputs of this many checked graphs are kept (a pass's "after" is the next pass's "before")
KEPT_OUTPUTS = 4


def release_to_files(graph: gs.Graph, keep: tuple[gs.Graph, ...] = ()) -> int:
    """Let the weights of ``graph`` that lie in a file be read from it again, freeing their memory.

    Every large array whose exact bytes are in a file (the input model, or the data file of a
    :class:`SessionFiles` that wrote it) and that no graph in ``keep`` uses is replaced by a
    read-only ``np.memmap`` of those bytes: the same values, nothing resident until read, and
    SessionFiles links the file instead of writing them. For copies kept only to be compared or
    timed against (the unpruned original, the masked original, the graph before a rewrite):
    once the working model replaces an array, the in-memory one is freed. Returns the number of
    arrays replaced.
    """
    used = {id(t.values) for g in keep for t in g.tensors().values()
            if isinstance(t, gs.Constant) and not isinstance(t._values, gs.ir.tensor.LazyValues)}
    count = 0
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or not isinstance(tensor._values, np.ndarray):
            continue
        array = tensor._values
        if isinstance(array, np.memmap) or array.nbytes <= INLINE_THRESHOLD or id(array) in used:
            continue
        origin = origin_of(array)
        if origin is None:
            continue
        try:
            mapped = np.memmap(origin[0], dtype=array.dtype, mode="r", offset=origin[1], shape=array.shape)
        except (OSError, ValueError):  # the file is gone (a closed SessionFiles): keep the array
            continue
        remember_origin(mapped, origin[0], origin[1])
        tensor._values = mapped
        count += 1
    if count:
        # graph copies leave cyclic garbage (nodes and tensors refer to each other) that can still
        # hold the replaced arrays: collect it now, not whenever the collector next runs
        gc.collect()
    return count


class SessionFiles:
    """Temporary model files, with external data, for ONNX Runtime sessions to load by path.

    Every file of one SessionFiles shares one data file: an array already written (the same
    numpy object, which passes replace rather than edit, as verification against the graph
    before them requires) is referenced again, not written again, so checking a pass that
    changed a few weights writes only those; an array still as it was read from the input file
    is not written at all (the file is hard-linked into the folder and referenced at its offset).
    :meth:`write` makes a new .onnx file,
    :meth:`release` deletes one, :meth:`close` (or leaving the ``with`` block) all of them.
    """

    def __init__(self, prefix: str = "session"):
        from sparsecc.locks import finalize_private_tempdir, private_tempdir

        # marked as this process's while it lives: a killed run's folder (hard links to the input
        # included) is recognised and removed by the next run
        self._dir = private_tempdir(prefix)
        self._finalizer = finalize_private_tempdir(self, self._dir)
        self._count = 0
        self._data = self._dir / "weights.data"
        self._size = 0
        self._written: dict[int, tuple[weakref.ref, int]] = {}  # id(array) -> (array, offset)
        self._digests: dict[Path, str] = {}
        self._links: dict[Path, str] = {}  # input file -> its hard link in the folder ("" if impossible)
        self._outputs: dict[tuple, Any] = {}  # (digest, inputs) -> outputs of that graph on those inputs
        # file -> its large initializers, weakly: a file must not keep arrays its graph dropped alive
        self._arrays: dict[Path, list[tuple[str, weakref.ref]]] = {}

    def write(self, graph_or_proto, emptied=None) -> Path:
        """A file for ``graph`` (a gs.Graph), or for a skeleton proto with its emptied arrays."""
        if isinstance(graph_or_proto, gs.Graph):
            proto, emptied = export_skeleton(graph_or_proto)
        else:
            proto, emptied = graph_or_proto, emptied or []
        self._count += 1
        path = self._dir / f"model{self._count}.onnx"
        with open(self._data, "ab") as handle:
            for init, array in emptied:
                offset = self._offset(array)
                linked = self._linked(array) if offset is None else None
                if linked is not None:  # still the bytes of the file it was read from
                    set_external(init, linked[0], linked[1], int(array.nbytes))
                    continue
                if offset is None:
                    pad = -self._size % ALIGNMENT
                    handle.write(b"\0" * pad)
                    offset = self._size + pad
                    handle.write(raw_bytes(array))
                    self._size = offset + int(array.nbytes)
                    self._remember(array, offset)
                    # release_to_files can map these bytes instead of keeping the array
                    remember_origin(array, self._data, offset)
                set_external(init, self._data.name, offset, int(array.nbytes))
        skeleton = proto.SerializeToString()
        with open(path, "wb") as handle:
            handle.write(skeleton)
        self._arrays[path] = [(init.name, weak(array)) for init, array in emptied]
        # same skeleton (graph, and weights at the same places of the data file) = same function
        self._digests[path] = hashlib.sha256(skeleton).hexdigest()
        return path

    def initializers(self, path) -> list[tuple[str, np.ndarray]]:
        """The large initializers of a file :meth:`write` made, as (name, the graph's array); those
        whose array is gone (or cannot be referenced weakly) are left out: they are in the file.
        A mapped array (:func:`release_to_files`) is given as the in-memory array of the same bytes
        where one is alive."""
        pairs = [(name, ref()) for name, ref in self._arrays.get(Path(path), [])]
        resident = resident_by_origin()
        found = []
        for name, array in pairs:
            if isinstance(array, np.memmap):
                # a copy's mapped weight that an in-memory array (the working model's) still holds:
                # that one, so the file's pages are not read into memory a second time
                twin = resident.get(origin_of(array))
                if twin is not None and twin.shape == array.shape and twin.dtype == array.dtype:
                    array = twin
            if array is not None:
                found.append((name, array))
        return found

    def outputs(self, path, inputs_key) -> Any:
        """What :meth:`keep_outputs` kept for a graph identical to ``path``'s on these inputs, or None."""
        digest = self._digests.get(Path(path)) if isinstance(path, (str, os.PathLike)) else None
        return self._outputs.get((digest, inputs_key)) if digest else None

    def keep_outputs(self, path, inputs_key, outputs: Any) -> None:
        digest = self._digests.get(Path(path)) if isinstance(path, (str, os.PathLike)) else None
        if digest:
            self._outputs[(digest, inputs_key)] = outputs
            while len(self._outputs) > KEPT_OUTPUTS:
                self._outputs.pop(next(iter(self._outputs)))

    def _linked(self, array: np.ndarray) -> tuple[str, int] | None:
        """(name in the folder, offset) of the input file the array was read from, hard-linked here.

        ONNX Runtime refuses external data outside the model's folder (symbolic links included);
        a hard link is the same file, so the weights are neither copied nor written again. None
        when the array was not read from a file, or the link cannot be made (another filesystem).
        """
        origin = origin_of(array)
        if origin is None:
            return None
        path, offset = origin
        if path == self._data.resolve():  # mapped from this folder's own data file
            return self._data.name, offset
        name = self._links.get(path)
        if name is None:
            name = f"input{len(self._links) + 1}.data"
            try:
                os.link(path, self._dir / name)
            except OSError:
                name = ""
            self._links[path] = name
        return (name, offset) if name else None

    def _offset(self, array: np.ndarray) -> int | None:
        known = self._written.get(id(array))
        return known[1] if known is not None and known[0]() is array else None

    def _remember(self, array: np.ndarray, offset: int) -> None:
        try:
            self._written[id(array)] = (weakref.ref(array), offset)
        except TypeError:  # an array type without weak references: written again next time
            pass

    def release(self, path: Path | None) -> None:
        if path is not None and Path(path).parent == self._dir:
            Path(path).unlink(missing_ok=True)
            self._arrays.pop(Path(path), None)

    def close(self) -> None:
        forget_origins_in(self._dir)
        self._written.clear()
        self._outputs.clear()
        self._arrays.clear()
        self._finalizer()  # removes the folder (once; also when the object is collected or at exit)

    def __enter__(self) -> "SessionFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
