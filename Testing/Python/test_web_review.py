"""`autosegsens review`: the cohort side (table against brute force and DeepMind's surface-distance), the MRML
side (the slider goes through AutoSegThreshold's ThresholdTuningLogic.apply_threshold and the scene's segment
equals p >= t), the page's state (case chosen, slider moved, threshold saved and read back by `apply`), bad
input, the command line (URL printed, Ctrl-C), and the page end to end in Chromium (playwright)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser_env import CHROMIUM_FLAGS, chromium_path, free_port, missing, x_display
from review_cohort import break_cases, folders_of, write_study

from AutoSegSensitivity import tune
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_segmentation, read_volume

try:
    import trame_slicer  # noqa: F401
except ImportError:  # pragma: no cover - the [test] extra installs it
    missing("trame-slicer (the [review] extra)")

from AutoSegSensitivity.web.cohort import open_folders, open_study  # noqa: E402
from AutoSegSensitivity.web.scene import ReviewScene  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 64, 64)


@pytest.fixture(scope="module")
def study_master(tmp_path_factory) -> Path:
    root = write_study(tmp_path_factory.mktemp("review") / "study", cases=5, shape=SHAPE)
    break_cases(root)
    return root


@pytest.fixture
def study(study_master, tmp_path) -> Path:
    """A fresh copy per test (tests write thresholds files into it)."""
    return Path(shutil.copytree(study_master, tmp_path / "study"))


@pytest.fixture(scope="module")
def display():
    with x_display() as d:
        yield d


def env_cli() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def brute_dice(p: np.ndarray, r: np.ndarray, t: float) -> float:
    m = p >= np.float32(t)
    den = int(m.sum()) + int(r.sum())
    return 1.0 if den == 0 else 2.0 * int((m & r).sum()) / den


def reference_nsd(pred, ref, spacing, tau=2.0) -> float:
    from surface_distance import metrics as sd_metrics

    dist = sd_metrics.compute_surface_distances(np.asarray(ref, bool), np.asarray(pred, bool), spacing)
    return float(sd_metrics.compute_surface_dice_at_tolerance(dist, tau))


def case_arrays(study: Path, case: str, structure: str):
    seg = read_segmentation(study / "data" / case / "segmentation.seg.nrrd")
    prob = read_volume(study / "predictions" / "bce" / case / f"prob_{structure}.nrrd")
    return prob.array, seg.mask(structure), seg.geometry.spacing_zyx


# ---------------------------------------------------------------------------------------------------------
# the cohort: table, tuned thresholds, bad cases
# ---------------------------------------------------------------------------------------------------------


def test_table_matches_brute_force_and_surface_distance(study):
    cohort = open_study(study)
    assert cohort.cases == [f"case{i:03d}" for i in range(5)]
    assert cohort.tuned == {"Brain": 0.3, "Parotid_L": 0.3}  # summary.csv: chosen on validation
    for name in cohort.cases:
        cohort.case_stats(name)
    rows = cohort.table_rows("Brain")
    good = [r for r in rows if not r["problem"]]
    assert [r["case"] for r in good] == sorted((r["case"] for r in good), key=lambda c: [x["dice_tuned"] for x in good
                                                                                         if x["case"] == c][0])
    assert {r["case"] for r in good} == {"case000", "case001", "case002", "case003"}
    for r in good:
        p, ref, sp = case_arrays(study, r["case"], "Brain")
        assert r["dice_05"] == pytest.approx(brute_dice(p, ref, 0.5), abs=1e-4)
        assert r["dice_tuned"] == pytest.approx(brute_dice(p, ref, 0.3), abs=1e-4)
        assert r["nsd_05"] == pytest.approx(reference_nsd(p >= np.float32(0.5), ref, sp), abs=1e-3)
        assert r["nsd_tuned"] == pytest.approx(reference_nsd(p >= np.float32(0.3), ref, sp), abs=1e-3)
    # the study's split, as study.json records it: a validation case took part in choosing the threshold
    assert {r["case"]: r["split"] for r in rows} == {"case000": "validation", "case001": "test", "case002": "test",
                                                      "case003": "test", "case004": "test"}
    bad = [r for r in rows if r["problem"]]
    assert [r["case"] for r in bad] == ["case004"] and "grid" in bad[0]["problem"] and "prob_Brain" in bad[0]["problem"]
    parotid_bad = [r for r in cohort.table_rows("Parotid_L") if r["problem"]]
    assert parotid_bad[0]["case"] == "case003" and "prob_Parotid_L.nrrd" in parotid_bad[0]["problem"]
    # the cohort curve is tune's pooled Dice over the good cases
    curves = cohort.curves("Brain", "case000")
    j = int(np.flatnonzero(np.isclose(curves["grid"], 0.3))[0])
    tp = npred = nref = 0
    for c in ("case000", "case001", "case002", "case003"):
        p, ref, _ = case_arrays(study, c, "Brain")
        m = p >= np.float32(0.3)
        tp, npred, nref = tp + int((m & ref).sum()), npred + int(m.sum()), nref + int(ref.sum())
    assert curves["cohort_dice"][j] == pytest.approx(2 * tp / (npred + nref), abs=1e-12)


def test_folders_without_thresholds_take_the_pooled_optimum(study):
    prob_dir, ref_dir = folders_of(study)
    cohort = open_folders(prob_dir, ref_dir)
    assert cohort.thresholds_path == prob_dir / "thresholds.json" and cohort.tuned == {}
    for name in cohort.cases:
        cohort.case_stats(name)
    cohort.tune_missing()
    ref = tune.tune_cohort(prob_dir, ref_dir, structures=["Brain"], n_boot=10)
    assert cohort.tuned["Brain"] == pytest.approx(ref.structures["Brain"].t_opt)


def test_not_a_cohort_is_one_clear_error(tmp_path, study):
    with pytest.raises(InputError, match="study.json.*not a cohort"):
        open_study(tmp_path)
    (tmp_path / "p" / "x").mkdir(parents=True)
    with pytest.raises(InputError, match="none in common"):
        open_folders(tmp_path / "p", study / "data")


# ---------------------------------------------------------------------------------------------------------
# the MRML scene: the slider is AutoSegThreshold's code
# ---------------------------------------------------------------------------------------------------------


def test_scene_slider_is_the_threshold_logic_and_equals_p_ge_t(study, monkeypatch):
    import slicer

    from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

    calls = []
    original = ThresholdTuningLogic.apply_threshold

    def spy(self, *a, **k):
        calls.append((a[1], k.get("interactive")))
        return original(self, *a, **k)

    monkeypatch.setattr(ThresholdTuningLogic, "apply_threshold", spy)
    images = open_study(study).load_case("case001", "Brain")
    scene = ReviewScene(slicer.vtkMRMLScene())
    scene.show_case(images, 0.3)
    p = images.probability.array
    assert np.array_equal(scene.result_mask(), p >= np.float32(0.3))
    scene.set_threshold(0.62, interactive=True)
    assert np.array_equal(scene.result_mask(), p >= np.float32(0.62))
    scene.set_threshold(0.12, interactive=False)
    assert np.array_equal(scene.result_mask(), p >= np.float32(0.12))
    assert calls == [(0.3, False), (0.62, True), (0.12, False)]
    seg = scene.result_node.GetSegmentation()
    assert seg.ContainsRepresentation("Closed surface")  # the 3D view's surface, regenerated on release
    ref_disp = scene.reference_node.GetDisplayNode()
    assert ref_disp.GetVisibility2DOutline() and not ref_disp.GetVisibility2DFill()
    result_disp = scene.result_node.GetDisplayNode()
    assert result_disp.GetVisibility2DFill() and not result_disp.GetVisibility2DOutline()  # filled only: the
    # reference outline is drawn over it (made after it), not hidden under an outline of the same place
    ids = [scene.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetID()
           for i in range(scene.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    assert ids.index(scene.result_node.GetID()) < ids.index(scene.reference_node.GetID())


def test_slicer_calls_of_the_page_follow_slicer_source(study):
    """The MRML calls of web/ as Slicer declares them: Libs/MRML/Core/vtkMRMLSliceNode.h (JumpAllSlices with
    a jump mode: DefaultJumpSlice=-1, CenteredJumpSlice=0, OffsetJumpSlice), vtkMRMLScalarVolumeDisplayNode.h
    (SetWindowLevel(window, level), SetAutoWindowLevel), vtkMRMLSegmentationDisplayNode.h (Visibility2DFill,
    Visibility2DOutline, Opacity2DFill), vtkMRMLSegmentationNode.h (CreateClosedSurfaceRepresentation,
    SetReferenceImageGeometryParameterFromVolumeNode); checked on the slicer-core wheel."""
    import slicer

    assert (slicer.vtkMRMLSliceNode.DefaultJumpSlice, slicer.vtkMRMLSliceNode.CenteredJumpSlice,
            slicer.vtkMRMLSliceNode.OffsetJumpSlice) == (-1, 0, 1)
    scene = slicer.vtkMRMLScene()
    review = ReviewScene(scene)
    review.show_case(open_study(study).load_case("case000", "Brain"), 0.3)
    disp = review.ct_node.GetDisplayNode()
    assert (disp.GetWindow(), disp.GetLevel(), disp.GetAutoWindowLevel()) == (400.0, 40.0, 0)
    d = review.result_node.GetDisplayNode()
    assert d.GetOpacity2DFill() == pytest.approx(0.35) and not d.GetVisibility2DOutline()
    seg = slicer.vtkMRMLSliceNode()
    scene.AddNode(seg)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, 1.0, 2.0, 3.0, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
    m = seg.GetSliceToRAS()
    assert (m.GetElement(0, 3), m.GetElement(1, 3), m.GetElement(2, 3)) == (0.0, 0.0, 3.0)  # offset: along the normal
    assert review.map_node.GetDisplayNode() is None or not review.map_node.GetDisplayNode().GetVisibility()
    # a second case replaces the segmentation nodes (one of each name); vtkMRMLScene.h: the collection of
    # GetNodesByClassByName is the caller's to delete, which Python does not do: web/ does not call it
    review.show_case(open_study(study).load_case("case001", "Brain"), 0.3)
    names = [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetName()
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    assert sorted(names) == ["review reference", "review threshold"]
    for name in ("scene.py", "app.py"):
        assert "GetNodesByClassByName" not in (REPO / "AutoSegSensitivity" / "web" / name).read_text(encoding="utf-8")


def test_bad_case_is_an_error_of_that_case(study):
    cohort = open_study(study)
    with pytest.raises(InputError, match="grid"):
        cohort.load_case("case004", "Brain")
    with pytest.raises(InputError, match="prob_Parotid_L.nrrd"):
        cohort.load_case("case003", "Parotid_L")
    assert cohort.load_case("case003", "Brain").probability.shape == SHAPE


# ---------------------------------------------------------------------------------------------------------
# the page's state (no browser; VTK's views need a display)
# ---------------------------------------------------------------------------------------------------------


def test_app_state_case_slider_save_and_apply(study, display, tmp_path, request):
    from AutoSegSensitivity.web.app import ReviewApp

    app = ReviewApp(open_study(study), background=False)
    request.addfinalizer(app.close)
    app.state.ready()
    app.compute_table()
    assert app.state.rows[0]["case"] == min((r for r in app.state.rows if r["dice_tuned"] is not None),
                                            key=lambda r: r["dice_tuned"])["case"]
    assert app.ctrl.open_case("case002") is True and app.state.current_case == "case002"
    p = read_volume(study / "predictions" / "bce" / "case002" / "prob_Brain.nrrd").array
    assert np.array_equal(app.review.result_mask(), p >= np.float32(0.3))
    app.state.threshold = 0.55
    app.state.flush()
    assert np.array_equal(app.review.result_mask(), p >= np.float32(0.55))
    app.ctrl.slider_released()
    assert app.state.chart_src.startswith("data:image/png;base64,")

    # a bad case: one message on the page, the page keeps serving the others
    assert app.ctrl.open_case("case004") is False
    assert "case004" in app.state.message and "grid" in app.state.message and app.state.current_case == "case002"
    assert app.ctrl.open_case("case000") is True and app.state.message == ""
    p0 = read_volume(study / "predictions" / "bce" / "case000" / "prob_Brain.nrrd").array
    app.state.threshold = 0.55
    app.state.flush()

    app.ctrl.save_threshold()
    path = study / "thresholds-bce.json"
    assert "saved" in app.state.message and str(path) in app.state.message
    doc = tune.read_thresholds_file(path)
    brain = doc["structures"]["Brain"]
    assert brain["threshold"] == 0.55 and brain["set_by"] == "hand" and brain["previous_threshold"] == 0.3
    assert doc["structures"]["Parotid_L"]["threshold"] == 0.3 and "hand" in doc["source"]
    assert tune.read_thresholds(path) == {"Brain": 0.55, "Parotid_L": 0.3}
    row = next(r for r in app.state.rows if r["case"] == "case000")
    ref0 = read_segmentation(study / "data" / "case000" / "segmentation.seg.nrrd").mask("Brain")
    assert row["dice_tuned"] == pytest.approx(brute_dice(p0, ref0, 0.55), abs=1e-4)
    sp0 = read_segmentation(study / "data" / "case000" / "segmentation.seg.nrrd").geometry.spacing_zyx
    assert row["nsd_tuned"] == pytest.approx(reference_nsd(p0 >= np.float32(0.55), ref0, sp0), abs=1e-3)

    # apply reads it: the segmentation it writes is p >= 0.55
    out = tmp_path / "applied"
    res = subprocess.run([sys.executable, "-m", "AutoSegSensitivity", "apply", "--thresholds", str(path),
                          "--prob-dir", str(study / "predictions" / "bce"), "--out", str(out)],
                         capture_output=True, text=True, env=env_cli(), timeout=120)
    assert res.returncode == 0, res.stderr
    applied = read_segmentation(out / "case000" / "segmentation.seg.nrrd")
    assert np.array_equal(applied.mask("Brain"), p0 >= np.float32(0.55))

    # a second structure: its own tuned threshold, and the file keeps the first hand-set one
    app.state.structure = "Parotid_L"
    app.state.flush()
    assert app.review.segment_name == "Parotid_L" and app.state.threshold == 0.3
    assert app.ctrl.open_case("case003") is False and "prob_Parotid_L.nrrd" in app.state.message


# ---------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "AutoSegSensitivity", "review", *map(str, args)],
                          capture_output=True, text=True, env=env_cli(), timeout=timeout)


def test_cli_bad_input_one_line(study, tmp_path):
    res = run_cli("--study", tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "study.json" in res.stderr and "not a cohort" in res.stderr
    res = run_cli("--prob-dir", tmp_path, "--ref-dir", study / "data")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "none in common" in res.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = run_cli("--study", study, "--port", port)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert f"127.0.0.1:{port}" in res.stderr and "in use" in res.stderr and "--port" in res.stderr


def test_cli_prints_url_serves_and_stops_on_ctrl_c(study, display):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "AutoSegSensitivity", "review", "--study", str(study),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_cli())
    try:
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("review page: "):
                url = line.split()[2]
        assert url == f"http://localhost:{port}/", lines
        assert "this machine only" in lines[-1]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------
# end to end in Chromium
# ---------------------------------------------------------------------------------------------------------


def _fill(img: np.ndarray) -> np.ndarray:
    """Pixels of the thresholded segment's fill (blue over the grey CT; the reference outline is yellow)."""
    rgb = img[..., :3].astype(int)
    return (rgb[..., 2] - rgb[..., 0]) > 30


def _outline(img: np.ndarray) -> np.ndarray:
    """Pixels of the reference outline (yellow, paler over bone: red and green well above blue)."""
    rgb = img[..., :3].astype(int)
    return (rgb[..., 0] > 150) & (rgb[..., 0] - rgb[..., 2] > 50) & (rgb[..., 1] - rgb[..., 2] > 40)


def _png(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_page_in_chromium(study, display, tmp_path, monkeypatch, request):
    from scipy import ndimage

    from AutoSegSensitivity.web.app import ReviewApp

    browser_exe = chromium_path()
    from playwright.async_api import async_playwright

    loop = asyncio.new_event_loop()  # the views' render schedulers take the loop current when they are made
    asyncio.set_event_loop(loop)
    request.addfinalizer(lambda: (asyncio.set_event_loop(None), loop.close()))
    app = ReviewApp(open_study(study))  # the table is computed in the background, as when served
    request.addfinalizer(app.close)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    ready = asyncio.Event()
    app.ctrl.on_server_ready.add(lambda **_: ready.set())
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # trame reads sys.argv
    found = {}

    async def axial_shot(page, name):
        data = await page.locator("img.image-display-area >> visible=true").nth(0).screenshot(path=str(tmp_path / name))
        return _png(data)

    async def drive():
        await asyncio.wait_for(ready.wait(), 60)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=browser_exe, headless=True, args=CHROMIUM_FLAGS)
            page = await browser.new_page(viewport={"width": 1500, "height": 950})
            requests = []
            page.on("request", lambda req: requests.append(req.url))
            found["requests"] = requests
            await page.goto(url)
            await page.wait_for_function("document.querySelectorAll('[data-case]').length >= 5", timeout=60000)
            await page.wait_for_function("document.querySelector('#progress-text').innerText.includes('computed')",
                                         timeout=60000)
            # a case that cannot be opened: one message on the page, the others still open
            await page.click('[data-case="case004"]')
            await page.wait_for_function("document.querySelector('#message') && "
                                         "document.querySelector('#message').innerText.includes('case004')",
                                         timeout=30000)
            found["bad_message"] = await page.locator("#message").inner_text()
            worst = await page.locator("[data-case]").first.get_attribute("data-case")
            found["button_text"] = (await page.locator("[data-case]").first.inner_text()).strip()
            found["worst"] = (worst, app.state.rows[0]["case"])
            await page.click(f'[data-case="{worst}"]')
            await page.wait_for_function(f"document.querySelector('#case-title').innerText.includes('{worst}')",
                                         timeout=30000)
            await page.wait_for_function("document.querySelectorAll('img.image-display-area[src]').length >= 4",
                                         timeout=30000)
            await asyncio.sleep(2.0)
            found["imgs"] = await page.evaluate("Array.from(document.querySelectorAll('img.image-display-area')).map(e => [e.width, e.height])")
            print("IMGS", found["imgs"], flush=True)
            before = await axial_shot(page, "axial_before.png")
            await page.screenshot(path=str(tmp_path / "page_before.png"))
            t_before = float(app.state.threshold)
            track = page.locator(".v-slider-track").first
            box = await track.bounding_box()
            await page.mouse.click(box["x"] + 0.72 * box["width"], box["y"] + box["height"] / 2)
            after = before
            for _ in range(40):
                await asyncio.sleep(0.25)
                if float(app.state.threshold) != t_before:
                    after = await axial_shot(page, "axial_after.png")
                    if np.abs(after.astype(int) - before.astype(int)).max() > 12:
                        break
            await asyncio.sleep(1.0)
            after = await axial_shot(page, "axial_after.png")
            found["t"] = (t_before, float(app.state.threshold))
            found["scene"] = (app.review.result_mask(), app.review.case.probability.array.copy(),
                              float(app.review.threshold))
            found["shots"] = (before, after)
            await page.screenshot(path=str(tmp_path / "page_after.png"))
            await page.click("#save-button")
            await page.wait_for_function("document.querySelector('#message') && "
                                         "document.querySelector('#message').innerText.includes('saved')",
                                         timeout=20000)
            await page.screenshot(path=str(tmp_path / "page_saved.png"))
            await browser.close()
        await app.server.stop()

    async def main():
        server = asyncio.ensure_future(app.server.start(port=port, host="127.0.0.1", open_browser=False,
                                                        show_connection_info=False, disable_logging=True,
                                                        exec_mode="coroutine"))
        try:
            await asyncio.wait_for(drive(), 150)
        finally:
            if not server.done():
                await app.server.stop()
            await asyncio.wait_for(server, 30)

    loop.run_until_complete(main())
    outside = [u for u in found["requests"] if not u.startswith((url, "data:", "blob:", f"ws://127.0.0.1:{port}/"))]
    assert found["requests"] and not outside, f"the page fetched from elsewhere: {outside[:5]}"
    assert "grid" in found["bad_message"] and "prob_Brain.nrrd" in found["bad_message"]
    assert found["worst"][0] == found["worst"][1] != "case004"
    assert found["button_text"] == found["worst"][0], "the case button shows another spelling of the case name"
    t_before, t_after = found["t"]
    assert t_before == 0.3 and 0.6 <= t_after <= 0.8, found["t"]
    mask, prob, t_scene = found["scene"]
    assert t_scene == t_after and np.array_equal(mask, prob >= np.float32(t_after))
    before, after = found["shots"]
    assert before.shape == after.shape
    # the reference contour stays visible as an outline over the fill (at the tuned threshold the two nearly coincide)
    assert _outline(before).sum() > 2.0 * np.sqrt(_fill(before).sum()), "the reference outline is hidden"
    changed = np.abs(after.astype(int) - before.astype(int)).max(axis=-1) > 12
    fill_b, fill_a = _fill(before), _fill(after)
    assert fill_a.sum() < fill_b.sum()  # a higher threshold: a smaller segment
    where_seg_changed = ndimage.binary_dilation(fill_b ^ fill_a, iterations=3)
    assert changed.sum() > 50, "the rendered slice view did not change"
    assert (changed & where_seg_changed).sum() >= 0.9 * changed.sum(), \
        "the slice view changed away from where the segmentation changed"
    doc = json.loads((study / "thresholds-bce.json").read_text())
    assert doc["structures"]["Brain"]["threshold"] == pytest.approx(t_after) and \
        doc["structures"]["Brain"]["set_by"] == "hand"
    for name in ("axial_before.png", "axial_after.png", "page_before.png", "page_after.png", "page_saved.png"):
        assert (tmp_path / name).stat().st_size > 1000
    shots = os.environ.get("AUTOSEGSENS_REVIEW_SCREENSHOTS")
    if shots:  # to refresh the README's screenshot
        shutil.copy(tmp_path / "page_after.png", Path(shots) / "ReviewPage.png")


def test_nnunet_output_reviews_like_the_maps(tmp_path):
    """`--prob-dir` with nnU-Net's .npz (tune's reader): the same table and the same map as the maps layout."""
    import slicer

    from test_io_nnunet import write_nnunet_output
    from tune_cohort import write_cohort

    probs, refs = write_cohort(tmp_path, 3)
    nn = tmp_path / "nnunet"
    write_nnunet_output(nn, 3)
    a, b = open_folders(probs, refs), open_folders(nn, refs)
    assert b.fmt == "nnunet" and b.structures == ["Low", "High"] and sorted(a.structures) == ["High", "Low"]
    for c in (a, b):
        for name in c.cases:
            c.case_stats(name)
        c.tune_missing()
    assert a.tuned == b.tuned
    for s in ("Low", "High"):
        assert a.table_rows(s) == b.table_rows(s)
    ia, ib = a.load_case("case01", "High"), b.load_case("case01", "High")
    np.testing.assert_array_equal(ia.probability.array, ib.probability.array)
    assert ib.image.same_grid(ib.probability)
    scene = ReviewScene(slicer.vtkMRMLScene())
    scene.show_case(ib, b.tuned["High"])
    assert np.array_equal(scene.result_mask(), ib.probability.array >= np.float32(b.tuned["High"]))


def test_web_data_side_imports_neither_slicer_nor_trame():
    """cohort.py and chart.py are engine code (arrays and files); only scene.py (through mrml/) and app.py
    touch Slicer, only app.py and server.py trame; importing the package needs neither."""
    import ast

    web = REPO / "AutoSegSensitivity" / "web"
    for name, banned in (("cohort.py", ("slicer", "trame", "trame_slicer", "vtk", "qt")),
                         ("chart.py", ("slicer", "trame", "trame_slicer", "vtk", "qt")),
                         ("__init__.py", ("slicer", "trame", "trame_slicer")),
                         ("scene.py", ("trame", "trame_slicer", "qt"))):
        tree = ast.parse((web / name).read_text(encoding="utf-8"))
        used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and not n.level}
        assert not used & set(banned), f"web/{name} imports {used & set(banned)}"
