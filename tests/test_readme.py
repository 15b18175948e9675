"""The README's examples work as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_of_a_lowering_of_ones_own_compiles(cli, tmp_path):
    from test_extensions import USER_MODULE

    from sparsecc.zoo import checkpoint_path

    example = re.search(r"```yaml\n(name: my-lowering.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "my-lowering.yaml").write_text(example)
    (tmp_path / "my_lowerings.py").write_text(USER_MODULE.replace("test-slice-channels", "my-lowering"))
    out = tmp_path / "out"
    result = cli("compile", checkpoint_path("resnet18-digits"), "--recipe", tmp_path / "my-lowering.yaml", "-o", out,
                 "--shape", "input:1x1x32x32", "--cost-model", "analytic", "--json", check=True)
    layers = next(p for p in json.loads(result.stdout)["passes"] if p["name"] == "groupwise-rewrite")["details"]["layers"]
    assert any("my-lowering" in str(info.get("reason", "")) for info in layers.values())


@pytest.mark.slow
def test_readme_recipe_example_compiles_the_bundled_checkpoint(cli, tmp_path):
    from sparsecc.zoo import checkpoint_path

    example = re.search(r"```yaml\n(name: my-recipe.*?)```", README.read_text(), re.S).group(1)
    recipe = tmp_path / "my-recipe.yaml"
    recipe.write_text(example)
    out = tmp_path / "out"
    cli("compile", checkpoint_path("resnet18-digits"), "--recipe", recipe, "-o", out,
        "--shape", "input:1x1x32x32", check=True)
    kept = {w["layer"]: w["kept_fraction"] for w in json.loads((out / "plan.json").read_text())["weights"]}
    assert kept["/layers/layers.7/conv2/conv2.0/Conv"] == pytest.approx(0.25, abs=0.01)
    assert kept["/layers/layers.7/conv1/conv1.0/Conv"] == pytest.approx(0.5, abs=0.01)
    assert not any(layer.startswith("/stem") for layer in kept)
