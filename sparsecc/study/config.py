"""What the study measures (:class:`StudyConfig`) and what it found (:class:`Measurement`, :class:`StudyResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sparsecc.errors import OptionError
from sparsecc.study.analysis import break_even
from sparsecc.study.shapes import SHAPE_SETS

KEEPS = (0.75, 0.5, 0.25)
PATTERNS = ("element-wise", "vector-wise", "block-wise", "group-wise")
DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3


@dataclass
class StudyConfig:
    """What the study measures and how.

    Attributes:
        shapes: Shape set name ("quick", "default", "full"). Defaults to "default".
        keeps: Shares of the parameters kept. Defaults to (0.75, 0.5, 0.25).
        runs: Timed interleaved rounds per layer and share (at least 20 for real figures). Defaults to 20.
        warmup: Untimed rounds first. Defaults to 3.
        threads: torch and ONNX Runtime intra-op threads. Defaults to 2.
        vector: Vector length along K of the vector-wise pattern. Defaults to 4.
        block: Block shape (along K, along N) of the block-wise pattern. Defaults to (8, 8).
        criterion: Group-wise criterion passed to ``plan-groupwise``. Defaults to "l1".
        libraries: Sparse libraries on the CPU: "torch", and "scipy". Defaults to ("torch",)
            (the full set adds "scipy").
        ort: Also time the sparsecc group-wise rewrite on ONNX Runtime. Defaults to True.
        ort_lowering: "always" runs every layer with the paper's lowering (channel-gather for
            MatMul and 1x1 convs, tap-gather for larger convs); "auto" lets groupwise-rewrite's
            cost model choose, keeping a layer dense where no lowering is faster. Defaults to "always".
        seed: Seed of the random weights and inputs. Defaults to 0.
    """

    shapes: str = "default"
    keeps: tuple[float, ...] = KEEPS
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    threads: int = 2
    vector: int = 4
    block: tuple[int, int] = (8, 8)
    criterion: str = "l1"
    libraries: tuple[str, ...] = ("torch",)
    ort: bool = True
    ort_lowering: str = "always"
    seed: int = 0

    def validate(self) -> None:
        if self.shapes not in SHAPE_SETS:
            raise OptionError(f"unknown shape set {self.shapes!r}", fix=f"use one of {sorted(SHAPE_SETS)}")
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise OptionError(f"runs and threads must be at least 1 and warm-up at least 0 (got runs={self.runs}, "
                              f"threads={self.threads}, warmup={self.warmup})", fix="e.g. --runs 20 --threads 2")
        if not self.keeps or any(not 0.0 < k < 1.0 for k in self.keeps):
            raise OptionError(f"shares kept must be strictly between 0 and 1 (0 and 100%), got {list(self.keeps)}",
                              fix="e.g. --keeps 75,50,25")
        if self.vector < 1 or len(self.block) != 2 or min(self.block) < 1:
            raise OptionError(f"vector length and block sides must be positive (got vector={self.vector}, "
                              f"block={self.block})", fix="e.g. --vector 4 --block 8x8")
        if self.ort_lowering not in ("always", "auto"):
            raise OptionError(f"unknown ORT lowering choice {self.ort_lowering!r}", fix="use always or auto")
        unknown = sorted(set(self.libraries) - {"torch", "scipy"})
        if unknown:
            raise OptionError(f"unknown sparse libraries {unknown}", fix="use torch and/or scipy")


@dataclass
class Measurement:
    """One timed variant of one layer at one share kept (times in ms, host or device clock per ``device``)."""

    model: str
    layer: str
    m: int
    k: int
    n: int
    keep: float
    pattern: str
    library: str
    device: str
    baseline: str
    median_ms: float
    min_ms: float
    runs: int
    ratio: float  # median / median of the baseline, same interleaved rounds
    nnz: int  # weights the variant multiplies with (kept, incl. explicit zeros of BSR blocks)
    macs: int
    ideal: float  # macs / dense macs
    k_kept: int | None = None  # group-wise: K' of the smaller GEMM
    note: str = ""  # how the variant ran (the sparsecc rewrite's lowering, or why it stayed dense)


@dataclass
class StudyResult:
    """Everything the study measured, with the settings and environment needed to read it."""

    config: dict[str, Any]
    environment: dict[str, Any]
    shapes: list[dict[str, Any]]
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    clock: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "environment": self.environment, "clock": self.clock, "gpu": self.gpu,
                "shapes": self.shapes, "measurements": [asdict(m) for m in self.measurements],
                "skipped": self.skipped, "break_even": break_even(self.measurements)}
