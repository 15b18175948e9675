"""The pass manager: verification catches a wrong pass; disable, dump and errors work."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import conv_bn_relu_fc

from sparsecc.errors import OptionError, VerificationError
from sparsecc.model import load_model, model_from_proto
from sparsecc.passmanager import Pass, PassContext, PassManager, PassResult, available_passes, make_pass


class BreakWeights(Pass):
    """Claims to be exact but scales one weight: the manager must catch it."""

    name = "test-break-weights"
    exact = True

    def run(self, ctx):
        tensor = ctx.model.graph.tensors()["Wfc"]
        tensor.values = tensor.values * np.float32(1.01)
        return PassResult(True, 1)


class PruneOnPurpose(BreakWeights):
    name = "test-prune-on-purpose"
    exact = False


def _model():
    return model_from_proto(conv_bn_relu_fc(batch=2))


def test_wrong_exact_pass_is_caught_and_named():
    manager = PassManager([make_pass("fold-batchnorm"), BreakWeights()])
    with pytest.raises(VerificationError) as err:
        manager.run(PassContext(_model()))
    message = err.value.format()
    assert "pass 'test-break-weights'" in message
    assert "output 'y' element" in message and "fold-batchnorm" in message
    assert err.value.exit_code == 3


def test_inexact_pass_is_measured_not_failed():
    records = PassManager([PruneOnPurpose()]).run(PassContext(_model())).records
    check = records[0].verification
    assert check["mode"] == "agreement" and not check["passed"]
    assert 0.001 < check["worst_relative_error"] < 0.1


def test_disable_and_dump(tmp_path):
    manager = PassManager([make_pass("constants-to-initializers"), make_pass("fold-batchnorm")],
                          disabled=["fold-batchnorm"], dump_dir=tmp_path)
    model = _model()
    records = manager.run(PassContext(model)).records
    assert [(r.name, r.status) for r in records] == [("constants-to-initializers", "unchanged"),
                                                     ("fold-batchnorm", "disabled")]
    assert [n.op for n in model.graph.nodes][:2] == ["Conv", "BatchNormalization"]
    dumped = sorted(p.name for p in tmp_path.iterdir())
    assert dumped == ["00-constants-to-initializers.onnx"]
    assert load_model(tmp_path / dumped[0]).graph.nodes[1].op == "BatchNormalization"


def test_unknown_names_are_errors():
    with pytest.raises(OptionError, match="unknown pass"):
        PassManager([make_pass("fold-batchnorm")], disabled=["fold-batchnrom"])
    with pytest.raises(OptionError, match="no pass named"):
        make_pass("nope")
    with pytest.raises(OptionError, match="bad options"):
        make_pass("fold-batchnorm", ratio=0.5)


def test_registry_lists_core_passes():
    passes = available_passes()
    assert {"constants-to-initializers", "fold-batchnorm", "apply-plan", "plan-from-zeros"} <= set(passes)
    assert passes["apply-plan"].exact is False and passes["fold-batchnorm"].exact is True


def test_a_pipeline_inside_a_pipeline_runs_as_its_steps(tmp_path):
    inner = PassManager([make_pass("fold-batchnorm")], verify=None)  # its own instruments are not used
    manager = PassManager([inner, BreakWeights()], dump_dir=tmp_path)
    ctx = PassContext(_model())
    with pytest.raises(VerificationError, match=r"after passes: fold-batchnorm"):
        manager.run(ctx)
    assert [(r.name, r.status) for r in ctx.history] == [("fold-batchnorm", "ran")]
    assert ctx.history[0].verification["mode"] == "exact"  # verified by the outer pipeline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-fold-batchnorm.onnx", "01-test-break-weights.onnx"]


def test_the_manager_is_a_pass_with_instruments_around_each_pass():
    from sparsecc.passmanager import Instrument, PipelineResult, Role

    calls = []

    class Recorder(Instrument):
        def __init__(self, label):
            self.label = label

        def before_pass(self, index, pass_, ctx):
            calls.append(f"{self.label} before {index} {pass_.name}")

        def after_pass(self, index, pass_, ctx, record):
            calls.append(f"{self.label} after {index} {record.name} {record.status}")

        def exit_pipeline(self, ctx, failed):
            calls.append(f"{self.label} exit {failed}")

    manager = PassManager([make_pass("constants-to-initializers"), PruneOnPurpose()],
                          disabled=["constants-to-initializers"], instruments=[Recorder("a"), Recorder("b")])
    assert isinstance(manager, Pass) and manager.role == Role.PIPELINE and manager.exact is False
    result = manager.run(PassContext(_model()))
    assert isinstance(result, PipelineResult) and result.modified and result.rewrites == 1
    assert [r.status for r in result.records] == ["disabled", "ran"]
    assert result.records[1].seconds > 0 and result.records[1].verification["mode"] == "agreement"
    # the first instrument wraps the second: before in order, after in reverse
    assert calls == ["a before 1 test-prune-on-purpose", "b before 1 test-prune-on-purpose",
                     "b after 1 test-prune-on-purpose ran", "a after 1 test-prune-on-purpose ran",
                     "b exit False", "a exit False"]


def test_every_built_in_pass_declares_a_role():
    from sparsecc.passmanager import Role, is_planner

    passes = available_passes()
    assert all(cls.role in Role.ALL for cls in passes.values())
    planners = {name for name, cls in passes.items() if is_planner(cls)}
    assert planners == {"plan-groupwise", "plan-filters", "plan-24", "plan-deprune", "plan-from-zeros",
                        "plan-filters-from-zeros"}
    assert {name for name in planners if passes[name].detects} == {"plan-from-zeros", "plan-filters-from-zeros"}
    assert passes["apply-plan"].role == Role.APPLY and passes["groupwise-rewrite"].role == Role.LOWER


def test_trace_prints_why_each_rule_did_not_fire(cli, tmp_path):
    from graphs import init, make_model, randn, save
    from onnx import helper

    weight = randn(6, 4, 3, 3)
    weight[:, :, 0, 0] = 0.0  # one tap pruned in every channel: tap-gather applies, channel-gather does not
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "Wd"], ["z"], name="dense_conv", pads=[1, 1, 1, 1])]
    model = save(make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 6, 6, 6]), ("z", [1, 6, 6, 6])],
                            [init("W", weight), init("Wd", randn(6, 4, 3, 3))]), tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\npasses: [plan-from-zeros, apply-plan, groupwise-rewrite]\n")
    result = cli("compile", model, "--recipe", recipe, "-o", tmp_path / "out", "--trace", "--cost-model", "analytic",
                 check=True)
    assert "trace: groupwise-rewrite: conv: channel-gather did not fire: every input channel is read" in result.stderr
    assert "trace: groupwise-rewrite: dense_conv: not rewritten: dense: no all-zero group" in result.stderr
    quiet = cli("compile", model, "--recipe", recipe, "-o", tmp_path / "out2", "--cost-model", "analytic", check=True)
    assert "trace:" not in quiet.stderr
    assert "channel-gather: every input channel is read" in (tmp_path / "out2" / "report.md").read_text()


def test_passes_hand_on_through_typed_fields_only():
    import dataclasses

    types = {f.name: str(f.type) for f in dataclasses.fields(PassContext)}
    assert "state" not in types and not any("dict" in t for t in types.values())  # no free-form hand-off
    ctx = PassContext(_model())
    PassManager([make_pass("plan-from-zeros"), make_pass("apply-plan")]).run(ctx)
    assert [(r.name, r.role) for r in ctx.history] == [("plan-from-zeros", "plan"), ("apply-plan", "apply")]
    assert ctx.masked is not None and ctx.masked is not ctx.model and len(ctx.applied_plans) == 1
    assert ctx.details_of("plan-from-zeros") == {"patterns": {}} and ctx.details_of("fold-batchnorm") == {}
