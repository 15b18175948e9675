"""What the weight layers of a model are and cost (``sparsecc inspect``, and the compile report's before/after)."""

from __future__ import annotations

import weakref
from typing import Any

import onnx_graphsurgeon as gs

from sparsecc.counting import plugin_node_macs
from sparsecc.errors import UnsupportedModelError
from sparsecc.layers import analyse_layers
from sparsecc.model import Model
from sparsecc.plan import detect_layer
from sparsecc.sparsity.detect import ELEMENT_WISE_MIN_SPARSITY
from sparsecc.tables import human, text_table


def no_weight_layers_error(model: Model, unsupported) -> UnsupportedModelError:
    """The error for a model without a weight layer sparsecc can work on, saying what it found instead."""
    if not unsupported:
        return UnsupportedModelError(
            "the model has no weight layers (Conv, Gemm, or MatMul with a constant weight) and no other layer "
            "with weights", where=model.source,
            fix="sparsecc compiles models whose weights are initializers or Constant nodes; re-export with weights "
                "as constants (torch.onnx.export does this by default)")
    counts: dict[str, int] = {}
    for layer in unsupported:
        counts[layer.op] = counts.get(layer.op, 0) + 1
    found = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
    reasons = "; ".join(f"{u.node} ({u.op}): {u.reason}" for u in unsupported[:3])
    if len(unsupported) > 3:
        reasons += f"; and {len(unsupported) - 3} more"
    if all(u.quantized for u in unsupported):
        fix = ("every weight layer is quantized; sparsecc prunes float weights: compile the float model, then "
               "quantize the compiled one")
    else:
        fix = ("sparsecc prunes Conv (1-D, 2-D, 3-D), Gemm and MatMul layers outside control-flow bodies; every "
               "weight of this model is in a layer of the kinds above, so there is nothing to compile")
    return UnsupportedModelError(f"the model has no weight layer sparsecc can prune: it has {found}, each left "
                                 f"as it is ({reasons})", where=model.source, fix=fix)


def inspect_model(model: Model, cache: dict | None = None) -> dict[str, Any]:
    """Per weight layer: kind, shapes, MACs, parameters, sparsity, detected pattern; and totals.

    ``cache`` (a dict kept by the caller between calls) spares detecting the pattern of a weight
    array seen before: the compiler inspects before and after, and most weights are the same
    arrays (passes replace the arrays they change).

    Raises:
        ShapeError: the model has dynamic input dimensions and no concrete shapes were given.
        UnsupportedModelError: the model has no weight layer sparsecc can work on.
    """
    layers, unsupported = analyse_layers(model)
    plugin_macs = plugin_node_macs(model)
    if not layers and not plugin_macs:
        raise no_weight_layers_error(model, unsupported)
    tensors = model.graph.tensors()
    rows = []
    for layer in layers:
        values = tensors[layer.weight].values
        detected = _detect(layer, values, cache)
        row = layer.to_dict()
        row.update(sparsity=round(detected.sparsity, 6), pattern=detected.pattern,
                   structures={k: round(v, 4) for k, v in detected.structures.items()})
        rows.append(row)
    all_params = sum(int(t.values.size) for t in tensors.values() if isinstance(t, gs.Constant))
    weight_params = sum(r["params"] for r in rows)
    zeros = sum(r["sparsity"] * r["params"] for r in rows)
    kinds: dict[str, int] = {}
    for layer in layers:
        kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
    return {
        "model": model.source,
        "opset": model.opset(),
        "inputs": {name: list(shape) for name, shape in model.static_input_shapes().items()},
        "layers": rows,
        "unsupported": [{"node": u.node, "op": u.op, "reason": u.reason} for u in unsupported],
        "totals": {
            "weight_layers": len(layers),
            "by_kind": kinds,
            # a layer lowered to a plugin node is no weight layer any more; its MACs still count
            "macs": sum(r["macs"] or 0 for r in rows) + sum(plugin_macs.values()),
            "plugin_nodes": len(plugin_macs),
            "plugin_macs": sum(plugin_macs.values()),
            "weight_params": weight_params,
            "params": all_params,
            "weight_sparsity": round(zeros / weight_params, 6) if weight_params else 0.0,
        },
    }


def format_inspection(info: dict[str, Any]) -> str:
    rows = [[r["node"], r["kind"], "x".join(map(str, r["weight_shape"])),
             "x".join(map(str, r["output_shape"] or [])) or "?", human(r["macs"] or 0), human(r["params"]),
             f"{100 * r['sparsity']:.1f}%", r["pattern"]] for r in info["layers"]]
    table = text_table(rows, ["layer", "kind", "weight", "output", "MACs", "params", "zeros", "pattern"])
    totals = info["totals"]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(totals["by_kind"].items()))
    lines = [f"model: {info['model']}  (opset {info['opset']}, inputs {info['inputs']})", "", table, "",
             f"total: {totals['weight_layers']} weight layers ({kinds}); {human(totals['macs'])} MACs; "
             f"{human(totals['weight_params'])} weight parameters ({human(totals['params'])} in all); "
             f"{100 * totals['weight_sparsity']:.1f}% of weights are zero",
             f"(pattern: the most structured form of a weight's zeros; scattered zeros are 'element-wise' only "
             f"from {100 * ELEMENT_WISE_MIN_SPARSITY:g}% of the weight on, below that the weight is 'dense')"]
    for item in info["unsupported"]:
        lines.append(f"not a weight layer: {item['node']} ({item['op']}): {item['reason']}")
    return "\n".join(lines)


def _detect(layer, values, cache: dict | None):
    if cache is None:
        return detect_layer(layer, values)
    key = (id(values), layer.node, layer.op, layer.kind)
    known = cache.get(key)
    if known is not None and known[0]() is values:
        return known[1]
    detected = detect_layer(layer, values)
    try:
        # a weak reference: the cache must not keep weights a pass replaced alive (a whole model's
        # worth after pruning); a dead entry cannot match a new array that reuses the id
        cache[key] = (weakref.ref(values), detected)
    except TypeError:  # not weakly referenceable: detected again next time
        pass
    return detected
