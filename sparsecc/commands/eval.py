"""sparsecc eval MODEL --data NAME: top-1 accuracy of an ONNX classifier on a data set's test split."""

from __future__ import annotations

from sparsecc.commands._common import print_json


def register(subparsers) -> None:
    from sparsecc.data import DATASETS

    parser = subparsers.add_parser("eval", help="top-1 accuracy of an ONNX classifier on a bundled data set "
                                                "(ONNX Runtime, no torch)", description=__doc__)
    parser.add_argument("model", metavar="MODEL", help="the .onnx classifier")
    parser.add_argument("--data", required=True, metavar="NAME",
                        help="data set: " + "; ".join(f"{k}: {v}" for k, v in DATASETS.items()))
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads. Default: 2")
    parser.add_argument("--json", action="store_true", help='print {"top1": ..., "n": ...}')
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.backends.ort import user_model
    from sparsecc.errors import OptionError
    from sparsecc.evaluate import evaluate_onnx
    from sparsecc.log import progress

    if args.threads < 1:
        raise OptionError("--threads must be at least 1")
    progress(f"scoring {args.model} on the '{args.data}' test split")
    with user_model(args.model):  # ONNX Runtime refusing the model is the user's to fix
        result = evaluate_onnx(args.model, args.data, args.threads, report=progress)
    if args.json:
        print_json(result)
    else:
        print(f"{args.model}: top-1 {100 * result['top1']:.2f}% ({result['correct']}/{result['n']} "
              f"test images of '{args.data}')")
    return 0
