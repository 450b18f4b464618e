"""RNN family: the per-frame CNN encoder followed by a GRU or LSTM over time."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vidbatch.models.common import Background, FrameEncoder, Summary
from vidbatch.models.loaded import describe_checkpoint_classifier, load_checkpoint_classifier
from vidbatch.models.registry import asset_path, register_model
from vidbatch.specs import ClipSpec


class FrameRNN(nn.Module):
    """(B, T, 3, H, W) -> logits: frame embeddings, a recurrent layer, a head on the
    last hidden state (or the mean over time)."""

    def __init__(
        self,
        encoder: FrameEncoder,
        num_classes: int,
        *,
        cell: Literal["gru", "lstm"] = "gru",
        hidden: int = 128,
        layers: int = 1,
        pool: Literal["last", "mean"] = "last",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        self.encoder = encoder
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            encoder.dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.pool = pool
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(self.encoder(clips))
        summary = states[:, -1] if self.pool == "last" else states.mean(dim=1)
        return self.head(summary)


@register_model(
    "motion-rnn",
    family="rnn",
    task="classify",
    default_weights=asset_path("motion-rnn.safetensors"),
    loader=load_checkpoint_classifier,
    describer=describe_checkpoint_classifier,
)
def motion_rnn(
    *,
    num_classes: int,
    clip: ClipSpec,
    width: int = 32,
    dim: int = 128,
    keypoints: int = 16,
    background: Background = "frame-median",
    summary: Summary = "foreground",
    motion: bool = True,
    cell: Literal["gru", "lstm"] = "gru",
    hidden: int = 128,
    layers: int = 1,
    pool: Literal["last", "mean"] = "last",
    dropout: float = 0.1,
) -> FrameRNN:
    """Per-frame 2D CNN encoder -> GRU/LSTM over time -> linear head."""
    del clip  # recurrent: any clip length works
    encoder = FrameEncoder(
        width=width,
        dim=dim,
        keypoints=keypoints,
        background=background,
        summary=summary,
        motion=motion,
    )
    return FrameRNN(
        encoder, num_classes, cell=cell, hidden=hidden, layers=layers, pool=pool, dropout=dropout
    )
