"""Verification tolerances follow the model's float type."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import init, make_model, randn
from onnx import TensorProto, helper

from sparsecc.model import model_from_proto
from sparsecc.verify import DTYPE_TOLERANCES, VerifyConfig, compare_models, input_specs, model_float_dtype


def _matmul(weight_dtype, io_type=TensorProto.FLOAT):
    """x -> Cast(weight type) -> MatMul(W) -> Cast(back) -> y: FP32 inputs around an FP16 (or FP32) core."""
    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=helper.np_dtype_to_tensor_dtype(np.dtype(weight_dtype))),
             helper.make_node("MatMul", ["xc", "w"], ["m"], name="mm"),
             helper.make_node("Cast", ["m"], ["y"], to=io_type)]
    proto = make_model(nodes, [("x", [2, 8])], [("y", [2, 4])], [init("w", randn(8, 4).astype(weight_dtype))])
    return model_from_proto(proto)


@pytest.mark.parametrize("weight_dtype, expected", [(np.float32, "float32"), (np.float16, "float16")])
def test_model_float_type_is_its_lowest_precision(weight_dtype, expected):
    assert model_float_dtype(_matmul(weight_dtype)) == expected


def test_tolerances_follow_the_type_unless_given():
    assert (VerifyConfig().for_dtype("float16").atol, VerifyConfig().for_dtype("float16").rtol) == \
        DTYPE_TOLERANCES["float16"] == (1e-3, 1e-2)
    assert VerifyConfig().for_dtype("float32").rtol == 1e-4
    given = VerifyConfig(atol=0.5).for_dtype("float16")
    assert (given.atol, given.rtol, given.dtype) == (0.5, 1e-2, "float16")


def test_an_fp16_rounding_difference_passes_at_fp16_tolerance_only():
    reference = _matmul(np.float16)
    candidate = reference.copy()
    weight = candidate.graph.tensors()["w"]
    # one FP16 ulp on every weight: what a different accumulation order costs, not a bug
    weight.values = np.nextafter(weight.values, np.float16(np.inf))
    specs = input_specs(reference)
    fp16 = compare_models(reference, candidate, specs)
    assert fp16.passed and fp16.dtype == "float16" and fp16.rtol == 1e-2
    strict = compare_models(reference, candidate, specs, VerifyConfig(atol=1e-5, rtol=1e-4))
    assert not strict.passed
