"""The 2D U-Net of paper 000 (Bice et al. 2021, J Appl Clin Med Phys 22:105), Appendix A, Table A1.

Layout at the paper's configuration (``base_features=16``, ``depth=5``, one input channel, 128 x 128 input;
F = output channels; every "conv block" is Conv2D 3x3 stride 1 (zero padding 1, with bias) -> BatchNorm ->
LeakyReLU -> Dropout(0.2); every "up block" is ConvTranspose2D 3x3 stride 2 -> BatchNorm -> ReLU ->
Dropout(0.2), doubling height and width):

====================  ========================================  =============
level (resolution)    encoder                                   decoder
====================  ========================================  =============
0 (128)               conv 1->16                                up 16->16, conv 16->16
1 (64)                pool, conv 16->16, conv 16->32            up 32->32, conv* (32+32)->32, conv 32->16
2 (32)                pool, conv 32->32, conv 32->64            up 64->64, conv* (64+64)->64, conv 64->32
3 (16)                pool, conv 64->64, conv 64->128           up 128->128, conv* (128+128)->128, conv 128->64
4 (8, bottleneck)     pool, conv 128->128, conv 128->128
====================  ========================================  =============

followed by the output Conv2D 3x3 16 -> ``out_channels``. ``*``: the table's starred layers, whose input
is the up-sampled features concatenated with the encoder features of the same resolution (the skip
connection "provides half of the features for these layers' inputs"). Choices where Table A1 is ambiguous:

* Level 1's starred conv: the table prints "output (32,64,64)" but "F = 64"; we follow the output size (32),
  which the next layer's input and the pattern of the other levels confirm.
* The last up block's printed output size (16,64,64) must be (16,128,128) (a stride-2 up-sampling of 64).
* The final conv at full resolution is not starred in the table: by default it sees only the up-sampled
  features (no skip at level 0). ``top_skip=True`` adds the level-0 skip connection (input 16+16).
* Max pooling 2x2 stride 2; LeakyReLU with PyTorch's default slope 0.01; dropout elementwise.

The sigmoid of the table's output layer is applied at inference, not here: the model returns logits and
``final_activation == "sigmoid"`` (one independent channel per structure).

Generalisation: ``base_features`` (b) and ``depth`` (number of resolution levels, >= 2) are configurable;
level ``i`` has width ``b * 2**i`` for ``i < depth - 1`` and the bottleneck keeps the width of the level
above it. Height and width must be multiples of ``2**(depth-1)`` (16 at the paper's depth 5): other sizes
raise :class:`~AutoSegSensitivity.errors.InputError`; pad inputs first (``size_divisor`` says by how much).
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import nn

from ..errors import InputError
from . import register
from ._common import check_fraction, check_int

NAME = "unet2d"


class ConvBlock2d(nn.Sequential):
    """Conv2D 3x3 (stride 1, zero padding 1) -> BatchNorm -> LeakyReLU -> Dropout (Table A1 "conv block")."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, negative_slope: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(negative_slope),
            nn.Dropout(dropout),
        )


class UpBlock2d(nn.Sequential):
    """ConvTranspose2D 3x3 stride 2 -> BatchNorm -> ReLU -> Dropout (Table A1 "upsampling block"); output
    height and width are exactly twice the input's."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )


class UNet2d(nn.Module):
    """Paper 000's 2D U-Net (Table A1); see the module docstring for the layout. Returns logits."""

    spatial_dims = 2
    final_activation = "sigmoid"

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_features: int = 16, depth: int = 5,
                 dropout: float = 0.2, negative_slope: float = 0.01, top_skip: bool = False) -> None:
        super().__init__()
        in_channels = check_int(NAME, "in_channels", in_channels)
        out_channels = check_int(NAME, "out_channels", out_channels)
        b = check_int(NAME, "base_features", base_features)
        depth = check_int(NAME, "depth", depth, minimum=2)
        dropout = check_fraction(NAME, "dropout", dropout)
        try:
            negative_slope = float(negative_slope)
        except (TypeError, ValueError):
            raise InputError(NAME, "negative_slope", "a number", got=repr(negative_slope)) from None
        if not isinstance(top_skip, bool):
            raise InputError(NAME, "top_skip", "true or false", got=repr(top_skip))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.base_features, self.depth, self.top_skip = b, depth, top_skip
        self.size_divisor = 2 ** (depth - 1)
        widths = [b * 2 ** i for i in range(depth - 1)]  # levels 0 .. depth-2; bottleneck keeps widths[-1]
        self.widths = widths + [widths[-1]]

        def conv(cin: int, cout: int) -> ConvBlock2d:
            return ConvBlock2d(cin, cout, dropout, negative_slope)

        self.encoders = nn.ModuleList()
        for i in range(depth - 1):
            if i == 0:
                self.encoders.append(nn.Sequential(conv(in_channels, widths[0])))
            else:
                self.encoders.append(nn.Sequential(conv(widths[i - 1], widths[i - 1]), conv(widths[i - 1], widths[i])))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = nn.Sequential(conv(widths[-1], widths[-1]), conv(widths[-1], widths[-1]))
        # decoders[j] serves level depth-2-j (deepest first)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.ups.append(UpBlock2d(widths[i], widths[i], dropout))
            if i > 0:
                self.decoders.append(nn.Sequential(conv(2 * widths[i], widths[i]), conv(widths[i], widths[i - 1])))
            else:
                self.decoders.append(nn.Sequential(conv(widths[0] * (2 if top_skip else 1), widths[0])))
        self.output = nn.Conv2d(widths[0], out_channels, kernel_size=3, stride=1, padding=1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``InputError`` unless ``x`` is (N, in_channels, H, W) with H and W multiples of
        ``size_divisor``."""
        if x.dim() != 4:
            raise InputError(NAME, "input", "a tensor (N, C, H, W)", got=f"shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(NAME, "input channels", str(self.in_channels), got=x.shape[1])
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor or h == 0 or w == 0:
            raise InputError(NAME, "input size", f"height and width multiples of {self.size_divisor} "
                             f"(2**(depth-1) for depth {self.depth}); pad the input", got=f"{h} x {w}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips: List[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.bottleneck(self.pool(x))
        for j, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            level = self.depth - 2 - j
            x = up(x)
            if level > 0 or self.top_skip:
                x = torch.cat([x, skips[level]], dim=1)
            x = dec(x)
        return self.output(x)


@register(NAME)
def build(in_channels: int, out_channels: int, **kwargs: Any) -> UNet2d:
    """``unet2d``: keyword arguments ``base_features`` (16), ``depth`` (5), ``dropout`` (0.2),
    ``negative_slope`` (0.01), ``top_skip`` (False)."""
    allowed = {"base_features", "depth", "dropout", "negative_slope", "top_skip"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(NAME, "arguments", f"only {', '.join(sorted(allowed))}", got=", ".join(unknown))
    return UNet2d(in_channels, out_channels, **kwargs)
