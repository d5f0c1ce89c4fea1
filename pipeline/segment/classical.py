"""Classical (threshold-based) segmentation of a contrast-filled vessel lumen in CT angiography.

What it is for: turn a CTA volume (HU, array ``[z, y, x]``) into a boolean lumen mask plus
the iso-level ``level_hu`` at which a later stage extracts a sub-voxel surface (marching
cubes on the image at that level, not on the staircase mask).

Where the lumen boundary is
---------------------------
A scanner images a bright tube through its point-spread function (PSF). Blurring a step
edge of height ``lumen - tissue`` with any symmetric PSF gives a profile that passes
through the *half maximum* ``(lumen + tissue) / 2`` exactly at the true edge (for a curved
edge of radius ``R`` and a Gaussian PSF of width ``s`` the half-maximum contour moves inward
by about ``s**2 / (2 R)``, under 0.1 voxel for ``R = 6, s = 1``). This is the classical
"full width at half maximum" rule of CT vessel sizing (Hoffmann et al., *Radiology* 1987;
Prokop & Galanski, *Spiral and Multislice CT*, ch. 2). Otsu's threshold (Otsu, *IEEE Trans.
SMC* 1979) maximises the between-class variance and so depends on how many voxels each class
holds; a vessel is a few per cent of the voxels, which pulls Otsu's value away from the
half maximum. Otsu is therefore used only to split bright from dark; the level is then

    tissue_hu = median of the dark (below-Otsu) voxels in a shell 2-5 voxels around the
                vessel's bright component (all dark voxels if the shell is empty),
    lumen_hu  = median of that bright component eroded by up to 2 voxels (the flat core
                of the blurred profile; the 90th percentile of the component if the
                eroded core has fewer than 10 voxels),
    level_hu  = (tissue_hu + lumen_hu) / 2.

If ``lumen_hu - tissue_hu`` is below ``MIN_CNR = 3`` robust noise standard deviations the
"vessel" is taken to be noise and no vessel is reported (a CTA lumen is typically 10-20
noise standard deviations above soft tissue). The noise is measured where the image is
homogeneous (:func:`robust_noise_sigma`): the residual of a 3 x 3 x 3 mean filter inside the
lumen core, or in the shell around the candidate when it has no core. The spread of the
surroundings' values is not noise in a real scan (air, lung, bone and contrast: 350-490 HU
on a chest CTA). With a seed, ``lumen_hu`` is the median of the lumen core within
``SEED_RADIUS_MM`` of the seed and ``tissue_hu`` is taken within twice that distance, so the
levels are those of the vessel the user named, not of everything bright it touches.

Calcium: calcified plaque is far brighter than iodinated blood (about 130-1000+ HU above
it). Voxels above ``upper_hu = lumen_hu + 0.75 (lumen_hu - tissue_hu)`` are excluded from
the lumen (for lumen 400 HU and tissue 40 HU: upper 670 HU, about 13 noise standard
deviations of a typical 20 HU CTA noise above the lumen). Voxels of the calcium's blurred
halo that lie between ``level_hu`` and ``upper_hu`` stay in the mask ("blooming"), which is
the known limit of any threshold method. Cavities of the chosen component are filled
(noise dips below the level inside the lumen), except voxels above ``upper_hu``: a calcium
spot wrapped in its own blooming halo is a cavity too, and stays out.

Which bright component is the vessel
------------------------------------
With a seed index, the face-connected component containing it (or the one nearest to it,
recorded in ``notes`` and warned about). Without a seed, the largest component that touches
at least two distinct faces of the image: a vessel crosses the field of view, while noise
specks, contrast in the heart chambers cut by only one face, and isolated blobs do not.
Air and lung (below -500 HU) are left out of the Otsu split so that the dark class is soft
tissue, not air.

Methods of :func:`segment_lumen`: ``"otsu"`` (threshold at ``[level_hu, upper_hu]``, pick
the component), ``"region-grow"`` (SimpleITK ``ConnectedThresholdImageFilter`` from the seed
with the same interval), ``"threshold"`` (user-given ``lower_hu``/``upper_hu``, no
estimation) and ``"auto"`` (``"region-grow"`` if a seed is given, else ``"otsu"``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "SegmentationError",
    "LumenSegmentation",
    "METHODS",
    "AIR_CUTOFF_HU",
    "CALCIUM_UPPER_FRACTION",
    "MIN_CNR",
    "SEED_RADIUS_MM",
    "otsu_threshold",
    "threshold",
    "region_grow",
    "largest_component",
    "fill_holes",
    "even_lumen_contrast",
    "estimate_lumen_levels",
    "detect_modality",
    "MODALITIES",
    "robust_noise_sigma",
    "segment_lumen",
]

METHODS = ("auto", "otsu", "region-grow", "threshold")
#: Image kinds: CT in Hounsfield units, or MR signal (arbitrary units, no HU assumptions).
MODALITIES = ("auto", "ct", "mr")
#: an image with any value below this is CT in HU (noise in soft tissue, fat and air go
#: negative); magnitude MR signal never does
CT_MINIMUM_BELOW = 0.0
#: voxels below this (air, lung) are left out of the bright/dark Otsu split, HU
AIR_CUTOFF_HU = -500.0
#: upper bound = lumen + CALCIUM_UPPER_FRACTION * (lumen - tissue), HU
CALCIUM_UPPER_FRACTION = 0.75
#: a vessel must exceed its surroundings by this many robust noise standard deviations
MIN_CNR = 3.0
#: with a seed, the lumen level is the median of the lumen core within this distance of it, mm
SEED_RADIUS_MM = 10.0
_FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


class SegmentationError(ValueError):
    """An image or parameter the lumen segmentation cannot use (the message says what to do)."""


# ----------------------------------------------------------------------- validation
def _check_image(image, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise SegmentationError(
            f"{name} must be a 3-D array indexed [z, y, x]; got {arr.ndim}-D with shape {arr.shape}"
        )
    if arr.size == 0:
        raise SegmentationError(f"{name} is empty (shape {arr.shape}): no vessel found")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number):
        raise SegmentationError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise SegmentationError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} NaN/inf voxels")
    return arr


def _check_mask(mask, shape=None, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise SegmentationError(f"{name} must be a 3-D array [z, y, x]; got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise SegmentationError(f"{name} has shape {arr.shape}, the image has shape {tuple(shape)}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise SegmentationError(f"{name} must be boolean (or 0/1), got values outside {{0, 1}}")
        arr = arr.astype(bool)
    return arr


def _check_spacing(spacing_mm) -> tuple[float, float, float]:
    sp = np.asarray(spacing_mm, dtype=float).ravel()
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise SegmentationError(
            f"spacing_mm must be three positive voxel sizes (dz, dy, dx) in mm, got {spacing_mm!r}"
        )
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def _check_bounds(lower, upper) -> tuple[float, float | None]:
    try:
        lo = float(lower)
    except (TypeError, ValueError):
        raise SegmentationError(f"lower must be a number (HU), got {lower!r}") from None
    if not np.isfinite(lo):
        raise SegmentationError(f"lower must be finite, got {lower!r}")
    if upper is None:
        return lo, None
    try:
        up = float(upper)
    except (TypeError, ValueError):
        raise SegmentationError(f"upper must be a number (HU) or None, got {upper!r}") from None
    if not np.isfinite(up) or up <= lo:
        raise SegmentationError(f"upper must be finite and above lower={lo}, got {upper!r}")
    return lo, up


def _check_seed(seed, shape) -> tuple[int, int, int]:
    try:
        s = np.asarray(seed, dtype=float).ravel()
    except (TypeError, ValueError):
        s = np.empty(0)
    if s.shape != (3,) or not np.all(np.isfinite(s)):
        raise SegmentationError(f"seed_index_zyx must be three integer indices (k, j, i), got {seed!r}")
    idx = tuple(int(round(float(v))) for v in s)
    if any(v < 0 or v >= n for v, n in zip(idx, shape)):
        raise SegmentationError(
            f"seed index (z, y, x) = {idx} lies outside the image of shape {tuple(shape)}: "
            "give a seed point inside the scanned volume (check --seed-mm and the image origin)"
        )
    return idx


# ---------------------------------------------------------------------- primitives
def otsu_threshold(image, *, mask=None) -> float:
    """Otsu's threshold (maximum between-class variance) of the image values.

    Parameters
    ----------
    image : ndarray, shape (nz, ny, nx)
        Intensities (HU for CT).
    mask : ndarray of bool, same shape, optional
        Only voxels where ``mask`` is True enter the histogram.

    Returns
    -------
    float
        Threshold in the image's units (HU): bright voxels are ``> threshold``.

    Raises
    ------
    SegmentationError
        If the (masked) image is empty or has a single value (no contrast).
    """
    from skimage.filters import threshold_otsu

    arr = _check_image(image)
    vals = arr[_check_mask(mask, arr.shape)] if mask is not None else arr.ravel()
    if vals.size == 0:
        raise SegmentationError("otsu_threshold: the mask selects no voxels (empty image region)")
    if float(vals.min()) == float(vals.max()):
        raise SegmentationError(
            f"the image has no contrast (every voxel is {float(vals.min())}): no vessel found; "
            "check that the right series (contrast phase) was loaded"
        )
    return float(threshold_otsu(vals.astype(np.float64)))


def threshold(image, lower, upper=None) -> np.ndarray:
    """Voxels with ``lower <= value <= upper`` (``upper=None``: no upper bound).

    Parameters
    ----------
    image : ndarray, shape (nz, ny, nx)
        Intensities (HU).
    lower, upper : float
        Closed interval in HU; ``upper`` must exceed ``lower``.

    Returns
    -------
    ndarray of bool, same shape
    """
    arr = _check_image(image)
    lo, up = _check_bounds(lower, upper)
    out = arr >= lo
    if up is not None:
        out &= arr <= up
    return out


def region_grow(image, seeds_zyx, *, lower, upper=None) -> np.ndarray:
    """Face-connected region of ``lower <= value <= upper`` grown from seed voxels.

    Uses SimpleITK's ``ConnectedThresholdImageFilter`` (face connectivity). A seed whose own
    value is outside the interval grows nothing.

    Parameters
    ----------
    image : ndarray, shape (nz, ny, nx)
        Intensities (HU).
    seeds_zyx : sequence of (k, j, i) integer indices, or one such triple
        Seed voxels in array order (converted to SimpleITK's (x, y, z) order here).
    lower, upper : float
        Closed interval in HU; ``upper=None`` means the image maximum.

    Returns
    -------
    ndarray of bool, same shape
    """
    import SimpleITK as sitk

    from pipeline.image import Volume, to_sitk

    arr = _check_image(image)
    lo, up = _check_bounds(lower, upper)
    seeds = np.asarray(seeds_zyx)
    if seeds.ndim == 1:
        seeds = seeds[None, :]
    if seeds.ndim != 2 or seeds.shape[1] != 3 or seeds.shape[0] == 0:
        raise SegmentationError(f"seeds_zyx must be one or more (k, j, i) triples, got {seeds_zyx!r}")
    seeds_kji = [_check_seed(s, arr.shape) for s in seeds]
    if up is None:
        up = float(arr.max())
    img = to_sitk(Volume(arr.astype(np.float32)))
    filt = sitk.ConnectedThresholdImageFilter()
    filt.SetLower(lo)
    filt.SetUpper(max(up, lo))
    filt.SetReplaceValue(1)
    filt.SetConnectivity(sitk.ConnectedThresholdImageFilter.FaceConnectivity)
    filt.SetSeedList([(int(i), int(j), int(k)) for (k, j, i) in seeds_kji])  # sitk: (x, y, z)
    return sitk.GetArrayFromImage(filt.Execute(img)).astype(bool)


def _faces_touched(labels: np.ndarray, n: int) -> np.ndarray:
    """Number of distinct image faces (0..6) each label 1..n touches; index 0 unused."""
    count = np.zeros(n + 1, dtype=int)
    for axis in range(3):
        for end in (0, -1):
            face = np.take(labels, end, axis=axis)
            present = np.unique(face)
            count[present] += 1
    count[0] = 0
    return count


def largest_component(mask, *, must_touch_faces: int = 0) -> np.ndarray:
    """Largest face-connected component, optionally among those touching enough image faces.

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
    must_touch_faces : int, 0..6
        Only components that touch at least this many distinct faces of the array
        (e.g. 2 for a vessel crossing the volume) are candidates.

    Returns
    -------
    ndarray of bool
        The component, or an all-False array if no component qualifies.
    """
    m = _check_mask(mask)
    if isinstance(must_touch_faces, bool) or not isinstance(must_touch_faces, (int, np.integer)) or not (
        0 <= must_touch_faces <= 6
    ):
        raise SegmentationError(f"must_touch_faces must be an integer 0..6, got {must_touch_faces!r}")
    labels, n = ndimage.label(m, structure=_FACE_STRUCTURE)
    if n == 0:
        return np.zeros_like(m)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    if must_touch_faces:
        sizes[_faces_touched(labels, n) < must_touch_faces] = 0
    best = int(np.argmax(sizes))
    if sizes[best] == 0:
        return np.zeros_like(m)
    return labels == best


def fill_holes(mask) -> np.ndarray:
    """Fill cavities of a 3-D mask (background regions not connected to the array border).

    Parameters
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)

    Returns
    -------
    ndarray of bool
    """
    return ndimage.binary_fill_holes(_check_mask(mask), structure=_FACE_STRUCTURE)


# ------------------------------------------------------------------ lumen levels
def _pick_component(labels, n, seed, spacing_mm, notes) -> int:
    """Label of the vessel component (0 if none). Appends a note when the seed missed."""
    if n == 0:
        return 0
    if seed is not None:
        lab = int(labels[seed])
        if lab:
            return lab
        _, idx = ndimage.distance_transform_edt(labels == 0, sampling=spacing_mm, return_indices=True)
        nearest = tuple(int(idx[a][seed]) for a in range(3))
        dist = float(np.sqrt(sum(((a - b) * s) ** 2 for a, b, s in zip(seed, nearest, spacing_mm))))
        notes.append(
            f"seed voxel {seed} is not in the lumen; used the nearest bright component, "
            f"{dist:.2f} mm away at voxel {nearest}"
        )
        return int(labels[nearest])
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[_faces_touched(labels, n) < 2] = 0
    best = int(np.argmax(sizes))
    return best if sizes[best] > 0 else 0


def _ball(shape, centre, radius_mm: float, spacing) -> np.ndarray:
    """Voxels within ``radius_mm`` of the voxel ``centre`` (array order, mm spacing)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    return d2 <= radius_mm ** 2


def robust_noise_sigma(arr: np.ndarray, core: np.ndarray, fallback: np.ndarray) -> tuple[float, str]:
    """Robust noise standard deviation and where it was measured.

    Noise is measured where the image is homogeneous: the residual of a 3 x 3 x 3 mean filter
    inside the lumen core (1.4826 x MAD, scaled by sqrt(27/26) for the residual of white
    noise), or in ``fallback`` (the shell around the candidate) when the core is too small.
    Not the spread of the surroundings' values: around a real vessel those hold air, lung,
    bone and contrast, whose spread (several hundred HU) is anatomy, not noise. Correlated CT
    noise loses part of its variance to the filter, so the value is a lower bound of the
    pixel noise, which keeps the contrast test permissive for real vessels.
    """
    region, where = (core, "in the lumen core") if np.count_nonzero(core) >= 50 else (fallback, "around it")
    if not region.any():
        return 0.0, where
    idx = np.argwhere(region)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = idx.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = arr[box].astype(np.float64)
    resid = (sub - ndimage.uniform_filter(sub, 3, mode="nearest"))[region[box]]
    return 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) * np.sqrt(27.0 / 26.0), where


def detect_modality(image) -> str:
    """``"ct"`` when the image holds negative values (HU: fat, air, soft-tissue noise), else
    ``"mr"`` (magnitude MR signal is never negative).

    A CT stored without its rescale intercept (all values >= 0) would be taken for MR: pass
    ``modality="ct"`` (``--modality ct``) then.
    """
    return "ct" if float(np.min(_check_image(image))) < CT_MINIMUM_BELOW else "mr"


def _check_modality(modality: str, arr: np.ndarray) -> str:
    if modality not in MODALITIES:
        raise SegmentationError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return detect_modality(arr) if modality == "auto" else modality


def _no_vessel(reason: str) -> SegmentationError:
    return SegmentationError(
        f"no vessel found: {reason}; pass --seed-mm (a point inside the vessel) or a lower threshold"
    )


def estimate_lumen_levels(image, *, spacing_mm, seed_index_zyx=None, modality: str = "auto") -> dict:
    """Estimate tissue and lumen intensity and the half-maximum boundary level.

    See the module docstring for the rule. Parameters are as in :func:`segment_lumen`.

    Returns
    -------
    dict
        ``otsu_hu``, ``tissue_hu``, ``lumen_hu``, ``level_hu`` and ``upper_hu`` (floats, HU)
        and ``notes`` (list of str).

    Raises
    ------
    SegmentationError
        No contrast, or no bright component that could be the vessel.
    """
    arr = _check_image(image)
    spacing = _check_spacing(spacing_mm)
    seed = None if seed_index_zyx is None else _check_seed(seed_index_zyx, arr.shape)
    return _estimate(arr, spacing, seed, _check_modality(modality, arr))


def _estimate(arr, spacing, seed, modality: str = "ct") -> dict:
    notes: list[str] = []
    body = arr > AIR_CUTOFF_HU if modality == "ct" else None  # MR: no HU, no air cut-off
    if body is not None and (body.sum() < 2 or float(arr[body].min()) == float(arr[body].max())):
        body = None  # not an HU image with air, or only air: use every voxel
    t = otsu_threshold(arr, mask=body)
    bright = arr > t
    labels, n = ndimage.label(bright, structure=_FACE_STRUCTURE)
    lab = _pick_component(labels, n, seed, spacing, notes)
    if lab == 0:
        raise _no_vessel(
            f"none of the {n} bright components (above Otsu {t:.1f}) touches two faces of the image"
        )
    comp = labels == lab
    core = comp
    for _ in range(2):
        eroded = ndimage.binary_erosion(core, structure=_FACE_STRUCTURE)
        if eroded.sum() < 10:
            break
        core = eroded
    near = ndimage.binary_dilation(comp, _FACE_STRUCTURE, iterations=5) & ~ndimage.binary_dilation(
        comp, _FACE_STRUCTURE, iterations=2
    )
    lumen_region = core
    if seed is not None:
        # a seed names the vessel: its lumen level is measured around the seed, not over
        # everything bright that the component also holds (heart chambers, other vessels)
        local = _ball(arr.shape, seed, SEED_RADIUS_MM, spacing)
        if np.count_nonzero(core & local) >= 10:
            lumen_region = core & local
            near = near & _ball(arr.shape, seed, 2 * SEED_RADIUS_MM, spacing)
    lumen = float(np.median(arr[lumen_region])) if core is not comp else float(np.percentile(arr[comp], 90))
    dark = ~bright if body is None else (~bright & body)
    shell = near & dark
    tissue = float(np.median(arr[shell])) if shell.any() else float(np.median(arr[dark]))
    noise, where = robust_noise_sigma(arr, core, near if near.any() else dark)
    if not lumen > tissue or (noise > 0 and lumen - tissue < MIN_CNR * noise):
        raise _no_vessel(
            f"the brightest candidate ({lumen:.1f}) stands out from its surroundings ({tissue:.1f}) by "
            f"less than {MIN_CNR:g} noise standard deviations ({noise:.1f}, measured {where}): this looks like "
            "noise"
        )
    level = 0.5 * (lumen + tissue)
    # calcium is far brighter than iodinated blood on CT; on MR it is dark: no upper bound there
    upper = lumen + CALCIUM_UPPER_FRACTION * (lumen - tissue) if modality == "ct" else None
    return dict(otsu_hu=t, tissue_hu=tissue, lumen_hu=lumen, level_hu=level, upper_hu=upper, notes=notes,
                modality=modality)


# -------------------------------------------------------------------- the stage
@dataclass
class LumenSegmentation:
    """Result of a lumen segmentation (any method, classical or learned).

    Attributes
    ----------
    mask : ndarray of bool, shape (nz, ny, nx)
        Lumen voxels, array order [z, y, x].
    level_hu : float
        Iso-level of the lumen boundary in the image (HU), for a sub-voxel surface.
    lower_hu, upper_hu : float, float or None
        Intensity interval used (HU); ``upper_hu=None``: no upper bound.
    seed_index_zyx : tuple of 3 int or None
        Seed voxel used, array order.
    method : str
        Method that produced the mask (after resolving ``"auto"``).
    volume_mm3 : float
        Lumen volume, voxel count times voxel volume (mm^3).
    n_candidate_components : int
        Face-connected components in the thresholded image before choosing the vessel.
    tissue_hu, lumen_hu : float or None
        Estimated surrounding-tissue and lumen intensities (HU); None if not estimated.
    notes : list of str
        Decisions worth telling the user (e.g. the seed missed the lumen).
    modality : str
        ``"ct"`` (levels in HU) or ``"mr"`` (levels in the image's signal units).
    """

    mask: np.ndarray
    level_hu: float
    lower_hu: float
    upper_hu: float | None
    seed_index_zyx: tuple[int, int, int] | None
    method: str
    volume_mm3: float
    n_candidate_components: int
    tissue_hu: float | None = None
    lumen_hu: float | None = None
    notes: list[str] = field(default_factory=list)
    modality: str = "ct"

    def summary(self) -> dict:
        """JSON-friendly summary (no mask), units in the key names."""
        return dict(
            method=self.method,
            level_hu=float(self.level_hu),
            lower_hu=float(self.lower_hu),
            upper_hu=None if self.upper_hu is None else float(self.upper_hu),
            seed_index_zyx=None if self.seed_index_zyx is None else [int(v) for v in self.seed_index_zyx],
            volume_mm3=float(self.volume_mm3),
            n_candidate_components=int(self.n_candidate_components),
            tissue_hu=None if self.tissue_hu is None else float(self.tissue_hu),
            lumen_hu=None if self.lumen_hu is None else float(self.lumen_hu),
            notes=list(self.notes),
            modality=self.modality,
        )


def segment_lumen(
    image,
    *,
    spacing_mm,
    method: str = "auto",
    seed_index_zyx=None,
    lower_hu: float | None = None,
    upper_hu: float | None = None,
    modality: str = "auto",
) -> LumenSegmentation:
    """Segment the contrast-filled lumen of the vessel in a CTA volume.

    Parameters
    ----------
    image : ndarray, shape (nz, ny, nx)
        CT intensities in HU, array order [z, y, x].
    spacing_mm : tuple of 3 float
        Voxel size (dz, dy, dx) in mm.
    method : {"auto", "otsu", "region-grow", "threshold"}
        See the module docstring. ``"region-grow"`` needs ``seed_index_zyx``;
        ``"threshold"`` needs ``lower_hu``.
    seed_index_zyx : tuple of 3 int, optional
        A voxel (k, j, i) inside the vessel; selects the component.
    lower_hu : float, optional
        Boundary level in HU; overrides the half-maximum estimate.
    upper_hu : float, optional
        Upper bound in HU (calcium exclusion); default ``lumen + 0.75 (lumen - tissue)``
        for estimating methods on CT, none for ``"threshold"`` and for MR.
    modality : {"auto", "ct", "mr"}
        CT (HU: air cut-off, calcium bound) or MR (signal in arbitrary units: levels measured
        from the image alone); ``"auto"`` uses :func:`detect_modality`. For MR the ``*_hu``
        values are in the image's signal units.

    Returns
    -------
    LumenSegmentation

    Raises
    ------
    SegmentationError
        Non-3-D or constant image, bad parameters, seed outside the image, no vessel.
    """
    arr = _check_image(image)
    spacing = _check_spacing(spacing_mm)
    if method not in METHODS:
        raise SegmentationError(f"method must be one of {METHODS}, got {method!r}")
    modality = _check_modality(modality, arr)
    seed = None if seed_index_zyx is None else _check_seed(seed_index_zyx, arr.shape)
    if float(arr.min()) == float(arr.max()):
        raise SegmentationError(
            f"the image has no contrast (every voxel is {float(arr.min())}): no vessel found; "
            "check that the right series (contrast phase) was loaded"
        )
    if method == "auto":
        method = "region-grow" if seed is not None else "otsu"
    if method == "region-grow" and seed is None:
        raise SegmentationError("method='region-grow' needs seed_index_zyx (a voxel inside the vessel)")
    if method == "threshold" and lower_hu is None:
        raise SegmentationError("method='threshold' needs lower_hu (the boundary level in HU)")

    notes: list[str] = []
    tissue = lumen = None
    if method == "threshold":
        lo, up = _check_bounds(lower_hu, upper_hu)
    else:
        if lower_hu is not None:
            _check_bounds(lower_hu, upper_hu)
        est = _estimate(arr, spacing, seed, modality)
        notes += est["notes"]
        tissue, lumen = est["tissue_hu"], est["lumen_hu"]
        lo = est["level_hu"] if lower_hu is None else float(lower_hu)
        up = est["upper_hu"] if upper_hu is None else float(upper_hu)
        if upper_hu is None and up is not None and lo >= up:
            notes.append(f"lower_hu={lo} is above the estimated calcium bound {up:.1f} HU: no upper bound used")
            up = None
        lo, up = _check_bounds(lo, up)

    candidates = threshold(arr, lo, up)
    labels, n = ndimage.label(candidates, structure=_FACE_STRUCTURE)
    if n == 0:
        raise _no_vessel(f"no voxel lies in [{lo:.1f}, {up}] HU")
    if method == "region-grow":
        if not candidates[seed]:
            lab = _pick_component(labels, n, seed, spacing, notes)
            grow_from = tuple(int(v) for v in np.argwhere(labels == lab)[0])
        else:
            grow_from = seed
        mask = region_grow(arr, [grow_from], lower=lo, upper=up)
    else:
        lab = _pick_component(labels, n, seed, spacing, notes)
        if lab == 0:
            raise _no_vessel(f"none of the {n} components in [{lo:.1f}, {up}] HU touches two faces of the image")
        mask = labels == lab
    mask = fill_holes(mask)
    if up is not None:
        # a calcium spot wrapped in its own blurred halo is a cavity: keep it out
        mask &= arr <= up
    if not mask.any():
        raise _no_vessel("the selected region is empty")
    notes = list(dict.fromkeys(notes))  # the same remark from estimation and selection once
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return LumenSegmentation(
        mask=mask,
        level_hu=float(lo),
        lower_hu=float(lo),
        upper_hu=None if up is None else float(up),
        seed_index_zyx=seed,
        method=method,
        volume_mm3=float(mask.sum()) * float(np.prod(spacing)),
        n_candidate_components=int(n),
        tissue_hu=tissue,
        lumen_hu=lumen,
        notes=notes,
        modality=modality,
    )


#: Local lumen levels that differ by more than this factor (90th over 10th percentile of the
#: lumen-to-tissue contrast) are evened out by :func:`even_lumen_contrast`.
UNEVEN_CONTRAST_RATIO = 1.15


def even_lumen_contrast(image, mask, *, spacing_mm, level: float, tissue: float,
                        smoothing_mm: float = 3.0) -> tuple[np.ndarray, dict]:
    """The image with its lumen contrast made even, so one level is the half maximum everywhere.

    MR coil sensitivity and the passage of the contrast bolus make the lumen brighter in
    some vessels than in others; a single half-maximum level then sits off the wall where
    the lumen is brighter or darker than average. The local lumen level L(x) is measured in
    the lumen core (voxels at least two voxels from the wall, median of 3x3x3), carried to
    every voxel from the nearest core voxel and smoothed (Gaussian, ``smoothing_mm``); the
    local tissue level T(x) likewise from a shell one to three voxels outside the lumen (its
    voxels below ``level``). Each voxel is then mapped linearly so that the local tissue level
    goes to ``tissue`` and the local half maximum (L + T) / 2 lands on ``level``:
    ``I' = level + (I - (L + T) / 2) * 2 (level - tissue) / (L - T)``.

    Nothing changes (the image is returned as is) when the contrast varies by less than
    ``UNEVEN_CONTRAST_RATIO`` over the lumen core. Returns (image, report).
    """
    arr = _check_image(image)
    m = _check_mask(mask, arr.shape)
    spacing = _check_spacing(spacing_mm)
    h = float(min(spacing))
    edt = ndimage.distance_transform_edt(m, sampling=spacing)
    core = edt >= 2.0 * h
    report: dict = {"applied": False, "tissue": float(tissue), "level": float(level)}
    if core.sum() < 10 or not level > tissue:
        report["why_not"] = "no lumen core two voxels deep" if core.sum() < 10 else "level not above tissue"
        return arr, report
    med = ndimage.median_filter(arr.astype(np.float32), size=3)
    contrast = med[core] - tissue
    lo, hi = np.percentile(contrast, [10, 90])
    report["lumen_contrast_p10_p90"] = [float(lo), float(hi)]
    if lo <= 0 or hi / lo < UNEVEN_CONTRAST_RATIO:
        report["why_not"] = f"contrast even within a factor {UNEVEN_CONTRAST_RATIO}"
        return arr, report
    sigma = [smoothing_mm / s for s in spacing]

    def spread(where: np.ndarray) -> np.ndarray:  # nearest sampled value everywhere, then smoothed
        _, nearest = ndimage.distance_transform_edt(~where, return_indices=True)
        return ndimage.gaussian_filter(med[tuple(nearest)], sigma=sigma)

    local = spread(core)
    # the tissue around the wall: a shell one to three voxels out, without other bright structures
    shell = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m, iterations=1) & (med < level)
    around = spread(shell) if shell.sum() >= 10 else np.full(arr.shape, float(tissue), np.float32)
    floor = around + 0.5 * (level - tissue)  # never divide by a contrast below a quarter of the mean
    local = np.maximum(local, floor)
    out = level + (arr - 0.5 * (local + around)) * (2.0 * (level - tissue)) / (local - around)
    report.update(applied=True,
                  local_lumen_range=[float(np.percentile(local[m], 5)), float(np.percentile(local[m], 95))],
                  local_tissue_range=[float(np.percentile(around[m], 5)), float(np.percentile(around[m], 95))])
    return out.astype(np.float32), report
