"""Every weight-layer kind through the front door: Conv1d audio models, channels-last (ConvNeXt-style) and
transformer (ViT-style) blocks, recurrent layers listed with the reason, and the smaller promises (bench on
Constant-node weights, DEPrune on a model without depthwise convs, ONNX Runtime sessions with per-channel
[C, 1, 1] tensors). Models are written here in plain PyTorch and exported both ways.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from sparsecc.backends.ort import OrtBackend, is_broadcast_scale
from sparsecc.compiler import compile_model
from sparsecc.errors import UnsupportedModelError
from sparsecc.inspection import inspect_model
from sparsecc.model import load_model
from sparsecc.session_files import SessionFiles

torch = pytest.importorskip("torch")
nn = torch.nn
EXPORTERS = ["torchscript", "dynamo"]


def export(module, path, example, dynamo: bool, dynamic: dict[int, str] | None = None):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {a: torch.export.Dim(n, min=2 if a else 1, max=1 << 16) for a, n in (dynamic or {}).items()}
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=["x"], verbose=False,
                              dynamic_shapes={"x": dims} if dims else None)
        else:
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": dynamic} if dynamic else None)
    return path


class AudioNet(nn.Module):
    """A wake-word/VAD-style front end: strided Conv1d over samples, BatchNorm, a depthwise Conv1d, a
    pointwise Conv1d and a Linear classifier over the pooled features."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 9, stride=4, padding=4), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 64, 5, padding=2), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 5, padding=2, groups=64), nn.ReLU(),
            nn.Conv1d(64, 64, 1), nn.ReLU())
        self.classify = nn.Linear(64, 4)

    def forward(self, x):
        return self.classify(self.features(x).mean(-1))


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    torch.manual_seed(0)
    module = AudioNet().eval()
    with torch.no_grad():
        module.features[8].weight[1::3] = 0  # filters zeroed by structured pruning elsewhere
        module.features[8].bias[1::3] = 0
    folder = tmp_path_factory.mktemp("audio")
    return {e: export(module, folder / f"{e}.onnx", (torch.randn(1, 1, 1600),), e == "dynamo",
                      {0: "batch", 2: "samples"}) for e in EXPORTERS}


def _layer_shapes(report, side):
    return {row["node"]: list(row["weight_shape"]) for row in report[side]["layers"]}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_conv1d_layers_are_counted_and_pruned(audio, tmp_path, exporter):
    model = load_model(audio[exporter], {"x": (1, 1, 1600)})
    report = inspect_model(model)
    convs = [row for row in report["layers"] if row["op"] == "Conv"]
    assert len(convs) == 4 and {len(row["weight_shape"]) for row in convs} == {3}
    # MACs: output elements x (C_in/group x k); the strided first conv gives 400 samples
    first = next(row for row in convs if list(row["weight_shape"][1:]) == [1, 9])
    assert first["macs"] == 32 * 400 * 9
    pruned = compile_model(audio[exporter], "filter-l2", tmp_path / "l2", shapes={"x": (1, 1, 1600)},
                           timing_cache="off").report
    assert pruned["summary"]["macs_after"] < 0.8 * pruned["summary"]["macs_before"]
    assert pruned["verification"]["second_shape"]["passed"] is True
    detected = compile_model(audio[exporter], "detect", tmp_path / "detect", shapes={"x": (1, 1, 1600)},
                             timing_cache="off").report
    before, after = _layer_shapes(detected, "before"), _layer_shapes(detected, "after")
    zeroed = next(name for name, shape in before.items() if shape == [64, 64, 1])
    # a third of the pointwise filters were zero with their bias: those channels are dead and go
    assert after[zeroed][0] == 64 - len(range(1, 64, 3))
    assert detected["verification"]["exact"]["passed"] and detected["verification"]["second_shape"]["passed"]


class ConvNeXtBlock(nn.Module):
    """depthwise 7x7 -> channels-last -> LayerNorm -> Linear 4x -> GELU -> Linear -> channels-first ->
    layer scale (a [C, 1, 1] Mul) -> residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.fc1, self.fc2 = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class ConvNeXtNet(nn.Module):
    def __init__(self, channels: int = 48):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(channels), ConvNeXtBlock(channels))
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention (one qkv Linear) and an MLP, each residual."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViTNet(nn.Module):
    """Patch embedding, two ViT blocks, a class head."""

    def __init__(self, dim: int = 48):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.Sequential(ViTBlock(dim), ViTBlock(dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.blocks(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def _mlp_hidden_units(report, side, dim):
    """Hidden units of the MLPs: the output size of each dim -> hidden projection, by weight shape."""
    units = []
    for row in report[side]["layers"]:
        shape = list(row["weight_shape"])
        if row["op"] in ("Gemm", "MatMul") and len(shape) == 2 and dim in shape and shape != [dim, dim] and \
                max(shape) <= 4 * dim and min(shape) == dim:
            units.append(shape)
    return units


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("net", ["convnext", "vit"])
def test_channels_last_and_transformer_blocks_lose_mlp_hidden_units(tmp_path, exporter, net):
    torch.manual_seed(0)
    module = (ConvNeXtNet() if net == "convnext" else ViTNet()).eval()
    path = export(module, tmp_path / f"{net}.onnx", (torch.randn(1, 3, 32, 32),), exporter == "dynamo",
                  {0: "batch"})
    shapes = {"x": (1, 3, 32, 32)}
    l2 = compile_model(path, "filter-l2", tmp_path / "l2", shapes=shapes, timing_cache="off").report
    hidden_before = sum(max(s) for s in _mlp_hidden_units(l2, "before", 48)) // 2
    hidden_after = sum(max(s) for s in _mlp_hidden_units(l2, "after", 48)) // 2
    assert hidden_after < hidden_before  # fc1's outputs and fc2's inputs went together
    assert l2["summary"]["macs_after"] < l2["summary"]["macs_before"]
    assert l2["verification"]["second_shape"]["passed"] is True
    grouped = compile_model(path, "groupwise-50", tmp_path / "gw", shapes=shapes, cost_model="analytic",
                            timing_cache="off").report
    assert grouped["summary"]["macs_after"] < grouped["summary"]["macs_before"]
    assert grouped["verification"]["exact"]["passed"] and grouped["verification"]["second_shape"]["passed"]


def test_per_channel_broadcast_tensors_stay_in_the_file_for_timing_sessions(tmp_path):
    """A layer-scale [C, 1, 1] after a channels-last section runs in a timing session (default optimisations,
    weights handed in from memory) and gives what a plain session gives."""
    torch.manual_seed(0)
    # 384 channels: the layer scale is above the size sessions take from memory (1 KiB)
    path = export(ConvNeXtNet(384).eval(), tmp_path / "m.onnx", (torch.randn(1, 3, 32, 32),), True)
    model = load_model(path)
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    with SessionFiles() as files:
        written = files.write(model.graph)
        handed = files.initializers(written)
        assert any(is_broadcast_scale(array) for _, array in handed)
        timed = OrtBackend().load(written, handed).run(x)
        plain = OrtBackend(optimization="none").load(written).run(x)
    for name in plain:
        np.testing.assert_allclose(timed[name], plain[name], rtol=1e-4, atol=1e-5)
    assert is_broadcast_scale(np.ones((8, 1, 1))) and not is_broadcast_scale(np.ones((8, 4, 1, 1)))
    assert not is_broadcast_scale(np.ones((1, 8, 1, 1))) and not is_broadcast_scale(np.ones(8))


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(16, 32, batch_first=True)
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_weights_are_listed_with_the_reason(tmp_path, kind):
    torch.manual_seed(0)
    path = export(Recurrent(kind).eval(), tmp_path / "rnn.onnx", (torch.randn(1, 10, 16),), False)
    report = inspect_model(load_model(path))
    listed = [u for u in report["unsupported"] if u["op"] == kind.upper()]
    assert len(listed) == 1 and "recurrent layer" in listed[0]["reason"]
    assert [row["op"] for row in report["layers"]] in (["Gemm"], ["MatMul"])


def test_a_model_of_only_recurrent_layers_says_what_it_has(tmp_path):
    torch.manual_seed(0)
    path = export(nn.LSTM(8, 8, batch_first=True).eval(), tmp_path / "lstm.onnx", (torch.randn(1, 5, 8),), False)
    with pytest.raises(UnsupportedModelError, match=r"it has 1 LSTM, each left as it is .*recurrent layer"):
        inspect_model(load_model(path))


def test_deprune_on_a_model_without_depthwise_convs_says_so(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    path = export(module, tmp_path / "plain.onnx", (torch.randn(1, 3, 16, 16),), False)
    for recipe in ("deprune", "deprune-bh"):
        with pytest.raises(UnsupportedModelError, match="no depthwise convolution") as failure:
            compile_model(path, recipe, tmp_path / recipe, timing_cache="off")
        assert "filter-l2" in failure.value.fix


def test_bench_counts_constant_node_weights(cli, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    path = export(module, tmp_path / "m.onnx", (torch.randn(1, 3, 16, 16),), False)
    proto = onnx.load(str(path))
    for init in list(proto.graph.initializer):  # every weight as a Constant node, as some exporters write them
        proto.graph.node.insert(0, onnx.helper.make_node("Constant", [], [init.name], value=init))
    del proto.graph.initializer[:]
    onnx.save(proto, str(tmp_path / "constants.onnx"))
    done = cli("bench", tmp_path / "constants.onnx", "--runs", "2", "--warmup", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert '"macs": ' + str(8 * 14 * 14 * 27 + 4 * 14 * 14 * 8) in done.stdout.replace("\n", "")


class WrittenOutHardSwish(nn.Module):
    def forward(self, x):
        return x * torch.clamp(x + 3, 0, 6) / 6


class MobileBlocks(nn.Module):
    """PW1 -> DW -> activation -> PW2 blocks whose activations are written out as Mul/Add/Clip (PaddlePaddle
    and older exporters) or as x * Sigmoid(x)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.blocks = nn.Sequential(*[nn.Sequential(
            nn.Conv2d(16, 64, 1), WrittenOutHardSwish(), nn.Conv2d(64, 64, 3, 1, 1, groups=64),
            WrittenOutHardSwish() if i % 2 == 0 else nn.SiLU(), nn.Conv2d(64, 16, 1)) for i in range(2)])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_deprune_blocks_are_found_through_written_out_activations(tmp_path, exporter):
    from sparsecc.dsc import find_dsc_blocks
    from sparsecc.passes.canonicalize import canonicalize

    torch.manual_seed(0)
    path = export(MobileBlocks().eval(), tmp_path / "m.onnx", (torch.randn(1, 3, 32, 32),), exporter == "dynamo")
    model = load_model(path)
    canonicalize(model)
    blocks, _ = find_dsc_blocks(model)
    assert len(blocks) == 2 and all(b.pw2 is not None and b.stop is None for b in blocks), \
        [b.describe() for b in blocks]
    assert all(b.path[0].kind == "swish" for b in blocks)
    report = compile_model(path, "deprune-bh", tmp_path / "out", cost_model="analytic", timing_cache="off").report
    assert report["verification"]["exact"]["passed"]
    assert not [s for s in report["skipped"] if "consumers" in s["reason"] and "not a block" in s["reason"]]


class ScaleFirst(nn.Module):
    """A scale written before the activation (``s * x``, as PaddlePaddle exports its BatchNorm/scale ops)."""

    def __init__(self):
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.tensor([0.7])), nn.Parameter(torch.tensor([0.3]))

    def forward(self, x):
        return torch.relu(self.scale * x + self.shift)


def test_dead_depthwise_channels_fold_through_a_scale_written_first(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, groups=64), ScaleFirst(),
                           nn.Conv2d(64, 32, 1), nn.ReLU(), nn.Conv2d(32, 64, 1), nn.ReLU(),
                           nn.Conv2d(64, 64, 3, padding=1, groups=64), ScaleFirst(), nn.Conv2d(64, 16, 1)).eval()
    with torch.no_grad():
        for index in (2, 8):
            module[index].weight[::3] = 0  # depthwise channels with no tap left: constant = their bias
            module[index].bias.uniform_(0.5, 1.0)
    path = export(module, tmp_path / "m.onnx", (torch.randn(1, 3, 16, 16),), False)
    report = compile_model(path, "deprune-zeros", tmp_path / "out", cost_model="analytic",
                           timing_cache="off").report
    dead = next(p for p in report["passes"] if p["name"] == "deprune-dead-channels")
    assert dead["status"] == "ran", dead
    assert report["verification"]["exact"]["passed"]


def test_conv3d_layers_are_counted_and_filter_pruned(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(),
                           nn.Conv3d(16, 4, 1)).eval()
    path = export(module, tmp_path / "video.onnx", (torch.randn(1, 1, 4, 8, 8),), False)
    report = inspect_model(load_model(path))
    assert [len(row["weight_shape"]) for row in report["layers"]] == [5, 5, 5]
    assert report["layers"][1]["macs"] == 16 * 4 * 8 * 8 * 8 * 27
    compiled = compile_model(path, "filter-l2", tmp_path / "out", timing_cache="off").report
    assert compiled["summary"]["macs_after"] < compiled["summary"]["macs_before"]
    assert compiled["verification"]["exact"]["passed"]
