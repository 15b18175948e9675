"""Graphs users bring: both PyTorch exporters, FP16, quantized graphs, and detect mode.

The model is written here, independently of ``models/``, with the features that matter
(BatchNorm, a residual Add, a Concat, a depthwise conv, squeeze-excitation, a Linear head), and
exported the ordinary ways: ``torch.onnx.export(dynamo=False)`` at opset 17 (BatchNorm folded into
Conv, equal constants de-duplicated behind Identity nodes) and ``dynamo=True`` (opset 18+, weights
in an external ``.data`` file); FP16 versions come from onnxconverter-common.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsecc.compiler import compile_model
from sparsecc.errors import PlanError
from sparsecc.recipe import parse_recipe

torch = pytest.importorskip("torch")
nn = torch.nn

SHAPE = (1, 3, 16, 16)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


def conv_bn(c_in: int, c_out: int, k: int = 3, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class SmallNet(nn.Module):
    """Stem, a residual block, a two-branch Concat, depthwise + SE, a pointwise conv, a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.block = nn.Sequential(conv_bn(16, 16), conv_bn(16, 16, relu=False))
        self.left, self.right = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.depthwise = conv_bn(32, 32, groups=32)
        self.se = SqueezeExcite(32)
        self.pointwise = conv_bn(32, 24, k=1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1)
        x = self.pointwise(self.se(self.depthwise(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def export(module, path, dynamo: bool):
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (torch.randn(*SHAPE),), str(path), dynamo=True, external_data=True,
                              input_names=["x"], output_names=["y"], verbose=False)
        else:
            torch.onnx.export(module, (torch.randn(*SHAPE),), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"])
    return path


def to_fp16(path, out):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    onnx.save(float16.convert_float_to_float16(onnx.load(str(path))), str(out))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(exporter, dtype): path} of one SmallNet (fresh BatchNorms: every folded bias is zero)."""
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    module = SmallNet().eval()
    paths = {}
    for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
        fp32 = export(module, folder / f"{exporter}.onnx", dynamo)
        paths[(exporter, "fp32")] = fp32
        paths[(exporter, "fp16")] = to_fp16(fp32, folder / f"{exporter}16.onnx")
    return paths


def test_the_exports_are_what_users_get(exported):
    torchscript = onnx.load(str(exported[("torchscript", "fp32")]))
    assert "Identity" in {n.op_type for n in torchscript.graph.node}  # de-duplicated zero biases
    assert "BatchNormalization" not in {n.op_type for n in torchscript.graph.node}
    dynamo = onnx.load(str(exported[("dynamo", "fp32")]), load_external_data=False)
    assert dynamo.opset_import[0].version >= 18
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in dynamo.graph.initializer)
    fp16 = onnx.load(str(exported[("torchscript", "fp16")]))
    assert {t.data_type for t in fp16.graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}


def test_torchscript_export_prunes_as_much_as_dynamo(exported, tmp_path):
    """Identity-shared biases no longer block the channel groups (they did: 'constant shared by nodes')."""
    macs = {}
    for exporter in ("torchscript", "dynamo"):
        result = compile_model(exported[(exporter, "fp32")], "filter-l2", tmp_path / exporter)
        summary = result.report["summary"]
        blocked = [s for s in result.report["skipped"] if "shared by nodes" in s["reason"]
                   or "computed at run time" in s["reason"]]
        assert not blocked
        macs[exporter] = (summary["macs_before"], summary["macs_after"])
    assert macs["torchscript"] == macs["dynamo"]
    before, after = macs["torchscript"]
    assert before / after > 1.3


GROUPWISE_FORCED = """
name: groupwise-50-forced
passes:
  - plan-groupwise: {keep: 0.5}
  - apply-plan
  - groupwise-rewrite: {lowering: tap-gather}
"""


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("recipe", ["filter-l2", "hybrid-24", "groupwise-50-forced"])
def test_every_exporter_and_dtype_compiles_and_prunes(exported, tmp_path, exporter, dtype, recipe):
    chosen = parse_recipe(GROUPWISE_FORCED, "test") if recipe == "groupwise-50-forced" else recipe
    result = compile_model(exported[(exporter, dtype)], chosen, tmp_path / "out")
    report = result.report
    verification = report["verification"]
    assert verification["exact"]["passed"]
    assert verification["dtype"] == ("float16" if dtype == "fp16" else "float32")
    assert (verification["atol"], verification["rtol"]) == ((1e-3, 1e-2) if dtype == "fp16" else (1e-5, 1e-4))
    if recipe == "groupwise-50-forced":
        rewrite = next(p for p in report["passes"] if p["name"] == "groupwise-rewrite")
        assert rewrite["status"] == "ran" and rewrite["rewrites"] >= 3
    else:
        assert report["summary"]["macs_after"] < report["summary"]["macs_before"]
    # every constant the passes created keeps the model's float type
    proto = onnx.load(str(result.model_path))
    floats = {t.data_type for t in proto.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)}
    assert floats == {onnx.TensorProto.FLOAT16 if dtype == "fp16" else onnx.TensorProto.FLOAT}


# ---------------------------------------------------------------------------------------------
# quantized graphs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    """Q/DQ, QOperator (QLinearConv) and dynamic (ConvInteger) versions of SmallNet,
    each quantizing some layers only; made from the canonical float graph (ONNX Runtime's quantizer
    cannot read weights behind Identity nodes)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    folder = tmp_path_factory.mktemp("quantized")
    canonical = compile_model(exported[("torchscript", "fp32")], "none", folder / "none").model_path

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.feeds, None)

    paths = {"qdq": folder / "qdq.onnx", "qoperator": folder / "qop.onnx", "dynamic": folder / "qdyn.onnx"}
    quantization.quantize_static(canonical, paths["qdq"], Calibration(), quant_format=quantization.QuantFormat.QDQ,
                                 nodes_to_quantize=["/block/block.0/block.0.0/Conv", "/head/Gemm"])
    quantization.quantize_static(canonical, paths["qoperator"], Calibration(),
                                 quant_format=quantization.QuantFormat.QOperator,
                                 nodes_to_quantize=["/block/block.0/block.0.0/Conv", "/left/Conv"])
    quantization.quantize_dynamic(canonical, paths["dynamic"], op_types_to_quantize=["Conv", "Gemm"],
                                  nodes_to_quantize=["/block/block.1/block.1.0/Conv", "/head/Gemm"])
    return paths


@pytest.mark.parametrize("kind, quantized_ops", [("qdq", {"DequantizeLinear"}), ("qoperator", {"QLinearConv"}),
                                                 ("dynamic", {"ConvInteger"})])
def test_quantized_graphs_compile_and_list_the_quantized_layers(quantized, tmp_path, kind, quantized_ops):
    source_ops = {n.op_type for n in onnx.load(str(quantized[kind])).graph.node}
    assert quantized_ops <= source_ops
    if kind == "qdq":
        # here every channel group is blocked (quantized layers, SE boundaries): no filter can go, and a
        # pruning recipe that plans nothing is one clear error naming the reasons, quantized ones included
        with pytest.raises(PlanError) as err:
            compile_model(quantized[kind], "filter-l2", tmp_path / "out")
        assert "planned nothing to prune" in str(err.value) and "DequantizeLinear" in str(err.value)
        assert not (tmp_path / "out").exists()  # nothing half-written
        return
    result = compile_model(quantized[kind], "filter-l2", tmp_path / "out")
    report = result.report
    assert report["verification"]["exact"]["passed"]
    # the quantized layers stay quantized, and each is listed with its reason
    assert quantized_ops <= {n.op_type for n in onnx.load(str(result.model_path)).graph.node}
    reasons = " ".join(s["reason"] for s in report["skipped"])
    assert ("quantized layer" in reasons) or ("DequantizeLinear" in reasons)
    assert report["summary"]["macs_after"] < report["summary"]["macs_before"]  # the float rest is still pruned


# ---------------------------------------------------------------------------------------------
# detect mode
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned_elsewhere(tmp_path_factory):
    """SmallNet as a pruning tool would leave it: 8 dead filters in the first block conv, half the
    im2col rows of the right branch zero, and the pointwise conv 2:4 along its input channels."""
    torch.manual_seed(1)
    module = SmallNet().eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        module.block[0][0].weight[:8] = 0.0
        right = module.right.weight.view(16, -1)
        right[:, ::2] = 0.0
        pointwise = module.pointwise[0].weight  # [24, 32, 1, 1]: 2 of every 4 input channels zero
        for row in range(24):
            for start in range(0, 32, 4):
                pointwise[row, start + rng.permutation(4)[:2]] = 0.0
    return export(module, tmp_path_factory.mktemp("detect") / "pruned.onnx", dynamo=False)


@pytest.mark.parametrize("name", ["detect", "zeros"])
def test_detect_mode_exploits_what_it_finds(pruned_elsewhere, tmp_path, name):
    result = compile_model(pruned_elsewhere, name, tmp_path / "out")
    report = result.report
    assert report["recipe"]["name"] == "detect"  # 'zeros' is its former name
    passes = {p["name"]: p for p in report["passes"]}
    # the dead filters go, with the input channels of the conv that reads them
    assert passes["remove-filters"]["status"] == "ran"
    assert passes["remove-filters"]["details"]["groups"] and passes["plan-filters-from-zeros"]["details"]["groups"]
    assert report["summary"]["macs_after"] < report["summary"]["macs_before"]
    # the pointwise weight is kept 2:4 and reported TensorRT-ready
    weights = passes["check-24"]["details"]["weights"]
    assert "/pointwise/pointwise.0/Conv" in [info["layer"] for info in weights.values() if info["two_four"]]
    assert "TensorRT-ready" in " ".join(passes["check-24"]["notes"])
    # the right branch's zero rows are what the group-wise rewrite decides about, with a reason
    decision = passes["groupwise-rewrite"]["details"]["layers"]["/right/Conv"]
    assert decision["lowering"] and decision["reason"]
    # nothing was pruned on top of the zeros that were there
    assert report["verification"]["exact"]["passed"]
    assert report["verification"]["agreement_with_unpruned"]["worst_relative_error"] < 1e-5


def test_detect_mode_keeps_zero_filters_whose_channel_is_not_zero(tmp_path):
    """A zero filter with a non-zero bias makes a constant channel, not a dead one: it stays."""
    torch.manual_seed(2)
    module = SmallNet().eval()
    with torch.no_grad():
        module.left.weight[:8] = 0.0  # left has a bias (1.0 below), so relu(bias) reaches the next layers
        module.left.bias[:] = 1.0
    path = export(module, tmp_path / "m.onnx", dynamo=False)
    report = compile_model(path, "detect", tmp_path / "out").report
    planning = next(p for p in report["passes"] if p["name"] == "plan-filters-from-zeros")
    assert not planning["details"].get("groups")
    assert report["summary"]["macs_after"] == report["summary"]["macs_before"]
    assert report["verification"]["agreement_with_unpruned"]["worst_relative_error"] < 1e-5


def test_a_fully_quantized_graph_is_refused_with_what_to_do(exported, tmp_path):
    from sparsecc.errors import UnsupportedModelError

    quantization = pytest.importorskip("onnxruntime.quantization")
    canonical = compile_model(exported[("torchscript", "fp32")], "none", tmp_path / "none").model_path

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": np.zeros(SHAPE, np.float32)}])

        def get_next(self):
            return next(self.feeds, None)

    path = tmp_path / "all.onnx"
    quantization.quantize_static(canonical, path, Calibration(), quant_format=quantization.QuantFormat.QOperator)
    with pytest.raises(UnsupportedModelError) as caught:
        compile_model(path, "filter-l2", tmp_path / "out")
    assert "QLinearConv" in caught.value.what and "quantize the compiled one" in caught.value.fix
    assert not (tmp_path / "out" / "model.onnx").exists()
