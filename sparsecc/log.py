"""One logger for sparsecc, and progress lines that go to stderr.

Progress goes to stderr so that ``--json`` output on stdout stays parseable.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("sparsecc")


def configure(verbose: bool = False) -> None:
    """Send sparsecc's log to stderr; quiet Polygraphy unless verbose."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[sparsecc] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_polygraphy(verbose)


def quiet_polygraphy(verbose: bool = False) -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR


def progress(message: str) -> None:
    """A progress line for long work (stderr, never stdout)."""
    logger.info(message)
