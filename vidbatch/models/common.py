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


def to_device(array: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU array on `device`; to a GPU through pinned memory, so the copy is asynchronous."""
    x = torch.as_tensor(array)
    if torch.device(device).type == "cuda":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


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
    x = to_device(clips, device)  # uint8 over the bus: 4x less than float
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


_BASES: dict[tuple[int, int, str], torch.Tensor] = {}
MOMENTS = 9  # centroid x, y; variance; central moments of order 2, 3, 4 (real, imaginary)


def weighted_moments(weights: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, K, H*W) non-negative weights -> (N, K, MOMENTS), as `SpatialMoments` computes them
    but normalized by the total weight (+ 1e-3), so an empty map gives about zero moments."""
    key = (h, w, str(weights.device))
    if key not in _BASES:
        _BASES[key] = SpatialMoments(1).basis(h, w, weights.device)
    with torch.autocast(weights.device.type, enabled=False):  # complex math stays in fp32
        raw = weights.float() @ _BASES[key]
        m = torch.complex(raw[..., :5], raw[..., 5:10])  # sum(w z^j), j = 0..4
        mass = m[..., 0].real + 1e-3
        c = m[..., 1] / mass
        var = (raw[..., -1] / mass - c.abs() ** 2).clamp_min(1e-4)
        out = [c.real, c.imag, var]
        for order in (2, 3, 4):
            central = sum(
                math.comb(order, j) * (-c) ** (order - j) * m[..., j] for j in range(order + 1)
            )
            central = central / var ** ((order - 1) / 2)
            out += [central.real, central.imag]
        return torch.stack(out, dim=-1)


class ForegroundMoments(nn.Module):
    """(N, 3, H, W) background-removed frames -> (N, MOMENTS + 1): moments and area of the
    foreground mask (pixels far from the background colour). Parameter-free.

    A steep mask, not a softmax: thousands of background pixels each add a little to a softmax
    and drown the shape's orientation. Measured on the 480-video synth archive: with this mask
    the 3rd (triangles) or 4th (squares) moment turns the labelled way on 98-100% of rotating
    clips and stays still on static ones; with the softmax saliency, on about half.
    """

    def __init__(self, threshold: float = 1.5, slope: float = 12.0) -> None:
        super().__init__()
        self.threshold = threshold  # normalized units: about a third of the 0..1 colour range
        self.slope = slope

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, _, h, w = frames.shape
        with torch.autocast(frames.device.type, enabled=False):
            distance = frames.float().norm(dim=1).flatten(1)
            mask = torch.sigmoid(self.slope * (distance - self.threshold))
            weights = mask / (mask.sum(dim=1, keepdim=True) + 1.0)
            moments = weighted_moments(weights[:, None], h, w)[:, 0]
            return torch.cat([moments, mask.mean(dim=1, keepdim=True)], dim=1)


Summary = Literal["saliency", "foreground"]

MOTION = 10  # per frame: centroid step (2), log-variance step, area step, phase turn of 3 orders


def frame_motion(foreground: torch.Tensor) -> torch.Tensor:
    """(B, T, MOMENTS + 1) `ForegroundMoments` per frame -> (B, T, MOTION): how the foreground
    moved since the previous frame (zeros for the first frame).

    The phase turn of the order-k moment, z_t * conj(z_{t-1}) / (|z_t| |z_{t-1}|), is the
    shape's rotation times k as (cos, sin): the sign of the sine is the direction of turning.
    A product across frames is what additive recurrent and attention layers struggle to learn
    from a few hundred clips, so it is given, as two-stream networks give optical flow.
    Depends on frame order by construction: only the temporal families use it.
    """
    now, before = foreground[:, 1:], foreground[:, :-1]
    steps = [now[..., 0:2] - before[..., 0:2]]  # centroid
    steps.append(torch.log(now[..., 2:3]) - torch.log(before[..., 2:3]))  # size
    steps.append(now[..., 9:10] - before[..., 9:10])  # area (blinking, growing)
    for real in (3, 5, 7):  # orders 2, 3, 4
        z_now = torch.complex(now[..., real], now[..., real + 1])
        z_before = torch.complex(before[..., real], before[..., real + 1])
        turn = z_now * z_before.conj() / (z_now.abs() * z_before.abs() + 1e-6)
        steps.append(torch.stack([turn.real, turn.imag], dim=-1))
    moved = torch.cat(steps, dim=-1)
    return torch.cat([torch.zeros_like(moved[:, :1]), moved], dim=1)


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

    `summary` picks the parameter-free part of the summary: "saliency" (the default, which the
    shipped motion-cnn was trained with) is the softmax moments of the distance from the
    background colour, under a LayerNorm; "foreground" is the moments of a steep foreground
    mask (`ForegroundMoments`) under a per-feature BatchNorm, so the few orientation moments
    are not drowned by the larger learned features.
    """

    def __init__(
        self,
        width: int = 32,
        dim: int = 128,
        keypoints: int = 16,
        background: Background = "frame-median",
        summary: Summary = "saliency",
        motion: bool = False,
    ) -> None:
        super().__init__()
        if summary not in typing.get_args(Summary):
            raise ValueError(f"summary must be 'saliency' or 'foreground', got {summary!r}")
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
        if motion and summary != "foreground":
            raise ValueError("motion features need summary: foreground")
        self.summary = summary
        self.motion = motion
        if summary == "saliency":
            # Parameter-free saliency: distance of each pixel from the background colour. Its
            # moments give the object's position, size and turn from the first step of training.
            self.saliency_moments = SpatialMoments(1, temperature=0.25)
            size = (keypoints + 1) * MOMENTS + width
            norm: nn.Module = nn.LayerNorm(size)
        else:
            self.foreground = ForegroundMoments()
            size = keypoints * MOMENTS + MOMENTS + 1 + width + MOTION * motion
            norm = nn.BatchNorm1d(size)
        self.project = nn.Sequential(norm, nn.Linear(size, dim), nn.ReLU(inplace=True))
        self.dim = dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        clips = remove_background(clips, self.background)
        frames = clips.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        early = self.early(frames)
        pooled = self.late(early).mean(dim=(2, 3))
        if self.summary == "saliency":
            given = self.saliency_moments(frames.norm(dim=1, keepdim=True))
        else:
            given = self.foreground(frames)
        parts = [self.moments(self.keypoint_maps(early)), given, pooled]
        if self.motion:
            parts.append(frame_motion(given.view(b, t, -1)).flatten(0, 1))
        summary = torch.cat(parts, dim=1)
        return self.project(summary.to(pooled.dtype)).view(b, t, self.dim)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
