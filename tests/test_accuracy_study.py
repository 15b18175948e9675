"""tools/accuracy_study.py: the DEPrune rows (recipes the torch side can stage, the DCP-B verdict in images)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "accuracy_study.py"


def _tool():
    spec = importlib.util.spec_from_file_location("accuracy_study", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deprune_variants_share_one_ratio_and_are_fine_tunable():
    pytest.importorskip("torch")
    import sparsecc.finetuning as st

    tool = _tool()
    rows = [v for v in tool.variants([0.4], dw_ratio=0.7, pw_ratio=0.25) if v["family"] == "deprune"]
    assert [v["method"] for v in rows] == ["dcp", "bwt", "bwt-hsr"]
    for v in rows:
        assert v["compile"] == "deprune-zeros"
        (name, options), = st.planning_passes(v["recipe"])
        assert name == "plan-deprune" and options["dw_ratio"] == 0.7 and options["pw_ratio"] == 0.25


def _row(label, top1, family="deprune"):
    return {"family": family, "label": label, "setting": "", "top1_one_shot": 0.1, "top1": top1, "macs": 100}


def test_dcp_b_verdict_counts_images_against_half_a_point():
    tool = _tool()
    study = {"model": "m", "data": "d", "n": 1000, "epochs": 2, "dense_epochs": 0, "threads": 1, "runs": 3,
             "load_average": [1, 1, 1], "rows": [_row("dense", 0.98, "dense"), _row("deprune", 0.950),
                                                 _row("deprune-b", 0.946), _row("deprune-bh", 0.944)]}
    text = "\n".join(tool._orderings(study))
    assert "deprune-b within 0.5 points (5 images) of DCP at the same ratio after fine-tuning: yes" in text
    assert "(94.6% vs 95.0%: -4 images of 1000)" in text
    assert "deprune-bh within 0.5 points (5 images) of DCP at the same ratio after fine-tuning: NO" in text
    assert "## deprune" in tool.render(study)
