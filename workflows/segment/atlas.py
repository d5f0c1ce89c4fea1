"""Organs of a patient's CT by atlas segmentation: reference phantoms rendered as CTs, registered, fused.

``digipat segment atlas CT --age A [--sex S] --out DIR`` and ``digipat phantom from-ct CT
--atlas --age A --out DIR`` run :func:`atlas_segment`:

1. each atlas (by default the reference phantom of the patient's age and sex; ``--atlas
   AGE:SEX`` adds more, e.g. the other sex or a neighbouring age) is built
   (:func:`phantoms.stylized.build_reference_phantom`) and rendered as a CT at the scan's kVp
   (:func:`phantoms.render.render_ct`);
2. when the CT covers part of the body (shorter than 90 % of the atlas's body), its slices
   are found along the atlas by their lung and bone profiles
   (:func:`pipeline.segment.atlas.z_alignment`) and the atlas is cropped to them with a
   ``margin_mm`` on each side;
3. the atlas is registered to the CT (affine, then diffeomorphic demons by default) and its
   labels carried over (:mod:`pipeline.segment.atlas`);
4. several atlases are fused by majority vote or STAPLE.

Outputs in DIR: ``labels.nii.gz`` (the reference phantoms' label ids,
:data:`phantoms.stylized.LABELS`), ``label_table.csv`` (``label_id,organ,tissue``: the table
``digipat phantom from-ct --labels --label-map`` reads), ``atlas_<age>_<sex>.nii.gz`` per
atlas, and ``atlas.json`` (written last) with each registration's quality: mutual information
before and after, the Jacobian determinant's range and folding fraction, the z alignment,
and the time taken. A rerun with the same inputs reuses ``atlas.json``'s result.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from workflows.common import ResultCache, hash_params, write_text_atomic

__all__ = ["AtlasRunError", "atlas_segment", "parse_atlas_spec"]

#: Voxel size (mm) the atlases are built at.
ATLAS_VOXEL_MM = 4.0


class AtlasRunError(ValueError):
    """Bad input to the atlas run (names the option and what to do)."""


def parse_atlas_spec(spec: str) -> tuple[str, str]:
    """``"AGE:SEX"`` → (age, sex), checked against the reference phantoms."""
    from phantoms.stylized import SUPPORTED_AGES

    age, _, sex = str(spec).partition(":")
    sex = sex or "male"
    if age not in SUPPORTED_AGES or sex not in ("male", "female"):
        raise AtlasRunError(f"atlas {spec!r}: give AGE:SEX with AGE one of {list(SUPPORTED_AGES)} and SEX male or "
                            "female (e.g. adult:female)")
    return age, sex


def _table_csv() -> str:
    from phantoms.stylized import LABELS

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label_id", "organ", "tissue"])
    for k, d in sorted(LABELS.items()):
        if k:
            w.writerow([k, d.name, d.tissue])
    return buf.getvalue()


def atlas_segment(ct_path, out_dir, age: str, sex: str = "male", *, atlases=None, fusion: str = "majority",
                  deformable: str = "demons", kvp: float = 120.0, margin_mm: float = 60.0, seed: int = 0,
                  force: bool = False, quiet: bool = False) -> dict:
    """Atlas-segment the organs of a CT (module docstring); returns the ``atlas.json`` record."""
    from phantoms.render import render_ct
    from phantoms.stylized import build_reference_phantom
    from pipeline.image import ImageError, read_image, write_image
    from pipeline.segment.atlas import DEFORMABLE, fuse_labels, register, warp_labels, z_alignment

    if fusion not in ("majority", "staple"):
        raise AtlasRunError(f"--fusion must be majority or staple, got {fusion!r}")
    if deformable not in DEFORMABLE:
        raise AtlasRunError(f"--deformable must be one of {DEFORMABLE}, got {deformable!r}")
    pairs = [parse_atlas_spec(f"{age}:{sex}")] + [parse_atlas_spec(a) for a in (atlases or [])]
    pairs = list(dict.fromkeys(pairs))
    try:
        ct = read_image(ct_path)
    except ImageError as exc:
        raise AtlasRunError(f"CT: {exc}") from None
    out = Path(out_dir)
    key = hash_params({"ct": str(Path(ct_path).resolve()), "ct_shape": list(ct.shape), "atlases": pairs,
                       "fusion": fusion, "deformable": deformable, "kvp": kvp, "margin_mm": margin_mm, "seed": seed,
                       "ct_sum": float(np.asarray(ct.array, np.float64).sum())})
    cache = ResultCache(out / "atlas.json", key, force=force)
    if (old := cache.load()) is not None:
        if not quiet:
            print(f"[atlas] {out / 'atlas.json'} is up to date (same inputs)", flush=True)
        return old
    cache.invalidate()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hu = np.asarray(ct.array, np.float32)
    patient = ct.with_array(hu)
    warped, records = [], []
    for a_age, a_sex in pairs:
        ref = build_reference_phantom(a_age, a_sex, ATLAS_VOXEL_MM)
        mats = {k: e.tissue for k, e in ref.organs.items()}
        atlas_ct = render_ct(ref.labels, mats, kvp)
        labels = ref.labels
        rec = {"atlas": f"{a_age}:{a_sex}", "voxel_mm": ATLAS_VOXEL_MM}
        body = np.nonzero((np.asarray(atlas_ct.array) > -500).any(axis=(1, 2)))[0]
        atlas_len = (body[-1] - body[0] + 1) * atlas_ct.spacing_mm[0]
        ct_len = ct.shape[0] * ct.spacing_mm[0]
        if ct_len < 0.9 * atlas_len:
            za = z_alignment(patient, atlas_ct)
            z0 = za["atlas_z_of_first_slice_mm"] - margin_mm
            z1 = za["atlas_z_of_first_slice_mm"] + za["patient_extent_mm"] + margin_mm
            zs = np.array([atlas_ct.index_to_world([float(k), 0, 0])[2] for k in range(atlas_ct.shape[0])])
            ks = np.nonzero((zs >= z0) & (zs <= z1))[0]
            lo, hi = np.array([ks.min(), 0, 0]), np.array([ks.max() + 1, atlas_ct.shape[1], atlas_ct.shape[2]])
            atlas_ct, labels = atlas_ct.crop(lo, hi), labels.crop(lo, hi)
            rec["z_alignment"] = za
        if not quiet:
            print(f"[atlas] registering the {a_age} {a_sex} reference phantom ({deformable})", flush=True)
        za = rec.get("z_alignment")
        reg = register(patient, atlas_ct, deformable=deformable, seed=seed,
                       atlas_z_of_first_slice_mm=za["atlas_z_of_first_slice_mm"] if za else None)
        lab = warp_labels(labels, reg, patient)
        write_image(lab.with_array(np.asarray(lab.array).astype(np.int16)), out / f"atlas_{a_age}_{a_sex}.nii.gz")
        warped.append(lab)
        rec.update(reg.report)
        records.append(rec)
        if not quiet:
            r = reg.report
            print(f"[atlas]   MI {r['mi_initial']:.3f} -> {r['mi_affine']:.3f} (affine); Jacobian "
                  f"{r.get('jacobian_min', 1):.2f}-{r.get('jacobian_max', 1):.2f}, folding "
                  f"{r.get('folding_fraction', 0):.2%}; {r['seconds']:.0f} s", flush=True)
    fused = fuse_labels(warped, fusion)
    arr = np.asarray(fused.array).astype(np.int16)
    if not np.any(arr > 0):
        raise AtlasRunError("the registered atlases hold no organ inside the CT: is it a CT of a body, in HU?")
    write_image(ct.with_array(arr), out / "labels.nii.gz")
    write_text_atomic(out / "label_table.csv", _table_csv())
    from phantoms.stylized import LABELS

    ids, counts = np.unique(arr, return_counts=True)
    vox_cm3 = float(np.prod(ct.spacing_mm)) / 1000.0
    result = {"ct": str(ct_path), "atlases": records, "fusion": fusion if len(warped) > 1 else "single atlas",
              "organ_volumes_cm3": {LABELS[int(i)].name: float(c) * vox_cm3 for i, c in zip(ids, counts)
                                    if i and int(i) in LABELS},
              "files": {"labels": str(out / "labels.nii.gz"), "label_table": str(out / "label_table.csv")},
              "wall_time_s": time.perf_counter() - t0}
    cache.save(result)
    return result
