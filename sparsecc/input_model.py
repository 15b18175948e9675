"""The input model of a compile: loaded with the feeds given for it, run once on ONNX Runtime before
any pass (a model it cannot run is the user's to fix), its weights checked for NaN and infinity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsecc.errors import InputError, ModelLoadError
from sparsecc.feeds import FeedOptions
from sparsecc.model import Model, load_model
from sparsecc.session_files import SessionFiles
from sparsecc.verify import VerifyConfig, input_specs


def load_with_feeds(model_path: Path, shapes, inputs: FeedOptions | None) -> Model:
    """The input model with the feeds given for it; data given fixes the compile shape of a dynamic input."""
    from sparsecc.feeds import check_feed_options
    from sparsecc.model import resolve_input_shapes

    model = load_model(model_path, shapes)
    if inputs is not None:
        declared = {t.name: (t.shape, np.dtype(t.dtype)) for t in model.graph.inputs}
        check_feed_options(inputs, declared, model.source)
        merged = {**{name: tuple(a.shape) for name, a in inputs.data.items()}, **(shapes or {})}
        model.input_shapes = resolve_input_shapes(model.graph, merged, model.source)
        model.feeds = inputs
    return model


def check_runs_on_onnxruntime(original: Model, config: VerifyConfig, files: SessionFiles) -> None:
    """The input model runs on ONNX Runtime at the compile shapes, or a user error names the node.

    Every check runs the graphs on ONNX Runtime, so a model it cannot load or run (a custom-domain op,
    a kernel larger than its input, mixed float types) is refused here, as the user's, before any pass;
    a failure after this is sparsecc's. Its outputs are kept for the first check that needs them.
    """
    from sparsecc.backends.ort import OnnxRuntimeFailure
    from sparsecc.verify import run_model

    specs = input_specs(original)
    for name, _, dtype in specs:
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            kind = "strings" if dtype.kind in "OSU" else str(dtype)
            raise ModelLoadError(f"input '{name}' holds {kind}; sparsecc checks every rewrite on random numbers "
                                 "and booleans, so it compiles models with numeric inputs only",
                                 where=original.source, fix="compile the numeric part of the model")
    try:
        run_model(original, specs, config, files)
    except OnnxRuntimeFailure as failure:
        raise _feeds_error(original, specs, failure) or failure.user_error(original.source, original.graph) from None


def _feeds_error(original: Model, specs, failure) -> InputError | None:
    """When the input model fails to *run* and has integer or bool inputs (or was given feeds), the inputs
    are the likely cause: an error that says what each input was fed and how to give real values."""
    from sparsecc.feeds import describe_feeds

    integers = [name for name, _, dtype in specs if not np.issubdtype(dtype, np.floating)]
    if failure.stage != "run" or not (integers or specs.options is not None):
        return None
    names = integers or [name for name, _, _ in specs]
    at = f" at node '{failure.node}'" if failure.node else ""
    return InputError(
        f"the input model itself fails in ONNX Runtime{at} on the inputs sparsecc generated "
        f"({describe_feeds(specs, specs.options)}): {failure.detail}", where=original.source,
        fix=f"give real values for {', '.join(repr(n) for n in names)}: --input NAME:FILE.npy (or .npz), or "
            f"--input-range NAME:LOW:HIGH (e.g. --input-range {names[0]}:16000:16000 for a sample rate)")


def non_finite_warnings(model: Model) -> list[str]:
    """A warning naming the weights that hold NaN or infinite values (checks compare them as they are)."""
    import onnx_graphsurgeon as gs

    found = []
    for tensor in model.graph.tensors().values():
        if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, gs.ir.tensor.LazyValues):
            values = tensor.values
            # a float64 sum is finite exactly when every float16/32 value is (and needs no copy of the array)
            if np.issubdtype(values.dtype, np.floating) and values.size and \
                    not np.isfinite(np.sum(values, dtype=np.float64)):
                found.append(tensor.name)
    if not found:
        return []
    return [f"the input model's weights hold NaN or infinite values ({', '.join(found[:5])}"
            f"{f' and {len(found) - 5} more' if len(found) > 5 else ''}): outputs may be NaN or infinite; the "
            "checks count the same NaN or infinity in both graphs as agreement, any other as a mismatch"]
