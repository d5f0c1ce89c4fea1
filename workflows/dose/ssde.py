"""Size-specific dose estimates (AAPM Reports 204 and 220) from a CT image.

CTDIvol is the dose to a 16 or 32 cm PMMA cylinder, not to a patient: a small patient
absorbs more per CTDIvol, a large one less. AAPM Report 204 (2011) gives the conversion
factor ``f(D)`` from CTDIvol to the size-specific dose estimate (SSDE) as a function of the
patient's effective diameter, from four independent Monte Carlo and measurement studies,
fitted as

    f(D) = a · exp(-b · D)   (D in cm),
    32 cm phantom: a = 3.704369, b = 0.03671937;  16 cm phantom: a = 1.874799, b = 0.03871313,

and tabulated for D = 8 to 45 cm (its Tables 1D and 2D; :data:`AAPM204_TABLE_32CM` holds the
32 cm column). AAPM Report 220 (2014) replaces the geometric diameter by the
**water-equivalent diameter** of each axial slice, which accounts for the attenuation of what
is in it (lungs, bone):

    A_w = Σ_ROI (HU / 1000 + 1) · A_pixel,   D_w = 2 · sqrt(A_w / π),

over the patient's region (here: voxels above -500 HU, the largest connected piece per slice
with its holes filled, so the table and air outside are left out and the lungs are kept).
SSDE per slice = f(D_w) · CTDIvol; the scan's SSDE is their mean over the scanned slices
(Report 220 §4 allows the mean of per-slice values).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["AAPM204_FIT", "AAPM204_TABLE_32CM", "conversion_factor", "water_equivalent_diameter_cm",
           "water_equivalent_diameters", "ssde"]

#: AAPM Report 204 exponential fits of f(D), by CTDI phantom diameter (cm): (a, b) with D in cm.
AAPM204_FIT = {32: (3.704369, 0.03671937), 16: (1.874799, 0.03871313)}
#: AAPM Report 204 Table 1D: conversion factors for the 32 cm phantom by effective diameter (cm),
#: as printed (two decimals).
AAPM204_TABLE_32CM = {
    8: 2.76, 9: 2.66, 10: 2.57, 11: 2.47, 12: 2.38, 13: 2.30, 14: 2.22, 15: 2.14, 16: 2.06, 17: 1.98,
    18: 1.91, 19: 1.84, 20: 1.78, 21: 1.71, 22: 1.65, 23: 1.59, 24: 1.53, 25: 1.48, 26: 1.43, 27: 1.37,
    28: 1.32, 29: 1.28, 30: 1.23, 31: 1.19, 32: 1.14, 33: 1.10, 34: 1.06, 35: 1.02, 36: 0.99, 37: 0.95,
    38: 0.92, 39: 0.88, 40: 0.85, 41: 0.82, 42: 0.79, 43: 0.76, 44: 0.74, 45: 0.71,
}
#: Region of the patient: CT numbers above this (HU).
BODY_THRESHOLD_HU = -500.0


def conversion_factor(diameter_cm, phantom_cm: int = 32):
    """AAPM 204 f(D): SSDE / CTDIvol for an effective or water-equivalent diameter ``D`` (cm).

    Outside the report's range (8 to 45 cm) the fit is extrapolated; :func:`ssde` says so.
    """
    if phantom_cm not in AAPM204_FIT:
        raise ValueError(f"CTDI phantom must be 16 or 32 cm, got {phantom_cm!r}")
    a, b = AAPM204_FIT[phantom_cm]
    d = np.asarray(diameter_cm, float)
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("diameters must be finite and positive (cm)")
    f = a * np.exp(-b * d)
    return float(f) if f.ndim == 0 else f


def _body(slice_hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    mask = slice_hu > threshold_hu
    if not mask.any():
        return mask
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def water_equivalent_diameter_cm(slice_hu, pixel_mm, *, threshold_hu: float = BODY_THRESHOLD_HU) -> float:
    """AAPM 220 water-equivalent diameter (cm) of one axial slice (2-D array in HU, pixel (dy, dx) mm).

    Returns 0 for a slice without patient.
    """
    hu = np.asarray(slice_hu, float)
    if hu.ndim != 2:
        raise ValueError(f"an axial slice is 2-D, got shape {hu.shape}")
    body = _body(hu, threshold_hu)
    area_mm2 = float(pixel_mm[0]) * float(pixel_mm[1])
    aw = float(np.sum(np.clip(hu[body], -1000.0, None) / 1000.0 + 1.0)) * area_mm2
    return 2.0 * math.sqrt(aw / math.pi) / 10.0


def water_equivalent_diameters(hu_zyx, spacing_mm, *, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """D_w (cm) of every axial slice of a CT volume (z, y, x in HU; spacing (dz, dy, dx) mm)."""
    hu = np.asarray(hu_zyx)
    if hu.ndim != 3:
        raise ValueError(f"a CT volume is 3-D (z, y, x), got shape {hu.shape}")
    return np.array([water_equivalent_diameter_cm(s, spacing_mm[1:], threshold_hu=threshold_hu) for s in hu])


def ssde(hu_zyx, spacing_mm, ctdivol_mGy: float | None = None, *, phantom_cm: int = 32,
         threshold_hu: float = BODY_THRESHOLD_HU) -> dict:
    """Size-specific dose estimate of a scan over this CT's slices (module docstring).

    Returns ``water_equivalent_diameter_cm`` (per slice), ``mean_dw_cm``, ``centre_dw_cm``,
    ``conversion_factor`` (per slice) and ``mean_conversion_factor``, and, with ``ctdivol_mGy``,
    ``ssde_mGy`` (mean over the slices with patient) and ``ssde_per_slice_mGy``; ``notes`` say
    when a diameter lies outside the report's 8-45 cm.
    """
    dw = water_equivalent_diameters(hu_zyx, spacing_mm, threshold_hu=threshold_hu)
    has = dw > 0
    if not has.any():
        raise ValueError(f"no slice holds a patient (no voxel above {threshold_hu:g} HU): is this a CT in HU?")
    f = np.where(has, conversion_factor(np.where(has, dw, 1.0), phantom_cm), np.nan)
    out = {"phantom_cm": phantom_cm, "threshold_hu": threshold_hu,
           "water_equivalent_diameter_cm": [float(v) for v in dw],
           "mean_dw_cm": float(dw[has].mean()), "centre_dw_cm": float(dw[len(dw) // 2]),
           "conversion_factor": [None if not math.isfinite(v) else float(v) for v in f],
           "mean_conversion_factor": float(np.nanmean(f)),
           "source": "AAPM Report 204 (2011) f(D) fit; AAPM Report 220 (2014) water-equivalent diameter",
           "notes": []}
    if dw[has].min() < 8 or dw[has].max() > 45:
        out["notes"].append(f"water-equivalent diameters {dw[has].min():.1f}-{dw[has].max():.1f} cm reach outside "
                            "AAPM 204's 8-45 cm: its fit is extrapolated there")
    if ctdivol_mGy is not None:
        per = f * float(ctdivol_mGy)
        out["ssde_mGy"] = float(np.nanmean(per))
        out["ssde_per_slice_mGy"] = [None if not math.isfinite(v) else float(v) for v in per]
        out["ctdivol_mGy"] = float(ctdivol_mGy)
    return out
