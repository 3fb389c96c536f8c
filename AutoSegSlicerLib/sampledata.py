"""The phantom as Slicer sample data: generated on this computer when its button is pressed (SampleData
module, category "AutoSegSensitivity"), nothing downloaded. The nodes are made by
``AutoSegSensitivity.mrml.sampledata.load_phantom``."""

from __future__ import annotations

from typing import Any, Optional

import slicer

CATEGORY = "AutoSegSensitivity"
SAMPLE_NAME = "AutoSegPhantom"


def loadPhantom(source: Any = None) -> Optional[Any]:
    """Generate the phantom into the scene and show it; the SampleData button calls this with its source."""
    from AutoSegSensitivity.mrml.sampledata import load_phantom

    with slicer.util.tryWithErrorDisplay("Could not generate the phantom.", waitCursor=True):
        phantom = load_phantom(slicer.mrmlScene)
        first = next(iter(phantom.probabilities.values()))
        slicer.util.setSliceViewerLayers(background=phantom.ct, foreground=first, foregroundOpacity=0.3, fit=True)
        return phantom
    return None


def registerSampleData(thumbnailFileName: Optional[str] = None) -> None:
    """Register the phantom once with the SampleData module (every module calls this at start-up)."""
    import SampleData

    sources = getattr(slicer.modules, "sampleDataSources", {}).get(CATEGORY, [])
    if any(s.sampleName == SAMPLE_NAME for s in sources):
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[],
        thumbnailFileName=thumbnailFileName, customDownloader=loadPhantom)


HELP = ("<p>No data at hand? In the Sample Data module, the AutoSegSensitivity section's 'AutoSegPhantom' "
        "generates a phantom head CT, its reference segmentation and probability maps on this computer "
        "(nothing is downloaded).</p>")
"""The sentence every module's help text ends with."""


def registerAtStartup(module: Any) -> None:
    """Register the phantom sample data once Slicer has started (as Slicer's module template does),
    with the module's icon as thumbnail."""
    icon = module.resourcePath(f"Icons/{module.moduleName}.png")
    slicer.app.connect("startupCompleted()", lambda: registerSampleData(icon))
