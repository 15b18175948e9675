"""sparsecc compile MODEL --recipe R -o OUT: canonicalise, plan, rewrite, verify, write."""

from __future__ import annotations

from sparsecc.commands._common import (add_input_options, add_shape_option, add_speed_target_options, feed_options,
                                       print_json)


def register(subparsers) -> None:
    parser = subparsers.add_parser("compile", help="compile a model with a recipe into OUT/",
                                   description=__doc__)
    parser.add_argument("model", nargs="?", help="an .onnx file (never modified)")
    parser.add_argument("--recipe", "-r", default="none", help="built-in recipe name or YAML/JSON file "
                                                               "(sparsecc recipes lists them). Default: none")
    parser.add_argument("-o", "--output", default="out", help="output folder. Default: out")
    add_shape_option(parser)
    add_input_options(parser)
    parser.add_argument("--plan", help="start from this plan.json (e.g. from fine-tuning elsewhere)")
    parser.add_argument("--disable-pass", action="append", default=[], metavar="NAME",
                        help="do not run this pass (repeatable)")
    parser.add_argument("--dump-dir", metavar="DIR", help="write the graph after each pass into DIR")
    # read as text: checked with the recipe's verify: block, by the same rules and messages
    parser.add_argument("--atol", help="absolute tolerance of the numerical checks, a number >= 0: an output "
                                       "passes when max |diff| <= atol + rtol x max |output|. Both below the model "
                                       "float type's epsilon (float32: 1.2e-07) are refused: only bit-identical "
                                       "outputs could pass (0 and 0 asks for those). Default: the recipe's verify:, else the float type's "
                                       "(float32: 1e-5)")
    parser.add_argument("--rtol", help="tolerance relative to max |output| of the numerical checks, a number >= 0 "
                                       "(see --atol). Default: the recipe's verify:, else the float type's "
                                       "(float32: 1e-4)")
    parser.add_argument("--force", action="store_true",
                        help="write into an output folder that is not empty (the outputs replace theirs)")
    parser.add_argument("--cost-model", choices=["measured", "analytic"],
                        help="how passes that choose a lowering compare candidates: timed on ONNX Runtime "
                             "(through the timing cache) or estimated (deterministic). Default: each pass's option")
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="timing cache of measured choices ('off' to measure afresh and keep nothing). "
                             "Default: $SPARSECC_TIMING_CACHE, else ~/.cache/sparsecc/timing-cache.json")
    add_speed_target_options(parser)
    parser.add_argument("--trace", action="store_true",
                        help="print, after each pass, why each rewrite did not fire on each layer (stderr)")
    parser.add_argument("--list-passes", action="store_true", help="list the registered passes and exit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.errors import OptionError

    if args.list_passes:
        return list_passes(args.json)
    if not args.model:
        raise OptionError("no model given", fix="sparsecc compile MODEL.onnx --recipe none -o OUT")
    from sparsecc.compiler import compile_model
    from sparsecc.model import parse_shape_overrides
    from sparsecc.recipe import load_recipe, with_speed_target
    from sparsecc.verify_options import verify_config

    recipe = with_speed_target(load_recipe(args.recipe), args.target_speedup, args.target_latency)
    given = {"atol": args.atol, "rtol": args.rtol}
    verify_config(given, where="command line (--atol/--rtol)")  # refused before any work, whatever the recipe
    result = compile_model(args.model, recipe, args.output, shapes=parse_shape_overrides(args.shape),
                           disable=args.disable_pass, dump_dir=args.dump_dir, plan=args.plan,
                           verify={k: v for k, v in given.items() if v is not None}, force=args.force,
                           cost_model=args.cost_model, timing_cache=args.timing_cache, trace=args.trace,
                           inputs=feed_options(args))
    if args.json:
        print_json(result.report)
        return 0
    summary = result.report["summary"]
    exact = result.report["verification"]["exact"]
    print(f"compiled {args.model} with recipe '{recipe.name}' in {summary['compile_seconds']} s")
    print(f"  MACs {summary['macs_before']:,} -> {summary['macs_after']:,} (ideal speedup {summary['ideal_speedup']}x)")
    if summary.get("speed_target"):
        print(f"  {summary['speed_target']}")
    for warning in summary.get("warnings", []):
        print(f"  warning: {warning}")
    print(f"  verified against the {result.report['verification']['against']}: worst relative error "
          f"{exact['worst_relative_error']:.3g}")
    second = result.report["verification"].get("second_shape") or {}
    if second.get("shapes"):
        print(f"  checked again at {second['shapes']}: " + ("passed" if second.get("passed") else second["note"]))
    skipped = result.report["skipped"]
    if skipped:
        print(f"  {len(skipped)} layer(s) left as they were (reasons in report.md)")
    written = [name for name in result.report["outputs"] if not name.endswith(".npz")]
    print(f"  wrote {result.out_dir}/: {', '.join(written)}")
    return 0


def list_passes(as_json: bool) -> int:
    from sparsecc.passmanager import available_passes

    passes = available_passes()
    if as_json:
        print_json([{"name": n, "exact": c.exact, "role": c.role, "description": c.description}
                    for n, c in passes.items()])
        return 0
    width = max(len(n) for n in passes)
    roles = max(len(c.role) for c in passes.values())
    for name, cls in passes.items():
        print(f"{name.ljust(width)}  {'exact ' if cls.exact else 'prunes'}  {cls.role.ljust(roles)}  {cls.description}")
    return 0
