"""The parameter-node wiring every module widget shares (Slicer's scripted-module template, once).

A widget keeps a :class:`ParameterNodeBinding`: it binds the widget's ``ui`` to the module's parameter
node (``connectGui``), re-evaluates the buttons whenever the node changes, follows scene close and
module enter/exit, and sets defaults. The widget keeps only its own handlers.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import slicer
import vtk


def showState(button: Any, state: Any) -> None:
    """Enable ``button`` and set its tooltip from an ``AutoSegSensitivity.mrml.actions.ActionState``."""
    button.enabled = bool(state.enabled)
    button.toolTip = state.tooltip


def firstVolumeDefaults(*fields: str) -> Callable[[Any], None]:
    """Defaults that put the scene's first scalar volume into each empty node field of ``fields``."""

    def apply(node: Any) -> None:
        first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        for field in fields:
            if first is not None and getattr(node, field) is None:
                setattr(node, field, first)

    return apply


class ParameterNodeBinding:
    """Binds ``widget.ui`` to ``logic.getParameterNode()``; calls ``update()`` on every change.

    ``widget`` is a ScriptedLoadableModuleWidget with VTKObservationMixin (its observers are used, so
    ``widget.removeObservers()`` removes them); ``defaults(node)`` fills empty fields on initialisation.
    """

    def __init__(self, widget: Any, logic: Any, update: Callable[[], None],
                 defaults: Optional[Callable[[Any], None]] = None) -> None:
        self.widget = widget
        self.logic = logic
        self.update = update
        self.defaults = defaults
        self.node = None
        self._guiTag = None
        widget.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        widget.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    # ---- module life cycle ---------------------------------------------------------------------------
    def initialize(self) -> None:
        """Bind the module's parameter node (created on first use) and fill its defaults."""
        self.setNode(self.logic.getParameterNode())
        if self.defaults is not None:
            self.defaults(self.node)

    def enter(self) -> None:
        self.initialize()

    def exit(self) -> None:
        """Unbind the GUI (the node keeps its values; entering again binds it again)."""
        self._unbind()

    def cleanup(self) -> None:
        self._unbind()
        self.widget.removeObservers()

    def onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        self.setNode(None)

    def onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        if self.widget.parent.isEntered:
            self.initialize()

    # ---- binding -------------------------------------------------------------------------------------
    def setNode(self, node: Any) -> None:
        """Bind ``node`` (a parameterNodeWrapper instance, or None) in place of the current one."""
        self._unbind()
        self.node = node
        if node is not None:
            self._guiTag = node.connectGui(self.widget.ui)
            self.widget.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onModified)
        self.update()

    def currentNode(self) -> Any:
        """The bound node or, when none is bound, this scene's parameter node (created on first use): for
        handlers that can run while the module is not open (a background run finishing after the scene was
        closed leaves ``node`` None until the module is entered again)."""
        return self.node if self.node is not None else self.logic.getParameterNode()

    def onModified(self, caller: Any = None, event: Any = None) -> None:
        self.update()

    def _unbind(self) -> None:
        """Disconnect the GUI and the observer (added together in setNode; once only)."""
        if self.node is not None and self._guiTag is not None:
            self.node.disconnectGui(self._guiTag)
            self._guiTag = None
            self.widget.removeObserver(self.node, vtk.vtkCommand.ModifiedEvent, self.onModified)


def connectLiveSlider(slider: Any, update: Callable[[float, bool], None]) -> Any:
    """Drive ``update(value, interactive)`` from a ctkSliderWidget with tracking off: one update per change
    (``AutoSegSensitivity.mrml.live_slider``), labelmap only while dragged, everything once released or set.
    Returns the :class:`~AutoSegSensitivity.mrml.live_slider.LiveSliderUpdates` (keep it on the widget)."""
    import qt

    from AutoSegSensitivity.mrml.live_slider import LiveSliderUpdates

    updates = LiveSliderUpdates(update)
    slider.tracking = False

    def changing(value: float) -> None:
        if updates.changing(value):
            qt.QTimer.singleShot(0, updates.flush)

    slider.valueIsChanging.connect(changing)
    slider.valueChanged.connect(updates.changed)
    return updates


_pathConnectorRegistered = False


def registerOptionalPathConnector() -> None:
    """Register, once, the GUI connector that binds an ``Optional[Path]`` field to a ctkPathLineEdit: None
    shows as an empty field (Slicer's own Path connector would show '.'), an empty field reads as None
    (``AutoSegSensitivity.mrml.path_fields``). Slicer picks the first registered connector that can
    represent a (widget, type) pair (``guiConnectors.py`` createGuiConnector); none of Slicer's represents
    ``Optional[Path]``, so this one is chosen for exactly those fields.

    A cleared field is read too: ctkPathLineEdit emits ``currentPathChanged`` only for acceptable input
    (CTK ``Libs/Widgets/ctkPathLineEdit.cpp`` updateHasValidInput, l. 825-853 at dd4caea, Slicer 5.10.0's
    CTK; l. 819-847 at 82cae57, Slicer 5.8.1's), and without name filters its validator's pattern is ``.+``
    (``Libs/Core/ctkUtils.cpp`` l. 179-182 in both), which an empty text does not match; emptying the field
    emits only ``validInputChanged(false)``, so the connector listens to that as well."""
    global _pathConnectorRegistered
    if _pathConnectorRegistered:
        return
    import ctk
    from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector, unannotatedType

    from AutoSegSensitivity.mrml.path_fields import optional_path_class, path_from_text, path_text

    class OptionalPathLineEditConnector(GuiConnector):
        @staticmethod
        def canRepresent(widget: Any, datatype: Any) -> bool:
            return type(widget) == ctk.ctkPathLineEdit and optional_path_class(unannotatedType(datatype)) is not None

        @staticmethod
        def create(widget: Any, datatype: Any) -> Any:
            if OptionalPathLineEditConnector.canRepresent(widget, datatype):
                return OptionalPathLineEditConnector(widget, datatype)
            return None

        def __init__(self, widget: Any, datatype: Any) -> None:
            super().__init__()
            self._widget = widget
            self._type = optional_path_class(unannotatedType(datatype))

        def _connect(self) -> None:
            self._widget.currentPathChanged.connect(self.changed)
            self._widget.validInputChanged.connect(self._validInputChanged)

        def _disconnect(self) -> None:
            self._widget.currentPathChanged.disconnect(self.changed)
            self._widget.validInputChanged.disconnect(self._validInputChanged)

        def _validInputChanged(self, valid: bool) -> None:
            if not valid:  # emptied: no currentPathChanged comes
                self.changed()

        def widget(self) -> Any:
            return self._widget

        def read(self) -> Any:
            return path_from_text(self._widget.currentPath, self._type)

        def write(self, value: Any) -> None:
            self._widget.currentPath = path_text(value)

    parameterNodeGuiConnector(OptionalPathLineEditConnector)
    _pathConnectorRegistered = True


def loadModuleUI(widget: Any) -> Any:
    """Load ``Resources/UI/<Module>.ui`` into the widget's layout, give its MRML widgets the scene, and
    return the child widgets as attributes (the template's ``self.ui``). Registers the Optional[Path]
    connector (:func:`registerOptionalPathConnector`) and the phantom
    sample data, for a module loaded after start-up (drag and drop), when startupCompleted has passed."""
    from .sampledata import registerSampleData

    registerSampleData(widget.resourcePath(f"Icons/{widget.moduleName}.png"), refreshSampleDataWidget=True)
    registerOptionalPathConnector()  # before any connectGui of the module's parameter node
    uiWidget = slicer.util.loadUI(widget.resourcePath(f"UI/{widget.moduleName}.ui"))
    widget.layout.addWidget(uiWidget)
    ui = slicer.util.childWidgetVariables(uiWidget)
    uiWidget.setMRMLScene(slicer.mrmlScene)
    return ui


def ready(state: Any) -> bool:
    """True when the action may run; else its tooltip (what is missing) is shown and nothing happens.
    Checked before any dependency dialog, so an empty field never starts an install."""
    if not state.enabled:
        slicer.util.errorDisplay(state.tooltip)
    return bool(state.enabled)
