"""MONAI's networks offered beside ours, for comparison (needs ``monai``).

``monai_unet``: ``monai.networks.nets.UNet`` (residual units, strided convolutions) in 2D or 3D
(``spatial_dims`` 2 or 3, default 2), channels ``base_features * 2**i`` for ``depth`` levels (defaults 16 and
5, like paper 000's U-Net), batch normalisation, dropout 0.2. Returns logits; ``final_activation`` is
"sigmoid" unless configured "softmax". Inputs must be multiples of ``2**(depth-1)`` (``size_divisor``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from . import register
from ._common import check_activation, check_fraction, check_int

NAME = "monai_unet"


class MonaiUNet(nn.Module):
    """A thin wrapper that gives MONAI's UNet the attributes our engine reads."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2, base_features: int = 16,
                 depth: int = 5, num_res_units: int = 2, dropout: float = 0.2, norm: str = "batch",
                 final_activation: str = "sigmoid") -> None:
        super().__init__()
        from monai.networks.nets import UNet  # imported here: monai is optional

        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise InputError(NAME, "spatial_dims", "2 or 3", got=repr(spatial_dims))
        b = check_int(NAME, "base_features", base_features)
        depth = check_int(NAME, "depth", depth, minimum=2)
        num_res_units = check_int(NAME, "num_res_units", num_res_units, minimum=0)
        dropout = check_fraction(NAME, "dropout", dropout)
        if norm not in ("batch", "instance", "group"):
            raise InputError(NAME, "norm", "'batch', 'instance' or 'group'", got=repr(norm))
        self.spatial_dims = int(spatial_dims)
        self.final_activation = check_activation(NAME, final_activation)
        self.size_divisor = 2 ** (depth - 1)
        self.in_channels = in_channels
        norm_arg: Any = ("group", {"num_groups": 1}) if norm == "group" else norm
        self.net = UNet(spatial_dims=self.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                        channels=tuple(b * 2 ** i for i in range(depth)), strides=(2,) * (depth - 1),
                        num_res_units=num_res_units, norm=norm_arg, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise InputError(NAME, "input", f"a tensor (N, {self.in_channels}, ...) with {self.spatial_dims} "
                             "spatial axes", got=f"shape {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.size_divisor or s == 0]
        if bad:
            raise InputError(NAME, "input size", f"multiples of {self.size_divisor}", got=tuple(x.shape[2:]))
        return self.net(x)


@register(NAME)
def build(in_channels: int, out_channels: int, **kwargs: Any) -> MonaiUNet:
    """``monai_unet``: keyword arguments ``spatial_dims`` (2), ``base_features`` (16), ``depth`` (5),
    ``num_res_units`` (2), ``dropout`` (0.2), ``norm`` ("batch"), ``final_activation`` ("sigmoid")."""
    allowed = {"spatial_dims", "base_features", "depth", "num_res_units", "dropout", "norm", "final_activation"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(NAME, "arguments", f"only {', '.join(sorted(allowed))}", got=", ".join(unknown))
    return MonaiUNet(in_channels, out_channels, **kwargs)
