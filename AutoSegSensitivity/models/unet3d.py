"""3D U-Net with group normalisation, as used by paper 002 (Smith et al., "Localise to segment").

The paper specifies a 3D U-Net (Cicek et al. 2016) with group normalisation after each layer (batch 2 makes
batch norm unreliable), zero padding in the convolutions so that the output has the size of the input, He
initialisation, Dice + cross-entropy loss; it does not print the widths. Our layout:

* ``depth`` resolution levels (default 4); level ``i`` has ``widths[i]`` channels, by default
  ``base_features * 2**i`` with ``base_features = 32`` (32-64-128-256).
* Every level of the encoder and decoder: two [Conv3D 3x3x3 (zero padding 1) -> GroupNorm -> ReLU] layers.
* Down-sampling: max pooling 2x2x2; up-sampling: ConvTranspose3D 2x2x2 stride 2 to the width of the level
  below, concatenated with the encoder features of that level (skip connection).
* Output: Conv3D 1x1x1 to ``out_channels`` logits. ``final_activation`` is "sigmoid" (one channel per
  structure, the default) or "softmax" (exclusive classes with a background channel), as configured.
* GroupNorm uses ``groups`` groups (default 8), reduced to the largest divisor of the channel count when the
  channel count is not a multiple of it (e.g. at tiny test widths).
* Weights: He (Kaiming normal, fan-in, ReLU gain) for every convolution, biases zero.

Any input size is accepted: the input is zero-padded at its far end to a multiple of ``2**(depth-1)`` on each
axis and the logits are cropped back, so the output size equals the input size.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from . import register
from ._common import check_activation, check_int, resolve_widths
from ._padding import crop_to, pad_to_multiple

NAME = "unet3d"


def group_count(channels: int, groups: int) -> int:
    """The number of GroupNorm groups for ``channels``: the largest divisor of ``channels`` <= ``groups``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class DoubleConv3d(nn.Sequential):
    """Two [Conv3D 3x3x3 (zero padding 1) -> GroupNorm -> ReLU] layers."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(group_count(out_channels, groups), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(group_count(out_channels, groups), out_channels),
            nn.ReLU(inplace=True),
        )


class UNet3d(nn.Module):
    """3D U-Net with group normalisation (paper 002); returns logits of the input's size."""

    spatial_dims = 3

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_features: int = 32, depth: int = 4,
                 widths: Optional[Sequence[int]] = None, groups: int = 8,
                 final_activation: str = "sigmoid") -> None:
        super().__init__()
        self.in_channels = check_int(NAME, "in_channels", in_channels)
        self.out_channels = check_int(NAME, "out_channels", out_channels)
        self.widths = list(resolve_widths(NAME, widths, base_features, depth))
        self.depth = len(self.widths)
        self.groups = check_int(NAME, "groups", groups)
        self.final_activation = check_activation(NAME, final_activation)
        self.size_divisor = 2 ** (self.depth - 1)
        w = self.widths
        self.encoders = nn.ModuleList(
            [DoubleConv3d(in_channels if i == 0 else w[i - 1], w[i], self.groups) for i in range(self.depth)])
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(self.depth - 1)):
            self.ups.append(nn.ConvTranspose3d(w[i + 1], w[i], kernel_size=2, stride=2))
            self.decoders.append(DoubleConv3d(2 * w[i], w[i], self.groups))
        self.output = nn.Conv3d(w[0], out_channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation of every convolution (paper 002), zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise InputError(NAME, "input", "a tensor (N, C, D, H, W)", got=f"shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(NAME, "input channels", str(self.in_channels), got=x.shape[1])
        if min(x.shape[2:]) < 1:
            raise InputError(NAME, "input size", "at least one voxel per axis", got=tuple(x.shape[2:]))
        x, sizes = pad_to_multiple(x, (self.size_divisor,) * 3)
        skips: List[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return crop_to(self.output(x), sizes)


@register(NAME)
def build(in_channels: int, out_channels: int, **kwargs: Any) -> UNet3d:
    """``unet3d``: keyword arguments ``base_features`` (32), ``depth`` (4), ``widths`` (overrides both),
    ``groups`` (8), ``final_activation`` ("sigmoid")."""
    allowed = {"base_features", "depth", "widths", "groups", "final_activation"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(NAME, "arguments", f"only {', '.join(sorted(allowed))}", got=", ".join(unknown))
    return UNet3d(in_channels, out_channels, **kwargs)
