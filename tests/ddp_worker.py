"""Fine-tunes the tiny test model with sparsecc.finetuning.finetune; run alone or under torchrun.

Usage: python tests/ddp_worker.py OUT_DIR (every rank writes OUT_DIR/rank<N>.json).
The loop is the library's, unchanged: under torchrun it finds WORLD_SIZE and uses DDP (gloo).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sparsecc.finetuning as st  # noqa: E402
from test_finetuning import _model, _split  # noqa: E402

torch.set_num_threads(1)
result = st.finetune(_model(), _split(), "groupwise-50", epochs=3, lr=1e-2, batch_size=32, augment=False,
                     log=lambda message: None)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{result.rank}.json").write_text(json.dumps({
    "rank": result.rank, "world_size": result.world_size, "top1": result.top1, "n": result.n,
    "digest": result.mask_digest, "rank_digests": result.rank_mask_digests}))
