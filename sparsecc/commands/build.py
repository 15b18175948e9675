"""sparsecc build MODEL -o model.engine: a TensorRT engine (strongly typed, sparse weights, sparsecc plugins)."""

from __future__ import annotations

from sparsecc.commands._common import add_shape_option, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build a TensorRT engine from an ONNX model", description=__doc__)
    parser.add_argument("model", help="an .onnx file (never modified)")
    parser.add_argument("-o", "--output", required=True, metavar="ENGINE", help="engine file to write (.engine)")
    parser.add_argument("--no-sparse-weights", action="store_true", help="do not let TensorRT use 2:4 sparse tactics")
    parser.add_argument("--workspace-mb", type=int, help="workspace memory pool limit in MiB. Default: TensorRT's")
    parser.add_argument("--opt-level", type=int, help="builder optimization level 0-5. Default: 3")
    parser.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache, read if present and updated")
    parser.add_argument("--tf32", action="store_true",
                        help="let FP32 layers and the sparsecc plugin kernels use TF32 tensor cores. "
                             "Default: IEEE FP32")
    add_shape_option(parser)
    parser.add_argument("--json", action="store_true", help="print the build report as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from sparsecc.backends import get_backend
    from sparsecc.backends.tensorrt import TensorRTBackend
    from sparsecc.errors import BackendUnavailableError, OptionError
    from sparsecc.model import check_model_file, parse_shape_overrides
    from sparsecc.outputs import OutputFiles

    check_model_file(args.model)  # a missing model is said first, whatever the machine has
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise OptionError("the engine would overwrite the input model", where=args.output,
                          fix="choose another -o path, e.g. model.engine")
    reason = TensorRTBackend.unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"cannot build a TensorRT engine here: {reason}",
                                      fix="build on a machine with TensorRT and an NVIDIA GPU; here, `sparsecc "
                                          "validate MODEL --against ORIGINAL` and `sparsecc bench` run on ONNX Runtime")
    with OutputFiles(inputs=[args.model]) as files:  # the engine replaces -o whole, or not at all
        backend = get_backend("tensorrt", sparse_weights=not args.no_sparse_weights, workspace_mb=args.workspace_mb,
                              builder_optimization_level=args.opt_level,
                              shapes=parse_shape_overrides(args.shape) or None,
                              engine_path=str(files.stage(args.output)), timing_cache=args.timing_cache,
                              tf32=args.tf32)
        session = backend.load(Path(args.model))
        report = session.describe()
        session.close()
        files.commit()
    report["engine_path"] = args.output
    if args.json:
        print_json(report)
        return 0
    sparsity = report.get("sparsity", {})
    print(f"wrote {args.output} ({report.get('engine_bytes', 0)} bytes, TensorRT {report.get('tensorrt')}, "
          f"built in {report.get('build_time_s')} s)")
    print(f"  2:4 sparsity: eligible {sparsity.get('eligible', [])}; picked sparse {sparsity.get('picked_sparse', [])}"
          + ("" if sparsity.get("reported") else " (the builder reported no sparsity lines)"))
    print(f"  precision: {str(report.get('precision', '?')).upper()} (validate's default tolerances follow it)")
    print(f"  plugin layers: {report.get('plugin_layers') or 'none'}")
    print("  known limits: grouped/depthwise convs never take sparse kernels; sparse tactics rarely win below "
          "~256 channels; Q/DQ graphs may get no sparse tactic")
    return 0
