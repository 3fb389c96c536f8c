"""When each button of the Slicer modules is enabled, as pure functions of the parameter-node values.

Every rule takes plain values (paths, strings, counts) and MRML nodes (or None) and returns an
:class:`ActionState`: whether the action can run and a tooltip that says what it does, or, when it cannot,
what is missing. The widgets only call these; the rules are tested on slicer-core MRML.

An empty path is unset everywhere: the modules' path fields are ``Optional[Path] = None`` (see
:mod:`.path_fields`; Slicer's own ``Path`` binding would store an empty field as ``Path()``, which is
``Path('.')`` and truthy); ``None``, ``''``, ``'.'``, blanks and ``Path('.')`` all mean "not chosen"
(:func:`path_or_none`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Union

PathLike = Union[str, "os.PathLike[str]", None]


class ActionState(NamedTuple):
    """``enabled`` and the button's tooltip (what the action does, or what is missing)."""

    enabled: bool
    tooltip: str


def path_or_none(value: PathLike) -> Optional[Path]:
    """``Path(value)``, or None when the value means "not chosen" (None, '', blanks, '.', ``Path()``)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or Path(text) == Path("."):
        return None
    return Path(text)


def _state(missing: List[str], does: str) -> ActionState:
    if missing:
        return ActionState(False, "Missing: " + "; ".join(missing) + ".")
    return ActionState(True, does)


def _path_problem(value: PathLike, what: str, folder: bool = False) -> Optional[str]:
    """``what`` when the field is unset, what is wrong with the path when it is not an existing file (or
    folder), else None."""
    path = path_or_none(value)
    if path is None:
        return what
    if not (path.is_dir() if folder else path.is_file()):
        return f"{what} ({path} is not a {'folder' if folder else 'file'})"
    return None


def _file_problem(value: PathLike, what: str) -> Optional[str]:
    return _path_problem(value, what)


def _missing(*checks: Optional[str]) -> List[str]:
    return [c for c in checks if c]


# ---- AutoSegTraining -------------------------------------------------------------------------------------
def train(config: PathLike, output_dir: PathLike, data_dir: PathLike, scene_volumes: int, running: bool) -> ActionState:
    """Train needs a config file, an output folder, and a dataset folder or checked scene volumes."""
    missing = _missing(
        _file_problem(config, "a base config file"),
        None if path_or_none(output_dir) else "an output folder",
        None if path_or_none(data_dir) or scene_volumes > 0 else "a dataset folder or checked scene volumes",
        "(training is running)" if running else None)
    return _state(missing, "Train in a background process; progress and curves appear below.")


def cancel(running: bool, predicting: bool = False) -> ActionState:
    """Cancel is possible while a training or a prediction runs (it stops both)."""
    does = []
    if running:
        does.append("stop training at the next batch, keeping the last epoch")
    if predicting:
        does.append("stop the prediction")
    if not does:
        return _state(["a running training or prediction"], "")
    return _state([], "; ".join(does).capitalize() + ".")


def predict(checkpoint: PathLike, volume: Any, predicting: bool) -> ActionState:
    """Predict needs an existing checkpoint file and a volume, and no prediction running."""
    missing = _missing(_file_problem(checkpoint, "a checkpoint file (.pt)"),
                       None if volume is not None else "a volume to segment",
                       "(a prediction is running)" if predicting else None)
    return _state(missing, "Predict probability maps (and a segmentation) in a background process.")


# ---- AutoSegIntensity ------------------------------------------------------------------------------------
def intensity_apply(input_volume: Any) -> ActionState:
    """Apply needs an input volume."""
    return _state([] if input_volume is not None else ["an input volume"], "Apply the intensity transform.")


# ---- AutoSegLocalisation ---------------------------------------------------------------------------------
def propose_roi(input_volume: Any, localiser_model: PathLike) -> ActionState:
    """Propose ROI needs an input volume and an existing localisation model file."""
    missing = _missing(None if input_volume is not None else "an input volume",
                       _file_problem(localiser_model, "a localisation model file"))
    return _state(missing, "Propose an ROI with the localisation model; adjust it before Run.")


def localisation_run(input_volume: Any, organ_model: PathLike, roi: Any, localiser_model: PathLike) -> ActionState:
    """Run needs an input volume, an existing organ model file, and an ROI or a localisation model."""
    localiser_problem = _file_problem(localiser_model, "a localisation model file")
    missing = _missing(None if input_volume is not None else "an input volume",
                       _file_problem(organ_model, "an organ model file"),
                       None if roi is not None or localiser_problem is None else "an ROI or " + localiser_problem)
    return _state(missing, "Segment the organ in the (padded) ROI.")


# ---- AutoSegThreshold ------------------------------------------------------------------------------------
def sweep(probability_maps: int, reference_segmentations: int, structure: str) -> ActionState:
    """Sweep needs checked probability maps, as many checked reference segmentations, and a structure."""
    missing = _missing(None if probability_maps > 0 else "checked probability maps",
                       None if reference_segmentations == probability_maps and reference_segmentations > 0 else
                       f"one checked reference segmentation per map ({reference_segmentations} for {probability_maps})",
                       None if (structure or "").strip() else "a structure name")
    return _state(missing, "Sweep thresholds and chart the metrics against the threshold.")


def apply_optimum(has_result: bool, probability_maps: int, checkpoint: PathLike) -> ActionState:
    """Apply optimum needs a sweep result and the maps; a checkpoint, when given, must exist."""
    ckpt = path_or_none(checkpoint)
    missing = _missing(None if has_result else "a sweep result (run Sweep first)",
                       None if probability_maps > 0 else "checked probability maps",
                       f"the checkpoint {ckpt} (not a file)" if ckpt is not None and not ckpt.is_file() else None)
    store = f" and store it in {ckpt.name}" if ckpt is not None else ""
    return _state(missing, f"Threshold the maps at the Dice optimum{store}.")


def save_thresholds(has_result: bool, structure: str, thresholds_file: PathLike) -> ActionState:
    """Saving the optimum to a thresholds.json needs a sweep result, a structure name and a file path."""
    path = path_or_none(thresholds_file)
    missing = _missing(None if has_result else "a sweep result (run Sweep first)",
                       None if (structure or "").strip() else "a structure name",
                       None if path is not None else "a thresholds.json file")
    return _state(missing, "Store the Dice optimum of this structure in the thresholds.json "
                           "(other structures in the file are kept).")


def load_thresholds(structure: str, thresholds_file: PathLike) -> ActionState:
    """Loading needs a structure name and an existing thresholds.json."""
    missing = _missing(None if (structure or "").strip() else "a structure name",
                       _file_problem(thresholds_file, "a thresholds.json file"))
    return _state(missing, "Set the slider to this structure's threshold from the thresholds.json.")


# ---- AutoSegThreshold: cohort ---------------------------------------------------------------------------
def _folder_problem(value: PathLike, what: str) -> Optional[str]:
    return _path_problem(value, what, folder=True)


def cohort_run(maps_dir: PathLike, contours_dir: PathLike, running: bool) -> ActionState:
    """Run (cohort tuning) needs an existing maps folder and contours folder, and no run going on."""
    missing = _missing(_folder_problem(maps_dir, "a probability-maps folder"),
                       _folder_problem(contours_dir, "a contours folder"),
                       "(a cohort tuning is running)" if running else None)
    return _state(missing, "Tune every structure's threshold on the cohort (autosegsens tune) in a background "
                           "process; the tables and the chart appear when it is done.")


def cohort_cancel(running: bool) -> ActionState:
    """Cancel is possible while a cohort tuning runs."""
    return _state([] if running else ["a running cohort tuning"], "Stop the cohort tuning now (nothing is kept).")


def cohort_case(has_result: bool, cases: int, running: bool) -> ActionState:
    """Choosing a case needs a finished run with cases, and no run going on (its folders may change)."""
    missing = _missing(None if has_result else "a cohort result (Run first)",
                       None if cases > 0 or not has_result else "cases in the result",
                       "(a cohort tuning is running)" if running else None)
    return _state(missing, "Load this case's image, maps and contours, thresholded at the cohort's threshold.")


def cohort_save(has_result: bool, thresholds_file: PathLike, running: bool) -> ActionState:
    """Saving the cohort's thresholds needs a finished run and a thresholds.json path, and no run going on."""
    missing = _missing(None if has_result else "a cohort result (Run first)",
                       None if path_or_none(thresholds_file) is not None else "a thresholds.json file",
                       "(a cohort tuning is running)" if running else None)
    return _state(missing, "Write every tuned structure's threshold into the thresholds.json (other structures "
                           "in the file are kept).")


# ---- AutoSegSegmentMetrics -------------------------------------------------------------------------------
def pair_by_name(reference: Any, compared: Any) -> ActionState:
    """Pair by name needs both segmentations."""
    missing = _missing(None if reference is not None else "a reference segmentation",
                       None if compared is not None else "a compared segmentation")
    return _state(missing, "Pair the segments of the same name.")


def compute_metrics(reference: Any, compared: Any, grid_volume: Any) -> ActionState:
    """Compute needs both segmentations and a grid volume."""
    missing = pair_by_name(reference, compared)
    problems = [] if missing.enabled else [missing.tooltip[len("Missing: "):-1]]
    if grid_volume is None:
        problems.append("a grid volume")
    return _state(problems, "Compare the segmentations segment by segment.")


def export_csv(table: Any, csv_path: PathLike) -> ActionState:
    """Export needs a result table and a CSV file name."""
    missing = _missing(None if table is not None else "a result table (run Compute first)",
                       None if path_or_none(csv_path) else "a CSV file name")
    return _state(missing, "Write the result table as CSV.")
