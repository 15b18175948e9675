"""``sparsecc characterize``: the pruning-pattern study of the group-wise paper, on this machine.

Times the GEMM of representative VGG-16, ResNet-18, ViT and BERT-base layers
dense and pruned element-wise, vector-wise, block-wise (sparse libraries) and
group-wise (index_select + smaller GEMM in torch, and the sparsecc rewrite on
ONNX Runtime) at 75 / 50 / 25 % kept, and reports latency relative to dense
and the break-even share pruned. Progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Adds ``characterize`` to the CLI."""
    parser = subparsers.add_parser(
        "characterize", help="time pruning patterns against dense GEMM (the group-wise paper's study)",
        description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="two small ViT-Tiny layers (a smoke run)")
    size.add_argument("--full", action="store_true",
                      help="every distinct layer shape of the four models, and scipy.sparse beside torch.sparse "
                           "(long; needs a few GB of memory for VGG-16 fc6)")
    parser.add_argument("--runs", type=int, default=20, help="timed interleaved rounds per layer and share. "
                                                             "Defaults to 20.")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first. Defaults to 3.")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and ONNX Runtime intra-op threads. Defaults to 2.")
    parser.add_argument("--keeps", default="75,50,25", metavar="P,P,...",
                        help="percentages of the parameters kept, comma-separated (the break-even share can "
                             "only be interpolated above the least-pruned one: add e.g. 90). Defaults to 75,50,25.")
    parser.add_argument("--vector", type=int, default=4, help="vector length along K (vector-wise). Defaults to 4.")
    parser.add_argument("--block", default="8x8", metavar="MxN",
                        help="block shape along K x along N (block-wise). Defaults to 8x8.")
    parser.add_argument("--no-ort", action="store_true",
                        help="leave out the sparsecc group-wise rewrite on ONNX Runtime")
    parser.add_argument("--ort-lowering", choices=("always", "auto"), default="always",
                        help="always: every layer gets the paper's group-wise lowering (channel-gather, or "
                             "tap-gather for convs larger than 1x1); auto: groupwise-rewrite's cost model "
                             "chooses and may keep a layer dense. Defaults to always.")
    parser.add_argument("--json", action="store_true", help="print every measurement as JSON instead of the table")
    parser.add_argument("--json-out", metavar="FILE", help="also write every measurement as JSON to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="write the latency-vs-kept plot (PNG)")
    parser.add_argument("--markdown", metavar="FILE", help="write a Markdown report")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.study import StudyConfig, format_table, plot_study, render_markdown, run_study
    from sparsecc.errors import OptionError
    from sparsecc.log import progress
    from sparsecc.outputs import OutputFiles

    try:
        block = tuple(int(v) for v in args.block.lower().split("x"))
    except ValueError:
        block = ()
    if len(block) != 2:
        raise OptionError(f"--block must be two integers like 8x8, got {args.block!r}", fix="e.g. --block 4x4")
    try:
        keeps = tuple(sorted((float(v) / 100.0 for v in args.keeps.split(",")), reverse=True))
    except ValueError:
        raise OptionError(f"--keeps must be comma-separated percentages like 75,50,25, got {args.keeps!r}",
                          fix="e.g. --keeps 90,75,50,25") from None
    shapes = "quick" if args.quick else "full" if args.full else "default"
    config = StudyConfig(shapes=shapes, keeps=keeps, runs=args.runs, warmup=args.warmup, threads=args.threads,
                         vector=args.vector, block=block, ort=not args.no_ort, ort_lowering=args.ort_lowering,
                         libraries=("torch", "scipy") if args.full else ("torch",))
    result = run_study(config, progress=progress)
    data = result.to_dict()
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
    with OutputFiles() as files:  # the files are replaced together, when all are written
        if args.json_out:
            files.stage(args.json_out).write_text(json.dumps(data, indent=2) + "\n")
        if args.plot:
            plot_study(result, files.stage(args.plot))
        if args.markdown:
            # The report links the plot relative to where the report lies.
            plot = os.path.relpath(args.plot, Path(args.markdown).resolve().parent) if args.plot else None
            files.stage(args.markdown).write_text(render_markdown(result, plot))
        files.commit()
    for written in (args.json_out, args.plot, args.markdown):
        if written:
            progress(f"wrote {written}")
    return 0
