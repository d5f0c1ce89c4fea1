"""Voxel phantoms from a CT image and (optionally) an organ segmentation.

What it is for
--------------
A patient's CT gives the anatomy; the dose engine needs, for every voxel, a material
(elemental mass fractions) and a mass density, and, for every organ, a label to tally.
:func:`phantom_from_ct` builds that phantom:

* voxels with an organ label get the organ's tissue from the age-aware library
  (:mod:`phantoms.tissues`) at the tissue's nominal density;
* voxels without a label (label 0, or every voxel with ``assign_all_from_hu=True``) get
  their material from the CT number by the stoichiometric calibration of Schneider,
  Bortfeld & Schlegel (2000), below.

The Schneider (2000) calibration
--------------------------------
W. Schneider, T. Bortfeld, W. Schlegel, *Phys. Med. Biol.* 45 (2000) 459–478, derived
from 71 human tissues of known composition:

* **Density**: a piecewise-linear relation ρ(H) (g/cm³) with separate lines for air–lung,
  adipose tissue, soft tissue and skeletal tissue (marrow–bone mixtures). Between the knots
  of ``data/schneider2000_hu_bins.csv`` ρ is linear; below the first knot (-1000 HU) and above
  the last (3000 HU) it is constant. It drops at 100 → 101 HU (1.1199 → 1.0762 g/cm³)
  where the soft-tissue line ends and the skeletal line begins, as published.
* **Composition**: 24 HU bins (air, lung, five adipose tissue / adrenal gland / small
  intestine mixtures, soft tissue, connective tissue, 15 marrow–bone mixtures), each with
  constant elemental weights. Bin ``b`` holds ``hu_lower[b] <= H < hu_lower[b+1]``; the first
  bin also takes every lower H, the last every higher H. Metal implants and dental amalgam
  (which GATE appends to the table) are not tissues of the paper and are not modelled.

The numbers and where they were copied from are in the CSV header and in
``data/SOURCES.md``.

Labels
------
Organ labels are the segmentation's ids (1 … 999). Voxels whose material comes from the CT
number get the label ``HU_LABEL_OFFSET + b`` (1000 + bin number), so the engine tallies
them as 24 extra "organs" and every output label has exactly one material row.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from phantoms.resample import export_phantom
from phantoms.tissues import AGES, DATA_DIR, Tissue, TissueError, tissue, tissue_names
from pipeline.image import ImageError, Volume, read_image

__all__ = ["CTPhantomError", "HU_LABEL_OFFSET", "SCHNEIDER_TABLE", "SchneiderBin", "HUCalibration",
           "schneider_calibration", "hu_to_density", "hu_to_materials", "read_label_map_table", "phantom_from_ct"]

#: HU-derived voxels get label ``HU_LABEL_OFFSET + bin``; organ labels must be below it.
HU_LABEL_OFFSET = 1000
#: ``label_map_path`` value that reads the label map as TotalSegmentator's "total" classes
#: (:mod:`phantoms.totalsegmentator`).
TOTALSEGMENTATOR = "totalsegmentator"
#: The calibration table shipped with digipat.
SCHNEIDER_TABLE = DATA_DIR / "schneider2000_hu_bins.csv"

_ELEMENTS = ("H", "C", "N", "O", "Na", "Mg", "P", "S", "Cl", "Ar", "K", "Ca")
_SOURCE = ("Schneider, Bortfeld & Schlegel, Phys. Med. Biol. 45 (2000) 459 (HU bins and rho(HU) as in "
           "GATE Schneider2000MaterialsTable.txt / Schneider2000DensitiesTable.txt)")
#: Width (HU) given to the open-ended first and last bins when a nominal density is needed.
_OPEN_BIN_WIDTH_HU = {"first": 50.0, "last": 100.0}


class CTPhantomError(ValueError):
    """Invalid input to the CT phantom builder (the message names the parameter and what to do)."""


@dataclass(frozen=True)
class SchneiderBin:
    """One HU bin of the calibration.

    Attributes
    ----------
    index : int
        Bin number (0 = air … 23 = densest marrow–bone mixture).
    name : str
        E.g. ``"lung"``, ``"soft_tissue"``, ``"marrow_bone_07"``.
    hu_lower, hu_upper : float
        The bin holds ``hu_lower <= H < hu_upper`` (HU); ``-inf`` / ``inf`` for the open ends.
    mass_fractions : dict of str to float
        Elemental mass fractions (sum 1).
    """

    index: int
    name: str
    hu_lower: float
    hu_upper: float
    mass_fractions: dict


@dataclass(frozen=True)
class HUCalibration:
    """A HU → (density, composition) calibration: bins plus density knots.

    Attributes
    ----------
    bins : tuple of SchneiderBin
        In increasing HU.
    knot_hu : ndarray
        HU of the density knots (non-decreasing).
    knot_density_g_cm3 : ndarray
        Density (g/cm³) at the knots.
    source : str
        Where the numbers come from.
    """

    bins: tuple
    knot_hu: np.ndarray
    knot_density_g_cm3: np.ndarray
    source: str

    def density(self, hu) -> np.ndarray:
        """Mass density (g/cm³, float64) at CT numbers ``hu`` (piecewise linear, clamped outside the knots)."""
        return np.interp(np.asarray(hu, dtype=np.float64), self.knot_hu, self.knot_density_g_cm3)

    def bin_index(self, hu) -> np.ndarray:
        """Bin number (int32) of CT numbers ``hu``."""
        lowers = np.array([b.hu_lower for b in self.bins[1:]])
        return np.searchsorted(lowers, np.asarray(hu, dtype=np.float64), side="right").astype(np.int32)


def _read_calibration(path: Path) -> HUCalibration:
    if not path.is_file():
        raise CTPhantomError(f"calibration table {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    need = ("table", "index", "name", "hu", "density_g_cm3", *(f"{e}_pct" for e in _ELEMENTS))
    if not rows or any(c not in rows[0] for c in need):
        raise CTPhantomError(f"calibration table {str(path)!r} must have columns {list(need)}")
    comp, knots = [], []
    for line, r in enumerate(rows, start=2):
        try:
            if r["table"] == "composition":
                pct = {e: float(r[f"{e}_pct"]) for e in _ELEMENTS}
                comp.append((int(r["index"]), r["name"], float(r["hu"]), pct))
            elif r["table"] == "density":
                knots.append((int(r["index"]), float(r["hu"]), float(r["density_g_cm3"])))
            else:
                raise ValueError(f"table must be 'composition' or 'density', got {r['table']!r}")
        except (TypeError, ValueError) as exc:
            raise CTPhantomError(f"calibration table {str(path)!r} data row {line}: {exc}") from None
    comp.sort()
    knots.sort()
    if not comp or len(knots) < 2:
        raise CTPhantomError(f"calibration table {str(path)!r} needs composition rows and >= 2 density rows")
    lowers = [c[2] for c in comp]
    if any(b <= a for a, b in zip(lowers, lowers[1:])):
        raise CTPhantomError(f"calibration table {str(path)!r}: bin lower edges must increase, got {lowers}")
    khu = np.array([k[1] for k in knots])
    krho = np.array([k[2] for k in knots])
    if np.any(np.diff(khu) <= 0) or np.any(krho <= 0):
        raise CTPhantomError(f"calibration table {str(path)!r}: density knots need increasing HU and density > 0")
    bins = []
    for i, (idx, name, lo, pct) in enumerate(comp):
        total = sum(pct.values())
        if any(v < 0 for v in pct.values()) or abs(total - 100.0) > 0.05:
            raise CTPhantomError(f"calibration table {str(path)!r}: bin {name!r} fractions sum to {total} %, "
                                 "not 100 %")
        fr = {e: v / total for e, v in pct.items() if v > 0}
        hi = lowers[i + 1] if i + 1 < len(comp) else math.inf
        bins.append(SchneiderBin(idx, name, -math.inf if i == 0 else lo, hi, fr))
    return HUCalibration(tuple(bins), khu, krho, _SOURCE if path == SCHNEIDER_TABLE else str(path))


@lru_cache(maxsize=1)
def _default_calibration() -> HUCalibration:
    return _read_calibration(SCHNEIDER_TABLE)


def schneider_calibration(path: str | os.PathLike | None = None) -> HUCalibration:
    """The Schneider (2000) calibration, or one in the same CSV format (a scanner-specific table).

    Parameters
    ----------
    path : str or path-like, optional
        CSV in the format of ``data/schneider2000_hu_bins.csv``; default that file.

    Returns
    -------
    HUCalibration

    Raises
    ------
    CTPhantomError
        Missing file or columns, fractions not summing to 100 %, unordered edges or knots.
    """
    return _default_calibration() if path is None else _read_calibration(Path(path))


def _hu_array(hu_array, name: str = "hu_array") -> np.ndarray:
    try:
        hu = np.asarray(hu_array)
    except (TypeError, ValueError):
        raise CTPhantomError(f"{name} must be a numeric array of CT numbers (HU)") from None
    if hu.dtype == bool or not np.issubdtype(hu.dtype, np.number) or np.iscomplexobj(hu):
        raise CTPhantomError(f"{name} must hold real CT numbers (HU), got dtype {hu.dtype}")
    if hu.size == 0:
        raise CTPhantomError(f"{name} is empty (shape {hu.shape}): give a CT with at least one voxel")
    bad = int(np.count_nonzero(~np.isfinite(hu))) if np.issubdtype(hu.dtype, np.floating) else 0
    if bad:
        raise CTPhantomError(f"{name} has {bad} non-finite voxels (NaN/inf); CT numbers must be finite")
    return hu


def hu_to_density(hu_array, calibration: HUCalibration | None = None) -> np.ndarray:
    """Mass density from CT numbers by the Schneider (2000) relation.

    Parameters
    ----------
    hu_array : array_like
        CT numbers in HU (any shape, finite).
    calibration : HUCalibration, optional
        Default :func:`schneider_calibration`.

    Returns
    -------
    ndarray of float64
        Density in g/cm³, same shape.

    Raises
    ------
    CTPhantomError
        Empty, non-numeric or non-finite input.
    """
    cal = calibration or schneider_calibration()
    return cal.density(_hu_array(hu_array))


def _check_age(age) -> str:
    if age not in AGES:
        raise TissueError(f"age must be one of the supported ages {list(AGES)}, got {age!r}")
    return age


def _bin_tissue(b: SchneiderBin, cal: HUCalibration, age: str) -> Tissue:
    """The bin's material; nominal density = rho at the bin's centre HU."""
    lo = b.hu_lower if math.isfinite(b.hu_lower) else b.hu_upper - _OPEN_BIN_WIDTH_HU["first"]
    hi = b.hu_upper if math.isfinite(b.hu_upper) else b.hu_lower + _OPEN_BIN_WIDTH_HU["last"]
    density_g_cm3 = float(cal.density(0.5 * (lo + hi)))
    span = f"[{b.hu_lower:g}, {b.hu_upper:g}) HU"
    return Tissue(name=f"schneider2000_{b.name}", density_g_cm3=density_g_cm3, mass_fractions=dict(b.mass_fractions),
                  age=age, source=cal.source,
                  note=f"HU bin {b.index} {span}; composition not age dependent")


def hu_to_materials(hu_array, age: str = "adult", calibration: HUCalibration | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[Tissue]]:
    """Material (HU bin) and density of every voxel from its CT number.

    Parameters
    ----------
    hu_array : array_like
        CT numbers in HU (any shape, finite).
    age : str, optional
        One of :data:`phantoms.tissues.AGES` (recorded in the materials; the Schneider
        compositions are not age dependent).
    calibration : HUCalibration, optional
        Default :func:`schneider_calibration`.

    Returns
    -------
    material_index : ndarray of int32
        Bin number per voxel: an index into ``materials``.
    density_g_cm3 : ndarray of float32
        Density per voxel in g/cm³.
    materials : list of Tissue
        One per bin (``materials[b]``); nominal density = ρ at the bin's centre HU (the open
        first / last bins are given widths of 50 / 100 HU for this).

    Raises
    ------
    CTPhantomError
        Empty, non-numeric or non-finite input.
    TissueError
        Unknown age (the message lists the supported ages).
    """
    _check_age(age)
    hu = _hu_array(hu_array)
    cal = calibration or schneider_calibration()
    return (cal.bin_index(hu), cal.density(hu).astype(np.float32),
            [_bin_tissue(b, cal, age) for b in cal.bins])


def read_label_map_table(path: str | os.PathLike) -> dict[int, tuple[str, str]]:
    """Read the label → (organ, tissue) table of a segmentation.

    Parameters
    ----------
    path : str or path-like
        CSV with columns ``label_id, organ, tissue`` (others ignored; ``#`` lines are
        comments). ``label_id`` in ``1 … HU_LABEL_OFFSET-1``; ``tissue`` one of
        :func:`phantoms.tissues.tissue_names`.

    Returns
    -------
    dict of int to (str, str)
        ``{label_id: (organ, tissue)}``.

    Raises
    ------
    TissueError
        Missing file or column, a bad or repeated label id, an empty organ name, or an
        unknown tissue (the message names it, its line, and lists the known tissues).
    """
    p = Path(path)
    if not p.is_file():
        raise TissueError(f"label_map_path {str(p)!r} does not exist (a CSV with columns label_id,organ,tissue)")
    with p.open(newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.lstrip().startswith("#"))
        header = [h.strip() for h in (reader.fieldnames or [])]
        for col in ("label_id", "organ", "tissue"):
            if col not in header:
                raise TissueError(f"label map table {str(p)!r}: missing column {col!r} "
                                  f"(have {header}; need label_id,organ,tissue)")
        known = tissue_names()
        out: dict[int, tuple[str, str]] = {}
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            try:
                label = int(row["label_id"])
            except ValueError:
                raise TissueError(f"label map table {str(p)!r} row {line}: label_id must be an integer, "
                                  f"got {row['label_id']!r}") from None
            if not 1 <= label < HU_LABEL_OFFSET:
                raise TissueError(f"label map table {str(p)!r} row {line}: label_id {label} out of range; organ "
                                  f"labels are 1..{HU_LABEL_OFFSET - 1} (0 = unlabelled, {HU_LABEL_OFFSET}+ are "
                                  "reserved for HU-derived materials)")
            if label in out:
                raise TissueError(f"label map table {str(p)!r} row {line}: label_id {label} appears twice")
            if not row["organ"]:
                raise TissueError(f"label map table {str(p)!r} row {line}: label {label} has an empty organ name")
            if row["tissue"] not in known:
                raise TissueError(f"label map table {str(p)!r} row {line}: unknown tissue {row['tissue']!r} for "
                                  f"label {label} ({row['organ']}); known tissues: {known}")
            out[label] = (row["organ"], row["tissue"])
    if not out:
        raise TissueError(f"label map table {str(p)!r} has no rows")
    return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _same_grid(a: Volume, b: Volume) -> bool:
    return (a.shape == b.shape and np.allclose(a.spacing_mm, b.spacing_mm, rtol=1e-5, atol=1e-4)
            and np.allclose(a.origin_xyz_mm, b.origin_xyz_mm, atol=1e-3)
            and np.allclose(a.direction_xyz, b.direction_xyz, atol=1e-4))


def _read_labels(labels_path, ct: Volume) -> np.ndarray:
    try:
        vol = read_image(labels_path, allow_singleton_axes=True)
    except ImageError as exc:
        raise CTPhantomError(f"labels_path: {exc}") from None
    if not _same_grid(vol, ct):
        raise CTPhantomError(
            f"labels_path {str(labels_path)!r} is not on the CT grid: labels shape {vol.shape}, spacing "
            f"{vol.spacing_mm} mm, origin {vol.origin_xyz_mm} mm vs CT shape {ct.shape}, spacing {ct.spacing_mm} mm, "
            f"origin {ct.origin_xyz_mm} mm. Resample the label map onto the CT grid (nearest neighbour) first.")
    arr = np.asarray(vol.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise CTPhantomError(f"labels_path {str(labels_path)!r} must hold integer labels, found non-integer "
                                 f"values (dtype {arr.dtype})")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise CTPhantomError(f"labels_path {str(labels_path)!r}: labels must be >= 0, found {int(arr.min())}")
    if arr.max() >= HU_LABEL_OFFSET:
        raise CTPhantomError(f"labels_path {str(labels_path)!r}: label {int(arr.max())} is in the range reserved "
                             f"for HU-derived materials ({HU_LABEL_OFFSET}+); renumber organs to "
                             f"1..{HU_LABEL_OFFSET - 1}")
    return arr


def phantom_from_ct(ct_path, out_dir, age, labels_path=None, label_map_path=None,
                    assign_all_from_hu=False, labels_transform=None) -> dict:
    """Build a voxel phantom from a CT and an optional organ label map, and write it.

    Parameters
    ----------
    ct_path : str or path-like
        3-D CT in HU: NIfTI, NRRD, MHA/MHD or a DICOM series folder (:func:`pipeline.image.read_image`).
    out_dir : str or path-like
        Output folder (created); the files are listed under Returns.
    age : str
        One of :data:`phantoms.tissues.AGES`: selects the tissue compositions of labelled organs.
    labels_path : str or path-like, optional
        Integer organ label map on exactly the CT grid (0 = unlabelled, organs 1..999).
    label_map_path : str or path-like, optional
        Required with ``labels_path``: CSV ``label_id,organ,tissue`` (:func:`read_label_map_table`),
        or ``"totalsegmentator"``: the labels are TotalSegmentator's "total" classes, mapped to
        dosimetry organs by the shipped table (:mod:`phantoms.totalsegmentator`: lobes to lungs,
        hollow organs to walls with CT-number contents, bones to the spongiosa of their marrow
        site, lungs and bone with densities from the CT number).
    assign_all_from_hu : bool, optional
        If True every voxel's density comes from its CT number; labelled voxels keep their
        organ label and tissue composition (one material row per label), unlabelled voxels get
        the Schneider bin material. If False (default) labelled voxels get their tissue's
        nominal density.
    labels_transform : callable, optional
        ``f(organ_labels, table) -> organ_labels``: changes the organ label map (0 =
        unlabelled, else a dosimetry organ id of ``table``, ``{id: (organ, tissue)}``) before
        the materials are assigned, e.g. a contour offset of some organs
        (:func:`phantoms.perturb_labels.offset_organs`); it must keep the grid and may only
        use ids of ``table`` (and 0).

    Returns
    -------
    dict
        ``out_dir``, ``files`` (``labels``, ``density``, ``materials``, ``organs`` → path), ``age``,
        ``assign_all_from_hu``, grid (``shape_zyx``, ``spacing_mm``, ``origin_xyz_mm``), ``n_voxels``,
        ``n_voxels_from_hu`` (voxels whose *material* came from the CT number),
        ``hu_min`` / ``hu_max``, ``n_voxels_below_calibration`` / ``n_voxels_above_calibration``
        (HU outside the density knots, where the density is clamped), ``total_mass_g``,
        ``organs`` (per output label: ``label_id, name, tissue, kind ('organ' or 'hu_bin'), n_voxels,
        volume_cm3, mass_g, mean_density_g_cm3``), ``table_labels_not_in_image`` and ``coverage``
        (TotalSegmentator maps: which ICRP 103 tissues the CT holds whole, cut off or not at all,
        :func:`phantoms.totalsegmentator.coverage`; else None).

    Notes
    -----
    Written atomically into ``out_dir`` (:func:`phantoms.resample.export_phantom`):
    ``labels.nii.gz`` (organ labels; HU-derived voxels ``HU_LABEL_OFFSET + bin``),
    ``density.nii.gz`` (float32 g/cm³), ``materials.csv`` (engine format, one row per label,
    density = the label's mean voxel density so the label's mass is right even without the
    density map) and ``organs.json``.

    Raises
    ------
    TissueError
        Unsupported age (lists the supported ages); a label map table problem (unknown tissue
        with the known names, bad or repeated label id); a label in the image without a row
        in the table (names the label).
    CTPhantomError
        Unreadable, 2-D, empty or non-finite CT; label map on another grid, non-integer,
        negative or with ids >= 1000; ``labels_path`` without ``label_map_path`` or the reverse.
    """
    _check_age(age)
    if (labels_path is None) != (label_map_path is None):
        given, missing = ("labels_path", "label_map_path") if labels_path is not None else \
            ("label_map_path", "labels_path")
        raise CTPhantomError(f"{given} was given without {missing}: an organ label map needs its label table "
                             "(CSV label_id,organ,tissue) and the reverse")
    if not isinstance(assign_all_from_hu, (bool, np.bool_)):
        raise CTPhantomError(f"assign_all_from_hu must be True or False, got {assign_all_from_hu!r}")
    try:
        ct = read_image(ct_path)
    except ImageError as exc:
        raise CTPhantomError(f"ct_path: {exc}") from None
    hu = _hu_array(ct.array, f"CT {str(ct_path)!r}")
    cal = schneider_calibration()
    bins = cal.bin_index(hu)
    rho_hu = cal.density(hu)

    table: dict[int, tuple[str, str]] = {}
    density_from_hu: set[int] = set()
    ts = None  # a TotalSegmentator map, turned into dosimetry organs
    if labels_path is not None and str(label_map_path).lower() == TOTALSEGMENTATOR:
        from phantoms.totalsegmentator import organ_labels

        ts = organ_labels(_read_labels(labels_path, ct), ct.spacing_mm)
        organ_lab, table, density_from_hu = ts.labels.astype(np.int64), dict(ts.organs), set(ts.density_from_hu)
        present = sorted(table)
    elif labels_path is not None:
        organ_lab = _read_labels(labels_path, ct)
        table = read_label_map_table(label_map_path)
        present = [int(v) for v in np.unique(organ_lab) if v != 0]
        missing = [v for v in present if v not in table]
        if missing:
            raise TissueError(f"labels {missing[:20]} are in labels_path {str(labels_path)!r} but have no row in "
                              f"label_map_path {str(label_map_path)!r} (it has label ids {sorted(table)[:30]})")
    else:
        organ_lab = np.zeros(hu.shape, dtype=np.int64)
        present = []
    if labels_transform is not None:
        new = np.asarray(labels_transform(organ_lab, dict(table)))
        if new.shape != organ_lab.shape:
            raise CTPhantomError(f"labels_transform changed the grid {organ_lab.shape} to {new.shape}")
        unknown = sorted(set(np.unique(new).tolist()) - set(table) - {0})
        if unknown:
            raise CTPhantomError(f"labels_transform put label ids {unknown[:10]} that the table does not have")
        organ_lab = new.astype(np.int64)
        present = sorted(set(np.unique(organ_lab).tolist()) - {0}) if ts is None else present

    labelled = organ_lab > 0
    out_lab = np.where(labelled, organ_lab, HU_LABEL_OFFSET + bins.astype(np.int64))
    materials: dict[int, Tissue] = {}
    info: dict[int, dict] = {}
    if assign_all_from_hu:
        density = rho_hu
    else:
        lut = np.zeros(HU_LABEL_OFFSET, dtype=np.float64)
        hu_density = np.zeros(HU_LABEL_OFFSET, dtype=bool)
        for L in present:
            lut[L] = tissue(table[L][1], age).density_g_cm3
            hu_density[L] = L in density_from_hu
        density = np.where(labelled & ~hu_density[organ_lab], lut[organ_lab], rho_hu)
    for L in present:
        organ, tname = table[L]
        materials[L] = tissue(tname, age)
        info[L] = {"name": organ, "kind": "organ"}
    for b in np.unique(bins[~labelled]).tolist():
        L = HU_LABEL_OFFSET + int(b)
        materials[L] = _bin_tissue(cal.bins[b], cal, age)
        info[L] = {"name": f"hu_{cal.bins[b].name}", "kind": "hu_bin",
                   "hu_range": [_finite_or_none(cal.bins[b].hu_lower), _finite_or_none(cal.bins[b].hu_upper)]}

    vol = Volume(out_lab.astype(np.int32), ct.spacing_mm, ct.origin_xyz_mm, ct.direction_xyz.copy())
    n_low = int(np.count_nonzero(hu < cal.knot_hu[0]))
    n_high = int(np.count_nonzero(hu > cal.knot_hu[-1]))
    meta = {"age": age, "assign_all_from_hu": bool(assign_all_from_hu), "ct_path": str(ct_path),
            "labels_path": None if labels_path is None else str(labels_path),
            "label_map_path": None if label_map_path is None else str(label_map_path),
            "hu_label_offset": HU_LABEL_OFFSET, "hu_calibration": cal.source}
    cover = None
    if ts is not None:
        from phantoms.totalsegmentator import TOTALSEGMENTATOR_TABLE, coverage

        cover = coverage(organ_lab, table, ts.icrp103)
        for L in present:
            info[L].update(icrp103_tissue=ts.icrp103.get(L), density_from="ct_number" if L in density_from_hu
                           else "tissue", cut_by=cover["organs"][table[L][0]]["cut_by"])
        meta.update(label_map=TOTALSEGMENTATOR, class_table=str(TOTALSEGMENTATOR_TABLE.name),
                    totalsegmentator_classes=ts.classes, hollow_contents_voxels=ts.contents_voxels,
                    coverage=cover)
    exported = export_phantom(vol, density, materials, out_dir, label_info=info, metadata=meta)
    return {
        "out_dir": str(Path(out_dir)),
        "files": exported["files"],
        "age": age,
        "assign_all_from_hu": bool(assign_all_from_hu),
        "shape_zyx": exported["shape_zyx"],
        "spacing_mm": exported["spacing_mm"],
        "origin_xyz_mm": exported["origin_xyz_mm"],
        "n_voxels": int(hu.size),
        "n_voxels_from_hu": int(np.count_nonzero(~labelled)),
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
        "n_voxels_below_calibration": n_low,
        "n_voxels_above_calibration": n_high,
        "total_mass_g": exported["total_mass_g"],
        "organs": exported["organs"],
        "table_labels_not_in_image": sorted(set(table) - set(present)),
        "coverage": cover,
    }

