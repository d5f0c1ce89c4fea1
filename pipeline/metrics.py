"""Overlap and surface-distance metrics for binary segmentations (MONAI-style pure functions).

What it is for: score a lumen mask against a reference (a phantom's exact mask, another
method, an annotator). Every function takes boolean arrays of equal shape (0/1 integers are
accepted) and returns a Python float; a metric whose denominator is empty returns ``nan``
instead of raising, as MONAI does, so that averages over cases can use ``np.nanmean``.

Definitions (``P`` = prediction, ``T`` = truth, counts of voxels):

* Dice (Dice 1945; Sørensen 1948): ``2 |P ∩ T| / (|P| + |T|)``; ``nan`` when both are empty,
  0 when exactly one is (a false detection is penalised, unlike MONAI's ``ignore_empty``).
* sensitivity (recall) ``TP / (TP + FN)``, ``nan`` when ``T`` is empty;
  specificity ``TN / (TN + FP)``, ``nan`` when ``T`` fills the image;
  precision ``TP / (TP + FP)``, ``nan`` when ``P`` is empty.
* Surface distances (Taha & Hanbury, *BMC Med. Imaging* 2015; MONAI
  ``compute_hausdorff_distance`` / ``compute_average_surface_distance``): the surface of a
  mask is its boundary voxels, the voxels of the mask that have a face neighbour outside it
  (voxels on the array border count, the outside of the array being background). The
  directed distances ``d(A→B)`` are, for every surface voxel of ``A``, the Euclidean distance
  in mm (voxel spacing applied per axis) to the nearest surface voxel of ``B``, computed with
  an exact Euclidean distance transform (Maurer et al. 2003, ``scipy.ndimage``).

  - ``hausdorff(..., percentile=q)`` = ``max(P_q(d(A→B)), P_q(d(B→A)))``, the larger of the
    two *directed* q-th percentiles (numpy's linear interpolation), each over surface voxels
    (not weighted by surface area). ``q = 95`` is HD95 as in MONAI; ``q = 100`` is the
    classical Hausdorff distance.
  - ``assd`` = mean of the pooled directed distances,
    ``(Σ d(A→B) + Σ d(B→A)) / (|∂A| + |∂B|)`` (MONAI's ``symmetric=True``).

  Both are ``nan`` if either mask is empty.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "MetricError",
    "confusion",
    "dice",
    "iou",
    "precision_at_prevalence",
    "npv_at_prevalence",
    "predictive_values_curve",
    "sensitivity",
    "specificity",
    "precision",
    "surface_voxels",
    "surface_distances",
    "hausdorff",
    "assd",
    "segmentation_report",
    "mesh_to_mesh_distances",
]

_FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


class MetricError(ValueError):
    """Masks or parameters a metric cannot use (the message names the bad one)."""


def _as_mask(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        raise MetricError(f"{name} is an empty array (shape {arr.shape})")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise MetricError(f"{name} must be a boolean (or 0/1) mask, got dtype {arr.dtype} with other values")
        arr = arr.astype(bool)
    return arr


def _pair(a, b, names=("pred", "truth")) -> tuple[np.ndarray, np.ndarray]:
    a = _as_mask(a, names[0])
    b = _as_mask(b, names[1])
    if a.shape != b.shape:
        raise MetricError(f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}: they must match")
    return a, b


def _spacing(spacing_mm, ndim: int) -> tuple[float, ...]:
    sp = np.asarray(spacing_mm, dtype=float).ravel()
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise MetricError(
            f"spacing_mm must be {ndim} positive voxel sizes in mm (array-axis order), got {spacing_mm!r}"
        )
    return tuple(float(v) for v in sp)


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else float("nan")


def confusion(pred, truth) -> dict:
    """Voxel counts ``tp``, ``fp``, ``tn``, ``fn`` (Python ints) of ``pred`` against ``truth``."""
    p, t = _pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return dict(tp=tp, fp=fp, tn=tn, fn=fn)


def dice(a, b) -> float:
    """Dice coefficient ``2|A∩B| / (|A|+|B|)`` in [0, 1]; ``nan`` if both masks are empty."""
    a, b = _pair(a, b, ("a", "b"))
    return _ratio(2 * int(np.count_nonzero(a & b)), int(np.count_nonzero(a)) + int(np.count_nonzero(b)))


def sensitivity(pred, truth) -> float:
    """True-positive rate ``TP / (TP + FN)``; ``nan`` if ``truth`` is empty."""
    c = confusion(pred, truth)
    return _ratio(c["tp"], c["tp"] + c["fn"])


def specificity(pred, truth) -> float:
    """True-negative rate ``TN / (TN + FP)``; ``nan`` if ``truth`` covers the whole image."""
    c = confusion(pred, truth)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def precision(pred, truth) -> float:
    """Positive predictive value ``TP / (TP + FP)``; ``nan`` if ``pred`` is empty."""
    c = confusion(pred, truth)
    return _ratio(c["tp"], c["tp"] + c["fp"])


def iou(a, b) -> float:
    """Intersection over union (Jaccard index) = Dice / (2 - Dice)."""
    c = confusion(a, b)
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"])


def precision_at_prevalence(sens: float, spec: float, prevalence: float) -> float:
    """Precision (positive predictive value) a classifier of this sensitivity and specificity
    would have where the positive class has the stated prevalence (Bayes):
    ``sens p / (sens p + (1 - spec)(1 - p))``. A segmentation's own precision holds only at its
    image's lumen fraction; this carries it to another field of view or population."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence!r}")
    num = sens * prevalence
    den = num + (1.0 - spec) * (1.0 - prevalence)
    return float(num / den) if den > 0 else float("nan")


def _rate(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MetricError(f"{name} must be a fraction in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise MetricError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return v


def _prevalences(prevalence) -> np.ndarray:
    try:
        p = np.asarray(prevalence, dtype=float)
    except (TypeError, ValueError):
        raise MetricError(f"prevalence must be numbers in (0, 1), got {prevalence!r}") from None
    if p.size == 0 or not np.all((p > 0.0) & (p < 1.0)):
        raise MetricError(f"prevalence must be in (0, 1) (the positive fraction of the population), got {prevalence!r}")
    return p


def npv_at_prevalence(sens: float, spec: float, prevalence: float) -> float:
    """Negative predictive value a classifier of this sensitivity and specificity would have
    where the positive class has the stated prevalence ``p`` (Bayes; Altman & Bland, *BMJ* 309
    (1994) 102): ``spec (1 - p) / (spec (1 - p) + (1 - sens) p)``; ``nan`` when no case is
    called negative (``spec = 0`` and ``sens = 1``). The companion of
    :func:`precision_at_prevalence`.

    Raises
    ------
    MetricError
        ``sens`` or ``spec`` outside [0, 1], or ``prevalence`` outside (0, 1).
    """
    se, sp = _rate(sens, "sens"), _rate(spec, "spec")
    p = _prevalences(prevalence)
    if p.ndim != 0:
        raise MetricError(f"prevalence must be one number in (0, 1) (for many use predictive_values_curve), "
                          f"got {prevalence!r}")
    p = float(p)
    num = sp * (1.0 - p)
    den = num + (1.0 - se) * p
    return float(num / den) if den > 0 else float("nan")


def predictive_values_curve(sens: float, spec: float, prevalences) -> dict:
    """PPV (precision) and NPV over a range of prevalences, by Bayes' theorem.

    Parameters
    ----------
    sens, spec : float in [0, 1]
        Sensitivity and specificity (they do not depend on prevalence).
    prevalences : sequence of float in (0, 1)
        Fractions of positives in the population where the classifier would be used.

    Returns
    -------
    dict
        ``prevalence``, ``ppv``, ``npv``: float arrays of the same length
        (``ppv = sens p / (sens p + (1 - spec)(1 - p))``,
        ``npv = spec (1 - p) / (spec (1 - p) + (1 - sens) p)``; ``nan`` where a denominator is 0).
    """
    se, sp = _rate(sens, "sens"), _rate(spec, "spec")
    p = np.atleast_1d(_prevalences(prevalences)).ravel()
    tp, fp = se * p, (1.0 - sp) * (1.0 - p)
    tn, fn = sp * (1.0 - p), (1.0 - se) * p
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
    return {"prevalence": p, "ppv": ppv, "npv": npv}


def surface_voxels(mask) -> np.ndarray:
    """Boundary voxels: in ``mask`` with at least one face neighbour outside it (or outside the array)."""
    m = _as_mask(mask, "mask")
    return m & ~ndimage.binary_erosion(m, structure=_FACE_STRUCTURE, border_value=0)


def surface_distances(a, b, *, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``d(A→B)`` for each surface voxel of ``a`` and ``d(B→A)``.

    Parameters
    ----------
    a, b : ndarray of bool, same shape
    spacing_mm : sequence of float
        Voxel size per array axis, mm.

    Returns
    -------
    (ndarray, ndarray)
        Distances in mm; both empty if either mask is empty.
    """
    a, b = _pair(a, b, ("a", "b"))
    sp = _spacing(spacing_mm, a.ndim)
    sa, sb = surface_voxels(a), surface_voxels(b)
    if not sa.any() or not sb.any():
        return np.empty(0), np.empty(0)
    d_to_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    d_to_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return d_to_b[sa], d_to_a[sb]


def hausdorff(a, b, *, spacing_mm, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance in mm: ``max(P_q(d(A→B)), P_q(d(B→A)))``.

    ``percentile=95`` is HD95 (MONAI's definition), ``100`` the classical Hausdorff distance.
    ``nan`` if either mask is empty.
    """
    try:
        q = float(percentile)
    except (TypeError, ValueError):
        raise MetricError(f"percentile must be a number in [0, 100], got {percentile!r}") from None
    if not 0.0 <= q <= 100.0:
        raise MetricError(f"percentile must be in [0, 100], got {percentile!r}")
    dab, dba = surface_distances(a, b, spacing_mm=spacing_mm)
    if dab.size == 0:
        return float("nan")
    return float(max(np.percentile(dab, q), np.percentile(dba, q)))


def assd(a, b, *, spacing_mm) -> float:
    """Average symmetric surface distance in mm (pooled mean of both directed distances); ``nan`` if either is empty."""
    dab, dba = surface_distances(a, b, spacing_mm=spacing_mm)
    if dab.size == 0:
        return float("nan")
    return float((dab.sum() + dba.sum()) / (dab.size + dba.size))


def segmentation_report(pred, truth, *, spacing_mm) -> dict:
    """All metrics of ``pred`` against ``truth`` as a JSON-friendly dict (floats; ``nan`` where undefined).

    Keys: ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision``, ``hd95_mm``,
    ``hausdorff_mm``, ``assd_mm``, ``volume_pred_mm3``, ``volume_truth_mm3``,
    ``volume_error_percent`` and the counts ``tp``, ``fp``, ``tn``, ``fn`` (ints).
    """
    p, t = _pair(pred, truth)
    sp = _spacing(spacing_mm, p.ndim)
    c = confusion(p, t)
    voxel_mm3 = float(np.prod(sp))
    v_pred = float(np.count_nonzero(p)) * voxel_mm3
    v_truth = float(np.count_nonzero(t)) * voxel_mm3
    dab, dba = surface_distances(p, t, spacing_mm=sp)
    if dab.size:
        hd95 = float(max(np.percentile(dab, 95.0), np.percentile(dba, 95.0)))
        hd = float(max(dab.max(), dba.max()))
        asd = float((dab.sum() + dba.sum()) / (dab.size + dba.size))
    else:
        hd95 = hd = asd = float("nan")
    return dict(
        dice=_ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
        iou=_ratio(c["tp"], c["tp"] + c["fp"] + c["fn"]),
        sensitivity=_ratio(c["tp"], c["tp"] + c["fn"]),
        specificity=_ratio(c["tn"], c["tn"] + c["fp"]),
        precision=_ratio(c["tp"], c["tp"] + c["fp"]),
        hd95_mm=hd95,
        hausdorff_mm=hd,
        assd_mm=asd,
        volume_pred_mm3=v_pred,
        volume_truth_mm3=v_truth,
        volume_error_percent=100.0 * (v_pred - v_truth) / v_truth if v_truth else float("nan"),
        **c,
    )


def mesh_to_mesh_distances(points_mm, vertices_mm, faces, *, samples_per_mm2: float = 20.0) -> np.ndarray:
    """Distance (mm) from each point to a triangle surface, to within about its sampling step.

    The surface is sampled densely (its vertices, face centres and ``samples_per_mm2`` uniform
    random points per mm², fixed seed) and each point takes the distance to the nearest
    sample; with 20 samples per mm² the step is about 0.2 mm, so distances are overestimated by
    at most about 0.1 mm. Used to compare a lumen surface with a peer's (e.g. VMTK's).
    """
    from scipy.spatial import cKDTree

    v = np.asarray(vertices_mm, float)
    f = np.asarray(faces, np.int64)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(0)
    n = int(np.ceil(samples_per_mm2 * area.sum()))
    pick = rng.choice(len(f), size=n, p=area / area.sum())
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    samples = tri[pick, 0] + u[:, None] * (tri[pick, 1] - tri[pick, 0]) + w[:, None] * (tri[pick, 2] - tri[pick, 0])
    cloud = np.vstack([v, tri.mean(axis=1), samples])
    d, _ = cKDTree(cloud).query(np.asarray(points_mm, float))
    return d
