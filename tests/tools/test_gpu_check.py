"""tools/gpu_check.sh: its dry run on the CPU (everything up to the CUDA calls), its refusal without a GPU."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsecc.plugins.trt_offline import plugin_layer_missing_reason

pytest.importorskip("torch")
pytest.importorskip("triton", reason="triton is not installed (pip install 'sparsecc[test]')")
TOOLS = Path(__file__).resolve().parents[2] / "tools"
SCRIPT = TOOLS / "gpu_check.sh"
LAYER_REASON = plugin_layer_missing_reason()
pytestmark = pytest.mark.skipif(LAYER_REASON is not None, reason=str(LAYER_REASON))


def _tool():
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", TOOLS / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(TOOLS))


def _run(*args, timeout=600):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_dry_run_goes_up_to_the_cuda_calls(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["failed"] == [] and report["arch"] == 90
    kernels = report["kernels"]
    assert {(k["op"], k["dtype"], k["tf32"]) for k in kernels} == {
        (op, dt, tf) for op in ("GroupwiseConv", "DepthwiseSubGemm", "GroupwiseLinear")
        for dt, tf in (("fp16", False), ("fp32", False), ("fp32", True))}
    for k in kernels:
        assert k["request"] == "STRICT_AOT" and k["kernel"].startswith("sparsecc_")
        assert k["ptx_parameters"] == k["arguments"] and k["block"] == [128, 1, 1]
        assert k["shared_mem"] <= 48 * 1024
    interpreted = [k for k in kernels if k["ran"] == "triton interpreter"]
    assert len(interpreted) >= 15 and all(k["passed"] for k in interpreted)
    assert len({k["kernel"] for k in kernels}) >= 12  # dtype, TF32, block height and hints each a variant
    assert all(n > 0 for n in report["bench"]["cases"].values())
    assert report["tensorrt_tests"]["ran"] is False and report["tensorrt_tests"]["reason"]


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    gpu_check = _tool()
    if gpu_check.gpu_missing_reason() is None:
        pytest.skip("a GPU is visible: the check would run")
    result = _run("--out", str(tmp_path / "out"), timeout=300)
    assert result.returncode == 2 and "cannot run here" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_launch_passes_inputs_int32_scalars_then_the_output():
    from sparsecc.plugins.trt_offline import Launch

    gpu_check = _tool()
    launch = Launch("k", "", (1, 1, 1), (128, 1, 1), 0, [3, -1, 7], [(1,)])
    args = gpu_check.launch_arguments(launch, [0x1000, 0x2000, 0x3000])
    assert [type(a) for a in args] == [ctypes.c_uint64] * 2 + [ctypes.c_int32] * 3 + [ctypes.c_uint64]
    assert [a.value for a in args] == [0x1000, 0x2000, 3, -1, 7, 0x3000]
