"""tools/gpu_bench.py: its CPU-side parts (layer shapes, case lists, report) and its refusal without a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
TOOL = Path(__file__).resolve().parents[2] / "tools" / "gpu_bench.py"
spec = importlib.util.spec_from_file_location("gpu_bench", TOOL)
gpu_bench = importlib.util.module_from_spec(spec)
sys.modules["gpu_bench"] = gpu_bench  # dataclasses look their module up
spec.loader.exec_module(gpu_bench)


def test_layer_shapes_from_the_zoo_models():
    convs, linears = gpu_bench.model_layers("resnet18")
    assert len(convs) == 20 and linears == [("fc", 512, 1000)]
    first = convs[0]
    assert (first.cin, first.cout, first.kh, first.stride, first.h, first.oh) == (3, 64, 7, 2, 224, 112)
    dw = [c for c in gpu_bench.model_layers("mobilenetv2")[0] if c.depthwise]
    assert len(dw) == 17 and dw[0].cin == 32 and dw[-1].cin == 960 and dw[-1].h == 7
    assert all(c.k == c.kh * c.kw for c in dw)


def test_case_lists():
    gw = gpu_bench.groupwise_cases(models=("resnet18",))
    convs = [c for c in gw if c["kind"] == "conv"]
    # ResNet-18's distinct dense convs, without the RGB stem, each at 75/50/25 % kept
    assert len(convs) % 3 == 0 and {c["kept_fraction"] for c in convs} == {0.75, 0.5, 0.25}
    c50 = next(c for c in convs if c["shape"].cin == 512 and c["shape"].kh == 3 and c["kept_fraction"] == 0.5)
    assert c50["kept"] == 512 * 9 // 2
    dw = gpu_bench.depthwise_cases(models=("mobilenetv2",))
    assert all(c["groups"] == -(-c["shape"].cin // 32) for c in dw)
    assert gpu_bench.dw_kept_per_group(3, 3, 0.847) == 45          # ceil(0.153 * 288)
    assert gpu_bench.dw_kept_per_group(5, 5, 0.847) == 123         # ceil(0.153 * 800)
    tf = gpu_bench.two_four_cases(models=("resnet18",))
    assert tf and all(c["shape"].k % 64 == 0 and c["shape"].cout % 32 == 0 for c in tf)


def test_report_rendering_and_targets():
    results = {
        "groupwise": [{"model": "vgg16", "layer": "f.1", "shape": "64->64", "kind": "conv", "kept_fraction": 0.5,
                       "times_ms": {"cublas_dense": 1.0, "cudnn_dense": 0.9, "groupwise": 0.625},
                       "speedup_vs_cublas": 1.6, "ideal": 2.0, "efficiency": 0.8, "max_rel_error": 1e-3}],
        "depthwise": [{"model": "efficientnet-b0", "layer": "b.1", "shape": "C=240", "ratio": 0.847,
                       "kept_per_group": 123, "times_ms": {"cudnn_depthwise_dense": 0.2, "dw_subgemm": 0.25},
                       "speedup_vs_cudnn": 0.8, "ideal": 6.5, "max_rel_error": 1e-3}],
        "two_four": [],
    }
    summary = gpu_bench.summarise(results)
    assert summary["groupwise_efficiency_at_50"]["met"] is True
    assert summary["depthwise_speedup_efficientnet_b0"]["met"] is False
    assert summary["two_four_speedup_c256"]["met"] is None
    md = gpu_bench.render_markdown({"environment": {"gpu": "H200", "capability": "90"}, "reps": 20, "warmup": 5,
                                    "results": results, "summary": summary, "skipped": ["two_four: x (time budget)"]})
    assert "| groupwise_efficiency_at_50 | 1 | 0.8 | 0.8 | 0.7 | yes |" in md
    assert "| vgg16 | f.1 | 64->64 | 0.5 | 1 | 0.9 | 0.625 | 1.6 | 2 | 0.8 | 0.001 |" in md
    assert "not measured" in md and "Skipped (1)" in md


@pytest.mark.skipif(gpu_bench.gpu_missing_reason() is None, reason="a GPU is visible: the bench would run")
def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot run here" in result.stderr and "nothing was measured" in result.stderr
    assert not (tmp_path / "out").exists()
