"""The ``sparsecc`` command line.

Each subcommand lives in its own module under :mod:`sparsecc.commands` and
exposes ``register(subparsers)``; the parser is assembled from every such
module, so adding a command never edits this file.

Exit codes: 0 success, 2 user error (bad input or option), 3 verification
failed, 70 internal error (a bug: please report it with the traceback), 130
interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: outputs are then as they were
before the command, or complete.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from sparsecc.errors import SparseccError

EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    from sparsecc import __version__, commands

    parser = argparse.ArgumentParser(
        prog="sparsecc",
        description="Offline compiler for pruned neural networks (ONNX in, verified faster ONNX out).",
    )
    parser.add_argument("--version", action="version", version=f"sparsecc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show internal progress and tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    for name in modules:
        importlib.import_module(f"sparsecc.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code. Run as a program (``argv`` None), a signal that arrives once the
    command is over is ignored: what the command did is complete, and the exit code says so."""
    from sparsecc import interrupts, outputs

    outputs.COMMITTED.clear()
    with interrupts.handling():
        try:
            code = _run(argv)
            interrupts.check()  # an interrupt something swallowed still ends as an interrupt
        except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (interrupts.Interrupted)
            with interrupts.deferred(raise_after=False):  # a second Ctrl-C does not cut this short
                written = ", ".join(str(p) for p in outputs.COMMITTED)
                print("sparsecc: interrupted; " + (f"the outputs were complete before it stopped: {written}"
                                                   if written else "nothing was written (outputs from before are "
                                                                   "as they were)"), file=sys.stderr)
                code = interrupts.exit_code(exc)
        finally:
            if argv is None:
                interrupts.ignore_from_now()
    return code


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from sparsecc import log

    log.configure(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except SparseccError as err:
        print(f"sparsecc {args.command}: error: {err.format()}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return err.exit_code
    except BrokenPipeError:  # e.g. `sparsecc zoo list --json | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except Exception:  # noqa: BLE001 - the last line of defence reports the bug
        traceback.print_exc()
        print(f"sparsecc {args.command}: internal error (a bug in sparsecc); "
              "please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
