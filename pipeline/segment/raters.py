"""Several annotators: simulated raters, their fusion, and calibration of a probability map.

* :func:`simulate_raters`: each rater's mask is the truth's signed distance moved by the rater's
  own boundary offset (a steady bias in mm, some draw the wall outside, some inside) plus a
  smooth local disagreement (correlated noise, stronger near a stenosis when its centre is
  given), thresholded at 0: the disagreements real annotators show at the wall and at a
  narrowing.
* :func:`majority_vote` (ties to background), :func:`staple` (SimpleITK's STAPLE, Warfield et
  al. 2004: each rater's sensitivity and specificity estimated by EM, the posterior truth
  probability per voxel) and :func:`soft_consensus` (the fraction of raters calling a voxel
  lumen: a soft label).
* :func:`expected_calibration_error` and :func:`reliability_diagram`: predicted probabilities
  binned (10 equal-width bins); ECE = sum over bins of (n_bin / n) |accuracy - confidence|,
  with the lumen probability p, confidence max(p, 1 - p) and accuracy the fraction whose
  predicted class (p > 0.5) agrees with the reference (Guo et al. 2017). Against soft
  references (held-out raters' consensus) the accuracy counts each voxel by the fraction
  of raters agreeing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["simulate_raters", "majority_vote", "staple", "soft_consensus", "expected_calibration_error",
           "reliability_diagram"]


def _signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) to the mask's boundary, taken half a voxel beyond its boundary voxels;
    negative inside."""
    m = np.asarray(mask, bool)
    h = 0.5 * float(np.min(spacing))
    return np.where(m, h - ndimage.distance_transform_edt(m, sampling=spacing),
                    ndimage.distance_transform_edt(~m, sampling=spacing) - h)


def simulate_raters(truth: np.ndarray, spacing_mm, n_raters: int, *, seed: int = 0, bias_mm: float = 0.3,
                    local_mm: float = 0.3, correlation_mm: float = 2.0, stenosis_zyx=None,
                    stenosis_gain: float = 2.0, stenosis_radius_mm: float = 4.0, offsets_mm=None) -> list[np.ndarray]:
    """``n_raters`` masks (bool) around ``truth`` (see the module docstring). Rater k's offset is
    ``offsets_mm[k]`` when given, else drawn from N(0, bias_mm); the local disagreement is Gaussian-smoothed white noise scaled to
    an RMS of ``local_mm``, times (1 + stenosis_gain) within ``stenosis_radius_mm`` of
    ``stenosis_zyx`` (voxel index), fading linearly to 1 at twice that distance."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing_mm, float)
    sd = _signed_distance(truth, sp)
    gain = np.ones(truth.shape)
    if stenosis_zyx is not None:
        grid = np.indices(truth.shape, dtype=np.float64)
        d = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, stenosis_zyx, sp)))
        gain += stenosis_gain * np.clip(2.0 - d / stenosis_radius_mm, 0.0, 1.0)
    out = []
    if offsets_mm is not None and len(offsets_mm) != n_raters:
        raise ValueError(f"offsets_mm needs one offset per rater ({n_raters}), got {len(offsets_mm)}")
    for k in range(n_raters):
        bias = rng.normal(0.0, bias_mm) if offsets_mm is None else float(offsets_mm[k])
        noise = ndimage.gaussian_filter(rng.standard_normal(truth.shape), correlation_mm / sp)
        noise *= local_mm / max(float(noise.std()), 1e-12)
        out.append(sd - bias - noise * gain < 0)
    return out


def majority_vote(masks) -> np.ndarray:
    """Lumen where more than half of the raters say so."""
    m = np.asarray([np.asarray(x, bool) for x in masks])
    return m.sum(axis=0) * 2 > len(m)


def soft_consensus(masks) -> np.ndarray:
    """The fraction of raters calling each voxel lumen (float32 in [0, 1])."""
    return np.mean([np.asarray(x, np.float32) for x in masks], axis=0).astype(np.float32)


def staple(masks, *, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, dict]:
    """SimpleITK's STAPLE: ``(mask, posterior probability, rater sensitivities / specificities)``."""
    import SimpleITK as sitk

    imgs = [sitk.GetImageFromArray(np.asarray(x, np.uint8)) for x in masks]
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    prob = sitk.GetArrayFromImage(f.Execute(imgs)).astype(np.float32)
    return prob > threshold, prob, {"sensitivity": list(f.GetSensitivity()), "specificity": list(f.GetSpecificity())}


def _bins(p: np.ndarray, reference: np.ndarray, n_bins: int):
    p = np.asarray(p, np.float64).ravel()
    ref = np.asarray(reference, np.float64).ravel()
    if p.shape != ref.shape:
        raise ValueError(f"probability {p.shape} and reference {ref.shape} differ in size")
    pred = p > 0.5
    conf = np.where(pred, p, 1.0 - p)
    correct = np.where(pred, ref, 1.0 - ref)  # soft references: the fraction agreeing
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    k = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    n = np.bincount(k, minlength=n_bins).astype(float)
    acc = np.bincount(k, weights=correct, minlength=n_bins)
    cf = np.bincount(k, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges, n, np.where(n > 0, acc / n, np.nan), np.where(n > 0, cf / n, np.nan)


def expected_calibration_error(p, reference, *, n_bins: int = 10, mask=None) -> float:
    """ECE of the lumen probability ``p`` against a hard (0/1) or soft reference (see the module
    docstring); ``mask`` restricts the voxels (e.g. a band around the wall, where it matters)."""
    p, reference = np.asarray(p), np.asarray(reference)
    if mask is not None:
        p, reference = p[np.asarray(mask, bool)], reference[np.asarray(mask, bool)]
    _, n, acc, cf = _bins(p, reference, n_bins)
    ok = n > 0
    return float(np.sum(n[ok] / n.sum() * np.abs(acc[ok] - cf[ok])))


def reliability_diagram(path, curves: dict, *, n_bins: int = 10, title: str = "") -> None:
    """Write a reliability diagram (accuracy against confidence per bin, the diagonal perfect)
    for several ``{label: (probability, reference[, mask])}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from physics.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0.5, 1.0], [0.5, 1.0], "k:", lw=1, label="perfectly calibrated")
    for label, item in curves.items():
        p, ref = np.asarray(item[0]), np.asarray(item[1])
        if len(item) > 2 and item[2] is not None:
            p, ref = p[np.asarray(item[2], bool)], ref[np.asarray(item[2], bool)]
        _, n, acc, cf = _bins(p, ref, n_bins)
        ok = n > 0
        ece = float(np.sum(n[ok] / n.sum() * np.abs(acc[ok] - cf[ok])))
        ax.plot(cf[ok], acc[ok], "o-", label=f"{label} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
