"""Tables and figures of sweeps: written atomically, read back, PNGs that open."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from matplotlib import image as mpimg

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.report import (
    jsonable,
    perturbation_loss_table,
    plot_perturbation_losses,
    plot_prominence,
    plot_sweep,
    plot_sweep_metrics,
    write_csv,
    write_json,
)
from AutoSegSensitivity.sweep import DEFAULT_THRESHOLDS, SweepResult, sweep_thresholds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(name: str, t_opt: float, width: float = 0.2) -> SweepResult:
    th = DEFAULT_THRESHOLDS
    d = 0.9 * np.exp(-((th - t_opt) / width) ** 2)
    msd = 1.0 + 5 * (th - t_opt) ** 2
    hd = np.where(th > 0.97, np.inf, 4.0 + 10 * np.abs(th - t_opt))
    curves = {"dice": d, "msd": msd, "hd": hd}
    n_undef = {m: np.zeros(th.size, int) for m in curves}
    return SweepResult(th, tuple(curves), curves, curves, n_undef, {"c1": curves}, ["c1"], structure=name)


def check_png(path, min_width=200):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_width and img.shape[0] >= 100
    # not a blank canvas
    assert float(np.std(img[..., :3])) > 0.01
    return img


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


def test_csv_and_json_round_trip_with_inf(tmp_path):
    rows = [{"segment": "a", "dice": 0.5, "hd_mm": math.inf, "n": np.int64(3)},
            {"segment": "b", "dice": np.float32(0.25), "hd_mm": 2.0, "extra": "x"}]
    path = write_csv(rows, tmp_path / "t.csv")
    back = list(csv.DictReader(path.open()))
    assert list(back[0]) == ["segment", "dice", "hd_mm", "n", "extra"]
    assert back[0]["hd_mm"] == "inf" and float(back[0]["hd_mm"]) == math.inf
    assert float(back[1]["dice"]) == 0.25 and back[0]["extra"] == "" and back[0]["n"] == "3"
    data = {"x": np.arange(3), "inf": math.inf, "nan": float("nan"), 2: (1.5, np.float64(2.5))}
    jpath = write_json(data, tmp_path / "d.json")
    loaded = json.loads(jpath.read_text())
    assert loaded == {"x": [0, 1, 2], "inf": "inf", "nan": None, "2": [1.5, 2.5]}
    assert jsonable([np.bool_(True)]) == [True]
    assert no_temp_files(tmp_path)


def test_plot_sweep_real_result(tmp_path, rng):
    shape = (10, 16, 16)
    refs = [np.zeros(shape, bool) for _ in range(2)]
    refs[0][3:7, 4:11, 5:12] = True
    refs[1][2:8, 5:12, 3:10] = True
    from scipy import ndimage

    probs = [np.clip(ndimage.gaussian_filter(r.astype(np.float32) + 0.2 * rng.standard_normal(shape), 1), 0, 1)
             .astype(np.float32) for r in refs]
    res = sweep_thresholds(probs, refs, [(2.0, 1.0, 1.0)] * 2, thresholds="0:1:0.05", structure="Cube")
    for m in res.metrics:
        check_png(plot_sweep(res, tmp_path / f"s_{m}.png", metric=m))
    img = check_png(plot_sweep_metrics(res, tmp_path / "all.png"), min_width=800)
    assert img.shape[0] >= 700  # 2 x 2 panels
    with pytest.raises(InputError):
        plot_sweep(res, tmp_path / "x.png", metric="volume")
    assert no_temp_files(tmp_path)


def test_plot_perturbation_losses_and_table(tmp_path):
    results = {n: synthetic(n, t) for n, t in (("Brain", 0.45), ("Cord", 0.12), ("Lens", 0.2), ("Parotid", 0.3))}
    check_png(plot_perturbation_losses(results, tmp_path / "loss.png"))
    check_png(plot_perturbation_losses(list(results.values())[:1], tmp_path / "one.png", metric="msd"))
    table = perturbation_loss_table(results)
    assert [r["structure"] for r in table] == list(results)
    cord = table[1]
    assert cord["optimum_threshold"] == pytest.approx(0.12)
    expected = (0.9 - 0.9 * np.exp(-((0.5 - 0.12) / 0.2) ** 2)) / 0.9
    assert cord["loss_at_0.5"] == pytest.approx(expected)
    assert cord["loss_minus_0.05"] == pytest.approx(1 - np.exp(-((0.05 / 0.2) ** 2)))
    write_csv(table, tmp_path / "loss.csv")
    with pytest.raises(InputError):
        plot_perturbation_losses({}, tmp_path / "none.png")


def test_plot_prominence(tmp_path):
    prom = [0.0005, 0.002, 0.01, 0.05, 0.2]
    opt = [0.08, 0.12, 0.2, 0.3, 0.45]
    check_png(plot_prominence(prom, opt, tmp_path / "prom.png", labels=list("abcde")))
    check_png(plot_prominence([0.1, 0.2, 0.3], [0.5, 0.5, 0.5], tmp_path / "flat.png"))
    with pytest.raises(InputError):
        plot_prominence(prom, opt, tmp_path / "bad.png", labels=["a"])
    assert not (tmp_path / "bad.png").exists()
