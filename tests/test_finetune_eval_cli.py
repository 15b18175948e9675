"""`sparsecc eval` and `sparsecc finetune` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from graphs import init, make_model, randn, save
from onnx import helper

from sparsecc.zoo import checkpoint_path


def test_eval_json_scores_the_bundled_checkpoint_as_its_manifest_says(cli):
    result = cli("eval", checkpoint_path("resnet18-digits"), "--data", "digits", "--json", check=True)
    scored = json.loads(result.stdout)
    manifest = json.loads((checkpoint_path("resnet18-digits").parent / "manifest.json").read_text())
    assert scored["n"] == manifest["resnet18-digits"]["val_samples"] == 360
    assert scored["top1"] == pytest.approx(manifest["resnet18-digits"]["val_accuracy"])
    assert "scoring" in result.stderr  # progress goes to stderr, stdout stays JSON


def test_eval_of_an_unknown_data_set_or_a_model_that_does_not_fit_is_exit_2(cli, tmp_path):
    result = cli("eval", checkpoint_path("resnet18-digits"), "--data", "imagenet")
    assert result.returncode == 2 and "unknown data set 'imagenet'" in result.stderr
    rgb = save(make_model([helper.make_node("Conv", ["x", "W"], ["y"], name="c")], [("x", [1, 3, 32, 32])],
                          [("y", [1, 4, 30, 30])], [init("W", randn(4, 3, 3, 3))]), tmp_path / "rgb.onnx")
    result = cli("eval", rgb, "--data", "mnist5k")
    assert result.returncode == 2 and "does not fit data set 'mnist5k'" in result.stderr


def test_finetune_needs_a_recipe_or_a_plan_and_an_arch_for_onnx_files(cli, tmp_path):
    pytest.importorskip("torch")
    result = cli("finetune", "vgg16-digits", "--data", "digits", "-o", tmp_path / "o")
    assert result.returncode == 2 and "either --recipe or --plan" in result.stderr
    result = cli("finetune", checkpoint_path("vgg16-digits"), "--data", "digits", "--recipe", "groupwise-50",
                 "-o", tmp_path / "o")
    assert result.returncode == 2 and "needs --arch" in result.stderr
    result = cli("finetune", "vgg16-digits", "--data", "digits", "--recipe", "hybrid-24", "-o", tmp_path / "o")
    assert result.returncode == 2 and "cannot be fine-tuned in PyTorch" in result.stderr


@pytest.mark.slow
def test_finetune_writes_a_model_that_compile_finds_the_structure_in(cli, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "ft"
    result = cli("finetune", checkpoint_path("vgg16-digits"), "--arch", "vgg16-digits", "--data", "digits",
                 "--recipe", "groupwise-50", "--epochs", "1", "--train-limit", "128", "-o", out, "--json",
                 check=True)
    summary = json.loads(result.stdout)
    assert summary["n"] == 360 and summary["onnx_top1"] == pytest.approx(summary["top1"])
    assert summary["top1"] > summary["top1_before_finetune"]  # one short epoch already recovers a lot
    assert "epoch 1/1" in result.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["weights"] and all(w["pattern"] == "group-wise" for w in plan["weights"])
    cli("compile", out / "model.onnx", "--recipe", "zeros", "--shape", "input:1x1x32x32", "-o", tmp_path / "c",
        check=True)
    found = json.loads((tmp_path / "c" / "plan.json").read_text())
    kept = {w["weight"]: w["kept_fraction"] for w in found["weights"]}
    assert {w["weight"] for w in plan["weights"]} <= set(kept)
    # detect mode finds every planned zero; where a whole input channel lost all its taps it also finds
    # that channel unread and removes its producer's filter, so a producer's kept share can only fall
    assert all(kept[w["weight"]] <= w["kept_fraction"] + 1e-6 for w in plan["weights"])
    assert any(kept[w["weight"]] == pytest.approx(w["kept_fraction"], abs=1e-6) for w in plan["weights"])
    scored = json.loads(cli("eval", tmp_path / "c" / "model.onnx", "--data", "digits", "--json", check=True).stdout)
    assert scored["top1"] == pytest.approx(summary["onnx_top1"])
    assert np.isfinite(scored["top1"])


def test_the_next_step_names_the_detect_recipe_that_finds_the_plans_structure(tmp_path):
    from sparsecc.commands.finetune import detect_recipe
    from sparsecc.plan import SparsityPlan, WeightPlan

    for pattern, expected in (("depthwise-taps", "deprune-zeros"), ("group-wise", "zeros")):
        plan = SparsityPlan()
        plan.add(WeightPlan("w", "conv", pattern, np.ones((4, 1, 3, 3), bool)))
        (tmp_path / pattern).mkdir()
        plan.save(tmp_path / pattern / "plan.json")
        assert detect_recipe(tmp_path / pattern) == expected
    assert detect_recipe(tmp_path / "missing") == "zeros"


def test_finetune_of_a_missing_file_or_with_a_bad_recipe_is_exit_2_and_leaves_no_folder(cli, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "o"
    result = cli("finetune", tmp_path / "nosuch.onnx", "--arch", "resnet18-digits", "--data", "digits",
                 "--recipe", "groupwise-50", "-o", out)
    assert result.returncode == 2 and "the file does not exist" in result.stderr and "Traceback" not in result.stderr
    result = cli("finetune", "vgg16-digits", "--data", "digits", "--recipe", "nosuch", "-o", out)
    assert result.returncode == 2 and "nosuch" in result.stderr
    assert not out.exists()  # refused before the output folder was made
