"""The dose path of a sensitivity study on a real patient's CT: segmentation method and contour errors → organ dose.

A study whose ``[base]`` names a CT (``ct = ...``) scans that patient instead of a stylised
phantom (:mod:`workflows.study.dose_cases`); its cases differ in how the organs were
segmented::

    [base]
    ct = "example_ct.nii.gz"        # the patient's CT in HU (NIfTI, NRRD, MHA, DICOM folder)
    labels = "seg.nii.gz"           # optional: the organ segmentation at hand, on the CT grid
    label_map = "totalsegmentator"  # its label table: "totalsegmentator" or a CSV label_id,organ,tissue
    age = "adult"                   # tissue compositions and the atlas phantom (newborn ... adult)
    sex = "male"
    protocol = "abdomen.toml"       # CT protocol (workflows.dose.protocol)
    z_start_mm = 96.0               # optional scan range (focal-spot z, world mm); default: the CT's extent
    z_end_mm = 425.0
    isocentre_mm = "body"           # or [x, y, z]: the rotation axis (default: the body's centre)
    histories = 1000000             # photons per case; ctdi_histories, batches, seed, threads as for dose
    organs = ["liver", "kidneys"]   # QoI: ICRP 103 tissues (default: those the nominal segmentation holds)
    perturbed_organs = ["liver"]    # tissues moved by organ_offset_mm (default: the solid QoI organs)

    [parameters.organ_labels]
    values = ["atlas", "atlas-multi"]  # the nominal ("given" when labels are given) is always run
    origin = "segmentation method: TotalSegmentator against atlas registration"
    [parameters.organ_offset_mm]
    low = -3.0
    high = 3.0

Parameters (:data:`CT_PARAMETERS`):

``organ_labels`` (categorical; one-at-a-time only)
    Where the organ label map comes from: ``given`` (``[base] labels`` with its
    ``label_map``), ``atlas`` (the age- and sex-matched reference phantom registered to the
    CT, affine then diffeomorphic demons: :func:`workflows.segment.atlas.atlas_segment`),
    ``atlas-bspline`` (the same with a B-spline), ``atlas-multi`` (that atlas, the other
    sex's and the next younger age's, fused by STAPLE). Voxels outside every organ take
    their tissue from the CT number (:func:`phantoms.from_ct.phantom_from_ct`). Each atlas
    segmentation is computed once per study and cached in ``OUT/dose_base/atlas/<choice>``.
``organ_offset_mm``
    The outer contour of each organ of the ``perturbed_organs`` tissues moves along its
    normal (:func:`phantoms.perturb_labels.offset_organs`) on whichever label map the case
    uses; gained voxels come only from unlabelled voxels (and the atlas's soft tissue),
    lost voxels become unlabelled (tissue from the CT number).

QoI. Organ doses are those of ICRP 103 tissues (``organ_dose_mGy.liver``,
``organ_dose_mGy.lung``, ``organ_dose_mGy.red_marrow``, ...): every label of a tissue
combined mass-weighted (:func:`workflows.dose.effective_dose.effective_dose`), so that label
maps with different organ names (TotalSegmentator's lobes and vertebrae, the reference
phantom's lungs and marrow) compare. A tissue a case's labels do not hold has no value (a
warning in its results). Each case also reports, per QoI tissue, its mass and the Dice
overlap with the nominal case's labels: the segmentation difference behind the dose
difference.

The scan, the isocentre and the CTDI normalisation are computed once (:func:`prepare_ct_base`)
and every case uses the same seed on the same grid, so dose differences between cases are
common-random-number differences.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from workflows.common import SCHEMA_VERSION, ResultCache, hash_file, hash_params, provenance
from workflows.toml_checks import Checks

__all__ = ["CT_PARAMETERS", "ORGAN_LABEL_CHOICES", "CT_DEFAULT_ORGANS", "parse_ct_base", "prepare_ct_base",
           "run_ct_case"]

#: Where a case's organ labels come from: choice -> atlas settings (None: the base's own labels).
ORGAN_LABEL_CHOICES: dict[str, dict | None] = {
    "given": None,
    "atlas": {"deformable": "demons", "fusion": "majority", "multi": False},
    "atlas-bspline": {"deformable": "bspline", "fusion": "majority", "multi": False},
    "atlas-multi": {"deformable": "demons", "fusion": "staple", "multi": True},
}

#: The parameters of a CT base (the study runner's contract).
CT_PARAMETERS: dict[str, dict] = {
    "organ_offset_mm": {
        "unit": "mm", "nominal": 0.0,
        "description": "normal offset of the outer contour of the organs of each tissue in [base] perturbed_organs "
                       "(+ grows), on the case's label map; gained voxels come from unlabelled tissue, lost voxels "
                       "take their tissue from the CT number"},
    "organ_labels": {
        "unit": "", "nominal": None, "categorical": True, "choices": tuple(ORGAN_LABEL_CHOICES),
        "description": "source of the organ label map: given ([base] labels), atlas (registered reference "
                       "phantom, demons), atlas-bspline, atlas-multi (three atlases fused by STAPLE)"},
}

#: Default QoI tissues (those the nominal labels hold are kept).
CT_DEFAULT_ORGANS: tuple[str, ...] = ("liver", "lung", "stomach", "colon", "red_marrow", "kidneys", "spleen",
                                      "pancreas", "gallbladder", "adrenals", "small_intestine", "heart",
                                      "oesophagus", "bladder", "thyroid", "brain", "breast")
#: Tissues that are not one contour (organ_offset_mm cannot move them).
_NOT_CONTOURS = ("red_marrow", "bone_surface", "skin", "muscle", "remainder", "lymphatic_nodes",
                 "extrathoracic_region", "oral_mucosa")
_SOLID = ("liver", "kidneys", "spleen", "pancreas", "adrenals", "thyroid", "brain", "lung")
_CT_KEYS = ("ct", "labels", "label_map", "age", "sex", "protocol", "z_start_mm", "z_end_mm", "isocentre_mm",
            "histories", "ctdi_histories", "batches", "seed", "threads", "organs", "perturbed_organs")
CT_DEFAULTS: dict[str, Any] = {"age": "adult", "sex": "male", "histories": 1_000_000, "ctdi_histories": 1_000_000,
                               "batches": 10, "seed": 1, "threads": None, "isocentre_mm": "body"}
TOTALSEGMENTATOR = "totalsegmentator"


class CTCaseError(ValueError):
    """A CT-study case that cannot run (the message names the parameter and what to do)."""


# ----------------------------------------------------------------------------- tissues
def valid_tissues(sex: str) -> list[str]:
    """ICRP 103 tissue names (w_T and remainder tissues) a CT study's ``organs`` may name."""
    from workflows.dose.effective_dose import remainder_tissues, tissue_weighting_factors

    return [t for t in tissue_weighting_factors() if t != "remainder"] + \
        [t for t in remainder_tissues(sex) if t not in tissue_weighting_factors()]


def label_tissues(labels_path, label_map: str) -> set[str]:
    """ICRP 103 tissues a label map holds (TotalSegmentator classes or a CSV table's organ names)."""
    from phantoms.from_ct import read_label_map_table
    from pipeline.image import read_image
    from workflows.dose.effective_dose import icrp_tissue

    ids = set(np.unique(np.asarray(read_image(labels_path).array)).astype(int).tolist()) - {0}
    if str(label_map).lower() == TOTALSEGMENTATOR:
        from phantoms.totalsegmentator import read_class_table

        table = read_class_table()
        names = {i: table[i].organ for i in ids if i in table}
        out = {table[i].icrp103 for i in ids if i in table and table[i].icrp103}
    else:
        table = read_label_map_table(label_map)
        names = {i: table[i][0] for i in ids if i in table}
        out = set()
    return out | {t for t in (icrp_tissue(n) for n in names.values()) if t}


# ----------------------------------------------------------------------------- [base]
def _path(error_cls, key: str, v, base_dir: Path, what: str) -> str:
    if not isinstance(v, str):
        raise error_cls(f"[base] {key} must be a path (string) to {what}, got {v!r}")
    p = Path(v)
    p = (p if p.is_absolute() else Path(base_dir) / p).resolve()
    if not p.exists():
        raise error_cls(f"[base] {key} {str(p)!r} does not exist (give {what})")
    return str(p)


def parse_ct_base(table: Mapping, base_dir: Path, error_cls: type[Exception], default_protocol: Path) -> dict:
    """Validate a CT study's ``[base]`` (keys: module docstring); returns it JSON-able with
    absolute paths, ``kind = "ct"`` and ``nominal_labels`` (``given`` with labels, else ``atlas``)."""
    from phantoms.stylized import SUPPORTED_AGES
    from workflows.dose.protocol import ProtocolError, read_protocol

    c = Checks(error_cls)
    c.no_unknown("base", table, _CT_KEYS)
    t = {**CT_DEFAULTS, **table}
    ct = _path(error_cls, "ct", t["ct"], base_dir, "the patient's CT in HU")
    labels = label_map = None
    if ("labels" in t) != ("label_map" in t):
        raise error_cls("[base] labels and label_map go together: the segmentation and its label table "
                        "(label_map = \"totalsegmentator\" or a CSV label_id,organ,tissue)")
    if "labels" in t:
        labels = _path(error_cls, "labels", t["labels"], base_dir, "the organ segmentation on the CT's grid")
        label_map = t["label_map"]
        if not isinstance(label_map, str):
            raise error_cls(f"[base] label_map must be \"totalsegmentator\" or a CSV path, got {label_map!r}")
        if label_map.lower() != TOTALSEGMENTATOR:
            label_map = _path(error_cls, "label_map", label_map, base_dir, "a CSV label_id,organ,tissue table")
        else:
            label_map = TOTALSEGMENTATOR
    if t["age"] not in SUPPORTED_AGES:
        raise error_cls(f"[base] age must be one of {list(SUPPORTED_AGES)}, got {t['age']!r}")
    if t["sex"] not in ("male", "female"):
        raise error_cls(f"[base] sex must be one of ['male', 'female'], got {t['sex']!r}")
    proto = _path(error_cls, "protocol", t["protocol"], base_dir, "a CT protocol TOML") if "protocol" in t \
        else str(default_protocol)
    try:
        prot = read_protocol(proto)
    except ProtocolError as exc:
        raise error_cls(f"[base] protocol: {exc}") from None
    if prot.mAs_per_rotation is None:
        raise error_cls(f"[base] protocol {Path(proto).name} gives no tube load: add [tube] mAs_per_rotation so that "
                        "organ doses are in mGy")
    z = {k: (c.number("base", k, t[k]) if t.get(k) is not None else None) for k in ("z_start_mm", "z_end_mm")}
    if (z["z_start_mm"] is None) != (z["z_end_mm"] is None):
        raise error_cls("[base] give both z_start_mm and z_end_mm, or neither (the CT's whole extent)")
    if z["z_start_mm"] is not None and z["z_end_mm"] <= z["z_start_mm"]:
        raise error_cls(f"[base] z_end_mm must be > z_start_mm = {z['z_start_mm']:g} mm, got {z['z_end_mm']:g}")
    iso = t["isocentre_mm"]
    if iso != "body" and not (isinstance(iso, list) and len(iso) == 3):
        raise error_cls(f"[base] isocentre_mm must be \"body\" or [x, y, z] in mm, got {iso!r}")
    iso = iso if iso == "body" else [c.number("base", "isocentre_mm", v) for v in iso]
    batches = c.integer("base", "batches", t["batches"], 2)
    hist = c.integer("base", "histories", t["histories"], batches)
    if hist % batches:
        raise error_cls(f"[base] histories ({hist}) must be a multiple of batches ({batches})")
    valid = valid_tissues(t["sex"])
    held = label_tissues(labels, label_map) if labels else None
    if "organs" in t:
        organs = _tissue_list(error_cls, "organs", t["organs"], valid)
        if held is not None and (miss := [o for o in organs if o not in held]):
            raise error_cls(f"[base] organs: the labels hold no {', '.join(miss)} (they hold: "
                            f"{', '.join(sorted(held))})")
    else:
        organs = [o for o in CT_DEFAULT_ORGANS if held is None or o in held]
        if not organs:
            raise error_cls(f"[base] the labels hold none of the default QoI tissues {list(CT_DEFAULT_ORGANS)}: "
                            "name them in [base] organs")
    movable = [o for o in valid if o not in _NOT_CONTOURS]
    if "perturbed_organs" in t:
        perturbed = _tissue_list(error_cls, "perturbed_organs", t["perturbed_organs"], movable)
    else:
        perturbed = [o for o in organs if o in _SOLID]
    return {"kind": "ct", "ct": ct, "labels": labels, "label_map": label_map, "age": t["age"], "sex": t["sex"],
            "protocol": proto, **z, "isocentre_mm": iso, "histories": hist,
            "ctdi_histories": c.integer("base", "ctdi_histories", t["ctdi_histories"], batches), "batches": batches,
            "seed": c.integer("base", "seed", t["seed"], 0),
            "threads": c.integer("base", "threads", t["threads"], 1) if t.get("threads") is not None else None,
            "organs": organs, "perturbed_organs": perturbed, "nominal_labels": "given" if labels else "atlas"}


def _tissue_list(error_cls, key: str, v, valid: list[str]) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(o, str) for o in v):
        raise error_cls(f"[base] {key} must be a non-empty list of ICRP 103 tissue names, got {v!r} (valid: "
                        f"{', '.join(valid)})")
    bad = [o for o in v if o not in valid]
    if bad:
        raise error_cls(f"[base] {key}: {bad[0]!r} is not an ICRP 103 tissue this study can score (valid: "
                        f"{', '.join(valid)})")
    if len(set(v)) != len(v):
        raise error_cls(f"[base] {key}: {sorted({o for o in v if v.count(o) > 1})[0]!r} is listed twice")
    return list(v)


# ----------------------------------------------------------------------------- label sources
def _atlas_list(age: str, sex: str) -> list[str]:
    """atlas-multi: the other sex at the same age and the next younger age (older for a newborn)."""
    from phantoms.stylized import SUPPORTED_AGES

    i = SUPPORTED_AGES.index(age)
    other = SUPPORTED_AGES[i - 1] if i > 0 else SUPPORTED_AGES[1]
    return [f"{age}:{'female' if sex == 'male' else 'male'}", f"{other}:{sex}"]


def organ_label_source(base: Mapping, choice: str, work: Path, *, quiet: bool = True) -> dict:
    """``{"labels", "label_map", "atlas"}`` of one ``organ_labels`` choice; atlas choices are
    segmented (once: cached in ``work/atlas/<choice>``)."""
    if choice not in ORGAN_LABEL_CHOICES:
        raise CTCaseError(f"organ_labels must be one of {list(ORGAN_LABEL_CHOICES)}, got {choice!r}")
    spec = ORGAN_LABEL_CHOICES[choice]
    if spec is None:
        if not base.get("labels"):
            raise CTCaseError("organ_labels = \"given\" needs [base] labels and label_map (the segmentation at "
                              "hand); without them use an atlas choice")
        return {"labels": base["labels"], "label_map": base["label_map"], "atlas": None}
    from workflows.segment.atlas import atlas_segment

    extra = _atlas_list(base["age"], base["sex"]) if spec["multi"] else None
    seg = atlas_segment(base["ct"], Path(work) / "atlas" / choice, base["age"], base["sex"], atlases=extra,
                        fusion=spec["fusion"], deformable=spec["deformable"], seed=base["seed"], quiet=quiet)
    keep = ("atlas", "mi_initial", "mi_affine", "mi_final", "jacobian_min", "jacobian_max", "folding_fraction",
            "seconds")
    return {"labels": seg["files"]["labels"], "label_map": seg["files"]["label_table"],
            "atlas": {"fusion": seg["fusion"], "deformable": spec["deformable"],
                      "atlases": [{k: a.get(k) for k in keep if k in a} for a in seg["atlases"]]}}


def _offset_transform(tissues: list[str], delta_mm: float, spacing_mm, report: dict):
    """A :func:`phantoms.from_ct.phantom_from_ct` labels_transform moving the organs of ``tissues``."""
    from phantoms.perturb_labels import LabelPerturbationError, offset_organs, organ_groups
    from workflows.dose.effective_dose import icrp_tissue

    def move(lab: np.ndarray, table: dict) -> np.ndarray:
        names = {k: v[0] for k, v in table.items()}
        present = set(np.unique(lab).tolist())
        organs = [n for k, n in names.items() if k in present and icrp_tissue(n) in tissues
                  and not n.endswith("_contents")]
        if not organs:
            report["note"] = f"no organ of {tissues} in this label map: nothing moved"
            return lab
        fill = next((k for k, n in names.items() if n == "soft_tissue"), 0)
        try:
            r = offset_organs(lab, organ_groups(names, organs), delta_mm, spacing_mm=spacing_mm, fill_label=fill,
                              grow_into=tuple(dict.fromkeys((0, fill))), names=names)
        except LabelPerturbationError as exc:
            raise CTCaseError(f"organ_offset_mm = {delta_mm:g} mm: {str(exc).replace('delta_mm', 'organ_offset_mm')}"
                              ) from None
        report.update(r.report)
        return r.labels

    return move


# ----------------------------------------------------------------------------- phantoms
def _build(base: Mapping, src: Mapping, out: Path, transform=None) -> tuple:
    """phantom_from_ct into ``out``; returns (result, VoxelPhantom, materials, names, labels Volume)."""
    from phantoms.from_ct import CTPhantomError, phantom_from_ct
    from phantoms.tissues import TissueError
    from workflows.dose.patient import load_phantom

    try:
        built = phantom_from_ct(base["ct"], out, base["age"], labels_path=src["labels"],
                                label_map_path=src["label_map"], labels_transform=transform)
    except (CTPhantomError, TissueError) as exc:
        raise CTCaseError(f"phantom from the CT: {exc}") from None
    f = built["files"]
    phantom, mats, names, vol = load_phantom({"labels": f["labels"], "materials": f["materials"],
                                               "organs": f["organs"]}, out, True)
    return built, phantom, mats, names, vol


def _tissue_summary(built: Mapping) -> dict:
    """ICRP 103 tissue → mass (g) and the label ids of its organs."""
    from workflows.dose.effective_dose import icrp_tissue

    out: dict[str, dict] = {}
    for o in built["organs"]:
        t = icrp_tissue(o["name"]) if o.get("kind") == "organ" else None
        if t:
            r = out.setdefault(t, {"mass_g": 0.0, "label_ids": [], "organs": []})
            r["mass_g"] += float(o["mass_g"])
            r["label_ids"].append(int(o["label_id"]))
            r["organs"].append(o["name"])
    return out


def _scan_range(base: Mapping, ct) -> dict:
    """The base's z range, else the CT's extent (slice edges, world z)."""
    ends = [ct.index_to_world([k, 0.0, 0.0])[2] for k in (-0.5, ct.shape[0] - 0.5)]
    extent = [round(float(min(ends)), 3), round(float(max(ends)), 3)]
    if base.get("z_start_mm") is not None:
        return {"z_start_mm": float(base["z_start_mm"]), "z_end_mm": float(base["z_end_mm"]), "source": "base",
                "ct_extent_mm": extent}
    return {"z_start_mm": extent[0], "z_end_mm": extent[1], "source": "the CT's extent", "ct_extent_mm": extent}


def _base_key(base: Mapping) -> str:
    files = {k: hash_file(base[k]) for k in ("ct", "labels", "protocol") if base.get(k) and Path(base[k]).is_file()}
    if base.get("label_map") and base["label_map"] != TOTALSEGMENTATOR:
        files["label_map"] = hash_file(base["label_map"])
    return hash_params({k: v for k, v in base.items() if k != "threads"}, files)


def prepare_ct_base(base: dict, work_dir: Path, *, quiet: bool = True) -> dict:
    """Once per study: the nominal segmentation and phantom, scan range, isocentre, CTDI normalisation.

    Cached in ``work_dir/prepared.json`` (a rerun with the same base and files returns it).
    Returns ``inputs_sha256, scan, isocentre_xyz_mm, spectrum, ctdi, normalisation,
    nominal_phantom`` (per QoI tissue: mass, label ids; the nominal labels file), ``work_dir``.
    """
    from pipeline.image import read_image
    from workflows.dose.patient import body_isocentre
    from workflows.study.dose_common import ctdi_normalisation, protocol_over, spectrum_json

    work = Path(work_dir)
    key = _base_key(base)
    cache = ResultCache(work / "prepared.json", key)
    if (old := cache.load()) is not None:
        return old
    cache.invalidate()
    t0 = time.perf_counter()
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    ct = read_image(base["ct"])
    scan = _scan_range(base, ct)
    protocol = protocol_over(base, scan)
    say(f"[dose study] nominal organ labels: {base['nominal_labels']}")
    src = organ_label_source(base, base["nominal_labels"], work, quiet=quiet)
    built, _, mats, _, vol = _build(base, src, work / "nominal_phantom")
    iso = body_isocentre(vol, mats) if base["isocentre_mm"] == "body" else list(base["isocentre_mm"])
    ctdi, norm, diameter = ctdi_normalisation(protocol, base, work, quiet)
    prepared = {
        "schema_version": SCHEMA_VERSION, "inputs_sha256": key, "kind": "ct", "scan": scan,
        "isocentre_xyz_mm": [float(v) for v in iso],
        "spectrum": spectrum_json(protocol.spectrum()),
        "ctdi": {k: ctdi.get(k) for k in ("ctdivol_Gy_per_photon", "ctdivol_sigma_Gy_per_photon",
                                          "ctdivol_mGy_per_100mAs", "ctdivol_mGy")},
        "ctdi_phantom_diameter_cm": diameter, "ctdi_json": str(work / "ctdi" / "ctdi.json"),
        "tube_output_source": ctdi["tube_output"].get("source"), "normalisation": norm,
        "nominal_phantom": {"labels": built["files"]["labels"], "source": src,
                            "tissues": _tissue_summary(built), "total_mass_g": built["total_mass_g"]},
        "work_dir": str(work), "wall_time_s": time.perf_counter() - t0,
    }
    cache.save(prepared)
    return prepared


# ----------------------------------------------------------------------------- one case
def _params(params: Mapping | None, base: Mapping) -> dict:
    out: dict[str, Any] = {"organ_offset_mm": 0.0, "organ_labels": base["nominal_labels"]}
    for k, v in (params or {}).items():
        if k not in CT_PARAMETERS:
            raise CTCaseError(f"unknown parameter {k!r} for a study on a CT (valid: {', '.join(CT_PARAMETERS)})")
        if k == "organ_labels":
            if v not in ORGAN_LABEL_CHOICES:
                raise CTCaseError(f"organ_labels must be one of {list(ORGAN_LABEL_CHOICES)}, got {v!r}")
            out[k] = v
        elif isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise CTCaseError(f"{k} must be a finite number of mm, got {v!r}")
        else:
            out[k] = float(v)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    n = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / n if n else None


def _compare(nominal: Mapping, built: Mapping, lab: np.ndarray, organs: list[str]) -> dict:
    """Per QoI tissue: mass against the nominal labels and Dice overlap with them."""
    from pipeline.image import read_image

    nom_lab = np.asarray(read_image(nominal["labels"]).array)
    tis = _tissue_summary(built)
    out = {}
    for t in organs:
        n0, n1 = nominal["tissues"].get(t), tis.get(t)
        m0, m1 = (n0 or {}).get("mass_g"), (n1 or {}).get("mass_g", 0.0)
        d = _dice(np.isin(nom_lab, n0["label_ids"]), np.isin(lab, n1["label_ids"])) if n0 and n1 else None
        out[t] = {"mass_g": m1, "nominal_mass_g": m0, "mass_change_percent": 100.0 * (m1 / m0 - 1) if m0 else None,
                  "dice_vs_nominal": d, "organs": (n1 or {}).get("organs", [])}
    return out


def run_ct_case(base: dict, params: dict, case_dir: Path, *, prepared: dict | None = None, quiet: bool = True,
                figures: bool = False) -> dict:
    """Evaluate one case of a CT study (module docstring) and write ``case_dir/results.json``.

    Returns the same keys as :func:`workflows.study.dose_cases.run_dose_case` (``qoi``,
    ``qoi_sigma``, ``qoi_relative_sigma``, ``perturbation``, ``organs``, ``warnings``,
    ``normalisation``, ...); ``perturbation.organ_labels`` holds the label source (and the
    atlas registration's quality) and, per QoI tissue, the mass and Dice against the nominal
    labels. Raises :class:`CTCaseError` for an unknown or unusable parameter.
    """
    from workflows.dose.figures import plot_dose_overlay
    from workflows.dose.patient import marrow_media
    from workflows.study.dose_common import protocol_over, scan_case

    p = _params(params, base)
    case = Path(case_dir)
    if prepared is None:
        prepared = prepare_ct_base(base, case / "prepared", quiet=quiet)
    key = hash_params({k: v for k, v in base.items() if k != "threads"}, p, prepared["inputs_sha256"],
                      SCHEMA_VERSION)
    cache = ResultCache(case / "results.json", key, artifacts=[case / "dose_map.png"] if figures else [])
    if (old := cache.load()) is not None:
        return old
    cache.invalidate()
    case.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    src = organ_label_source(base, p["organ_labels"], Path(prepared["work_dir"]), quiet=quiet)
    times["segmentation"] = time.perf_counter() - t0
    reports: dict[str, Any] = {}
    transform = None
    if p["organ_offset_mm"] != 0.0 and base["perturbed_organs"]:
        from pipeline.image import read_image

        rep: dict = {}
        transform = _offset_transform(base["perturbed_organs"], p["organ_offset_mm"],
                                      read_image(base["ct"]).spacing_mm, rep)
        reports["organ_offset_mm"] = rep
    t1 = time.perf_counter()
    built, phantom, mats, names, vol = _build(base, src, case / "phantom", transform)
    lab = np.asarray(vol.array)
    reports["organ_labels"] = {"choice": p["organ_labels"], "labels": src["labels"], "label_map": src["label_map"],
                               "atlas": src["atlas"],
                               "tissues": _compare(prepared["nominal_phantom"], built, lab, base["organs"])}
    times["phantom"] = time.perf_counter() - t1
    protocol = protocol_over(base, prepared["scan"])
    if not quiet:
        print(f"[dose case] {case.name}: {base['histories']:.3g} photons, params {p}", flush=True)
    t2 = time.perf_counter()
    res, rows, _, _, eff = scan_case(phantom, mats, names, protocol, base, prepared, CTCaseError,
                                     isocentre_xyz_mm=prepared["isocentre_xyz_mm"],
                                     dose_to=marrow_media(names, base["age"]),
                                     tally="voxels" if figures else "labels")
    times["transport"] = time.perf_counter() - t2
    norm = prepared["normalisation"]
    n_scan, ctdivol = norm["photons_in_scan"], norm["ctdivol_mGy"]
    qoi, sig, warnings = {}, {}, []
    for t in base["organs"]:
        r = eff["tissue_doses"].get(t)
        qoi[f"organ_dose_mGy.{t}"] = r["dose"] if r else None
        sig[f"organ_dose_mGy.{t}"] = r["sigma"] if r else None
        if r is None:
            warnings.append(f"the {p['organ_labels']} labels hold no {t}: no dose for it")
    qoi["effective_dose_mSv"], sig["effective_dose_mSv"] = eff["effective_dose"], eff["effective_dose_sigma"]
    qoi["ctdivol_mGy"], sig["ctdivol_mGy"] = ctdivol, norm.get("ctdivol_sigma_mGy")
    rel = {k: (sig[k] / v if v and sig[k] is not None else None) for k, v in qoi.items()}
    if figures:
        dose_pp, _ = res.dose_Gy_per_photon()
        dmap = np.where(np.isfinite(dose_pp), dose_pp, 0.0) * (n_scan * 1e3 if n_scan is not None else 1.0)
        plot_dose_overlay(lab, dmap, vol.spacing_mm, case / "dose_map.png",
                          dose_unit="mGy" if n_scan is not None else "Gy per photon",
                          title=f"{Path(base['ct']).name}, {protocol.kvp:g} kVp: organ labels {p['organ_labels']}")
    times["total"] = time.perf_counter() - t0
    results = {
        "schema_version": SCHEMA_VERSION, "stage": "dose_case", "inputs_sha256": key, "params": p,
        "qoi": qoi, "qoi_sigma": sig, "qoi_relative_sigma": rel,
        "qoi_sigma_note": "1σ Monte Carlo of this case's scan (batch spread); the CTDI normalisation's relative "
                          "σ (normalisation.relative_sigma) is common to every case and not included",
        "units": {"dose": "mGy" if n_scan is not None else "Gy per photon", "mass": "g", "length": "mm"},
        "perturbation": reports, "warnings": warnings,
        "phantom": {"ct": base["ct"], "age": base["age"], "sex": base["sex"], "shape_zyx": list(lab.shape),
                    "total_mass_g": built["total_mass_g"], "files": built["files"]},
        "organs": rows, "effective_dose_weight_covered": eff["weight_covered"], "effective_dose_detail": eff,
        "scan": {**prepared["scan"], "kvp": protocol.kvp, "pitch": protocol.pitch, "scan_mAs": protocol.scan_mAs,
                 "isocentre_xyz_mm": prepared["isocentre_xyz_mm"], "protocol": base["protocol"]},
        "normalisation": {**norm, "ctdi_json": prepared.get("ctdi_json")},
        "histories": res.histories, "batches": base["batches"], "seed": base["seed"],
        "histories_per_second": res.histories_per_second, "energy_balance_relative_error": res.energy_balance_error,
        "timings_s": times, "provenance": provenance(seed=base["seed"], inputs_sha256=key),
    }
    json.dumps(results)  # fail before writing if anything is not JSON-able
    cache.save(results)
    return results
