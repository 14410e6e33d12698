"""Inference-time copies of networks: batch norm folded into a neighbouring convolution and weights
in channels-last 3D memory, which oneDNN's CPU kernels and cuDNN prefer. Exact in eval mode (up to
float rounding); the training network is left untouched.

Two folds:
- conv → BatchNorm (our shallow profiles): the norm becomes the convolution's weights and bias
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``).
- conv → ReLU → BatchNorm → conv (the published COS-Net order): the norm cannot enter the conv
  before the ReLU, so it enters the conv after it. In eval mode the norm is ``y = a ⊙ x + b`` per
  channel (``a = γ / √(σ² + ε)``, ``b = β − a μ``). The next convolution, weights ``W`` and zero
  padding, gives ``W ∗ pad(a ⊙ x + b) = (W·a) ∗ pad(x) + W ∗ pad(b·1)``, where ``W·a`` scales each
  input channel of ``W`` and ``pad(b·1)`` is ``b`` inside the volume and 0 in the padding. The
  first term is a convolution with folded weights; the second does not depend on the data, only
  on the volume's shape: a bias *map*, equal to ``Σ W·b`` in the interior and smaller at the
  border, where the padding contributes nothing. :class:`FoldedConv` computes that map once per
  shape, so the fold is exact everywhere, border included.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
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


class FoldedConv(nn.Module):
    """``conv(batch_norm(x))`` in one convolution plus a per-shape bias map (see the module
    docstring for the algebra)."""

    def __init__(self, norm: nn.BatchNorm3d, conv: nn.Conv3d) -> None:
        super().__init__()
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - scale * norm.running_mean
        self.conv = copy.deepcopy(conv)
        self.conv.weight.data = conv.weight.detach() * scale.view(1, -1, 1, 1, 1)
        # The shift goes through the original weights: W ∗ pad(b·1), summed over input channels.
        self.register_buffer("shift_response", (conv.weight.detach() * shift.detach().view(1, -1, 1, 1, 1)))
        self._maps: dict = {}

    def _bias_map(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape[2:]), x.device, x.dtype)
        if key not in self._maps:
            inside = torch.ones(1, self.shift_response.shape[1], *x.shape[2:], device=x.device, dtype=x.dtype)
            self._maps[key] = F.conv3d(inside, self.shift_response.to(x.dtype), None, self.conv.stride,
                                       self.conv.padding, self.conv.dilation, self.conv.groups)
        return self._maps[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self._bias_map(x)


def fold_norms_after_activations(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm3d that ends one ``nn.Sequential`` (conv → ReLU → norm) into the
    Conv3d that starts the next one in the same parent ``nn.Sequential``. In place."""
    for child in module.children():
        fold_norms_after_activations(child)
    if isinstance(module, nn.Sequential):
        blocks = list(module)
        for first, second in zip(blocks, blocks[1:]):
            if (isinstance(first, nn.Sequential) and isinstance(second, nn.Sequential) and len(first) and len(second)
                    and isinstance(first[-1], nn.BatchNorm3d) and isinstance(second[0], nn.Conv3d)):
                second[0] = FoldedConv(first[-1], second[0])
                first[-1] = nn.Identity()
    return module


def inference_copy(network: nn.Module) -> nn.Module:
    """A frozen, folded, channels-last copy of ``network`` for prediction."""
    fast = copy.deepcopy(network).eval()
    fold_batch_norms(fast)
    fold_norms_after_activations(fast)
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last_3d)
