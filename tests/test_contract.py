"""What a compiled model promises its users: symbolic dimensions stay symbolic (checked at a second shape),
model-level fields are carried over, weights inside If branches load, and integer inputs get real values.

Every model is written here in plain PyTorch and exported both ways (``dynamo=False`` and ``dynamo=True``).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sparsecc.compiler import compile_model
from sparsecc.errors import InputError, OptionError, VerificationError
from sparsecc.feeds import FeedOptions, make_feeds, parse_input_files, parse_input_ranges, second_shapes
from sparsecc.inspection import inspect_model
from sparsecc.model import load_model
from sparsecc.session_files import SessionFiles
from sparsecc.verify import VerifyConfig, check_second_shape

torch = pytest.importorskip("torch")
nn = torch.nn
EXPORTERS = ["torchscript", "dynamo"]


def export(module, path, example, dynamic: dict[int, str], dynamo: bool, names=("x",)):
    """Export with the input dims in ``dynamic`` ({axis: name}) symbolic."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {axis: torch.export.Dim(name, min=2 if axis else 1, max=4096) for axis, name in dynamic.items()}
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=list(names),
                              dynamic_shapes={names[0]: dims}, verbose=False)
        else:
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=list(names),
                              dynamic_axes={names[0]: dynamic})
    return path


class Detector(nn.Module):
    """A detector's shape: strided conv stages (BN, SiLU, depthwise + HardSwish) and a head whose output is
    reshaped with the batch read from the input at run time (as YOLO's DFL head does)."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.SiLU(),
            nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.BatchNorm2d(32), nn.Hardswish(),
            nn.Conv2d(32, 32, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(64, 8, 1)

    def forward(self, x):
        y = self.head(self.stages(x))
        return y.reshape(y.shape[0], 2, 4, -1).softmax(2)


def _trained_like(module):
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """{exporter: path} of one Detector with symbolic batch, height and width; a quarter of the filters of
    its 32->64 conv zeroed (as structured pruning elsewhere leaves them), so detect has work."""
    torch.manual_seed(0)
    module = _trained_like(Detector())
    with torch.no_grad():
        module.stages[11].weight[::4] = 0
        module.stages[11].bias[::4] = 0
    folder = tmp_path_factory.mktemp("detector")
    example = (torch.randn(1, 3, 64, 64),)
    return {e: export(module, folder / f"{e}.onnx", example, {0: "batch", 2: "height", 3: "width"},
                      e == "dynamo") for e in EXPORTERS}


def _run(path, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("recipe", ["filter-l2", "hybrid-24", "groupwise-50", "detect"])
def test_dynamic_dims_stay_symbolic_and_the_model_runs_at_other_shapes(detectors, tmp_path, exporter, recipe):
    source = detectors[exporter]
    result = compile_model(source, recipe, tmp_path / "out", shapes={"x": (1, 3, 64, 64)}, cost_model="analytic",
                           timing_cache="off")
    second = result.report["verification"]["second_shape"]
    assert second["shapes"] == {"x": [2, 3, 96, 96]} and second["passed"] is True
    compiled = onnx.load(str(result.model_path))
    dims = [d.dim_param or d.dim_value for d in compiled.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 3
    for info in compiled.graph.value_info:  # nothing in value_info pins the batch
        shape = info.type.tensor_type.shape.dim
        assert not shape or len(shape) < 4 or shape[0].dim_value != 1, info.name
    rng = np.random.default_rng(3)
    for shape in [(3, 3, 64, 64), (2, 3, 96, 128)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got = _run(result.model_path, x)
        # the batch is independent samples: each equals the sample run alone
        np.testing.assert_allclose(got[1:2], _run(result.model_path, x[1:2]), rtol=1e-4, atol=1e-5)
        assert got.shape == (shape[0], 2, 4, (shape[2] // 4) * (shape[3] // 4))
        if recipe == "detect":  # exact: the compiled model is the input model at every shape
            np.testing.assert_allclose(got, _run(source, x), rtol=1e-4, atol=1e-5)
    if recipe in ("filter-l2", "detect"):
        assert result.report["summary"]["macs_after"] < result.report["summary"]["macs_before"]


def test_a_compiled_model_that_fixed_a_symbolic_dim_fails_the_second_shape_check(detectors, tmp_path):
    original = load_model(detectors["torchscript"], {"x": (1, 3, 64, 64)})
    pinned = onnx.load(str(detectors["torchscript"]))
    for dim, size in zip(pinned.graph.input[0].type.tensor_type.shape.dim, (1, 3, 64, 64)):
        dim.Clear()
        dim.dim_value = size
    onnx.save(pinned, str(tmp_path / "pinned.onnx"))
    with SessionFiles() as files, pytest.raises(VerificationError, match=r"fails at input shapes .*'x': \[2, 3, 96"):
        check_second_shape(original, tmp_path / "pinned.onnx", VerifyConfig().for_dtype("float32"), files)
    static = load_model(tmp_path / "pinned.onnx")
    with SessionFiles() as files:
        assert check_second_shape(static, tmp_path / "pinned.onnx", VerifyConfig().for_dtype("float32"),
                                  files)["shapes"] is None


def test_second_shapes_double_the_batch_and_grow_named_dims_together():
    shapes = second_shapes({"a": ["n", 3, "h", "w"], "b": ["n", "h"], "c": [4]},
                           {"a": (1, 3, 64, 48), "b": (1, 64), "c": (4,)})
    assert shapes == {"a": (2, 3, 96, 80), "b": (2, 96), "c": (4,)}
    assert second_shapes({"a": [1, 3]}, {"a": (1, 3)}) is None


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_model_level_fields_are_carried_over(detectors, tmp_path, exporter):
    proto = onnx.load(str(detectors[exporter]))
    onnx.helper.set_model_props(proto, {"names": "{0: 'person', 1: 'car'}", "stride": "32"})
    proto.doc_string, proto.model_version, proto.producer_name = "a detector", 7, "ultralytics"
    proto.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", 2))
    path = tmp_path / "with_metadata.onnx"
    onnx.save(proto, str(path))
    for recipe in ("none", "filter-l2"):
        result = compile_model(path, recipe, tmp_path / recipe, shapes={"x": (1, 3, 64, 64)}, timing_cache="off")
        compiled = onnx.load(str(result.model_path))
        assert {p.key: p.value for p in compiled.metadata_props} == {"names": "{0: 'person', 1: 'car'}",
                                                                     "stride": "32"}
        assert (compiled.doc_string, compiled.model_version, compiled.producer_name) == ("a detector", 7,
                                                                                        "ultralytics")
        assert ("ai.onnx.ml", 2) in {(o.domain, o.version) for o in compiled.opset_import}
        assert "metadata_props" in result.report["model_fields"]


class BranchWeights(nn.Module):
    """A weight used only inside an If branch (torch.cond): the dynamo exporter writes it to the external
    data file, referenced from the branch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch_weight = nn.Parameter(torch.randn(64, 8, 1, 1) * 0.1)
        self.other = nn.Conv2d(8, 64, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return torch.cond(y.mean() > 0, lambda t: nn.functional.conv2d(t, self.branch_weight) + 1,
                          lambda t: self.other(t), (y,))


def test_weights_used_only_in_if_branches_load_from_any_folder(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = BranchWeights().eval()
    path = tmp_path / "model" / "branches.onnx"
    path.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 8, 8),), str(path), dynamo=True, external_data=True,
                          input_names=["x"], verbose=False)
    proto = onnx.load(str(path), load_external_data=False)
    assert any(n.op_type == "If" for n in proto.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = _run(path, x)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing may depend on the current folder
    relative = os.path.relpath(path, elsewhere)
    result = compile_model(relative, "none", tmp_path / "out", timing_cache="off")
    np.testing.assert_allclose(_run(result.model_path, x), expected, rtol=1e-5, atol=1e-6)
    report = inspect_model(load_model(relative))
    inside = [u for u in report["unsupported"] if "inside the" in u["reason"]]
    assert inside and all("If" in u["reason"] for u in inside)
    monkeypatch.chdir(tmp_path)
    assert inspect_model(load_model(path))["unsupported"] == report["unsupported"]


class ScriptedBranches(nn.Module):
    """TorchScript's If: a scripted branch whose MatMul reads a weight only that branch uses."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch_weight = nn.Parameter(torch.randn(8, 300) * 0.1)

    def forward(self, x):
        y = torch.relu(self.stem(x)).mean((2, 3))
        if bool(y.sum() > 0):
            return y @ self.branch_weight
        return y.repeat(1, 38)[:, :300]


def test_torchscript_if_branch_weights_compile(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = tmp_path / "scripted.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(ScriptedBranches().eval()), (torch.randn(1, 3, 8, 8),), str(path),
                          dynamo=False, opset_version=17, input_names=["x"])
    assert any(n.op_type == "If" for n in onnx.load(str(path)).graph.node)
    monkeypatch.chdir(tmp_path)
    result = compile_model(path.name, "none", tmp_path / "out", timing_cache="off")
    assert any("inside the then_branch of If" in u["reason"] for u in result.report["before"]["unsupported"])
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model_path, x), _run(path, x), rtol=1e-5, atol=1e-6)


class RateModel(nn.Module):
    """An audio model with a sample-rate input that shapes its frames, as voice-activity detectors have:
    any rate below 160 makes the frame length 0, and ONNX Runtime then refuses the Reshape."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 16, 3, padding=1),
                                   nn.ReLU(), nn.Conv1d(16, 8, 1))

    def forward(self, x, rate):
        frames = x.reshape(x.shape[0], -1, rate // 160 * 4)[:, :, :4]
        return self.convs(frames.transpose(1, 2))


@pytest.fixture(scope="module")
def rate_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rate") / "rate.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(RateModel().eval(), (torch.randn(1, 1600), torch.tensor(16000)), str(path),
                          dynamo=False, opset_version=17, input_names=["x", "code"])
    return path


def test_an_integer_input_verified_with_a_user_given_input(rate_model, tmp_path):
    with pytest.raises(InputError, match=r"'code' \[\] int64: random 0/1 values") as failure:
        compile_model(rate_model, "none", tmp_path / "a", timing_cache="off")
    assert "--input NAME:FILE.npy" in failure.value.fix and "'code'" in failure.value.fix
    np.save(tmp_path / "code.npy", np.array(16000, np.int64))
    given = FeedOptions(parse_input_files([f"code:{tmp_path / 'code.npy'}"]))
    result = compile_model(rate_model, "filter-l2", tmp_path / "b", timing_cache="off", inputs=given)
    assert result.report["verification"]["exact"]["passed"]
    ranged = FeedOptions(ranges=parse_input_ranges(["code:16000:16000"]))
    assert compile_model(rate_model, "none", tmp_path / "c", timing_cache="off", inputs=ranged).report


def test_cli_input_options(cli, rate_model, tmp_path):
    np.savez(tmp_path / "feeds.npz", code=np.array(16000, np.int64), x=np.ones((1, 1600), np.float32))
    done = cli("compile", rate_model, "-o", tmp_path / "out", "--input", tmp_path / "feeds.npz",
               "--timing-cache", "off")
    assert done.returncode == 0, done.stderr
    failed = cli("compile", rate_model, "-o", tmp_path / "bad", "--input-range", "code:0:1")
    assert failed.returncode == 2 and "fails in ONNX Runtime" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "bad").exists()
    unknown = cli("compile", rate_model, "-o", tmp_path / "bad", "--input-range", "nope:0:1")
    assert unknown.returncode == 2 and "not an input of the model" in unknown.stderr


def test_feeds_follow_data_ranges_and_names():
    specs = [("x", (2, 3), np.float32), ("sample_rate", (), np.int64), ("attention_mask", (2, 4), np.int64),
             ("token_type_ids", (2, 4), np.int64), ("input_ids", (2, 4), np.int64), ("k", (3,), np.int32)]
    data = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    feed = make_feeds(specs, 0, options=FeedOptions(data, {"k": (5, 7)}))[0]
    np.testing.assert_array_equal(feed["x"], data["x"])
    assert feed["sample_rate"] == 16000 and (feed["attention_mask"] == 1).all()
    assert (feed["token_type_ids"] == 0).all() and feed["input_ids"].max() < 100
    assert ((feed["k"] >= 5) & (feed["k"] <= 7)).all() and feed["k"].dtype == np.int32
    tiled = make_feeds([("x", (4, 3), np.float32)], 0, options=FeedOptions(data))[0]["x"]
    np.testing.assert_array_equal(tiled, np.concatenate([data["x"]] * 2))
    with pytest.raises(OptionError, match="LOW <= HIGH"):
        parse_input_ranges(["k:9:1"])
    with pytest.raises(OptionError, match="does not exist"):
        parse_input_files(["x:/nonexistent/file.npy"])


def test_report_says_what_was_checked(detectors, tmp_path):
    result = compile_model(detectors["dynamo"], "none", tmp_path / "out", shapes={"x": (1, 3, 64, 64)},
                           timing_cache="off")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "run again at {'x': [2, 3, 96, 96]}" in markdown and "**passed**" in markdown
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verification"]["second_shape"]["passed"]
    assert result.report["specialized_input_shapes"] == {}
