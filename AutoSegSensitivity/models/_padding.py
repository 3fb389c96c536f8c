"""Zero padding of 3D inputs up to a multiple of the network's down-sampling factor, and cropping back.

The 3D networks accept any input size: they pad (N, C, D, H, W) at the far end of each axis with zeros up to
the next multiple of ``2**(depth-1)`` before the encoder and crop the logits back, so the output size always
equals the input size (paper 002: "zero padding ... so that the output has the same size as the input")."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, divisors: Sequence[int]) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Zero-pad the last ``len(divisors)`` axes of ``x`` at their end to multiples of ``divisors``; return the
    padded tensor and the original sizes."""
    sizes = tuple(int(s) for s in x.shape[-len(divisors):])
    pads = []
    for s, d in zip(reversed(sizes), reversed(tuple(divisors))):
        pads += [0, (-s) % d]
    if any(pads):
        x = F.pad(x, pads)
    return x, sizes


def crop_to(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Crop the last ``len(sizes)`` axes of ``x`` to ``sizes`` (from the start)."""
    index = (Ellipsis,) + tuple(slice(0, s) for s in sizes)
    return x[index]
