"""The phantom as sample data for the Slicer modules: a CT, its reference segmentation and probability
maps, generated here from ``AutoSegSensitivity.phantom`` (nothing downloaded), so that every module can
be tried on first open without data, a trained model or contours.

For Slicer's Sample Data module the same nodes are also written once as files (:func:`write_phantom_files`)
that the registered source names by ``file://`` URI (:func:`sample_data_source_fields`): SampleData's
``downloadSample`` loads only what a source's URIs list (it never calls a custom loader), and it copies a
``file://`` URI with ``urllib.request.urlretrieve`` like any download.

The probability maps stand in for a network that is a little too cautious: each reference mask is
blurred with a Gaussian of :data:`BLUR_MM` mm and scaled by :data:`PEAK`, so that ``p >= 0.5`` is smaller
than the reference and the Dice optimum lies below 0.5 (as in Bice et al.), which the threshold module
then finds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

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


class PhantomFile(NamedTuple):
    """One file of the phantom sample: its file name, the node it loads as, and Slicer's IO file type."""

    file_name: str
    node_name: str
    file_type: str


def phantom_files() -> List[PhantomFile]:
    """The phantom sample's files, the CT first (``SampleData.downloadSample`` returns the first node)."""
    files = [PhantomFile(f"{PREFIX}-CT.nrrd", f"{PREFIX} CT", "VolumeFile"),
             PhantomFile(f"{PREFIX}-reference.seg.nrrd", f"{PREFIX} reference", "SegmentationFile")]
    files += [PhantomFile(f"{PREFIX}-{s}_prob.nrrd", f"{PREFIX} {s}_prob", "VolumeFile") for s in PROBABILITY_STRUCTURES]
    return files


def write_phantom_files(folder: Union[str, Path], seed: int = 0, shape: Optional[Sequence[int]] = None) -> List[Path]:
    """Write the nodes of :func:`load_phantom` into ``folder`` as the files of :func:`phantom_files` (NRRD,
    compressed; the reference as ``.seg.nrrd``) with MRML's own storage nodes, each file whole (written
    in a temporary folder, then renamed); files
    already there (complete, non-empty) are kept. Returns the paths in :func:`phantom_files` order."""
    import slicer

    folder = Path(folder)
    files = phantom_files()
    paths = [folder / f.file_name for f in files]
    if all(p.is_file() and p.stat().st_size > 0 for p in paths):
        return paths
    scene = slicer.vtkMRMLScene()
    load_phantom(scene, seed, shape)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=folder))  # each file appears whole, by rename
    try:
        for f, path in zip(files, paths):
            node = scene.GetFirstNodeByName(f.node_name)
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            storage.SetUseCompression(1)
            storage.SetFileName(str(tmp / f.file_name))
            if not storage.WriteData(node):
                raise OSError(f"{path}: MRML could not write {f.node_name}")
            os.replace(tmp / f.file_name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def sample_data_source_fields(folder: Union[str, Path]) -> Dict[str, List[str]]:
    """The SampleData source fields of the phantom files in ``folder``: ``uris`` (``file://`` URIs),
    ``fileNames`` (the names SampleData gives them in its cache), ``nodeNames``, ``loadFileTypes`` and
    ``checksums`` (``"SHA256:<hex digest>"`` of each file), one entry per file of :func:`phantom_files`
    (SampleDataSource wants them of equal length).

    The checksums matter: SampleData copies each URI into ``<cache>/<fileName>`` and, without a checksum,
    reuses a copy already there forever (Slicer/Slicer ``Modules/Scripted/SampleData/SampleData.py``
    ``downloadFile``, v5.10.0 l. 1079-1129, v5.8.1 l. 934-980); with one, a copy whose digest differs (an
    older phantom, a damaged copy) is copied again."""
    files = phantom_files()
    folder = Path(folder).resolve()
    return {"uris": [(folder / f.file_name).as_uri() for f in files],
            "fileNames": [f.file_name for f in files],
            "nodeNames": [f.node_name for f in files],
            "loadFileTypes": [f.file_type for f in files],
            "checksums": [f"SHA256:{_sha256(folder / f.file_name)}" for f in files]}


def _sha256(path: Path) -> str:
    """Lower-case hex SHA-256 of a file (what ``slicer.util.computeChecksum("SHA256", path)`` returns)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
