"""One segmentation update per threshold change from a ctkSliderWidget with tracking off.

CTK ``Libs/Widgets/ctkSliderWidget.cpp`` (the revisions Slicer 5.8.1 and 5.10.0 build): with tracking off,
``setSpinBoxValue`` (l. 354-372) emits ``valueIsChanging(v)`` and then, unless the slider is being dragged,
``valueChanged(v)``: a programmatic change (``setValue``, the parameter node moving the slider, a click on
the spin box) emits both, one after the other in the same call; a drag emits ``valueIsChanging`` for each
move and ``valueChanged`` once on release (``stopChanging``, l. 328-341). Connected one to one, every
programmatic change would update the segmentation twice (labelmap, then everything).

:class:`LiveSliderUpdates` turns those signals into updates: ``valueIsChanging`` only records the value
and asks for a deferred flush (the widget schedules it on the next event-loop turn); ``valueChanged``
drops what is pending and makes the full update. So a programmatic change gives one full update, and a
drag gives at most one labelmap update per event-loop turn, then one full update on release. Pure Python
(no Qt): the widget side is ``AutoSegSlicerLib.widgets.connectLiveSlider``.
"""

from __future__ import annotations

from typing import Callable, Optional

Update = Callable[[float, bool], None]
"""``update(value, interactive)``: interactive (labelmap only) while dragged, full on release."""


class LiveSliderUpdates:
    """Coalesces a tracking-off ctkSliderWidget's ``valueIsChanging`` / ``valueChanged`` into updates."""

    def __init__(self, update: Update) -> None:
        self.update = update
        self.pending: Optional[float] = None

    def changing(self, value: float) -> bool:
        """``valueIsChanging``: remember ``value``; True when a flush must be scheduled (none pending yet)."""
        schedule = self.pending is None
        self.pending = float(value)
        return schedule

    def changed(self, value: float) -> None:
        """``valueChanged``: the full update of ``value``; a pending interactive one is dropped."""
        self.pending = None
        self.update(float(value), False)

    def flush(self) -> None:
        """The scheduled flush: the interactive update of the last value seen while changing, if any."""
        value, self.pending = self.pending, None
        if value is not None:
            self.update(value, True)
