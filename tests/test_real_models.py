"""Graphs sparsecc did not make: real trained ONNX models shipped inside PyPI packages.

Fetched by tools/fetch_real_models.py (never committed). They bring dynamic
dimensions, Constant-node weights, unfused BatchNorm and opsets 11-15.
"""

from __future__ import annotations

import json

import onnx
import pytest

SHAPES = {"rec": "x:1x3x48x320", "cls": "x:1x3x48x192", "det": "x:1x3x128x128"}


def _shape_for(path):
    return next((shape for key, shape in SHAPES.items() if f"_{key}_" in path.name), "x:1x3x224x224")


@pytest.mark.realmodels
@pytest.mark.slow
def test_inspect_and_compile_none_on_real_models(real_models, cli, tmp_path):
    opsets = set()
    for path in real_models:
        proto = onnx.load(str(path), load_external_data=False)
        opsets.add(proto.opset_import[0].version)
        shape = _shape_for(path)
        dynamic = cli("inspect", path)
        assert dynamic.returncode == 2 and "--shape" in dynamic.stderr, dynamic.stderr  # dynamic dims need it
        info = json.loads(cli("inspect", path, "--shape", shape, "--json", check=True).stdout)
        assert info["totals"]["weight_layers"] > 0 and info["totals"]["macs"] > 0
        out = tmp_path / path.stem
        cli("compile", path, "--shape", shape, "-o", out, check=True)
        report = json.loads((out / "report.json").read_text())
        assert report["verification"]["exact"]["passed"], path
        folds = {p["name"]: p for p in report["passes"]}
        converted = folds["constants-to-initializers"].get("rewrites", 0)
        n_constants = sum(n.op_type == "Constant" for n in proto.graph.node)
        assert (converted > 0) == (n_constants > 0), path
        # anything not folded is listed with its reason
        for skipped in report["skipped"]:
            assert skipped["reason"]
    assert len(opsets) >= 2, f"expected graphs of several opsets, got {opsets}"
