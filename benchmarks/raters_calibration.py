"""Several annotators: does training on their soft consensus give a better calibrated U-Net?

Synthetic angiograms (known truth) each get five simulated raters
(:func:`pipeline.segment.raters.simulate_raters`: a boundary offset per rater, smooth local
disagreement, doubled at the stenosis). Raters 1-3 make the training labels, raters 4-5 are
held out. Two U-Nets are trained with the same seed, steps and data:

* **hard**: the majority vote of raters 1-3 (STAPLE's consensus is printed beside it);
* **soft**: the fraction of raters 1-3 calling each voxel lumen (soft labels, soft Dice + CE).

On held-out cases (seeds training never saw) each model's lumen probability is compared with
the held-out raters' consensus (the fraction of raters 4-5): expected calibration error over
the voxels within 2 mm of the truth's wall (where raters disagree; far from it every model
is right and sure), and a reliability diagram (``bench_output/raters_reliability.png``).
Goal: the soft-label model's ECE is the lower.

Run: ``.venv/bin/python benchmarks/raters_calibration.py [--steps N]``; prints every number and
writes ``bench_output/raters_calibration.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from workflows.common import write_json_atomic  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--held-out", type=int, default=6)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = ROOT / "bench_output" / "raters"

    from pipeline.metrics import dice
    from pipeline.segment.infer import predict_volume
    from pipeline.segment.learn_data import synthetic_case, write_dataset
    from pipeline.segment.raters import (expected_calibration_error, majority_vote, reliability_diagram,
                                         simulate_raters, soft_consensus, staple)
    from pipeline.segment.train import TrainConfig, load_model, train

    def case(seed):
        image, truth, params = synthetic_case(seed, shape_zyx=(48, 48, 48))
        t = np.asarray(truth.array) > 0
        raters = simulate_raters(t, image.spacing_mm, 5, seed=seed, bias_mm=0.25 * params["radius_mm"],
                                 local_mm=0.2 * params["radius_mm"], correlation_mm=2.0 * params["radius_mm"])
        return image, truth, t, raters

    train_cases, soft, rows = [], {}, []
    for k in range(a.cases):
        image, truth, t, raters = case(a.seed + k)
        name = f"case_{a.seed + k:04d}"
        mv = majority_vote(raters[:3])
        st_mask, _, _ = staple(raters[:3])
        rows.append({"case": name, "majority_vote_dice": dice(mv, t), "staple_dice": dice(st_mask, t)})
        train_cases.append((name, image, truth.with_array(mv.astype(np.uint8))))
        soft[name] = soft_consensus(raters[:3])
    print(f"training labels vs truth: majority vote Dice {np.mean([r['majority_vote_dice'] for r in rows]):.3f}, "
          f"STAPLE {np.mean([r['staple_dice'] for r in rows]):.3f} (raters 1-3)")
    write_dataset(out / "dataset", train_cases, description="majority vote of raters 1-3")
    cfg = dict(steps=a.steps, seed=a.seed, width=8, depth=3)
    t0 = time.perf_counter()
    train(out / "dataset", out / "hard", TrainConfig(**cfg), quiet=True)
    train(out / "dataset", out / "soft", TrainConfig(**cfg), quiet=True, soft_labels=soft)
    print(f"two models, {a.steps} steps each: {time.perf_counter() - t0:.0f} s")

    models = {m: load_model(out / m)[:2] for m in ("hard", "soft")}
    probs = {m: [] for m in models}
    refs, bands = [], []
    for k in range(a.held_out):
        image, truth, t, raters = case(200000 + a.seed + k)
        ref = soft_consensus(raters[3:])
        sd = (ndimage.distance_transform_edt(~t, sampling=image.spacing_mm)
              + ndimage.distance_transform_edt(t, sampling=image.spacing_mm))
        band = sd <= 2.0
        refs.append(ref[band])
        bands.append(band)
        for m, (model, plan) in models.items():
            p, _ = predict_volume(model, plan, image)
            probs[m].append(np.asarray(p.array)[band])
    ref = np.concatenate(refs)
    report = {"training_labels": rows, "steps": a.steps}
    for m in models:
        p = np.concatenate(probs[m])
        report[f"ece_{m}"] = expected_calibration_error(p, ref)
        print(f"{m}-label model: ECE {report[f'ece_{m}']:.4f} against held-out raters 4-5 "
              f"({len(ref)} voxels within 2 mm of the wall)")
    print(f"soft ECE < hard ECE: {'met' if report['ece_soft'] < report['ece_hard'] else 'NOT met'}")
    reliability_diagram(ROOT / "bench_output" / "raters_reliability.png",
                        {m: (np.concatenate(probs[m]), ref) for m in models},
                        title="held-out raters, 2 mm band")
    write_json_atomic(ROOT / "bench_output" / "raters_calibration.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
