"""File locks, and temporary folders that a later run recognises as left over by a dead one.

:class:`FileLock` serialises writers (of an output folder, of the timing cache) with ``flock``:
the kernel releases it when its holder dies, however it dies, so a lock is never stale. The lock
file is removed on release; a waiter that then gets the lock of the removed file notices (the
path names another file, or none) and locks again.

:func:`private_tempdir` makes a folder in ``$TMPDIR`` that holds a locked marker for as long as
the process lives. :func:`sweep_private_tempdirs` removes the folders whose marker nobody holds:
those of runs that were killed (SIGKILL, the OOM killer) before they could clean up, with the
hard links to input models they may hold.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable

from sparsecc.errors import OutputError

MARKER = ".sparsecc-alive"
TEMP_PREFIX = "sparsecc-run-"


class FileLock:
    """An exclusive lock on ``path`` (created if missing, removed on release).

    Args:
        path: The lock file.
        waiting: Called with the holder's pid (or None) before blocking on a held lock. Defaults to none.
    """

    def __init__(self, path: str | os.PathLike, waiting: Callable[[int | None], None] | None = None):
        self.path = Path(path)
        self.waiting = waiting
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        """Wait for the lock and take it. Raises OSError when the lock file cannot be made."""
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self.waiting is not None:
                        self.waiting(_read_pid(fd))
                    fcntl.flock(fd, fcntl.LOCK_EX)  # a signal interrupts the wait
                if _same_file(fd, self.path):
                    os.ftruncate(fd, 0)
                    os.write(fd, str(os.getpid()).encode())
                    self._fd = fd
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder before us removed the file: lock the one there now
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees it is gone
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "x")
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# folder -> the descriptor holding its marker's lock, for as long as the folder is in use
_HELD: dict[Path, int] = {}
_swept = False


def private_tempdir(kind: str) -> Path:
    """A new folder in ``$TMPDIR`` marked as in use by this process (see :func:`sweep_private_tempdirs`).

    Raises:
        OutputError: ``$TMPDIR`` cannot be written.
    """
    global _swept
    if not _swept:
        _swept = True
        sweep_private_tempdirs()
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{kind}-"))
        # locked under a temporary name, then renamed: a sweeper never sees an unlocked marker
        fd = os.open(path / f"{MARKER}.new", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(path / f"{MARKER}.new", path / MARKER)
    except OSError as exc:
        raise OutputError(f"cannot make a temporary folder ({exc.strerror})", where=tempfile.gettempdir(),
                          fix="free space there, or point TMPDIR at a writable folder") from None
    _HELD[path] = fd
    return path


def remove_private_tempdir(path: Path) -> None:
    """Delete a folder made by :func:`private_tempdir` and let go of its marker."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def finalize_private_tempdir(owner: object, path: Path) -> weakref.finalize:
    """Remove ``path`` when ``owner`` is collected or the interpreter exits (no ``__del__``: an
    exception raised in one, a Ctrl-C included, is printed and lost)."""
    return weakref.finalize(owner, remove_private_tempdir, path)


def sweep_private_tempdirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the private temporary folders of dead runs; returns those removed.

    A folder counts only if it carries the marker and nobody holds its lock: a live run's folder,
    or any folder sparsecc did not make, is left alone.
    """
    removed = []
    base = Path(root or tempfile.gettempdir())
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for folder in candidates:
        marker = folder / MARKER
        try:
            if folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed.append(folder)
    return removed
