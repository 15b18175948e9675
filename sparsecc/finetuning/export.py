"""A pruned PyTorch model to ONNX and back: exports that name every weight after its parameter.

The TorchScript exporter (``dynamo=False``) names each weight initializer after its parameter
(``layer1.0.conv1.weight``), which is how plans map to parameters (:mod:`sparsecc.finetuning.masks`).
:func:`export_pruned_onnx` checks that the masks held before it exports; :func:`load_onnx_weights`
reads a zoo architecture's weights back from such an export.
"""

from __future__ import annotations

from pathlib import Path

from sparsecc.errors import OptionError, PlanError, install_hint

try:
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    raise OptionError("sparsecc.finetuning needs PyTorch, which is not installed",
                      fix=install_hint("torch", "PyTorch")) from None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def unwrapped(module):
    return getattr(module, "module", module)


def example_input(module, example):
    if example is not None:
        return example
    raise OptionError("an example input is needed to export the model", where="sparsecc.finetuning",
                      fix="pass example=torch.zeros(1, C, H, W) (batch 1, the model's input shape)")


def export_bytes(module, example, dynamo: bool = False, opset: int = 17, dynamic_batch: bool = False) -> bytes:
    import io
    import warnings

    module = unwrapped(module)
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if dynamo:
                program = torch.onnx.export(module, (example,), dynamo=True, opset_version=max(opset, 18),
                                            input_names=["input"], output_names=["logits"], verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch
                                            else None)
                return program.model_proto.SerializeToString()
            buffer = io.BytesIO()
            axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            # The TorchScript exporter merges initializers of equal value (fresh BatchNorm scales
            # and variances) into Identity nodes unless the top module says it is training, and
            # then only merges shared storage. Only the top flag is set: every submodule stays
            # in eval mode, so BatchNorm is exported for inference (PRESERVE keeps it apart from
            # Conv), and every weight initializer keeps its parameter's name.
            module.training = True
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], dynamic_axes=axes,
                              training=torch.onnx.TrainingMode.PRESERVE)
            return buffer.getvalue()
    finally:
        module.train(was_training)


def check_masks(module, masks: dict[str, "torch.Tensor"]) -> None:
    """Raises PlanError when a masked weight is no longer zero (e.g. a training loop without
    :class:`MaskKeeper`, or an optimizer step after it was removed), listing every such weight."""
    params = dict(unwrapped(module).named_parameters())
    bad = []
    for name, mask in masks.items():
        values = params[name].detach()[~mask]
        if values.numel() and bool((values != 0).any()):
            bad.append(f"{name}: {int((values != 0).sum())} of {values.numel()} pruned weights non-zero "
                       f"(max |w| {float(values.abs().max()):.3g})")
    if bad:
        raise PlanError("masked weights became non-zero after pruning: " + "; ".join(bad),
                        where="before export",
                        fix="keep the masks during fine-tuning (sparsecc.finetuning.MaskKeeper after the optimizer "
                            "is built), or re-apply them with MaskKeeper.apply() before exporting")


def export_pruned_onnx(module, path, example=None, *, masks: dict | None = None, dynamo: bool = False,
                opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Exports a pruned (fine-tuned) model to ONNX after checking that its masks held.

    Args:
        module: The model.
        path: Output .onnx, written atomically.
        example: One input batch.
        masks: Masks to check first (:func:`check_masks`). Defaults to none.
        dynamo: Use the torch.export-based exporter (opset >= 18) instead of TorchScript.
            Defaults to False.
        opset: ONNX opset. Defaults to 17.
        dynamic_batch: Make dimension 0 a symbolic ``batch``. Defaults to True.

    Raises:
        PlanError: A masked weight is not zero.
    """
    import onnx

    from sparsecc.model import clamp_ir_version, write_bytes_atomic

    if masks:
        check_masks(module, masks)
    data = export_bytes(module, example_input(module, example), dynamo=dynamo, opset=opset,
                         dynamic_batch=dynamic_batch)
    proto = onnx.load_from_string(data)
    clamp_ir_version(proto)
    path = Path(path)
    write_bytes_atomic(path, proto.SerializeToString())
    return path


def load_onnx_weights(module, path) -> int:
    """Loads a model's parameters and buffers from the initializers of an ONNX file, by name.

    The file must be an export of the same architecture that names initializers after the
    state-dict keys (the zoo checkpoints, this module's exporter, the TorchScript exporter in
    PRESERVE mode). Returns the number of tensors loaded.

    Raises:
        ModelLoadError: A tensor of the model is missing from the file or has another shape.
    """
    import onnx
    from onnx import numpy_helper

    from sparsecc.errors import ModelLoadError

    from sparsecc.model import check_model_file

    graph = onnx.load(str(check_model_file(path))).graph
    weights = {t.name: t for t in graph.initializer}
    # the TorchScript exporter may give equal weights one initializer, reached through Identity nodes
    weights.update({n.output[0]: weights[n.input[0]] for n in graph.node
                    if n.op_type == "Identity" and n.input[0] in weights})
    state = unwrapped(module).state_dict()
    wanted = [key for key in state if not key.endswith("num_batches_tracked")]
    missing = [key for key in wanted if key not in weights]
    if missing:
        raise ModelLoadError(f"the ONNX file lacks {len(missing)} tensor(s) of the model, e.g. {missing[:3]}",
                             where=str(path), fix="give an export of this architecture (--arch) whose "
                                                  "initializers are named after its parameters")
    loaded = {}
    for key in wanted:
        value = torch.from_numpy(numpy_helper.to_array(weights[key]).copy())
        if tuple(value.shape) != tuple(state[key].shape):
            raise ModelLoadError(f"tensor '{key}' has shape {list(value.shape)} in the file but "
                                 f"{list(state[key].shape)} in the model", where=str(path),
                                 fix="give an export of this architecture and width (--arch)")
        loaded[key] = value
    unwrapped(module).load_state_dict(loaded, strict=False)
    return len(loaded)
