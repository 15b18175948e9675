"""ViT-Tiny (Dosovitskiy et al., 2021; DeiT-Ti shapes): dim 192, depth 12, 3 heads, MLP 768."""

from __future__ import annotations

import torch
from torch import nn

from sparsecc.models._transformer import EncoderLayer


class VisionTransformer(nn.Module):
    """Patch embedding (strided Conv2d), class token, learned positions, encoder, Linear head.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: 32x32 inputs with 4x4 patches (64 patches) instead of
            224x224 with 16x16 patches (196 patches). Defaults to False.
        in_channels: Image channels. Defaults to 3.
        dim: Model width. Defaults to 192.
        depth: Encoder layers. Defaults to 12.
        heads: Attention heads. Defaults to 3.
        mlp_dim: MLP hidden width. Defaults to 768.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, in_channels: int = 3,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_dim: int = 768):
        super().__init__()
        image, patch = (32, 4) if small_input else (224, 16)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderLayer(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_tiny(**kwargs) -> VisionTransformer:
    """Builds ViT-Tiny; keyword arguments go to :class:`VisionTransformer`."""
    return VisionTransformer(**kwargs)
