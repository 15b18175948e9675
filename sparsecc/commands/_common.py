"""Options and output helpers shared by several subcommands."""

from __future__ import annotations

import json
import sys
from typing import Any


def add_shape_option(parser) -> None:
    parser.add_argument("--shape", action="append", metavar="NAME:DIMS",
                        help="concrete shape of a dynamic input, e.g. --shape x:1x3x224x224 (repeatable)")


def add_input_options(parser) -> None:
    parser.add_argument("--input", action="append", metavar="NAME:FILE", dest="input_data",
                        help="data to verify and time with: NAME:FILE.npy, or FILE.npz with arrays named after the "
                             "inputs (repeatable); its shape is the compile shape of a dynamic input")
    parser.add_argument("--input-range", action="append", metavar="NAME:LOW:HIGH",
                        help="draw the input's random values uniformly in [LOW, HIGH] (repeatable), e.g. "
                             "sr:16000:16000")


def feed_options(args):
    """The FeedOptions of --input and --input-range (None when neither was given)."""
    from sparsecc.feeds import FeedOptions, parse_input_files, parse_input_ranges

    if not getattr(args, "input_data", None) and not getattr(args, "input_range", None):
        return None
    return FeedOptions(parse_input_files(args.input_data), parse_input_ranges(args.input_range))


def print_json(data: Any) -> None:
    from sparsecc.compiler import _json_default

    json.dump(data, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def add_speed_target_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target-speedup", type=_target_speedup, metavar="X",
                       help="filter recipes: remove filters until the model runs X times faster on the target, "
                            "1 < X < 1000 (latency tables measured on ONNX Runtime CPU, a knapsack keeping the most "
                            "importance per ms saved, the result measured and reported); the recipe's ratio is not "
                            "used")
    group.add_argument("--target-latency", type=_target_latency, metavar="MS",
                       help="filter recipes: remove filters until one run takes MS milliseconds, MS > 0 (CPU time "
                            "at one thread on ONNX Runtime CPU)")


# A bad speed target is refused where the flag is parsed (exit 2, before any work), in the flag's
# words; the pass option's own message (plan-filters: target_speedup) is for recipe files.
def _target_speedup(text: str) -> float:
    from sparsecc.latency.target import speedup_problem

    return _checked_number(text, speedup_problem, "give how many times faster, e.g. --target-speedup 2 for twice "
                                                  "as fast (half the time); for a time in ms use --target-latency")


def _target_latency(text: str) -> float:
    from sparsecc.latency.target import latency_problem

    return _checked_number(text, latency_problem, "give the time of one run in milliseconds, e.g. --target-latency "
                                                  "5; for a ratio use --target-speedup")


def _checked_number(text: str, problem_of, fix: str) -> float:
    """``text`` as a float, or an argparse error (usage, exit 2) that says what is wrong and what to do."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = text
    problem = problem_of(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}; {fix}")
    return value
