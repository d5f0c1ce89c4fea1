"""The "check by eye" picture of a vessel model: image, lumen, centrelines and caps in three planes.

One PNG (:func:`check_figure`) with an axial, a coronal and a sagittal slice. Each panel shows

* the image in grey, windowed from its own intensities in and around the lumen
  (:func:`intensity_window`), so the same code suits CT (HU) and MR (arbitrary positive units);
* the lumen contour of the mask in that slice (the 0.5 level of the 0/1 mask);
* the centrelines projected onto the panel (thin, semi-transparent, like a maximum-intensity
  projection: the whole tree is seen on every panel), with the points within
  ``2 x`` the largest voxel spacing of the slice drawn as dots;
* the caps (inlet, outlets, ...) projected onto the panel: the disc's outline (an ellipse, a
  segment when the disc is seen edge-on, a circle when face-on), its diameter perpendicular
  to the normal within the panel (a thick segment of length ``2 r``), a short arrow along the
  outward normal, and its name.

Geometry. The panels are planes of the *world* frame (LPS, mm), not of the voxel array:
axial ``z = const`` with ``x`` across and ``y`` down, coronal ``y = const`` with ``x`` across
and ``z`` up, sagittal ``x = const`` with ``y`` across and ``z`` up. That is the radiological
display (patient's right on the left of the axial and coronal panels, anterior at the top of the
axial panel and on the left of the sagittal one). The image and mask are sampled onto square
pixels of the panel by linear interpolation through :meth:`Volume.world_to_index`
(:func:`sample_plane`), so any direction matrix (e.g. ``diag(-1, -1, 1)`` of an LPS MRA,
or an oblique acquisition) and anisotropic voxels (0.879 x 0.879 x 1.5 mm) come out with
their physical shape, and every overlay, given in world mm, is drawn by the same mapping
(:func:`panel_coordinates`): what lands on a pixel of the image is what lies there.

The three planes pass through the lumen voxel nearest to the mask's centroid
(:func:`slice_centre_xyz_mm`): the centroid of a curved or branching vessel can lie outside
it, and a slice that misses the lumen shows nothing to check. The caps and centrelines are
drawn projected on every panel whatever the slice, so the inlet is seen without slicing
through it; pass ``centre_xyz_mm=caps[0]["centre_xyz_mm"]`` to cut through the inlet instead.
Each panel shows the box holding the lumen, the centrelines and the caps, with a margin
(points outside the image, e.g. a centreline given in the wrong frame, widen the box and
show up against the dark "outside the image" colour).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from physics.atomic import save_figure
from pipeline.image import Volume

__all__ = ["check_figure", "PANELS", "panel_coordinates", "sample_plane", "slice_centre_xyz_mm",
           "intensity_window"]

#: Panel name -> (world axis held fixed, horizontal world axis, vertical world axis); 0, 1, 2 = x, y, z.
PANELS: dict[str, tuple[int, int, int]] = {
    "axial": (2, 0, 1),
    "coronal": (1, 0, 2),
    "sagittal": (0, 1, 2),
}
_AXIS = ("x", "y", "z")
_AXIS_LABEL = ("x (mm, +L)", "y (mm, +P)", "z (mm, +S)")
_MAX_PIXELS = 700          # largest side of a panel, pixels
_SHELL_MM = 3.0            # width of the tissue shell around the lumen used for the window
_CAP_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_INLET_COLOUR = "#1f77ff"
_WALL_COLOUR = "#b0b0b0"
_LUMEN_COLOUR = "#ffd400"
_CENTRELINE_COLOUR = "#00e5ff"


# ----------------------------------------------------------------------------- pure helpers
def _panel_axes(panel: str) -> tuple[int, int, int]:
    try:
        return PANELS[panel]
    except KeyError:
        raise ValueError(f"panel must be one of {sorted(PANELS)}, got {panel!r}") from None


def panel_coordinates(points_xyz_mm, panel: str, level_mm: float = 0.0) -> np.ndarray:
    """Where world points are drawn on a panel: ``(horizontal, vertical, depth)`` in mm.

    Parameters
    ----------
    points_xyz_mm : array, shape (..., 3)
        World (x, y, z) points in mm (LPS).
    panel : {"axial", "coronal", "sagittal"}
        The panel (see :data:`PANELS`).
    level_mm : float
        World coordinate of the panel's plane along its fixed axis (z for axial), mm.

    Returns
    -------
    ndarray, shape (..., 3)
        Horizontal and vertical plot coordinates in mm (world coordinates along the panel's
        axes: axial (x, y), coronal (x, z), sagittal (y, z)), and the signed distance from
        the plane in mm.
    """
    fixed, h, v = _panel_axes(panel)
    p = np.asarray(points_xyz_mm, dtype=float)
    return np.stack([p[..., h], p[..., v], p[..., fixed] - float(level_mm)], axis=-1)


def sample_plane(volume: Volume, panel: str, level_mm: float, h_mm, v_mm, *, order: int = 1) -> np.ndarray:
    """Values of a volume on a world-aligned plane, by interpolation through the volume's affine.

    Parameters
    ----------
    volume : Volume
        The image (any direction matrix, any spacing).
    panel : {"axial", "coronal", "sagittal"}
        Which plane (see :data:`PANELS`).
    level_mm : float
        World coordinate of the plane along its fixed axis, mm.
    h_mm, v_mm : 1-D arrays
        World coordinates (mm) of the pixel centres along the panel's horizontal and vertical axes.
    order : int
        Interpolation order (0 nearest, 1 linear).

    Returns
    -------
    ndarray, shape (len(v_mm), len(h_mm)), float
        Row ``r``, column ``c`` holds the value at horizontal ``h_mm[c]``, vertical ``v_mm[r]``;
        NaN where the point lies outside the image (more than half a voxel beyond its edge voxels).
    """
    from scipy.ndimage import map_coordinates

    fixed, h_ax, v_ax = _panel_axes(panel)
    hh, vv = np.meshgrid(np.asarray(h_mm, float), np.asarray(v_mm, float))
    pts = np.empty(hh.shape + (3,))
    pts[..., fixed] = float(level_mm)
    pts[..., h_ax] = hh
    pts[..., v_ax] = vv
    idx = volume.world_to_index(pts)  # (nv, nh, 3) in (k, j, i)
    shape = np.asarray(volume.shape)
    outside = np.any((idx < -0.5) | (idx > shape - 0.5), axis=-1)
    out = np.full(hh.shape, np.nan)
    if outside.all():
        return out
    inside_idx = idx[~outside]
    # interpolate in the block of voxels the plane passes through, not the whole volume
    lo = np.clip(np.floor(inside_idx.min(axis=0)).astype(int) - 1, 0, shape - 1)
    hi = np.clip(np.ceil(inside_idx.max(axis=0)).astype(int) + 2, 1, shape)
    block = np.asarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=float)
    out[~outside] = map_coordinates(block, (inside_idx - lo).T, order=order, mode="nearest")
    return out


def slice_centre_xyz_mm(mask: Volume) -> np.ndarray:
    """World point (x, y, z mm) of the lumen voxel nearest (in mm) to the centroid of the lumen.

    The voxels ``> 0`` of ``mask`` are the lumen. The nearest lumen voxel rather than the
    centroid itself, so that the three planes through it all cut the lumen.
    """
    kji = np.argwhere(np.asarray(mask.array) > 0)
    if len(kji) == 0:
        raise ValueError("mask has no lumen voxel (no value > 0): nothing to show")
    xyz = mask.index_to_world(kji)
    d = np.linalg.norm(xyz - xyz.mean(axis=0), axis=1)
    return xyz[int(np.argmin(d))]


def intensity_window(image: Volume, mask: Volume, *, shell_mm: float = _SHELL_MM) -> tuple[float, float]:
    """Grey-level window ``(low, high)`` from the image's own values in and around the lumen.

    ``low`` is the 1st percentile of the shell of tissue within ``shell_mm`` (at least two of
    the largest voxels) outside the lumen, ``high`` the 99th percentile of the lumen. A bright
    lumen (contrast CT in HU, time-of-flight or contrast MR in arbitrary units) is then
    bright, the tissue around it dark, and the lumen edge sits near mid-grey whatever the
    units. When the lumen is not brighter than its surroundings (a black-blood image, a mask
    on the wrong image) the window spans the 1st to 99th percentiles of both together.
    Non-finite voxels are ignored.

    Returns
    -------
    (float, float)
        ``low < high``, in the image's units.
    """
    from scipy.ndimage import distance_transform_edt

    lumen = np.asarray(mask.array) > 0
    kji = np.argwhere(lumen)
    if len(kji) == 0:
        raise ValueError("mask has no lumen voxel (no value > 0): nothing to show")
    spacing = np.asarray(image.spacing_mm)
    shell_mm = max(float(shell_mm), 2.0 * float(spacing.max()))
    pad = np.ceil(shell_mm / spacing).astype(int) + 1
    lo = np.maximum(kji.min(axis=0) - pad, 0)
    hi = np.minimum(kji.max(axis=0) + pad + 1, image.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = lumen[box]
    values = np.asarray(image.array[box], dtype=float)
    dist = distance_transform_edt(~sub, sampling=spacing)
    inside = values[sub]
    shell = values[(dist > 0) & (dist <= shell_mm)]
    inside = inside[np.isfinite(inside)]
    shell = shell[np.isfinite(shell)]
    if inside.size == 0:
        raise ValueError("image has no finite value inside the mask's lumen: nothing to window")
    low = float(np.percentile(shell, 1)) if shell.size else float(np.percentile(inside, 1))
    high = float(np.percentile(inside, 99))
    if not high > low:
        both = np.concatenate([inside, shell])
        low, high = float(np.percentile(both, 1)), float(np.percentile(both, 99))
    if not high > low:  # a constant image
        half = max(abs(low) * 0.05, 0.5)
        low, high = low - half, high + half
    return low, high


# ----------------------------------------------------------------------------- validation
def _check_volumes(image, mask) -> None:
    for name, v in (("image", image), ("mask", mask)):
        if not isinstance(v, Volume):
            raise TypeError(f"{name} must be a pipeline.image.Volume, got {type(v).__name__}")
    if image.shape != mask.shape:
        raise ValueError(f"image and mask must have one shape (z, y, x), got image {image.shape} "
                         f"and mask {mask.shape}")
    same = (np.allclose(image.spacing_mm, mask.spacing_mm, rtol=0, atol=1e-4)
            and np.allclose(image.origin_xyz_mm, mask.origin_xyz_mm, rtol=0, atol=1e-3)
            and np.allclose(image.direction_xyz, mask.direction_xyz, rtol=0, atol=1e-4))
    if not same:
        raise ValueError(
            "image and mask must lie on the same grid: image spacing_mm "
            f"{image.spacing_mm}, origin_xyz_mm {image.origin_xyz_mm}, direction "
            f"{np.round(image.direction_xyz, 4).tolist()}; mask spacing_mm {mask.spacing_mm}, "
            f"origin_xyz_mm {mask.origin_xyz_mm}, direction {np.round(mask.direction_xyz, 4).tolist()} "
            "(resample the mask onto the image first)")
    if not np.issubdtype(np.asarray(image.array).dtype, np.number) and image.array.dtype != bool:
        raise ValueError(f"image must hold numbers, got dtype {image.array.dtype}")
    if not np.any(np.asarray(mask.array) > 0):
        raise ValueError(f"mask is empty: no voxel > 0 among its {mask.array.size} voxels (nothing to show)")


def _check_centrelines(centrelines) -> list[np.ndarray]:
    if isinstance(centrelines, np.ndarray) and centrelines.ndim == 2:
        raise ValueError(
            f"centrelines must be a sequence of (N, 3) polylines, got one array of shape {centrelines.shape}: "
            "pass [points] for a single polyline")
    out = []
    for n, line in enumerate(centrelines):
        try:
            arr = np.asarray(line, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"centrelines[{n}] must be an (N, 3) array of world x, y, z in mm, "
                             f"got {line!r:.80}") from None
        if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
            raise ValueError(f"centrelines[{n}] must have shape (N, 3) with N >= 1 (world x, y, z in mm), "
                             f"got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"centrelines[{n}] holds non-finite coordinates (NaN or inf)")
        out.append(arr)
    return out


def _cap_field(cap, key: str, n: int):
    if isinstance(cap, Mapping):
        if key not in cap:
            raise ValueError(f"caps[{n}] has no {key!r}: a cap needs 'name', 'centre_xyz_mm', 'normal_xyz' "
                             f"and 'radius_mm', got keys {sorted(cap)}")
        return cap[key]
    if not hasattr(cap, key):
        raise ValueError(f"caps[{n}] must be a dict (or a pipeline.surface.Cap) with {key!r}, "
                         f"got {type(cap).__name__}")
    return getattr(cap, key)


def _check_caps(caps) -> list[dict[str, Any]]:
    out = []
    for n, cap in enumerate(caps):
        name = str(_cap_field(cap, "name", n))
        centre = np.asarray(_cap_field(cap, "centre_xyz_mm", n), dtype=float).ravel()
        normal = np.asarray(_cap_field(cap, "normal_xyz", n), dtype=float).ravel()
        radius = float(_cap_field(cap, "radius_mm", n))
        if centre.shape != (3,) or not np.all(np.isfinite(centre)):
            raise ValueError(f"caps[{n}] ({name}): centre_xyz_mm must be 3 finite numbers, got {centre.tolist()}")
        norm = float(np.linalg.norm(normal)) if normal.shape == (3,) else 0.0
        if normal.shape != (3,) or not np.isfinite(norm) or norm == 0:
            raise ValueError(f"caps[{n}] ({name}): normal_xyz must be 3 finite numbers, not all zero, "
                             f"got {normal.tolist()}")
        if not np.isfinite(radius) or radius <= 0:
            raise ValueError(f"caps[{n}] ({name}): radius_mm must be a positive number, got {radius}")
        out.append({"name": name, "centre": centre, "normal": normal / norm, "radius": radius})
    return out


# ----------------------------------------------------------------------------- drawing
def _disc_points(centre: np.ndarray, normal: np.ndarray, radius: float, n: int = 73) -> np.ndarray:
    """World points (n, 3) around the rim of the cap disc."""
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    w = np.cross(normal, u)
    t = np.linspace(0.0, 2.0 * np.pi, n)
    return centre + radius * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * w)


def _view_box(mask: Volume, lines: list[np.ndarray], caps: list[dict], centre: np.ndarray) -> np.ndarray:
    """World box ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` holding lumen, overlays and centre, padded."""
    kji = np.argwhere(np.asarray(mask.array) > 0)
    lo, hi = kji.min(axis=0) - 0.5, kji.max(axis=0) + 0.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    pts = [mask.index_to_world(corners), centre[None, :]]
    pts += lines
    pts += [_disc_points(c["centre"], c["normal"], c["radius"]) for c in caps]
    allp = np.vstack(pts)
    box = np.array([allp.min(axis=0), allp.max(axis=0)])
    margin = max(5.0, 0.1 * float((box[1] - box[0]).max()))
    return box + np.array([[-margin], [margin]])


def _cap_colours(caps: list[dict]) -> list[str]:
    """One colour per cap: the inlet blue, wall caps grey, the other caps (outlets) a palette in turn."""
    out, n = [], 0
    for cap in caps:
        if cap["name"] == "inlet":
            out.append(_INLET_COLOUR)
        elif cap["name"].startswith("wall"):
            out.append(_WALL_COLOUR)
        else:
            out.append(_CAP_COLOURS[n % len(_CAP_COLOURS)])
            n += 1
    return out


def _draw_cap(ax, cap: dict, panel: str, level: float, colour: str, index: int) -> None:
    fixed = PANELS[panel][0]
    e = np.eye(3)[fixed]
    c, nrm, r = cap["centre"], cap["normal"], cap["radius"]
    rim = panel_coordinates(_disc_points(c, nrm, r), panel, level)
    ax.plot(rim[:, 0], rim[:, 1], color=colour, lw=0.9, alpha=0.8)
    across = np.cross(nrm, e)  # in the panel, perpendicular to the normal's projection
    if np.linalg.norm(across) > 1e-6:
        across /= np.linalg.norm(across)
        seg = panel_coordinates(np.array([c - r * across, c + r * across]), panel, level)
        ax.plot(seg[:, 0], seg[:, 1], color=colour, lw=2.6, solid_capstyle="butt")
    ch = panel_coordinates(c, panel, level)
    tip = panel_coordinates(c + r * nrm, panel, level)
    if np.hypot(*(tip[:2] - ch[:2])) > 0.05 * r:
        ax.annotate("", xy=tip[:2], xytext=ch[:2],
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.0, mutation_scale=8))
    # the label beyond the arrow tip; around a face-on cap in a direction set by its index,
    # so that caps seen on top of each other (both ends of a straight tube) keep readable names
    d = tip[:2] - ch[:2]
    if np.hypot(*d) > 0.05 * r:
        d = d / np.hypot(*d)
    else:
        angle = np.deg2rad(-30.0 + 75.0 * index)
        d = np.array([np.cos(angle), np.sin(angle)])
    at = ch[:2] + 1.5 * r * d
    ax.text(at[0], at[1], cap["name"], color=colour, fontsize=7, ha="center", va="center",
            bbox=dict(boxstyle="round,pad=0.15", fc="black", ec="none", alpha=0.55))


def check_figure(image: Volume, mask: Volume, path: str | os.PathLike, *, centrelines: Sequence = (),
                 caps: Sequence = (), title: str | None = None,
                 centre_xyz_mm: Sequence[float] | None = None) -> Path:
    """Draw the "check by eye" PNG of a vessel model: three orthogonal slices with overlays.

    Parameters
    ----------
    image : Volume
        CT (HU) or MR (any units) image.
    mask : Volume
        Lumen mask on the same grid as ``image`` (voxels ``> 0`` are lumen).
    path : path
        Where to write the figure; must end in ``.png``. Written atomically.
    centrelines : sequence of arrays, shape (N_i, 3)
        Polylines of world (x, y, z) points in mm, drawn projected onto every panel; the points
        within ``2 x`` the largest voxel spacing (mm) of a panel's plane are drawn as dots.
    caps : sequence of dict
        Each with ``"name"`` (``"inlet"``, ``"outlet1"``, ``"wall_cap"``, ...),
        ``"centre_xyz_mm"`` (world mm), ``"normal_xyz"`` (outward, need not be unit) and
        ``"radius_mm"``. A :class:`pipeline.surface.Cap` is accepted as well.
    title : str, optional
        Figure title (default ``"vessel model check"``); a second line gives the grid,
        the lumen volume and the grey-level window.
    centre_xyz_mm : 3 floats, optional
        World point (mm) the three planes pass through; default :func:`slice_centre_xyz_mm`
        (the lumen voxel nearest the lumen's centroid).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        ``image`` or ``mask`` is not a :class:`~pipeline.image.Volume`.
    ValueError
        The volumes differ in shape or grid, the mask is empty, a centreline is not ``(N, 3)``
        finite points, a cap lacks a key or has a bad centre, normal or radius, or ``path``
        does not end in ``.png``.
    """
    _check_volumes(image, mask)
    lines = _check_centrelines(centrelines)
    cap_list = _check_caps(caps)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (the figure is a PNG), got {str(path)!r}")
    if centre_xyz_mm is None:
        centre = slice_centre_xyz_mm(mask)
    else:
        centre = np.asarray(centre_xyz_mm, dtype=float).ravel()
        if centre.shape != (3,) or not np.all(np.isfinite(centre)):
            raise ValueError(f"centre_xyz_mm must be 3 finite numbers (world x, y, z in mm), got {centre_xyz_mm!r}")
    low, high = intensity_window(image, mask)
    box = _view_box(mask, lines, cap_list, centre)
    pixel = max(min(image.spacing_mm), float((box[1] - box[0]).max()) / _MAX_PIXELS)
    near_mm = 2.0 * max(image.spacing_mm)
    colours = _cap_colours(cap_list)
    lumen = mask.with_array(np.asarray(mask.array) > 0)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cmap = plt.get_cmap("gray").with_extremes(bad="#1b2a3a")
    # panels of one height, each as wide as its physical aspect asks
    spans = [(box[1, h] - box[0, h]) / (box[1, v] - box[0, v]) for _, h, v in PANELS.values()]
    width_in = float(np.clip(4.4 * sum(spans) + 2.5, 8.0, 18.0))
    fig, axes = plt.subplots(1, 3, figsize=(width_in, 5.8), layout="constrained",
                             gridspec_kw={"width_ratios": spans})
    try:
        for ax, panel in zip(axes, PANELS):
            fixed, h_ax, v_ax = PANELS[panel]
            level = float(centre[fixed])
            h = np.arange(box[0, h_ax] + pixel / 2, box[1, h_ax], pixel)
            v = np.arange(box[0, v_ax] + pixel / 2, box[1, v_ax], pixel)
            extent = (h[0] - pixel / 2, h[-1] + pixel / 2, v[0] - pixel / 2, v[-1] + pixel / 2)
            plane = sample_plane(image, panel, level, h, v)
            ax.imshow(np.ma.masked_invalid(plane), cmap=cmap, vmin=low, vmax=high, origin="lower",
                      extent=extent, interpolation="nearest")
            m = sample_plane(lumen, panel, level, h, v)
            finite = m[np.isfinite(m)]
            if finite.size and finite.min() < 0.5 < finite.max():
                ax.contour(h, v, np.ma.masked_invalid(m), levels=[0.5], colors=_LUMEN_COLOUR, linewidths=1.2)
            for line in lines:
                p = panel_coordinates(line, panel, level)
                ax.plot(p[:, 0], p[:, 1], color=_CENTRELINE_COLOUR, lw=0.8, alpha=0.45)
                near = np.abs(p[:, 2]) <= near_mm
                if near.any():
                    ax.plot(p[near, 0], p[near, 1], "o", color=_CENTRELINE_COLOUR, ms=2.6, mew=0)
            for n, (cap, colour) in enumerate(zip(cap_list, colours)):
                _draw_cap(ax, cap, panel, level, colour, n)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            if panel == "axial":
                ax.invert_yaxis()  # anterior (-y in LPS) at the top
            ax.set_aspect("equal")
            ax.set_xlabel(_AXIS_LABEL[h_ax])
            ax.set_ylabel(_AXIS_LABEL[v_ax])
            ax.set_title(f"{panel}  {_AXIS[fixed]} = {level:.1f} mm", fontsize=10)
            ax.tick_params(labelsize=8)

        handles = [Line2D([], [], color=_LUMEN_COLOUR, lw=1.2, label="lumen contour (mask = 0.5)")]
        if lines:
            handles += [Line2D([], [], color=_CENTRELINE_COLOUR, lw=0.8, alpha=0.45, label="centreline (projected)"),
                        Line2D([], [], color=_CENTRELINE_COLOUR, ls="", marker="o", ms=3,
                               label=f"centreline within {near_mm:.1f} mm of the slice")]
        for cap, colour in zip(cap_list, colours):
            handles.append(Line2D([], [], color=colour, lw=2.6, label=f"{cap['name']} (r = {cap['radius']:.2f} mm)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8,
                   frameon=False)
        nz, ny, nx = image.shape
        dz, dy, dx = image.spacing_mm
        volume_mm3 = float(np.count_nonzero(np.asarray(mask.array) > 0)) * mask.voxel_volume_mm3
        sub = (f"grid {nx}×{ny}×{nz} (x, y, z) at {dx:.3g}×{dy:.3g}×{dz:.3g} mm; lumen {volume_mm3:.0f} mm³; "
               f"window [{low:.4g}, {high:.4g}]; planes through ({centre[0]:.1f}, {centre[1]:.1f}, "
               f"{centre[2]:.1f}) mm")
        fig.suptitle(f"{title or 'vessel model check'}\n{sub}", fontsize=10)
        save_figure(fig, path, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
