"""SIGINT at random moments of a real compile: every one must exit 130 with the folder as before or complete.

The output folder first holds a complete compile of the same model (recipe ``none``) and a file of the
user's. Each trial starts ``sparsecc compile MODEL -r RECIPE -o OUT --force`` (with its own timing cache
file, so every trial measures and writes it), sends SIGINT after a random delay drawn from the span of an
uninterrupted run, and then checks:

- the exit status is 130 (a trial whose compile finished before the signal is counted apart, and drawn again);
- no traceback, no death by a signal;
- the folder is exactly as before, or complete: every output the folder's manifest lists is there, its
  report lists the same outputs, nothing is left over (no staging folder, no lock), the user's file is intact;
- the timing cache file is absent or valid JSON;
- no temporary folder of the run is left in ``$TMPDIR``.

Usage: ``python tools/stress_interrupts.py [--trials 20] [--recipe groupwise-50] [--json FILE]``
(default model: the bundled ``resnet18-digits`` checkpoint at 1x1x32x32).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def complete(folder: Path) -> list[str]:
    """What is wrong with the folder as a finished compile's (empty when complete)."""
    problems = [p.name for p in folder.iterdir() if p.name.startswith((".sparsecc-staging-", ".sparsecc-lock"))]
    try:
        listed = json.loads((folder / ".sparsecc-outputs.json").read_text())["outputs"]
        reported = json.loads((folder / "report.json").read_text())["outputs"]
    except (OSError, ValueError, KeyError) as exc:
        return problems + [f"manifest or report unreadable: {exc}"]
    problems += [f"missing {n}" for n in listed if not (folder / n).exists()]
    problems += [] if sorted(reported) == sorted(listed) else ["report and manifest disagree"]
    return problems


def compile_command(model: str, recipe: str, out: Path, cache: Path, shape: str | None) -> list[str]:
    command = [sys.executable, "-m", "sparsecc.cli", "compile", model, "-r", recipe, "-o", str(out), "--force",
               "--timing-cache", str(cache)]
    return command + (["--shape", shape] if shape else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="ONNX model. Default: the bundled resnet18-digits checkpoint")
    parser.add_argument("--shape", help="--shape for the compile. Default: input:1x1x32x32 for the default model")
    parser.add_argument("--recipe", default="groupwise-50")
    parser.add_argument("--trials", type=int, default=20, help="interrupts to deliver. Default: 20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the trials and the summary here")
    args = parser.parse_args()
    if args.model is None:
        from sparsecc.zoo import checkpoint_path

        args.model, args.shape = str(checkpoint_path("resnet18-digits")), args.shape or "input:1x1x32x32"
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="stress-interrupts-"))
    tmp = work / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = work / "out"
    subprocess.run([sys.executable, "-m", "sparsecc.cli", "compile", args.model, "-o", str(out), "--timing-cache",
                    "off", *(["--shape", args.shape] if args.shape else [])], check=True, capture_output=True, env=env)
    (out / "notes.txt").write_text("the user's")

    start = time.perf_counter()
    baseline = subprocess.run(compile_command(args.model, args.recipe, work / "baseline", work / "c0.json",
                                              args.shape), capture_output=True, text=True, env=env)
    span = time.perf_counter() - start
    assert baseline.returncode == 0, baseline.stderr
    print(f"uninterrupted compile: {span:.1f} s (load average {os.getloadavg()[0]:.2f}); delays drawn from "
          f"0.3 s to {1.05 * span:.1f} s", file=sys.stderr)

    trials, finished_first = [], 0
    while len(trials) < args.trials:
        before = snapshot(out)
        cache = work / f"cache-{len(trials) + finished_first + 1}.json"
        delay = rng.uniform(0.3, 1.05 * span)  # a draw after the end is drawn again
        process = subprocess.Popen(compile_command(args.model, args.recipe, out, cache, args.shape),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=900)
        if process.returncode == 0 and "interrupted" not in err:
            finished_first += 1  # the compile ended before the signal: not an interrupt, draw again
            continue
        after = snapshot(out)
        state = "as before" if after == before else "complete" if not complete(out) else "BROKEN"
        try:
            cache_ok = not cache.exists() or bool(json.loads(cache.read_text()))
        except ValueError:
            cache_ok = False
        stage = next((line for line in reversed(err.splitlines()) if line.startswith("[sparsecc]")), "(start)")
        trial = {"delay_s": round(delay, 2), "exit": process.returncode, "folder": state,
                 "traceback": "Traceback" in err, "cache_ok": cache_ok,
                 "user_file_intact": (out / "notes.txt").read_text() == "the user's",
                 "tmp_left": sorted(p.name for p in tmp.iterdir() if p.name.startswith("sparsecc-")),
                 "last_progress": stage.removeprefix("[sparsecc] ")[:60], "load": round(os.getloadavg()[0], 2)}
        trial["ok"] = (trial["exit"] == 130 and state != "BROKEN" and not trial["traceback"] and cache_ok
                       and trial["user_file_intact"] and not trial["tmp_left"])
        if not trial["ok"]:
            trial["stderr"] = err[-4000:]
        trials.append(trial)
        print(f"{len(trials):2d}  SIGINT at {delay:5.1f} s  exit {trial['exit']}  folder {state:9s}  "
              f"{'ok' if trial['ok'] else 'FAIL'}  during: {trial['last_progress']}  (load {trial['load']})")
    summary = {"trials": len(trials), "ok": sum(t["ok"] for t in trials),
               "exit_130": sum(t["exit"] == 130 for t in trials),
               "as_before": sum(t["folder"] == "as before" for t in trials),
               "complete": sum(t["folder"] == "complete" for t in trials),
               "broken": sum(t["folder"] == "BROKEN" for t in trials),
               "tracebacks": sum(t["traceback"] for t in trials),
               "finished_before_the_signal": finished_first, "uninterrupted_s": round(span, 1),
               "model": args.model, "recipe": args.recipe}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "trials": trials}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["ok"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
