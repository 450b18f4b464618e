"""Pieces every clip family shares: the per-frame CNN encoder and clip normalization.

Training and inference both go through `clips_to_tensor`, so the preprocessing that trained a
model is byte-for-byte the one that runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# Kinetics-400 statistics, as torchvision's video models use; recorded in every checkpoint.
KINETICS_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
KINETICS_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)


def clips_to_tensor(
    clips: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) RGB -> normalized float (N, T, 3, H, W).

    The result is a permuted view whose per-frame layout is channels_last, which is what the
    convolutions want; no copy is made beyond the float conversion.
    """
    x = torch.as_tensor(clips).to(device, non_blocking=True)
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"clips must be uint8 (N, T, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.tensor(std, dtype=x.dtype, device=x.device)
    x = x.sub_(m).div_(s)
    return x.permute(0, 1, 4, 2, 3)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - stride + 1) // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SpatialSoftmax(nn.Module):
    """(N, K, H, W) -> (N, 2K): where each channel's softmax map is, as expected (x, y) in [-1, 1].

    Positions as numbers (Levine et al., "End-to-end training of deep visuomotor policies")
    generalize from few videos where a flattened feature map would memorize backgrounds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        n, k, h, w = maps.shape
        weights = (maps.flatten(2) / self.log_temperature.exp()).softmax(-1).view(n, k, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=weights.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=weights.dtype)
        return torch.cat([(weights.sum(2) * xs).sum(-1), (weights.sum(3) * ys).sum(-1)], dim=1)


class FrameEncoder(nn.Module):
    """Per-frame 2D CNN, shared across time: (B, T, 3, H, W) -> (B, T, dim).

    A frame is summarized as `keypoints` learned feature locations (spatial softmax) plus the
    globally pooled features: the motion classes are about where, how large and how turned an
    object is, which plain global pooling would erase.
    """

    def __init__(self, width: int = 32, dim: int = 128, keypoints: int = 16) -> None:
        super().__init__()
        half = max(8, width // 2)
        self.features = nn.Sequential(
            _conv_bn(3, half, 3, 2),  # 64 -> 32
            _conv_bn(half, width, 3, 2),  # 32 -> 16
            _conv_bn(width, width, 3, 1),
        )
        self.keypoint_maps = nn.Conv2d(width, keypoints, 1)
        self.keypoints = SpatialSoftmax()
        self.project = nn.Sequential(nn.Linear(2 * keypoints + width, dim), nn.ReLU(inplace=True))
        self.dim = dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        frames = clips.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        features = self.features(frames)
        summary = torch.cat(
            [self.keypoints(self.keypoint_maps(features)), features.mean(dim=(2, 3))], dim=1
        )
        return self.project(summary).view(b, t, self.dim)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
