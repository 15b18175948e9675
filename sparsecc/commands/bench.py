"""sparsecc bench MODEL [MODEL2]: latency on a backend; two models are paired and interleaved."""

from __future__ import annotations

from sparsecc.commands._common import add_input_options, add_shape_option, feed_options, print_json


def register(subparsers) -> None:
    from sparsecc.backends import BACKENDS, add_backend_options, backend_names

    parser = subparsers.add_parser("bench", help="time a model, or a baseline and a candidate interleaved",
                                   description=__doc__)
    parser.add_argument("models", nargs="+", metavar="MODEL", help="one .onnx, or baseline and candidate")
    names = backend_names("bench")
    parser.add_argument("--backend", default="ort", choices=names,
                        help="; ".join(f"{n}: {BACKENDS[n].description}" for n in names) + ". Default: ort")
    add_backend_options(parser, "bench")
    parser.add_argument("--runs", type=int, default=20,
                        help="timed rounds (a pair on ort: split over up to 3 sets of new sessions of at least 10 "
                             "rounds each, rounded up to a multiple). Default: 20")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first. Default: 5")
    add_shape_option(parser)
    add_input_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.backends import backend_options
    from sparsecc.backends.ort import user_model
    from sparsecc.bench import bench_models
    from sparsecc.errors import OptionError
    from sparsecc.log import progress
    from sparsecc.model import parse_shape_overrides
    from sparsecc.report import format_bench

    if len(args.models) > 2:
        raise OptionError(f"bench takes one or two models, got {len(args.models)}",
                          fix="sparsecc bench BASELINE.onnx CANDIDATE.onnx")
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise OptionError("--runs and --threads must be at least 1 and --warmup at least 0")
    shapes = parse_shape_overrides(args.shape)
    with user_model(" or ".join(args.models)):  # ONNX Runtime refusing a model given here is the user's to fix
        result = bench_models(args.models, args.backend, shapes=shapes, runs=args.runs, warmup=args.warmup,
                              progress=progress, options=backend_options(args.backend, args, "bench", shapes),
                              inputs=feed_options(args))
    if args.json:
        print_json(result)
    else:
        print(format_bench(result))
    return 0
