"""Transformer family: frame embeddings + positional encoding over time + self-attention."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from vidbatch.models.common import Background, FrameEncoder, Summary
from vidbatch.models.loaded import describe_checkpoint_classifier, load_checkpoint_classifier
from vidbatch.models.registry import asset_path, register_model
from vidbatch.specs import ClipSpec


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sin/cos positions ("Attention is all you need")."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class FrameTransformer(nn.Module):
    """(B, T, 3, H, W) -> logits: per-frame CNN embeddings as tokens, positions added, a
    pre-norm temporal self-attention encoder, then a head on the CLS token or the token mean."""

    def __init__(
        self,
        encoder: FrameEncoder,
        num_classes: int,
        *,
        frames: int,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 1.5,
        positional: Literal["learned", "sinusoidal"] = "learned",
        pool: Literal["cls", "mean"] = "cls",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if positional not in ("learned", "sinusoidal"):
            raise ValueError(f"positional must be 'learned' or 'sinusoidal', got {positional!r}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.encoder = encoder
        dim = encoder.dim
        self.pool = pool
        self.frames = frames
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        if positional == "learned":
            # Start from the sinusoidal table: tiny random positions leave the model order-blind
            # (like the CNN) for many epochs.
            self.position = nn.Parameter(sinusoidal_encoding(frames, dim)[None].clone())
        else:
            self.register_buffer(
                "position", sinusoidal_encoding(frames, dim)[None], persistent=False
            )
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=int(dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.temporal = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.shape[1] != self.frames:
            raise ValueError(f"expected {self.frames} frames per clip, got {clips.shape[1]}")
        tokens = self.encoder(clips) + self.position
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = self.norm(self.temporal(tokens))
        return self.head(tokens[:, 0] if self.cls is not None else tokens.mean(dim=1))


@register_model(
    "motion-transformer",
    family="transformer",
    task="classify",
    default_weights=asset_path("motion-transformer.safetensors"),
    loader=load_checkpoint_classifier,
    describer=describe_checkpoint_classifier,
)
def motion_transformer(
    *,
    num_classes: int,
    clip: ClipSpec,
    width: int = 32,
    dim: int = 128,
    keypoints: int = 16,
    background: Background = "frame-median",
    summary: Summary = "foreground",
    motion: bool = True,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: float = 1.5,
    positional: Literal["learned", "sinusoidal"] = "learned",
    pool: Literal["cls", "mean"] = "cls",
    dropout: float = 0.1,
) -> FrameTransformer:
    """Per-frame CNN embeddings + positional encoding + temporal self-attention -> head."""
    encoder = FrameEncoder(
        width=width,
        dim=dim,
        keypoints=keypoints,
        background=background,
        summary=summary,
        motion=motion,
    )
    return FrameTransformer(
        encoder,
        num_classes,
        frames=clip.frames,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        positional=positional,
        pool=pool,
        dropout=dropout,
    )
