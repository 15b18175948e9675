"""Inspect totals for every zoo model: weight layers by kind, MACs, parameters.

Exports each model (random weights; trained checkpoints as bundled) to a
temporary folder and runs the same analysis as ``sparsecc inspect``. Needs
the torch extra for export.

    python tools/zoo_table.py [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def zoo_totals() -> list[dict]:
    from sparsecc import zoo
    from sparsecc.inspection import inspect_model
    from sparsecc.model import load_model
    from sparsecc.passes.canonicalize import canonicalize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in zoo.list_models():
            shapes = {spec.name: tuple(spec.shape) for spec in entry.inputs}
            path = zoo.checkpoint_path(entry.name) if entry.checkpoint else zoo.export_onnx(
                entry.name, Path(tmp) / f"{entry.name}.onnx")
            model = load_model(path, shapes)
            canonicalize(model)
            totals = inspect_model(model)["totals"]
            rows.append({"name": entry.name, "input": "x".join(map(str, entry.inputs[0].shape)), **totals})
            print(f"inspected {entry.name}", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    from sparsecc.tables import human, text_table

    rows = [[r["name"], r["input"], r["weight_layers"], ", ".join(f"{n} {k}" for k, n in sorted(r["by_kind"].items())),
             human(r["macs"]), human(r["weight_params"])] for r in zoo_totals()]
    headers = ["model", "input", "weight layers", "kinds", "MACs", "weight params"]
    if args.markdown:
        from sparsecc.tables import markdown_table

        print(markdown_table(rows, headers))
    else:
        print(text_table(rows, headers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
