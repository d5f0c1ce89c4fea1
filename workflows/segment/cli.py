"""``digipat segment synth | train | predict | evaluate | atlas``: segmentation from the command line.

* ``synth DATASET --cases N``: a synthetic training set in nnU-Net's layout (randomised
  angiograms with known truth, :func:`pipeline.segment.learn_data.synthetic_case`).
* ``train DATASET --out MODEL_DIR``: train a U-Net (seeded, resumable: rerun the same command
  after an interruption and it continues from the last checkpoint).
* ``predict IMAGE --model MODEL_DIR --out DIR``: ``DIR/lumen.nii.gz`` (mask),
  ``DIR/probability.nii.gz`` (lumen probability) and ``DIR/prediction.json``.
* ``atlas CT --age A [--sex S] --out DIR``: organs by registering reference phantoms
  (:mod:`workflows.segment.atlas`).
* ``evaluate PRED TRUTH``: Dice, IoU, HD95, ASSD, sensitivity, specificity, precision, and the
  precision at a stated prevalence (``--prevalence``), printed or as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["register"]


class SegmentCliError(ValueError):
    """Bad input to a ``digipat segment`` command."""


def register(sub) -> None:
    """Add ``segment`` (with its four commands) to the ``digipat`` subparsers."""
    seg = sub.add_parser("segment", help="segmentation: synth, train, predict, evaluate (U-Net); atlas (organs)",
                         description="The U-Net lumen segmenter (PyTorch, CPU).")
    s = seg.add_subparsers(dest="segment_command", metavar="SEGMENT_COMMAND")
    s.required = True

    p = s.add_parser("synth", help="write a synthetic training set (nnU-Net layout)")
    p.add_argument("dataset", help="output dataset folder (imagesTr/, labelsTr/, dataset.json)")
    p.add_argument("--cases", type=int, default=40, help="number of cases (default 40)")
    p.add_argument("--seed", type=int, default=0, help="first case's seed; case k uses seed + k (default 0)")
    p.add_argument("--size", type=int, nargs=3, default=(48, 48, 48), metavar=("Z", "Y", "X"),
                   help="voxels per case (default 48 48 48, 0.5 mm)")
    p.add_argument("--hard", action="store_true", help="harder cases: lower contrast, more noise, thinner vessels")
    p.set_defaults(func=cmd_synth)

    p = s.add_parser("train", help="train a U-Net on a dataset folder")
    p.add_argument("dataset", help="dataset folder in nnU-Net's layout (imagesTr/, labelsTr/, dataset.json)")
    p.add_argument("--out", required=True, help="model folder (model.pt, model.json, checkpoint.pt)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--batch", type=int, default=2, help="patches per step (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    p.add_argument("--width", type=int, default=8, help="channels of the first stage (default 8)")
    p.add_argument("--depth", type=int, default=3, help="down-samplings (default 3)")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Adam's initial rate (default 2e-3)")
    p.add_argument("--normalisation", choices=("ct", "zscore"), default="ct",
                   help="ct: clip to the foreground's 0.5-99.5 percentiles and z-score with the dataset's "
                        "statistics; zscore: each volume by its own (MR) (default ct)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch size (default: planned)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = s.add_parser("predict", help="segment an image with a trained model")
    p.add_argument("image", help="3-D image (NIfTI, NRRD, MHA, or a DICOM series folder)")
    p.add_argument("--model", default=None,
                   help="model folder (default: the vessel model shipped with digipat)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mirror", action="store_true", help="average over mirrored copies (8x slower)")
    p.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto",
                   help="mr: an MR image given to a CT-trained model is first mapped onto its scale (tissue and "
                        "lumen levels to 40 and 415 HU); auto: MR when the image holds no negative values "
                        "(default auto)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = s.add_parser("atlas", help="organs of a CT by registering reference phantoms to it",
                     description="Atlas segmentation: the reference phantom of the patient's age and sex (and any "
                                 "--atlas AGE:SEX), rendered as a CT, registered to the CT (affine, then "
                                 "diffeomorphic demons or a B-spline), its labels carried over and fused. Writes "
                                 "DIR/labels.nii.gz, DIR/label_table.csv and DIR/atlas.json (registration quality).")
    p.add_argument("ct_image", help="CT in HU: NIfTI, NRRD, MHA or a DICOM series folder")
    p.add_argument("--age", required=True, help="patient's reference age: newborn, 1y, 5y, 10y, 15y or adult")
    p.add_argument("--sex", default="male", choices=("male", "female"), help="patient's sex (default male)")
    p.add_argument("--atlas", action="append", default=[], metavar="AGE:SEX",
                   help="another atlas to fuse (repeat), e.g. --atlas adult:female --atlas 15y:male")
    p.add_argument("--fusion", choices=("majority", "staple"), default="majority",
                   help="how several atlases are fused (default majority)")
    p.add_argument("--deformable", choices=("demons", "bspline", "none"), default="demons",
                   help="deformable stage after the affine one (default demons)")
    p.add_argument("--kvp", type=float, default=120.0, help="tube potential the atlas is rendered at (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the metric's random sampling (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="rerun even if DIR/atlas.json has the same inputs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_atlas)

    p = s.add_parser("evaluate", help="compare a segmentation with a reference")
    p.add_argument("pred", help="predicted mask (non-zero = lumen)")
    p.add_argument("truth", help="reference mask on the same grid")
    p.add_argument("--prevalence", type=float, help="also report the precision at this lumen prevalence (0..1)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)


def cmd_atlas(a) -> int:
    """``digipat segment atlas``: :func:`workflows.segment.atlas.atlas_segment`. Returns 0."""
    from workflows.segment.atlas import atlas_segment

    r = atlas_segment(a.ct_image, a.out, a.age, a.sex, atlases=a.atlas, fusion=a.fusion, deformable=a.deformable,
                      kvp=a.kvp, seed=a.seed, force=a.force, quiet=a.quiet)
    if not a.quiet:
        vols = r["organ_volumes_cm3"]
        print("organ volumes (cm³): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(vols.items(), key=lambda x: -x[1])
                                                if k not in ("soft_tissue", "air")))
        print(f"labels: {r['files']['labels']}; table: {r['files']['label_table']}")
    return 0


def shipped_model() -> Path:
    """The vessel model that ships with the package."""
    from pipeline.segment.train import SHIPPED_MODEL

    return SHIPPED_MODEL


def cmd_synth(a) -> int:
    from pipeline.segment.learn_data import synthetic_case, write_dataset

    if a.cases < 1:
        raise SegmentCliError(f"--cases must be at least 1, got {a.cases}")
    cases = ((f"case_{a.seed + k:04d}",) + synthetic_case(a.seed + k, shape_zyx=tuple(a.size), hard=a.hard)[:2]
             for k in range(a.cases))
    write_dataset(a.dataset, cases, description=f"digipat synthetic angiograms, seeds {a.seed}..{a.seed + a.cases - 1}"
                  + (" (hard)" if a.hard else ""))
    print(f"wrote {a.cases} cases to {a.dataset}")
    return 0


def cmd_train(a) -> int:
    from pipeline.segment.train import TrainConfig, train

    cfg = TrainConfig(steps=a.steps, batch=a.batch, seed=a.seed, width=a.width, depth=a.depth,
                      learning_rate=a.learning_rate, normalisation=a.normalisation,
                      patch=tuple(a.patch) if a.patch else None, checkpoint_every=a.checkpoint_every,
                      command=(f"digipat segment train {a.dataset} --out {a.out} --steps {a.steps} --batch {a.batch} "
                               f"--seed {a.seed} --width {a.width} --depth {a.depth} --learning-rate {a.learning_rate} "
                               f"--normalisation {a.normalisation}"
                               + (" --patch " + " ".join(map(str, a.patch)) if a.patch else "")))
    info = train(a.dataset, a.out, cfg, quiet=a.quiet)
    h = info["loss_history"]
    print(f"trained {len(h)} steps: loss {h[0]:.4f} -> {sum(h[-10:]) / len(h[-10:]):.4f} (mean of the last 10); "
          f"model in {a.out}")
    return 0


def cmd_predict(a) -> int:
    import numpy as np

    from physics.atomic import atomic_path
    from pipeline.image import read_image, write_image
    from pipeline.segment.classical import detect_modality
    from pipeline.segment.infer import predict_volume, standardise_for_model
    from pipeline.segment.train import load_model

    model_dir = Path(a.model) if a.model else shipped_model()
    model, plan, info = load_model(model_dir)
    image = read_image(a.image)
    modality = detect_modality(np.asarray(image.array)) if a.modality == "auto" else a.modality
    scaled, standardised = standardise_for_model(image, plan, modality)
    prob, mask = predict_volume(model, plan, scaled, mirror=a.mirror, quiet=a.quiet)
    out = Path(a.out)
    write_image(prob, out / "probability.nii.gz")
    write_image(mask, out / "lumen.nii.gz")
    n = int((mask.array > 0).sum())
    rec = {"image": str(a.image), "model": str(model_dir), "lumen_voxels": n,
           "lumen_volume_mm3": n * float(np.prod(image.spacing_mm)), "mirror": bool(a.mirror),
           "modality": modality, "standardised": standardised}
    with atomic_path(out / "prediction.json") as tmp:
        tmp.write_text(json.dumps(rec, indent=2))
    print(f"lumen: {n} voxels ({rec['lumen_volume_mm3']:.0f} mm3); wrote {out / 'lumen.nii.gz'} and "
          f"{out / 'probability.nii.gz'}")
    return 0


def cmd_evaluate(a) -> int:
    import numpy as np

    from pipeline.image import read_image
    from pipeline.metrics import precision_at_prevalence, segmentation_report

    pred, truth = read_image(a.pred), read_image(a.truth)
    if np.asarray(pred.array).shape != np.asarray(truth.array).shape:
        raise SegmentCliError(f"{a.pred} {np.asarray(pred.array).shape} and {a.truth} "
                              f"{np.asarray(truth.array).shape} are not on the same grid: resample one first")
    rep = segmentation_report(np.asarray(pred.array) > 0, np.asarray(truth.array) > 0, spacing_mm=truth.spacing_mm)
    if a.prevalence is not None:
        rep["prevalence"] = a.prevalence
        rep["precision_at_prevalence"] = precision_at_prevalence(rep["sensitivity"], rep["specificity"], a.prevalence)
    if a.json:
        print(json.dumps(rep, indent=2, default=float))
    else:
        for k in ("dice", "iou", "hd95_mm", "assd_mm", "sensitivity", "specificity", "precision",
                  "precision_at_prevalence"):
            if k in rep:
                print(f"{k:24s} {rep[k]:.4f}")
    return 0
