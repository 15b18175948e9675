"""A small BERT-style encoder (Devlin et al., 2019) with a sequence-classification head."""

from __future__ import annotations

import torch
from torch import nn

from sparsecc.models._transformer import EncoderLayer


class BertClassifier(nn.Module):
    """Token + position + segment embeddings, post-norm encoder, tanh pooler, Linear.

    The input is token ids only: every position is attended to (no padding
    mask) and every token is in segment 0, which keeps the graph to one
    int64 input.

    Args:
        num_classes: Classifier outputs. Defaults to 2.
        vocab: Vocabulary size (BERT's WordPiece). Defaults to 30522.
        dim: Hidden width. Defaults to 256.
        depth: Encoder layers. Defaults to 4.
        heads: Attention heads. Defaults to 4.
        mlp_dim: Intermediate width. Defaults to 1024.
        max_positions: Rows of the position table. Defaults to 512.
    """

    def __init__(self, num_classes: int = 2, vocab: int = 30522, dim: int = 256, depth: int = 4,
                 heads: int = 4, mlp_dim: int = 1024, max_positions: int = 512):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, mlp_dim, pre_norm=False, eps=1e-12)
                                      for _ in range(depth)])
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids):
        seq = input_ids.shape[1]
        x = (self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq]
             + self.token_type_embeddings.weight[0])
        x = self.layers(self.embed_norm(x))
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert_mini(**kwargs) -> BertClassifier:
    """Builds the BERT-style encoder; keyword arguments go to :class:`BertClassifier`."""
    return BertClassifier(**kwargs)
