"""A tiny review cohort on disk: phantom CT cases, probability maps that under-segment at 0.5 (their
reference edge sits near p = 0.25), in the layout of a ``demo`` study and of ``tune``'s folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import ndimage

from AutoSegSensitivity.io import write_case, write_volume
from AutoSegSensitivity.phantom import case_name, make_phantom

STRUCTURES = ("Brain", "Parotid_L")
SHAPE = (12, 48, 48)


def probability(mask: np.ndarray, seed: int, sigma: float = 1.2, gamma: float = 2.0) -> np.ndarray:
    """A smooth map whose 0.5 iso-surface lies inside ``mask`` (optimum threshold about 0.5 ** gamma)."""
    g = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    noise = np.random.default_rng(seed).normal(0, 0.02, mask.shape).astype(np.float32)
    return np.clip(g ** gamma + noise * (g > 0.05), 0.0, 1.0).astype(np.float32)


def write_study(root: Path, cases: int = 3, shape: Sequence[int] = SHAPE, loss: str = "bce",
                structures: Sequence[str] = STRUCTURES, chosen: Dict[str, float] = None) -> Path:
    """``root`` as ``autosegsens demo`` leaves it (the parts review reads): study.json, data/<case>/,
    predictions/<loss>/<case>/prob_<S>.nrrd and summary.csv with the thresholds chosen on validation."""
    chosen = chosen or {s: 0.3 for s in structures}
    for i in range(cases):
        name = case_name(i)
        image, seg = make_phantom(seed=(0, i), shape=shape)
        write_case(root / "data" / name, image, seg)
        for s in structures:
            write_volume(image.with_array(probability(seg.mask(s), i)), root / "predictions" / loss / name / f"prob_{s}.nrrd")
    meta = {"losses": [{"key": loss, "label": loss.upper()}], "structures": list(structures), "settings": {},
            "data": {"folder": "data", "validation cases": [case_name(0)],  # study.py: meta["data"][f"{role} cases"]
                     "test cases": [case_name(i) for i in range(1, cases)]}, "status": "complete"}
    (root / "study.json").write_text(json.dumps(meta), encoding="utf-8")
    with open(root / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["loss", "structure", "dice_threshold_chosen_on_validation"])
        w.writeheader()
        for s in structures:
            w.writerow({"loss": loss, "structure": s, "dice_threshold_chosen_on_validation": chosen[s]})
    return root


def folders_of(study: Path, loss: str = "bce") -> Tuple[Path, Path]:
    """``(prob_dir, ref_dir)`` of a study written by :func:`write_study` (the layout ``tune`` reads)."""
    return study / "predictions" / loss, study / "data"


def break_cases(study: Path, loss: str = "bce") -> Tuple[str, str]:
    """Add two bad cases to a study written by :func:`write_study` (with at least 5 cases): ``case003``
    loses its map of Parotid_L, ``case004``'s map of Brain is moved onto another grid. Returns their names."""
    from AutoSegSensitivity.io import read_volume
    from AutoSegSensitivity.volume import Volume

    pdir = study / "predictions" / loss
    (pdir / "case003" / "prob_Parotid_L.nrrd").unlink()
    vol = read_volume(pdir / "case004" / "prob_Brain.nrrd")
    moved = Volume(np.ascontiguousarray(vol.array[:, :, :-4]), vol.spacing, vol.origin, vol.direction)
    write_volume(moved, pdir / "case004" / "prob_Brain.nrrd")
    return "case003", "case004"
