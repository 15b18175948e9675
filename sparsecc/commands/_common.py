"""Options and output helpers shared by several subcommands."""

from __future__ import annotations

import json
import sys
from typing import Any


def add_shape_option(parser) -> None:
    parser.add_argument("--shape", action="append", metavar="NAME:DIMS",
                        help="concrete shape of a dynamic input, e.g. --shape x:1x3x224x224 (repeatable)")


def print_json(data: Any) -> None:
    from sparsecc.compiler import _json_default

    json.dump(data, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")
