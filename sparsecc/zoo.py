"""The model zoo as a library: list models, export them to ONNX, find trained checkpoints.

Listing, checkpoint paths and evaluation data need no torch; building and
exporting import it lazily and fail with an install hint when it is absent.

Export uses PyTorch's TorchScript exporter (``dynamo=False``): at opset 17 it
emits Conv, BatchNormalization (kept apart in training-mode PRESERVE, so the
compiler's own fold has work to do), Gemm and MatMul nodes whose weights are
initializers named after the module's parameters (equal ones, such as fresh BatchNorm
scales, de-duplicated behind Identity nodes: the compiler's canonicalisation gives each its own
initializer again, as for any other exporter's graph). The torch.export-based
exporter needs onnxscript, emits opset 18 and converts down, and folds
BatchNorm into Conv.
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from sparsecc.errors import ModelLoadError, OptionError, OutputError, VerificationError, install_hint
from sparsecc.model import clamp_ir_version, write_bytes_atomic
from sparsecc import models as _models
from sparsecc.models import ZOO, ZooEntry

__all__ = ["list_models", "get_entry", "build_model", "export_onnx", "export_module",
           "checkpoint_path", "load_eval_data", "finetuned_checkpoints"]

_OUTPUT_NAME = "logits"
_RTOL_OF_MAX = 1e-4  # ORT vs torch: max |diff| allowed, as a fraction of max |output|
_OPSETS = range(9, 21)  # what torch's TorchScript exporter writes (its ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET is 20)
_CHECKPOINT_DIR = Path(_models.__file__).resolve().parent / "checkpoints"


def list_models() -> list[ZooEntry]:
    """Returns every zoo entry, ImageNet-shape and small variants first, trained ones last."""
    return list(ZOO.values())


def get_entry(name: str) -> ZooEntry:
    """Returns the zoo entry called ``name``.

    Raises:
        OptionError: No model has that name.
    """
    try:
        return ZOO[name]
    except KeyError:
        raise OptionError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}",
                          where="model name", fix="run `sparsecc zoo list`") from None


def _torch():
    try:
        import torch
    except ImportError:
        raise OptionError("building or exporting a zoo model needs PyTorch, which is not installed",
                          fix=install_hint("torch", "PyTorch")) from None
    return torch


def build_model(name: str, *, pretrained: bool = False):
    """Builds the ``torch.nn.Module`` of a zoo model, in eval mode.

    Args:
        name: Zoo name.
        pretrained: Load the trained weights from the bundled ONNX checkpoint
            (only entries with a checkpoint have them); otherwise the weights
            are PyTorch's default random initialisation. Defaults to False.

    Raises:
        OptionError: Unknown name, torch missing, or no checkpoint for ``pretrained``.
        ModelLoadError: The checkpoint lacks a weight the model needs.
    """
    entry = get_entry(name)
    torch = _torch()
    module_name, function = entry.builder.split(":")
    model = getattr(importlib.import_module(module_name), function)(**entry.kwargs)
    if pretrained:
        _load_checkpoint_weights(model, entry, torch)
    return model.eval()


def _load_checkpoint_weights(model, entry: ZooEntry, torch) -> None:
    from sparsecc.finetuning import load_onnx_weights

    load_onnx_weights(model, checkpoint_path(entry.name))


def _example_inputs(entry: ZooEntry, batch: int, torch) -> tuple:
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in entry.inputs:
        shape = (batch, *spec.shape[1:])
        if spec.dtype == "int64":
            vocab = entry.kwargs.get("vocab", 30522)
            tensors.append(torch.randint(0, vocab, shape, generator=generator))
        else:
            tensors.append(torch.randn(shape, generator=generator))
    return tuple(tensors)


def export_onnx(name: str, path: str | os.PathLike, *, opset: int = 17, pretrained: bool | None = None,
                dynamic_batch: bool = False) -> Path:
    """Exports a zoo model to an ONNX file, checked against PyTorch in ONNX Runtime.

    Args:
        name: Zoo name.
        path: Output file; written atomically (a temporary file beside it, then renamed).
        opset: ONNX opset of the default domain, 9 to 20. Defaults to 17.
        pretrained: Use the trained weights of the bundled checkpoint (True), or PyTorch's random
            initialisation (False). Defaults to None: the trained weights when the entry has a checkpoint.
        dynamic_batch: Make dimension 0 of every input and the output a
            symbolic ``batch`` instead of 1. Defaults to False.

    Returns:
        The path written.

    Raises:
        OptionError: Unknown name, unsupported opset, torch missing, or no
            checkpoint for ``pretrained``.
        OutputError: The output directory does not exist or cannot be written.
        VerificationError: ONNX Runtime's output differs from PyTorch's.
    """
    _check_opset(opset)
    if pretrained is None:
        pretrained = get_entry(name).checkpoint is not None
    return export_module(build_model(name, pretrained=pretrained), get_entry(name), path,
                         opset=opset, dynamic_batch=dynamic_batch)


def export_module(model, entry: ZooEntry, path: str | os.PathLike, *, opset: int = 17,
                  dynamic_batch: bool = False) -> Path:
    """Exports an already built (e.g. just trained) model with the inputs of ``entry``.

    Same arguments and checks as :func:`export_onnx`; ``model`` is put in eval mode.
    """
    import onnx

    _check_opset(opset)
    torch = _torch()
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError("the output directory does not exist", where=str(path.parent),
                          fix="create it first or choose another -o path")
    model.eval()
    example = _example_inputs(entry, 2 if dynamic_batch else 1, torch)
    names = [spec.name for spec in entry.inputs]
    axes = {n: {0: "batch"} for n in [*names, _OUTPUT_NAME]} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own deprecation notice
        # It warns about folding in PRESERVE mode, which only matters for models in training mode.
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=opset,
                          input_names=names, output_names=[_OUTPUT_NAME], dynamic_axes=axes,
                          training=torch.onnx.TrainingMode.PRESERVE)
        expected = model(*example).numpy()
    proto = onnx.load_from_string(buffer.getvalue())
    clamp_ir_version(proto)  # onnx may stamp a newer IR version than ONNX Runtime reads
    proto.doc_string = f"sparsecc zoo: {entry.name} ({entry.description})"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    _verify_in_onnxruntime(data, entry, {n: t.numpy() for n, t in zip(names, example)}, expected)
    write_bytes_atomic(path, data)
    return path


def _check_opset(opset: int) -> None:
    if opset not in _OPSETS:
        raise OptionError(f"opset {opset} cannot be exported; supported: {_OPSETS.start} to {_OPSETS.stop - 1}",
                          where="opset", fix="use opset 17 (the default)")


def _verify_in_onnxruntime(data: bytes, entry: ZooEntry, feeds: dict, expected: np.ndarray) -> None:
    from sparsecc.backends.ort import OrtBackend

    got = next(iter(OrtBackend().load(data).run(feeds).values()))
    scale = max(float(np.abs(expected).max()), 1e-12)
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if diff > _RTOL_OF_MAX * scale:
        raise VerificationError(f"ONNX Runtime output {got.shape} differs from PyTorch "
                                f"{expected.shape} by {diff:.3g} (allowed {_RTOL_OF_MAX * scale:.3g})",
                                where=entry.name, fix="report this as a sparsecc bug")


def checkpoint_path(name: str) -> Path:
    """Returns the bundled trained ONNX checkpoint of a zoo model (no torch needed).

    Raises:
        OptionError: Unknown name, or the model has no trained checkpoint.
        ModelLoadError: The checkpoint file is missing from the installation.
    """
    entry = get_entry(name)
    if entry.checkpoint is None:
        trained = [e.name for e in ZOO.values() if e.checkpoint]
        raise OptionError(f"zoo model {name!r} has no trained checkpoint", where="model name",
                          fix=f"use one of {', '.join(trained)}")
    return _bundled(entry.checkpoint)


def load_eval_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the validation split a trained zoo model was scored on.

    Returns:
        ``(inputs, labels)``: float32 inputs already preprocessed to the
        model's input shape (N first), and int64 class labels.

    Raises:
        OptionError: Unknown name, or the model has no evaluation data.
        ModelLoadError: The data file is missing from the installation.
    """
    entry = get_entry(name)
    if entry.eval_data is None:
        raise OptionError(f"zoo model {name!r} has no bundled evaluation data", where="model name",
                          fix="use a model that has a trained checkpoint (see `sparsecc zoo list`)")
    with np.load(_bundled(entry.eval_data)) as data:
        return data["x"], data["y"]


def finetuned_checkpoints(name: str) -> list[dict]:
    """The bundled checkpoints pruned and fine-tuned by ``sparsecc finetune`` from zoo model ``name``.

    Returns:
        Their manifest entries (recipe, schedule, epochs, data, top1, dense_top1, n, ...), each
        with ``path`` and ``plan_path`` resolved; empty when there are none. No torch needed.
    """
    import json

    manifest = json.loads(_bundled("manifest.json").read_text())
    found = []
    for key, entry in sorted(manifest.items()):
        if entry.get("finetuned_from") == name:
            found.append({**entry, "name": key, "path": _bundled(entry["file"]),
                          "plan_path": _bundled(entry["plan"]) if entry.get("plan") else None})
    return found


def _bundled(file_name: str) -> Path:
    path = _CHECKPOINT_DIR / file_name
    if not path.is_file():
        raise ModelLoadError("the bundled file is missing", where=str(path),
                             fix="re-create it with `python -m sparsecc.models.train --out models/checkpoints`")
    return path
