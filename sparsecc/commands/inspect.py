"""sparsecc inspect MODEL: weight layers, MACs, parameters, sparsity and pattern."""

from __future__ import annotations

from sparsecc.commands._common import add_shape_option, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="list the weight layers of a model with MACs, params and sparsity",
                                   description=__doc__)
    parser.add_argument("model", help="an .onnx file")
    add_shape_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.inspection import format_inspection, inspect_model
    from sparsecc.model import load_model, parse_shape_overrides

    from sparsecc.passes.canonicalize import canonicalize

    model = load_model(args.model, parse_shape_overrides(args.shape))
    # inspect the canonical form, so weights given as Constant nodes are seen as layers
    canonicalize(model)
    info = inspect_model(model)
    if args.json:
        print_json(info)
    else:
        print(format_inspection(info))
    return 0
