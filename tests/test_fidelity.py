"""Output fidelity (dense vs compiled) on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import init, make_model, randn, save
from onnx import helper

from sparsecc.backends.ort import OrtBackend
from sparsecc.data import load_photographs
from sparsecc.evaluate import output_fidelity


def _classifier(tmp_path, name, weight):
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"])]
    return save(make_model(nodes, [("x", [1, 3, 32, 32])], [("y", [1, 5])], [init("W", weight)]),
                tmp_path / f"{name}.onnx")


def test_fidelity_counts_agreement_and_error_on_photographs(tmp_path):
    _, photos = load_photographs((32, 32), names=("astronaut", "chelsea", "coffee", "rocket", "china", "flower"))
    photos = (photos - 0.5) / 0.25
    weight = randn(3, 5)
    backend = OrtBackend(threads=1)
    same = _classifier(tmp_path, "a", weight)
    result = output_fidelity(backend.load(same), backend.load(same), photos)
    assert result["n"] == 6 and result["top1_agreement"] == 1.0 and result["max_abs_error"] == 0.0
    changed = weight.copy()
    changed[:, 0] += 10.0  # class 0 wins wherever the mean colour is positive enough
    other = backend.load(_classifier(tmp_path, "b", changed))
    result = output_fidelity(backend.load(same), other, photos)
    logits = photos.mean(axis=(2, 3)) @ weight
    expected = float(np.mean(np.argmax(logits, 1) == np.argmax(photos.mean(axis=(2, 3)) @ changed, 1)))
    assert result["top1_agreement"] == pytest.approx(expected) and result["max_abs_error"] > 1.0


@pytest.mark.realmodels
def test_compiled_real_model_agrees_with_dense_on_photographs(real_models, tmp_path):
    from sparsecc.compiler import compile_model

    path = next((p for p in real_models if "_cls_" in p.name), None)
    if path is None:
        pytest.skip("the OCR direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx) is not among the real models")
    shape = (1, 3, 48, 192)
    _, photos = load_photographs(shape[2:])
    backend = OrtBackend(threads=1)
    original = backend.load(path)
    canonical = compile_model(path, "none", tmp_path / "none", shapes={"x": shape})
    result = output_fidelity(original, backend.load(canonical.model_path), (photos - 0.5) / 0.5)
    assert result["n"] == len(photos) >= 10
    assert result["top1_agreement"] == 1.0 and result["max_rel_error"] < 1e-4


def test_fidelity_of_a_probability_map_reports_the_iou_of_its_positive_pixels(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c"), helper.make_node("Sigmoid", ["c"], ["y"])]

    def detector(name, weight):
        return save(make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 1, 16, 16])], [init("W", weight)]),
                    tmp_path / f"{name}.onnx")

    _, photos = load_photographs((16, 16), names=("astronaut", "coffee"))
    weight = np.full((1, 3, 1, 1), 4.0, np.float32)
    backend = OrtBackend(threads=1)
    dense = backend.load(detector("dense", weight))
    off = backend.load(detector("off", weight * 0.0))  # sigmoid(0) = 0.5: never above 0.5
    result = output_fidelity(dense, off, (photos - 0.5) / 0.25)
    positives = float(np.mean(4.0 * ((photos - 0.5) / 0.25).sum(axis=1) > 0))
    assert result["top1_agreement"] == pytest.approx(1 - positives) and result["positive_iou"] == 0.0
    assert output_fidelity(dense, dense, photos)["positive_iou"] == 1.0
