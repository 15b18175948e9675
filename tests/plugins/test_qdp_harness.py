"""sparsecc's QDP plugins through TensorRT's own plugin layer, driven as TensorRT's ONNX parser and builder drive them.

TensorRT's plugin layer (``tensorrt_bindings/plugin`` from the ``tensorrt-cu12-bindings`` wheel) runs for real;
only its compiled module is replaced, by sparsecc's stub. Each plugin node is created from its ONNX attributes
(INTS as int32, strict AOT), its output shape expressions are evaluated for static and dynamic batch, its
format combinations and AOT launch (kernel name, PTX, grid, block, shared memory, int32 arguments) are read
back, and the PTX's kernel variant runs under Triton's interpreter with exactly those arguments.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import helper

from sparsecc.plugins import DEPTHWISE_SUBGEMM, GROUPWISE_CONV, GROUPWISE_LINEAR, NAMESPACE, get_reference
from sparsecc.plugins.ops import PluginRegistrationError, conv_geometry, plugin_node_attributes
from sparsecc.plugins.trt_offline import (build_plugin, create_plugin, offline_tensorrt, plugin_layer_missing_reason,
                                          run_interpreted)

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'sparsecc[test]')")
LAYER_REASON = plugin_layer_missing_reason()
pytestmark = pytest.mark.skipif(LAYER_REASON is not None, reason=str(LAYER_REASON))

ARCH = 90
TOL = {np.float32: 2e-5, np.float16: 2e-2}
INPUTS = {GROUPWISE_CONV: 4, DEPTHWISE_SUBGEMM: 4, GROUPWISE_LINEAR: 4}


@pytest.fixture(scope="module")
def offline():
    with offline_tensorrt() as off:
        off.qdp.register_plugins(arch=ARCH)
        yield off


def _close(actual, expected, dtype):
    scale = max(1.0, float(np.max(np.abs(expected.astype(np.float64)))))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    assert err <= TOL[dtype] * scale, f"max error {err} > {TOL[dtype]} x {scale}"


def _node(op, aot=1, **conv):
    attrs = plugin_node_attributes(op, aot=bool(aot), **conv)
    return helper.make_node(op, ["x", "w", "kept", "b"] if op != GROUPWISE_LINEAR else ["x", "kept", "w", "b"],
                            ["y"], domain=NAMESPACE, **attrs)


def _trt_type(trt, dtype):
    return trt.float16 if dtype == np.float16 else trt.float32


def _conv_case(op, n, c, h, w, cout, k, s, p, d, kept_n, dtype, seed=0):
    """(attributes, inputs in plugin order, reference output) of a group-wise or DW sub-GEMM conv."""
    rng = np.random.default_rng(seed)
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(p), dilations=list(d))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if op == GROUPWISE_CONV:
        rows = c * k[0] * k[1]
        kept = np.sort(rng.choice(rows, kept_n, replace=False)).astype(np.int32)
        weight = rng.standard_normal((cout, kept_n)).astype(dtype)
        bias = rng.standard_normal(cout).astype(dtype)
    else:
        groups, taps = -(-c // 32), k[0] * k[1]
        kept = np.stack([np.sort(rng.choice(32 * taps, kept_n, replace=False)) for _ in range(groups)]).astype(np.int32)
        weight = np.zeros((groups, 32, kept_n), dtype)
        for g in range(groups):
            for j, col in enumerate(kept[g]):
                weight[g, col // taps, j] = rng.standard_normal()  # each column on its own channel's row
        bias = rng.standard_normal(c).astype(dtype)
    (ref,) = get_reference(op)(x, weight, kept, bias, **attrs)
    return attrs, [x, weight, kept, bias], ref


CONV_CASES = [
    # op, (N, C, H, W), Cout, kernel, strides, pads (t, l, b, r), dilations, kept, dtype, dynamic batch
    (GROUPWISE_CONV, (2, 5, 9, 7), 6, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 22, np.float32, True),
    (GROUPWISE_CONV, (1, 3, 6, 5), 17, (2, 3), (1, 2), (0, 1, 0, 1), (1, 1), 13, np.float16, False),
    (GROUPWISE_CONV, (3, 8, 5, 5), 70, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 32, np.float16, True),  # K % 16 == 0
    (GROUPWISE_CONV, (1, 4, 5, 5), 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3, np.float32, False),
    (DEPTHWISE_SUBGEMM, (1, 40, 7, 6), 40, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 100, np.float32, True),
    (DEPTHWISE_SUBGEMM, (2, 32, 5, 5), 32, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 37, np.float16, False),
]


def _check_ptx_matches_launch(launch, n_inputs: int):
    from sparsecc.plugins.ptx import entry_parameters

    name, params = entry_parameters(launch.ptx)
    assert name == launch.kernel_name and name.startswith("sparsecc_")
    decls = [d for _, d in params]
    # exactly what TensorRT's AOT launch passes: the input pointers, the int32 extra arguments, the output pointer
    assert len(decls) == n_inputs + len(launch.scalars) + 1
    assert all(".u64" in d for d in decls[:n_inputs] + decls[-1:])
    assert all(d == ".u32" for d in decls[n_inputs:-1])
    assert all(-2 ** 31 <= v < 2 ** 31 for v in launch.scalars)
    assert f".target sm_{ARCH}" in launch.ptx
    assert launch.block == (128, 1, 1) and launch.shared_mem >= 0


@pytest.mark.parametrize("op,shape,cout,k,s,p,d,kept_n,dtype,dynamic", CONV_CASES)
def test_conv_plugins_as_the_parser_and_builder_drive_them(offline, op, shape, cout, k, s, p, d, kept_n, dtype,
                                                           dynamic):
    from sparsecc.plugins.ptx import kernel_variant
    from sparsecc.plugins.triton_kernels import CONV_SCALARS

    trt = offline.trt
    attrs, inputs, ref = _conv_case(op, *shape, cout, k, s, p, d, kept_n, dtype)
    plugin, request, fields, unread = create_plugin(offline, _node(op, **attrs))
    assert request == "STRICT_AOT" and unread == ["aot", "plugin_namespace"]
    assert [name for name, _ in fields] == ["kernel_shape", "strides", "pads", "dilations"]  # the creator's order
    assert all(data.dtype == np.int32 for _, data in fields)
    n = shape[0]
    x_shape = ("N", *shape[1:]) if dynamic else shape
    types = [_trt_type(trt, dtype), _trt_type(trt, dtype), trt.int32, _trt_type(trt, dtype)]
    build = build_plugin(offline, plugin, types, [x_shape] + [a.shape for a in inputs[1:]], {"N": (1, n, 8)})
    assert build.output_types == [types[0]]
    (out,) = build.output_shapes
    assert all(e.is_constant() for e in out[1:]) and out[0].is_constant() == (not dynamic)
    for batch in (1, n, 8) if dynamic else (n,):  # the shape expressions hold over the whole profile
        assert tuple(e.evaluate({"N": batch}) for e in out) == (batch, *ref.shape[1:])
    fp32, fp16 = (tuple(t if t == trt.int32 else dt for t in types) + (dt,) for dt in (trt.float32, trt.float16))
    assert {c[0] for c in build.combinations} == {fp32, fp16}
    assert all(f == (trt.TensorFormat.LINEAR,) * 5 for _, f in build.combinations)
    assert build.chosen[0] == tuple(types) + (types[0],) and build.tactics == [0]

    launch = build.launch({"N": n})
    _check_ptx_matches_launch(launch, 4)
    scalars = dict(zip(CONV_SCALARS, launch.scalars))
    g = conv_geometry(inputs[0].shape, **attrs)
    groups = 1 if op == GROUPWISE_CONV else -(-shape[1] // 32)
    assert (scalars["N"], scalars["OH"], scalars["OW"], scalars["K"]) == (n, g.oh, g.ow, inputs[1].shape[-1])
    variant = kernel_variant(launch.kernel_name)
    blocks = dict(variant.constexprs)
    assert launch.grid == (-(-scalars["COUT_G"] // blocks["BLOCK_M"]), -(-n * g.oh * g.ow // blocks["BLOCK_P"]), groups)
    assert variant.divisible == (("K",) if scalars["K"] % 16 == 0 else ())  # a hint only where it holds
    assert all(scalars[name] % 16 == 0 for name in variant.divisible)
    _close(run_interpreted(launch, inputs, dtype), ref, dtype)


@pytest.mark.parametrize("lead,kin,nout,kept_n,dtype", [((3,), 37, 19, 18, np.float32),
                                                        ((2, 5), 24, 32, 16, np.float16)])
def test_linear_plugin_as_the_parser_and_builder_drive_it(offline, lead, kin, nout, kept_n, dtype):
    from sparsecc.plugins.ptx import kernel_variant
    from sparsecc.plugins.triton_kernels import LINEAR_SCALARS

    trt = offline.trt
    rng = np.random.default_rng(3)
    x = rng.standard_normal((*lead, kin)).astype(dtype)
    kept = np.sort(rng.choice(kin, kept_n, replace=False)).astype(np.int32)
    wk = rng.standard_normal((kept_n, nout)).astype(dtype)
    bias = rng.standard_normal(nout).astype(dtype)
    (ref,) = get_reference(GROUPWISE_LINEAR)(x, kept, wk, bias)
    plugin, request, fields, _ = create_plugin(offline, _node(GROUPWISE_LINEAR))
    assert request == "STRICT_AOT" and fields == []
    dt = _trt_type(trt, dtype)
    shapes = [("N", *lead[1:], kin), kept.shape, wk.shape, bias.shape]
    build = build_plugin(offline, plugin, [dt, trt.int32, dt, dt], shapes, {"N": (1, lead[0], 16)})
    assert [tuple(e.evaluate({"N": lead[0]}) for e in build.output_shapes[0])] == [ref.shape]
    launch = build.launch({"N": lead[0]})
    _check_ptx_matches_launch(launch, 4)
    scalars = dict(zip(LINEAR_SCALARS, launch.scalars))
    assert scalars == {"M": int(np.prod(lead)), "KIN": kin, "K": kept_n, "NOUT": nout}
    variant = kernel_variant(launch.kernel_name)
    assert variant.divisible == tuple(n for n in ("K", "NOUT") if scalars[n] % 16 == 0)
    y = run_interpreted(launch, [x.reshape(-1, kin), kept, wk, bias], dtype)
    _close(y.reshape(ref.shape), ref, dtype)


def test_jit_request_and_the_registrations(offline):
    import sys

    from sparsecc.plugins.ops import PLUGIN_OPS, SIGNATURES, op_attributes

    trt = offline.trt
    creators = {c.name: [f.name for f in c.field_names] for c in trt.get_plugin_registry().all_creators}
    assert creators == {op: op_attributes(op) for op in PLUGIN_OPS}  # the ONNX attributes, in signature order
    registry = sys.modules["tensorrt.plugin._lib"].QDP_REGISTRY  # what the plugin layer parsed from qdp.py
    for op in PLUGIN_OPS:
        definition = registry[f"{NAMESPACE}::{op}"]
        assert len(definition.input_tensor_names) == len(SIGNATURES[op].inputs) and definition.num_outputs == 1
        assert list(definition.input_attrs) == op_attributes(op)
        assert definition.impl_func and definition.aot_impl_func and definition.autotune_func
    settings = offline.qdp.registered()
    assert settings["arch"] == ARCH and settings["tensorrt"] == trt.__version__ and settings["tf32"] is False
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    plugin, request, _, _ = create_plugin(offline, _node(GROUPWISE_CONV, aot=0, **attrs))
    assert request == "STRICT_JIT" and not hasattr(plugin, "get_launch_params")
    build = build_plugin(offline, plugin, [trt.float16, trt.float16, trt.int32, trt.float16],
                         [("N", 2, 6, 6), (4, 8), (8,), (4,)])
    assert not build.aot and [e.evaluate({"N": 5}) for e in build.output_shapes[0]] == [5, 4, 6, 6]
    with pytest.raises(ValueError, match="JIT plugin"):
        build.launch({"N": 1})
    # a node built without onnx (what tools/gpu_check.py uses) gives the parser the same fields
    from sparsecc.plugins.trt_offline import plugin_node

    fields = [create_plugin(offline, node)[2] for node in (_node(GROUPWISE_CONV, **attrs),
                                                             plugin_node(GROUPWISE_CONV, **attrs))]
    assert [[(n, d.tolist(), d.dtype) for n, d in f] for f in fields][0] == \
        [[(n, d.tolist(), d.dtype) for n, d in f] for f in fields][1]


def test_every_kernel_variant_has_its_own_entry_name():
    from sparsecc.plugins.ptx import entry_parameters, plugin_kernel_ptx

    variants = [(GROUPWISE_CONV, "float16", {}), (GROUPWISE_CONV, "float32", {}), (GROUPWISE_CONV, "float16",
                {"cout_g": 16}), (GROUPWISE_CONV, "float16", {"divisible": ("K",)}), (DEPTHWISE_SUBGEMM, "float16", {}),
                (GROUPWISE_LINEAR, "float16", {}), (GROUPWISE_LINEAR, "float32", {"tf32": True})]
    names = []
    for op, dtype, options in variants:
        kernel = plugin_kernel_ptx(op, dtype, ARCH, **options)
        assert entry_parameters(kernel.ptx)[0] == kernel.name
        assert "_kept_k_" not in kernel.ptx  # the Triton function's name is gone from the PTX
        names.append(kernel.name)
    assert len(set(names)) == len(names), names


def test_fp32_kernels_use_tf32_tensor_cores_when_the_build_allows_it():
    from sparsecc.validate import ENGINE_TOLERANCES

    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    kept = np.arange(0, 64, 2, dtype=np.int32)
    wk = rng.standard_normal((32, 48)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    (ref,) = get_reference(GROUPWISE_LINEAR)(x, kept, wk, bias)
    with offline_tensorrt() as off:
        assert off.qdp.register_plugins(arch=ARCH, tf32=True)["tf32"] is True
        trt = off.trt
        plugin, _, _, _ = create_plugin(off, _node(GROUPWISE_LINEAR))
        build = build_plugin(off, plugin, [trt.float32, trt.int32, trt.float32, trt.float32],
                             [x.shape, kept.shape, wk.shape, bias.shape])
        launch = build.launch()
    assert launch.kernel_name.endswith("_tf32_d16knout")
    assert re.search(r"mma\S*\.tf32\.tf32", launch.ptx)  # TF32 tensor-core instructions (wgmma on sm_90)
    from sparsecc.plugins.ptx import plugin_kernel_ptx

    assert not re.search(r"mma\S*\.tf32", plugin_kernel_ptx(GROUPWISE_LINEAR, "float32", ARCH).ptx)  # IEEE: FMAs
    y = run_interpreted(launch, [x, kept, wk, bias], np.float32)  # the interpreter's dot is exact: same function
    _close(y, ref, np.float32)
    # what TF32 does on the GPU: both operands rounded to 10 mantissa bits, products summed in FP32
    atol, rtol = ENGINE_TOLERANCES["tf32"]
    rounded = [_round_tf32(a) for a in (x[:, kept], wk)]
    tf32 = rounded[0].astype(np.float64) @ rounded[1].astype(np.float64) + bias
    assert np.abs(tf32 - ref).max() <= atol + rtol * np.abs(ref).max()
    assert np.abs(tf32 - ref).max() > ENGINE_TOLERANCES["fp32"][0]  # FP32's tolerance would fail a TF32 engine


def _round_tf32(a: np.ndarray) -> np.ndarray:
    bits = a.astype(np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)  # round to nearest at 10 mantissa bits
    return bits.view(np.float32)


def test_a_registration_failure_is_reported_and_never_marked_done():
    with offline_tensorrt(version="10.8.0") as off:
        with pytest.raises(PluginRegistrationError, match=r"TensorRT 10\.8\.0 cannot host .* need TensorRT >= 10\.9"):
            off.qdp.register_plugins(arch=ARCH)
        with pytest.raises(PluginRegistrationError, match="failed earlier in this process"):
            off.qdp.register_plugins(arch=ARCH)
        assert off.qdp.registered() is None and off.trt.get_plugin_registry().all_creators == []
    with offline_tensorrt() as off:
        def refuse(plugin_id, lazy_register=False):
            raise ValueError(f"the plugin layer refused {plugin_id}")

        off.trtp.register = refuse
        with pytest.raises(PluginRegistrationError, match="refused sparsecc::GroupwiseConv"):
            off.qdp.register_plugins(arch=ARCH)
        with pytest.raises(PluginRegistrationError, match="failed earlier"):
            off.qdp.register_plugins(arch=ARCH)


def test_shape_expressions_use_no_negative_constant(offline):
    import itertools
    import sys

    trt = offline.trt
    builder = trt.IExprBuilder()
    with pytest.raises(trt.NegativeConstantError):
        builder.constant(-3)  # the stub refuses them, so every build above proves there were none
    sym = sys.modules["tensorrt.plugin._tensor"].SymIntExpr
    sym._exprBuilder = builder  # what the plugin layer sets while TensorRT asks for output shapes
    try:
        for before, after, kernel, stride, dilation in itertools.product((0, 1, 3), (0, 2), (1, 3, 5), (1, 2), (1, 2)):
            size = offline.trtp.ShapeExpr(builder.symbol("H"))
            expr = offline.qdp.conv_output_size(size, before, after, kernel, stride, dilation)
            for h in range(dilation * (kernel - 1) + 1, 12):
                want = (h + before + after - dilation * (kernel - 1) - 1) // stride + 1
                assert expr._expr.evaluate({"H": h}) == want
    finally:
        sym._exprBuilder = None
    assert builder.constants and min(builder.constants) >= 0


class _Net(torch.nn.Module if torch else object):
    """conv 3x3 (two input channels' taps zeroed) -> relu -> depthwise 3x3 / 2 (60 % of taps zeroed) -> relu -> fc."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)
        with torch.no_grad():
            self.conv.weight[:, 1] = 0
            self.conv.weight[:, 2, 0] = 0
            self.dw.weight[torch.rand(self.dw.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.6] = 0
            self.fc.weight[:, ::3] = 0

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.dw(torch.relu(self.conv(x)))), 1))


def _plugin_op_runs(offline, launches: list):
    """onnx.reference ops that run each sparsecc node as TensorRT would: parser, builder, AOT launch, kernel."""
    from onnx.reference.op_run import OpRun

    class _Plugin(OpRun):
        op_domain = NAMESPACE

        def _run(self, *inputs, **_):
            trt = offline.trt
            plugin, request, _, _ = create_plugin(offline, self.onnx_node)
            assert request == "STRICT_AOT"
            types = [trt.int32 if a.dtype == np.int32 else _trt_type(trt, a.dtype.type) for a in inputs]
            shapes = [("N", *inputs[0].shape[1:])] + [a.shape for a in inputs[1:]]  # a dynamic batch
            launch = build_plugin(offline, plugin, types, shapes, {"N": (1, inputs[0].shape[0], 64)}).launch(
                {"N": inputs[0].shape[0]})
            launches.append(launch)
            x = inputs[0].reshape(-1, inputs[0].shape[-1]) if self.onnx_node.op_type == GROUPWISE_LINEAR else inputs[0]
            return (run_interpreted(launch, [x, *inputs[1:]], inputs[0].dtype.type).reshape(launch.output_shapes[0]),)

    return [type(op, (_Plugin,), {}) for op in (GROUPWISE_CONV, GROUPWISE_LINEAR, DEPTHWISE_SUBGEMM)]


@pytest.mark.parametrize("half", [False, True])
def test_a_lowered_torch_model_runs_as_tensorrt_would_run_it(offline, tmp_path, half):
    import onnx
    from onnx.reference import ReferenceEvaluator

    from sparsecc.backends.ort import OrtBackend
    from sparsecc.compiler import compile_model
    from sparsecc.validate import ENGINE_TOLERANCES

    torch.manual_seed(0)
    torch.onnx.export(_Net().eval(), (torch.randn(2, 4, 8, 8),), str(tmp_path / "net.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"])
    recipe = tmp_path / "plugins.yaml"
    recipe.write_text("name: plugins\ndescription: every plugin\npasses:\n"
                      "  - lower-tensorrt: {force: true, fold: false}\n" + ("  - to-fp16\n" if half else ""))
    result = compile_model(tmp_path / "net.onnx", str(recipe), tmp_path / "out")
    lowered = onnx.load(str(result.model_path))
    assert sorted(n.op_type for n in lowered.graph.node if n.domain == NAMESPACE) == sorted(
        [GROUPWISE_CONV, DEPTHWISE_SUBGEMM, GROUPWISE_LINEAR])
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    launches = []
    evaluator = ReferenceEvaluator(lowered, new_ops=_plugin_op_runs(offline, launches))
    feed = x.astype(onnx.helper.tensor_dtype_to_np_dtype(lowered.graph.input[0].type.tensor_type.elem_type))
    (got,) = evaluator.run(None, {"x": feed})
    want = OrtBackend().load(str(tmp_path / "net.onnx")).run({"x": x})["y"]
    assert len(launches) == 3 and all(f"_{'f16' if half else 'f32'}_" in launch.kernel_name for launch in launches)
    atol, rtol = ENGINE_TOLERANCES["fp16" if half else "fp32"]
    assert np.abs(got.astype(np.float64) - want).max() <= atol + rtol * np.abs(want).max()
