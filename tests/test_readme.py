"""The README's examples work as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


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
