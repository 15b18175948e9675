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
