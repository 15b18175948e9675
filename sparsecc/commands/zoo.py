"""``sparsecc zoo``: list the model zoo and export its models to ONNX."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    """Adds ``zoo list`` and ``zoo export`` to the CLI."""
    parser = subparsers.add_parser("zoo", help="list the model zoo or export a zoo model to ONNX",
                                   description="Reference models (ResNet-18, VGG-16, MobileNetV2/V3, "
                                   "EfficientNet-B0, AlexNet, ViT-Tiny, BERT) and small trained checkpoints.")
    actions = parser.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="show every zoo model")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    listing.set_defaults(func=_list)

    export = actions.add_parser("export", help="export a zoo model to ONNX (needs PyTorch)")
    export.add_argument("name", help="zoo model name (see `sparsecc zoo list`)")
    export.add_argument("-o", "--output", required=True, help="ONNX file to write")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset. Defaults to 17.")
    weights = export.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true",
                         help="require the trained weights of the bundled checkpoint (models listed TRAINED yes; "
                              "they export them by default)")
    weights.add_argument("--untrained", action="store_true",
                         help="PyTorch's random initial weights, even for a model with a trained checkpoint")
    export.set_defaults(func=_export)


def _rows() -> list[dict]:
    from sparsecc.zoo import list_models

    return [{"name": e.name, "architecture": e.architecture,
             "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in e.inputs],
             "output_shape": list(e.output_shape), "params": e.params,
             "checkpoint": e.checkpoint, "description": e.description} for e in list_models()]


def _list(args) -> int:
    rows = _rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "ARCHITECTURE", "INPUT", "PARAMS", "TRAINED")]
    for row in rows:
        inputs = ", ".join("x".join(map(str, s["shape"])) + ("" if s["dtype"] == "float32" else f" {s['dtype']}")
                           for s in row["inputs"])
        table.append((row["name"], row["architecture"], inputs, f"{row['params'] / 1e6:.2f}M",
                      "yes" if row["checkpoint"] else "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def _export(args) -> int:
    from sparsecc.zoo import export_onnx, get_entry

    entry = get_entry(args.name)
    pretrained = False if args.untrained else True if args.pretrained else entry.checkpoint is not None
    path = export_onnx(args.name, args.output, opset=args.opset, pretrained=pretrained)
    weights = (f"trained weights from the bundled checkpoint {entry.checkpoint}" if pretrained else
               "random initial weights (untrained" + ("; --untrained" if entry.checkpoint else
                                                      ": this model has no trained checkpoint") + ")")
    print(f"wrote {path} ({args.name}, {weights}, opset {args.opset}, checked against PyTorch in ONNX Runtime)")
    return 0
