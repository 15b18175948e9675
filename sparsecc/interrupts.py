"""SIGINT and SIGTERM: never lost, never in the middle of moving outputs into place.

While :func:`handling` is active (every command that writes, and the CLI), either signal raises
:class:`Interrupted`, a ``KeyboardInterrupt``, so code that cleans up after Ctrl-C cleans up after
SIGTERM too, and the CLI exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

The signal is also *recorded*. Library code can swallow the exception (a bare ``except:`` around
a probe, an exception raised inside a ``__del__``, a Python callback run by ONNX Runtime), but it
cannot make the signal disappear: :func:`check` raises it again, and committing outputs starts
with a check, so a swallowed interrupt still stops the command before anything is replaced.
Inside :func:`deferred` (moving outputs into place, removing a staging folder, a callback run by
ONNX Runtime, where an exception would abort the process) a signal is only recorded; it is raised
when the section ends.

Tests put a signal at a fixed point instead of at a random moment: with
``SPARSECC_TEST_SIGNAL=POINT[@N]:SIG`` in the environment, the N-th call (default the first) of
:func:`point` with that name sends SIG (INT, TERM or KILL) to the process.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

TEST_HOOK = "SPARSECC_TEST_SIGNAL"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What each signal's handler is when nobody set one (None: set outside Python).
_DEFAULT_HANDLERS = {signal.SIGINT: (signal.default_int_handler,), signal.SIGTERM: (signal.SIG_DFL, None)}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []
_defer_depth = 0
_handling_depth = 0
_saved_handlers: dict[int, object] = {}
_point_counts: dict[str, int] = {}


def _handler(signum, frame) -> None:
    _received.append(signum)
    if _defer_depth == 0 and not _in_finalizer(frame):
        raise Interrupted(signum)


def _in_finalizer(frame) -> bool:
    """Whether Python runs a ``__del__`` or a ``weakref.finalize`` callback here: an exception raised
    there is printed as a traceback and dropped, so the signal waits for the next :func:`check`."""
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith(f"{os.sep}weakref.py"):
            return True
        frame = frame.f_back
    return False


def exit_code(exc: BaseException) -> int:
    """The exit status for an interrupt: 128 + the signal (130 for a plain KeyboardInterrupt)."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


@contextmanager
def handling() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the duration (nested uses share one).

    Only in the main thread, and each signal only over Python's default handler for it: a program
    that embeds sparsecc and handles a signal itself keeps its handler, and an ignored SIGINT stays
    ignored (a shell starts background jobs so), while SIGTERM is still handled there.
    """
    global _handling_depth
    install = _handling_depth == 0 and threading.current_thread() is threading.main_thread()
    if install:
        _received.clear()
        _point_counts.clear()
        for signum in SIGNALS:
            if signal.getsignal(signum) in _DEFAULT_HANDLERS[signum]:
                _saved_handlers[signum] = signal.signal(signum, _handler)
    _handling_depth += 1
    try:
        yield
    finally:
        _handling_depth -= 1
        if install:
            for signum, previous in _saved_handlers.items():
                signal.signal(signum, previous)
            _saved_handlers.clear()
            _received.clear()


def ignore_from_now() -> None:
    """Ignore SIGINT and SIGTERM for the rest of the process, from within :func:`handling` (a program whose
    work is over: a signal now cannot leave anything half done, and must not turn into a traceback)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
        if signum in _saved_handlers:
            _saved_handlers[signum] = signal.SIG_IGN


def received() -> int | None:
    """The first signal received while handling, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived, even one whose exception something swallowed."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def deferred(raise_after: bool = True) -> Iterator[None]:
    """A section no signal breaks into: a signal that arrives in it is recorded, and raised when the
    section ends (unless an exception already leaves it, or ``raise_after`` is False)."""
    global _defer_depth
    before = len(_received)
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    if raise_after and _defer_depth == 0 and len(_received) > before:
        raise Interrupted(_received[before])


def point(name: str) -> None:
    """A fixed point where a test can deliver a signal (see the module docstring); free otherwise."""
    spec = os.environ.get(TEST_HOOK)
    if not spec:
        return
    where, _, sig = spec.partition(":")
    wanted, _, nth = where.partition("@")
    if wanted != name:
        return
    _point_counts[name] = _point_counts.get(name, 0) + 1
    if _point_counts[name] != int(nth or 1):
        return
    signum = getattr(signal, "SIG" + (sig or "INT").upper())
    if signum == signal.SIGKILL:
        os.kill(os.getpid(), signum)
    # to the main thread, where Python runs handlers; CPython runs it before pthread_kill returns
    signal.pthread_kill(threading.main_thread().ident, signum)
