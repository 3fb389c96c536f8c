"""The threshold-sensitivity study (paper 000, Bice et al. 2021) on MRML nodes, headless.

Runs inside 3D Slicer without its window::

    Slicer --no-main-window --python-script examples/headless_slicer_study.py -- --out study-mrml

or with plain Python where the ``slicer-core`` wheel (real MRML, ``import slicer``) stands in for the
application::

    python examples/headless_slicer_study.py --out study-mrml --cases 4 --epochs 2

What it does, through the engine (``AutoSegSensitivity``) and its MRML layer (``AutoSegSensitivity.mrml``):

1. writes a phantom dataset (``OUT/data``) and loads every case into the scene as a scalar volume node
   (CT, HU) and a segmentation node (references);
2. splits the cases into training, validation and test as ``autosegsens demo`` does
   (:func:`AutoSegSensitivity.held_out.split_roles`) and trains one multi-label 2D U-Net per loss (BCE;
   BCE + lambda * 2D Dice) with the engine on the training cases, early stopping on the validation cases;
3. for each validation and test case, takes the CT *from its volume node*, predicts, and puts each
   probability map into the scene as a scalar volume node (``<case> <structure> <loss>``);
4. sweeps thresholds 0..1 by 0.01 with ``ThresholdTuningLogic`` on those nodes against the reference
   segmentation nodes (table, chart and summary nodes in the scene), on the validation cases (where each
   threshold is chosen) and on the test cases (where it is measured), thresholds every test map at the
   threshold chosen on validation into a segmentation node (``<case> <loss> tuned``), and saves those as
   ``.seg.nrrd``;
5. writes the study folder (``study.json``, sweep CSVs, ``volume_bias.csv``, ``summary.csv``) and the
   self-contained ``report.html``, the same as ``autosegsens demo``, plus ``scene_nodes.json`` listing the
   nodes it made.

Exit code 0 done, 1 failed, 2 bad arguments; inside Slicer the application exits with that code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":  # Slicer passes "--" through
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="headless_slicer_study.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (refused if not empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--cases", type=int, default=8, help="phantom cases (30 %% test, 20 %% validation, the rest "
                   "training)")
    p.add_argument("--structures", nargs="+", default=["Brain", "Parotid_L", "SpinalCord", "Lens_L"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--samples-per-epoch", type=int, default=64)
    p.add_argument("--width", type=int, default=4, help="U-Net base features")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="phantom grid (default 32 128 128)")
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def get_scene() -> Any:
    """The application's scene inside Slicer, a new ``vtkMRMLScene`` with the slicer-core wheel."""
    import slicer

    scene = getattr(slicer, "mrmlScene", None)
    return scene if scene is not None else slicer.vtkMRMLScene()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """The study on MRML nodes; returns what was made (also written to ``OUT/scene_nodes.json``)."""
    from AutoSegSensitivity import report as figs
    from AutoSegSensitivity.cli.common import prepare_out_dir
    from AutoSegSensitivity.held_out import ROLES, split_roles
    from AutoSegSensitivity.html_report import fmt_num, load_study, summary_rows, write_report
    from AutoSegSensitivity.inference import load_checkpoint, predict_volume
    from AutoSegSensitivity.io import load_case, scan_dataset, write_segmentation
    from AutoSegSensitivity.mrml import nodes
    from AutoSegSensitivity.mrml.converters import ensure_segmentation_converters
    from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic
    from AutoSegSensitivity.study import (CORRELATION_COLUMNS, VOLUME_BIAS_COLUMNS, StudyConfig, _versions,
                                          default_losses, held_out_volume_bias, make_phantom_data, write_role_sweep)
    from AutoSegSensitivity.sweep import correlate_prominence
    from AutoSegSensitivity.training import TrainConfig, resolve_device, train

    t0 = time.monotonic()
    cfg = StudyConfig.from_dict({"structures": list(args.structures), "cases": args.cases, "epochs": args.epochs,
                                 "samples_per_epoch": args.samples_per_epoch, "base_features": args.width,
                                 "lam": args.lam, "seed": args.seed, "device": args.device,
                                 "per_structure": False,  # this script trains one multi-label model per loss
                                 "phantom_shape": list(args.shape) if args.shape else None},
                                source="headless_slicer_study.py")
    out = prepare_out_dir(args.out, args.overwrite)
    dev = resolve_device(cfg.device)
    ensure_segmentation_converters()
    scene = get_scene()
    made: Dict[str, List[str]] = {"volumes": [], "segmentations": [], "tables": [], "charts": []}

    # 1. data into the scene
    data_dir = out / "data"
    print(f"phantom: {cfg.cases} cases -> {data_dir}", flush=True)
    make_phantom_data(data_dir, cfg.cases, cfg.seed, cfg.phantom_shape)
    ct_nodes: Dict[str, Any] = {}
    ref_nodes: Dict[str, Any] = {}
    for case in scan_dataset(data_dir).cases:
        image, seg = load_case(case)
        ct_nodes[case.name] = nodes.volume_to_node(image, scene, f"{case.name} CT")
        ref_nodes[case.name] = nodes.segmentation_to_node(seg, scene, f"{case.name} reference",
                                                          reference_node=ct_nodes[case.name])
        made["volumes"].append(ct_nodes[case.name].GetName())
        made["segmentations"].append(ref_nodes[case.name].GetName())

    specs = default_losses(cfg.lam)
    roles = split_roles(list(ct_nodes), cfg.val_fraction, cfg.test_fraction, cfg.seed, "headless_slicer_study.py")
    meta: Dict[str, Any] = {
        "title": "Threshold sensitivity study on MRML nodes (headless Slicer)",
        "description": "CT and references as MRML nodes; probability maps as volume nodes; sweeps by "
                       "ThresholdTuningLogic on the scene; thresholds chosen on the validation cases, every "
                       "reported number measured on the test cases.",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": "running",
        "device": str(dev), "settings": cfg.to_dict(), "versions": _versions(),
        "structures": list(cfg.structures), "prominence": {}, "problems": [],
        "data": {"source": "synthetic head-and-neck phantom, loaded into MRML nodes", "folder": "data",
                 **{f"{r} cases": roles[r] for r in ROLES}},
        "losses": [],
    }
    logic = ThresholdTuningLogic(scene)
    bias_rows: List[Dict[str, Any]] = []
    corr_rows: List[Dict[str, Any]] = []
    for spec in specs:
        # 2. training (engine) on the training cases, early stopping on the validation cases
        print(f"training: {spec.label}", flush=True)
        tcfg = TrainConfig.from_dict({
            "model": cfg.model, "model_kwargs": cfg.model_kwargs(), "loss": spec.loss,
            "loss_kwargs": dict(spec.loss_kwargs), "structures": list(cfg.structures), "intensity": cfg.intensity,
            "resize": cfg.resize,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "samples_per_epoch": cfg.samples_per_epoch,
            "foreground_fraction": cfg.foreground_fraction, "lr": cfg.lr, "scheduler": dict(cfg.scheduler),
            "train_cases": roles["training"], "val_cases": roles["validation"],
            "seed": cfg.seed, "early_stopping": {"rule": "running_mean", "window": cfg.early_stopping_window}},
            source="headless_slicer_study.py")
        res = train(tcfg, data_dir, out / "models" / spec.key, device=str(dev), progress_bar=False)
        ckpt = res.best_path if res.best_path.is_file() else res.last_path
        model = load_checkpoint(ckpt, device=str(dev))
        meta["prominence"] = {s: float(model.prominence[s]) for s in cfg.structures}
        meta["losses"].append({"key": spec.key, "label": spec.label, "loss": spec.loss,
                               "loss_kwargs": spec.loss_kwargs, "model": cfg.model,
                               "model_kwargs": cfg.model_kwargs(), "multi_label": True,
                               "checkpoint": str(ckpt.relative_to(out)), "epochs_run": res.epochs_run,
                               "best_epoch": res.best_epoch, "train_config": tcfg.to_dict()})

        # 3. prediction from the CT volume nodes into probability volume nodes (validation and test cases)
        prob_nodes: Dict[str, Dict[str, Any]] = {}
        for case in roles["validation"] + roles["test"]:
            ct = nodes.volume_from_node(ct_nodes[case])
            for s, vol in predict_volume(model, ct, device=str(dev)).items():
                node = nodes.volume_to_node(vol, scene, f"{case} {s} {spec.key}")
                prob_nodes.setdefault(s, {})[case] = node
                made["volumes"].append(node.GetName())

        # 4. sweeps on the nodes: the threshold chosen on validation, then the test cases thresholded at it
        points: Dict[str, Any] = {r: ([], []) for r in ROLES[1:]}
        tuned: Dict[str, Any] = {}
        for s in cfg.structures:
            t_chosen = 0.5
            for role in ROLES[1:]:
                maps, refs = [prob_nodes[s][c] for c in roles[role]], [ref_nodes[c] for c in roles[role]]
                result, table, chart, summary = logic.sweep(maps, refs, s, name=f"{s} {spec.key} {role} sweep")
                made["tables"] += [table.GetName(), summary.GetName()]
                made["charts"].append(chart.GetName())
                arrays, masks, spacings, names = logic.case_arrays(maps, refs, s)
                write_role_sweep(out / "sweeps" / spec.key / s / role, result, role,
                                 list(zip(names, arrays, masks)), result.thresholds, cfg.deltas, figure=False)
                points[role][0].append(meta["prominence"][s])
                points[role][1].append(result.optimum("dice")[0])
                if role == "validation":
                    t_chosen = result.optimum("dice")[0]
                    continue
                bias_rows += held_out_volume_bias(spec.key, s, t_chosen, arrays, masks, spacings)
                for c in roles["test"]:
                    seg_node = tuned.get(c) or nodes.get_or_create_node(scene, "vtkMRMLSegmentationNode",
                                                                        f"{c} {spec.key} tuned")
                    tuned[c] = logic.apply_threshold(prob_nodes[s][c], t_chosen, seg_node, segment=s)
        for c, seg_node in tuned.items():
            made["segmentations"].append(seg_node.GetName())
            seg = nodes.segmentation_from_node(seg_node, ct_nodes[c])
            write_segmentation(seg, out / "tuned" / spec.key / f"{c}.seg.nrrd")
        for role, (proms, optima) in points.items():
            r = p = None
            if len(optima) >= 2:
                r, p = correlate_prominence(proms, optima)
            corr_rows.append({"loss": spec.key, "thresholds_from": role, "n_structures": len(optima),
                              "pearson_r": r, "p_value": p})

    # 5. the study folder and the report
    figs.write_csv(bias_rows, out / "volume_bias.csv", columns=VOLUME_BIAS_COLUMNS)
    figs.write_csv(corr_rows, out / "correlation.csv", columns=CORRELATION_COLUMNS)
    meta.update(status="complete", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                duration_s=round(time.monotonic() - t0, 1))
    (out / "study.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    rows = summary_rows(load_study(out))
    figs.write_csv(rows, out / "summary.csv")
    report = write_report(out, out / "report.html")
    made["scene_node_count"] = [int(scene.GetNumberOfNodes())]
    (out / "scene_nodes.json").write_text(json.dumps(made, indent=2) + "\n")
    for row in rows:
        print(f"{row['structure']:<12s} {row['loss_label']:<28s} t {row['dice_threshold_chosen_on_validation']:.2f} "
              f"(chosen on validation): test Dice {fmt_num(row['dice_test_at_threshold'])}; at 0.5 "
              f"{fmt_num(row['dice_test_at_0.5'])}", flush=True)
    print(f"report: {report}", flush=True)
    return made


def main(argv: Optional[Sequence[str]] = None) -> int:
    from AutoSegSensitivity.errors import InputError

    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad arguments (2)
        return int(exc.code or 0)
    try:
        run(args)
        return 0
    except (InputError, FileExistsError) as exc:
        print(f"headless_slicer_study.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - report and fail with 1
        traceback.print_exc()
        return 1


def _exit(code: int) -> None:
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:  # the Slicer application: quit it with the code
            slicer.util.exit(code)
            return
    except ImportError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
