"""Detect mode on models pruned the usual PyTorch way: ``ln_structured`` zeroes filters, BatchNorm stays
as trained, so after folding each zeroed filter is a *constant* channel. Where its readers are linear in
it and see it everywhere, the constant moves exactly into their biases and the channel goes."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from sparsecc.compiler import compile_model

torch = pytest.importorskip("torch")
nn = torch.nn
prune = pytest.importorskip("torch.nn.utils.prune")


def conv_bn(c_in, c_out, k, activation=None):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out),
                         activation or nn.ReLU())


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (padded) -> 1x1 -> pool -> Linear: the readers of ResNet's bottleneck layers."""

    def __init__(self, last_activation=None):
        super().__init__()
        self.stem = conv_bn(3, 32, 3)
        self.reduce, self.spatial = conv_bn(32, 64, 1), conv_bn(64, 64, 3)
        self.expand = conv_bn(64, 32, 1, last_activation)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.expand(self.spatial(self.reduce(self.stem(x)))).mean((2, 3)))


def pruned_the_pytorch_way(last_activation=None):
    torch.manual_seed(0)
    module = Bottleneck(last_activation)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):  # as trained: statistics and shifts far from 0
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.0, 0.5)
    for seq in (module.reduce, module.spatial, module.expand):
        prune.ln_structured(seq[0], "weight", amount=0.5, n=2, dim=0)
        prune.remove(seq[0], "weight")
    return module.eval()


def export(module, path, dynamo):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        example = (torch.randn(1, 3, 16, 16),)
        if dynamo:
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=["x"], verbose=False)
        else:
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=["x"])
    return path


def _shapes(report, side):
    return {row["node"]: list(row["weight_shape"]) for row in report[side]["layers"]}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_constant_channels_fold_into_linear_readers_and_go(tmp_path, exporter):
    path = export(pruned_the_pytorch_way(), tmp_path / "m.onnx", exporter == "dynamo")
    result = compile_model(path, "detect", tmp_path / "out", timing_cache="off")
    report = result.report
    step = next(p for p in report["passes"] if p["name"] == "plan-filters-from-zeros")
    assert step["status"] == "ran" and any("48 constant channel(s)" in n for n in step["notes"])
    before, after = _shapes(report, "before"), _shapes(report, "after")
    # the 3x3 conv's 32 zero filters feed a 1x1 conv, the 1x1 conv's 16 feed the pooled Linear: both go
    assert sorted(after[n][0] for n in after if before[n][1:] == [64, 3, 3]) == [32]
    assert sorted(after[n][1] for n in after if before[n] == [10, 32]) == [16]
    # the first 1x1's constants reach a padded 3x3: kept, with the reason
    assert any("pads its input with zeros" in s["reason"] for s in report["skipped"])
    assert report["summary"]["ideal_speedup"] > 1.8
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for p in (path, result.model_path)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-4, atol=1e-5)


def test_a_constant_that_an_activation_keeps_alive_is_not_folded(tmp_path):
    """After a Sigmoid an emptied channel is 0.5, not 0: it would not be dead, so nothing is folded there."""
    path = export(pruned_the_pytorch_way(nn.Sigmoid()), tmp_path / "m.onnx", False)
    report = compile_model(path, "detect", tmp_path / "out", timing_cache="off").report
    assert any("not zero at zero" in s["reason"] for s in report["skipped"])
    assert report["verification"]["exact"]["passed"]
