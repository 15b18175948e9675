"""A pre-norm / post-norm Transformer encoder layer written with plain Linear layers.

Attention is spelled out (Linear -> reshape -> MatMul -> Softmax -> MatMul)
instead of using ``nn.MultiheadAttention`` or fused scaled-dot-product
attention, so the exported ONNX graph shows every weight as a MatMul with an
initializer, which is what the compiler's Gemm/MatMul passes look for.
"""

from __future__ import annotations

import math

from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections.

    Args:
        dim: Model width.
        heads: Attention heads; must divide ``dim``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x):
        batch, seq, _ = x.shape
        return x.reshape(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        batch, seq, dim = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        context = scores.softmax(dim=-1) @ v
        return self.out(context.transpose(1, 2).reshape(batch, seq, dim))


class EncoderLayer(nn.Module):
    """Self-attention and a GELU MLP, each with a residual connection and LayerNorm.

    Args:
        dim: Model width.
        heads: Attention heads.
        mlp_dim: Hidden width of the MLP.
        pre_norm: LayerNorm before each sub-layer (ViT) instead of after the
            residual add (BERT). Defaults to True.
        eps: LayerNorm epsilon. Defaults to 1e-6.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, pre_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        if self.pre_norm:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))
