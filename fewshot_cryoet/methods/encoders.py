"""3D convolutional encoders shared by the neural methods."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3×3 convolution, batch norm, ReLU, 2× max-pool: the classic few-shot "Conv-4" block in 3D."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
    )


class ConvEncoder3d(nn.Module):
    """Stack of :func:`conv_block`\\ s, then global average pooling to a ``channels[-1]``-d vector,
    so the encoder works for any box size divisible by 2^len(channels)."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers, previous = [], 1
        for width in channels:
            layers.append(conv_block(previous, width))
            previous = width
        self.features = nn.Sequential(*layers)
        self.out_features = previous

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.features(volumes).mean(dim=(2, 3, 4))
