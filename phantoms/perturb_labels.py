"""Geometric perturbations of a labelled voxel phantom: organ contours and the body outline.

What it is for
--------------
A dose sensitivity study asks how much an organ dose moves when the patient model is a
little wrong: an organ contoured a few millimetres too large or too small (a segmentation
error), or the body outline too wide or too narrow (a body-contour error, e.g. from a
truncated field of view or a different patient habitus). The two operators here change a
label map in exactly that one way and keep every other label as it was:

:func:`offset_organs`
    Each organ's outer boundary moves ``delta_mm`` along its normal. Voxels an organ gains
    are taken **only** from the filler tissue around it (``grow_into``, by default the
    residual soft tissue): never from bone, lung, skin or another organ. Voxels it loses
    become the filler tissue. An organ made of a wall around contents (stomach, colon,
    heart, ...; :func:`organ_groups`) moves as one contour: gained voxels become wall, and
    where shrinking removes the wall the exposed contents become wall again, so the wall
    stays closed.
:func:`offset_body`
    The body outline (every non-air voxel, internal cavities filled) moves ``delta_mm``
    along its normal. Gained voxels get the filler tissue, lost voxels become air, and the
    skin is rebuilt as the one-voxel outer layer of the new body (the voxels of the body
    with a face neighbour outside it -- the rule the stylised phantoms are built with,
    :mod:`phantoms.stylized`); old skin left inside becomes filler tissue.

How the boundary moves
----------------------
Both use :func:`pipeline.perturb.offset_boundary`: a sub-voxel signed distance ``phi``
(mm, negative inside) to the mask's boundary, and the new mask ``phi < delta`` made
monotone (a positive offset only adds voxels, a negative one only removes). For a surface
of area ``A`` the volume changes by ``A delta`` to first order (plus ``A delta² H`` with
``H`` the mean curvature), before the restriction to the filler tissue. Each report gives
the marching-cubes area of the original boundary, the volume change the unrestricted
offset would have made, and the voxels that were refused because another tissue was there
(``blocked_*``), so a reader can see how much of the intended change an organ could take.

A zero offset returns an identical copy of the label map.

Conventions of :mod:`pipeline.image`: arrays ``[z, y, x]``, ``spacing_mm = (dz, dy, dx)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from pipeline.perturb import PerturbationError, offset_boundary

__all__ = ["LabelPerturbationError", "LabelPerturbation", "organ_groups", "skin_layer", "offset_organs",
           "offset_body"]

_FACE = ndimage.generate_binary_structure(3, 1)
#: Extra voxels around an organ's bounding box beyond the offset (the SDF needs a margin).
_MARGIN_VOXELS = 3


class LabelPerturbationError(ValueError):
    """An input a label perturbation cannot use (the message names the parameter and what is valid)."""


@dataclass
class LabelPerturbation:
    """Result of a label-map perturbation.

    Attributes
    ----------
    labels : ndarray of int, shape (nz + 2 pz, ny + 2 py, nx + 2 px)
        The perturbed label map (same dtype as the input).
    spacing_mm : tuple of 3 floats
        Voxel size ``(dz, dy, dx)``, mm.
    report : dict
        What changed, JSON-friendly (the operator's docstring lists the keys).
    pad_voxels : tuple of 3 ints
        ``(pz, py, px)``: air voxels added on *both* sides of each axis (only
        :func:`offset_body` pads, when the body would otherwise grow out of the array). The
        input voxel ``[0, 0, 0]`` is output voxel ``[pz, py, px]``; shift a Volume's origin
        by ``-p * spacing`` along each axis.
    """

    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    report: dict[str, Any] = field(default_factory=dict)
    pad_voxels: tuple[int, int, int] = (0, 0, 0)


# --------------------------------------------------------------------------- validation
def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise LabelPerturbationError(f"labels must be a 3-D integer array indexed [z, y, x] with >= 2 voxels per "
                                     f"axis, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise LabelPerturbationError(f"labels must hold integer label ids, got dtype {arr.dtype}")
    return arr


def _check_spacing(spacing_mm) -> tuple[float, float, float]:
    try:
        sp = np.asarray(spacing_mm, dtype=float).ravel()
    except (TypeError, ValueError):
        sp = np.full(1, np.nan)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise LabelPerturbationError(f"spacing_mm must be three positive voxel sizes in mm (dz, dy, dx), "
                                     f"got {spacing_mm!r}")
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def _check_delta(delta_mm, name: str = "delta_mm") -> float:
    if isinstance(delta_mm, bool):
        raise LabelPerturbationError(f"{name} must be a number of millimetres, got {delta_mm!r}")
    try:
        d = float(delta_mm)
    except (TypeError, ValueError):
        raise LabelPerturbationError(f"{name} must be a number of millimetres, got {delta_mm!r}") from None
    if not math.isfinite(d):
        raise LabelPerturbationError(f"{name} must be finite, got {delta_mm!r}")
    return d


def _check_label_id(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise LabelPerturbationError(f"{name} must be a label id (integer >= 0), got {v!r}")
    return int(v)


def _groups(organs) -> list[tuple[int, ...]]:
    if isinstance(organs, (int, np.integer)) and not isinstance(organs, bool):
        organs = [organs]
    if not isinstance(organs, Sequence) or isinstance(organs, str) or not organs:
        raise LabelPerturbationError(f"organs must be a non-empty list of label ids or (wall, contents...) tuples, "
                                     f"got {organs!r}")
    out, seen = [], set()
    for g in organs:
        ids = (g,) if isinstance(g, (int, np.integer)) and not isinstance(g, bool) else tuple(g)
        if not ids:
            raise LabelPerturbationError("organs: an organ needs at least one label id, got an empty group")
        ids = tuple(_check_label_id(i, "organs entry") for i in ids)
        dup = seen.intersection(ids)
        if dup:
            raise LabelPerturbationError(f"organs: label {sorted(dup)[0]} appears in two organs; each label may "
                                         f"belong to one organ only")
        seen.update(ids)
        out.append(ids)
    return out


# --------------------------------------------------------------------------- helpers
def _interior(body: np.ndarray) -> np.ndarray:
    """Voxels of ``body`` whose six face neighbours are all in ``body`` (outside the array = outside)."""
    return ndimage.binary_erosion(body, _FACE, border_value=0)


def skin_layer(body) -> np.ndarray:
    """The one-voxel outer layer of a body mask: its voxels with a face neighbour outside it.

    Parameters
    ----------
    body : ndarray of bool, shape (nz, ny, nx)
        The body (outside the array counts as outside the body).

    Returns
    -------
    ndarray of bool
        ``body & ~erosion(body)`` with the 6-neighbour (face) structure: a layer that every
        6-connected path from outside to the body's interior crosses.
    """
    b = np.asarray(body, dtype=bool)
    return b & ~_interior(b)


def organ_groups(names: Mapping[int, str], organs: Sequence[str]) -> list[tuple[int, ...]]:
    """Label-id groups for :func:`offset_organs` from organ names, pairing walls with their contents.

    An organ named ``X_wall`` whose label map also has ``X_contents`` becomes the group
    ``(wall id, contents id)`` (one contour: wall outside, contents inside); any other name
    is a single label.

    Parameters
    ----------
    names : mapping of int to str
        Label id → name (e.g. from :data:`phantoms.stylized.LABELS`).
    organs : sequence of str
        Names of the organs to perturb (outer labels: ``stomach_wall``, ``liver``, ...).

    Returns
    -------
    list of tuple of int

    Raises
    ------
    LabelPerturbationError
        A name that is not in ``names`` (the message lists the names).
    """
    ids = {n: k for k, n in names.items()}
    out = []
    for o in organs:
        if o not in ids:
            raise LabelPerturbationError(f"organ {o!r} is not a label of this phantom; labels: {sorted(ids)}")
        grp = [ids[o]]
        if o.endswith("_wall") and o[:-5] + "_contents" in ids:
            grp.append(ids[o[:-5] + "_contents"])
        out.append(tuple(grp))
    return out


def _box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, slice, slice]:
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(axis=0) - np.asarray(margin), 0)
    hi = np.minimum(nz.max(axis=0) + 1 + np.asarray(margin), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _counts(labels: np.ndarray, ids) -> dict[int, int]:
    return {int(i): int(np.count_nonzero(labels == i)) for i in ids}


# --------------------------------------------------------------------------- organ contours
def offset_organs(labels, organs, delta_mm, *, spacing_mm, fill_label: int, grow_into=None,
                  names: Mapping[int, str] | None = None) -> LabelPerturbation:
    """Move the outer boundary of each organ ``delta_mm`` along its normal (outwards if positive).

    Parameters
    ----------
    labels : ndarray of int, shape (nz, ny, nx)
        Label map.
    organs : sequence of int or of tuple of int
        The organs, each a label id or a group ``(outer, inner, ...)``: the outer label (a
        wall) and labels inside it (contents) move as one contour (see :func:`organ_groups`).
    delta_mm : float
        Normal offset, mm; positive grows, negative shrinks. Sub-voxel values move the
        boundary where the signed distance allows (a voxel changes when its centre crosses).
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.
    fill_label : int
        The tissue around the organs (residual soft tissue): voxels an organ loses get it.
    grow_into : sequence of int, optional
        Labels an organ may take when it grows; default ``(fill_label,)``. Voxels of any
        other label (bone, lung, skin, other organs, air) are never taken.
    names : mapping of int to str, optional
        Label names for the report keys (default ``"label <id>"``).

    Returns
    -------
    LabelPerturbation
        ``report``: ``operator``, ``delta_mm``, ``organs`` (per organ, keyed by the outer
        label's name: ``labels``, ``voxels_before``/``voxels_after`` per label,
        ``volume_before_mm3``, ``volume_after_mm3``, ``volume_change_mm3``,
        ``volume_change_percent``, ``surface_area_mm2`` (marching cubes of the original
        contour), ``area_times_delta_mm3``, ``unconstrained_volume_change_mm3`` (the
        offset without the tissue restriction), ``blocked_voxels``, ``blocked_volume_mm3``,
        ``blocked_by`` (label → voxels refused), ``assd_mm`` and ``hausdorff_mm`` of the
        unconstrained offset), ``voxels_changed``.

    Raises
    ------
    LabelPerturbationError
        Bad labels, spacing, delta or label ids; an organ with no voxel; an offset that
        removes an organ (or its wall) completely.
    """
    lab = _check_labels(labels)
    sp = _check_spacing(spacing_mm)
    d = _check_delta(delta_mm)
    fill = _check_label_id(fill_label, "fill_label")
    if grow_into is None:
        grow: tuple[int, ...] = (fill,)
    else:
        items = grow_into if isinstance(grow_into, (list, tuple, np.ndarray)) else [grow_into]
        grow = tuple(_check_label_id(g, "grow_into entry") for g in items)
    groups = _groups(organs)
    nm = (lambda i: str(names.get(i, f"label {i}"))) if names else (lambda i: f"label {i}")
    for g in groups:
        if fill in g or set(g) & set(grow):
            raise LabelPerturbationError(f"organ {nm(g[0])!r}: its labels {list(g)} must differ from fill_label "
                                         f"{fill} and grow_into {list(grow)}")
    v3 = float(np.prod(sp))
    out = lab.copy()
    report: dict[str, Any] = {"operator": "offset_organs", "delta_mm": d, "fill_label": fill,
                              "grow_into": list(grow), "organs": {}}
    free = np.isin(lab, grow)  # may be grown into; cleared as organs claim voxels
    margin = [int(math.ceil(abs(d) / h)) + _MARGIN_VOXELS for h in sp]
    for g in groups:
        m_full = np.isin(lab, g)
        if not m_full.any():
            raise LabelPerturbationError(f"organ {nm(g[0])!r} (labels {list(g)}) has no voxel in the label map")
        before = _counts(lab, g)
        rec: dict[str, Any] = {"labels": list(g), "voxels_before": {nm(i): before[i] for i in g}}
        if d == 0.0:
            rec.update(voxels_after=dict(rec["voxels_before"]), volume_before_mm3=sum(before.values()) * v3,
                       volume_after_mm3=sum(before.values()) * v3, volume_change_mm3=0.0,
                       volume_change_percent=0.0, blocked_voxels=0, blocked_volume_mm3=0.0, blocked_by={})
            report["organs"][nm(g[0])] = rec
            continue
        box = _box(m_full, margin)
        m = m_full[box]
        try:
            p = offset_boundary(m, sp, d)
        except PerturbationError as exc:
            raise LabelPerturbationError(f"organ {nm(g[0])!r}: {exc}") from None
        new = p.mask
        sub_lab = lab[box]
        sub_out = out[box]  # a view: writes go to ``out``
        sub_free = free[box]
        if d > 0:
            want = new & ~m
            gained = want & sub_free
            blocked = want & ~sub_free
            sub_out[gained] = g[0]
            sub_free[gained] = False
            kept = m | gained
            bl_ids, bl_n = np.unique(sub_lab[blocked], return_counts=True)
            # voxels refused because an earlier organ of this call took them are "blocked by" that organ
            rec["blocked_by"] = {nm(int(i)): int(n) for i, n in zip(bl_ids, bl_n)}
            n_blocked = int(np.count_nonzero(blocked))
        else:
            lost = m & ~new
            sub_out[lost] = fill
            kept = m & new
            if len(g) > 1:
                # re-close the wall: inner voxels now facing the outside of the organ become wall
                inner = kept & np.isin(sub_lab, g[1:])
                exposed = inner & ~ndimage.binary_erosion(kept, _FACE, border_value=1)
                sub_out[exposed] = g[0]
            n_blocked = 0
            rec["blocked_by"] = {}
        # the box holds the whole organ and no other call changed its labels: only the box changed
        in_box, now = _counts(sub_lab, g), _counts(sub_out, g)
        after = {i: before[i] - in_box[i] + now[i] for i in g}
        empty = [nm(i) for i in g if before[i] > 0 and after[i] == 0]
        if empty:
            raise LabelPerturbationError(f"delta_mm={d:g} removes {', '.join(empty)} completely (organ "
                                         f"{nm(g[0])!r} is too small for this offset); use a smaller |delta_mm|")
        vb, va = sum(before.values()) * v3, int(np.count_nonzero(kept)) * v3
        area = p.report["surface_area_mm2"]
        rec.update(
            voxels_after={nm(i): after[i] for i in g},
            volume_before_mm3=vb, volume_after_mm3=va, volume_change_mm3=va - vb,
            volume_change_percent=100.0 * (va - vb) / vb,
            surface_area_mm2=area, area_times_delta_mm3=area * d,
            unconstrained_volume_change_mm3=p.report["volume_change_mm3"],
            blocked_voxels=n_blocked, blocked_volume_mm3=n_blocked * v3,
            assd_mm=p.report.get("assd_mm"), hausdorff_mm=p.report.get("hausdorff_mm"),
        )
        report["organs"][nm(g[0])] = rec
    changed = int(np.count_nonzero(out != lab))
    report["voxels_changed"] = changed
    return LabelPerturbation(labels=out, spacing_mm=sp, report=report)


# --------------------------------------------------------------------------- body outline
def offset_body(labels, delta_mm, *, spacing_mm, air_label: int = 0, fill_label: int, skin_label: int,
                names: Mapping[int, str] | None = None, removable=None) -> LabelPerturbation:
    """Move the body outline ``delta_mm`` along its normal and rebuild the one-voxel skin.

    Parameters
    ----------
    labels : ndarray of int, shape (nz, ny, nx)
        Label map; the body is every voxel not ``air_label`` (cavities inside it filled).
    delta_mm : float
        Normal offset of the outline, mm; positive widens the body, negative narrows it.
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.
    air_label : int
        Label outside the body (default 0).
    fill_label : int
        Tissue given to the voxels the body gains (outer soft tissue) and to old skin that
        ends up inside the new body.
    skin_label : int
        The skin label, rebuilt as :func:`skin_layer` of the new body (it replaces whatever
        tissue is in that layer, as when the phantom was built).
    names : mapping of int to str, optional
        Label names for ``label_voxel_change`` (default ``"label <id>"``).
    removable : sequence of int, optional
        Labels a narrowing outline may turn into air (default: every label). An error in the
        body contour misplaces the skin and subcutaneous tissue, not the bones and organs
        under it: pass the soft-tissue and skin labels so that protected voxels stay (they
        keep their label where they reach the new outline, and the skin layer is not
        written over them; ``protected_voxels`` and ``skin_gap_voxels`` count this).

    Returns
    -------
    LabelPerturbation
        The array is padded with air (``pad_voxels`` per side) when the grown body would
        come within two voxels of the array's faces. ``report``: ``operator``,
        ``delta_mm``, ``pad_voxels``, ``volume_before_mm3``, ``volume_after_mm3``,
        ``volume_change_mm3``, ``volume_change_percent``, ``surface_area_mm2``
        (marching cubes of the original outline), ``equivalent_mean_radius_change_mm``
        (volume change / area: the mean outward displacement), ``assd_mm``,
        ``hausdorff_mm``, ``skin_voxels_before``/``after``, ``label_voxel_change``
        (label name → change in voxel count, non-zero only), ``emptied_labels``.

    Raises
    ------
    LabelPerturbationError
        Bad inputs; a label map without body; an offset that removes the whole body.
    """
    lab = _check_labels(labels)
    sp = _check_spacing(spacing_mm)
    d = _check_delta(delta_mm)
    air = _check_label_id(air_label, "air_label")
    fill = _check_label_id(fill_label, "fill_label")
    skin = _check_label_id(skin_label, "skin_label")
    if len({air, fill, skin}) < 3:
        raise LabelPerturbationError(f"air_label ({air}), fill_label ({fill}) and skin_label ({skin}) must differ")
    nm = (lambda i: str(names.get(i, f"label {i}"))) if names else (lambda i: f"label {i}")
    body0 = lab != air
    if not body0.any():
        raise LabelPerturbationError(f"labels has no body: every voxel is air_label {air}")
    body0 = ndimage.binary_fill_holes(body0)
    v3 = float(np.prod(sp))
    skin0 = int(np.count_nonzero(lab == skin))
    if d == 0.0:
        vol = float(np.count_nonzero(body0)) * v3
        rep = {"operator": "offset_body", "delta_mm": 0.0, "pad_voxels": [0, 0, 0], "volume_before_mm3": vol,
               "volume_after_mm3": vol, "volume_change_mm3": 0.0, "volume_change_percent": 0.0,
               "equivalent_mean_radius_change_mm": 0.0, "skin_voxels_before": skin0, "skin_voxels_after": skin0,
               "label_voxel_change": {}, "emptied_labels": []}
        return LabelPerturbation(labels=lab.copy(), spacing_mm=sp, report=rep)
    # room for the grown body: two voxels beyond the offset on every side
    nzi = np.argwhere(body0)
    lo, hi = nzi.min(axis=0), np.asarray(lab.shape) - 1 - nzi.max(axis=0)
    need = [int(math.ceil(max(d, 0.0) / h)) + 2 for h in sp]
    pad = tuple(int(max(0, n - min(a, b))) for n, a, b in zip(need, lo, hi))
    if any(pad):
        lab_p = np.pad(lab, [(p, p) for p in pad], mode="constant", constant_values=air)
        body = np.pad(body0, [(p, p) for p in pad], mode="constant", constant_values=False)
    else:
        lab_p, body = lab, body0
    try:
        p = offset_boundary(body, sp, d)
    except PerturbationError as exc:
        raise LabelPerturbationError(f"body outline: {exc}") from None
    new = p.mask
    if not new.any():
        raise LabelPerturbationError(f"delta_mm={d:g} removes the whole body; use a smaller |delta_mm|")
    protected = np.zeros_like(body)
    if removable is not None:
        keep = body & ~new & ~np.isin(lab_p, np.asarray(list(removable), dtype=lab_p.dtype))
        protected = keep
        new = new | keep
    out = lab_p.copy()
    out[new & ~body] = fill
    out[body & ~new] = air
    layer = skin_layer(new)
    writable = layer if removable is None else layer & np.isin(out, np.asarray([fill, skin, *removable], dtype=out.dtype))
    out[(lab_p == skin) & new & ~layer] = fill  # old skin now inside the body
    out[writable] = skin
    ids = np.union1d(np.unique(lab_p), np.unique(out))
    c0 = np.bincount(lab_p.ravel().astype(np.int64), minlength=int(ids.max()) + 1)
    c1 = np.bincount(out.ravel().astype(np.int64), minlength=int(ids.max()) + 1)
    change = {nm(int(i)): int(c1[i] - c0[i]) for i in ids if i != air and c1[i] != c0[i]}
    emptied = [nm(int(i)) for i in ids if i != air and c0[i] > 0 and c1[i] == 0]
    rep = {"operator": "offset_body", "delta_mm": d, "pad_voxels": list(pad),
           **{k: p.report[k] for k in ("volume_before_mm3", "volume_after_mm3", "volume_change_mm3",
                                       "volume_change_percent", "surface_area_mm2",
                                       "equivalent_mean_radius_change_mm", "assd_mm", "hausdorff_mm")},
           "skin_voxels_before": skin0, "skin_voxels_after": int(c1[skin]) if skin < c1.size else 0,
           "label_voxel_change": change, "emptied_labels": emptied,
           "protected_voxels": int(np.count_nonzero(protected)),
           "skin_gap_voxels": int(np.count_nonzero(layer & ~writable))}
    return LabelPerturbation(labels=out, spacing_mm=sp, report=rep, pad_voxels=pad)
