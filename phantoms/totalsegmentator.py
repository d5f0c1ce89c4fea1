"""TotalSegmentator label maps as dosimetry organs (ICRP 103/110), and what a CT holds of them.

TotalSegmentator's "total" task labels 117 structures of a CT (Wasserthal et al., *Radiology:
Artificial Intelligence* 5 (2023) e230024). Dosimetry needs other units: the ICRP 103 tissues
(lungs, not five lobes; the colon's wall, not its gas; red marrow, not vertebra L3).
``data/totalsegmentator_total_icrp.csv`` maps each class to a phantom organ, its tissue of
:mod:`phantoms.tissues`, where its density comes from, and its structure:

* **solid** organs take the whole mask (lobes merge into ``lungs``, left and right kidneys into
  ``kidneys``);
* **hollow** organs (stomach, small bowel, duodenum, colon, gallbladder, urinary bladder): the
  organ is a wall ``wall_mm`` thick inside the mask's surface (Euclidean distance to the
  outside, spacing-aware, at least one voxel); the interior is contents, whose material comes
  from its CT number (gas, fluid, food), as for unlabelled voxels;
* **bone**: every vertebra, rib, hip bone, ... becomes the spongiosa of its marrow site
  (``spongiosa_ribs``, ``spongiosa_lumbar_vertebrae``, ...), density from the CT number; their
  mass-weighted mean dose stands in for red marrow (the marrow-bone mixture of the site, the
  usual approximation when bone marrow is not resolved).

Voxels outside every mask keep the material of their CT number (:mod:`phantoms.from_ct`).

:func:`coverage` says, per ICRP 103 tissue, whether the CT holds it whole, holds it cut by the
scan's ends or the field of view (any voxel of the organ on the first or last slice, or on a
lateral face of the image), or does not hold it at all.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from phantoms.tissues import DATA_DIR, TissueError, remainder_tissues, tissue_names, tissue_weighting_factors

__all__ = ["TOTALSEGMENTATOR_TABLE", "ClassMapping", "OrganLabels", "read_class_table", "organ_labels", "coverage"]

TOTALSEGMENTATOR_TABLE = DATA_DIR / "totalsegmentator_total_icrp.csv"
#: Tissue entry that keeps the voxels' CT-number material (no organ).
FROM_HU = "from_hu"
_STRUCTURES = ("solid", "hollow", "bone")


@dataclass(frozen=True)
class ClassMapping:
    """One TotalSegmentator class and the dosimetry organ it becomes."""

    label_id: int
    ts_name: str
    organ: str
    tissue: str
    density: str  # "nominal" | "hu"
    structure: str  # "solid" | "hollow" | "bone"
    wall_mm: float | None
    icrp103: str | None


@lru_cache(maxsize=4)
def _read(path: str) -> dict[int, ClassMapping]:
    p = Path(path)
    if not p.is_file():
        raise TissueError(f"class table {str(p)!r} does not exist")
    known = set(tissue_names()) | {FROM_HU}
    out: dict[int, ClassMapping] = {}
    with p.open(newline="") as fh:
        for line, r in enumerate(csv.DictReader(x for x in fh if not x.lstrip().startswith("#")), start=2):
            r = {k: (v or "").strip() for k, v in r.items()}
            lid = int(r["label_id"])
            if r["tissue"] not in known:
                raise TissueError(f"class table {str(p)!r} row {line}: unknown tissue {r['tissue']!r}")
            if r["structure"] not in _STRUCTURES or r["density"] not in ("nominal", "hu"):
                raise TissueError(f"class table {str(p)!r} row {line}: structure must be one of {_STRUCTURES} and "
                                  f"density nominal or hu, got {r['structure']!r}, {r['density']!r}")
            if r["structure"] == "hollow" and not r["wall_mm"]:
                raise TissueError(f"class table {str(p)!r} row {line}: a hollow organ needs wall_mm")
            out[lid] = ClassMapping(lid, r["ts_name"], r["organ"], r["tissue"], r["density"], r["structure"],
                                    float(r["wall_mm"]) if r["wall_mm"] else None, r.get("icrp103") or None)
    return out


def read_class_table(path: str | os.PathLike | None = None) -> dict[int, ClassMapping]:
    """The class table (default: the shipped TotalSegmentator "total" table), by label id."""
    return dict(_read(str(TOTALSEGMENTATOR_TABLE if path is None else path)))


@dataclass
class OrganLabels:
    """Organ labels made from a class map: ``labels`` (0 = no organ: material from the CT number),
    ``organs`` (organ id → (organ name, tissue name)), ``density_from_hu`` (organ ids whose voxel
    densities come from the CT number), ``icrp103`` (organ id → ICRP 103 tissue or None),
    ``classes`` (TotalSegmentator class name → voxels in the map), ``contents_voxels`` (hollow
    organs' interiors, left to the CT number)."""

    labels: np.ndarray
    organs: dict[int, tuple[str, str]]
    density_from_hu: set[int]
    icrp103: dict[int, str | None]
    classes: dict[str, int] = field(default_factory=dict)
    contents_voxels: dict[str, int] = field(default_factory=dict)


def organ_labels(class_map: np.ndarray, spacing_mm, table: dict[int, ClassMapping] | None = None) -> OrganLabels:
    """Turn a TotalSegmentator class map (z, y, x integers) into dosimetry organ labels (module docstring).

    Raises TissueError naming class ids that the table does not know.
    """
    table = read_class_table() if table is None else table
    cm = np.asarray(class_map)
    ids, counts = np.unique(cm, return_counts=True)
    unknown = [int(i) for i in ids if i != 0 and int(i) not in table]
    if unknown:
        raise TissueError(f"class ids {unknown[:20]} are not TotalSegmentator 'total' classes (1..{max(table)}); "
                          "is this a map of another task? Give your own table with --label-map TABLE")
    present = [int(i) for i in ids if i != 0]
    classes = {table[i].ts_name: int(c) for i, c in zip(ids.tolist(), counts.tolist()) if i != 0}
    # organ ids in the table's order of organs (stable between patients)
    order: list[str] = []
    for m in sorted(table.values(), key=lambda m: m.label_id):
        if m.tissue != FROM_HU and m.organ not in order:
            order.append(m.organ)
    organ_id = {o: k + 1 for k, o in enumerate(order)}
    lut = np.zeros(max(table) + 1, np.int32)
    for i in present:
        m = table[i]
        lut[i] = 0 if m.tissue == FROM_HU else organ_id[m.organ]
    labels = lut[cm.astype(np.int64)]
    contents: dict[str, int] = {}
    sp = tuple(float(s) for s in spacing_mm)
    for i in present:
        m = table[i]
        if m.structure != "hollow":
            continue
        mask = cm == i
        depth = ndimage.distance_transform_edt(mask, sampling=sp)  # to the nearest voxel outside the class
        inner = mask & (depth > max(m.wall_mm, min(sp)))
        labels[inner] = 0
        contents[m.ts_name] = int(inner.sum())
    organs, from_hu, icrp = {}, set(), {}
    for i in present:
        m = table[i]
        if m.tissue == FROM_HU:
            continue
        k = organ_id[m.organ]
        if not np.any(labels == k):
            continue
        organs[k] = (m.organ, m.tissue)
        icrp[k] = m.icrp103
        if m.density == "hu":
            from_hu.add(k)
    return OrganLabels(labels.astype(np.int32), organs, from_hu, icrp, classes, contents)


def coverage(labels: np.ndarray, organs: dict[int, tuple[str, str]], icrp103: dict[int, str | None],
             sex: str = "male") -> dict:
    """Which ICRP 103 tissues the CT holds whole, holds cut off, or lacks.

    An organ is *cut* when any of its voxels lies on the first or last slice (the scan's ends)
    or on a lateral face of the image (the field of view). Returns ``{"organs": {name: {"voxels",
    "cut_by": [...]}} , "icrp103": {"whole": [...], "partial": {tissue: [reasons]}, "missing": [...]},
    "note"}``; the ICRP list is the tissues with a weighting factor and the remainder tissues
    of ``sex``.
    """
    lab = np.asarray(labels)
    faces = {"the scan's first slice": lab[0], "the scan's last slice": lab[-1],
             "the field of view": np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(),
                                                 lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])}
    on_face = {k: set(np.unique(v).tolist()) for k, v in faces.items()}
    ids, counts = np.unique(lab, return_counts=True)
    n = dict(zip(ids.tolist(), counts.tolist()))
    per_organ: dict[str, dict] = {}
    per_tissue: dict[str, list[str]] = {}
    for k, (name, _) in sorted(organs.items()):
        cut = [f for f, s in on_face.items() if k in s]
        per_organ[name] = {"voxels": int(n.get(k, 0)), "cut_by": cut, "icrp103": icrp103.get(k)}
        t = icrp103.get(k)
        if t:  # present (the list holds its cuts, empty when whole)
            per_tissue.setdefault(t, []).extend(f"{name} cut by {c}" for c in cut)
    if "red_marrow" in per_tissue and "bone_surface" not in per_tissue:  # (the spongiosa stands in for both)
        per_tissue["bone_surface"] = list(per_tissue["red_marrow"])
    wanted = [t for t in tissue_weighting_factors() if t != "remainder"] + remainder_tissues(sex)
    whole = [t for t in wanted if t in per_tissue and not per_tissue[t]]
    partial = {t: per_tissue[t] for t in wanted if t in per_tissue and per_tissue[t]}
    missing = [t for t in wanted if t not in per_tissue]
    return {"organs": per_organ, "icrp103": {"whole": whole, "partial": partial, "missing": missing},
            "note": "an organ is partial when it reaches the image's first or last slice or a lateral face: its "
                    "mass is then only the part in the CT, and its dose misses the scatter from outside"}
