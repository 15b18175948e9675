"""compile_model: plans in and out, multi-stage recipes, bad plans."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import conv_bn_relu_fc, save
from onnx import numpy_helper

from sparsecc.compiler import compile_model
from sparsecc.errors import OptionError, PlanError
from sparsecc.plan import SparsityPlan, WeightPlan


def _recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_external_plan_applies_to_a_model_with_batchnorm(tmp_path):
    """A plan made outside sparsecc names the weights as exported; BN folding must keep them."""
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "m.onnx")
    mask = np.ones((8, 4, 3, 3), bool)
    mask[:, 1] = False  # input channel 1 pruned in every tap
    plan = SparsityPlan(source="fine-tuning elsewhere")
    plan.add(WeightPlan("W", "conv0", "group-wise", mask))
    plan_path, _ = plan.save(tmp_path / "external" / "plan.json")
    result = compile_model(model, _recipe(tmp_path, "name: replay\npasses: [apply-plan, groupwise-rewrite]\n"),
                           tmp_path / "out", plan=plan_path)
    assert result.report["verification"]["exact"]["passed"]
    weight = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(result.model_path)).graph.initializer}
    assert not any(np.any(w[:, 1] != 0) for n, w in weight.items() if w.shape == (8, 4, 3, 3))


def test_plan_without_apply_plan_is_refused(tmp_path):
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "m.onnx")
    plan = SparsityPlan()
    plan.add(WeightPlan("W", "conv0", "group-wise", np.ones((8, 4, 3, 3), bool)))
    plan_path, _ = plan.save(tmp_path / "plan.json")
    with pytest.raises(OptionError, match="never applies a plan"):
        compile_model(model, "none", tmp_path / "out", plan=plan_path)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_bad_plan_file_is_a_clear_error(tmp_path):
    plan = SparsityPlan()
    plan.add(WeightPlan("W", "conv0", "group-wise", np.ones((2, 2), bool)))
    path, _ = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    data["weights"][0]["shape"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"weights\[0\]\.shape is None"):
        SparsityPlan.load(path)


@pytest.mark.slow
def test_multi_stage_recipe_writes_one_plan_per_stage_matching_its_graph(tmp_path):
    from sparsecc.zoo import checkpoint_path

    result = compile_model(checkpoint_path("resnet18-digits"), "hybrid-24", tmp_path / "out",
                           shapes={"input": (1, 1, 32, 32)})
    out = tmp_path / "out"
    assert (out / "plan.json").exists() and (out / "plan.stage2.json").exists()
    final = {t.name: t.dims for t in onnx.load(str(result.model_path)).graph.initializer}
    stage2 = SparsityPlan.load(out / "plan.stage2.json")
    assert stage2.entries and all(e.pattern == "2:4" for e in stage2.entries.values())
    for entry in stage2.entries.values():  # the last stage describes the compiled model's weights
        assert list(entry.mask.shape) == list(final[entry.weight])
    first = SparsityPlan.load(out / "plan.json")
    assert {e.pattern for e in first.entries.values()} == {"filter"}
    assert "plan.stage2.json" in (out / "report.md").read_text()


def test_final_exact_check_never_compares_the_model_with_itself(tmp_path):
    """24-only ends with apply-plan: the compiled model is the masked original, so the exact result
    is the exact passes' own checks (permute-channels-24 against the graph before it)."""
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "m.onnx")
    report = compile_model(model, "24-only", tmp_path / "out").report
    verification = report["verification"]
    assert verification["against"].startswith("graph before each exact pass")
    assert verification["exact"]["passed"]
    checked = verification["exact"]["passes"]
    ran = [p["name"] for p in report["passes"] if p.get("verification", {}).get("mode") == "exact"]
    assert checked and checked == ran
    assert "agreement_with_unpruned" in verification
