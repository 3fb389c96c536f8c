"""AutoSegSensitivity: threshold sensitivity, localisation and intensity transforms for deep-learning
organ-at-risk segmentation on CT.

The engine (this package, minus ``mrml/``) imports neither Slicer nor Qt. See ``volume.py`` for the
geometry conventions every module follows.
"""

__version__ = "0.1.0"

from .errors import AutoSegError, InputError  # noqa: F401
from .segmentation import Segment, Segmentation  # noqa: F401
from .volume import Box, Volume  # noqa: F401
