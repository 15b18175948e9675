"""Output fidelity of compiled real models on real photographs: dense vs compiled.

For each real ONNX model shipped inside a PyPI package (``.real_models/``, fetched by
``tools/fetch_real_models.py``) and each recipe, compiles the model, runs the dense (canonical,
recipe ``none``) and the compiled model on the photographs bundled with scikit-image and
scikit-learn (``sparsecc.data.load_photographs``), and reports top-1 agreement and output error
(:func:`sparsecc.evaluate.output_fidelity`). Exact recipes must agree everywhere; pruning recipes
(one-shot, the models cannot be fine-tuned here: no labels, no PyTorch source) show how far
pruning alone moves a real model's outputs.

Run: ``python tools/output_fidelity.py --out docs/accuracy/fidelity.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"rec": (1, 3, 48, 320), "cls": (1, 3, 48, 192), "det": (1, 3, 128, 128)}
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def shape_for(path: Path) -> tuple[int, ...]:
    return next((shape for key, shape in SHAPES.items() if f"_{key}_" in path.name), (1, 3, 224, 224))


def main(argv: list[str] | None = None) -> int:
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.compiler import compile_model
    from sparsecc.data import load_photographs
    from sparsecc.errors import SparseccError
    from sparsecc.evaluate import output_fidelity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / ".real_models")
    parser.add_argument("--recipes", nargs="+", default=["zeros", "groupwise-75", "groupwise-50", "filter-l1",
                                                         "24-only"])
    parser.add_argument("--only", nargs="*", help="model file stems to run (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "fidelity.md")
    args = parser.parse_args(argv)
    files = [f for f in sorted(args.models.glob("**/*.onnx")) if not args.only or f.stem in args.only]
    if not files:
        print(f"no real models in {args.models}: run python tools/fetch_real_models.py", file=sys.stderr)
        return 2
    backend = OrtBackend(threads=1)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="sparsecc-fidelity-"))
    for path in files:
        shape = shape_for(path)
        names, photos = load_photographs(shape[2:])
        inputs = ((photos - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)
        name = path.stem
        dense = compile_model(path, "none", work / name / "none", shapes={"x": shape})
        reference = backend.load(dense.model_path)
        for recipe in args.recipes:
            print(f"{name}: {recipe}", file=sys.stderr, flush=True)
            try:
                result = compile_model(path, recipe, work / name / recipe, shapes={"x": shape})
            except SparseccError as err:
                rows.append({"model": name, "recipe": recipe, "error": err.what})
                continue
            fidelity = output_fidelity(reference, backend.load(result.model_path), inputs)
            rows.append({"model": name, "recipe": recipe, "shape": list(shape),
                         "ideal": result.report["summary"]["ideal_speedup"], **fidelity})
    lines = ["# Output fidelity on real photographs: dense vs compiled", "",
             f"{len(names)} photographs ({', '.join(names)}), resized to each model's input, ImageNet "
             "mean/std; every image at batch 1. Agreement: argmax over the last output axis (per image, or "
             "per sequence position for the recogniser), or the 0.5 threshold of the detector's map. "
             "Pruning recipes are one-shot (no labels, no fine-tuning).", "",
             "| model | recipe | ideal | top-1 agreement | positions | map IoU (>0.5) | max abs error | max rel error | "
             "mean abs error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['recipe']} | failed: {r['error']} | | | | | | |")
        else:
            iou = "" if r["positive_iou"] is None else f"{100 * r['positive_iou']:.1f}%"
            lines.append(f"| {r['model']} | {r['recipe']} | {r['ideal']}x | {100 * r['top1_agreement']:.1f}% | "
                         f"{r['positions']} | {iou} | "
                         f"{r['max_abs_error']:.3g} | {r['max_rel_error']:.3g} | "
                         f"{r['mean_abs_error']:.3g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
