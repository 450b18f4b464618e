"""CNN family: a per-frame 2D CNN shared across frames, mean-pooled over time.

It sees appearance but not order: the baseline that shows what temporal models add
(pairs that differ only in time order, like moving left/right, look the same to it).
"""

from __future__ import annotations

import torch
from torch import nn

from vidbatch.models.common import Background, FrameEncoder, Summary
from vidbatch.models.loaded import describe_checkpoint_classifier, load_checkpoint_classifier
from vidbatch.models.registry import asset_path, register_model
from vidbatch.specs import ClipSpec


class FramePoolCNN(nn.Module):
    """(B, T, 3, H, W) -> logits (B, num_classes): encode frames, average over time, classify."""

    def __init__(self, encoder: FrameEncoder, num_classes: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.dim, num_classes))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(clips).mean(dim=1))


@register_model(
    "motion-cnn",
    family="cnn",
    task="classify",
    default_weights=asset_path("motion-cnn.safetensors"),
    loader=load_checkpoint_classifier,
    describer=describe_checkpoint_classifier,
)
def motion_cnn(
    *,
    num_classes: int,
    clip: ClipSpec,
    width: int = 32,
    dim: int = 128,
    keypoints: int = 16,
    background: Background = "frame-median",
    summary: Summary = "saliency",
    dropout: float = 0.1,
) -> FramePoolCNN:
    """Per-frame 2D CNN + temporal mean pooling + linear head (order-blind baseline)."""
    del clip  # any clip length works: pooling is over time
    encoder = FrameEncoder(
        width=width, dim=dim, keypoints=keypoints, background=background, summary=summary
    )
    return FramePoolCNN(encoder, num_classes, dropout=dropout)
