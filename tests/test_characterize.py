"""The characterisation study: shapes, masks and work counts, break-even arithmetic, a quick run and the CLI.

Timings are only checked for being positive numbers: no wall-clock bound or speedup is asserted.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from sparsecc.study import (SHAPE_SETS, GemmShape, Measurement, StudyConfig, break_even, conv, crossing, format_table,
                            plot_study, render_markdown, run_study)
from sparsecc.study.variants import groupwise_rows, layer_weight, pattern_masks, torch_variants, weight_kn
from sparsecc.errors import OptionError

SPARSE_LABELS = {"element-wise/torch-csr", "vector-wise/torch-csr", "block-wise/torch-bsr", "group-wise/torch"}


def test_conv_is_its_im2col_gemm():
    shape = conv("ResNet-18", "layer2.0.conv1", 64, 128, 56, stride=2)
    assert (shape.m, shape.k, shape.n) == (28 * 28, 64 * 9, 128)
    patch = conv("ViT", "patch", 3, 768, 224, kernel=16, stride=16, pad=0)
    assert (patch.m, patch.k, patch.n) == (196, 768, 768)
    bert = {(s.m, s.k, s.n) for s in SHAPE_SETS["default"] if s.model == "BERT-base"}
    assert bert == {(128, 768, 768), (128, 768, 3072), (128, 3072, 768)}
    assert {s.model for s in SHAPE_SETS["default"]} == {"VGG-16", "ResNet-18", "ViT", "BERT-base"}
    assert set(SHAPE_SETS["quick"]) < set(SHAPE_SETS["full"])


def test_conv_weight_rows_follow_im2col_order():
    shape = conv("t", "c", 2, 3, 4, kernel=2, pad=0)
    weight = np.arange(3 * 2 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 2)
    w_kn = weight_kn(shape, weight)
    assert w_kn.shape == (shape.k, shape.n) == (8, 3)
    # row (c_in=1, i=0, j=1) is index 1*4 + 0*2 + 1 = 5, across every output channel
    np.testing.assert_array_equal(w_kn[5], weight[:, 1, 0, 1])


@pytest.mark.parametrize("shape", [conv("t", "c", 16, 24, 6), GemmShape("t", "fc", 5, 64, 32)])
def test_variants_work_counts_follow_the_share_kept(shape):
    rng = np.random.default_rng(0)
    weight = layer_weight(shape, rng)
    w_kn = weight_kn(shape, weight)
    x_t = rng.standard_normal((shape.k, shape.m), dtype=np.float32)
    config = StudyConfig(block=(8, 8))
    previous = None
    for keep in (0.75, 0.5, 0.25):
        masks, skipped = pattern_masks(shape, w_kn, keep, config)
        assert skipped == []
        rows = groupwise_rows(shape, weight, keep, "l1")
        assert len(rows) == round(keep * shape.k)  # group-wise GEMM K' = kept share of K
        # torch_variants checks every variant against the masked dense GEMM before returning it
        variants = {v.label: v for v in torch_variants(shape, w_kn, x_t, masks, rows, config.block)}
        assert set(variants) == SPARSE_LABELS | {"dense/torch"}
        assert variants["dense/torch"].macs == shape.macs
        group = variants["group-wise/torch"]
        assert group.k_kept == len(rows) and group.macs == shape.m * len(rows) * shape.n
        assert variants["element-wise/torch-csr"].nnz == round(keep * w_kn.size)
        assert variants["vector-wise/torch-csr"].nnz == round(keep * 4) * w_kn.size // 4
        assert variants["block-wise/torch-bsr"].nnz == masks["block-wise"].sum()
        counts = {label: v.nnz for label, v in variants.items() if label != "dense/torch"}
        if previous:
            assert all(counts[label] < previous[label] for label in counts)  # fewer weights as fewer are kept
        previous = counts


def test_pattern_that_does_not_fit_is_skipped_with_reason():
    shape = GemmShape("t", "fc", 3, 12, 8)
    masks, skipped = pattern_masks(shape, np.ones((12, 8), np.float32), 0.5, StudyConfig(vector=5, block=(8, 8)))
    assert set(masks) == {"element-wise"}
    reasons = {s["pattern"]: s["reason"] for s in skipped}
    assert set(reasons) == {"vector-wise", "block-wise"}
    assert "multiple" in reasons["vector-wise"] and "does not tile" in reasons["block-wise"]


def test_crossing_interpolates_between_measured_shares():
    assert crossing([(0.25, 1.5), (0.5, 0.5), (0.75, 0.2)]) == {"pruned": 0.375,
                                                                 "how": "interpolated between measured shares"}
    assert crossing([(0.5, 0.9), (0.25, 0.8)])["pruned"] == 0.25  # faster at the least-pruned share
    assert crossing([(0.25, 0.8)])["how"].startswith("faster already")
    never = crossing([(0.25, 3.0), (0.5, 2.0), (0.75, 1.2)])
    assert never["pruned"] is None and "75%" in never["how"]


def _measurement(layer, keep, label, ratio):
    pattern, library = label.split("/")
    return Measurement("M", layer, 1, 8, 8, keep, pattern, library, "cpu", "dense/torch", ratio, ratio, 3, ratio,
                       1, 1, keep)


def test_break_even_per_shape_and_overall_geometric_mean():
    ms = [_measurement("a", 0.75, "group-wise/torch", 2.0), _measurement("a", 0.25, "group-wise/torch", 0.5),
          _measurement("b", 0.75, "group-wise/torch", 0.5), _measurement("b", 0.25, "group-wise/torch", 0.5),
          _measurement("a", 0.75, "dense/torch", 1.0)]
    data = break_even(ms)["cpu"]["group-wise/torch"]
    assert data["per_shape"]["M a"]["pruned"] == pytest.approx(0.25 + 0.5 * (2 - 1) / (2 - 0.5), abs=1e-4)
    assert data["per_shape"]["M b"]["how"].startswith("faster already")
    assert data["overall_ratio"] == {"0.75": 1.0, "0.25": 0.5}  # sqrt(2 * 0.5), sqrt(0.5 * 0.5)
    assert data["overall"]["pruned"] == pytest.approx(0.25)


def test_bad_options_are_user_errors():
    for config in (StudyConfig(shapes="huge"), StudyConfig(runs=0), StudyConfig(keeps=(1.0,)),
                   StudyConfig(libraries=("mkl",)), StudyConfig(block=(0, 8)), StudyConfig(vector=0),
                   StudyConfig(ort_lowering="fastest")):
        with pytest.raises(OptionError):
            config.validate()


@pytest.mark.slow
def test_quick_study_has_every_pattern_and_ratio(tmp_path):
    result = run_study(StudyConfig(shapes="quick", runs=2, warmup=0), progress=lambda line: None)
    by_cell = {}
    for m in result.measurements:
        by_cell.setdefault((m.layer, m.keep), set()).add(f"{m.pattern}/{m.library}")
        assert m.median_ms > 0 and m.min_ms > 0 and m.ratio > 0 and m.runs == 2
        if m.pattern == "group-wise":
            assert m.k_kept == round(m.keep * m.k)
    assert len(by_cell) == 2 * 3
    for labels in by_cell.values():
        assert labels == SPARSE_LABELS | {"dense/torch", "dense/ort", "group-wise/ort"}
    table = format_table(result)
    for label in SPARSE_LABELS | {"group-wise/ort"}:
        assert label in table
    assert "Break-even" in table and "threads" in table.lower()
    data = result.to_dict()
    assert set(data["break_even"]["cpu"]) == SPARSE_LABELS | {"group-wise/ort"}
    assert data["gpu"]["available"] in (True, False) and (data["gpu"]["available"] or data["gpu"]["reason"])
    plot = tmp_path / "study.png"
    plot_study(result, str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = render_markdown(result, "study.png")
    assert "| model |" in markdown and "![latency relative to dense](study.png)" in markdown


@pytest.mark.slow
def test_cli_quick_json(tmp_path):
    out = tmp_path / "study.json"
    proc = subprocess.run([sys.executable, "-m", "sparsecc.cli", "characterize", "--quick", "--runs", "2",
                           "--warmup", "0", "--json-out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[1/2]" in proc.stderr  # progress on stderr
    assert "group-wise/torch" in proc.stdout
    data = json.loads(out.read_text())
    printed = subprocess.run([sys.executable, "-m", "sparsecc.cli", "characterize", "--quick", "--runs", "1",
                              "--warmup", "0", "--no-ort", "--json"], capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0 and json.loads(printed.stdout)["config"]["runs"] == 1
    assert {"config", "environment", "clock", "gpu", "shapes", "measurements", "skipped", "break_even"} <= set(data)
    assert data["config"]["runs"] == 2 and data["environment"]["torch_threads"] == 2
    assert len(data["shapes"]) == 2
    for m in data["measurements"]:
        for key in ("median_ms", "min_ms", "ratio"):
            assert isinstance(m[key], float) and m[key] > 0
    patterns = {m["pattern"] for m in data["measurements"]}
    assert patterns == {"dense", "element-wise", "vector-wise", "block-wise", "group-wise"}


@pytest.mark.parametrize("option,value", [("--block", "8"), ("--keeps", "75,half"), ("--keeps", "100,50")])
def test_cli_rejects_bad_options(option, value):
    proc = subprocess.run([sys.executable, "-m", "sparsecc.cli", "characterize", "--quick", option, value],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and proc.stdout == ""
