"""The safety probe, outputs: output-folder abuse, concurrent runs, killed runs, interrupts at fixed points,
corrupted and unwritable timing caches, and every command that writes.

Every case must end cleanly (tests/probe.py). Signals are sent at fixed points through the test hook of
:mod:`sparsecc.interrupts` (``SPARSECC_TEST_SIGNAL``), so nothing here depends on timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import conv_bn_relu_fc, save
from hostile import external_weights, plugin_model
from probe import (Outcome, check, complete_outputs, lost, run_inprocess, run_subprocess, snapshot,
                   start_subprocess)
from test_surprises import conv_chain

import sparsecc


@pytest.fixture
def model(tmp_path):
    return save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")


@pytest.fixture
def earlier(tmp_path, model):
    """An output folder holding an earlier compile's outputs and a file of the user's."""
    out = tmp_path / "out"
    sparsecc.compile_model(model, "none", out, timing_cache="off")
    (out / "notes.txt").write_text("mine")
    return out


# -- data loss ------------------------------------------------------------------------------------------------------

def test_force_into_the_inputs_own_folder_keeps_its_data_and_the_users_files(capsys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    model = external_weights(folder, "foo.onnx", "model.onnx.data")  # a data file named like an output's
    (folder / "plan.stage2.json").write_text('{"mine": true}')
    before = snapshot(folder)
    code, _, err = run_inprocess(capsys, "compile", model, "-o", folder, "--force", "--timing-cache", "off")
    check(Outcome("force-into-input-folder", "data loss", code, err, (0,), lost=lost(before, snapshot(folder))))
    sparsecc.load_model(model)  # still loads


def test_an_output_that_would_replace_the_inputs_data_is_refused(capsys, tmp_path, monkeypatch):
    from sparsecc import onnx_files

    folder = tmp_path / "in"
    folder.mkdir()
    model = external_weights(folder, "foo.onnx", "model.onnx.data")
    monkeypatch.setattr(onnx_files, "EXTERNAL_ABOVE", 1000)  # the compiled model gets model.onnx.data too
    before = snapshot(folder)
    code, _, err = run_inprocess(capsys, "compile", model, "-o", folder, "--force", "--timing-cache", "off")
    check(Outcome("output-replaces-input-data", "data loss", code, err, (2,), "would replace files this command reads",
                  lost(before, snapshot(folder))))
    assert snapshot(folder) == before  # nothing moved


def test_a_path_spelled_through_a_missing_folder_is_checked_as_the_folder_it_names(capsys, tmp_path, model):
    full = tmp_path / "full"
    full.mkdir()
    (full / "theirs.txt").write_text("theirs")
    before = snapshot(full)
    code, _, err = run_inprocess(capsys, "compile", model, "-o", tmp_path / "missing" / ".." / "full",
                                 "--timing-cache", "off")
    check(Outcome("dotdot-spelling", "data loss", code, err, (2,), "not empty", lost(before, snapshot(full))))
    assert not (tmp_path / "missing").exists()


def test_a_failed_compile_removes_only_what_it_wrote(capsys, tmp_path, monkeypatch, model):
    from sparsecc import compiler
    from sparsecc.errors import ModelLoadError

    out = tmp_path / "new"

    def another_writer_then_a_failure(original, config, files):
        (out / "theirs.txt").write_text("written meanwhile")
        raise ModelLoadError("a failure after another program wrote into the folder")

    monkeypatch.setattr(compiler, "check_runs_on_onnxruntime", another_writer_then_a_failure)
    code, _, err = run_inprocess(capsys, "compile", model, "-o", out, "--timing-cache", "off")
    check(Outcome("failed-compile-keeps-others-files", "data loss", code, err, (2,), "a failure after",
                  lost({"theirs.txt": "x"}, {"theirs.txt": "x"} if (out / "theirs.txt").is_file() else {})))
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]


@pytest.mark.parametrize("force", [False, True])
def test_concurrent_compiles_into_one_folder_are_serialised(tmp_path, model, force):
    out = tmp_path / "shared"
    extra = ["--force"] if force else []
    runs = [start_subprocess("compile", model, "-o", out, *extra) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    expected = [0, 0] if force else [0, 2]  # without --force the second finds the first one's outputs
    for index, (code, err) in enumerate(results):
        check(Outcome(f"concurrent-{'force' if force else 'new'}-{index}", "output folders", code, err,
                      (0,) if force else (0, 2), lost=complete_outputs(out)))
    assert codes == expected, results


# -- killed runs: their leftovers are recognised and cleaned by the next run -----------------------------------------

def test_a_killed_compile_does_not_block_the_next_one(tmp_path, model):
    out = tmp_path / "new"
    code, _, _ = run_subprocess("compile", model, "-o", out, env={"SPARSECC_TEST_SIGNAL": "written:KILL"})
    assert code == -9 and any(p.name.startswith(".sparsecc-staging-") for p in out.iterdir())
    code, _, err = run_subprocess("compile", model, "-o", out)  # no --force: the leftovers are not the user's
    check(Outcome("killed-then-compile-again", "output folders", code, err, (0,), lost=complete_outputs(out)))


def test_a_commit_killed_midway_is_completed_by_the_next_run(tmp_path, model, earlier):
    before = snapshot(earlier)
    code, _, _ = run_subprocess("compile", model, "-r", "detect", "-o", earlier, "--force",
                                env={"SPARSECC_TEST_SIGNAL": "commit:KILL"})
    assert code == -9
    code, _, err = run_subprocess("compile", model, "-o", earlier, "--force")
    check(Outcome("killed-mid-commit", "output folders", code, err, (0,), "completing the outputs of an interrupted",
                  complete_outputs(earlier) + lost(before, snapshot(earlier), keep=["notes.txt"])))


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path, model):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    code, _, _ = run_subprocess("compile", model, "-o", tmp_path / "a",
                                env={"SPARSECC_TEST_SIGNAL": "verify:KILL", "TMPDIR": str(tmp)})
    left = [p for p in tmp.iterdir() if p.name.startswith("sparsecc-run-")]
    assert code == -9 and left and any(f.name.endswith(".data") for f in left[0].iterdir())  # a link to the input
    code, _, err = run_subprocess("compile", model, "-o", tmp_path / "b", env={"TMPDIR": str(tmp)})
    check(Outcome("killed-tmpdir-leftover", "output folders", code, err, (0,),  # (ONNX Runtime keeps a .ses file)
                  lost=[p.name for p in tmp.iterdir() if p.name.startswith("sparsecc-")]))


# -- SIGINT / SIGTERM at fixed points: exit 130 / 143, the folder as before or complete ------------------------------

POINTS = {"loaded": "before", "verify": "before", "pass": "before", "written": "before", "staged": "complete",
          "commit": "complete"}


def _interrupted_compile(model, earlier, point: str, signal_name: str, **options) -> tuple[int, str, list[str]]:
    """Compile into ``earlier`` with a signal sent at ``point``: exit code, stderr, what is wrong with the folder
    (changed when the point is before the commit; incomplete, or the user's file lost, when after)."""
    before = snapshot(earlier)
    code, _, err = run_subprocess("compile", model, "-r", "detect", "-o", earlier, "--force",
                                  env={"SPARSECC_TEST_SIGNAL": f"{point}:{signal_name}"}, **options)
    after = snapshot(earlier)
    if POINTS[point] == "before":
        return code, err, lost(before, after) + sorted(set(after) - set(before))
    problems = complete_outputs(earlier) + lost(before, after, keep=["notes.txt"])
    return code, err, problems + ([] if after != before else ["nothing was replaced"])


@pytest.mark.parametrize("signal_name", ["INT", "TERM"])
@pytest.mark.parametrize("point", list(POINTS))
def test_an_interrupt_at_any_point_leaves_the_folder_as_before_or_complete(tmp_path, model, earlier, point,
                                                                           signal_name):
    code, err, problems = _interrupted_compile(model, earlier, point, signal_name)
    check(Outcome(f"{signal_name}-at-{point}", "interrupts", code, err, (130 if signal_name == "INT" else 143,),
                  "interrupted", problems))


@pytest.mark.parametrize("point", ["pass", "staged"])
def test_a_background_job_handles_sigterm_and_keeps_sigint_ignored(tmp_path, model, earlier, point):
    # A shell starts `sparsecc compile ... &` with SIGINT ignored: SIGTERM must still clean up.
    code, err, problems = _interrupted_compile(model, earlier, point, "TERM", as_background_job=True)
    check(Outcome(f"TERM-at-{point}-in-background", "interrupts", code, err, (143,), "interrupted", problems))
    code, err, _ = _interrupted_compile(model, earlier, point, "INT", as_background_job=True)
    check(Outcome(f"ignored-INT-at-{point}-in-background", "interrupts", code, err, (0,),
                  lost=complete_outputs(earlier)))


@pytest.mark.parametrize("signal_name", ["INT", "TERM"])
def test_an_interrupt_inside_onnx_runtimes_python_callback_does_not_abort(tmp_path, signal_name):
    plugin = save(plugin_model(), tmp_path / "plugin.onnx")
    code, _, err = run_subprocess("compile", plugin, "-o", tmp_path / "out",
                                  env={"SPARSECC_TEST_SIGNAL": f"reference-op:{signal_name}"})
    check(Outcome(f"{signal_name}-in-reference-op", "interrupts", code, err, (130 if signal_name == "INT" else 143,),
                  "nothing was written", [p.name for p in (tmp_path / "out").glob("*")]))


def test_an_interrupt_something_swallowed_still_stops_the_compile(capsys, tmp_path, monkeypatch, earlier, model):
    import os
    import signal

    from sparsecc import compiler

    real = compiler.check_runs_on_onnxruntime

    def swallowing_probe(*args):
        try:  # as a bare `except:` in a library probe would
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001
            pass
        return real(*args)

    monkeypatch.setattr(compiler, "check_runs_on_onnxruntime", swallowing_probe)
    before = snapshot(earlier)
    code, _, err = run_inprocess(capsys, "compile", model, "-r", "detect", "-o", earlier, "--force",
                                 "--timing-cache", "off")
    check(Outcome("swallowed-interrupt", "interrupts", code, err, (130,), "nothing was written",
                  lost(before, snapshot(earlier))))


def test_a_compile_never_imports_torch_in_a_probe(tmp_path, model):
    code = ("import sys, sparsecc\n"
            f"sparsecc.compile_model({str(model)!r}, 'detect', {str(tmp_path / 'o')!r}, timing_cache='off')\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    check(Outcome("no-torch-import", "interrupts", result.returncode, result.stderr, (0,)))
    assert result.stdout == "False\n"  # and Polygraphy printed nothing


# -- the timing cache ------------------------------------------------------------------------------------------------

CACHES = {"corrupt": "{not json", "foreign": '{"something": 1}',
          "entries-list": '{"sparsecc_timing_cache": 1, "entries": [1, 2]}',
          "malformed-entries": '{"sparsecc_timing_cache": 1, "entries": {"k": {"seconds": "fast"}, "j": 3}}'}


@pytest.mark.parametrize("case", sorted(CACHES))
def test_a_bad_timing_cache_is_set_aside_and_the_compile_goes_on(capsys, tmp_path, case):
    model = conv_chain(tmp_path)
    cache = tmp_path / "cache.json"
    cache.write_text(CACHES[case])
    code, _, err = run_inprocess(capsys, "compile", model, "-r", "groupwise-50", "-o", tmp_path / "out",
                                 "--timing-cache", cache)
    check(Outcome(f"cache-{case}", "caches", code, err, (0,), "malformed entr" if case == "malformed-entries"
                  else "set aside"))
    assert json.loads(cache.read_text())["entries"]  # rebuilt with this compile's timings


def test_an_unwritable_timing_cache_is_a_warning(capsys, tmp_path):
    model = conv_chain(tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder")
    code, _, err = run_inprocess(capsys, "compile", model, "-r", "groupwise-50", "-o", tmp_path / "out",
                                 "--timing-cache", tmp_path / "afile" / "cache.json")
    check(Outcome("cache-unwritable", "caches", code, err, (0,), "cannot be written"))
    assert (tmp_path / "out" / "model.onnx").exists()


def test_concurrent_writers_keep_every_timing(tmp_path):
    cache = tmp_path / "cache.json"
    writer = ("import sys\nfrom sparsecc.lowering import TimingCache\n"
              "for i in range(40):\n"
              "    c = TimingCache(sys.argv[1])\n"
              "    c.put(f'{sys.argv[2]}-{i}', {'seconds': 1.0, 'spread': 0.0})\n"
              "    c.save()\n")
    runs = [subprocess.Popen([sys.executable, "-c", writer, str(cache), str(n)], stderr=subprocess.PIPE, text=True)
            for n in range(4)]
    errors = "".join(p.communicate(timeout=600)[1] for p in runs)
    kept = len(json.loads(cache.read_text())["entries"])
    check(Outcome("cache-4x40-writers", "caches", max(p.returncode for p in runs), errors, (0,),
                  lost=[] if kept == 160 else [f"{160 - kept} of 160 entries"]))


# -- every command that writes ---------------------------------------------------------------------------------------

def test_finetune_refuses_a_folder_that_is_not_empty_and_leaves_none_when_refused(capsys, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "ft"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, _, err = run_inprocess(capsys, "finetune", "resnet18-digits", "--data", "digits", "--recipe",
                                 "groupwise-50", "-o", out)
    check(Outcome("finetune-not-empty", "output folders", code, err, (2,), "not empty", lost(before, snapshot(out))))
    code, _, err = run_inprocess(capsys, "finetune", "resnet18-digits", "--data", "digits", "--recipe", "hybrid-24",
                                 "-o", tmp_path / "new")
    check(Outcome("finetune-refused-recipe", "output folders", code, err, (2,), "hybrid-24",
                  [tmp_path.name + "/new"] if (tmp_path / "new").exists() else []))


@pytest.mark.slow
def test_demo_refuses_a_folder_that_is_not_empty_and_force_removes_only_its_stale_outputs(capsys, tmp_path):
    from sparsecc.demo import run_demo

    out = tmp_path / "demo"
    run_demo(out, recipes=["none", "detect"], runs=1, warmup=0, finetuned=False)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, _, err = run_inprocess(capsys, "demo", "-o", out, "--recipe", "none", "--no-finetuned", "--runs", "1")
    check(Outcome("demo-not-empty", "output folders", code, err, (2,), "not empty", lost(before, snapshot(out))))
    code, _, err = run_inprocess(capsys, "demo", "-o", out, "--recipe", "none", "--no-finetuned", "--runs", "1",
                                 "--force")
    check(Outcome("demo-force-stale-variant", "output folders", code, err, (0,),
                  lost=complete_outputs(out) + lost(before, snapshot(out), keep=["notes.txt"])
                  + (["detect/ left behind"] if (out / "detect").exists() else [])))


def test_build_without_tensorrt_writes_nothing(capsys, tmp_path, model):
    code, _, err = run_inprocess(capsys, "build", model, "-o", tmp_path / "model.engine")
    check(Outcome("build-unavailable", "output folders", code, err, (2,), "TensorRT",
                  ["model.engine"] if (tmp_path / "model.engine").exists() else []))


def test_zoo_export_of_a_trained_model_exports_its_trained_weights(capsys, tmp_path):
    pytest.importorskip("torch")
    from sparsecc.zoo import checkpoint_path

    code, out, err = run_inprocess(capsys, "zoo", "export", "resnet18-digits", "-o", tmp_path / "r.onnx")
    check(Outcome("zoo-export-trained", "defaults", code, err + out, (0,), "trained weights from the bundled"))
    exported, trained = ({t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
                         for path in (tmp_path / "r.onnx", checkpoint_path("resnet18-digits")))
    same = [n for n in trained if n in exported and exported[n].shape == trained[n].shape
            and np.allclose(exported[n], trained[n], atol=1e-6)]
    assert len(same) >= len(trained) // 2, (len(same), len(trained))
    code, out, err = run_inprocess(capsys, "zoo", "export", "resnet18-digits", "-o", tmp_path / "u.onnx", "--untrained")
    assert code == 0 and "random initial weights" in out


def test_a_test_session_leaves_no_temporary_folder(tmp_path):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if k != "SPARSECC_TIMING_CACHE"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(Path(__file__).parent / "test_safety_inputs.py"), "-k", "dump_dir_naming"],
                            capture_output=True, text=True, timeout=600, env={**env, "TMPDIR": str(tmp)})
    left = sorted(p.name for p in tmp.iterdir() if p.name.startswith("sparsecc-"))
    check(Outcome("test-session-tmp", "output folders", result.returncode, result.stderr, (0,), lost=left))
