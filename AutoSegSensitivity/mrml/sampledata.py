"""The phantom as sample data for the Slicer modules: a CT, its reference segmentation and probability
maps, generated here from ``AutoSegSensitivity.phantom`` (nothing downloaded), so that every module can
be tried on first open without data, a trained model or contours.

The probability maps stand in for a network that is a little too cautious: each reference mask is
blurred with a Gaussian of :data:`BLUR_MM` mm and scaled by :data:`PEAK`, so that ``p >= 0.5`` is smaller
than the reference and the Dice optimum lies below 0.5 (as in Bice et al.), which the threshold module
then finds.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..phantom import make_phantom
from ..segmentation import Segmentation
from ..volume import Volume
from . import nodes

PREFIX = "AutoSegPhantom"
"""Every node name starts with this."""
PROBABILITY_STRUCTURES: Tuple[str, ...] = ("Brain", "Parotid_L", "Parotid_R", "SpinalCord")
"""The structures that get a probability map."""
BLUR_MM = 2.0
"""Standard deviation (mm) of the Gaussian blur that turns a reference mask into a probability map."""
PEAK = 0.85
"""The blurred mask is scaled by this, so probabilities stay below 1 and the optimum below 0.5."""


class PhantomNodes(NamedTuple):
    """The nodes :func:`load_phantom` put into the scene."""

    ct: Any
    reference: Any
    probabilities: Dict[str, Any]


def probability_map(mask: np.ndarray, spacing_zyx: Sequence[float], blur_mm: float = BLUR_MM,
                    peak: float = PEAK) -> np.ndarray:
    """float32 map in [0, peak]: ``peak`` times the mask blurred with a Gaussian of ``blur_mm`` mm."""
    from scipy import ndimage

    sigma = [blur_mm / s for s in spacing_zyx]
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma=sigma, mode="constant")
    return np.clip(peak * blurred, 0.0, 1.0).astype(np.float32)


def phantom_sample(seed: int = 0, shape: Optional[Sequence[int]] = None) -> Tuple[Volume, Segmentation, Dict[str, Volume]]:
    """``(ct, reference, {structure: probability volume})`` of one phantom case (arrays, no MRML)."""
    ct, reference = make_phantom(seed=seed, shape=shape)
    probs = {name: ct.with_array(probability_map(reference.mask(name), ct.spacing_zyx))
             for name in PROBABILITY_STRUCTURES}
    return ct, reference, probs


def load_phantom(scene: Any, seed: int = 0, shape: Optional[Sequence[int]] = None) -> PhantomNodes:
    """Put the phantom into ``scene``: ``AutoSegPhantom CT``, ``AutoSegPhantom reference`` (all phantom
    structures, referencing the CT) and ``AutoSegPhantom <structure>_prob`` maps; nodes of these names are
    reused when loaded again."""
    ct, reference, probs = phantom_sample(seed, shape)
    ct_node = nodes.volume_to_node(ct, scene, f"{PREFIX} CT")
    ref_node = nodes.segmentation_to_node(reference, scene, f"{PREFIX} reference", reference_node=ct_node)
    prob_nodes = {name: nodes.volume_to_node(vol, scene, f"{PREFIX} {name}_prob") for name, vol in probs.items()}
    return PhantomNodes(ct_node, ref_node, prob_nodes)
