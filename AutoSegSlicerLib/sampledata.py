"""The phantom as Slicer sample data (SampleData module, category "AutoSegSensitivity"), generated on this
computer, nothing downloaded. The button makes the nodes in memory (``loadPhantom``, with the first map
shown over the CT); ``SampleData.downloadSample("AutoSegPhantom")``, which loads only what a source's URIs
list, loads the same nodes from files written once into Slicer's cache folder and named by ``file://``
URIs with their SHA-256 checksums, so that SampleData's cached copies follow a changed phantom
(``AutoSegSensitivity.mrml.sampledata.write_phantom_files`` / ``sample_data_source_fields``)."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import slicer

CATEGORY = "AutoSegSensitivity"
SAMPLE_NAME = "AutoSegPhantom"
PHANTOM_FILES_VERSION = 1
"""Part of the files' folder name: raise it when the phantom changes, so that new files are written."""


def loadPhantom(source: Any = None) -> Optional[Any]:
    """Generate the phantom into the scene and show it; the SampleData button calls this with its source."""
    from AutoSegSensitivity.mrml.sampledata import load_phantom

    with slicer.util.tryWithErrorDisplay("Could not generate the phantom.", waitCursor=True):
        phantom = load_phantom(slicer.mrmlScene)
        first = next(iter(phantom.probabilities.values()))
        slicer.util.setSliceViewerLayers(background=phantom.ct, foreground=first, foregroundOpacity=0.3, fit=True)
        return phantom
    return None


def phantomFolder() -> str:
    """Where the phantom's files are written once: ``<cache>/AutoSegSensitivity/phantom-files-v<N>``."""
    return os.path.join(slicer.app.cachePath, "AutoSegSensitivity", f"phantom-files-v{PHANTOM_FILES_VERSION}")


def registerSampleData(thumbnailFileName: Optional[str] = None, refreshSampleDataWidget: bool = False) -> None:
    """Register the phantom once with the SampleData module (every module calls this at start-up, and when
    its widget is set up: a module loaded after start-up, by drag and drop). Its files are written first
    (once, about 2 s) so that ``downloadSample`` works; if they cannot be, only the button will.
    ``refreshSampleDataWidget``: also give an already built Sample Data widget the buttons."""
    import SampleData

    from AutoSegSensitivity.mrml.sampledata import sample_data_source_fields, write_phantom_files

    sources = getattr(slicer.modules, "sampleDataSources", {}).get(CATEGORY, [])
    if not any(s.sampleName == SAMPLE_NAME for s in sources):
        folder = phantomFolder()
        try:
            write_phantom_files(folder)
            fields = sample_data_source_fields(folder)
        except Exception:  # logged: a start-up step must not stop the module from loading
            logging.exception(f"AutoSegSensitivity: could not write the phantom's sample files into {folder}; "
                              "its Sample Data button still works, SampleData.downloadSample does not")
            fields = {"uris": [], "fileNames": [], "nodeNames": []}
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=SAMPLE_NAME, thumbnailFileName=thumbnailFileName,
            customDownloader=loadPhantom, **fields)
    if refreshSampleDataWidget:
        addButtonsToSampleDataWidget()


def addButtonsToSampleDataWidget() -> None:
    """Give an already built Sample Data widget this category's buttons. SampleDataWidget builds its buttons
    once, in setup, from ``slicer.modules.sampleDataSources`` (SampleData.py ``setup`` /
    ``setCategoriesFromSampleDataSources``), so a source registered later has none. The category's frame is
    built by SampleData's own ``setCategoriesFromSampleDataSources`` on a staging layout and put before the
    last frame ("Load data from URL"); nothing is done when the frame is already there. Note that
    ``slicer.util.getModuleWidget`` builds the Sample Data widget when it was not built yet
    (``module.widgetRepresentation()``, Base/QTCore/qSlicerAbstractCoreModule.cxx: created on first call);
    such a widget is built after the registration above, so it already has the frame."""
    import qt

    try:
        import SampleData

        widget = slicer.util.getModuleWidget("SampleData")
    except Exception:  # no Sample Data module in this application
        logging.debug("AutoSegSensitivity: no Sample Data widget to add the phantom's button to")
        return
    layout = getattr(widget, "categoryLayout", None)
    if layout is None:
        return
    name = f"{CATEGORY}CollapsibleGroupBox"
    items = [layout.itemAt(i).widget() for i in range(layout.count())]
    if any(w is not None and w.name == name for w in items):
        return
    staging = qt.QVBoxLayout()
    SampleData.SampleDataWidget.setCategoriesFromSampleDataSources(
        staging, {CATEGORY: slicer.modules.sampleDataSources[CATEGORY]}, widget.logic)
    frame = staging.itemAt(0).widget()
    staging.removeWidget(frame)
    layout.insertWidget(max(layout.count() - 1, 0), frame)


HELP = ("<p>No data at hand? In the Sample Data module, the AutoSegSensitivity section's 'AutoSegPhantom' "
        "generates a phantom head CT, its reference segmentation and probability maps on this computer "
        "(nothing is downloaded).</p>")
"""The sentence every module's help text ends with."""


def registerAtStartup(module: Any) -> None:
    """Register the phantom sample data once Slicer has started (as Slicer's module template does),
    with the module's icon as thumbnail."""
    icon = module.resourcePath(f"Icons/{module.moduleName}.png")
    slicer.app.connect("startupCompleted()", lambda: registerSampleData(icon))
