"""File names of probability maps: the one rule by which ``predict`` writes ``prob_<name>.nrrd`` and ``tune``,
``apply`` and the Slicer cohort section find them (kept apart so that neither imports the other)."""

from __future__ import annotations

import re

PROB_PREFIX = "prob_"


def map_stem(structure: str) -> str:
    """The file-name form of a structure name in ``prob_<name>.nrrd`` (what ``predict`` writes: characters
    other than letters, digits and ``._-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", structure) or "structure"
