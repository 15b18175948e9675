"""`sparsecc demo`: fine-tuned and one-shot variants side by side, without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sparsecc import zoo

# The demo must run where torch is not installed: the subprocess makes `import torch` fail
# (a finder that refuses it, so nothing can find a half-imported torch either).
_NO_TORCH = ("import sys, importlib.abc\n"
             "class Refuse(importlib.abc.MetaPathFinder):\n"
             "    blocked = ('torch',)\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in self.blocked: raise ImportError(f'{name} blocked by the test')\n"
             "sys.meta_path.insert(0, Refuse())\n")


def _run_demo(out, *extra: str, block: str = "") -> subprocess.CompletedProcess:
    code = (_NO_TORCH + block + "from sparsecc.cli import main\n"
            f"sys.exit(main(['demo', '-o', {str(out)!r}, '--recipe', 'none', '--recipe', 'groupwise-50', "
            f"'--runs', '3', *{list(extra)!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_demo_shows_fine_tuned_accuracy_next_to_dense_and_marks_one_shot_chance(tmp_path):
    finetuned = zoo.finetuned_checkpoints("resnet18-digits")
    assert {f["recipe"] for f in finetuned} >= {"groupwise-50"}  # bundled and listed in the manifest
    result = _run_demo(tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    for row in rows.values():
        assert {"recipe", "top1", "dense_top1", "speedup", "ideal", "kind"} <= set(row), row
        assert row["dense_top1"] == rows["none"]["top1"]
    assert rows["none"]["kind"] == "dense" and rows["groupwise-50"]["kind"] == "one-shot"
    kinds = [r["kind"] for r in report["rows"]]
    assert kinds == sorted(kinds, key=["dense", "fine-tuned", "one-shot"].index)  # dense, fine-tuned, one-shot
    tuned = rows["groupwise-50 + fine-tune"]
    assert tuned["kind"] == "fine-tuned" and tuned["compile_recipe"] == "zeros"
    assert tuned["top1"] >= tuned["dense_top1"] - 0.01  # within 1 point of dense (360 images)
    manifest = next(f for f in finetuned if f["recipe"] == "groupwise-50")
    assert tuned["top1"] == pytest.approx(manifest["top1"], abs=1e-4)  # what the manifest says
    # chance is marked where it is reached, and only there
    assert report["chance_top1"] == 0.1
    for row in rows.values():
        assert row["at_chance"] == (row["top1"] < 0.15)
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert "Columns:" in markdown and "**speedup [90% CI]**" in markdown and "chance is 10%" in markdown
    # every speed figure has its interval, and the report states the timing noise with the load
    assert all(r["speedup_ci"][0] <= r["speedup"] <= r["speedup_ci"][1] for r in rows.values())
    assert "**Timing noise**: Load average" in markdown and report["timing"]["load"]["cores"] >= 1
    assert "(finetuned-groupwise-50/report.md)" in markdown and "(groupwise-50/report.md)" in markdown
    assert (tmp_path / "demo" / "finetuned-groupwise-50" / "report.md").is_file()
    assert all(r["q25_ms"] <= r["median_ms"] <= r["q75_ms"] for r in rows.values())
    assert report["plot"]["file"] == "tradeoff.png" and (tmp_path / "demo" / "tradeoff.png").stat().st_size > 0


@pytest.mark.slow
def test_demo_without_matplotlib_skips_the_plot_with_a_note(tmp_path):
    result = _run_demo(tmp_path / "demo", "--no-finetuned", block="Refuse.blocked = ('torch', 'matplotlib')\n")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["plot"]["file"] is None and "matplotlib is not installed" in report["plot"]["note"]
    assert not (tmp_path / "demo" / "tradeoff.png").exists()
    assert "matplotlib is not installed" in (tmp_path / "demo" / "report.md").read_text()
    assert [(r["variant"], r["kind"]) for r in report["rows"]] == [("none", "dense"), ("groupwise-50", "one-shot")]


def test_the_demo_runs_the_recipes_that_fit_the_model_and_says_which_it_leaves_out():
    from sparsecc.demo import _recipes_for
    from sparsecc.recipe import builtin_recipes

    recipes = builtin_recipes()
    for model, has_depthwise in (("resnet18-digits", False), ("mobilenetv2-digits", True)):
        entry = zoo.get_entry(model)
        shapes = {spec.name: tuple(spec.shape) for spec in entry.inputs}
        chosen, left_out = _recipes_for(zoo.checkpoint_path(model), shapes, recipes)
        why = {r["recipe"]: r["why"] for r in left_out}
        assert set(chosen) | set(why) == set(recipes) and not set(chosen) & set(why)
        # TensorRT recipes make plugin nodes ONNX Runtime cannot time; never in the demo
        assert "tensorrt-groupwise-50" in why and "TensorRT" in why["tensorrt-groupwise-50"]
        assert ("deprune-bh" in chosen) == has_depthwise
        assert {"none", "groupwise-50", "filter-l1", "detect"} <= set(chosen)


def _timed(variant, kind, ideal, wall, wall_ci, cpu, cpu_ci):
    return {"variant": variant, "kind": kind, "ideal": ideal, "speedup": wall, "speedup_ci": wall_ci,
            "cpu_speedup": cpu, "cpu_speedup_ci": cpu_ci}


_HEAVY = {"before": [7.5, 7, 7], "after": [7.9, 7, 7], "cores": 2, "level": "heavy", "per_core": 3.95}
_QUIET = {"before": [0.3, 0.3, 0.3], "after": [0.4, 0.3, 0.3], "cores": 2, "level": "quiet", "per_core": 0.2}


def test_the_noise_statement_names_figures_that_mean_nothing():
    from sparsecc.demo import _noise_statement

    rows = [_timed("none", "dense", 1.0, 1.0, [1.0, 1.0], 1.0, [1.0, 1.0]),
            _timed("zeros", "detect", 1.0, 0.7, [0.6, 0.8], 0.98, [0.95, 1.02]),
            _timed("groupwise-50", "one-shot", 1.4, 1.1, [0.9, 1.3], 1.3, [1.2, 1.4]),
            _timed("filter-l1", "one-shot", 1.6, 1.4, [1.3, 1.5], 1.5, [1.4, 1.6])]
    text = _noise_statement(_HEAVY, rows, 2)
    assert "too busy to trust any speed figure" in text and "7.50 -> 7.90 on 2 cores" in text
    assert "too busy" not in _noise_statement(_HEAVY, rows, 1)  # one thread: CPU time still holds at 4 per core
    assert "Same work as dense (ideal within 1% of 1x), so any speed figure away from 1 is noise: zeros." in text
    assert "zeros measured wall clock 0.70x [0.60, 0.80] and CPU time 0.98x [0.95, 1.02]: noise" in text
    # each measure speaks for itself: zeros' wall-clock interval excludes 1, its CPU-time interval does not
    assert "No measurable difference from dense by wall clock (the 90% wall-clock interval includes 1): " \
           "groupwise-50." in text
    assert "No measurable difference from dense by CPU time (the 90% CPU-time interval includes 1): zeros." in text
    assert "disturbed" not in text  # zeros' CPU time is level with dense, as the same work should be
    assert "filter-l1" not in text


def test_the_noise_statement_never_contradicts_the_table():
    """Same work within the tolerance (ideal 1.0008x): wall clock level with dense, CPU time clearly below it."""
    from sparsecc.demo import _noise_statement

    rows = [_timed("none", "dense", 1.0, 1.0, [1.0, 1.0], 1.0, [1.0, 1.0]),
            _timed("groupwise-75", "one-shot", 1.0008, 1.14, [0.96, 1.36], 0.74, [0.55, 0.92])]
    text = _noise_statement(_QUIET, rows, 1)
    assert "so any speed figure away from 1 is noise: groupwise-75." in text
    assert "groupwise-75 measured wall clock 1.14x [0.96, 1.36] and CPU time 0.74x [0.55, 0.92]: noise, " \
           "not a speedup." in text
    assert "The CPU-time interval of groupwise-75 excludes 1 although the work is the same: a sign the " \
           "measurement was disturbed" in text
    assert "(the 90% wall-clock interval includes 1): groupwise-75." in text
    assert "CPU-time interval includes 1" not in text  # 0.74x [0.55, 0.92] does not include 1


def test_same_work_means_within_one_percent_of_dense():
    from sparsecc.demo import _noise_statement
    from sparsecc.measure.readout import SAME_WORK_TOLERANCE, same_work

    assert SAME_WORK_TOLERANCE == 0.01
    assert same_work(1.0) and same_work(1.0008) and same_work(0.995) and not same_work(1.02) and not same_work(None)
    rows = [_timed("close", "one-shot", 1.009, 1.005, [0.99, 1.02], 1.002, [0.99, 1.01]),
            _timed("apart", "one-shot", 1.05, 1.04, [1.02, 1.06], 1.05, [1.03, 1.07])]
    text = _noise_statement(_QUIET, rows, 1)
    assert "noise: close." in text and "apart" not in text
    # measured within the tolerance of 1, as the same work should: no figure is called noise, nothing disturbed
    assert "close measured" not in text and "disturbed" not in text
    assert "(the 90% CPU-time interval includes 1): close." in text
