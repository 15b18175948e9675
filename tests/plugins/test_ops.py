"""Plugin op signatures, attribute checks and the hidden-parameter check, without triton or tensorrt."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sparsecc.plugins import (DEPTHWISE_SUBGEMM, GROUPWISE_CONV, GROUPWISE_LINEAR, NAMESPACE, SIGNATURES,
                              check_plugin_node, get_reference, plugin_node_attributes, registered_references)
from sparsecc.plugins.ops import PluginAttributeError, as_int, as_ints, conv_geometry
from sparsecc.plugins.ptx import HiddenParameterError, check_hidden_parameters, entry_parameters


def test_import_registers_references_without_triton_or_tensorrt():
    code = ("import sys, sparsecc.plugins as p; "
            "print(sorted(op for _, op in p.registered_references()), 'triton' in sys.modules, "
            "'tensorrt' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["['DepthwiseSubGemm',", "'GroupwiseConv',", "'GroupwiseLinear']", "False", "False", "False"]
    assert {(NAMESPACE, op) for op in SIGNATURES} <= set(registered_references())


def _conv_node(op=GROUPWISE_CONV, **overrides):
    attrs = plugin_node_attributes(op, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    attrs.update(overrides)
    return helper.make_node(op, ["x", "w", "kept", "b"], ["y"], domain=NAMESPACE, **attrs)


def test_emitted_node_matches_signature_and_types():
    node = _conv_node()
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"sparsecc" and attrs["aot"] == 1
    assert set(attrs) == set(SIGNATURES[GROUPWISE_CONV].attributes)
    types = {"x": TensorProto.FLOAT16, "w": TensorProto.FLOAT16, "kept": TensorProto.INT32, "b": TensorProto.FLOAT16,
             "y": TensorProto.FLOAT16}
    assert check_plugin_node(node, types) == []
    linear = helper.make_node(GROUPWISE_LINEAR, ["x", "kept", "w", "b"], ["y"], domain=NAMESPACE,
                              **plugin_node_attributes(GROUPWISE_LINEAR, aot=False))
    assert check_plugin_node(linear) == []


def test_bad_nodes_are_described():
    node = _conv_node()
    node.domain = ""
    del node.attribute[:]
    node.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("alpha", 1.0)])
    problems = check_plugin_node(node, {"kept": TensorProto.INT64, "x": TensorProto.FLOAT, "y": TensorProto.FLOAT16})
    text = "\n".join(problems)
    assert "domain is ''" in text and "plugin_namespace" in text and "'strides' is missing" in text
    assert "unexpected attributes ['alpha']" in text and "must be int32" in text and "mix float16 and float32" in text
    with pytest.raises(PluginAttributeError, match="unexpected \\['group'\\]"):
        plugin_node_attributes(GROUPWISE_CONV, kernel_shape=[1, 1], strides=[1, 1], pads=[0] * 4, dilations=[1, 1],
                               group=1)


def test_numpy2_one_element_arrays_and_int32_lists_are_accepted():
    assert as_int(np.array([3], dtype=np.int32), "n") == 3
    assert as_int(np.int64(5), "n") == 5
    assert as_ints(np.array([1, 2], dtype=np.int32), "s", 2) == (1, 2)
    with pytest.raises(PluginAttributeError, match="must be one integer"):
        as_int(np.array([1, 2]), "n")
    with pytest.raises(PluginAttributeError, match="must be 2 integers"):
        as_ints([1.5, 2.0], "strides", 2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    as_arrays = dict(kernel_shape=np.array([1, 1], np.int32), strides=np.array([1, 1], np.int32),
                     pads=np.zeros(4, np.int32), dilations=np.array([1, 1], np.int32))
    (y,) = get_reference(GROUPWISE_CONV)(x, np.ones((3, 1), np.float32), np.array([1], np.int32),
                                         np.zeros(3, np.float32), **as_arrays)
    assert np.allclose(y, np.broadcast_to(x[:, 1:2], (1, 3, 4, 4)))


@pytest.mark.parametrize("attrs,match", [
    (dict(kernel_shape=[0, 3]), "kernel_shape.*out of range"),
    (dict(strides=[1, -1]), "strides.*out of range"),
    (dict(pads=[0, 0, -1, 0]), "pads.*out of range"),
    (dict(kernel_shape=[9, 9]), "empty output"),
])
def test_attribute_out_of_range(attrs, match):
    base = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1])
    base.update(attrs)
    with pytest.raises(PluginAttributeError, match=match):
        conv_geometry((1, 4, 5, 5), **base)


def test_kept_positions_out_of_range_and_shape_mismatch():
    x = np.zeros((1, 2, 4, 4), np.float32)
    conv = get_reference(GROUPWISE_CONV)
    attrs = dict(kernel_shape=[1, 1], strides=[1, 1], pads=[0] * 4, dilations=[1, 1])
    with pytest.raises(PluginAttributeError, match="outside 0..1"):
        conv(x, np.ones((3, 1), np.float32), np.array([2], np.int32), np.zeros(3, np.float32), **attrs)
    with pytest.raises(PluginAttributeError, match="do not fit"):
        conv(x, np.ones((3, 2), np.float32), np.array([1], np.int32), np.zeros(3, np.float32), **attrs)
    with pytest.raises(PluginAttributeError, match="G = ceil"):
        get_reference(DEPTHWISE_SUBGEMM)(np.zeros((1, 40, 3, 3), np.float32), np.zeros((1, 32, 4), np.float32),
                                         np.zeros((1, 4), np.int32), np.zeros(40, np.float32), **attrs)


# A PTX .entry as Triton 3.9 writes it: 2 declared pointers, 1 scalar, then two hidden scratch pointers.
_PTX = """.version 8.4
.target sm_90a
.address_size 64
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3,
\t.param .u64 .ptr .global .align 1 k_param_4
)
.reqntid 128
{
\tld.param.u64 \t%rd1, [k_param_0];
\tld.param.u32 \t%r1, [k_param_1];
\tld.param.u64 \t%rd2, [k_param_2];
BODY
\tret;
}
"""


def test_hidden_parameters_unused_are_stripped():
    meta = SimpleNamespace(global_scratch_size=0, profile_scratch_size=0)
    ptx, kept, removed = check_hidden_parameters(_PTX.replace("BODY", ""), 3, meta, "3.9.0")
    assert [n for n, _ in removed] == ["k_param_3", "k_param_4"]
    name, params = entry_parameters(ptx)
    assert name == "k" and [n for n, _ in params] == ["k_param_0", "k_param_1", "k_param_2"]
    assert "ld.param.u64 \t%rd2, [k_param_2]" in ptx


def test_hidden_parameters_refused_when_used_or_asked():
    used = _PTX.replace("BODY", "\tld.param.u64 \t%rd3, [k_param_3];")
    meta = SimpleNamespace(global_scratch_size=0, profile_scratch_size=0)
    with pytest.raises(HiddenParameterError, match=r"Triton 3.9.0 kernel k uses hidden parameter\(s\) \['k_param_3'\]"):
        check_hidden_parameters(used, 3, meta, "3.9.0")
    with pytest.raises(HiddenParameterError, match="scratch sizes"):
        check_hidden_parameters(_PTX.replace("BODY", ""), 3,
                                SimpleNamespace(global_scratch_size=128, profile_scratch_size=0), "3.9")
    with pytest.raises(HiddenParameterError, match="appended 2 hidden parameter") as info:
        check_hidden_parameters(_PTX.replace("BODY", ""), 3, meta, "3.9.0", hidden="refuse")
    assert "hidden='strip'" in info.value.format() and "aot=0" in info.value.format()
    with pytest.raises(HiddenParameterError, match="declares 5 parameters but its signature has 6"):
        check_hidden_parameters(_PTX.replace("BODY", ""), 6, meta)


def test_kernel_parameter_order_is_what_the_aot_launch_passes():
    # kernel parameter order: the node's data inputs (pointers), int32 scalars, the output last
    pytest.importorskip("triton", reason="triton is not installed (pip install 'sparsecc[test]')")
    from sparsecc.plugins.triton_kernels import conv_signature, linear_signature

    conv = list(conv_signature("float16"))
    assert conv[:4] == ["X", "Wt", "Idx", "B"] and conv[-1] == "Y"
    assert all(t == "i32" for t in list(conv_signature("float16").values())[4:-1])
    linear = list(linear_signature("float32"))
    assert linear[:4] == ["X", "Idx", "Wt", "B"] and linear[-1] == "Y"


def test_a_triton_without_astsource_constexprs_is_refused(monkeypatch):
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'sparsecc[test]')")
    from sparsecc.plugins.ptx import PluginToolchainError, require_triton

    assert require_triton() == triton.__version__
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    with pytest.raises(PluginToolchainError, match=r"triton 3\.2\.0 is too old .* needs triton >= 3\.3") as info:
        require_triton()
    assert "pip install 'triton>=3.3'" in info.value.format()
