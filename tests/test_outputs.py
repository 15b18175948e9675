"""sparsecc.outputs, sparsecc.locks and sparsecc.interrupts on their own (the probe tests them through the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from sparsecc import interrupts
from sparsecc.errors import OutputError
from sparsecc.locks import FileLock, private_tempdir, remove_private_tempdir, sweep_private_tempdirs
from sparsecc.outputs import MANIFEST, OutputFiles, OutputFolder, final_path, write_bytes_atomic


def _write(folder, name, text):
    (folder / name).write_text(text)


def test_force_removes_only_the_stale_outputs_the_last_command_listed(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "test") as folder:
        _write(folder.staging, "a.txt", "1")
        _write(folder.staging, "stale.txt", "1")
        (folder.staging / "variant").mkdir()
        _write(folder.staging / "variant", "r.md", "old")
        folder.commit()
    _write(out, "users.txt", "mine")
    with OutputFolder(out, "test", force=True) as folder:
        _write(folder.staging, "a.txt", "2")
        (folder.staging / "variant").mkdir()  # a folder output replaces the folder of the same name
        _write(folder.staging / "variant", "new.md", "new")
        folder.commit()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.txt", "users.txt", "variant"]
    assert (out / "a.txt").read_text() == "2" and sorted(p.name for p in (out / "variant").iterdir()) == ["new.md"]
    assert json.loads((out / MANIFEST).read_text())["outputs"] == ["a.txt", "variant"]


def test_an_output_named_like_an_input_is_refused_and_nothing_moves(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_text("input")
    with pytest.raises(OutputError, match="would replace files this command reads"):
        with OutputFolder(tmp_path, "test", inputs=[source], force=True) as folder:
            _write(folder.staging, "model.onnx", "output")
            _write(folder.staging, "b.txt", "output")
            folder.commit()
    assert source.read_text() == "input" and not (tmp_path / "b.txt").exists()


def test_a_journal_left_by_a_killed_commit_is_completed_and_other_leftovers_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out, "a.txt", "old")
    done = out / ".sparsecc-staging-killed"
    done.mkdir()
    _write(done, "b.txt", "new")  # a.txt was moved before the kill; b.txt was not
    _write(done, ".sparsecc-commit.json", json.dumps({"command": "test", "moves": ["a.txt", "b.txt"], "remove": []}))
    unfinished = out / ".sparsecc-staging-unfinished"
    unfinished.mkdir()
    _write(unfinished, "c.txt", "half")
    with OutputFolder(out, "test", force=True):
        pass
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.txt", "b.txt"]
    assert json.loads((out / MANIFEST).read_text())["outputs"] == ["a.txt", "b.txt"]


def test_a_failed_command_removes_the_folders_it_made_when_they_are_empty(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "new" / "out", "test") as folder:
            _write(folder.staging, "a.txt", "1")
            raise RuntimeError("failed")
    assert not (tmp_path / "new").exists()


def test_nested_outputs_report_where_they_will_be(tmp_path):
    with OutputFolder(tmp_path / "demo", "test") as outer:
        inner = outer.staging / "variant"
        with OutputFolder(inner, "test") as folder:
            assert final_path(folder.path / "model.onnx") == (tmp_path / "demo" / "variant" / "model.onnx").resolve()
            _write(folder.staging, "model.onnx", "m")
            folder.commit()
        outer.commit()
    assert (tmp_path / "demo" / "variant" / "model.onnx").read_text() == "m"


def test_single_files_are_renamed_over_their_targets_and_dead_writers_temporaries_removed(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    dead = tmp_path / ".report.json.sparsecc-999999999-abcd.tmp"  # no such pid
    dead.write_text("left by a killed run")
    with OutputFiles() as files:
        files.stage(target).write_text("new")
        assert target.read_text() == "old"  # nothing replaced before the commit
        files.commit()
    assert target.read_text() == "new" and not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with OutputFiles() as files:
        files.stage(target).write_text("never committed")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with pytest.raises(OutputError, match="a folder"):
        write_bytes_atomic(tmp_path, b"x")


def test_a_symbolic_link_is_replaced_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "out.txt")
    write_bytes_atomic(tmp_path / "out.txt", b"output")
    assert victim.read_text() == "precious" and (tmp_path / "out.txt").read_text() == "output"
    assert not (tmp_path / "out.txt").is_symlink()


def test_a_lock_waits_for_its_holder_and_survives_the_holders_removal_of_the_file(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sparsecc.locks import FileLock\n"
                               f"lock = FileLock({str(path)!r}).acquire()\nprint('held', flush=True)\n"
                               "time.sleep(1.5)\nlock.release()"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waited = []
    with FileLock(path, waiting=waited.append):
        assert path.read_text() == str(os.getpid())
    holder.wait(timeout=60)
    assert waited == [holder.pid] and not path.exists()


def test_only_dead_runs_temporary_folders_are_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    mine = private_tempdir("test")
    dead = subprocess.run([sys.executable, "-c", "from sparsecc.locks import private_tempdir\n"
                           "print(private_tempdir('test'))"], capture_output=True, text=True, env=dict(os.environ))
    dead_folder = tmp_path / os.path.basename(dead.stdout.strip())
    assert dead_folder.is_dir()  # the process ended without removing it (as if killed)
    (tmp_path / "sparsecc-run-not-ours").mkdir()  # no marker: not a folder sparsecc made
    assert sweep_private_tempdirs(tmp_path) == [dead_folder]
    assert mine.is_dir() and (tmp_path / "sparsecc-run-not-ours").is_dir()
    remove_private_tempdir(mine)
    assert not mine.exists()


def test_a_signal_in_a_deferred_section_is_raised_when_it_ends_and_a_swallowed_one_by_check():
    with interrupts.handling():
        with pytest.raises(interrupts.Interrupted) as raised:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached = True  # the section runs to its end
        assert reached and raised.value.exit_code == 143
    with interrupts.handling():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as a library's bare except would
        with pytest.raises(interrupts.Interrupted):
            interrupts.check()
    interrupts.check()  # a new handling() starts afresh; outside it nothing is recorded
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
