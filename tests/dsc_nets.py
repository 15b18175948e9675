"""Small depthwise-separable networks written for the DEPrune tests, independently of ``models/``.

BatchNorm statistics are randomised (as after training) so folded biases are not zero.
"""

from __future__ import annotations

import io

import numpy as np
import onnx


def build(kind: str = "v2", channels: int = 32, kernel: int = 3, dilation: int = 1, multiplier: int = 1,
          seed: int = 0):
    """A stem conv, one t=1 block, two expanded blocks (one residual), a head.

    kind: "v2" (ReLU6, no SE), "eff" (SiLU + squeeze-excitation), "v3" (HardSwish + SE with HardSigmoid),
    "concat" (DW output concatenated with its input), "add" (DW output added to its input).
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    act = {"v2": nn.ReLU6, "eff": nn.SiLU, "v3": nn.Hardswish}.get(kind, nn.ReLU6)

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, max(4, c // 4), 1), nn.Conv2d(max(4, c // 4), c, 1)
            self.act = nn.SiLU() if kind == "eff" else nn.ReLU()
            self.gate = nn.Sigmoid() if kind == "eff" else nn.Hardsigmoid()

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def cbn(cin, cout, k, stride=1, groups=1, dil=1, use_act=True):
        pad = dil * (k - 1) // 2
        layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation=dil, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*(layers + ([act()] if use_act else [])))

    class Block(nn.Module):
        def __init__(self, cin, hidden, cout, stride, expand=True):
            super().__init__()
            self.pw1 = cbn(cin, hidden, 1) if expand else nn.Identity()
            self.dw = cbn(hidden, hidden * multiplier, kernel, stride, groups=hidden, dil=dilation)
            self.se = SE(hidden * multiplier) if kind in ("eff", "v3") else nn.Identity()
            self.pw2 = cbn(hidden * multiplier * (2 if kind == "concat" else 1), cout, 1, use_act=False)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            h = self.pw1(x)
            d = self.dw(h)
            if kind == "concat":
                y = self.pw2(torch.cat([d, torch.relu(d)], 1))
                return x + y if self.res else y
            if kind == "add":
                d = d + d.mean((2, 3), keepdim=True) if d.shape != h.shape else d + h
            y = self.pw2(self.se(d))
            return x + y if self.res else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.stem = cbn(3, c, 3, 2)
            self.blocks = nn.Sequential(Block(c, c, 16, 1, expand=False), Block(16, 2 * c, 24, 2),
                                        Block(24, 3 * c, 24, 1))
            self.head = nn.Conv2d(24, 10, 1)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x))).mean((2, 3))

    net = Net().eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.from_numpy(rng.lognormal(0, 0.5, n).astype(np.float32)))
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, n).astype(np.float32)))
                m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.2, n).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, n).astype(np.float32)))
    return net


def export(net, size: int = 32, batch: int = 1, dynamo: bool = False) -> onnx.ModelProto:
    import torch

    x = torch.randn(batch, 3, size, size)
    if dynamo:
        program = torch.onnx.export(net, (x,), dynamo=True, verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buffer.getvalue())
