"""Depthwise-separable block recognition on graphs exported from model code written for the tests."""

import pytest

pytest.importorskip("torch")

import dsc_nets  # noqa: E402

from sparsecc.dsc import find_dsc_blocks  # noqa: E402
from sparsecc.model import model_from_proto  # noqa: E402
from sparsecc.passes.canonicalize import CANONICAL_PASSES  # noqa: E402
from sparsecc.passmanager import PassContext, PassManager, make_pass  # noqa: E402


def canonical(proto):
    ctx = PassContext(model_from_proto(proto))
    PassManager([make_pass(n) for n in CANONICAL_PASSES]).run(ctx)
    return ctx.model


@pytest.mark.parametrize("kind,se,dynamo", [("v2", False, False), ("eff", True, False), ("v3", True, False),
                                             ("eff", True, True)])
def test_blocks_are_found(kind, se, dynamo):
    blocks, others = find_dsc_blocks(canonical(dsc_nets.export(dsc_nets.build(kind), dynamo=dynamo)))
    assert others == []
    assert len(blocks) == 3
    assert [b.pw1 is None for b in blocks] == [True, False, False]
    assert blocks[0].producer is not None  # the stem conv feeds the first DW
    assert all(b.pw2 for b in blocks) and all(b.stop is None for b in blocks)
    assert [b.se for b in blocks] == [se] * 3
    assert [b.residual for b in blocks] == [False, False, True]
    assert [b.channels for b in blocks] == [32, 64, 96]
    assert blocks[1].strides == (2, 2)


@pytest.mark.parametrize("kind,stop", [("concat", "consumers"), ("add", "Add")])
def test_dw_feeding_concat_or_add_is_not_a_block(kind, stop):
    blocks, _ = find_dsc_blocks(canonical(dsc_nets.export(dsc_nets.build(kind))))
    assert all(b.pw2 is None for b in blocks)
    assert stop in blocks[0].stop


def test_depth_multiplier_is_listed_not_handled():
    blocks, others = find_dsc_blocks(canonical(dsc_nets.export(dsc_nets.build("v2", multiplier=2))))
    assert blocks == [] and len(others) == 3
    assert "depth multiplier 2" in others[0].reason
