"""The sparsity plan: the object between "what to prune" and "how to exploit it".

A plan holds, per weight tensor, a boolean mask of the same shape as the ONNX
initializer (True = kept) and how it was decided: the pattern, the criterion,
the target ratio, the alignment. Any front end can make one (magnitude pruning
on the ONNX file, fine-tuning in PyTorch, or :func:`plan_from_zeros` for models
pruned elsewhere), and every rewrite pass consumes one, never deciding what to
prune itself.

On disk a plan is ``plan.json`` (readable metadata) next to ``plan.npz`` (the
masks, bit-packed).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.errors import OptionError, PlanError
from sparsecc.layers import WeightLayer
from sparsecc.model import Model, write_bytes_atomic
from sparsecc.sparsity.detect import DetectedPattern, detect_conv, detect_gemm

PLAN_FORMAT = 1


@dataclass
class WeightPlan:
    """The plan for one weight tensor.

    Attributes:
        weight: Initializer name.
        layer: Node that uses it.
        pattern: "group-wise", "filter", "2:4", "element-wise", "vector-wise", "block-wise",
            "depthwise-taps", or "dense".
        mask: Boolean array shaped like the initializer; True where the weight is kept.
        criterion: How the mask was chosen ("l1", "zeros", ...). Defaults to none.
        ratio: Target share pruned (of the pattern's units). Defaults to none.
        alignment: Kept-unit counts are multiples of this. Defaults to none.
        details: Pattern-specific facts (kept groups, block size, ...).
    """

    weight: str
    layer: str
    pattern: str
    mask: np.ndarray
    criterion: str | None = None
    ratio: float | None = None
    alignment: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 1.0

    def metadata(self) -> dict[str, Any]:
        return {"weight": self.weight, "layer": self.layer, "pattern": self.pattern,
                "shape": list(self.mask.shape), "kept_fraction": round(self.kept_fraction, 6),
                "criterion": self.criterion, "ratio": self.ratio, "alignment": self.alignment,
                "details": self.details}


MERGE_POLICIES = ("intersect", "keep", "replace", "refuse")


def merge_into(plan: "SparsityPlan | None", other: "SparsityPlan", policy: str) -> tuple["SparsityPlan", list[str]]:
    """``other`` merged into ``plan`` (``other`` itself when there is no plan yet), and the weights both planned."""
    if plan is None:
        return other, []
    return plan, plan.merge(other, policy)


@dataclass
class SparsityPlan:
    """Per-weight plans, keyed by initializer name."""

    entries: dict[str, WeightPlan] = field(default_factory=dict)
    source: str = ""

    def add(self, entry: WeightPlan) -> None:
        self.entries[entry.weight] = entry

    def __len__(self) -> int:
        return len(self.entries)

    def merge(self, other: "SparsityPlan", policy: str) -> list[str]:
        """Add ``other``'s entries to this plan; returns the weights both planned, sorted.

        Args:
            other: The plan a planning pass made.
            policy: What happens to a weight both plans name:
                "intersect" -- both masks hold (a weight is kept only where both keep it); the entry
                takes ``other``'s pattern and records the earlier one as ``combined_with``;
                "keep" -- the entry already here stays; "replace" -- ``other``'s entry wins;
                "refuse" -- a PlanError naming the weights.
        """
        if policy not in MERGE_POLICIES:
            raise ValueError(f"unknown merge policy {policy!r}; use one of {MERGE_POLICIES}")
        both = sorted(name for name in other.entries if name in self.entries)
        if both and policy == "refuse":
            raise PlanError(f"{len(both)} weight(s) are planned twice: {both}",
                            fix="plan each weight once, or use a recipe whose planning passes combine masks")
        for name, entry in other.entries.items():
            earlier = self.entries.get(name)
            if earlier is None or policy == "replace":
                self.entries[name] = entry
            elif policy == "intersect":
                if earlier.mask.shape != entry.mask.shape:
                    raise PlanError(f"two plans mask weight '{name}' with shapes {list(earlier.mask.shape)} and "
                                    f"{list(entry.mask.shape)}", fix="make both plans for the same graph")
                details = {**entry.details, "combined_with": earlier.pattern}
                self.entries[name] = replace(entry, mask=entry.mask & earlier.mask, details=details)
        return both

    def copy(self) -> "SparsityPlan":
        """An independent copy (masks and details copied)."""
        return SparsityPlan({name: replace(entry, mask=entry.mask.copy(), details=dict(entry.details))
                             for name, entry in self.entries.items()}, self.source)

    def invalidate(self, weights) -> list[str]:
        """Drop the entries of weights a pass physically replaced or reordered (their masks no longer fit).

        Returns the names dropped, sorted (passes report them).
        """
        dropped = sorted(name for name in self.entries if name in set(weights))
        for name in dropped:
            del self.entries[name]
        return dropped

    def to_json(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "source": self.source,
                "weights": [e.metadata() for e in self.entries.values()]}

    def save(self, json_path: str | Path) -> tuple[Path, Path]:
        """Write ``plan.json`` and the masks to the ``.npz`` beside it (both atomically)."""
        import io

        json_path = Path(json_path)
        npz_path = json_path.with_suffix(".npz")
        buffer = io.BytesIO()
        arrays = {f"mask{i}": np.packbits(e.mask.reshape(-1)) for i, e in enumerate(self.entries.values())}
        np.savez_compressed(buffer, **arrays)
        data = self.to_json()
        data["masks"] = npz_path.name
        for i, meta in enumerate(data["weights"]):
            meta["mask_key"] = f"mask{i}"
        write_bytes_atomic(npz_path, buffer.getvalue())
        write_bytes_atomic(json_path, (json.dumps(data, indent=2) + "\n").encode())
        return json_path, npz_path

    @classmethod
    def load(cls, json_path: str | Path) -> "SparsityPlan":
        """Read ``plan.json`` and its masks, every field checked for type and size before use.

        Raises:
            PlanError: the file is missing, too large, not a sparsecc plan, or its masks do not fit it.
        """
        json_path = Path(json_path)
        data = _read_plan_json(json_path)
        npz_path = json_path.parent / data["masks"]
        plan = cls(source=str(data.get("source") or "")[:1000])
        try:
            expected = {meta["mask_key"]: -(-int(np.prod(meta["shape"], dtype=object)) // 8)
                        for meta in data["weights"]}
            _check_npz_members(npz_path, expected)
            with np.load(npz_path, allow_pickle=False) as npz:
                for meta in data["weights"]:
                    shape = tuple(meta["shape"])
                    bits = np.unpackbits(npz[meta["mask_key"]])[: int(np.prod(shape))]
                    plan.add(WeightPlan(meta["weight"], meta["layer"], meta["pattern"],
                                        bits.astype(bool).reshape(shape), meta.get("criterion"), meta.get("ratio"),
                                        meta.get("alignment"), meta.get("details") or {}))
        except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            raise PlanError(f"cannot read the plan's masks ({type(exc).__name__}: {str(exc)[:300]})",
                            where=str(npz_path), fix="give a plan.json written by sparsecc, with its .npz beside it") \
                from None
        return plan

    def validate(self, model: Model) -> None:
        """Check that every entry names an initializer of the model with the mask's shape."""
        constants = {t.name: t for t in model.graph.tensors().values() if isinstance(t, gs.Constant)}
        for entry in self.entries.values():
            tensor = constants.get(entry.weight)
            if tensor is None:
                raise PlanError(f"the plan names weight '{entry.weight}', which is not a constant of the model",
                                where=model.source, fix="make the plan for this model (same export)")
            if tuple(tensor.values.shape) != tuple(entry.mask.shape):
                raise PlanError(f"the mask for weight '{entry.weight}' has shape {list(entry.mask.shape)} "
                                f"but the weight has shape {list(tensor.values.shape)}",
                                where=f"{model.source}: layer '{entry.layer}'",
                                fix="masks are shaped like the ONNX initializer (Conv [C_out, C_in/g, kh, kw], "
                                    "Gemm B as stored, transB included)")


_PLAN_FIX = "give a plan.json written by sparsecc, with its .npz beside it"
# (key, accepted types, required) of each weight entry of plan.json
_ENTRY_KEYS = (("weight", (str,), True), ("layer", (str,), True), ("pattern", (str,), True), ("shape", (list,), True),
               ("mask_key", (str,), True), ("criterion", (str, type(None)), False),
               ("ratio", (int, float, type(None)), False), ("alignment", (int, type(None)), False),
               ("details", (dict, type(None)), False))


def _read_plan_json(path: Path) -> dict[str, Any]:
    """plan.json, checked: a JSON object of bounded size, its masks file beside it, every entry typed."""
    from sparsecc.limits import MAX_PLAN_JSON_BYTES, human_bytes, physical_memory

    try:
        size = path.stat().st_size
        if size > MAX_PLAN_JSON_BYTES:
            raise PlanError(f"the plan is {human_bytes(size)}, above the limit of {human_bytes(MAX_PLAN_JSON_BYTES)}",
                            where=str(path), fix=_PLAN_FIX)
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise PlanError(f"cannot read the plan ({type(exc).__name__}: {str(exc)[:300]})", where=str(path),
                        fix=_PLAN_FIX) from None
    if not isinstance(data, dict) or not isinstance(data.get("weights"), list):
        raise PlanError(f"a plan is a JSON object with 'weights' (a list) and 'masks', got {type(data).__name__}",
                        where=str(path), fix=_PLAN_FIX)
    masks = data.get("masks")
    if not (isinstance(masks, str) and masks not in ("", ".", "..") and "/" not in masks and "\\" not in masks):
        raise PlanError(f"'masks' must name a file beside plan.json, got {masks!r:.100}", where=str(path),
                        fix="plans are read with their masks from their own folder: write masks: plan.npz")
    total = 0
    for index, meta in enumerate(data["weights"]):
        if not isinstance(meta, dict):
            raise PlanError(f"weights[{index}] must be an object, got {type(meta).__name__}", where=str(path),
                            fix=_PLAN_FIX)
        for key, types, required in _ENTRY_KEYS:
            if (required and key not in meta) or (key in meta and not isinstance(meta[key], types)):
                raise PlanError(f"weights[{index}].{key} is {'missing' if key not in meta else repr(meta[key])[:80]}",
                                where=str(path), fix=_PLAN_FIX)
        shape = meta["shape"]
        if not (len(shape) <= 8 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise PlanError(f"weights[{index}].shape must be at most 8 sizes >= 0, got {shape!r:.80}",
                            where=str(path), fix=_PLAN_FIX)
        total += int(np.prod(shape, dtype=object))
    memory = physical_memory()
    if memory and total > memory // 4:
        raise PlanError(f"the plan's masks declare {total} weights, more than a quarter of this machine's memory "
                        f"({human_bytes(memory)}) can hold as masks (the limit)", where=str(path), fix=_PLAN_FIX)
    return data


def _check_npz_members(npz_path: Path, expected: dict[str, int]) -> None:
    """Each mask in the .npz is no larger than its declared shape needs (a compressed file can expand to
    any size: checked before it is decompressed)."""
    with zipfile.ZipFile(npz_path) as archive:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in expected and info.file_size > expected[key] + 4096:  # + the .npy header
                raise ValueError(f"mask '{key}' expands to {info.file_size} bytes; its shape needs {expected[key]}")


def apply_plan(model: Model, plan: SparsityPlan) -> int:
    """Zero the pruned weights in place (the "masked original"); returns the number of weights changed
    (a weight whose pruned entries were already zero is not changed)."""
    plan.validate(model)
    tensors = model.graph.tensors()
    changed = 0
    for entry in plan.entries.values():
        tensor = tensors[entry.weight]
        if entry.mask.all() or not np.any(tensor.values[~entry.mask]):
            continue  # nothing to zero: the weight is unchanged (and must not count as changed)
        tensor.values = np.where(entry.mask, tensor.values, np.zeros((), tensor.values.dtype)).astype(
            tensor.values.dtype)
        changed += 1
    return changed


def gemm_weight_kn(layer: WeightLayer, values: np.ndarray) -> np.ndarray:
    """A Gemm/MatMul weight as [K, N] (reduction first), whatever transB says."""
    return values.T if layer.trans_b else values


def detect_layer(layer: WeightLayer, values: np.ndarray) -> DetectedPattern:
    if layer.op == "Conv":
        return detect_conv(values, layer.group)
    return detect_gemm(gemm_weight_kn(layer, values))


def plan_from_zeros(model: Model, layers: list[WeightLayer]) -> SparsityPlan:
    """A plan that keeps exactly the non-zero weights, with the detected pattern of each."""
    tensors = model.graph.tensors()
    plan = SparsityPlan(source="zeros already in the weights")
    for layer in layers:
        values = tensors[layer.weight].values
        detected = detect_layer(layer, values)
        if detected.pattern == "dense":
            continue
        plan.add(WeightPlan(layer.weight, layer.node, detected.pattern, values != 0, criterion="zeros",
                            details={"structures": detected.structures}))
    return plan


@dataclass
class LayerSelector:
    """Which weight layers a pruning step applies to.

    Attributes:
        names: Exact node names. Defaults to all.
        regex: Node names matching this regular expression. Defaults to all.
        kinds: Layer kinds (conv, pointwise, depthwise, grouped, gemm, matmul). Defaults to all.
        exclude: Node names or regular expressions to leave out. Defaults to none.
        exclude_first_last: Leave the first and last weight layers of the graph dense
            (they are the most sensitive to pruning). Defaults to True.
    """

    names: list[str] = field(default_factory=list)
    regex: str | None = None
    kinds: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    exclude_first_last: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> "LayerSelector":
        if options is not None and not isinstance(options, dict):
            raise OptionError(f"the layer selector ('layers') must be a mapping, got {options!r:.80}",
                              fix="e.g. layers: {kinds: [conv], exclude: [conv0]}")
        options = dict(options or {})
        known = {"names", "regex", "kinds", "exclude", "exclude_first_last"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise OptionError(f"unknown layer selector key(s) {unknown}", fix=f"use {sorted(known)}")
        for key in ("names", "kinds", "exclude"):
            if isinstance(options.get(key), str):
                options[key] = [options[key]]
            if key in options and not (isinstance(options[key], list) and all(isinstance(v, str)
                                                                               for v in options[key])):
                raise OptionError(f"layer selector key '{key}' must be a name or a list of names, got "
                                  f"{options[key]!r:.80}", fix=f"e.g. {key}: [conv, pointwise]")
        if options.get("regex") is not None and not isinstance(options["regex"], str):
            raise OptionError(f"layer selector key 'regex' must be text, got {options['regex']!r:.80}")
        if not isinstance(options.get("exclude_first_last", True), bool):
            raise OptionError("layer selector key 'exclude_first_last' must be true or false")
        return cls(**options)

    def select(self, layers: list[WeightLayer], source: str = "") -> tuple[list[WeightLayer], list[tuple[str, str]]]:
        """The selected layers, and (layer, reason) for every layer left out.

        Raises:
            OptionError: a name or pattern matches nothing, or the selection is empty.
            PlanError: a layer named explicitly has a weight shared with another layer (a layer
                matched only by kind or pattern is left out with the reason instead).
        """

        by_name = {layer.node: layer for layer in layers}
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise OptionError(f"the layer selector names {missing}, which are not weight layers of the model",
                              where=source, fix="run `sparsecc inspect` to list the layer names")
        try:
            pattern = re.compile(self.regex) if self.regex else None
            excludes = [re.compile(e) for e in self.exclude]
        except re.error as exc:
            raise OptionError(f"bad regular expression in the layer selector: {exc}", where=source) from None
        edge = {layers[0].node, layers[-1].node} if layers and self.exclude_first_last else set()
        selected, left_out = [], []
        for layer in layers:
            reason = None
            if self.names and layer.node not in self.names:
                reason = "not named by the selector"
            elif pattern and not pattern.search(layer.node):
                reason = f"name does not match /{self.regex}/"
            elif self.kinds and layer.kind not in self.kinds:
                reason = f"kind '{layer.kind}' not selected"
            elif any(e.fullmatch(layer.node) or e.search(layer.node) for e in excludes):
                reason = "excluded by the selector"
            elif layer.node in edge and layer.node not in self.names:
                reason = "first or last weight layer (kept dense by default; exclude_first_last: false changes it)"
            elif layer.shared_with and layer.node not in self.names:
                reason = (f"weight '{layer.weight}' is shared with {layer.shared_with}: one mask would change "
                          "every layer that uses it")
            if reason:
                left_out.append((layer.node, reason))
            else:
                selected.append(layer)
        if not selected:
            if not layers:
                raise OptionError(f"the layer selector {self.describe()} matches no weight layer: the model has "
                                  "none this pass can prune", where=source,
                                  fix="run `sparsecc inspect` to see the layers it has and why each is left alone")
            why = "; ".join(f"'{name}': {reason}" for name, reason in left_out[:4])
            more = f" and {len(left_out) - 4} more" if len(left_out) > 4 else ""
            raise OptionError(f"the layer selector {self.describe()} selects none of the model's {len(layers)} "
                              f"weight layer(s) ({why}{more})", where=source,
                              fix="name the layers to prune in the recipe's layers: block (e.g. names: [...] or "
                                  "exclude_first_last: false)")
        for layer in selected:  # only layers named explicitly get here with a shared weight
            if layer.shared_with:
                raise PlanError(
                    f"weight '{layer.weight}' of layer '{layer.node}' is shared with {layer.shared_with}; a plan "
                    "is per weight tensor, so pruning it for one layer would change the other",
                    where=source, fix=f"leave it out (exclude: [{layer.node!r}]) or export the model with untied "
                                      "weights")
        return selected, left_out

    def describe(self) -> str:
        parts = [f"{k}={v!r}" for k, v in vars(self).items() if v and k != "exclude_first_last"]
        return "{" + ", ".join(parts) + "}" if parts else "{all layers}"
