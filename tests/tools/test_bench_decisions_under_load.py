"""tools/bench_decisions_under_load.py: what it reads from a report, its checks and its table (no timing here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_decisions_under_load.py"
spec = importlib.util.spec_from_file_location("bench_decisions_under_load", TOOL)
tool = importlib.util.module_from_spec(spec)
sys.modules["bench_decisions_under_load"] = tool
spec.loader.exec_module(tool)

REPORT = {"passes": [
    {"name": "groupwise-rewrite", "details": {
        "layers": {"a": {"lowering": "tap-gather"}, "b": {"lowering": "dense"}, "c": {"fold": "x"}},
        "model_check": {"kept": True, "decided_by": "CPU time", "reason": "r",
                        "evidence": {"cpu": {"estimate": 1.3}, "wall": {"estimate": 1.2}}}}},
    {"name": "deprune-model-check", "details": {"kept": True}}]}


def _compile(macs, sha, claimed=1.3):
    return {"macs_before": 100, "macs_after": macs, "sha256": sha, "seconds": 1.0, "load_before": 0.5,
            "load_after": 0.6, "decisions": {"groupwise-rewrite": {"a": "tap-gather"}} if macs == 60 else {},
            "claimed": {"cpu": claimed, "wall": claimed, "kept": True, "decided_by": "CPU time", "reason": ""}}


def _bench(ci):
    return {"speedup": sum(ci) / 2, "speedup_ci": ci, "cpu_speedup": sum(ci) / 2, "cpu_speedup_ci": ci,
            "load": {"before": [0.5], "after": [0.5], "level": "quiet"}, "notes": [], "ideal": 1.5}


def test_decisions_and_the_claim_come_from_the_report():
    assert tool.decisions(REPORT) == {"groupwise-rewrite": {"a": "tap-gather", "b": "dense"},
                                      "groupwise-rewrite:kept": True, "deprune-model-check:kept": True}
    assert tool.claimed_speedup(REPORT, "groupwise-50")["cpu"] == 1.3
    assert tool.claimed_speedup(REPORT, "deprune-bh") is None  # nothing timed (analytic)


def test_checks_and_table():
    case = {"recipe": "groupwise-50", "source": "resnet18", "quiet": _compile(60, "aa"),
            "loaded": [_compile(60, "aa"), _compile(80, "bb")], "reused": _compile(60, "aa"),
            "quiet_remeasured": {"cpu_speedup": 1.25}, "analytic_none": _compile(70, "cc"),
            "analytic_loaded_cache": _compile(70, "cc"), "analytic_quiet_cache": _compile(70, "cc"),
            "bench_quiet": {1: _bench([1.2, 1.3])}, "bench_loaded": {1: _bench([1.35, 1.5])}}
    checks = tool.checks(case)
    assert checks["loaded_same_macs"] == [True, False] and checks["loaded_same_decisions"] == [True, False]
    assert checks["claim_vs_remeasured"] == round(1.25 / 1.3, 4) and checks["claim_within_10pct"]
    assert checks["reused_loaded_cache_gives_quiet_decisions"] and checks["analytic_identical"]
    assert checks["bench_wall_overlap"] == {1: False}
    case["checks"] = checks
    text = tool.markdown({"environment": {"cpu": "x", "cpu_count": 2, "onnxruntime": "1"}, "settings": {"busy": 2},
                          "seconds": 1.0, "cases": {"resnet18": case, "broken": {"errors": ["quiet compiles: boom"]}}})
    assert "| resnet18 | 1/2 | 1/2 | 0.9615 (yes) | yes | yes | 1 thr: wall NO / CPU NO |" in text
    assert "- broken: quiet compiles: boom" in text


def test_busy_loops_end_with_the_block():
    with tool.BusyLoops(1, 0.0) as loops:
        process = loops.processes[0]
        assert process.poll() is None
    assert process.poll() is not None


def test_help():
    out = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--loaded-compiles" in out and "--busy" in out
