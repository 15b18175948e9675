"""The safety probe's harness: run a case (in this process or as a user would, in a subprocess), look at
how it ended, and count (``pytest`` prints the counts at the end: see ``conftest.pytest_terminal_summary``).

A case ends *cleanly* when it exits with one of the codes it expects (0 for an input sparsecc must take,
2 for one it must refuse, 130/143 for an interrupt), says what it must say, prints no Python traceback,
is not killed by a signal, and no file that had to survive was lost or changed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TINY_ENV = {"SPARSECC_TIMING_CACHE": "off"}


@dataclass
class Outcome:
    case: str
    category: str
    code: int | None
    err: str
    expected: tuple[int, ...]
    phrase: str | None = None
    lost: list[str] = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err

    @property
    def killed(self) -> bool:
        return self.code is not None and self.code < 0

    @property
    def clean(self) -> bool:
        return (not self.traceback and not self.killed and not self.lost and self.code in self.expected
                and (self.phrase is None or self.phrase in self.err))

    def describe(self) -> str:
        return (f"{self.case}: exit {self.code} (expected {self.expected}), traceback {self.traceback}, "
                f"lost {self.lost}, phrase {self.phrase!r} {'found' if self.phrase and self.phrase in self.err else ''}"
                f"\n{self.err[-3000:]}")


RECORDS: list[Outcome] = []


def check(outcome: Outcome) -> Outcome:
    """Record the outcome (for the counts) and fail the test unless it ended cleanly."""
    RECORDS.append(outcome)
    assert outcome.clean, outcome.describe()
    return outcome


def summary() -> dict:
    return {"cases": len(RECORDS), "clean": sum(o.clean for o in RECORDS),
            "tracebacks": sum(o.traceback for o in RECORDS), "files_lost": sum(bool(o.lost) for o in RECORDS),
            "killed_by_a_signal": sum(o.killed for o in RECORDS),
            "by_category": {c: sum(o.category == c for o in RECORDS)
                            for c in dict.fromkeys(o.category for o in RECORDS)},
            "not_clean": [o.case for o in RECORDS if not o.clean]}


def run_subprocess(*args, env: dict | None = None, timeout: int = 600,
                   as_background_job: bool = False) -> tuple[int, str, str]:
    """``python -m sparsecc.cli ARGS`` as a user runs it (the timing cache off unless ``env`` says).

    It gets SIGINT as at a terminal, whatever this process has (a test run started in the background
    has it ignored, and a child would inherit that); ``as_background_job`` starts it with SIGINT
    ignored, as a shell starts ``COMMAND &``.
    """
    full_env = {**os.environ, **TINY_ENV, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "sparsecc.cli", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env=full_env, preexec_fn=_sigint(as_background_job))
    return result.returncode, result.stdout, result.stderr


def _sigint(ignored: bool):
    """A child's SIGINT disposition, set between fork and exec: ignored, or the default (Python then raises
    KeyboardInterrupt, as at a terminal)."""
    disposition = signal.SIG_IGN if ignored else signal.SIG_DFL
    return lambda: signal.signal(signal.SIGINT, disposition)


def start_subprocess(*args, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **TINY_ENV, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "sparsecc.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, preexec_fn=_sigint(False))


def run_inprocess(capsys, *args) -> tuple[int, str, str]:
    """``sparsecc.cli.main(ARGS)`` in this process (fast), with what it printed."""
    from sparsecc.cli import main
    from sparsecc.log import logger

    saved = list(logger.handlers)  # main() logs to the stderr of its first call: give each call its own
    for handler in saved:
        logger.removeHandler(handler)
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse refusing an option
        code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved:
            logger.addHandler(handler)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included), relative path -> sha256."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lost(before: dict[str, str], after: dict[str, str], keep=None) -> list[str]:
    """The files of ``before`` (or only those in ``keep``) that are missing or changed in ``after``."""
    names = before if keep is None else [k for k in before if k in set(keep)]
    return sorted(name for name in names if after.get(name) != before[name])


def complete_outputs(folder: Path) -> list[str]:
    """What is wrong with a folder a command finished writing: leftovers, or outputs its manifest lists
    that are missing (empty when complete)."""
    import json

    problems = [p.name for p in folder.iterdir() if p.name.startswith((".sparsecc-staging-", ".sparsecc-lock"))]
    try:
        listed = json.loads((folder / ".sparsecc-outputs.json").read_text())["outputs"]
    except (OSError, ValueError, KeyError):
        return problems + [".sparsecc-outputs.json"]
    return problems + [name for name in listed if not (folder / name).exists()]
