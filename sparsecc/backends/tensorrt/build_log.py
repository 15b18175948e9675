"""The ``(Sparsity)`` lines of a TensorRT build log: which layers were eligible for 2:4 sparse math, which picked it.

Pure Python, testable without TensorRT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["SparsityBuildReport", "parse_sparsity_log"]

_ELIGIBLE_RE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math\s*:?(?P<rest>.*)$", re.IGNORECASE)
_PICKED_RE = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers\s*:?(?P<rest>.*)$",
                        re.IGNORECASE)
# A line that starts a new log record: "[08/05/2024-12:06:54] [I] [TRT] ...", "[TRT] [I] ...",
# "[TensorRT] INFO: ...", "[V] ...", or a Python logging prefix ("INFO:...").
_LOG_PREFIX_RE = re.compile(r"^\s*(\[[^\]]*\]|(?:INTERNAL_ERROR|ERROR|WARNING|INFO|VERBOSE|DEBUG)\s*:)")
# An unprefixed "Label: value" message (e.g. "Total Activation Memory: 1024") is a new record, not names.
_LABEL_RE = re.compile(r"^[A-Za-z][\w ]*:\s")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


@dataclass
class SparsityBuildReport:
    """What TensorRT's builder said about 2:4 sparse weights.

    Args:
        eligible: Layers whose weights TensorRT found 2:4 sparse (candidates for sparse tactics),
            in log order, each once. Names are TensorRT layer names after fusion
            ("Conv_0 + Relu_1").
        picked_sparse: Layers for which the final plan uses a sparse implementation. A layer can
            be eligible and not picked: TensorRT times both and keeps dense where it is faster.
        reported: Whether any sparsity line appeared at all (False when sparse weights were off or
            the log was not captured; then both lists are empty for lack of information, not
            because no layer qualified).
    """

    eligible: list[str] = field(default_factory=list)
    picked_sparse: list[str] = field(default_factory=list)
    reported: bool = False

    @property
    def eligible_not_picked(self) -> list[str]:
        """Eligible layers that TensorRT kept dense (the dense tactic was faster)."""
        picked = set(self.picked_sparse)
        return [name for name in self.eligible if name not in picked]

    def to_dict(self) -> dict:
        return {"reported": self.reported, "eligible": list(self.eligible),
                "picked_sparse": list(self.picked_sparse), "eligible_not_picked": self.eligible_not_picked}


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: fused names such as "PWN(/a/Sigmoid, /a/Mul)" keep their commas."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _layer_names(text: str) -> list[str]:
    """Layer names in one chunk of a list: comma separated, or space separated when there is no comma.

    Fused layer names keep their spaces ("Conv_0 + Relu_1"): a piece with " + " or brackets is one name.
    """
    names = []
    for piece in _split_top_level(_BULLET_RE.sub("", text)):
        piece = piece.strip().strip("\"'`").strip()
        if not piece:
            continue
        if " + " in piece or any(b in piece for b in "([{"):
            names.append(piece)
        else:
            names.extend(piece.split())
    return names


def parse_sparsity_log(lines: list[str]) -> SparsityBuildReport:
    """Read the ``(Sparsity)`` lines of a TensorRT build log.

    Accepts raw logger messages (one message per element, possibly with embedded newlines) as
    well as lines of a trtexec/Polygraphy/Python log file, with or without prefixes such as
    ``[08/05/2024-12:06:54] [I] [TRT]``, ``[TRT] [I]`` or ``[TensorRT] INFO:``. Layer names may
    follow the colon on the same line (comma or space separated) or come on the following lines:
    lines of the same message, indented lines, bullet lines, or a line after a list that ends with a
    comma. A new log record (a prefixed line, a blank line, or an unindented line after a list that
    does not end with a comma) ends the list, so a header with nothing after the colon is an empty list. Names are kept
    once each, in log order.

    Args:
        lines: Log messages or log-file lines.

    Returns:
        A SparsityBuildReport with both lists ("eligible" is not "picked").
    """
    report = SparsityBuildReport()
    seen = {"eligible": set(), "picked": set()}
    target = None  # "eligible", "picked" or None: the list that continuation lines add to
    expect_more = False  # the last chunk ended with a comma: an unindented next line continues it

    def add(kind: str, text: str) -> bool:
        out = report.eligible if kind == "eligible" else report.picked_sparse
        for name in _layer_names(text):
            if name not in seen[kind]:
                seen[kind].add(name)
                out.append(name)
        return text.rstrip().endswith(",")

    for element in lines:
        sublines = str(element).splitlines() or [""]
        for k, raw in enumerate(sublines):
            line = raw.rstrip("\r\n")
            eligible, picked = _ELIGIBLE_RE.search(line), _PICKED_RE.search(line)
            match = eligible or picked
            if match:
                report.reported = True
                target = "eligible" if eligible else "picked"
                rest = match.group("rest")
                expect_more = add(target, rest)
                continue
            if target is None:
                continue
            if not line.strip():
                # a blank line ends a list in a log file; inside one message it is only spacing
                if k == 0:
                    target = None
                continue
            same_message = k > 0
            continuation = not _LOG_PREFIX_RE.match(line) and (
                raw[:1].isspace() or bool(_BULLET_RE.match(line))
                or (expect_more and not _LABEL_RE.match(line)))
            if same_message or continuation:
                expect_more = add(target, line)
            else:
                target, expect_more = None, False
    return report

