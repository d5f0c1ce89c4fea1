"""Deterministic geometric perturbations of a binary segmentation, for sensitivity studies.

What it is for: a study asks "how much does the pressure drop (or the organ dose) move if
the lumen were 0.1 mm larger, smoother, noisier, coarser, or narrower only at the
stenosis?". Each operator here takes a 3-D boolean mask on a grid with voxel size
``spacing_mm = (dz, dy, dx)`` (the :class:`pipeline.image.Volume` convention, array axes
``[z, y, x]``), changes its boundary in one controlled way and returns a
:class:`Perturbation`: the new mask, where meaningful a sub-voxel signed distance field of
the new boundary, and a JSON-friendly report of the change it made.

Signed distance field (SDF)
---------------------------
All boundary operators work on a signed distance ``phi`` in mm, negative inside, zero on the
surface (Osher & Fedkiw, *Level Set Methods and Dynamic Implicit Surfaces*, 2003). It is
built at sub-voxel precision from a positive-inside level field ``g`` (a mask lightly
Gaussian-smoothed, ``sigma = 0.8`` voxel per axis, minus 0.5 -- close to the field the
surface stage contours when it has no CT image, a little smoother to damp the staircase; or a
CT image minus its iso-level):

1. in the narrow band of voxels that have a face neighbour of the other sign, the distance
   ``phi0`` to the zero set -- for a smoothed mask by inverting the error-function edge
   profile, ``phi0 = -sigma_n * Phi^-1(g + 0.5)`` with the blur width along the normal
   ``sigma_n``; for an image from the linearly interpolated zero crossings along the three
   axes, ``phi0 = 1 / sqrt(sum_a 1 / d_a**2)`` (both exact for a plane) -- and the foot
   point on the surface ``p = x - phi0 * n`` with the outward normal
   ``n = -grad g / |grad g|`` (gradient in mm, central differences);
2. every other voxel takes, with the sign of ``g``, the distance to the tangent plane at the
   foot point of its nearest band voxel (within two voxels of that foot point) or to the foot
   point itself (further out); the nearest band voxel comes from an exact Euclidean distance
   transform with ``sampling=spacing_mm`` (Maurer et al. 2003,
   ``scipy.ndimage.distance_transform_edt``).

Because ``|grad phi| ~ 1``, the zero set of ``phi - delta`` lies ``delta`` mm outside the
zero set of ``phi`` (a uniform normal offset, exact for a straight wall, to second order in
``delta * curvature`` elsewhere). That is how :func:`offset_boundary` achieves sub-voxel
offsets: its :attr:`Perturbation.sdf_mm` is ``phi - delta``, and the field
``-sdf_mm`` (positive inside, mm) can be handed to the surface stage as an ``intensity``
image with ``level=0`` (see :func:`perturbed_intensity`), where marching cubes recovers the
offset surface between voxel centres. The boolean :attr:`Perturbation.mask` is the same
field thresholded at voxel centres, so it can only move in whole voxels.

Report keys (all operators): ``operator``, its parameters, ``volume_before_mm3``,
``volume_after_mm3``, ``volume_change_mm3``, ``volume_change_percent`` (voxel counts times
voxel volume), ``surface_area_mm2`` (marching-cubes area of the original boundary),
``equivalent_mean_radius_change_mm`` = ``volume_change_mm3 / surface_area_mm2`` (the mean
normal displacement of the wall that would give this volume change), and the symmetric
surface distances to the original from :mod:`pipeline.metrics`: ``assd_mm`` (mean),
``hd95_mm`` and ``hausdorff_mm`` (max). Surface distances use voxel-centre boundaries, so
they resolve changes of about a voxel, not below.

Faces of the array that the mask touches are treated as open (the field is edge-replicated
there), so a vessel crossing the image boundary is offset only sideways, not lengthened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline import metrics
from pipeline.image import Volume

__all__ = [
    "PerturbationError",
    "Perturbation",
    "SMOOTH_METHODS",
    "signed_distance",
    "offset_boundary",
    "perturbed_intensity",
    "smooth_shrink",
    "threshold_shift",
    "correlated_noise_boundary",
    "probability_sample",
    "resample_coarse",
    "local_offset",
]

#: Gaussian sigma (voxels, per axis) of the level field built from a binary mask.
MASK_SIGMA_VOXELS = 0.8
#: Smoothing methods of :func:`smooth_shrink`.
SMOOTH_METHODS = ("laplacian", "taubin")

_FACE = ndimage.generate_binary_structure(3, 1)


class PerturbationError(ValueError):
    """An input a perturbation cannot use (the message names the parameter and what is valid)."""


@dataclass
class Perturbation:
    """Result of one perturbation operator.

    Attributes
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
        The perturbed mask (on the coarse grid for :func:`resample_coarse`).
    spacing_mm : tuple of 3 floats
        Voxel size of ``mask`` along the array axes ``(dz, dy, dx)``, mm.
    report : dict
        What changed, JSON-friendly (see the module docstring for the keys).
    sdf_mm : ndarray of float, optional
        Signed distance to the perturbed surface in mm, negative inside, zero on the surface,
        at sub-voxel precision; ``None`` where the operator has none.
    """

    mask: np.ndarray
    spacing_mm: tuple[float, float, float]
    report: dict[str, Any] = field(default_factory=dict)
    sdf_mm: np.ndarray | None = None

    def level_field(self) -> np.ndarray:
        """``-sdf_mm``: positive inside, in mm, to contour at level 0 (raises if there is no SDF)."""
        if self.sdf_mm is None:
            raise PerturbationError(f"operator {self.report.get('operator')!r} gives no signed distance field")
        return -self.sdf_mm


# --------------------------------------------------------------------------- validation
def _check_mask(mask, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise PerturbationError(
            f"{name} must be a 3-D array indexed [z, y, x]; got {arr.ndim}-D with shape {arr.shape}"
        )
    if min(arr.shape) < 2:
        raise PerturbationError(f"{name} has shape {arr.shape}: need at least 2 voxels along every axis")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise PerturbationError(f"{name} must be a boolean (or 0/1) mask, got dtype {arr.dtype} with other values")
        arr = arr.astype(bool)
    if not arr.any():
        raise PerturbationError(f"{name} is empty (no voxel set): there is no boundary to perturb")
    if arr.all():
        raise PerturbationError(f"{name} fills the whole array: there is no boundary to perturb; pad the array")
    return arr


def _check_spacing(spacing_mm, name: str = "spacing_mm") -> tuple[float, float, float]:
    try:
        sp = np.asarray(spacing_mm, dtype=float).ravel()
    except (TypeError, ValueError):
        raise PerturbationError(f"{name} must be three positive voxel sizes in mm (dz, dy, dx), got {spacing_mm!r}") from None
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise PerturbationError(f"{name} must be three positive voxel sizes in mm (dz, dy, dx), got {spacing_mm!r}")
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def _check_float(value, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PerturbationError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise PerturbationError(f"{name} must be finite, got {value!r}")
    if positive and v <= 0:
        raise PerturbationError(f"{name} must be > 0, got {value!r}")
    if nonnegative and v < 0:
        raise PerturbationError(f"{name} must be >= 0, got {value!r}")
    return v


# --------------------------------------------------------------------------- kernels
def _mask_level_field(mask: np.ndarray) -> np.ndarray:
    """Positive-inside field of a mask: Gaussian-smoothed (``MASK_SIGMA_VOXELS``) indicator minus 0.5."""
    return ndimage.gaussian_filter(mask.astype(np.float64), sigma=MASK_SIGMA_VOXELS, mode="nearest") - 0.5


def _sdf_from_level_field(g: np.ndarray, sp: tuple[float, float, float], sigma_vox: float | None = None) -> np.ndarray:
    """Signed distance (mm, negative inside) to the zero set of the positive-inside field ``g``.

    With ``sigma_vox`` (``g`` is a mask smoothed by that Gaussian, minus 0.5) the band distance
    inverts the error-function edge profile, ``phi0 = -sigma_n * Phi^-1(g + 0.5)`` with the
    blur width along the normal ``sigma_n``: exact for a plane. Without it (a CT image) it
    combines the linearly interpolated zero crossings along the three axes,
    ``phi0 = 1 / sqrt(sum 1/d_a**2)``: exact for a plane and a linear field.
    """
    from scipy.special import ndtri

    inside = g > 0
    band = (inside & ~ndimage.binary_erosion(inside, _FACE, border_value=1)) | (
        ~inside & ndimage.binary_dilation(inside, _FACE)
    )
    grads = np.gradient(g, *sp)
    gn = np.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2)
    bidx = np.nonzero(band)
    gnb = np.maximum(gn[bidx], 1e-300)
    nrm = np.stack([-grads[a][bidx] / gnb for a in range(3)], axis=1)
    del grads, gn
    gb = g[bidx]
    if sigma_vox is not None:
        sig_n = np.sqrt(sum((nrm[:, a] * sigma_vox * sp[a]) ** 2 for a in range(3)))
        phi0 = -sig_n * ndtri(np.clip(gb + 0.5, 1e-12, 1.0 - 1e-12))
    else:
        inv2 = np.zeros(gb.size)
        for a in range(3):
            best = np.full(gb.size, np.inf)
            for step in (-1, 1):
                nb = list(bidx)
                nb[a] = bidx[a] + step
                ok = (nb[a] >= 0) & (nb[a] < g.shape[a])
                gnb_val = np.zeros(gb.size)
                gnb_val[ok] = g[tuple(x[ok] for x in nb)]
                cross = ok & ((gnb_val > 0) != (gb > 0))
                t = np.full(gb.size, np.inf)
                t[cross] = gb[cross] / (gb[cross] - gnb_val[cross]) * sp[a]
                best = np.minimum(best, t)
            fin = np.isfinite(best)
            inv2[fin] += 1.0 / np.maximum(best[fin], 1e-9 * sp[a]) ** 2
        phi0 = np.where(inv2 > 0, 1.0 / np.sqrt(np.maximum(inv2, 1e-300)), 0.0)
        phi0 = np.where(gb > 0, -phi0, phi0)
    hmax = max(sp)
    phi0 = np.clip(phi0, -hmax, hmax)
    pos = np.stack([bidx[a] * sp[a] for a in range(3)], axis=1)
    foot = pos - phi0[:, None] * nrm  # surface points, mm, (z, y, x)

    # nearest band voxel of every voxel, then distance to that voxel's foot point
    lookup = np.full(g.shape, -1, dtype=np.int64)
    lookup[bidx] = np.arange(bidx[0].size)
    _, ind = ndimage.distance_transform_edt(~band, sampling=sp, return_distances=True, return_indices=True)
    nearest = lookup[ind[0], ind[1], ind[2]]
    del ind
    grid = np.indices(g.shape, dtype=np.float64)
    d2 = np.zeros(g.shape)
    plane = np.zeros(g.shape)
    for a in range(3):
        diff = grid[a] * sp[a] - foot[nearest, a]
        d2 += diff**2
        plane += diff * nrm[nearest, a]
    del grid
    phi = np.sqrt(d2)
    # near the band, the distance to the foot point's tangent plane (second-order accurate,
    # not biased outwards by the nearest band voxel's foot being off the true closest point)
    close = phi < 2.0 * hmax
    phi[close] = np.abs(plane[close])
    phi[inside] *= -1.0
    phi[bidx] = phi0
    return phi


def _volume_mm3(mask: np.ndarray, sp) -> float:
    return float(np.count_nonzero(mask)) * float(np.prod(sp))


def _surface_area_mm2(g: np.ndarray, sp) -> float:
    """Marching-cubes area of the zero set of the positive-inside field ``g`` (edge-replicated borders)."""
    from skimage import measure

    inside = g > 0
    if not inside.any() or inside.all():
        return float("nan")
    nz = np.argwhere(inside)
    lo = np.maximum(nz.min(axis=0) - 3, 0)
    hi = np.minimum(nz.max(axis=0) + 4, g.shape)
    f = np.pad(g[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1, mode="edge")
    verts, faces, _, _ = measure.marching_cubes(f, level=0.0, spacing=sp)
    return float(measure.mesh_surface_area(verts, faces))


def _report(operator: str, params: dict, before: np.ndarray, after: np.ndarray, sp, area_mm2: float) -> dict:
    v0 = _volume_mm3(before, sp)
    v1 = _volume_mm3(after, sp)
    dv = v1 - v0
    rep: dict[str, Any] = {"operator": operator, **params}
    rep.update(
        volume_before_mm3=v0,
        volume_after_mm3=v1,
        volume_change_mm3=dv,
        volume_change_percent=100.0 * dv / v0 if v0 else float("nan"),
        surface_area_mm2=area_mm2,
        equivalent_mean_radius_change_mm=dv / area_mm2 if area_mm2 and math.isfinite(area_mm2) else float("nan"),
    )
    if after.any():
        dab, dba = metrics.surface_distances(after, before, spacing_mm=sp)
        pooled = np.concatenate([dab, dba])
        rep.update(
            assd_mm=float(pooled.mean()),
            hd95_mm=float(max(np.percentile(dab, 95.0), np.percentile(dba, 95.0))),
            hausdorff_mm=float(pooled.max()),
        )
    else:
        rep.update(assd_mm=float("nan"), hd95_mm=float("nan"), hausdorff_mm=float("nan"))
    return rep


def _apply_offset(mask: np.ndarray, phi: np.ndarray, shift_mm: np.ndarray | float) -> np.ndarray:
    """New mask ``phi < shift`` made monotone: an outward shift only adds, an inward one only removes."""
    new = phi < shift_mm
    shift = np.broadcast_to(np.asarray(shift_mm, dtype=float), mask.shape)
    return np.where(shift > 0, mask | new, np.where(shift < 0, mask & new, mask))


# --------------------------------------------------------------------------- public API
def signed_distance(mask, *, spacing_mm) -> np.ndarray:
    """Sub-voxel signed distance to a mask's boundary, in mm, negative inside.

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
        Non-empty binary mask.
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.

    Returns
    -------
    ndarray of float64, same shape
        ``phi`` in mm; its zero set is the 0.5 contour of the mask smoothed with a Gaussian of
        0.8 voxel per axis, located between voxel centres.
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_mm)
    return _sdf_from_level_field(_mask_level_field(m), sp, MASK_SIGMA_VOXELS)


def offset_boundary(mask, spacing_mm, delta_mm) -> Perturbation:
    """Move the whole boundary ``delta_mm`` along its normal (outwards if positive).

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.
    delta_mm : float
        Normal offset, mm; positive dilates, negative erodes. Any size, including sub-voxel.

    Returns
    -------
    Perturbation
        ``mask`` = voxels with ``phi < delta`` (only added for ``delta > 0``, only removed for
        ``delta < 0``); ``sdf_mm = phi - delta`` carries the sub-voxel offset surface.
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_mm)
    d = _check_float(delta_mm, "delta_mm")
    g = _mask_level_field(m)
    phi = _sdf_from_level_field(g, sp, MASK_SIGMA_VOXELS)
    new = _apply_offset(m, phi, d)
    rep = _report("offset_boundary", {"delta_mm": d}, m, new, sp, _surface_area_mm2(g, sp))
    return Perturbation(mask=new, spacing_mm=sp, report=rep, sdf_mm=phi - d)


def perturbed_intensity(image, level, delta_mm, *, mask=None) -> tuple[Volume, float]:
    """A field whose iso-surface is the image's own ``level`` iso-surface moved ``delta_mm`` outwards.

    For the CT-angiogram road, where the surface stage runs marching cubes on the CT image at
    the segmentation level: the signed distance ``phi`` to the iso-surface ``image = level`` is
    built at sub-voxel precision from the image itself (see the module docstring), and the
    returned image is ``delta_mm - phi`` (mm, positive inside) to be contoured at level 0.

    Parameters
    ----------
    image : pipeline.image.Volume
        CT image (HU), lumen brighter than ``level``.
    level : float
        Iso-value of the wall, HU (e.g. the segmentation's half-maximum level).
    delta_mm : float
        Outward normal offset, mm (negative moves the wall inwards).
    mask : ndarray of bool, optional
        Lumen mask on the same grid; when given, the field is restricted to its neighbourhood
        (2 voxels of face dilation), as the surface stage does, so other bright structures
        do not contribute.

    Returns
    -------
    (Volume, float)
        The perturbed field on the image's grid and the level (0.0) to contour it at. Pass
        both to ``pipeline.surface.make_tagged_surface(mask, intensity=..., level=0.0,
        blur_correction=False)`` -- the field is already a distance, not a blurred edge.
    """
    if not isinstance(image, Volume):
        raise PerturbationError(f"image must be a pipeline.image.Volume, got {type(image).__name__}")
    lv = _check_float(level, "level")
    d = _check_float(delta_mm, "delta_mm")
    sp = _check_spacing(image.spacing_mm, "image.spacing_mm")
    g = np.asarray(image.array, dtype=np.float64) - lv
    if mask is not None:
        m = _check_mask(mask)
        if m.shape != g.shape:
            raise PerturbationError(f"mask has shape {m.shape} but image has shape {g.shape}: they must match")
        near = ndimage.binary_dilation(m, _FACE, iterations=2)
        g[~near] = min(float(g.min()), 0.0) - 1.0
    inside = g > 0
    if not inside.any() or inside.all():
        raise PerturbationError(
            f"level={lv!r} does not cut the image (range {float(image.array.min())!r} to "
            f"{float(image.array.max())!r}): choose a level between the lumen and background values"
        )
    phi = _sdf_from_level_field(g, sp)
    return image.with_array(d - phi), 0.0


def smooth_shrink(mask, spacing_mm, iterations, method: str = "laplacian") -> Perturbation:
    """Smooth the boundary as surface smoothing would, with or without its shrinkage.

    ``iterations`` passes of a Gaussian of 1 voxel (per axis) -- together a Gaussian of
    ``sqrt(iterations)`` voxels, the heat-kernel equivalent of that many Laplacian steps.

    * ``"laplacian"``: smooth the mask indicator and threshold at 0.5. The 0.5 contour moves
      inwards where the surface is convex (mean-curvature flow), so a cylinder of radius ``R``
      loses about ``sigma**2 / (2 R)`` of radius -- the shrinkage of Laplacian mesh smoothing.
    * ``"taubin"``: smooth the signed distance field instead, then choose the threshold so that
      the voxel count (volume) is unchanged: the noise is removed, the volume is kept, as
      Taubin's lambda|mu filter intends (Taubin 1995).

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.
    iterations : int
        Number of 1-voxel Gaussian passes, >= 1.
    method : {"laplacian", "taubin"}

    Returns
    -------
    Perturbation
        ``sdf_mm`` is the signed distance of the smoothed boundary; the report adds
        ``sigma_voxels`` and, for ``"taubin"``, ``level_correction_mm``.
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_mm)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise PerturbationError(f"iterations must be an integer >= 1, got {iterations!r}")
    if method not in SMOOTH_METHODS:
        raise PerturbationError(f"method must be one of {SMOOTH_METHODS}, got {method!r}")
    sigma = math.sqrt(int(iterations))
    g0 = _mask_level_field(m)
    params: dict[str, Any] = {"iterations": int(iterations), "method": method, "sigma_voxels": sigma}
    if method == "laplacian":
        g = ndimage.gaussian_filter(m.astype(np.float64), sigma=sigma, mode="nearest") - 0.5
        new = g > 0
        if not new.any():
            raise PerturbationError(
                f"iterations={iterations} smooths the whole mask away; use fewer iterations"
            )
        sdf = _sdf_from_level_field(g, sp, sigma)
    else:
        phi = _sdf_from_level_field(g0, sp, MASK_SIGMA_VOXELS)
        phs = ndimage.gaussian_filter(phi, sigma=sigma, mode="nearest")
        n0 = int(np.count_nonzero(m))
        flat = np.sort(phs, axis=None)
        # threshold halfway between the n0-th and (n0+1)-th smallest values: exactly n0 voxels inside
        c = 0.5 * (flat[n0 - 1] + flat[n0]) if n0 < flat.size else flat[-1] + 1.0
        new = phs < c
        sdf = _sdf_from_level_field(c - phs, sp)
        params["level_correction_mm"] = float(c)
    rep = _report("smooth_shrink", params, m, new, sp, _surface_area_mm2(g0, sp))
    return Perturbation(mask=new, spacing_mm=sp, report=rep, sdf_mm=sdf)


def threshold_shift(image, level, delta_hu, *, spacing_mm=None) -> Perturbation:
    """Re-threshold a grey-level image at ``level + delta_hu`` instead of ``level``.

    Parameters
    ----------
    image : pipeline.image.Volume or ndarray, shape (nz, ny, nx)
        Grey-level image (HU); the object is where ``image > threshold``.
    level : float
        Reference threshold, HU.
    delta_hu : float
        Threshold change, HU (positive makes a bright object smaller).
    spacing_mm : sequence of 3 float, optional
        Voxel size ``(dz, dy, dx)`` in mm; required for an ndarray, taken from a Volume.

    Returns
    -------
    Perturbation
        ``mask = image > level + delta_hu``; the report compares it with ``image > level``
        and ``sdf_mm`` is the signed distance to the new iso-surface of the image.
    """
    if isinstance(image, Volume):
        arr = np.asarray(image.array, dtype=np.float64)
        sp = _check_spacing(image.spacing_mm if spacing_mm is None else spacing_mm)
    else:
        arr = np.asarray(image, dtype=np.float64) if np.asarray(image).dtype.kind in "biuf" else None
        if arr is None:
            raise PerturbationError(f"image must be a numeric 3-D array or a Volume, got dtype {np.asarray(image).dtype}")
        if spacing_mm is None:
            raise PerturbationError("spacing_mm is required when image is an ndarray (or pass a pipeline.image.Volume)")
        sp = _check_spacing(spacing_mm)
    if arr.ndim != 3:
        raise PerturbationError(f"image must be a 3-D array indexed [z, y, x]; got {arr.ndim}-D with shape {arr.shape}")
    lv = _check_float(level, "level")
    d = _check_float(delta_hu, "delta_hu")
    before = arr > lv
    after = arr > lv + d
    for name, mm, t in (("level", before, lv), ("level + delta_hu", after, lv + d)):
        if not mm.any() or mm.all():
            raise PerturbationError(
                f"{name} = {t!r} HU does not cut the image (range {arr.min():.4g} to {arr.max():.4g} HU): "
                "choose a threshold between the object and background values"
            )
    rep = _report("threshold_shift", {"level": lv, "delta_hu": d}, before, after, sp, _surface_area_mm2(arr - lv, sp))
    return Perturbation(mask=after, spacing_mm=sp, report=rep, sdf_mm=_sdf_from_level_field(arr - (lv + d), sp))


def correlated_noise_boundary(mask, spacing_mm, amplitude_mm, correlation_length_mm, seed) -> Perturbation:
    """Displace the boundary by a spatially correlated Gaussian random field.

    White Gaussian noise on the grid (``numpy.random.default_rng(seed)``) is smoothed with a
    Gaussian of standard deviation ``correlation_length_mm`` (per axis in voxels,
    ``correlation_length_mm / spacing``), then scaled so that its root-mean-square over the
    boundary band (voxels with a face neighbour on the other side of the surface) is
    ``amplitude_mm``. The new boundary is the zero set of ``phi - noise``: the wall moves
    outwards by the local noise value. The field's autocorrelation is Gaussian with standard
    deviation ``sqrt(2) * correlation_length_mm``.

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.
    amplitude_mm : float
        RMS normal displacement on the surface, mm, >= 0.
    correlation_length_mm : float
        Smoothing length of the noise, mm, > 0.
    seed : int
        Seed; the same seed gives the same mask.

    Returns
    -------
    Perturbation
        The report adds ``noise_rms_on_surface_mm`` (equal to ``amplitude_mm`` by construction)
        and ``noise_max_abs_on_surface_mm``.
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_mm)
    amp = _check_float(amplitude_mm, "amplitude_mm", nonnegative=True)
    cl = _check_float(correlation_length_mm, "correlation_length_mm", positive=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PerturbationError(f"seed must be a non-negative integer, got {seed!r}")
    g = _mask_level_field(m)
    phi = _sdf_from_level_field(g, sp, MASK_SIGMA_VOXELS)
    rng = np.random.default_rng(int(seed))
    white = rng.standard_normal(m.shape)
    noise = ndimage.gaussian_filter(white, sigma=[cl / s for s in sp], mode="reflect")
    inside = g > 0
    band = (inside & ~ndimage.binary_erosion(inside, _FACE, border_value=1)) | (
        ~inside & ndimage.binary_dilation(inside, _FACE)
    )
    rms = float(np.sqrt(np.mean(noise[band] ** 2)))
    noise *= (amp / rms) if rms > 0 else 0.0
    sdf = phi - noise
    new = np.where(noise > 0, m | (sdf < 0), np.where(noise < 0, m & (sdf < 0), m))
    if not new.any():
        raise PerturbationError(f"amplitude_mm={amp} erodes the whole mask; use a smaller amplitude")
    params = {
        "amplitude_mm": amp,
        "correlation_length_mm": cl,
        "seed": int(seed),
        "noise_rms_on_surface_mm": float(np.sqrt(np.mean(noise[band] ** 2))),
        "noise_max_abs_on_surface_mm": float(np.abs(noise[band]).max()),
    }
    rep = _report("correlated_noise_boundary", params, m, new, sp, _surface_area_mm2(g, sp))
    return Perturbation(mask=new, spacing_mm=sp, report=rep, sdf_mm=sdf)


def probability_sample(probability, spacing_mm, correlation_length_mm, seed, *, band: float = 0.95) -> np.ndarray:
    """A random lumen drawn from a segmenter's probability map, spatially correlated.

    A stationary Gaussian random field ``z`` (white noise from ``numpy.random.default_rng(seed)``,
    drawn on the grid padded by four smoothing lengths, smoothed by a Gaussian of
    ``correlation_length_mm``, per axis in voxels, and scaled to unit variance by the filter's
    own sum of squared weights) becomes a uniform level ``u = Phi(z)``; the sample is ``probability > u``.
    Each voxel is then lumen with exactly its probability (marginally the map's answer), while
    voxels closer than about the correlation length move together, as a wall drawn by a
    different annotator or model would. The limits: a vanishing length gives independent
    voxels, an infinite one a single global level drawn uniformly (the map's own thresholds).
    The level is kept within the map's central ``band`` (``u`` clipped to [0.025, 0.975] for
    0.95): exact for every voxel whose probability lies in that band, it leaves out the
    speckle of the map's far tails (specks of lumen at p ~ 0.01 away from the wall, pinholes
    at p ~ 0.99 inside it) that no wall is drawn through.

    Returns the level field ``probability - u + 0.5`` (float32; lumen where above 0.5, so a
    surface at 0.5 is the sample's wall, smooth where both fields are).
    """
    from scipy.special import ndtr

    p = np.asarray(probability, np.float64)
    if p.ndim != 3:
        raise PerturbationError(f"probability must be a 3-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise PerturbationError("probability must hold finite values in [0, 1] (a probability map)")
    sp = _check_spacing(spacing_mm)
    cl = _check_float(correlation_length_mm, "correlation_length_mm", positive=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PerturbationError(f"seed must be a non-negative integer, got {seed!r}")
    sigma = [cl / s for s in sp]
    pad = [int(np.ceil(4.0 * g)) + 1 for g in sigma]  # (white noise beyond the faces: a stationary field)
    white = np.random.default_rng(int(seed)).standard_normal([n + 2 * q for n, q in zip(p.shape, pad)])
    z = ndimage.gaussian_filter(white, sigma=sigma, mode="constant")
    z = z[tuple(slice(q, q + n) for q, n in zip(pad, p.shape))]
    # unit variance: the filter's own, the product over axes of the sum of its squared weights
    var = 1.0
    for g in sigma:
        delta = np.zeros(2 * int(np.ceil(4.0 * g)) + 3)
        delta[len(delta) // 2] = 1.0
        var *= float(np.sum(ndimage.gaussian_filter1d(delta, g, mode="constant") ** 2))
    if not 0.0 < band <= 1.0:
        raise PerturbationError(f"band must lie in (0, 1], got {band!r}")
    u = np.clip(ndtr(z / np.sqrt(var)), 0.5 * (1.0 - band), 0.5 * (1.0 + band))
    return (p - u + 0.5).astype(np.float32)


def _overlap_matrix(n_old: int, h_old: float, h_new: float) -> np.ndarray:
    """Row-normalised overlap lengths of new cells ``[j H, (j+1) H)`` with old cells ``[i h, (i+1) h)``."""
    extent = n_old * h_old
    n_new = max(1, int(math.ceil(extent / h_new - 1e-9)))
    lo_new = np.arange(n_new)[:, None] * h_new
    hi_new = np.minimum(lo_new + h_new, extent)
    lo_old = np.arange(n_old)[None, :] * h_old
    hi_old = lo_old + h_old
    w = np.clip(np.minimum(hi_new, hi_old) - np.maximum(lo_new, lo_old), 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def resample_coarse(mask, spacing_mm, new_spacing_mm) -> Perturbation:
    """Resample a mask to coarser voxels: partial-volume average, then threshold at 0.5.

    Each new voxel is the exact volume fraction of the old mask inside it (separable overlap
    weights; any ratio of voxel sizes), so the grid's first corner is kept: the new voxel
    ``[0, 0, 0]`` spans the old ``[0 .. H/h)`` along each axis and its centre lies
    ``(H - h) / 2`` mm further than the old voxel ``[0, 0, 0]``'s (reported as
    ``origin_shift_mm``, array-axis order; add it along the direction cosines to a Volume's
    origin). A last, partial new voxel averages only the part inside the old grid.

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
    spacing_mm : sequence of 3 float
        Old voxel size ``(dz, dy, dx)``, mm.
    new_spacing_mm : sequence of 3 float
        New voxel size, mm, each >= the old one.

    Returns
    -------
    Perturbation
        ``mask`` and ``spacing_mm`` on the new grid. The report's volumes compare the two
        grids; its surface distances compare the old mask with the new one painted back onto
        the old grid (nearest new voxel), and ``partial_volume_mm3`` is the volume before
        thresholding (equal to the old volume up to rounding).
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_mm)
    nsp = _check_spacing(new_spacing_mm, "new_spacing_mm")
    if any(n < o * (1 - 1e-9) for n, o in zip(nsp, sp)):
        raise PerturbationError(
            f"new_spacing_mm={nsp} must be >= spacing_mm={sp} along every axis (this operator only coarsens)"
        )
    mats = [_overlap_matrix(m.shape[a], sp[a], nsp[a]) for a in range(3)]
    frac = m.astype(np.float64)
    for a in range(3):
        frac = np.moveaxis(np.tensordot(mats[a], np.moveaxis(frac, a, 0), axes=(1, 0)), 0, a)
    coarse = frac >= 0.5
    # paint back: the new voxel that contains each old voxel centre
    idx = [np.minimum(((np.arange(m.shape[a]) + 0.5) * sp[a] / nsp[a]).astype(int), coarse.shape[a] - 1)
           for a in range(3)]
    back = coarse[np.ix_(*idx)]
    rep = _report("resample_coarse", {"new_spacing_mm": list(nsp)}, m, back, sp,
                  _surface_area_mm2(_mask_level_field(m), sp))
    # volumes on the native grids (the painted-back mask rounds partial last voxels)
    v0 = _volume_mm3(m, sp)
    v1 = _volume_mm3(coarse, nsp)
    pv = float(frac.sum()) * float(np.prod(nsp))
    rep.update(
        volume_after_mm3=v1,
        volume_change_mm3=v1 - v0,
        volume_change_percent=100.0 * (v1 - v0) / v0,
        equivalent_mean_radius_change_mm=(v1 - v0) / rep["surface_area_mm2"],
        partial_volume_mm3=pv,
        new_shape=[int(n) for n in coarse.shape],
        origin_shift_mm=[0.5 * (n - o) for n, o in zip(nsp, sp)],
    )
    return Perturbation(mask=coarse, spacing_mm=nsp, report=rep, sdf_mm=None)


def _taper(d_mm: np.ndarray, blend_mm: float) -> np.ndarray:
    """1 for ``d <= 0``, 0 for ``d >= blend``, a raised-cosine fall in between."""
    if blend_mm <= 0:
        return (d_mm <= 0).astype(np.float64)
    t = np.clip(d_mm / blend_mm, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def local_offset(
    mask,
    spacing_mm,
    delta_mm,
    *,
    region_mask=None,
    centre_mm=None,
    radius_mm=None,
    blend_mm: float = 1.0,
) -> Perturbation:
    """Offset the boundary by ``delta_mm`` only within a region, blending smoothly to zero outside.

    The offset is ``delta_mm * w(x)`` with weight ``w = 1`` inside the region, falling as a
    raised cosine to 0 at ``blend_mm`` outside it (distance from the region by an exact EDT, or
    from the sphere). Voxels where ``w = 0`` keep their original value exactly.

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)``, mm.
    delta_mm : float
        Normal offset inside the region, mm (negative narrows, e.g. a worse stenosis).
    region_mask : ndarray of bool, optional
        The region, same shape as ``mask``. Give this, or ``centre_mm`` and ``radius_mm``.
    centre_mm : sequence of 3 float, optional
        Centre of a spherical region in array-axis order ``(z, y, x)`` mm, measured from the
        centre of voxel ``[0, 0, 0]`` (``index * spacing``).
    radius_mm : float, optional
        Radius of the spherical region, mm, > 0.
    blend_mm : float
        Width of the blend outside the region, mm, >= 0 (0 gives a hard edge).

    Returns
    -------
    Perturbation
        The report adds ``region_volume_mm3``.
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing_mm)
    d = _check_float(delta_mm, "delta_mm")
    blend = _check_float(blend_mm, "blend_mm", nonnegative=True)
    if (region_mask is None) == (centre_mm is None and radius_mm is None):
        raise PerturbationError("give either region_mask or centre_mm and radius_mm (exactly one region)")
    params: dict[str, Any] = {"delta_mm": d, "blend_mm": blend}
    if region_mask is not None:
        r = np.asarray(region_mask)
        if r.shape != m.shape:
            raise PerturbationError(f"region_mask has shape {r.shape} but mask has shape {m.shape}: they must match")
        r = r.astype(bool)
        if not r.any():
            raise PerturbationError("region_mask is empty: mark the voxels to perturb")
        dist = ndimage.distance_transform_edt(~r, sampling=sp)
        region_voxels = int(np.count_nonzero(r))
    else:
        if centre_mm is None or radius_mm is None:
            raise PerturbationError("centre_mm and radius_mm must be given together")
        c = np.asarray(centre_mm, dtype=float).ravel()
        if c.shape != (3,) or not np.all(np.isfinite(c)):
            raise PerturbationError(f"centre_mm must be three finite numbers (z, y, x) in mm, got {centre_mm!r}")
        rad = _check_float(radius_mm, "radius_mm", positive=True)
        grid = np.indices(m.shape, dtype=np.float64)
        dist = np.sqrt(sum((grid[a] * sp[a] - c[a]) ** 2 for a in range(3))) - rad
        del grid
        region_voxels = int(np.count_nonzero(dist <= 0))
        params.update(centre_mm=[float(v) for v in c], radius_mm=rad)
    w = _taper(dist, blend)
    g = _mask_level_field(m)
    phi = _sdf_from_level_field(g, sp, MASK_SIGMA_VOXELS)
    shift = d * w
    new = _apply_offset(m, phi, shift)
    params["region_volume_mm3"] = region_voxels * float(np.prod(sp))
    rep = _report("local_offset", params, m, new, sp, _surface_area_mm2(g, sp))
    return Perturbation(mask=new, spacing_mm=sp, report=rep, sdf_mm=phi - shift)
