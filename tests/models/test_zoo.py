"""Tests of the model zoo: registry, ONNX export, trained checkpoints and the ``zoo`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sparsecc import zoo
from sparsecc.errors import OptionError
from sparsecc.model import load_model
from sparsecc.passes.canonicalize import canonicalize
from sparsecc.models import ZOO

SMALL = [name for name in ZOO if name.endswith(("-small", "-digits"))]
IMAGENET_FAST = ["resnet18", "mobilenetv2", "bert-mini"]
IMAGENET_SLOW = ["vgg16", "mobilenetv3s", "efficientnet-b0", "alexnet", "vit-tiny"]
TRAINED = [name for name, e in ZOO.items() if e.checkpoint]
WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_registry_and_checkpoints_need_no_torch():
    result = _run_python(
        "import sys, sparsecc, sparsecc.models, sparsecc.zoo as z\n"
        "names = [e.name for e in z.list_models()]\n"
        "z.checkpoint_path('resnet18-digits'); z.load_eval_data('resnet18-digits')\n"
        "print(len(names), 'torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(ZOO)), "False"]


def test_export_without_torch_raises_option_error_with_install_hint():
    result = _run_python(
        "import sys; sys.modules['torch'] = None\n"
        "from sparsecc import zoo\nfrom sparsecc.errors import OptionError\n"
        "try:\n    zoo.export_onnx('resnet18-small', 'x.onnx')\n"
        "except OptionError as err:\n    print(err.fix)")
    assert result.returncode == 0, result.stderr
    assert "pip install torch==2.13.0" in result.stdout


@pytest.mark.parametrize("call", [lambda: zoo.get_entry("resnet19"),
                                  lambda: zoo.export_onnx("resnet19", "x.onnx"),
                                  lambda: zoo.export_module(None, ZOO["resnet18"], "x.onnx", opset=21),
                                  lambda: zoo.checkpoint_path("resnet19"),
                                  lambda: zoo.checkpoint_path("resnet18"),
                                  lambda: zoo.load_eval_data("vit-tiny")])
def test_bad_arguments_raise_option_error(call):
    with pytest.raises(OptionError) as info:
        call()
    assert info.value.fix


def test_registry_names_follow_the_variant_rule():
    assert len(ZOO) == 19
    for name, entry in ZOO.items():
        assert entry.name == name
        batch, *rest = entry.inputs[0].shape
        assert batch == 1
        if name.endswith("-digits"):
            assert entry.inputs[0].shape == (1, 1, 32, 32) and entry.eval_data == "digits_val.npz"
        elif entry.inputs[0].dtype == "int64":
            assert rest == ([32] if name.endswith("-small") else [128])
        else:
            assert rest == ([3, 32, 32] if name.endswith("-small") else [3, 224, 224])


def _run(path, entry) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {spec.name: (rng.integers(0, 30522, spec.shape) if spec.dtype == "int64"
                         else rng.standard_normal(spec.shape)).astype(spec.dtype)
             for spec in entry.inputs}
    return session.run(None, feeds)[0]


def _check_export(name: str, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    entry = ZOO[name]
    module = zoo.build_model(name)
    assert sum(t.numel() for t in module.parameters()) == entry.params
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    path = zoo.export_module(module, entry, tmp_path / f"{name}.onnx")
    output = _run(path, entry)
    assert output.shape == entry.output_shape and np.isfinite(output).all()
    model = onnx.load(path)
    assert model.opset_import[0].version == 17 and model.ir_version <= 10
    assert [tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in model.graph.input] == \
        [spec.shape for spec in entry.inputs]
    initializers = {t.name for t in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.input[1] in initializers]
    assert weighted, "no Conv/Gemm/MatMul with an initializer weight"
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == n_bn
    # the exporter's de-duplicated constants (Identity nodes) are the canonicalisation's job
    canonical = load_model(path)
    canonicalize(canonical)
    assert "Identity" not in {n.op for n in canonical.graph.nodes}


@pytest.mark.parametrize("name", SMALL)
def test_small_variants_export_and_run(name, tmp_path):
    _check_export(name, tmp_path)


@pytest.mark.parametrize("name", IMAGENET_FAST)
def test_imagenet_variants_export_and_run(name, tmp_path):
    _check_export(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET_SLOW)
def test_large_imagenet_variants_export_and_run(name, tmp_path):
    _check_export(name, tmp_path)


def _macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv and Gemm nodes, from their weight and output shapes."""
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output]}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            out, weight = shapes[node.output[0]], weights[node.input[1]]
            total += int(np.prod(out)) * int(np.prod(weight[1:]))
    return total


def test_resnet18_imagenet_has_reference_layers_and_macs(tmp_path):
    pytest.importorskip("torch")
    model = onnx.load(zoo.export_onnx("resnet18", tmp_path / "r18.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert (ops.count("Conv"), ops.count("BatchNormalization"), ops.count("Gemm")) == (20, 20, 1)
    assert _macs(model) == pytest.approx(1.82e9, rel=0.01)


def test_depthwise_convs_use_groups_equal_channels(tmp_path):
    pytest.importorskip("torch")
    model = onnx.load(zoo.export_onnx("mobilenetv2-small", tmp_path / "mbv2.onnx"))
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if next(a.i for a in n.attribute if a.name == "group") > 1]
    assert (len(convs), len(depthwise)) == (52, 17)
    for node in depthwise:
        out_channels, in_per_group = weights[node.input[1]][:2]
        assert in_per_group == 1 and next(a.i for a in node.attribute if a.name == "group") == out_channels


def _accuracy(path, x, y) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(axis=1) == y).mean())


def _manifest() -> dict:
    return json.loads((zoo.checkpoint_path(TRAINED[0]).parent / "manifest.json").read_text())


@pytest.mark.parametrize("name", TRAINED)
def test_checkpoints_reach_manifest_accuracy(name):
    x, y = zoo.load_eval_data(name)
    assert x.shape == (360, 1, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    entry = _manifest()[name]
    path = zoo.checkpoint_path(name)
    assert path.stat().st_size < 3 * 2**20
    batch_dim = onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    accuracy = _accuracy(path, x, y)
    assert accuracy == pytest.approx(entry["val_accuracy"], abs=0.005)
    assert accuracy > 0.9


def test_pretrained_export_reproduces_checkpoint_accuracy(tmp_path):
    pytest.importorskip("torch")
    x, y = zoo.load_eval_data("vgg16-digits")
    path = zoo.export_onnx("vgg16-digits", tmp_path / "vgg.onnx", pretrained=True, dynamic_batch=True)
    assert _accuracy(path, x, y) == pytest.approx(_manifest()["vgg16-digits"]["val_accuracy"], abs=1e-9)


def test_cli_zoo_list_json():
    result = subprocess.run([sys.executable, "-m", "sparsecc.cli", "zoo", "list", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(ZOO)
    resnet = rows[0]
    assert resnet["params"] == 11_689_512 and resnet["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert sorted(r["name"] for r in rows if r["checkpoint"]) == sorted(TRAINED)


def test_cli_zoo_export_unknown_name_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sparsecc.cli", "zoo", "export", "resnet19",
                             "-o", str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown zoo model 'resnet19'" in result.stderr and "sparsecc zoo list" in result.stderr
    assert not list(tmp_path.iterdir())
