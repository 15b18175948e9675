"""The model code in tools/bench_deprune.py (written apart from models/) has the blocks it claims."""

import importlib.util
import io
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")

from sparsecc.dsc import find_dsc_blocks  # noqa: E402
from sparsecc.model import model_from_proto  # noqa: E402
from sparsecc.passes.canonicalize import CANONICAL_PASSES  # noqa: E402
from sparsecc.passmanager import PassContext, PassManager, make_pass  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_deprune.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_deprune", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,blocks,se,residual", [("own-efficientnet-b0", 16, 16, 9),
                                                      ("own-mobilenetv3s", 11, 9, 6)])
def test_own_models_have_the_paper_blocks(name, blocks, se, residual):
    tool = _tool()
    net = tool.build_own(name)
    tool.trained_like_batchnorm(net)
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), buffer, dynamo=False, opset_version=17)
    ctx = PassContext(model_from_proto(onnx.load_from_string(buffer.getvalue())))
    PassManager([make_pass(n) for n in CANONICAL_PASSES]).run(ctx)
    found, others = find_dsc_blocks(ctx.model)
    assert others == [] and len(found) == blocks
    assert all(b.pw2 for b in found)
    assert sum(b.se for b in found) == se and sum(b.residual for b in found) == residual
