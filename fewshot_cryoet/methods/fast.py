"""Inference-time copies of networks: batch norm folded into the preceding (transposed)
convolution and weights in channels-last 3D memory, which oneDNN's CPU kernels and cuDNN prefer.
Exact in eval mode (up to float rounding); the training network is left untouched."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm3d that directly follows a Conv3d / ConvTranspose3d inside an
    ``nn.Sequential`` into that convolution (replacing the norm by Identity). In place."""
    for child in module.children():
        fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, norm = layers[i], layers[i + 1]
            if isinstance(norm, nn.BatchNorm3d) and isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)):
                module[i] = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose3d))
                module[i + 1] = nn.Identity()
    return module


def inference_copy(network: nn.Module) -> nn.Module:
    """A frozen, folded, channels-last copy of ``network`` for prediction."""
    fast = copy.deepcopy(network).eval()
    fold_batch_norms(fast)
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last_3d)
