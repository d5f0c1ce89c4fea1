"""Drift monitoring of incoming CT scans: a baseline profile of a DICOM collection, and the tests
that say whether new scans still look like it.

What it is for. A model (a segmenter, a dose estimate) is validated on scans from some scanners,
kernels and protocols. When the scans arriving later come from another mix, its accuracy may no
longer hold. This module summarises a *baseline* collection as a JSON profile and compares new
scans with it, field by field, with a test that says whether a difference is more than chance
and an effect size that says whether it is large enough to matter.

The unit is the scan. One DICOM series (files sharing a ``SeriesInstanceUID``, wherever they lie
below the folder) is one observation. Millions of voxels are *not* independent observations:
a Kolmogorov–Smirnov test on pooled voxels rejects for any two scans, so intensity is tested
on per-scan summaries, and the voxel histograms only give the effect size.

Per series, the profile keeps

* the header fields ``Manufacturer``, ``ManufacturerModelName``, ``ConvolutionKernel``
  (strings, stripped; multi-valued ones joined with ``\\``), ``KVP`` (kV), ``SliceThickness``
  (mm) and ``PixelSpacing`` (row, column, mm), read with ``pydicom`` without pixel data;
* the body intensity: Hounsfield units ``HU = stored × RescaleSlope + RescaleIntercept`` of
  every slice, a body mask = voxels above ``threshold_hu`` (−500 HU by default: tissue, not
  air or lung) restricted to the largest 3-D face-connected component (drops the couch and
  blankets where they do not touch the patient; lungs and bowel gas are *not* filled in), and
  inside it the mean, standard deviation, 5/25/50/75/95th percentiles and interquartile range
  (HU), and a histogram on fixed bin edges (−500 to 1500 HU in 10 HU bins by default; values
  above the last edge count in the last bin). The edges are stored in the profile and every
  check uses them.

The tests (``alpha`` is the family-wise level; each of the ``m`` tests run is done at
``alpha / m``, Bonferroni, as in the univariate-test detectors of Rabanser, Günnemann &
Lipton, *Failing Loudly*, NeurIPS 2019):

1. *Categorical header fields* (manufacturer, model, kernel, kVp, slice thickness): Pearson's
   chi-square test of homogeneity on the 2 × k table of baseline and new counts over every
   category seen in either (a category new to the baseline is a column with a zero baseline
   count). Its p-value is the chi-square law with ``k − 1`` degrees of freedom when every
   expected count is at least 5 (Cochran, *Biometrics* 10, 1954), otherwise the conditional
   Monte Carlo p-value ``(1 + #{X²* ≥ X²}) / (B + 1)`` (Hope, *JRSS B* 30, 1968) over ``B``
   tables with the observed margins (for two rows the new row is multivariate hypergeometric),
   valid for any counts. Effect size: the population stability index
   ``PSI = Σ_i (a_i − e_i) ln(a_i / e_i)`` of the new (``a``) against the baseline (``e``)
   proportions, an empty proportion replaced by ``eps = 1e-4`` (Siddiqi, *Credit Risk
   Scorecards*, Wiley 2006: below 0.1 no shift, 0.1–0.25 moderate, above 0.25 major).
2. *Pixel spacing* (in-plane, mean of row and column, mm, one value per scan): two-sample
   Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``, exact for small samples).
3. *Body intensity*: two-sample KS tests between the baseline scans and the new scans of the
   per-scan median HU (location) and the per-scan interquartile range (spread). Effect size:
   the first Wasserstein distance ``W1 = ∫ |F_a − F_b| dHU`` (Vallender, *Theory Probab. Appl.*
   18, 1974) between the pooled histograms (the mean of per-scan normalised histograms, each
   scan weighing the same).

Alert rule: a test fires when it is significant (``p ≤ alpha / m``) *and*, for the categorical
fields, ``PSI ≥ psi`` (default 0.1, a moderate shift), and for intensity, ``W1 ≥ wasserstein_hu``
(default 10 HU, above the ±7 HU the ACR CT accreditation program allows for the CT number of
water, so a shift of that size would fail a phantom check). Pixel spacing has no effect-size
gate. Significance alone would alert on trivial shifts of large collections; an effect size
alone is not evidence with few scans (PSI between two samples of 50 and 40 scans of one
population has mean about ``(1/50 + 1/40)(k − 1)``, Yurdakul, *Statistical properties of the
population stability index*, 2018), so both are required. A single scan from a new scanner is
a note, not an alert.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DriftError", "DriftThresholds", "SCHEMA_VERSION", "PROFILE_KIND", "CHECK_KIND", "HEADER_FIELDS",
    "CATEGORICAL_FIELDS", "NUMERIC_FIELDS", "INTENSITY_TESTED", "MISSING", "BODY_THRESHOLD_HU",
    "hu_bin_edges", "body_mask", "body_intensity", "header_values", "category_label", "in_plane_spacing_mm",
    "find_series", "read_series_hu", "profile_series", "build_profile", "profile_folder", "validate_profile",
    "read_profile", "category_counts", "numeric_summary", "chi_square_shift", "population_stability_index",
    "psi_band", "ks_shift", "wasserstein_hu", "pooled_histogram", "compare", "check_folder",
]

SCHEMA_VERSION = "1.0"
PROFILE_KIND = "digipat.drift_profile"
CHECK_KIND = "digipat.drift_check"

#: The header fields kept per series.
HEADER_FIELDS = ("Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel", "SliceThickness", "PixelSpacing")
#: Fields compared as categories (chi-square and PSI); kVp and slice thickness are discrete protocol settings.
CATEGORICAL_FIELDS = ("Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "KVP", "SliceThickness")
#: Fields summarised as numbers in the profile; ``PixelSpacing`` is also tested as a number (KS).
NUMERIC_FIELDS = ("KVP", "SliceThickness", "PixelSpacing")
#: Per-scan body-intensity summaries tested by KS (location and spread).
INTENSITY_TESTED = ("median_hu", "iqr_hu")
#: The category of a header field a file does not carry.
MISSING = "(missing)"
#: Default body threshold (HU): tissue above, air and lung below.
BODY_THRESHOLD_HU = -500.0
_UPPER_HU = 1500.0
_BIN_WIDTH_HU = 10.0
_PSI_BANDS = (0.1, 0.25)
_PERCENTILES = (("p05_hu", 5.0), ("p25_hu", 25.0), ("median_hu", 50.0), ("p75_hu", 75.0), ("p95_hu", 95.0))
_SUMMARY_KEYS = ("mean_hu", "sd_hu", "p05_hu", "p25_hu", "median_hu", "p75_hu", "p95_hu", "iqr_hu")


class DriftError(ValueError):
    """Bad input to drift monitoring (a folder without DICOM, a file that is not a profile, a bad threshold)."""


# ----------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class DriftThresholds:
    """When a check alerts.

    Parameters
    ----------
    alpha : float
        Family-wise significance level in (0, 1); each of the ``m`` tests run uses ``alpha / m``
        (Bonferroni). Default 0.01.
    psi : float
        Smallest population stability index of a categorical field that alerts (with a
        significant chi-square test), ≥ 0. Default 0.1 (a moderate shift, Siddiqi 2006).
    wasserstein_hu : float
        Smallest Wasserstein distance (HU) between the pooled body histograms for an intensity
        test to alert (with a significant KS test), ≥ 0. Default 10 HU.
    mc_samples : int
        Tables drawn for the Monte Carlo chi-square p-value (used when an expected count is
        below 5), ≥ 99. Default 9999 (p-value resolution 1e-4).
    seed : int
        Seed of those draws (same seed, same p-value). Default 0.
    """

    alpha: float = 0.01
    psi: float = 0.1
    wasserstein_hu: float = 10.0
    mc_samples: int = 9999
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and 0.0 < self.alpha < 1.0):
            raise DriftError(f"alpha = {self.alpha!r}: give a significance level between 0 and 1 (e.g. 0.01)")
        for name in ("psi", "wasserstein_hu"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0.0):
                raise DriftError(f"{name} = {v!r}: give a finite threshold ≥ 0")
        if not (isinstance(self.mc_samples, (int, np.integer)) and self.mc_samples >= 99):
            raise DriftError(f"mc_samples = {self.mc_samples!r}: give an integer ≥ 99 (default 9999)")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise DriftError(f"seed = {self.seed!r}: give an integer ≥ 0")


# ----------------------------------------------------------------------------- images
def hu_bin_edges(lower_hu: float = BODY_THRESHOLD_HU, upper_hu: float = _UPPER_HU,
                 width_hu: float = _BIN_WIDTH_HU) -> np.ndarray:
    """Fixed histogram bin edges (HU): ``lower_hu, lower_hu + width_hu, ..., upper_hu``.

    Parameters
    ----------
    lower_hu, upper_hu : float
        First and last edge (HU), ``lower_hu < upper_hu``; the span must be a whole number of bins.
    width_hu : float
        Bin width (HU), > 0; at most 10 000 bins.
    """
    vals = {"lower_hu": lower_hu, "upper_hu": upper_hu, "width_hu": width_hu}
    for k, v in vals.items():
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v)):
            raise DriftError(f"{k} = {v!r}: give a finite number of HU")
    if not upper_hu > lower_hu:
        raise DriftError(f"upper_hu = {upper_hu} must exceed lower_hu = {lower_hu}")
    if not width_hu > 0:
        raise DriftError(f"width_hu = {width_hu}: give a bin width > 0 HU")
    n = (upper_hu - lower_hu) / width_hu
    if abs(n - round(n)) > 1e-6 or round(n) > 10000:
        raise DriftError(f"width_hu = {width_hu}: the span {lower_hu}..{upper_hu} HU must hold a whole number of "
                         "bins, at most 10000")
    return lower_hu + width_hu * np.arange(round(n) + 1, dtype=float)


def body_mask(hu: np.ndarray, *, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The body: voxels above ``threshold_hu`` in the largest face-connected component.

    Parameters
    ----------
    hu : ndarray, shape (z, y, x) or (y, x)
        CT in Hounsfield units.
    threshold_hu : float
        Tissue threshold (HU), default −500: air and lung lie below it.

    Returns
    -------
    ndarray of bool, same shape
        All ``False`` when no voxel exceeds the threshold. Holes (lungs, bowel gas) are not filled.
    """
    from scipy import ndimage

    hu = np.asarray(hu)
    if hu.ndim not in (2, 3) or hu.size == 0:
        raise DriftError(f"hu has shape {hu.shape}: give a non-empty 2-D (y, x) or 3-D (z, y, x) array of HU")
    if not math.isfinite(threshold_hu):
        raise DriftError(f"threshold_hu = {threshold_hu!r}: give a finite HU value (e.g. -500)")
    tissue = hu > threshold_hu
    labels, n = ndimage.label(tissue)
    if n <= 1:
        return tissue
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def body_intensity(hu: np.ndarray, *, bin_edges_hu: np.ndarray | None = None,
                   threshold_hu: float = BODY_THRESHOLD_HU) -> dict[str, Any]:
    """Summaries and histogram of HU inside :func:`body_mask`.

    Parameters
    ----------
    hu : ndarray, shape (z, y, x) or (y, x)
        CT in Hounsfield units.
    bin_edges_hu : ndarray, optional
        Increasing histogram edges (HU); default :func:`hu_bin_edges` from ``threshold_hu``.
        Values outside the edges are counted in the first or last bin.
    threshold_hu : float
        Body threshold (HU), default −500.

    Returns
    -------
    dict
        ``body_voxels``; ``mean_hu``, ``sd_hu`` (population), ``p05_hu``, ``p25_hu``,
        ``median_hu``, ``p75_hu``, ``p95_hu`` (NumPy's linear interpolation), ``iqr_hu``
        (NaN when the body is empty); ``histogram_counts`` (int array, one per bin).
    """
    edges = hu_bin_edges(threshold_hu) if bin_edges_hu is None else _check_edges(bin_edges_hu)
    mask = body_mask(hu, threshold_hu=threshold_hu)
    vals = np.asarray(hu, dtype=np.float64)[mask]
    out: dict[str, Any] = {"body_voxels": int(vals.size)}
    if vals.size == 0:
        out.update({k: math.nan for k in _SUMMARY_KEYS})
        out["histogram_counts"] = np.zeros(edges.size - 1, dtype=np.int64)
        return out
    pct = np.percentile(vals, [p for _, p in _PERCENTILES])
    out["mean_hu"] = float(vals.mean())
    out["sd_hu"] = float(vals.std())
    out.update({k: float(v) for (k, _), v in zip(_PERCENTILES, pct)})
    out["iqr_hu"] = out["p75_hu"] - out["p25_hu"]
    out["histogram_counts"] = np.histogram(np.clip(vals, edges[0], edges[-1]), bins=edges)[0].astype(np.int64)
    return out


def _check_edges(edges) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
        raise DriftError(f"bin_edges_hu has {e.size} values: give at least 2 finite, increasing HU edges")
    return e


# ----------------------------------------------------------------------------- headers
def _text(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        s = "\\".join(str(v).strip() for v in value)
    else:
        s = str(value).strip()
    return s if s else MISSING


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def header_values(ds) -> dict[str, Any]:
    """The :data:`HEADER_FIELDS` of one DICOM dataset (a ``pydicom`` Dataset or a mapping).

    Strings are stripped (:data:`MISSING` when absent or empty); ``KVP`` (kV) and
    ``SliceThickness`` (mm) are floats, ``PixelSpacing`` is ``[row_mm, column_mm]``; an absent or
    unreadable number is ``None``.
    """
    get = ds.get if isinstance(ds, Mapping) else (lambda k, d=None: getattr(ds, k, d))
    out: dict[str, Any] = {}
    for k in ("Manufacturer", "ManufacturerModelName", "ConvolutionKernel"):
        out[k] = _text(get(k, None))
    out["KVP"] = _number(get("KVP", None))
    out["SliceThickness"] = _number(get("SliceThickness", None))
    ps = get("PixelSpacing", None)
    try:
        spacing = [float(ps[0]), float(ps[1])] if ps is not None and len(ps) >= 2 else None
    except (TypeError, ValueError):
        spacing = None
    out["PixelSpacing"] = spacing if spacing and all(math.isfinite(v) and v > 0 for v in spacing) else None
    return out


def category_label(field: str, value: Any) -> str:
    """The category a header value counts in: strings as they are; ``KVP`` as ``%g`` of the value
    rounded to 0.1 kV; ``SliceThickness`` to 0.001 mm; ``PixelSpacing`` (row, column) as
    ``"r×c"`` at 0.01 mm; :data:`MISSING` when absent."""
    if field not in HEADER_FIELDS:
        raise DriftError(f"field = {field!r}: choose one of {', '.join(HEADER_FIELDS)}")
    if value is None:
        return MISSING
    if field == "KVP":
        return f"{round(float(value), 1):g}"
    if field == "SliceThickness":
        return f"{round(float(value), 3):g}"
    if field == "PixelSpacing":
        return f"{float(value[0]):.2f}×{float(value[1]):.2f}"
    return _text(value)


def in_plane_spacing_mm(value) -> float:
    """Mean of the row and column pixel spacing (mm); NaN when absent."""
    if value is None:
        return math.nan
    return 0.5 * (float(value[0]) + float(value[1]))


def _slice_key(ds, path: Path) -> tuple:
    """Order of a slice in its series: position along the slice normal, else InstanceNumber, else name."""
    ipp, iop = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
    try:
        if ipp is not None and iop is not None:
            normal = np.cross([float(v) for v in iop[:3]], [float(v) for v in iop[3:6]])
            return (0, float(np.dot(normal, [float(v) for v in ipp])), str(path))
    except (TypeError, ValueError, IndexError):
        pass
    num = _number(getattr(ds, "InstanceNumber", None))
    return (1, num if num is not None else 0.0, str(path))


def find_series(folder: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Group the DICOM image files below ``folder`` (recursively) into series by ``SeriesInstanceUID``.

    Headers only (``pydicom.dcmread(..., stop_before_pixels=True)``). Files that are not DICOM
    (no ``DICM`` preamble) and hidden files are ignored; DICOM files without a
    ``SeriesInstanceUID`` or without an image (no ``Rows``) are listed as skipped.

    Returns
    -------
    series : list of dict
        Sorted by UID: ``series_instance_uid``, ``modality``, ``files`` (paths in slice order),
        ``path`` (their common folder relative to ``folder``), ``header`` (:func:`header_values`
        of the first slice), ``frames`` (NumberOfFrames of the first file).
    skipped : list of dict
        ``{"path", "reason"}`` for DICOM files that cannot be used.

    Raises
    ------
    DriftError
        ``folder`` does not exist, is not a folder, or holds no DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(folder)
    if not root.exists():
        raise DriftError(f"DICOM folder not found: {root} (check the path)")
    if not root.is_dir():
        raise DriftError(f"{root} is a file: give the folder that holds the DICOM series")
    groups: dict[str, list] = {}
    skipped: list[dict[str, str]] = []
    n_dicom = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            f = Path(dirpath) / name
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except InvalidDicomError:
                continue
            except Exception as exc:  # a truncated or corrupt file with a DICOM preamble  # noqa: BLE001
                skipped.append({"path": str(f.relative_to(root)), "reason": f"unreadable: {exc}"})
                continue
            n_dicom += 1
            uid = str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
            if not uid:
                skipped.append({"path": str(f.relative_to(root)), "reason": "no SeriesInstanceUID"})
                continue
            if getattr(ds, "Rows", None) is None:
                skipped.append({"path": str(f.relative_to(root)), "reason": "not an image (no Rows)"})
                continue
            groups.setdefault(uid, []).append((_slice_key(ds, f), f, ds))
    if n_dicom == 0:
        raise DriftError(f"no DICOM files found under {root} (files need the DICM preamble of DICOM part 10; "
                         "give the folder of the scans)")
    series = []
    for uid in sorted(groups):
        items = sorted(groups[uid], key=lambda t: t[0])
        files = [f for _, f, _ in items]
        ds0 = items[0][2]
        common = Path(os.path.commonpath([str(f.parent) for f in files]))
        series.append({
            "series_instance_uid": uid,
            "modality": _text(getattr(ds0, "Modality", None)),
            "path": str(common.relative_to(root)) if common != root else ".",
            "files": files,
            "frames": int(_number(getattr(ds0, "NumberOfFrames", 1)) or 1),
            "header": header_values(ds0),
        })
    return series, skipped


def read_series_hu(files: Sequence[str | os.PathLike]) -> np.ndarray:
    """The HU volume of one single-frame series, files in slice order: ``stored × RescaleSlope +
    RescaleIntercept`` per slice (slope 1, intercept 0 when absent).

    Returns
    -------
    ndarray of float32, shape (z, y, x)

    Raises
    ------
    DriftError
        No files, or slices of different sizes.
    """
    import pydicom

    if len(files) == 0:
        raise DriftError("files is empty: give the files of one DICOM series")
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        if arr.ndim != 2:
            raise DriftError(f"{f}: pixel data of shape {arr.shape}; only single-frame grey-scale slices are read")
        slope = _number(getattr(ds, "RescaleSlope", None))
        intercept = _number(getattr(ds, "RescaleIntercept", None))
        slices.append(arr.astype(np.float32) * np.float32(1.0 if slope is None else slope)
                      + np.float32(0.0 if intercept is None else intercept))
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise DriftError(f"slices of different sizes {sorted(shapes)} in one series ({files[0]})")
    return np.stack(slices)


def profile_series(folder: str | os.PathLike, *, threshold_hu: float = BODY_THRESHOLD_HU,
                   bin_edges_hu: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One record per CT series below ``folder``: headers and body intensity.

    Parameters
    ----------
    folder : path
        Folder searched recursively (:func:`find_series`).
    threshold_hu : float
        Body threshold (HU), default −500.
    bin_edges_hu : ndarray, optional
        Histogram edges (HU); default :func:`hu_bin_edges` from ``threshold_hu``.

    Returns
    -------
    records : list of dict
        ``series_instance_uid``, ``path``, ``files``, ``modality``, ``header``, ``intensity``
        (:func:`body_intensity` without the histogram) and ``histogram_counts``.
    skipped : list of dict
        ``{"path", "reason"}`` for files and series left out (not CT, multi-frame, unreadable
        pixels, slices of different sizes, no body voxel).

    Raises
    ------
    DriftError
        The folder is missing, holds no DICOM file or no usable CT series.
    """
    edges = hu_bin_edges(threshold_hu) if bin_edges_hu is None else _check_edges(bin_edges_hu)
    series, skipped = find_series(folder)
    records = []
    for s in series:
        where = f"{s['path']} (series {s['series_instance_uid']})"
        if s["modality"] != "CT":
            skipped.append({"path": where, "reason": f"modality {s['modality']}: only CT series are profiled (HU)"})
            continue
        if s["frames"] > 1:
            skipped.append({"path": where, "reason": "multi-frame (enhanced) images are not read"})
            continue
        try:
            hu = read_series_hu(s["files"])
        except DriftError as exc:
            skipped.append({"path": where, "reason": str(exc)})
            continue
        except Exception as exc:  # pixel data pydicom cannot decode (a compressed transfer syntax)  # noqa: BLE001
            skipped.append({"path": where, "reason": f"pixel data unreadable: {type(exc).__name__}: {exc}"})
            continue
        inten = body_intensity(hu, bin_edges_hu=edges, threshold_hu=threshold_hu)
        if inten["body_voxels"] == 0:
            skipped.append({"path": where, "reason": f"no voxel above {threshold_hu:g} HU (no body)"})
            continue
        hist = inten.pop("histogram_counts")
        records.append({"series_instance_uid": s["series_instance_uid"], "path": s["path"],
                        "files": len(s["files"]), "modality": s["modality"], "shape": list(hu.shape),
                        "header": s["header"], "intensity": inten, "histogram_counts": hist})
    if not records:
        why = "; ".join(sorted({k["reason"] for k in skipped}))[:500]
        raise DriftError(f"no usable CT series under {folder} ({len(series)} series found; {why or 'none'})")
    return records, skipped


# ----------------------------------------------------------------------------- summaries
def category_counts(values: Iterable[str]) -> dict[str, int]:
    """Counts of each category, most frequent first (ties by name)."""
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def numeric_summary(values: Iterable[float | None]) -> dict[str, float | int]:
    """``n``, ``n_missing``, ``mean``, ``sd`` (sample, ddof 1), ``min``, ``p05``, ``p25``, ``p50``,
    ``p75``, ``p95``, ``max`` of the finite values (NaN for what cannot be computed)."""
    raw = [math.nan if v is None else float(v) for v in values]
    x = np.asarray([v for v in raw if math.isfinite(v)], dtype=float)
    out: dict[str, float | int] = {"n": int(x.size), "n_missing": len(raw) - int(x.size)}
    keys = ("mean", "sd", "min", "p05", "p25", "p50", "p75", "p95", "max")
    if x.size == 0:
        out.update({k: math.nan for k in keys})
        return out
    p = np.percentile(x, [5, 25, 50, 75, 95])
    out.update({"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else math.nan,
                "min": float(x.min()), "p05": float(p[0]), "p25": float(p[1]), "p50": float(p[2]),
                "p75": float(p[3]), "p95": float(p[4]), "max": float(x.max())})
    return out


def _field_values(records: Sequence[Mapping], field: str) -> list:
    return [r["header"].get(field) for r in records]


def _categories(records: Sequence[Mapping], field: str) -> dict[str, int]:
    return category_counts(category_label(field, v) for v in _field_values(records, field))


def _numeric(records: Sequence[Mapping], field: str) -> list[float]:
    vals = _field_values(records, field)
    if field == "PixelSpacing":
        return [in_plane_spacing_mm(v) for v in vals]
    return [math.nan if v is None else float(v) for v in vals]


def pooled_histogram(records: Sequence[Mapping], n_bins: int) -> np.ndarray:
    """Mean of the per-scan normalised ``histogram_counts`` (each scan weighs the same; sums to 1)."""
    if not records:
        raise DriftError("records is empty: give at least one scan record")
    acc = np.zeros(n_bins)
    for r in records:
        h = np.asarray(r["histogram_counts"], dtype=float)
        if h.shape != (n_bins,):
            raise DriftError(f"a scan record has {h.size} histogram bins; the profile has {n_bins} "
                             "(profile the new scans with the profile's bin edges)")
        acc += h / h.sum() if h.sum() > 0 else 0.0
    return acc / len(records)


def _public_record(r: Mapping) -> dict:
    return {k: v for k, v in r.items() if k != "histogram_counts"}


def build_profile(records: Sequence[Mapping], *, bin_edges_hu: np.ndarray | None = None,
                  threshold_hu: float = BODY_THRESHOLD_HU, source: str | None = None,
                  skipped: Sequence[Mapping] = ()) -> dict[str, Any]:
    """The baseline profile of scan records (:func:`profile_series`).

    Returns
    -------
    dict
        ``kind`` (:data:`PROFILE_KIND`), ``schema_version``, ``created``, ``source``,
        ``n_series``, ``settings`` (``threshold_hu``, ``bin_edges_hu``), ``categories``
        (field → category → count), ``numeric`` (field → :func:`numeric_summary`; pixel
        spacing as the in-plane mean, mm), ``intensity`` (``summaries``: per-scan summary →
        :func:`numeric_summary` over scans; ``pooled_histogram``: ``fraction`` per bin),
        ``series`` (the records without their histograms) and ``skipped``.
    """
    if not records:
        raise DriftError("records is empty: a baseline needs at least one scan")
    edges = hu_bin_edges(threshold_hu) if bin_edges_hu is None else _check_edges(bin_edges_hu)
    return {
        "kind": PROFILE_KIND,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "n_series": len(records),
        "settings": {"threshold_hu": float(threshold_hu), "bin_edges_hu": edges.tolist(),
                     "body_mask": f"HU > {threshold_hu:g}, largest 3-D face-connected component, holes not filled",
                     "histogram": "mean of per-scan normalised histograms; values beyond the edges in the end bins"},
        "categorical_fields": list(CATEGORICAL_FIELDS),
        "categories": {f: _categories(records, f) for f in HEADER_FIELDS},
        "numeric": {f: numeric_summary(_numeric(records, f)) for f in NUMERIC_FIELDS},
        "intensity": {
            "summaries": {k: numeric_summary(r["intensity"][k] for r in records) for k in _SUMMARY_KEYS},
            "pooled_histogram": {"fraction": pooled_histogram(records, edges.size - 1).tolist()},
        },
        "series": [_public_record(r) for r in records],
        "skipped": [dict(s) for s in skipped],
    }


def profile_folder(folder: str | os.PathLike, *, threshold_hu: float = BODY_THRESHOLD_HU,
                   bin_edges_hu: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`build_profile` of :func:`profile_series` of a DICOM folder."""
    edges = hu_bin_edges(threshold_hu) if bin_edges_hu is None else _check_edges(bin_edges_hu)
    records, skipped = profile_series(folder, threshold_hu=threshold_hu, bin_edges_hu=edges)
    return build_profile(records, bin_edges_hu=edges, threshold_hu=threshold_hu, source=str(folder), skipped=skipped)


def validate_profile(obj: Any, source: str = "profile") -> dict[str, Any]:
    """Check that ``obj`` is a digipat drift profile this version reads; returns it.

    Raises
    ------
    DriftError
        Not a mapping, another ``kind``, another major schema version, or a missing or
        inconsistent part (series count, bin edges, histogram length).
    """
    hint = "make one with `digipat monitor baseline DICOM_DIR --out PROFILE.json`"
    if not isinstance(obj, Mapping) or obj.get("kind") != PROFILE_KIND:
        raise DriftError(f"{source} is not a digipat drift profile (no \"kind\": \"{PROFILE_KIND}\"); {hint}")
    ver = str(obj.get("schema_version", ""))
    if ver.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise DriftError(f"{source} has schema_version {ver!r}; this digipat reads {SCHEMA_VERSION}; {hint}")
    try:
        edges = _check_edges(obj["settings"]["bin_edges_hu"])
        float(obj["settings"]["threshold_hu"])
        series = obj["series"]
        frac = obj["intensity"]["pooled_histogram"]["fraction"]
        cats = obj["categories"]
        for f in NUMERIC_FIELDS:
            obj["numeric"][f]["n"]  # noqa: B018
        for k in _SUMMARY_KEYS:
            obj["intensity"]["summaries"][k]["n"]  # noqa: B018
        for r in series:
            r["header"], r["intensity"]["median_hu"], r["intensity"]["iqr_hu"]  # noqa: B018
    except DriftError as exc:
        raise DriftError(f"{source}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DriftError(f"{source} is an incomplete drift profile (missing or bad {exc}); {hint}") from None
    if not series or len(series) != obj.get("n_series"):
        raise DriftError(f"{source}: n_series = {obj.get('n_series')!r} but {len(series)} series records; {hint}")
    if len(frac) != edges.size - 1:
        raise DriftError(f"{source}: pooled histogram has {len(frac)} bins, bin_edges_hu {edges.size - 1}")
    for f in CATEGORICAL_FIELDS:
        if sum(cats.get(f, {}).values()) != len(series):
            raise DriftError(f"{source}: the {f} counts do not add up to the {len(series)} series")
    return dict(obj)


def read_profile(path: str | os.PathLike) -> dict[str, Any]:
    """Read and :func:`validate_profile` a profile JSON file."""
    import json

    p = Path(path)
    if not p.is_file():
        raise DriftError(f"profile not found: {p} (make one with `digipat monitor baseline`)")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DriftError(f"{p} is not a digipat drift profile (not JSON: {exc})") from None
    return validate_profile(obj, str(p))


# ----------------------------------------------------------------------------- statistics
def _pearson(baseline: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Pearson X² of 2 x k tables (last axis = categories; leading axes broadcast)."""
    col = baseline + new
    n_b = baseline.sum(axis=-1, keepdims=True)
    n_n = new.sum(axis=-1, keepdims=True)
    total = n_b + n_n
    e_b = col * n_b / total
    e_n = col * n_n / total
    return ((baseline - e_b) ** 2 / e_b).sum(axis=-1) + ((new - e_n) ** 2 / e_n).sum(axis=-1)


def chi_square_shift(baseline_counts: Mapping[str, int], new_counts: Mapping[str, int], *,
                     mc_samples: int = 9999, seed: int = 0, method: str = "auto") -> dict[str, Any]:
    """Pearson's chi-square test that baseline and new scans share one category distribution.

    Parameters
    ----------
    baseline_counts, new_counts : mapping of str to int
        Scans per category; a category absent from one mapping counts 0 there.
    mc_samples : int
        Monte Carlo tables for the conditional p-value (≥ 99).
    seed : int
        Seed of the Monte Carlo draws.
    method : {"auto", "asymptotic", "monte-carlo"}
        ``auto``: asymptotic (chi-square law, ``k − 1`` dof) when every expected count ≥ 5,
        else Monte Carlo with the margins fixed (module docstring).

    Returns
    -------
    dict
        ``statistic`` (X²), ``dof``, ``p_value``, ``method``, ``min_expected``,
        ``categories``, ``baseline_counts``, ``new_counts`` (lists, in category order) and
        ``new_categories`` (in the new scans only). With one category (or none) there is nothing
        to test: ``statistic`` 0, ``p_value`` 1, ``method`` ``"one category"``.
    """
    from scipy import stats

    methods = ("auto", "asymptotic", "monte-carlo")
    if method not in methods:
        raise DriftError(f"method = {method!r}: choose one of {', '.join(methods)}")
    for name, c in (("baseline_counts", baseline_counts), ("new_counts", new_counts)):
        if not isinstance(c, Mapping) or any(not isinstance(v, (int, np.integer)) or v < 0 for v in c.values()):
            raise DriftError(f"{name} = {c!r}: give a mapping of category to a count ≥ 0")
        if sum(c.values()) == 0:
            raise DriftError(f"{name} holds no scan: give at least one count > 0")
    if not (isinstance(mc_samples, (int, np.integer)) and mc_samples >= 99):
        raise DriftError(f"mc_samples = {mc_samples!r}: give an integer ≥ 99")
    cats = [c for c in dict.fromkeys([*baseline_counts, *new_counts])
            if baseline_counts.get(c, 0) + new_counts.get(c, 0) > 0]
    cats.sort(key=lambda c: (-(baseline_counts.get(c, 0) + new_counts.get(c, 0)), c))
    b = np.array([baseline_counts.get(c, 0) for c in cats], dtype=float)
    n = np.array([new_counts.get(c, 0) for c in cats], dtype=float)
    out: dict[str, Any] = {"categories": cats, "baseline_counts": b.astype(int).tolist(),
                           "new_counts": n.astype(int).tolist(),
                           "new_categories": [c for c in cats if baseline_counts.get(c, 0) == 0]}
    if len(cats) < 2:
        out.update(statistic=0.0, dof=0, p_value=1.0, method="one category", min_expected=math.nan)
        return out
    col = b + n
    min_expected = float(min((col * b.sum() / col.sum()).min(), (col * n.sum() / col.sum()).min()))
    x2 = float(_pearson(b, n))
    dof = len(cats) - 1
    use_mc = method == "monte-carlo" or (method == "auto" and min_expected < 5.0)
    if use_mc:
        rng = np.random.default_rng(seed)
        sim_new = rng.multivariate_hypergeometric(col.astype(np.int64), int(n.sum()), size=int(mc_samples),
                                                  method="marginals").astype(float)
        sims = _pearson(col - sim_new, sim_new)
        hits = int(np.count_nonzero(sims >= x2 - 1e-9 * max(1.0, x2)))
        p = (1 + hits) / (int(mc_samples) + 1)
        how = f"monte-carlo ({int(mc_samples)} tables with the observed margins)"
    else:
        p = float(stats.chi2.sf(x2, dof))
        how = "asymptotic (chi-square law)"
    out.update(statistic=x2, dof=dof, p_value=float(p), method=how, min_expected=min_expected)
    return out


def population_stability_index(baseline_counts: Mapping[str, int], new_counts: Mapping[str, int], *,
                               eps: float = 1e-4) -> float:
    """PSI ``Σ (a − e) ln(a / e)`` of the new (``a``) against the baseline (``e``) proportions.

    Over every category in either mapping; a zero proportion is replaced by ``eps`` (> 0).
    0 for identical proportions; symmetric in the two samples (it is the symmetrised
    Kullback–Leibler divergence).
    """
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise DriftError(f"eps = {eps!r}: give a small proportion in (0, 1), e.g. 1e-4")
    cats = list(dict.fromkeys([*baseline_counts, *new_counts]))
    e = np.array([baseline_counts.get(c, 0) for c in cats], dtype=float)
    a = np.array([new_counts.get(c, 0) for c in cats], dtype=float)
    if e.sum() <= 0 or a.sum() <= 0 or (e < 0).any() or (a < 0).any():
        raise DriftError("baseline_counts and new_counts need counts ≥ 0 and at least one scan each")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_band(psi: float) -> str:
    """``"none"`` (< 0.1), ``"moderate"`` (0.1–0.25) or ``"major"`` (> 0.25) (Siddiqi 2006)."""
    if not math.isfinite(psi):
        return "n/a"
    return "none" if psi < _PSI_BANDS[0] else ("moderate" if psi <= _PSI_BANDS[1] else "major")


def ks_shift(baseline_values: Sequence[float], new_values: Sequence[float]) -> dict[str, Any]:
    """Two-sample Kolmogorov–Smirnov test of one value per scan (``scipy.stats.ks_2samp``, two-sided).

    NaN and ``None`` are dropped. Returns ``statistic`` (D), ``p_value``, ``method``,
    ``n_baseline``, ``n_new``, ``baseline_median``, ``new_median``. ``p_value`` is NaN
    (``method`` ``"no values"``) when a sample is empty; when every value of both samples is the
    same there is nothing to test: D 0, ``p_value`` 1, ``method`` ``"one value"``.
    """
    from scipy import stats

    b = np.asarray([v for v in (math.nan if x is None else float(x) for x in baseline_values) if math.isfinite(v)])
    n = np.asarray([v for v in (math.nan if x is None else float(x) for x in new_values) if math.isfinite(v)])
    out: dict[str, Any] = {"n_baseline": int(b.size), "n_new": int(n.size),
                           "baseline_median": float(np.median(b)) if b.size else math.nan,
                           "new_median": float(np.median(n)) if n.size else math.nan}
    if b.size == 0 or n.size == 0:
        out.update(statistic=math.nan, p_value=math.nan, method="no values")
        return out
    if np.unique(np.concatenate([b, n])).size == 1:
        out.update(statistic=0.0, p_value=1.0, method="one value")
        return out
    r = stats.ks_2samp(b, n)
    out.update(statistic=float(r.statistic), p_value=float(r.pvalue), method="ks_2samp (two-sided)")
    return out


def wasserstein_hu(bin_edges_hu: Sequence[float], baseline_fraction: Sequence[float],
                   new_fraction: Sequence[float]) -> float:
    """First Wasserstein distance (HU) between two histograms on the same edges, each bin's mass at its
    centre (``scipy.stats.wasserstein_distance``); exact for a shift by whole bins."""
    from scipy import stats

    edges = _check_edges(bin_edges_hu)
    a, b = np.asarray(baseline_fraction, dtype=float), np.asarray(new_fraction, dtype=float)
    if a.shape != (edges.size - 1,) or b.shape != a.shape or (a < 0).any() or (b < 0).any() \
            or a.sum() <= 0 or b.sum() <= 0:
        raise DriftError(f"histograms need {edges.size - 1} non-negative bins with some mass each "
                         f"(got {a.size} and {b.size})")
    centres = 0.5 * (edges[1:] + edges[:-1])
    return float(stats.wasserstein_distance(centres, centres, a, b))


# ----------------------------------------------------------------------------- the check
def _fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def _largest_change(t: Mapping) -> str:
    b = np.asarray(t["baseline_counts"], float)
    n = np.asarray(t["new_counts"], float)
    pb, pn = b / b.sum(), n / n.sum()
    i = int(np.argmax(np.abs(pn - pb)))
    return f"largest change: {t['categories'][i]!r} {100 * pb[i]:.0f} % → {100 * pn[i]:.0f} %"


def compare(profile: Mapping[str, Any], new_records: Sequence[Mapping], *,
            thresholds: DriftThresholds = DriftThresholds()) -> dict[str, Any]:
    """Test new scan records against a baseline profile.

    Parameters
    ----------
    profile : dict
        A profile (:func:`build_profile` / :func:`read_profile`).
    new_records : sequence of dict
        Records of the new scans (:func:`profile_series` with the profile's ``threshold_hu``
        and ``bin_edges_hu``): ``header``, ``intensity`` and ``histogram_counts``.
    thresholds : DriftThresholds
        Significance level and effect-size thresholds.

    Returns
    -------
    dict
        ``kind`` (:data:`CHECK_KIND`), ``schema_version``, ``n_baseline``, ``n_new``,
        ``thresholds`` (with ``alpha_per_test`` and ``tests_with_p_value``), ``drift`` (bool),
        ``alerts`` (``field``, ``test``, ``reason``), ``notes``, ``tests`` (one per field: the
        statistic, p-value, effect size, ``significant``, ``alert``, ``reason``), ``numeric``
        (baseline and new summaries), ``intensity`` (bin edges, pooled fractions,
        ``wasserstein_hu``), ``new_series`` (records without histograms).
    """
    if not isinstance(thresholds, DriftThresholds):
        raise DriftError(f"thresholds = {thresholds!r}: give a DriftThresholds")
    profile = validate_profile(profile)
    if not new_records:
        raise DriftError("new_records is empty: give at least one new scan")
    base = profile["series"]
    edges = np.asarray(profile["settings"]["bin_edges_hu"], float)
    th = thresholds
    tests: list[dict[str, Any]] = []
    notes: list[str] = []

    for f in CATEGORICAL_FIELDS:
        t = chi_square_shift(profile["categories"][f], _categories(new_records, f),
                             mc_samples=th.mc_samples, seed=th.seed)
        t.update(field=f, kind="categorical", test="chi-square",
                 psi=population_stability_index(profile["categories"][f], _categories(new_records, f)))
        t["psi_band"] = psi_band(t["psi"])
        tests.append(t)
    t = ks_shift(_numeric(base, "PixelSpacing"), _numeric(new_records, "PixelSpacing"))
    t.update(field="PixelSpacing", kind="numeric", test="Kolmogorov-Smirnov", unit="mm",
             baseline_values=_numeric(base, "PixelSpacing"), new_values=_numeric(new_records, "PixelSpacing"))
    tests.append(t)
    frac_b = np.asarray(profile["intensity"]["pooled_histogram"]["fraction"], float)
    frac_n = pooled_histogram(new_records, edges.size - 1)
    w = wasserstein_hu(edges, frac_b, frac_n)
    for k in INTENSITY_TESTED:
        vb = [r["intensity"][k] for r in base]
        vn = [r["intensity"][k] for r in new_records]
        t = ks_shift(vb, vn)
        t.update(field=k, kind="intensity", test="Kolmogorov-Smirnov", unit="HU", wasserstein_hu=w,
                 baseline_values=vb, new_values=vn)
        tests.append(t)

    def counted(t):
        return t["method"] not in ("one category", "one value", "no values")

    m = sum(counted(t) for t in tests)
    a_test = th.alpha / max(m, 1)
    alerts = []
    for t in tests:
        p = t["p_value"]
        t["significant"] = bool(counted(t) and p <= a_test)
        sig = f"p = {_fmt_p(p)} {'≤' if t['significant'] else '>'} {a_test:.2g} (alpha {th.alpha:g} / {m} tests)"
        if not counted(t):
            if t["method"] == "one category":
                sig = f"not tested: one category ({', '.join(map(repr, t['categories']))}) in both"
            elif t["method"] == "one value":
                sig = f"not tested: one value ({t['baseline_median']:g}) in both"
            else:
                sig = "not tested: no values"
        if t["kind"] == "categorical":
            t["effect_ok"] = t["psi"] >= th.psi
            stat = sig
            if counted(t):
                stat = f"chi-square {t['statistic']:.2f} ({t['dof']} dof, {t['method'].split(' ')[0]}), {sig}; " \
                       f"PSI {t['psi']:.3f} ({t['psi_band']}) {'≥' if t['effect_ok'] else '<'} {th.psi:g}; " \
                       f"{_largest_change(t)}"
            for c in t["new_categories"]:
                notes.append(f"{t['field']}: category {c!r} is new (not in the baseline): "
                             f"{t['new_counts'][t['categories'].index(c)]} of {len(new_records)} new scans")
            if not t["significant"] and t["psi_band"] == "major" and counted(t):
                notes.append(f"{t['field']}: PSI {t['psi']:.2f} is a major shift by the usual scale, but not "
                             f"significant with {len(base)} baseline and {len(new_records)} new scans "
                             "(collect more scans before acting)")
        elif t["kind"] == "numeric":
            t["effect_ok"] = True
            stat = (f"KS D = {t['statistic']:.3f}, {sig}; "
                    f"median {t['baseline_median']:.3f} → {t['new_median']:.3f} mm") if counted(t) else sig
        else:
            t["effect_ok"] = w >= th.wasserstein_hu
            what = "median" if t["field"] == "median_hu" else "interquartile range"
            stat = (f"per-scan body-HU {what}: KS D = {t['statistic']:.3f}, {sig}; median over scans "
                    f"{t['baseline_median']:.1f} → {t['new_median']:.1f} HU; pooled-histogram Wasserstein "
                    f"{w:.1f} HU {'≥' if t['effect_ok'] else '<'} {th.wasserstein_hu:g} HU") if counted(t) else sig
        t["alert"] = bool(t["significant"] and t["effect_ok"])
        t["reason"] = stat
        if t["alert"]:
            alerts.append({"field": t["field"], "test": t["test"], "reason": stat})
    if len(new_records) < 10:
        notes.append(f"only {len(new_records)} new scans: the tests can detect only large shifts")

    return {
        "kind": CHECK_KIND,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile_source": profile.get("source"),
        "n_baseline": len(base),
        "n_new": len(new_records),
        "thresholds": {**asdict(th), "alpha_per_test": a_test, "tests_with_p_value": m},
        "drift": bool(alerts),
        "alerts": alerts,
        "notes": notes,
        "tests": tests,
        "numeric": {f: {"baseline": profile["numeric"][f], "new": numeric_summary(_numeric(new_records, f))}
                    for f in NUMERIC_FIELDS},
        "intensity": {"bin_edges_hu": edges.tolist(), "baseline_fraction": frac_b.tolist(),
                      "new_fraction": frac_n.tolist(), "wasserstein_hu": w,
                      "baseline_summaries": profile["intensity"]["summaries"],
                      "new_summaries": {k: numeric_summary(r["intensity"][k] for r in new_records)
                                        for k in _SUMMARY_KEYS}},
        "new_series": [_public_record(r) for r in new_records],
    }


def check_folder(profile: Mapping[str, Any], folder: str | os.PathLike, *,
                 thresholds: DriftThresholds = DriftThresholds()) -> dict[str, Any]:
    """:func:`compare` a profile with the CT series below ``folder`` (profiled with the profile's
    body threshold and bin edges). Adds ``source`` and ``skipped`` to the result."""
    profile = validate_profile(profile)
    s = profile["settings"]
    records, skipped = profile_series(folder, threshold_hu=float(s["threshold_hu"]),
                                      bin_edges_hu=np.asarray(s["bin_edges_hu"], float))
    out = compare(profile, records, thresholds=thresholds)
    out["source"] = str(folder)
    out["skipped"] = skipped
    return out
