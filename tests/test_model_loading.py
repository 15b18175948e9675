"""Loading, checking and saving models: every bad input gets one clear error."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import conv_bn_relu_fc, save

from sparsecc.errors import ModelLoadError, OptionError, ShapeError
from sparsecc.model import load_model, parse_shape_overrides, save_model


def test_load_static_and_dynamic_shapes(tmp_path):
    path = save(conv_bn_relu_fc(batch=2), tmp_path / "m.onnx")
    assert load_model(path).static_input_shapes() == {"x": (2, 4, 6, 6)}
    dynamic = save(conv_bn_relu_fc(), tmp_path / "d.onnx")
    with pytest.raises(ShapeError, match=r"--shape x:1x4x6x6"):
        load_model(dynamic).static_input_shapes()
    assert load_model(dynamic, {"x": (3, 4, 6, 6)}).static_input_shapes() == {"x": (3, 4, 6, 6)}


@pytest.mark.parametrize("shape, message", [
    ({"y": (1, 4, 6, 6)}, "not an input"),
    ({"x": (1, 4, 6)}, "gives 3 dimensions"),
    ({"x": (1, 5, 6, 6)}, "fixes it to 4"),
])
def test_bad_shape_overrides(tmp_path, shape, message):
    path = save(conv_bn_relu_fc(), tmp_path / "m.onnx")
    with pytest.raises(ShapeError, match=message):
        load_model(path, shape)


@pytest.mark.parametrize("spec", ["x", "x:", "x:1xAx3", ":1x2", "x:0x3"])
def test_unreadable_shape_option(spec):
    with pytest.raises(OptionError, match="cannot read the shape"):
        parse_shape_overrides([spec])


def test_not_onnx_and_truncated(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError) as err:
        load_model(text)
    assert str(text) in err.value.format() and "fix:" in err.value.format()

    full = tmp_path / "full.onnx"
    save(conv_bn_relu_fc(batch=1), full)
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 40):
        truncated = tmp_path / f"cut{cut}.onnx"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError):
            load_model(truncated)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="not a file"):
        load_model(tmp_path)


@pytest.mark.parametrize("opset", [6, 30])
def test_unsupported_opset(tmp_path, opset):
    model = conv_bn_relu_fc(batch=1)
    model.opset_import[0].version = opset
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=f"opset {opset} is not supported"):
        load_model(path)


def test_invalid_graph_is_rejected_by_checker(tmp_path):
    model = conv_bn_relu_fc(batch=1)
    model.graph.node[0].input[1] = "no_such_tensor"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="not valid ONNX"):
        load_model(path)


def test_saved_ir_version_loads_in_onnxruntime(tmp_path):
    model = conv_bn_relu_fc(batch=1)
    model.ir_version = 14  # what onnx 1.23 writes by default; ONNX Runtime 1.31 rejects it
    out = save_model(model, tmp_path / "out.onnx")
    assert onnx.load(str(out)).ir_version <= 10
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 4, 6, 6), np.float32)})[0].shape == (1, 10)


def test_loading_never_modifies_the_input(tmp_path):
    path = save(conv_bn_relu_fc(batch=1), tmp_path / "m.onnx")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    model = load_model(path)
    model.graph.nodes.clear()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_failed_write_is_an_output_error_and_leaves_nothing(tmp_path, monkeypatch):
    import os

    from sparsecc.errors import OutputError
    from sparsecc.model import write_bytes_atomic

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        write_bytes_atomic(tmp_path / "out.onnx", b"data")
    assert list(tmp_path.iterdir()) == []
