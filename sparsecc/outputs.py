"""One output discipline for every command that writes (compile, finetune, demo, build, characterize, zoo export).

- **Paths are resolved first** (``..``, symbolic links), so every check is about the folder that
  is written, whatever the spelling.
- **A folder output** (``-o DIR``, :class:`OutputFolder`) is built in a private staging folder inside
  it (``.sparsecc-staging-*``) and moved into place only when the command succeeded. A folder that
  holds anything needs ``--force``; then same-named files are replaced, and of the files that are not
  written again only those the last sparsecc command listed in the folder's ``.sparsecc-outputs.json``
  are removed: never a file sparsecc did not write. The command's inputs (the model, its external
  data, a plan) are never replaced or removed.
- **Concurrent writers** to one folder are serialised by a lock (``.sparsecc-lock``, ``flock``) held
  from the checks to the commit: the second waits, then sees the first one's outputs.
- **A killed run's leftovers** are recognised by the next run into the folder (under the lock, every
  staging folder is a leftover): a staging folder whose commit had begun is completed from its journal,
  any other is removed. Temporary files of single-file outputs carry their writer's pid.
- **Interrupts** (:mod:`sparsecc.interrupts`): a signal stops the command before the commit (nothing is
  replaced) or after it (everything is); the commit itself runs with signals deferred, and starts by
  checking for a signal something swallowed.
- **A single-file output** (``-o model.engine``, ``--json-out FILE``, :class:`OutputFiles`) is written to a
  temporary file beside it and renamed over it; several files of one command are renamed together.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from sparsecc import interrupts
from sparsecc.errors import OutputError
from sparsecc.locks import FileLock, pid_alive

PREFIX = ".sparsecc-"
LOCK = ".sparsecc-lock"
MANIFEST = ".sparsecc-outputs.json"
STAGING = ".sparsecc-staging-"
JOURNAL = ".sparsecc-commit.json"
REPLACED = ".sparsecc-replaced"

# staging folder -> final folder, for every folder being written by this process (nested outputs)
_ACTIVE: dict[Path, Path] = {}
# folders whose outputs this process moved into place (the CLI says so after an interrupt)
COMMITTED: list[Path] = []


def resolve(path: str | os.PathLike) -> Path:
    """The absolute path with ``~``, ``..`` and symbolic links resolved (missing parts kept as written)."""
    return Path(path).expanduser().resolve()


def final_path(path: str | os.PathLike) -> Path:
    """Where ``path``, inside a staging folder of this process, will be once committed (else ``path``)."""
    path = resolve(path)
    for staging, final in _ACTIVE.items():
        if path == staging or staging in path.parents:
            return final_path(final / path.relative_to(staging))
    return path


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class _Transaction:
    """Interrupt handling (:func:`sparsecc.interrupts.handling`) for as long as outputs are being written;
    :meth:`close` cleans up with signals deferred. Subclasses implement ``_open`` and ``_clean``."""

    _handling = None

    def __enter__(self):
        self._handling = interrupts.handling()
        self._handling.__enter__()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        pass

    def _clean(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Remove what was not committed (see each subclass), and stop handling interrupts."""
        try:
            with interrupts.deferred():
                self._clean()
        finally:
            if self._handling is not None:
                handling, self._handling = self._handling, None
                handling.__exit__(None, None, None)


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove these folders, deepest first, while they are empty: a folder someone wrote into stays."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            return


class OutputFolder(_Transaction):
    """A folder a command writes through a private staging folder (see the module docstring).

    Args:
        path: The folder; created if missing (and removed again if the command fails and it is empty).
        command: The command writing it, for messages and the manifest.
        inputs: Files the command reads: never replaced or removed. :meth:`protect` adds more.
        force: Write into a folder that holds files. Defaults to False (such a folder is refused).

    Write into :attr:`staging`, then call :meth:`commit`; leaving the ``with`` block without a commit
    removes the staging folder and nothing else.
    """

    def __init__(self, path: str | os.PathLike, command: str, inputs: Iterable[str | os.PathLike] = (),
                 force: bool = False):
        self.given = Path(path)
        self.path = resolve(path)
        self.command = command
        self.force = force
        self._inputs = {resolve(p) for p in inputs}
        self.staging: Path | None = None
        self.committed = False
        self._created: list[Path] = []
        self._lock: FileLock | None = None

    def protect(self, *paths: str | os.PathLike) -> None:
        """More inputs (e.g. the external data files a model names, known once it is read)."""
        self._inputs.update(resolve(p) for p in paths)

    def _open(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError("the output path exists and is not a folder", where=str(self.given),
                              fix="give -o a folder (it is created if missing)")
        for attempt in range(10):
            missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self._created = missing
                self._lock = FileLock(self.path / LOCK, self._waiting).acquire()
                break
            except FileNotFoundError:  # a writer we waited for failed and removed the folder it had made
                if attempt == 9:
                    raise OutputError("the output folder keeps disappearing", where=str(self.given),
                                      fix="check what else removes it") from None
            except OSError as exc:
                raise OutputError(f"cannot write to the output folder ({exc.strerror})", where=str(self.given),
                                  fix="choose a writable folder with -o") from None
        self._recover_leftovers()
        shown = sorted(p.name for p in self.path.iterdir() if not p.name.startswith(PREFIX))
        if shown and not self.force:
            listing = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
            raise OutputError(f"the output folder is not empty ({listing})", where=str(self.given),
                              fix="choose a new or empty folder with -o, or pass --force (force=True) to write "
                                  "into it: files named like the outputs are replaced, the others are kept")
        try:
            self.staging = Path(tempfile.mkdtemp(dir=self.path, prefix=STAGING))
        except OSError as exc:
            raise OutputError(f"cannot write to the output folder ({exc.strerror})", where=str(self.given),
                              fix="choose a writable folder with -o") from None
        _ACTIVE[self.staging] = self.path

    def _waiting(self, pid: int | None) -> None:
        from sparsecc.log import progress

        progress(f"waiting for another sparsecc command writing into {self.given}"
                 + (f" (pid {pid})" if pid else ""))

    def _is_input(self, target: Path) -> bool:
        target = resolve(target)
        return any(_inside(i, target) for i in self._inputs)

    def commit(self) -> Path:
        """Move everything in the staging folder into place; returns the folder.

        Raises:
            OutputError: an output would replace one of the command's inputs (nothing is moved).
            Interrupted: a signal arrived, even one something swallowed (nothing is moved).
        """
        assert self.staging is not None, "commit() of a folder that is not open"
        with interrupts.deferred():
            interrupts.check()
            names = sorted(n for n in os.listdir(self.staging) if not n.startswith(PREFIX))
            clashes = [n for n in names if self._is_input(self.path / n)]
            if clashes:
                raise OutputError(f"the outputs {clashes} would replace files this command reads",
                                  where=str(self.given), fix="choose another output folder with -o")
            stale = [n for n in self._previous_outputs() if n not in names and os.path.lexists(self.path / n)
                     and not self._is_input(self.path / n)]
            journal = {"command": self.command, "moves": names, "remove": stale}
            interrupts.point("staged")
            try:
                _write_json(self.staging / JOURNAL, journal)
                self._apply(self.staging, journal)
            except OSError as exc:
                kept, self.staging = self.staging, None  # with its journal: the next run completes the commit
                raise OutputError(f"the outputs could not all be moved into place ({exc.strerror})",
                                  where=str(self.given), fix=f"fix the cause; the next sparsecc command writing into "
                                                             f"this folder completes them from {kept.name}") from None
            _ACTIVE.pop(self.staging, None)
            self.staging = None
            self.committed = True
            COMMITTED.append(self.path)
        return self.path

    def _apply(self, staging: Path, journal: dict) -> None:
        """Carry out a commit's journal; safe to run again after a kill (what was done is skipped)."""
        replaced = staging / REPLACED
        for index, name in enumerate(journal["moves"]):
            source, target = staging / name, self.path / name
            if not os.path.lexists(source):
                continue  # moved before the run was killed
            if os.path.lexists(target) and (source.is_dir() or (target.is_dir() and not target.is_symlink())):
                replaced.mkdir(exist_ok=True)  # a folder is not renamed over: the old one goes aside first
                os.replace(target, replaced / name)
            os.replace(source, target)
            if index == 0:
                interrupts.point("commit")
        for name in journal["remove"]:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                replaced.mkdir(exist_ok=True)
                os.replace(target, replaced / name)
            elif os.path.lexists(target):
                target.unlink()
        _write_json(self.path / MANIFEST, {"sparsecc_outputs": 1, "command": journal["command"],
                                           "outputs": journal["moves"]})
        shutil.rmtree(staging, ignore_errors=True)

    def _previous_outputs(self) -> list[str]:
        """The outputs the last sparsecc command listed here (none if the list is missing or not sparsecc's)."""
        try:
            data = json.loads((self.path / MANIFEST).read_text())
            names = data["outputs"] if isinstance(data, dict) and data.get("sparsecc_outputs") == 1 else []
        except (OSError, ValueError, KeyError):
            return []
        return [n for n in names if _plain_name(n)] if isinstance(names, list) else []

    def _recover_leftovers(self) -> None:
        """Under the lock every staging folder is a killed run's: complete its commit if it had begun, else
        remove it."""
        from sparsecc.log import progress

        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(STAGING) and entry.is_dir() and not entry.is_symlink():
                journal = _read_journal(entry / JOURNAL)
                with interrupts.deferred():
                    if journal is not None:
                        progress(f"completing the outputs of an interrupted sparsecc {journal['command']} in "
                                 f"{self.given}")
                        self._apply(entry, journal)
                    else:
                        shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(MANIFEST + ".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)

    def _clean(self) -> None:
        """Remove the staging folder (if not committed), release the lock, remove the folders this made
        if they are empty."""
        if self.staging is not None:
            _ACTIVE.pop(self.staging, None)
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if not self.committed:
            _remove_empty(self._created)
        self._created = []


def _plain_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not name.startswith(PREFIX))


def _read_journal(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("command"), str)
            and all(isinstance(data.get(k), list) and all(_plain_name(n) for n in data[k])
                    for k in ("moves", "remove"))):
        return None
    return data


def _write_json(path: Path, data: dict) -> None:
    """A small JSON file, atomically (a half-written journal or manifest is never read)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class OutputFiles(_Transaction):
    """Files named by the user (``-o model.engine``, ``--json-out FILE``), replaced together or not at all.

    Each is written to a temporary file beside it (``.NAME.sparsecc-PID-*.tmp``, from :meth:`stage`) and
    renamed over it by :meth:`commit`. A temporary file whose writer is dead is removed by the next
    :meth:`stage` of the same file.

    Args:
        inputs: Files the command reads: refused as outputs.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()):
        self._inputs = {resolve(p) for p in inputs}
        self._staged: list[tuple[Path, Path]] = []
        self._folders: list[tuple[Path, Path]] = []
        self._created: list[Path] = []

    def stage(self, path: str | os.PathLike) -> Path:
        """A new temporary file to write ``path``'s contents into (its folder is created if missing)."""
        # the folder resolved, the name not: a symbolic link there is replaced, never written through
        target = resolve(Path(path).expanduser().absolute().parent) / Path(path).name
        if target in self._inputs or resolve(target) in self._inputs:
            raise OutputError("the output would overwrite an input of this command", where=str(path),
                              fix="choose another output path")
        if target.is_dir():
            raise OutputError("the output path is a folder; a file is expected", where=str(path),
                              fix="give the path of the file to write")
        missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._created += [p for p in missing if p not in self._created]
            _remove_dead_temporaries(target.parent, f".{target.name}.sparsecc-")
            tmp = target.with_name(f".{target.name}.sparsecc-{os.getpid()}-{secrets.token_hex(4)}.tmp")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise OutputError(f"cannot write here ({exc.strerror})", where=str(path),
                              fix="choose a writable output location") from None
        self._staged.append((tmp, target))
        return tmp

    def stage_folder(self, folder: str | os.PathLike) -> Path:
        """A new temporary folder in ``folder``: every file written into it replaces the file of the same
        name in ``folder`` at the commit (for writers that name files themselves, as ONNX external data)."""
        folder = resolve(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _remove_dead_temporaries(folder, ".sparsecc-")
            work = Path(tempfile.mkdtemp(dir=folder, prefix=f".sparsecc-{os.getpid()}-", suffix=".tmp"))
        except OSError as exc:
            raise OutputError(f"cannot write here ({exc.strerror})", where=str(folder),
                              fix="choose a writable output location") from None
        self._folders.append((work, folder))
        return work

    def commit(self) -> None:
        """Rename every staged file over its target (signals deferred; a swallowed one stops it first)."""
        mode = 0o666 & ~_umask()  # temporary files are made 0600; outputs get the usual permissions
        with interrupts.deferred():
            interrupts.check()
            for work, folder in self._folders:
                self._staged += [(work / name, folder / name) for name in sorted(os.listdir(work))]
            try:
                for tmp, target in self._staged:
                    if target.is_dir() and not target.is_symlink():
                        raise IsADirectoryError(21, "a folder has the output's name")
                    os.chmod(tmp, mode)
                    os.replace(tmp, target)
            except OSError as exc:
                raise OutputError(f"cannot write the file ({exc.strerror})", where=str(target),
                                  fix="check free space and permissions, or choose another output location") from None
            self._staged = []
            self._created = []
            for work, _ in self._folders:
                shutil.rmtree(work, ignore_errors=True)
            self._folders = []

    def _clean(self) -> None:
        """Remove the temporary files and folders not committed, and the folders made for them if empty."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []
        for work, _ in self._folders:
            shutil.rmtree(work, ignore_errors=True)
        self._folders = []
        _remove_empty(self._created)
        self._created = []


def _remove_dead_temporaries(folder: Path, prefix: str) -> None:
    """Temporary files (or folders) ``PREFIX<pid>-*.tmp`` in ``folder`` whose writer is dead."""
    for leftover in folder.glob(f"{prefix}*.tmp"):
        pid = leftover.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically (see :class:`OutputFiles`).

    Raises:
        OutputError: the folder cannot be created or written (permissions, a full disk).
    """
    with OutputFiles() as files:
        tmp = files.stage(path)
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot write the file ({exc.strerror})", where=str(path),
                              fix="check free space and permissions, or choose another output location") from None
        files.commit()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
