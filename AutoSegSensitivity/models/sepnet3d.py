"""3D-SepNet of paper 004 (Lei et al., "Automatic segmentation of organs-at-risk from head-and-neck CT using
separable convolutional neural network with hard-region-weighted loss"), section 3.2 and Fig. 5.

What the paper specifies and how we build it:

* A 3D U-Net backbone of separable convolutional blocks. ``Block(n)`` (:class:`SepBlock`): three
  intra-slice convolutions (kernel 1x3x3, padding 0x1x1) followed by one inter-slice convolution (kernel
  3x1x1, padding 1x0x0), each followed by instance normalisation and ReLU, plus a skip connection through
  one 1x1x1 convolution of the block's input, added to the block's output.
* The number of channels doubles after each max pooling in the encoder; encoder features are concatenated
  with the decoder features of the same resolution; a final 1x1x1 convolution gives the class scores, whose
  softmax (``final_activation == "softmax"``, applied at inference, background first) gives the
  probabilities. The model returns logits.

Where the paper's text is silent (Fig. 5 is not legible in our copy) we choose, and document:

* ``depth = 4`` resolution levels (3 max poolings 2x2x2) with widths ``base_features * 2**i``
  (``base_features = 24`` by default); the encoder has one block per level above the bottom, the bottom two
  blocks (widening then narrowing back to the width of the level above), and each decoder level two blocks
  (the first after concatenation): 11 separable blocks plus the 1x1x1 output layer (the paper counts 12
  convolutional blocks).
* Up-sampling is parameter-free trilinear interpolation (factor 2).
* Instance normalisation without affine parameters (PyTorch's default); no dilation (``dilation`` applies
  to the in-plane axes of the intra-slice convolutions if set); dropout before the output layer
  (``dropout``, default 0).

Any input size is accepted: the input is zero-padded at its far end to a multiple of ``2**(depth-1)`` per
axis and the logits are cropped back.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from . import register
from ._common import check_activation, check_fraction, check_int, resolve_widths
from ._padding import crop_to, pad_to_multiple

NAME = "sepnet3d"


class SepBlock(nn.Module):
    """Block(n): three intra-slice [Conv 1x3x3 -> IN -> ReLU], one inter-slice [Conv 3x1x1 -> IN -> ReLU],
    plus a residual 1x1x1 convolution of the input added to the output."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, affine: bool = False) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        cin = in_channels
        for _ in range(3):
            layers += [nn.Conv3d(cin, out_channels, kernel_size=(1, 3, 3), padding=(0, dilation, dilation),
                                 dilation=(1, dilation, dilation)),
                       nn.InstanceNorm3d(out_channels, affine=affine), nn.ReLU(inplace=True)]
            cin = out_channels
        layers += [nn.Conv3d(out_channels, out_channels, kernel_size=(3, 1, 1), padding=(1, 0, 0)),
                   nn.InstanceNorm3d(out_channels, affine=affine), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.skip = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class SepNet3d(nn.Module):
    """3D-SepNet (paper 004); see the module docstring. Returns logits of the input's size."""

    spatial_dims = 3

    def __init__(self, in_channels: int = 1, out_channels: int = 2, base_features: int = 24, depth: int = 4,
                 widths: Optional[Sequence[int]] = None, dilation: int = 1, dropout: float = 0.0,
                 affine: bool = False, final_activation: str = "softmax") -> None:
        super().__init__()
        self.in_channels = check_int(NAME, "in_channels", in_channels)
        self.out_channels = check_int(NAME, "out_channels", out_channels)
        self.widths = list(resolve_widths(NAME, widths, base_features, depth))
        self.depth = len(self.widths)
        dilation = check_int(NAME, "dilation", dilation)
        dropout = check_fraction(NAME, "dropout", dropout)
        if not isinstance(affine, bool):
            raise InputError(NAME, "affine", "true or false", got=repr(affine))
        self.final_activation = check_activation(NAME, final_activation)
        self.size_divisor = 2 ** (self.depth - 1)
        w = self.widths

        def block(cin: int, cout: int) -> SepBlock:
            return SepBlock(cin, cout, dilation, affine)

        self.encoders = nn.ModuleList(
            [block(in_channels if i == 0 else w[i - 1], w[i]) for i in range(self.depth - 1)])
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.bottom = nn.Sequential(block(w[-2], w[-1]), block(w[-1], w[-2]))
        self.decoders = nn.ModuleList()
        for i in reversed(range(self.depth - 1)):
            self.decoders.append(nn.Sequential(block(2 * w[i], w[i]), block(w[i], w[max(i - 1, 0)])))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Conv3d(w[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise InputError(NAME, "input", "a tensor (N, C, D, H, W)", got=f"shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(NAME, "input channels", str(self.in_channels), got=x.shape[1])
        if min(x.shape[2:]) < 1:
            raise InputError(NAME, "input size", "at least one voxel per axis", got=tuple(x.shape[2:]))
        x, sizes = pad_to_multiple(x, (self.size_divisor,) * 3)
        skips: List[torch.Tensor] = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for dec in self.decoders:
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return crop_to(self.output(self.dropout(x)), sizes)


@register(NAME)
def build(in_channels: int, out_channels: int, **kwargs: Any) -> SepNet3d:
    """``sepnet3d``: keyword arguments ``base_features`` (24), ``depth`` (4), ``widths`` (overrides both),
    ``dilation`` (1), ``dropout`` (0), ``affine`` (False), ``final_activation`` ("softmax")."""
    allowed = {"base_features", "depth", "widths", "dilation", "dropout", "affine", "final_activation"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(NAME, "arguments", f"only {', '.join(sorted(allowed))}", got=", ".join(unknown))
    return SepNet3d(in_channels, out_channels, **kwargs)
