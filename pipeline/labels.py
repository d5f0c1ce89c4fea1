"""Semantic, instance and panoptic label maps: conversions, a per-segment table, panoptic quality.

What it is for: a segmentation that says *what* each voxel is (a semantic map: one integer
class per voxel) becomes one that also says *which one* (a panoptic map), so that separate
objects of the same class (two kidneys, several nodules, vessel fragments) can be counted,
measured and scored one by one.

Maps (all 3-D integer arrays indexed ``[z, y, x]``, see :mod:`pipeline.image`):

* **semantic**: the class of each voxel; 0 is background / void.
* **panoptic**: ``class * label_divisor + instance`` (default ``label_divisor = 1000``, the
  encoding of the Cityscapes ``*_instanceIds`` files (Cordts et al., CVPR 2016) and the
  ``label_divisor`` of Panoptic-DeepLab (Cheng et al., CVPR 2020)). "Thing" classes
  (countable objects) have instances ``1, 2, ...`` numbered per class; "stuff" classes
  (amorphous regions) keep instance 0, so their panoptic id is ``class * label_divisor``.
  0 is void. Example: class 2, its third object → 2003; stuff class 1 → 1000.
* **instance**: one label per thing object, ``1..N`` over the whole map, numbered in the
  order of the panoptic ids (by class, then instance); stuff and void are 0.

Instances are the connected components of each thing class (Rosenfeld & Pfaltz 1966;
:func:`scipy.ndimage.label`). Connectivity is the classic choice of neighbours among the 26
around a voxel: 6 (faces), 18 (faces and edges) or 26 (faces, edges and vertices).
*Spacing-aware* connectivity (``max_neighbour_distance_mm``) additionally drops every
neighbour whose centre lies farther than that distance in mm (voxel spacing applied per
axis); the 6 face neighbours are always kept, so a structure is never cut between slices.
On a 5 x 0.7 x 0.7 mm grid with 26-connectivity, ``max_neighbour_distance_mm=5`` keeps the
face steps (5 and 0.7 mm) and the in-plane diagonals (0.99 mm) but drops the diagonals that
cross slices (5.05 and 5.10 mm): two vessels that only touch diagonally across a 5 mm slice
gap stay two objects.

Panoptic quality (Kirillov, He, Girshick, Rother & Dollár, "Panoptic Segmentation", CVPR 2019,
Sec. 4 and Eq. 1-2; the reference implementation is ``panopticapi/evaluation.py``):

* a predicted and a true segment of the same class *match* when their IoU is strictly above
  0.5; such a matching is unique (their Theorem 1). Matched pairs are TP, unmatched predicted
  segments FP, unmatched true segments FN;
* ``SQ = sum(IoU of TP) / TP``, ``RQ = TP / (TP + FP/2 + FN/2)``, ``PQ = SQ * RQ``, per class;
* void (label 0 in the truth): voxels of a predicted segment that are void in the truth are
  removed from it before its IoU is computed, and an unmatched predicted segment more than
  half of whose voxels are void in the truth is not counted as FP (Sec. 4.1, "Void labels").
  Label 0 in the prediction is unlabelled (no segment). Crowd / group regions are not modelled;
* a class with no segment in either map has NaN PQ/SQ/RQ and is left out of the averages;
  a class with FP or FN but no TP has SQ = RQ = PQ = 0 (as in ``panopticapi``);
* the overall PQ, SQ and RQ are the unweighted means over classes, for all classes, things
  only and stuff only (Sec. 4, "PQ^Th" and "PQ^St").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from scipy import ndimage

from pipeline.image import Volume

__all__ = [
    "LABEL_DIVISOR",
    "CONNECTIVITIES",
    "MATCH_IOU",
    "LabelError",
    "neighbour_structure",
    "semantic_to_panoptic",
    "instances_to_panoptic",
    "panoptic_to_semantic",
    "panoptic_to_instances",
    "segment_table",
    "ClassPQ",
    "PanopticQuality",
    "panoptic_quality",
]

#: Default ``label_divisor``: panoptic id = class * 1000 + instance (Cityscapes, Panoptic-DeepLab).
LABEL_DIVISOR = 1000

#: Number of neighbours -> the largest number of axes a neighbour offset may step along.
CONNECTIVITIES = {6: 1, 18: 2, 26: 3}

#: Segments match when their IoU is strictly above this (Kirillov et al. 2019, Sec. 4.1).
MATCH_IOU = 0.5

_INT32_MAX = np.iinfo(np.int32).max


class LabelError(ValueError):
    """A label map or parameter that cannot be used (the message names the bad one)."""


# ------------------------------------------------------------------------------ validation
def _as_label_map(a, name: str) -> np.ndarray:
    """``a`` as a non-negative integer 3-D array; whole-valued floats are accepted and converted."""
    arr = np.asarray(a)
    if arr.ndim != 3:
        raise LabelError(f"{name} must be a 3-D array (z, y, x), got {arr.ndim}-D with shape {arr.shape}")
    if arr.size == 0:
        raise LabelError(f"{name} is an empty array (shape {arr.shape})")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise LabelError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            example = arr[bad].flat[0]
            raise LabelError(
                f"{name} is not an integer label map: it holds non-integer values (e.g. {example}, "
                f"{int(bad.sum())} voxels of dtype {arr.dtype}); give a segmentation (whole-number labels), "
                "not an intensity or probability image")
        if arr.size and np.abs(arr).max() > _INT32_MAX:
            raise LabelError(f"{name} holds labels above {_INT32_MAX}")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise LabelError(f"{name} holds negative labels (minimum {arr.min()}): labels must be 0 (void) or positive")
    return arr


def _check_divisor(label_divisor) -> int:
    if isinstance(label_divisor, bool) or not isinstance(label_divisor, (int, np.integer)) or label_divisor < 2:
        raise LabelError(f"label_divisor must be an integer of at least 2, got {label_divisor!r}")
    return int(label_divisor)


def _check_classes(things, name: str = "things") -> tuple[int, ...]:
    if things is None:
        raise LabelError(f"{name} must be given (a list of class labels, possibly empty)")
    if isinstance(things, (int, np.integer)):
        things = [things]
    out = []
    for t in things:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise LabelError(f"{name} must be positive integer class labels (0 is void), got {list(things)!r}")
        out.append(int(t))
    return tuple(sorted(set(out)))


def _check_spacing(spacing_mm) -> tuple[float, float, float]:
    s = np.asarray(spacing_mm, dtype=float).ravel()
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise LabelError(f"spacing_mm must be three positive numbers (dz, dy, dx) in mm, got {spacing_mm!r}")
    return (float(s[0]), float(s[1]), float(s[2]))


def _check_fits(max_class: int, label_divisor: int) -> None:
    if max_class * label_divisor + label_divisor - 1 > _INT32_MAX:
        raise LabelError(f"class {max_class} * label_divisor {label_divisor} does not fit a 32-bit label: "
                         "use a smaller label_divisor")


# ----------------------------------------------------------------------------- conversion
def neighbour_structure(connectivity: int = 26, *, spacing_mm=(1.0, 1.0, 1.0),
                        max_neighbour_distance_mm: float | None = None) -> np.ndarray:
    """The 3 x 3 x 3 boolean neighbourhood that decides which voxels are adjacent.

    Parameters
    ----------
    connectivity : {6, 18, 26}
        Neighbours sharing a face (6), a face or an edge (18), or a face, edge or vertex (26).
    spacing_mm : tuple of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm; used only with ``max_neighbour_distance_mm``.
    max_neighbour_distance_mm : float, optional
        Spacing-aware connectivity: also drop every neighbour whose centre is farther than this
        (mm). The 6 face neighbours are always kept. ``None`` (default): no distance limit.

    Returns
    -------
    ndarray of bool, shape (3, 3, 3)
        Symmetric structure with the centre set, for :func:`scipy.ndimage.label`.
    """
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        raise LabelError(f"connectivity must be one of 6, 18, 26 (face, edge, vertex neighbours), got {connectivity!r}")
    spacing = np.asarray(_check_spacing(spacing_mm))
    if max_neighbour_distance_mm is not None:
        d = float(max_neighbour_distance_mm)
        if not math.isfinite(d) or d <= 0:
            raise LabelError(f"max_neighbour_distance_mm must be a positive number of mm or None, "
                             f"got {max_neighbour_distance_mm!r}")
    offsets = np.stack(np.meshgrid(*([np.arange(-1, 2)] * 3), indexing="ij"), axis=-1)  # (3,3,3,3) (dz,dy,dx)
    steps = np.abs(offsets).sum(axis=-1)
    structure = steps <= CONNECTIVITIES[connectivity]
    if max_neighbour_distance_mm is not None:
        length_mm = np.sqrt(((offsets * spacing) ** 2).sum(axis=-1))
        structure &= (length_mm <= float(max_neighbour_distance_mm) * (1 + 1e-12)) | (steps <= 1)
    return structure


def semantic_to_panoptic(semantic, *, things, spacing_mm=(1.0, 1.0, 1.0), connectivity: int = 26,
                         max_neighbour_distance_mm: float | None = None, min_volume_mm3: float = 0.0,
                         label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """Split each thing class into connected components: a semantic map becomes a panoptic map.

    Parameters
    ----------
    semantic : ndarray of int, shape (nz, ny, nx)
        Class per voxel, 0 = background / void.
    things : iterable of int
        The thing classes (split into instances); every other non-zero class is stuff
        (one segment per class, instance 0). Thing classes absent from the map are allowed.
    spacing_mm : tuple of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    connectivity : {6, 18, 26}
        See :func:`neighbour_structure` (default 26).
    max_neighbour_distance_mm : float, optional
        Spacing-aware connectivity, see :func:`neighbour_structure`.
    min_volume_mm3 : float
        Components smaller than this volume (mm³) are dropped: they become 0 (void) in the
        panoptic map. The default 0 keeps everything, and then
        ``panoptic_to_semantic(semantic_to_panoptic(s)) == s``.
    label_divisor : int
        Panoptic id = ``class * label_divisor + instance`` (default 1000); a class with
        ``label_divisor`` or more instances is an error.

    Returns
    -------
    ndarray of int32, shape (nz, ny, nx)
        Panoptic ids. Instances of a class are numbered 1, 2, ... in raster order of their
        first voxel (z slowest, x fastest).
    """
    sem = _as_label_map(semantic, "semantic")
    things = _check_classes(things)
    divisor = _check_divisor(label_divisor)
    structure = neighbour_structure(connectivity, spacing_mm=spacing_mm,
                                    max_neighbour_distance_mm=max_neighbour_distance_mm)
    voxel_mm3 = float(np.prod(_check_spacing(spacing_mm)))
    try:
        min_v = float(min_volume_mm3)
    except (TypeError, ValueError):
        min_v = float("nan")
    if not math.isfinite(min_v) or min_v < 0:
        raise LabelError(f"min_volume_mm3 must be a non-negative number of mm³, got {min_volume_mm3!r}")
    max_class = int(sem.max())
    _check_fits(max_class, divisor)

    out = sem.astype(np.int64) * divisor
    boxes = ndimage.find_objects(sem.astype(np.int64, copy=False)) if max_class > 0 else []
    for c in things:
        if c > max_class or boxes[c - 1] is None:
            continue
        box = boxes[c - 1]
        mask = sem[box] == c
        comp, n = ndimage.label(mask, structure=structure)
        volume_mm3 = np.bincount(comp.ravel(), minlength=n + 1)[1:] * voxel_mm3
        keep = volume_mm3 >= min_v
        n_kept = int(keep.sum())
        if n_kept >= divisor:
            raise LabelError(f"class {c} has {n_kept} instances, too many for label_divisor {divisor}: "
                             "use a larger label_divisor")
        lut = np.zeros(n + 1, dtype=np.int64)
        lut[1:][keep] = c * divisor + np.arange(1, n_kept + 1)
        region = out[box]
        region[mask] = lut[comp[mask]]
    return out.astype(np.int32)


def instances_to_panoptic(semantic, instances, *, things, label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """Combine a semantic map and an instance map into a panoptic map.

    Parameters
    ----------
    semantic : ndarray of int, shape (nz, ny, nx)
        Class per voxel, 0 = void.
    instances : ndarray of int, shape (nz, ny, nx)
        Object label per voxel (any positive numbers; 0 = no object). Each non-zero label must
        lie inside one thing class.
    things : iterable of int
        The thing classes.
    label_divisor : int
        See :func:`semantic_to_panoptic`.

    Returns
    -------
    ndarray of int32
        ``class * label_divisor + instance``, instances renumbered 1, 2, ... per class in
        increasing order of their label in ``instances``. Thing voxels whose instance label is
        0 keep ``class * label_divisor`` (the class without an object, as in Cityscapes).
    """
    sem = _as_label_map(semantic, "semantic")
    ins = _as_label_map(instances, "instances")
    if sem.shape != ins.shape:
        raise LabelError(f"semantic has shape {sem.shape} but instances has shape {ins.shape}: they must match")
    things = _check_classes(things)
    divisor = _check_divisor(label_divisor)
    _check_fits(int(sem.max()), divisor)
    out = sem.astype(np.int64) * divisor
    labelled = ins != 0
    if not labelled.any():
        return out.astype(np.int32)
    pairs = np.unique(np.stack([ins[labelled].astype(np.int64), sem[labelled].astype(np.int64)]), axis=1)
    obj, cls = pairs
    ids, n_classes = np.unique(obj, return_counts=True)
    if np.any(n_classes > 1):
        bad = int(ids[n_classes > 1][0])
        raise LabelError(f"instance label {bad} covers voxels of classes {sorted(cls[obj == bad].tolist())}: "
                         "each object must lie inside one thing class")
    not_thing = ~np.isin(cls, things)
    if not_thing.any():
        raise LabelError(f"instance label {int(obj[not_thing][0])} lies in class {int(cls[not_thing][0])}, "
                         f"which is not a thing class (things: {list(things)})")
    # pairs are sorted by object label, so the rank within each class follows the label order
    per_class = np.zeros(len(obj), dtype=np.int64)
    for c in np.unique(cls):
        sel = cls == c
        if sel.sum() >= divisor:
            raise LabelError(f"class {int(c)} has {int(sel.sum())} instances, too many for label_divisor {divisor}")
        per_class[sel] = np.arange(1, sel.sum() + 1)
    out[labelled] += per_class[np.searchsorted(obj, ins[labelled])]
    return out.astype(np.int32)


def panoptic_to_semantic(panoptic, *, label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """The class of each voxel, ``panoptic // label_divisor`` (int32; 0 = void)."""
    pan = _as_label_map(panoptic, "panoptic")
    return (pan // _check_divisor(label_divisor)).astype(np.int32)


def panoptic_to_instances(panoptic, *, label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """One label per thing object, ``1..N`` in order of panoptic id; stuff and void are 0 (int32)."""
    pan = _as_label_map(panoptic, "panoptic")
    divisor = _check_divisor(label_divisor)
    out = np.zeros(pan.shape, dtype=np.int32)
    is_thing = pan % divisor != 0
    ids = np.unique(pan[is_thing])
    out[is_thing] = np.searchsorted(ids, pan[is_thing]) + 1
    return out


# ---------------------------------------------------------------------------------- table
def segment_table(panoptic, *, spacing_mm=(1.0, 1.0, 1.0), origin_xyz_mm=(0.0, 0.0, 0.0), direction_xyz=None,
                  label_divisor: int = LABEL_DIVISOR) -> list[dict]:
    """One row per segment of a panoptic map (things and stuff), in order of panoptic id.

    Parameters
    ----------
    panoptic : ndarray of int, shape (nz, ny, nx)
        Panoptic ids (``class * label_divisor + instance``; 0 = void, not listed).
    spacing_mm, origin_xyz_mm, direction_xyz
        The grid's placement, as in :class:`pipeline.image.Volume` (world = origin +
        direction @ diag(dx, dy, dz) @ (i, j, k)); direction defaults to the identity.
    label_divisor : int
        See :func:`semantic_to_panoptic`.

    Returns
    -------
    list of dict
        ``segment_id``, ``class``, ``instance`` (within its class; 0 for stuff),
        ``instance_label`` (its label in :func:`panoptic_to_instances`; 0 for stuff),
        ``kind`` (``"thing"`` when the instance is non-zero, else ``"stuff"``), ``voxels``,
        ``volume_mm3``, ``centroid_index_zyx`` (mean voxel index), ``centroid_world_xyz_mm``,
        ``bbox_index_zyx`` (``{"lo": [k, j, i], "hi": [k, j, i]}``, ``hi`` exclusive) and
        ``equivalent_diameter_mm`` (the diameter of the sphere of the same volume,
        ``(6 V / pi)^(1/3)``).
    """
    pan = _as_label_map(panoptic, "panoptic")
    divisor = _check_divisor(label_divisor)
    spacing = _check_spacing(spacing_mm)
    grid = Volume(pan, spacing, origin_xyz_mm, np.eye(3) if direction_xyz is None else direction_xyz)
    flat = pan.ravel()
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return []
    ids, inverse, counts = np.unique(flat[nz], return_inverse=True, return_counts=True)
    coords = np.unravel_index(nz, pan.shape)
    centroid = np.stack([np.bincount(inverse, weights=c, minlength=len(ids)) for c in coords], axis=1) / counts[:, None]
    world = grid.index_to_world(centroid)
    consecutive = np.zeros(pan.shape, dtype=np.int32)
    consecutive.ravel()[nz] = inverse + 1
    boxes = ndimage.find_objects(consecutive)
    voxel_mm3 = float(np.prod(spacing))
    thing_rank = np.cumsum(ids % divisor != 0)
    rows = []
    for n, seg in enumerate(ids):
        seg = int(seg)
        inst = seg % divisor
        vol = float(counts[n]) * voxel_mm3
        rows.append({
            "segment_id": seg,
            "class": seg // divisor,
            "instance": inst,
            "instance_label": int(thing_rank[n]) if inst else 0,
            "kind": "thing" if inst else "stuff",
            "voxels": int(counts[n]),
            "volume_mm3": vol,
            "centroid_index_zyx": [float(v) for v in centroid[n]],
            "centroid_world_xyz_mm": [float(v) for v in world[n]],
            "bbox_index_zyx": {"lo": [s.start for s in boxes[n]], "hi": [s.stop for s in boxes[n]]},
            "equivalent_diameter_mm": (6.0 * vol / math.pi) ** (1.0 / 3.0),
        })
    return rows


# ------------------------------------------------------------------------ panoptic quality
@dataclass(frozen=True)
class ClassPQ:
    """Panoptic quality of one class.

    Attributes
    ----------
    class_id : int
    kind : str
        ``"thing"`` or ``"stuff"``.
    tp, fp, fn : int
        Matched pairs, unmatched predicted segments (not mostly void), unmatched true segments.
    matches : tuple of (true id, predicted id, IoU)
        The matched pairs (IoU with the truth's void removed from the predicted segment).
    """

    class_id: int
    kind: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    matches: tuple[tuple[int, int, float], ...] = ()

    @property
    def present(self) -> bool:
        """Whether the class has any segment (in either map) that counts."""
        return self.tp + self.fp + self.fn > 0

    @property
    def iou_sum(self) -> float:
        return float(sum(m[2] for m in self.matches))

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs (0 without any; NaN for an absent class)."""
        if not self.present:
            return float("nan")
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        """Recognition quality ``TP / (TP + FP/2 + FN/2)`` (an F1 score; NaN for an absent class)."""
        if not self.present:
            return float("nan")
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def pq(self) -> float:
        """Panoptic quality ``SQ * RQ = sum(IoU) / (TP + FP/2 + FN/2)`` (NaN for an absent class)."""
        if not self.present:
            return float("nan")
        return self.iou_sum / (self.tp + 0.5 * self.fp + 0.5 * self.fn)

    def to_dict(self) -> dict:
        return {"class": self.class_id, "kind": self.kind, "pq": self.pq, "sq": self.sq, "rq": self.rq,
                "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "matches": [{"truth_segment": t, "pred_segment": p, "iou": iou} for t, p, iou in self.matches]}


@dataclass(frozen=True)
class PanopticQuality:
    """Panoptic quality of a prediction against a truth, per class and averaged.

    ``per_class`` maps class -> :class:`ClassPQ`; :meth:`summary` gives the unweighted means
    over the present classes (all, things or stuff).
    """

    per_class: dict[int, ClassPQ] = field(default_factory=dict)
    label_divisor: int = LABEL_DIVISOR

    def summary(self, kind: str = "all") -> dict:
        """``{"pq", "sq", "rq", "n_classes"}``: means over present classes of ``kind`` ("all", "things", "stuff")."""
        if kind not in ("all", "things", "stuff"):
            raise LabelError(f"kind must be one of 'all', 'things', 'stuff', got {kind!r}")
        rows = [c for c in self.per_class.values()
                if c.present and kind in ("all", {"thing": "things", "stuff": "stuff"}[c.kind])]
        if not rows:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n_classes": 0}
        return {"pq": float(np.mean([c.pq for c in rows])), "sq": float(np.mean([c.sq for c in rows])),
                "rq": float(np.mean([c.rq for c in rows])), "n_classes": len(rows)}

    @property
    def pq(self) -> float:
        return self.summary("all")["pq"]

    @property
    def sq(self) -> float:
        return self.summary("all")["sq"]

    @property
    def rq(self) -> float:
        return self.summary("all")["rq"]

    def to_dict(self) -> dict:
        return {"all": self.summary("all"), "things": self.summary("things"), "stuff": self.summary("stuff"),
                "per_class": {str(c): v.to_dict() for c, v in sorted(self.per_class.items())},
                "label_divisor": self.label_divisor, "match_iou_above": MATCH_IOU,
                "void_label": 0}


def panoptic_quality(pred, truth, *, things: Iterable[int] | None = None,
                     label_divisor: int = LABEL_DIVISOR) -> PanopticQuality:
    """Panoptic quality (PQ, SQ, RQ) of a predicted panoptic map against a true one.

    Definitions and the void rule: see the module docstring (Kirillov et al. 2019).

    Parameters
    ----------
    pred, truth : ndarray of int, shape (nz, ny, nx)
        Panoptic maps (``class * label_divisor + instance``), on the same grid. 0 in
        ``truth`` is void; 0 in ``pred`` is unlabelled.
    things : iterable of int, optional
        The thing classes. Listed classes absent from both maps are reported with NaN.
        ``None``: a class is a thing when any of its segments has a non-zero instance.
    label_divisor : int
        See :func:`semantic_to_panoptic`.

    Returns
    -------
    PanopticQuality
    """
    p = _as_label_map(pred, "pred")
    t = _as_label_map(truth, "truth")
    if p.shape != t.shape:
        raise LabelError(f"pred has shape {p.shape} but truth has shape {t.shape}: they must be on the same grid")
    divisor = _check_divisor(label_divisor)
    thing_list = None if things is None else _check_classes(things)

    sel = (p != 0) | (t != 0)
    pv = p[sel].astype(np.int64)
    tv = t[sel].astype(np.int64)
    base = int(pv.max(initial=0)) + 1
    keys, counts = np.unique(tv * base + pv, return_counts=True)
    kt, kp = keys // base, keys % base
    t_ids, t_inv = np.unique(kt, return_inverse=True)
    t_area = {int(i): int(n) for i, n in zip(t_ids, np.bincount(t_inv, weights=counts)) if i != 0}
    p_ids, p_inv = np.unique(kp, return_inverse=True)
    p_area = {int(i): int(n) for i, n in zip(p_ids, np.bincount(p_inv, weights=counts)) if i != 0}
    p_void = dict.fromkeys(p_area, 0)  # voxels of each predicted segment that are void in the truth
    for b, n in zip(kp[kt == 0], counts[kt == 0]):
        if b != 0:
            p_void[int(b)] = int(n)

    classes = {i // divisor for i in t_area} | {i // divisor for i in p_area} | set(thing_list or ())
    if thing_list is None:
        thing_set = {i // divisor for i in list(t_area) + list(p_area) if i % divisor}
    else:
        thing_set = set(thing_list)

    matched_t, matched_p = set(), set()
    matches: dict[int, list] = {c: [] for c in classes}
    for a, b, inter in zip(kt, kp, counts):
        a, b, inter = int(a), int(b), int(inter)
        if a == 0 or b == 0 or a // divisor != b // divisor:
            continue
        union = p_area[b] + t_area[a] - inter - p_void[b]
        iou = inter / union
        if iou > MATCH_IOU:
            matched_t.add(a)
            matched_p.add(b)
            matches[a // divisor].append((a, b, float(iou)))
    fn = {c: 0 for c in classes}
    fp = {c: 0 for c in classes}
    for a in t_area:
        if a not in matched_t:
            fn[a // divisor] += 1
    for b, area in p_area.items():
        if b not in matched_p and p_void[b] / area <= MATCH_IOU:
            fp[b // divisor] += 1
    per_class = {c: ClassPQ(c, "thing" if c in thing_set else "stuff", tp=len(matches[c]), fp=fp[c], fn=fn[c],
                            matches=tuple(sorted(matches[c])))
                 for c in sorted(classes)}
    return PanopticQuality(per_class, divisor)
