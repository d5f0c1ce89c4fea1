"""Figures of a dose run: dose map over the anatomy in three planes, organ-dose bars.

Both functions write a PNG atomically (temporary file, then rename) with matplotlib's Agg
backend, so they work on headless batch nodes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from physics.atomic import save_figure

__all__ = ["plot_dose_overlay", "plot_organ_doses"]


def _save(fig, path: str | os.PathLike) -> Path:
    return save_figure(fig, path, dpi=110, bbox_inches="tight", format="png")


def plot_dose_overlay(labels: np.ndarray, dose: np.ndarray, spacing_mm: Sequence[float], path: str | os.PathLike,
                      *, title: str = "", dose_unit: str = "mGy", point: Sequence[int] | None = None,
                      threshold_fraction: float = 0.01) -> Path:
    """Axial, coronal and sagittal slices of the anatomy (grey) with the dose (colour) on top.

    Parameters
    ----------
    labels : int array (nz, ny, nx)
        Label map (drawn in grey; 0 = outside).
    dose : float array (nz, ny, nx)
        Dose per voxel in ``dose_unit``.
    spacing_mm : (dz, dy, dx)
        Voxel size, for the aspect ratio.
    point : (k, j, i), optional
        Voxel through which the three planes pass; default the dose-weighted centre.
        Voxels labelled 0 (air) are not coloured; the colour scale ends at the 99.5th
        percentile of the body's voxel doses (single noisy voxels do not set it).
    threshold_fraction : float
        Dose below this fraction of the maximum is transparent.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    dose = np.asarray(dose, float)
    if labels.ndim != 3 or dose.shape != labels.shape:
        raise ValueError(f"labels and dose must be 3-D arrays of one shape, got {labels.shape} and {dose.shape}")
    # only the body is coloured: the dose to air voxels (tiny mass, few interactions) is
    # large and noisy and would set the colour scale
    finite = np.where(np.isfinite(dose) & (labels > 0), dose, 0.0)
    if point is None:
        tot = finite.sum()
        if tot > 0:
            grids = np.indices(dose.shape, sparse=True)
            point = tuple(int(round(float((g * finite).sum() / tot))) for g in grids)
        else:
            point = tuple(n // 2 for n in dose.shape)
    k, j, i = point
    dz, dy, dx = (float(s) for s in spacing_mm)
    inside = finite[labels > 0]
    vmax = float(np.percentile(inside, 99.5)) if inside.size and inside.max() > 0 else 1.0
    vmax = vmax if vmax > 0 else (float(finite.max()) or 1.0)
    planes = [("axial (z = %d)" % k, labels[k], finite[k], dy / dx),
              ("coronal (y = %d)" % j, labels[:, j, :][::-1], finite[:, j, :][::-1], dz / dx),
              ("sagittal (x = %d)" % i, labels[:, :, i][::-1], finite[:, :, i][::-1], dz / dy)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    im = None
    for ax, (name, lab, d, aspect) in zip(axes, planes):
        ax.imshow(lab > 0, cmap="gray", vmin=0, vmax=1.6, aspect=aspect, interpolation="nearest")
        if np.unique(lab).size > 1:
            ax.contour(lab, levels=np.unique(lab)[1:] - 0.5, colors="white", linewidths=0.3, alpha=0.5)
        masked = np.ma.masked_less(d, threshold_fraction * vmax)
        im = ax.imshow(masked, cmap="inferno", vmin=0, vmax=vmax, alpha=0.75, aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"dose ({dose_unit})")
    if title:
        fig.suptitle(title)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_organ_doses(rows: Sequence[dict], path: str | os.PathLike, *, value_key: str = "dose_mGy",
                     sigma_key: str = "dose_sigma_mGy", name_key: str = "organ", unit: str = "mGy",
                     title: str = "") -> Path:
    """Horizontal bar chart of organ doses with 2σ error bars, largest first.

    ``rows`` are dicts with ``name_key``, ``value_key`` and optionally ``sigma_key``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get(value_key) is not None and np.isfinite(r[value_key])]
    if not rows:
        raise ValueError(f"no organ has a finite {value_key!r} to plot")
    rows = sorted(rows, key=lambda r: r[value_key])
    names = [str(r[name_key]) for r in rows]
    vals = np.array([r[value_key] for r in rows], float)
    sig = np.array([r.get(sigma_key) if r.get(sigma_key) is not None else 0.0 for r in rows], float)
    sig = np.where(np.isfinite(sig), sig, 0.0)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    ax.barh(names, vals, xerr=2 * sig, color="#c0504d", ecolor="black", capsize=2)
    ax.set_xlabel(f"dose ({unit}); error bars 2σ (Monte Carlo)")
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out
