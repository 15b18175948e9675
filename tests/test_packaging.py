"""Promises about the package itself: cheap import, install layout."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str, cwd) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=cwd).stdout.strip()


def test_import_is_cheap(tmp_path):
    code = ("import sys, sparsecc, sparsecc.cli; sparsecc.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'tensorrt', 'onnxruntime', 'matplotlib') if m in sys.modules))")
    assert _python(code, tmp_path) == "[]"


def test_passes_plugins_models_install_under_sparsecc_only(tmp_path):
    code = ("import importlib.util as u, sparsecc.passes, sparsecc.plugins, sparsecc.models; "
            "print([u.find_spec(n) is None for n in ('passes', 'plugins', 'models')])")
    assert _python(code, tmp_path) == "[True, True, True]"


def test_time_interleaved_alternates_and_counts():
    from sparsecc.bench import time_interleaved

    calls = []

    class Fake:
        def __init__(self, label):
            self.label = label

        def run(self, feeds):
            calls.append(self.label)
            return {}

    timings = time_interleaved({"a": Fake("a"), "b": Fake("b")}, {"a": {}, "b": {}}, warmup=1, runs=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(t.times_ms) for t in timings.values()] == [4, 4]
    assert all(t.min_ms <= t.median_ms for t in timings.values())


def test_every_package_is_listed_for_installation():
    """A sub-package missing from pyproject.toml's list would be left out of the wheel."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"sparsecc." + ".".join(p.parent.relative_to(repo / "sparsecc").parts) if p.parent != repo / "sparsecc"
             else "sparsecc" for p in (repo / "sparsecc").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
