"""Trains the ``*-digits`` zoo models on scikit-learn's digits and writes their checkpoints.

scikit-learn ships the digits data set (1797 8x8 grayscale images, 10
classes) inside its wheel, so training needs no download. Images are scaled
to [0, 1], upsampled to 32x32 with bilinear interpolation to fit the small
CNN stems, and normalised with the training split's mean and standard
deviation. Everything is seeded, so a rerun on the same torch version gives
the same weights.

Writes, into ``--out``:
    ``<name>.onnx``: each trained model, opset 17, dimension 0 named ``batch``.
    ``digits_val.npz``: the validation split, ``x`` float32 (N, 1, 32, 32)
        preprocessed exactly as the models expect, ``y`` int64.
    ``manifest.json``: per checkpoint, the architecture, data set, validation
        accuracy (measured on the ONNX file with ONNX Runtime), input shape,
        training settings and torch version.

Run: ``python -m sparsecc.models.train --out models/checkpoints``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sparsecc.models import ZOO

SEED = 0
VAL_FRACTION = 0.2
SETTINGS = {"epochs": 10, "batch_size": 64, "optimizer": "AdamW", "lr": 3e-3,
            "weight_decay": 5e-4, "schedule": "cosine to 0 over all steps",
            "augmentation": "random shift of up to 2 pixels (background-value padding)", "seed": SEED}


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(x_train, y_train, x_val, y_val)``: float32 (N, 1, 32, 32), int64 labels.

    The split is :func:`sparsecc.data.load_dataset`'s ``digits`` (stratified, seed 0,
    normalised with the training split's statistics).
    """
    from sparsecc.data import load_dataset

    split = load_dataset("digits")
    return split.x_train, split.y_train, split.x_test, split.y_test


def train(name: str, x_train: np.ndarray, y_train: np.ndarray, epochs: int):
    """Trains zoo model ``name`` from its seeded random initialisation; returns the model."""
    import torch

    from sparsecc.finetuning import random_shift
    from sparsecc.zoo import build_model

    torch.manual_seed(SEED)
    model = build_model(name).train()
    generator = torch.Generator().manual_seed(SEED)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = epochs * -(-len(x) // SETTINGS["batch_size"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=SETTINGS["lr"],
                                  weight_decay=SETTINGS["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), SETTINGS["batch_size"]):
            index = order[start:start + SETTINGS["batch_size"]]
            loss = torch.nn.functional.cross_entropy(model(random_shift(x[index], generator)), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"  {name} epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return model.eval()


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier on ONNX Runtime's CPU provider (the scorer the demo uses)."""
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.evaluate import accuracy

    return accuracy(OrtBackend().load(path), x, y)


def main(argv: list[str] | None = None) -> int:
    import torch

    from sparsecc.zoo import export_module

    trained = [name for name, entry in ZOO.items() if entry.checkpoint]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "checkpoints",
                        help="output directory. Defaults to the package's checkpoints/.")
    parser.add_argument("--models", nargs="+", choices=trained, default=trained,
                        help="which models to train. Defaults to all of them.")
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"],
                        help=f"training epochs. Defaults to {SETTINGS['epochs']}.")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (one keeps runs bit-identical). Defaults to 1.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    x_train, y_train, x_val, y_val = load_digits_split()
    np.savez_compressed(args.out / "digits_val.npz", x=x_val, y=y_val)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in args.models:
        entry, started = ZOO[name], time.perf_counter()
        model = train(name, x_train, y_train, args.epochs)
        path = export_module(model, entry, args.out / entry.checkpoint, dynamic_batch=True)
        accuracy = onnx_accuracy(path, x_val, y_val)
        manifest[name] = {
            "file": entry.checkpoint, "architecture": entry.architecture,
            "description": entry.description,
            "dataset": f"scikit-learn digits, 8x8 upsampled to 32x32, stratified "
                       f"{1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} split (seed {SEED})",
            "eval_data": entry.eval_data, "val_samples": int(len(y_val)), "val_accuracy": accuracy,
            "input_shape": ["batch", *entry.inputs[0].shape[1:]], "opset": 17,
            "training": {**SETTINGS, "epochs": args.epochs, "train_samples": int(len(y_train))},
            "torch_version": torch.__version__,
        }
        print(f"{name}: val accuracy {accuracy:.4f} ({len(y_val)} images), "
              f"{path.stat().st_size / 1024:.0f} KB, {time.perf_counter() - started:.0f} s", flush=True)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
