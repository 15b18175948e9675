"""Which channels of a graph are coupled, and the physical edit that removes or reorders them.

Removing output filter ``c`` of a Conv is only possible together with everything
else that indexes the same channel: the consumers' input channels, the bias and
BatchNorm parameters, a depthwise conv on the way, the other branch of a
residual Add, the squeeze-excitation scale multiplied into it, the block of
H*W features a Flatten turns it into before a Gemm. Following Torch-Pruning,
the analysis (:func:`build_channel_groups`) is kept apart from the edit
(:func:`reindex_channels`): the analysis walks the graph once, gives every
activation tensor a *channel layout* (which channel spaces its channel axis is
made of, at which offsets), unites the spaces that elementwise ops couple, and
returns one :class:`ChannelGroup` per set of coupled channels, with every
constant (or count: Split sizes, Reshape dims, the ``group`` of a depthwise
conv) that indexes them.

Anything the analysis does not understand on a channel path blocks the group,
with the reason: it never guesses. Graph outputs (the channel count is part of
the model's interface), shared weights, Reshapes that mix the channel axis with
others and ops that mix channels (Softmax over channels, LayerNorm over
channels, grouped convs) are blockers.

The package: :mod:`~sparsecc.dependency.types` (groups, uses, layouts),
:mod:`~sparsecc.dependency.rules` (the op table: which rule handles each op),
:mod:`~sparsecc.dependency.analysis` (the walk, :func:`build_channel_groups`) with its rules in
:mod:`~sparsecc.dependency.rules_weights`, :mod:`~sparsecc.dependency.rules_per_channel` and
:mod:`~sparsecc.dependency.rules_layout`, :mod:`~sparsecc.dependency.walk` (graph helpers),
:mod:`~sparsecc.dependency.edits` (:func:`reindex_channels`, :func:`reindex_groups`, :func:`regroup`, ...) and
:mod:`~sparsecc.dependency.constants` (constant channels folded into their readers).
"""

from sparsecc.dependency.analysis import build_channel_groups
from sparsecc.dependency.edits import consumer_weights, producer_weights, regroup, reindex_channels, reindex_groups
from sparsecc.dependency.rules import OP_RULES, register_op_rule
from sparsecc.dependency.types import ChannelGroup, ChannelUse

__all__ = ["ChannelUse", "ChannelGroup", "build_channel_groups", "reindex_channels", "reindex_groups", "regroup",
           "producer_weights", "consumer_weights", "OP_RULES", "register_op_rule"]
