"""Pieces every clip family shares: the per-frame CNN encoder and clip normalization.

Training and inference both go through `clips_to_tensor`, so the preprocessing that trained a
model is byte-for-byte the one that runs it.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Literal

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
    if isinstance(clips, np.ndarray) and not clips.flags.writeable:
        clips = np.array(clips)  # read-only buffers (np.frombuffer, Ray objects): torch warns
    x = torch.as_tensor(clips).to(device, non_blocking=True)
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"clips must be uint8 (N, T, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.tensor(std, dtype=x.dtype, device=x.device)
    x = x.sub_(m).div_(s)
    return x.permute(0, 1, 4, 2, 3)


Background = Literal["frame-median", "clip-mean", "none"]
BACKGROUNDS: tuple[str, ...] = typing.get_args(Background)


def remove_background(clips: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, C, H, W) minus each frame's median colour, or minus the clip's mean frame."""
    if mode == "frame-median":
        median = clips[..., ::4, ::4].flatten(3).median(dim=-1).values  # 1/16 of the pixels
        return clips - median[..., None, None]
    if mode == "clip-mean":
        return clips - clips.mean(dim=1, keepdim=True)
    return clips


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - stride + 1) // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SpatialMoments(nn.Module):
    """(N, K, H, W) -> (N, K * (3 + 2 * len(orders))): each channel's softmax map summarized by
    its moments - centroid (x, y), variance (size), and the central complex moments
    sum(w * (z - c)^k) (orientation, modulo the k-fold symmetry of the shape).

    Positions and shapes as numbers (spatial soft-argmax, Levine et al. 2016, extended with
    higher moments) generalize from a few hundred videos where a flattened feature map would
    memorize them; a turning square or triangle turns the phase of its 4th or 3rd moment.
    All moments come from one matmul of the weights with a fixed basis of raw moments.
    """

    def __init__(
        self, channels: int, orders: tuple[int, ...] = (2, 3, 4), temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.orders = tuple(sorted(orders))
        self.log_temperature = nn.Parameter(torch.full((channels, 1), math.log(temperature)))
        self._basis: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def basis(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(H*W, 2 * (top + 1) + 1): real and imaginary parts of z^j, j = 0..top, and |z|^2."""
        key = (h, w, device)
        if key not in self._basis:
            ys, xs = torch.meshgrid(
                torch.linspace(-1.0, 1.0, h), torch.linspace(-1.0, 1.0, w), indexing="ij"
            )
            z = torch.complex(xs.flatten(), ys.flatten()).to(torch.complex64)
            top = max(self.orders, default=1)
            powers = torch.stack([z**j for j in range(top + 1)], dim=1)
            columns = [powers.real, powers.imag, (z.abs() ** 2)[:, None]]
            self._basis[key] = torch.cat(columns, dim=1).float().to(device)
        return self._basis[key]

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        with torch.autocast(maps.device.type, enabled=False):  # complex math stays in fp32
            return self._moments(maps.float())

    def _moments(self, maps: torch.Tensor) -> torch.Tensor:
        n, k, h, w = maps.shape
        weights = (maps.flatten(2) / self.log_temperature.exp()).softmax(-1)
        raw = weights @ self.basis(h, w, maps.device)  # (N, K, 2 * (top + 1) + 1)
        top = max(self.orders, default=1)
        m = torch.complex(raw[..., : top + 1], raw[..., top + 1 : 2 * top + 2])  # sum(w z^j)
        c = m[..., 1]
        var = (raw[..., -1] - c.abs() ** 2).clamp_min(1e-6)
        out = [c.real, c.imag, var]
        for order in self.orders:
            # central moment by the binomial expansion of (z - c)^order over raw moments
            central = sum(
                math.comb(order, j) * (-c) ** (order - j) * m[..., j] for j in range(order + 1)
            )
            central = central / var ** ((order - 1) / 2)  # about the scale of a radius
            out += [central.real, central.imag]
        return torch.stack(out, dim=-1).flatten(1)


class FrameEncoder(nn.Module):
    """Per-frame 2D CNN, shared across time: (B, T, 3, H, W) -> (B, T, dim).

    A frame is summarized as the moments of `keypoints` learned feature maps (where, how large,
    how turned: `SpatialMoments`) plus the globally pooled features. Plain global pooling would
    erase the where and the how-turned that the motion classes are about.

    `background` removes what would otherwise be memorized (a few hundred training videos are
    learned by their backgrounds): "frame-median" subtracts each frame's median colour, so the
    background goes to about zero and the object stays whole; "clip-mean" subtracts the clip's
    mean frame (only what changes stays); "none" keeps the frames. Both are order-free, so frame
    order stays invisible to the order-blind CNN family.
    """

    def __init__(
        self,
        width: int = 32,
        dim: int = 128,
        keypoints: int = 16,
        background: Background = "frame-median",
    ) -> None:
        super().__init__()
        if background not in BACKGROUNDS:
            raise ValueError(
                f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}"
            )
        self.background = background
        half = max(8, width // 2)
        # Stride 2: keypoint maps at half resolution, where a small shape's corners still show.
        self.early = nn.Sequential(_conv_bn(3, half, 3, 2), _conv_bn(half, half, 3, 1))
        self.late = nn.Sequential(_conv_bn(half, width, 3, 2), _conv_bn(width, width, 3, 1))
        self.keypoint_maps = nn.Conv2d(half, keypoints, 1)
        self.moments = SpatialMoments(keypoints)
        # Parameter-free saliency: distance of each pixel from the background colour. Its moments
        # give the object's position, size and turn from the first step of training.
        self.saliency_moments = SpatialMoments(1, temperature=0.25)
        size = (keypoints + 1) * (3 + 2 * len(self.moments.orders)) + width
        self.project = nn.Sequential(
            nn.LayerNorm(size), nn.Linear(size, dim), nn.ReLU(inplace=True)
        )
        self.dim = dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        clips = remove_background(clips, self.background)
        frames = clips.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        early = self.early(frames)
        pooled = self.late(early).mean(dim=(2, 3))
        saliency = frames.norm(dim=1, keepdim=True)
        summary = torch.cat(
            [self.moments(self.keypoint_maps(early)), self.saliency_moments(saliency), pooled],
            dim=1,
        )
        return self.project(summary.to(pooled.dtype)).view(b, t, self.dim)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
