"""The review page: a trame app around trame-slicer's ``SlicerApp`` (its MRML scene, layout manager and
remote-rendered slice and 3D views), the cohort of :mod:`.cohort` and the scene of :mod:`.scene`.

State (what the page and the tests drive): ``current_case`` (the opened case), ``structure``, ``threshold`` (the
slider), ``rows`` (the case table), ``progress`` / ``computing`` (the background pass), ``message`` /
``message_type`` (one line), ``chart_src`` (the chart), ``tuned`` (the tuned threshold of the structure).
Controller: ``open_case(name)``, ``slider_released()``, ``save_threshold()``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from typing import Any, Dict, Optional

from trame.app import TrameApp
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..errors import InputError
from .chart import chart_png, data_uri
from .cohort import Cohort, CaseImages
from .scene import ReviewScene

log = logging.getLogger(__name__)

LAYOUT_ID = "review"
TABLE_HEADERS = [
    {"title": "case", "key": "case", "sortable": True},
    {"title": "split", "key": "split", "sortable": True},  # a study's validation cases chose the threshold
    {"title": "Dice 0.5", "key": "dice_05", "sortable": True},
    {"title": "Dice tuned", "key": "dice_tuned", "sortable": True},
    {"title": "NSD 0.5", "key": "nsd_05", "sortable": True},
    {"title": "NSD tuned", "key": "nsd_tuned", "sortable": True},
]


def _layout():
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    return Layout(LayoutDirection.Horizontal, [
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view()]),
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.threed_view()]),
    ])


@contextmanager
def _vtk_warnings_off():
    from vtkmodules.vtkCommonCore import vtkObject

    old = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtkObject.SetGlobalWarningDisplay(old)


class ReviewApp(TrameApp):
    """One page per server. ``cohort``: what to review; ``background``: compute the table in the event loop's
    executor once the server is ready (tests call :meth:`compute_table` instead)."""

    def __init__(self, cohort: Cohort, server: Any = None, background: bool = True) -> None:
        super().__init__(server=server, client_type="vue3")
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.cohort = cohort
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        with _vtk_warnings_off():  # VTK 9.5's notice about WindowResizeEvent, once per view
            self.layout_manager.register_layout(LAYOUT_ID, _layout())
        self.layout_manager.set_layout(LAYOUT_ID)
        self.review = ReviewScene(self.slicer_app.scene)
        self._opened: Optional[CaseImages] = None
        self._task: Optional[asyncio.Task] = None

        s = self.state
        s.trame__title = "autosegsens review"
        s.structure = cohort.structures[0]
        s.structures = list(cohort.structures)
        s.current_case = None
        s.threshold = cohort.threshold_of(s.structure)
        s.tuned = cohort.threshold_of(s.structure)
        s.tuned_source = cohort.tuned_source.get(s.structure, "not known yet")
        s.rows = []
        s.table_sort = []  # the server's order: worst Dice at the tuned threshold first, unreadable cases last
        s.progress = 0
        s.progress_text = ""
        s.computing = False
        s.message = ""
        s.message_type = "info"
        s.cohort_problems = list(cohort.problems)
        s.chart_src = ""
        s.case_title = "no case open: choose one in the table"
        s.save_path = str(cohort.thresholds_path)
        s.views_ready = 0
        self.ctrl.open_case = self.open_case
        self.ctrl.slider_released = self.slider_released
        self.ctrl.save_threshold = self.save_threshold
        self.state.change("threshold")(self._on_threshold)
        self.state.change("structure")(self._on_structure)
        self._background = background
        if background:
            self.ctrl.on_server_ready.add(self._start_background)
        self._build_ui()

    def close(self) -> None:
        """Release the views' render windows (their X connection) after the server stopped."""
        for view in self.slicer_app.view_manager.get_views():
            view.finalize()

    # ------------------------------------------------------------------------------------------- table

    def compute_table(self) -> None:
        """Compute every case's counts now (blocking; the page does it in the background)."""
        for name in self.cohort.cases:
            self.cohort.case_stats(name)
        self._table_done()

    def _start_background(self, **_: Any) -> None:
        if self._task is not None and not self._task.done():
            self._task.add_done_callback(lambda _t: self._start_background())  # once the running pass ends
            return
        self._task = asyncio.ensure_future(self._compute_background())

    def _recompute(self) -> None:
        """Read the cases again (after the tuned threshold changed: its NSD), in the background when served."""
        if self._background:
            self._start_background()
        else:
            self.compute_table()

    async def _compute_background(self) -> None:
        loop = asyncio.get_running_loop()
        names = self.cohort.cases
        with self.state:
            self.state.computing = True
        for i, name in enumerate(names):
            with self.state:
                self.state.progress = round(100.0 * i / max(len(names), 1))
                self.state.progress_text = f"computing Dice and NSD per case: {i}/{len(names)} ({name})"
            await loop.run_in_executor(None, self.cohort.case_stats, name)
            if i % 5 == 4:
                with self.state:
                    self._refresh_rows()
        with self.state:
            self._table_done()

    def _table_done(self) -> None:
        self.cohort.tune_missing()
        self.state.computing = False
        self.state.progress = 100
        self.state.progress_text = f"{len(self.cohort.stats)} cases computed"
        self.state.tuned = self.cohort.threshold_of(self.state.structure)
        self.state.tuned_source = self.cohort.tuned_source.get(self.state.structure, "")
        self._refresh_rows()
        self._refresh_chart()

    def _refresh_rows(self) -> None:
        self.state.rows = self.cohort.table_rows(self.state.structure)

    def _refresh_chart(self) -> None:
        curves = self.cohort.curves(self.state.structure, self.state.current_case)
        png = chart_png(curves, self.state.structure, self.state.current_case,
                        self.cohort.tuned.get(self.state.structure), self.state.threshold)
        self.state.chart_src = data_uri(png)

    # ------------------------------------------------------------------------------------------- a case

    def open_case(self, name: str) -> bool:
        """Load case ``name`` (its CT, the reference and the map of the current structure) into the scene
        and threshold it at the tuned threshold. A bad case is one message on the page; returns success."""
        structure = self.state.structure
        try:
            images = self.cohort.load_case(name, structure)
        except Exception as exc:  # the page keeps serving the other cases
            reason = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            self.state.message = f"case {name} could not be opened: {reason}"
            self.state.message_type = "error"
            return False
        t = self.cohort.threshold_of(structure)
        self._opened = images
        self.review.show_case(images, t, self._show_ct)
        self._centre_views()
        self.state.current_case = name
        self.state.case_title = f"{name}: {structure}"
        self.state.message = ""
        self.state.threshold = t
        self.state.tuned = t
        self._refresh_chart()
        return True

    def _show_ct(self, ct_node: Any) -> None:
        dm = self.slicer_app.display_manager
        dm.show_volume_in_slice_background(ct_node)
        dm.show_volume_in_slice_foreground(None)

    def _centre_views(self) -> None:
        import slicer

        dm = self.slicer_app.display_manager
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        dm.reset_views()
        r, a, s = self.review.slice_ras()
        # Libs/MRML/Core/vtkMRMLSliceNode.h: JumpAllSlices(scene, r, a, s, jumpMode, viewGroup, exclude); offset
        # jumping moves each slice through the point and keeps the field of view that reset_views fitted
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.slicer_app.scene, r, a, s, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_camera()
            view.schedule_render()

    def _on_structure(self, structure: str, **_: Any) -> None:
        self.state.tuned = self.cohort.threshold_of(structure)
        self.state.tuned_source = self.cohort.tuned_source.get(structure, "")
        self._refresh_rows()
        if self.state.current_case:
            self.open_case(self.state.current_case)
        else:
            self._refresh_chart()

    def _on_threshold(self, threshold: Any, **_: Any) -> None:
        if self._opened is None or threshold is None:
            return
        self.review.set_threshold(float(threshold), interactive=True)

    def slider_released(self, *_: Any) -> None:
        """The slider let go: the final update (3D surface regenerated) and the chart's slider mark."""
        if self._opened is None:
            return
        self.review.set_threshold(float(self.state.threshold), interactive=False)
        self._refresh_chart()

    def save_threshold(self, *_: Any) -> None:
        """"Use this threshold for <structure>": write it into the thresholds file (set by hand)."""
        s, t = self.state.structure, round(float(self.state.threshold), 4)
        try:
            path = self.cohort.save_threshold(s, t)
        except Exception as exc:
            self.state.message = f"not saved: {exc}"
            self.state.message_type = "error"
            return
        self.cohort.tuned[s] = t
        self.cohort.tuned_source[s] = f"{path} (set by hand)"
        self.state.tuned = t
        self.state.tuned_source = self.cohort.tuned_source[s]
        self.state.message = f"{s}: threshold {t:.2f} saved to {path} (set by hand)"
        self.state.message_type = "success"
        self._refresh_rows()
        self._refresh_chart()
        self._recompute()

    # ------------------------------------------------------------------------------------------- page

    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True, width=600) as layout:
            self.ui = layout
            layout.title.set_text("autosegsens review")
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ case_title }}", classes="text-subtitle-1 mx-4", id="case-title")
                v3.VSelect(v_model=("structure",), items=("structures",), label="structure", density="compact",
                           hide_details=True, style="max-width: 200px", classes="mx-2", id="structure-select")
            with layout.drawer:
                v3.VProgressLinear(v_if="computing", model_value=("progress",), height=6, color="primary")
                html.Div("{{ progress_text }}", classes="text-caption px-2", id="progress-text")
                v3.VAlert(v_for="p in cohort_problems", text=("p",), type="warning", density="compact",
                          classes="ma-1 text-caption")
                with v3.VDataTable(headers=("table_headers", TABLE_HEADERS), items=("rows",),
                                   sort_by=("table_sort",), density="compact", items_per_page=-1,
                                   hide_default_footer=True, id="case-table", classes="text-caption"):
                    with v3.Template(raw_attrs=['v-slot:item.case="{ item }"']):
                        v3.VBtn("{{ item.case }}", click=(self.open_case, "[item.case]"), size="small",
                                variant=("item.case === current_case ? 'flat' : 'text'",), color="primary",
                                raw_attrs=[':data-case="item.case"'], classes="case-button text-none")  # the case name as spelled (no capitals)
                        v3.VIcon("mdi-alert-circle", v_if="item.problem", color="error", size="small",
                                 raw_attrs=[':title="item.problem"'], classes="case-problem")
                html.Img(src=("chart_src",), v_if="chart_src", style="width: 100%", id="chart")
            with layout.content:
                with html.Div(style="display: flex; flex-direction: column; height: 100%;"):
                    with html.Div(classes="d-flex align-center px-4 py-1", style="gap: 12px;"):
                        v3.VSlider(v_model=("threshold",), min=0, max=1, step=0.01, hide_details=True,
                                   thumb_label=True, label="threshold", disabled=("!current_case",),
                                   end=self.slider_released, id="threshold-slider", style="min-width: 260px")
                        html.Div("t = {{ Number(threshold).toFixed(2) }} (tuned {{ Number(tuned).toFixed(2) }})",
                                 id="threshold-text", classes="text-body-2", style="white-space: nowrap")
                        v3.VBtn("use this threshold for {{ structure }}", click=self.save_threshold,
                                disabled=("!current_case",), color="primary", size="small", id="save-button")
                    v3.VAlert(v_if="message", text=("message",), type=("message_type",), density="compact",
                              closable=True, id="message", classes="mx-4 my-1",
                              style="flex: 0 0 auto; word-break: break-all;")
                    with html.Div(style="flex: 1 1 auto; position: relative; min-height: 400px;"):
                        self.layout_manager.initialize_layout_grid(layout)


__all__ = ["ReviewApp", "LAYOUT_ID"]
