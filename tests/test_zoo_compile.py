"""inspect and compile --recipe none on every zoo model (needs torch to export them)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from sparsecc import zoo  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return {entry.name: zoo.export_onnx(entry.name, folder / f"{entry.name}.onnx") for entry in zoo.list_models()
            if not entry.checkpoint and (entry.name.endswith("-small") or entry.name in ("resnet18", "mobilenetv2"))}


@pytest.mark.slow
def test_resnet18_imagenet_macs(exported, cli):
    info = json.loads(cli("inspect", exported["resnet18"], "--json", check=True).stdout)
    assert info["totals"]["macs"] == pytest.approx(1.82e9, rel=0.01)
    assert info["totals"]["by_kind"] == {"conv": 17, "pointwise": 3, "gemm": 1}


@pytest.mark.slow
def test_every_zoo_model_inspects_and_compiles(exported, cli, tmp_path):
    assert len(exported) >= 8
    for name, path in exported.items():
        info = json.loads(cli("inspect", path, "--json", check=True).stdout)
        assert info["totals"]["weight_layers"] > 0, name
        out = tmp_path / name
        cli("compile", path, "-o", out, check=True)
        report = json.loads((out / "report.json").read_text())
        assert report["verification"]["exact"]["passed"], name
        assert report["summary"]["macs_after"] == info["totals"]["macs"], name
