"""sparsecc build MODEL -o model.engine: a TensorRT engine (strongly typed, sparse weights, sparsecc plugins)."""

from __future__ import annotations

from sparsecc.commands._common import add_shape_option, print_json


def register(subparsers) -> None:
    from sparsecc.backends import add_backend_options, backend_names

    parser = subparsers.add_parser("build", help="build a TensorRT engine from an ONNX model", description=__doc__)
    parser.add_argument("model", help="an .onnx file (never modified)")
    parser.add_argument("-o", "--output", required=True, metavar="ENGINE", help="engine file to write (.engine)")
    parser.add_argument("--backend", choices=backend_names("build"), default="tensorrt",
                        help="the engine builder. Default: tensorrt")
    add_backend_options(parser, "build")
    add_shape_option(parser)
    parser.add_argument("--json", action="store_true", help="print the build report as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from sparsecc.backends import backend_class, backend_options, get_backend
    from sparsecc.errors import BackendUnavailableError, OptionError
    from sparsecc.model import check_model_file, parse_shape_overrides
    from sparsecc.outputs import OutputFiles

    check_model_file(args.model)  # a missing model is said first, whatever the machine has
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise OptionError("the engine would overwrite the input model", where=args.output,
                          fix="choose another -o path, e.g. model.engine")
    reason = backend_class(args.backend).unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"cannot build a TensorRT engine here: {reason}",
                                      fix="build on a machine with TensorRT and an NVIDIA GPU; here, `sparsecc "
                                          "validate MODEL --against ORIGINAL` and `sparsecc bench` run on ONNX Runtime")
    options = backend_options(args.backend, args, "build", shapes=parse_shape_overrides(args.shape) or None)
    with OutputFiles(inputs=[args.model]) as files:  # the engine replaces -o whole, or not at all
        backend = get_backend(args.backend, engine_path=str(files.stage(args.output)), **options)
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
