"""sparsecc validate ENGINE_OR_MODEL --against ORIGINAL: does the engine (or compiled model) compute what the original does?"""

from __future__ import annotations

from sparsecc.commands._common import add_shape_option, print_json


def register(subparsers) -> None:
    from sparsecc.backends import add_backend_options, backend_names

    parser = subparsers.add_parser("validate", help="compare an engine or compiled model with the original ONNX model",
                                   description=__doc__)
    parser.add_argument("candidate", metavar="ENGINE_OR_MODEL", help="a .engine/.plan file or an .onnx model")
    parser.add_argument("--against", required=True, metavar="ORIGINAL", help="the original .onnx model")
    parser.add_argument("--backend", choices=backend_names("validate"),
                        help="runtime of an ONNX candidate. Default: tensorrt for an engine, ort for ONNX")
    add_backend_options(parser, "validate")
    parser.add_argument("--atol", action="append", metavar="[OUTPUT:]VALUE",
                        help="absolute tolerance, for all outputs or one (repeatable). Default: by the candidate's "
                             "precision (FP32 1e-5, TF32 1e-4, FP16 1e-3, BF16 1e-2)")
    parser.add_argument("--rtol", action="append", metavar="[OUTPUT:]VALUE",
                        help="tolerance relative to max |original output| (repeatable). Default: by the candidate's "
                             "precision (FP32 1e-4, TF32 5e-3, FP16 2e-2, BF16 8e-2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs. Default: 0")
    parser.add_argument("--iterations", type=int, default=1, help="random input sets. Default: 1")
    add_shape_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.backends.ort import user_model
    from sparsecc.errors import OptionError
    from sparsecc.model import parse_shape_overrides
    from sparsecc.validate import parse_tolerances, validate

    if args.iterations < 1:
        raise OptionError("--iterations must be at least 1")
    with user_model(f"{args.candidate} or {args.against}"):  # both are the user's models
        result = validate(args.candidate, args.against, args.backend, parse_tolerances(args.atol, args.rtol),
                          parse_shape_overrides(args.shape), args.seed, args.iterations)
    if args.json:
        print_json(result)
    else:
        print(f"{result['candidate']} vs {result['against']} ({result['runtime']['candidate']} vs "
              f"{result['runtime']['original']}):")
        p = result["precision"]
        print(f"  precision {p['name'].upper()} ({p['why']}): default tolerances atol {p['atol']:g}, "
              f"rtol {p['rtol']:g}")
        for o in result["outputs"]:
            print(f"  {'ok  ' if o['passed'] else 'FAIL'} {o['name']}: max abs error {o['max_abs_error']:.3g} "
                  f"(allowed {o['atol']:g} + {o['rtol']:g} x {o['max_abs_reference']:.3g})")
        print("PASSED" if result["passed"] else "FAILED")
    return 0 if result["passed"] else 3
