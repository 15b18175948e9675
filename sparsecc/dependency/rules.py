"""The op table of the channel analysis: what each op does to the channels it reads, in one place.

Each op maps to a *rule*, the name of the method of the analysis that handles it
(:mod:`sparsecc.dependency.analysis`, ``rule_<name>``). An op not in the table blocks the channels it
reads, with the reason (group-wise folding, filter pruning and channel permutation all go
through this one analysis).

``register_op_rule(op, rule)`` maps a new op to an existing rule (a custom activation is "unary").
"""

from __future__ import annotations

# Ops that act on each element independently (one input activation).
UNARY = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Identity", "Dropout", "Cast", "Mish", "ThresholdedRelu", "Sin", "Cos", "Clip", "IsNaN", "IsInf",
}
# Elementwise ops with broadcasting between several inputs.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"}
# Spatial ops that keep channel c of the output equal to a function of channel c of the input (NC... layout).
SPATIAL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare"}
SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}

# op -> rule
OP_RULES: dict[str, str] = {
    **dict.fromkeys(("Conv", "ConvTranspose"), "conv"),
    **dict.fromkeys(("Gemm", "MatMul"), "gemm"),
    **dict.fromkeys(UNARY, "unary"),
    **dict.fromkeys(ELEMENTWISE, "elementwise"),
    **dict.fromkeys(SPATIAL, "spatial"),
    **dict.fromkeys(REDUCE, "reduce"),
    **dict.fromkeys(SOFTMAX, "softmax"),
    "BatchNormalization": "batch_normalization", "InstanceNormalization": "instance_normalization",
    "LayerNormalization": "layer_normalization", "Concat": "concat", "Split": "split", "Slice": "slice",
    "Gather": "gather", "Flatten": "flatten", "Reshape": "reshape", "Transpose": "transpose", "Squeeze": "squeeze",
    "Unsqueeze": "unsqueeze", "Pad": "pad", "Resize": "resize", "Upsample": "resize", "Shape": "shape",
}


def register_op_rule(op: str, rule: str) -> None:
    """Handle ``op`` with an existing rule (e.g. a custom elementwise activation as "unary")."""
    known = set(OP_RULES.values())
    if rule not in known:
        raise ValueError(f"unknown rule {rule!r}; use one of {sorted(known)}")
    OP_RULES[op] = rule
