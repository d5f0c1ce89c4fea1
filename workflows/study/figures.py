"""Figures of a sensitivity study: the base case (segmentation, surface, wall pressure) and
the analysis (log–log output against radius, tornado, Sobol bars, output distribution,
organ-dose change per perturbation).

Each function writes one PNG atomically (temporary file, then rename) with matplotlib's Agg
backend at 110 dpi and returns its path; :mod:`workflows.study.report` embeds them in the
report. The analysis figures read the dicts of ``study.json`` (schema 2.0, see
:func:`workflows.study.runner.run_study`): a tornado row is ``{"parameter", "low", "high", "q_low",
"q_high", "q_nominal", "swing"}``; Sobol indices ``{"names", "S1", "S1_conf", "ST",
"ST_conf"}``; a distribution ``{"p2_5", "p50", "p97_5", "values", ...}``.

The reference line of the log–log plot is Hagen–Poiseuille at fixed flow, ΔP ∝ r⁻⁴.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from physics.atomic import save_figure

__all__ = [
    "segmentation_overlay_png",
    "surface_mesh_png",
    "pressure_map_png",
    "tornado_png",
    "tornado_order",
    "sobol_png",
    "distribution_png",
    "organ_dose_change_png",
    "organ_dose_changes",
    "loglog_png",
    "loglog_points",
    "qoi_label",
    "qoi_unit",
]

DPI = 110
PA_PER_MMHG = 133.322387415  # 1 mmHg in Pa (conventional millimetre of mercury)
ORGAN_PREFIX = "organ_dose_mGy."
_LOW_COLOUR, _HIGH_COLOUR = "#4f81bd", "#c0504d"

# QoI key suffix -> unit (longest first so "_mm2" wins over "_mm")
_UNIT_SUFFIXES = [("_ml_s", "ml/s"), ("_mmHg", "mmHg"), ("_mm2", "mm²"), ("_mm3", "mm³"), ("_percent", "%"),
                  ("_mGy", "mGy"), ("_mSv", "mSv"), ("_Pa", "Pa"), ("_mm", "mm"), ("_s", "s"), ("_keV", "keV")]
_SPECIAL_LABELS = {"ffr_like": "FFR-like pressure ratio", "effective_dose_mSv": "effective dose",
                   "pressure_drop_Pa": "pressure drop", "ctdivol_mGy": "CTDIvol"}


# ----------------------------------------------------------------------------- small helpers
def qoi_unit(qoi: str) -> str:
    """Unit of a quantity-of-interest key from its suffix (``"pressure_drop_Pa"`` → ``"Pa"``,
    ``"organ_dose_mGy.liver"`` → ``"mGy"``); ``""`` when dimensionless or unknown."""
    base = qoi.split(".", 1)[0]
    for suf, unit in _UNIT_SUFFIXES:
        if base.endswith(suf):
            return unit
    return ""


def qoi_label(qoi: str) -> str:
    """Readable name of a quantity-of-interest key, without its unit (``"liver dose"``)."""
    if qoi in _SPECIAL_LABELS:
        return _SPECIAL_LABELS[qoi]
    if qoi.startswith(ORGAN_PREFIX):
        return qoi[len(ORGAN_PREFIX):].replace("_", " ") + " dose"
    base = qoi.split(".", 1)[0]
    for suf, _ in _UNIT_SUFFIXES:
        if base.endswith(suf):
            base = base[: -len(suf)]
            break
    rest = qoi.split(".", 1)[1] if "." in qoi else ""
    return (base.replace("_", " ") + (f" {rest.replace('_', ' ')}" if rest else "")).strip()


def _axis_label(qoi: str) -> str:
    u = qoi_unit(qoi)
    return f"{qoi_label(qoi)} ({u})" if u else qoi_label(qoi)


def finite(x: Any) -> bool:
    """True for a finite number (not None, a bool, NaN or text); the report uses it too."""
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Save a figure as PNG through a temporary file and a rename; closes the figure."""
    try:
        return save_figure(fig, path, dpi=DPI, bbox_inches="tight", format="png")
    finally:
        _plt().close(fig)


# ----------------------------------------------------------------------------- base-case images
def _best_slice(mask: np.ndarray, axis: int, centre: int) -> int:
    """``centre`` if the mask crosses that slice along ``axis``, else the slice with most mask."""
    idx = [slice(None)] * 3
    idx[axis] = centre
    if mask[tuple(idx)].any():
        return centre
    other = tuple(a for a in range(3) if a != axis)
    return int(np.argmax(mask.sum(axis=other)))


def _crop(mask2d: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of a 2-D mask with a margin of half its extent (at least 8 pixels)."""
    out = []
    for ax in range(2):
        hit = np.flatnonzero(mask2d.any(axis=1 - ax))
        n = mask2d.shape[ax]
        if hit.size == 0:
            out.append(slice(0, n))
            continue
        lo, hi = int(hit[0]), int(hit[-1]) + 1
        m = max(8, (hi - lo) // 2)
        out.append(slice(max(0, lo - m), min(n, hi + m)))
    return out[0], out[1]


def segmentation_overlay_png(image_path: str | os.PathLike, seg_path: str | os.PathLike,
                             out_png: str | os.PathLike, *, truth_path: str | os.PathLike | None = None) -> Path:
    """Axial, coronal and sagittal CT slices through the mask centroid with the segmentation
    contour (red) and, optionally, the ground-truth contour (cyan, dashed).

    Parameters
    ----------
    image_path : path
        The CT (any format :func:`pipeline.image.read_image` reads), drawn in grey between
        its 1st and 99.5th intensity percentiles.
    seg_path : path
        Lumen mask (non-zero = inside) on the same grid as the image.
    out_png : path
        The PNG to write.
    truth_path : path, optional
        A reference mask on the same grid (synthetic patients), drawn as a second contour.

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    ValueError
        The masks do not match the image grid, or the segmentation is empty.
    """
    from pipeline.image import read_image

    img = read_image(image_path)
    seg = read_image(seg_path)
    ct = np.asarray(img.array, float)
    mask = np.asarray(seg.array) > 0
    if mask.shape != ct.shape:
        raise ValueError(f"segmentation {seg_path} has shape {mask.shape}, the image {image_path} has "
                         f"{ct.shape}: both must be on the same voxel grid")
    if not mask.any():
        raise ValueError(f"segmentation {seg_path} is empty: nothing to overlay")
    truth = None
    if truth_path is not None:
        truth = np.asarray(read_image(truth_path).array) > 0
        if truth.shape != ct.shape:
            raise ValueError(f"truth mask {truth_path} has shape {truth.shape}, the image has {ct.shape}")
    k, j, i = (int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    k, j, i = _best_slice(mask, 0, k), _best_slice(mask, 1, j), _best_slice(mask, 2, i)
    dz, dy, dx = img.spacing_mm
    finite = ct[np.isfinite(ct)]
    vmin, vmax = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    if vmax <= vmin:
        vmax = vmin + 1.0

    def planes(a):
        return [a[k], a[:, j, :][::-1], a[:, :, i][::-1]]

    titles = [f"axial (z = {k})", f"coronal (y = {j})", f"sagittal (x = {i})"]
    aspects = [dy / dx, dz / dx, dz / dy]
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    tplanes = planes(truth) if truth is not None else [None] * 3
    for ax, c, m, t, name, asp in zip(axes, planes(ct), planes(mask), tplanes, titles, aspects):
        rs, cs = _crop(m | (t if t is not None else False))
        ax.imshow(c[rs, cs], cmap="gray", vmin=vmin, vmax=vmax, aspect=asp, interpolation="nearest")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no contour levels" on a slice the mask misses
            ax.contour(m[rs, cs].astype(float), levels=[0.5], colors="#ff3030", linewidths=1.2)
            if t is not None:
                ax.contour(t[rs, cs].astype(float), levels=[0.5], colors="#00e5ff", linewidths=1.0,
                           linestyles="dashed")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    handles = [Line2D([], [], color="#ff3030", label="segmentation")]
    if truth is not None:
        handles.append(Line2D([], [], color="#00e5ff", ls="--", label="ground truth"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    return _save(fig, out_png)


def _face_tags_from_caps(mesh, caps: Sequence[Mapping]) -> np.ndarray:
    """0 = wall, 1 + n = cap n: faces lying in a cap's plane, facing along its normal."""
    tags = np.zeros(len(mesh.faces), int)
    scale = float(np.linalg.norm(mesh.extents)) or 1.0
    cen = mesh.triangles_center
    for n, cap in enumerate(caps):
        c = np.asarray(cap["centre_xyz_mm"], float)
        nv = np.asarray(cap["normal_xyz"], float)
        nv = nv / (np.linalg.norm(nv) or 1.0)
        r = float(cap.get("radius_mm") or scale)
        on = ((np.abs(mesh.face_normals @ nv) > 0.99) & (np.abs((cen - c) @ nv) < 1e-3 * scale)
              & (np.linalg.norm(cen - c, axis=1) < 3 * r))
        tags[on] = n + 1
    return tags


def _face_tags_from_facets(mesh) -> np.ndarray:
    """Caps guessed from geometry: the large flat facets (coplanar groups of >= 8 faces whose
    area is at least a quarter of the largest such group)."""
    tags = np.zeros(len(mesh.faces), int)
    groups = [(f, a) for f, a in zip(mesh.facets, mesh.facets_area) if len(f) >= 8]
    if not groups:
        return tags
    amax = max(a for _, a in groups)
    n = 0
    for f, a in sorted(groups, key=lambda g: -g[1]):
        if a >= 0.25 * amax:
            n += 1
            tags[f] = n
    return tags


def surface_mesh_png(stl_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Shaded 3-D view of the lumen surface from two sides, the caps coloured.

    Parameters
    ----------
    stl_path : path
        The surface (``surface.stl`` of the vessel workflow; also ``.ply``, ``.obj``, or a
        ``.vtp`` with cell data ``face_tags``). Cap faces are found from the tags (``.vtp``),
        from a ``surface.json`` beside the file (cap centres and normals), or else as the
        large flat facets of the surface.
    out_png : path
        The PNG to write.

    Returns
    -------
    Path
        ``out_png``.
    """
    import json

    import trimesh

    p = Path(stl_path)
    if not p.exists():
        raise FileNotFoundError(f"surface file not found: {p}")
    tags = None
    names: list[str] = []
    if p.suffix.lower() == ".vtp":
        import meshio

        m = meshio.read(p)
        tri = [c.data for c in m.cells if c.type == "triangle"]
        if not tri:
            raise ValueError(f"{p} holds no triangles")
        mesh = trimesh.Trimesh(m.points, np.vstack(tri), process=False)
        ft = m.cell_data.get("face_tags")
        if ft is not None:
            raw = np.concatenate([np.asarray(d).ravel() for d, c in zip(ft, m.cells) if c.type == "triangle"])
            wall = int(np.min(raw))  # WALL has the smallest tag
            uniq = [t for t in np.unique(raw) if t != wall]
            tags = np.zeros(len(raw), int)
            for n, t in enumerate(uniq):
                tags[raw == t] = n + 1
            names = [f"cap (tag {t})" for t in uniq]
    else:
        mesh = trimesh.load_mesh(p, process=True)  # merges the STL's per-triangle vertices
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError(f"{p} is not a single triangle surface")
    if tags is None:
        side = p.with_name("surface.json")
        caps = None
        if side.exists():
            try:
                caps = json.loads(side.read_text()).get("caps")
            except (OSError, ValueError):
                caps = None
        if caps:
            tags = _face_tags_from_caps(mesh, caps)
            names = [str(c.get("name", f"cap {n + 1}")) for n, c in enumerate(caps)]
        else:
            tags = _face_tags_from_facets(mesh)
            names = [f"cap {n + 1}" for n in range(int(tags.max()))]
    plt = _plt()
    from matplotlib import colors as mcolors
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    v = np.asarray(mesh.vertices, float)
    ctr = v.mean(axis=0)
    # draw in the principal frame of the vertices (1st axis along the vessel, horizontal) and
    # look from 57° off that axis, once from each end, so each end cap faces one view
    _, _, vt = np.linalg.svd(v - ctr, full_matrices=False)
    if np.linalg.det(vt) < 0:
        vt[2] *= -1  # keep a right-handed frame (normals stay outward)
    v = (v - ctr) @ vt.T
    normals = np.asarray(mesh.face_normals) @ vt.T
    palette = ["#4f81bd", "#9bbb59", "#8064a2", "#f79646", "#4bacc6"]
    base = np.array([mcolors.to_rgb("#d9a6a0")] + [mcolors.to_rgb(palette[n % len(palette)])
                                                     for n in range(int(tags.max()))])
    fig = plt.figure(figsize=(10, 4.0))
    lo, hi = v.min(axis=0), v.max(axis=0)
    for n, az in enumerate((55.0, 235.0)):
        ax = fig.add_subplot(1, 2, n + 1, projection="3d")
        el = 20.0
        cam = np.array([math.cos(math.radians(el)) * math.cos(math.radians(az)),
                        math.cos(math.radians(el)) * math.sin(math.radians(az)), math.sin(math.radians(el))])
        light = cam + np.array([0.0, 0.0, 0.6])
        light /= np.linalg.norm(light)
        shade = 0.35 + 0.65 * np.abs(normals @ light)
        fc = np.clip(base[tags] * shade[:, None], 0, 1)
        coll = Poly3DCollection(v[mesh.faces], facecolors=fc, edgecolors="none", linewidths=0)
        ax.add_collection3d(coll)
        half = 0.5 * float(np.max(hi - lo))  # a cube around the centre: no distortion
        mid = 0.5 * (hi + lo)
        ax.set_xlim(mid[0] - half, mid[0] + half)
        ax.set_ylim(mid[1] - half, mid[1] + half)
        ax.set_zlim(mid[2] - half, mid[2] + half)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.view_init(elev=el, azim=az)
        ax.set_axis_off()
        ax.set_title(f"view {n + 1}: from the {'first' if n == 0 else 'second'} end", fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color=base[0], label="wall")] + [Patch(color=base[n + 1], label=names[n] if n < len(names)
                                                            else f"cap {n + 1}") for n in range(int(tags.max()))]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    ext = " × ".join(f"{e:.3g}" for e in hi - lo)
    fig.suptitle(f"lumen surface: {len(mesh.faces)} triangles, {ext} mm along its principal axes", fontsize=10)
    return _save(fig, out_png)


def pressure_map_png(npz_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Wall pressure in mmHg seen along two directions perpendicular to the vessel axis.

    Parameters
    ----------
    npz_path : path
        ``.npz`` with ``xyz_mm`` (N, 3), world points on the wall in mm, and ``pressure_Pa``
        (N,), the pressure there in Pa.
    out_png : path
        The PNG to write.

    Returns
    -------
    Path
        ``out_png``.
    """
    p = Path(npz_path)
    if not p.exists():
        raise FileNotFoundError(f"pressure file not found: {p}")
    with np.load(p) as d:
        missing = [k for k in ("xyz_mm", "pressure_Pa") if k not in d]
        if missing:
            raise ValueError(f"{p} lacks {missing}: it needs xyz_mm (N, 3) and pressure_Pa (N,)")
        xyz = np.asarray(d["xyz_mm"], float)
        pa = np.asarray(d["pressure_Pa"], float).ravel()
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] != pa.size or pa.size < 3:
        raise ValueError(f"{p}: xyz_mm must be (N, 3) and pressure_Pa (N,) with N >= 3, got "
                         f"{xyz.shape} and {pa.shape}")
    ok = np.isfinite(pa) & np.all(np.isfinite(xyz), axis=1)
    xyz, mmhg = xyz[ok], pa[ok] / PA_PER_MMHG
    ctr = xyz.mean(axis=0)
    _, _, vt = np.linalg.svd(xyz - ctr, full_matrices=False)
    uvw = (xyz - ctr) @ vt.T  # along the vessel, across 1, across 2
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.2), sharex=True)
    vmin, vmax = float(mmhg.min()), float(mmhg.max())
    if vmax <= vmin:
        vmax = vmin + 1e-6
    sc = None
    for ax, (h, depth, name) in zip(axes, ((1, 2, "view along the 2nd principal axis"),
                                          (2, 1, "view along the 3rd principal axis"))):
        order = np.argsort(uvw[:, depth])  # far points first, near points on top
        sc = ax.scatter(uvw[order, 0], uvw[order, h], c=mmhg[order], cmap="viridis", vmin=vmin, vmax=vmax,
                        s=6, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_ylabel("across (mm)")
        ax.set_title(name, fontsize=9)
    axes[-1].set_xlabel("along the vessel (mm)")
    from matplotlib.ticker import ScalarFormatter

    cb = fig.colorbar(sc, ax=axes, label="wall pressure (mmHg)", shrink=0.9)
    cb.formatter = ScalarFormatter(useOffset=False)  # 100.05, not "+1e2" and 0.05
    cb.update_ticks()
    fig.suptitle(f"wall pressure {vmin:.2f} to {vmax:.2f} mmHg (drop {vmax - vmin:.3g} mmHg)", fontsize=10)
    return _save(fig, out_png)


# ----------------------------------------------------------------------------- analysis figures
def tornado_order(rows: Sequence[Mapping]) -> list[dict]:
    """Tornado rows ordered by swing, largest first (ties by parameter name).

    The swing is ``|q_high − q_low|`` when both ends are finite, else the stored ``swing``;
    rows with neither are dropped.
    """
    out = []
    for r in rows:
        if finite(r.get("q_low")) and finite(r.get("q_high")):
            s = abs(float(r["q_high"]) - float(r["q_low"]))
        elif finite(r.get("swing")):
            s = float(r["swing"])
        else:
            continue
        out.append({**r, "swing": s})
    out.sort(key=lambda r: (-r["swing"], str(r.get("parameter"))))
    return out


def tornado_png(analysis_for_qoi: Mapping | Sequence[Mapping], qoi: str, out_png: str | os.PathLike, *,
                units: Mapping[str, str] | None = None) -> Path:
    """Tornado chart: the output at the low (blue) and high (red) end of each input's range,
    the others at nominal; the largest swing on top.

    Parameters
    ----------
    analysis_for_qoi : dict or list
        ``analysis[qoi]`` of ``study.json`` (its ``"tornado"`` list is used), or the list.
    qoi : str
        Quantity-of-interest key (for the axis label and unit).
    out_png : path
        The PNG to write.
    units : dict, optional
        Parameter name → unit, for the bar labels.

    Returns
    -------
    Path
        ``out_png``; the drawn order (top to bottom) is :func:`tornado_order` of the rows.
    """
    rows = analysis_for_qoi.get("tornado") if isinstance(analysis_for_qoi, Mapping) else analysis_for_qoi
    rows = tornado_order(rows or [])
    rows = [r for r in rows if finite(r.get("q_low")) and finite(r.get("q_high"))]
    if not rows:
        raise ValueError(f"no tornado row for {qoi!r} has finite q_low and q_high")
    units = dict(units or {})
    nom = next((float(r["q_nominal"]) for r in rows if finite(r.get("q_nominal"))), None)
    if nom is None:
        nom = 0.5 * (float(rows[0]["q_low"]) + float(rows[0]["q_high"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]  # first row on top
    for yy, r in zip(y, rows):
        ql, qh = float(r["q_low"]), float(r["q_high"])
        ax.barh(yy, ql - nom, left=nom, color=_LOW_COLOUR, height=0.6)
        ax.barh(yy, qh - nom, left=nom, color=_HIGH_COLOUR, height=0.6)
    labels = []
    for r in rows:
        u = units.get(str(r.get("parameter")), "")
        lo = f"{float(r['low']):.3g}" if finite(r.get("low")) else "low"
        hi = f"{float(r['high']):.3g}" if finite(r.get("high")) else "high"
        labels.append(f"{r.get('parameter')}\n[{lo}, {hi}]{(' ' + u) if u else ''}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(nom, color="black", lw=1)
    ax.set_xlabel(_axis_label(qoi))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=_LOW_COLOUR, label="input at low end"),
                       Patch(color=_HIGH_COLOUR, label="input at high end")], fontsize=8, loc="best")
    ax.set_title(f"{qoi_label(qoi)}: nominal {nom:.4g}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_png)


def sobol_png(sobol: Mapping, qoi: str, out_png: str | os.PathLike) -> Path:
    """First-order (S1) and total (ST) Sobol indices per input with their confidence intervals.

    Parameters
    ----------
    sobol : dict
        ``{"names", "S1", "S1_conf", "ST", "ST_conf"}`` (confidence half-widths, optional).
    qoi, out_png
        Quantity-of-interest key and the PNG to write.
    """
    names = [str(n) for n in sobol.get("names") or []]
    s1 = np.asarray(sobol.get("S1") or [], float)
    st = np.asarray(sobol.get("ST") or [], float)
    if not names or s1.size != len(names) or st.size != len(names):
        raise ValueError(f"Sobol indices of {qoi!r} need names, S1 and ST of one length, got "
                         f"{len(names)}, {s1.size}, {st.size}")
    c1 = np.asarray(sobol.get("S1_conf") or [0.0] * len(names), float)
    ct = np.asarray(sobol.get("ST_conf") or [0.0] * len(names), float)
    c1, ct = np.where(np.isfinite(c1), c1, 0.0), np.where(np.isfinite(ct), ct, 0.0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2.5), 3.8))
    x = np.arange(len(names))
    w = 0.38
    conf = float(sobol["confidence"]) if finite(sobol.get("confidence")) else 0.95
    ax.bar(x - w / 2, s1, w, yerr=c1, color=_LOW_COLOUR, capsize=3, label="S1 (first order)")
    ax.bar(x + w / 2, st, w, yerr=ct, color=_HIGH_COLOUR, capsize=3, label="ST (total)")
    ax.set_xticks(x, names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                  fontsize=8)
    top = np.nanmax(np.concatenate([s1 + c1, st + ct, [1.0]]))
    bot = min(0.0, float(np.nanmin(np.concatenate([s1 - c1, st - ct]))))
    ax.set_ylim(bot - 0.02, top + 0.05)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"Sobol index (error bars {100 * float(conf):.0f} % CI)")
    ax.set_title(f"variance of {qoi_label(qoi)} explained by each input", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png)


def distribution_png(dist: Mapping, qoi: str, out_png: str | os.PathLike, *, threshold: float | None = None,
                     nominal: float | None = None) -> Path:
    """Histogram of the sampled output with its 95 % range, nominal value and decision threshold.

    Parameters
    ----------
    dist : dict
        ``{"values", "p2_5", "p50", "p97_5", "n", ...}``; without ``values`` only the range
        is drawn.
    qoi, out_png
        Quantity-of-interest key and the PNG to write.
    threshold : float, optional
        Decision threshold (e.g. 0.8 for an FFR-like ratio), drawn in red.
    nominal : float, optional
        The nominal case's output, drawn in black.
    """
    vals = np.asarray([v for v in (dist.get("values") or []) if finite(v)], float)
    p = [float(dist[k]) if finite(dist.get(k)) else None for k in ("p2_5", "p50", "p97_5")]
    if vals.size == 0 and None in (p[0], p[2]):
        raise ValueError(f"distribution of {qoi!r} has neither values nor p2_5/p97_5")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if vals.size:
        bins = int(np.clip(np.sqrt(vals.size) * 1.5, 5, 40))
        ax.hist(vals, bins=bins, color="#9fb7d8", edgecolor="#4f81bd")
        ax.set_ylabel("number of cases")
    else:
        ax.set_yticks([])
    if p[0] is not None and p[2] is not None:
        ax.axvspan(p[0], p[2], color="#4f81bd", alpha=0.12, label=f"95 % range {p[0]:.4g} – {p[2]:.4g}")
        for q in (p[0], p[2]):
            ax.axvline(q, color="#4f81bd", ls="--", lw=1)
    if p[1] is not None:
        ax.axvline(p[1], color="#4f81bd", lw=1.5, label=f"median {p[1]:.4g}")
    if finite(nominal):
        ax.axvline(float(nominal), color="black", lw=1.5, label=f"nominal {float(nominal):.4g}")
    if finite(threshold):
        ax.axvline(float(threshold), color="#d62728", lw=2, label=f"decision threshold {float(threshold):.4g}")
    ax.set_xlabel(_axis_label(qoi))
    n = dist.get("n", vals.size)
    ax.set_title(f"{qoi_label(qoi)} over {n} sampled inputs", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def nominal_case(summary: Mapping) -> tuple[dict, dict]:
    """(outputs, sigma) of the nominal case: ``summary["nominal"]``, else the case with that
    id, else the first case not varied."""
    nom = summary.get("nominal") or {}
    outs, sig = dict(nom.get("outputs") or {}), dict(nom.get("sigma") or {})
    if outs:
        return outs, sig
    cases = summary.get("cases") or []
    c = next((c for c in cases if nom.get("id") and c.get("id") == nom.get("id")), None)
    c = c or next((c for c in cases if c.get("varied") is None), None)
    return (dict(c.get("outputs") or {}), dict(c.get("sigma") or {})) if c else ({}, {})


def organ_dose_changes(summary: Mapping) -> list[dict]:
    """Percent change of each organ dose at the low and high end of each OAT-varied parameter.

    For output Q of a perturbed case and Q₀ of the nominal case, the change is
    ``100 (Q/Q₀ − 1)`` % and its 1σ (Monte Carlo, independent runs) is
    ``100 (Q/Q₀) √((σ/Q)² + (σ₀/Q₀)²)`` %.

    A parameter with named choices (e.g. ``organ_labels``) gives one group per choice, with
    ``end = "choice"`` and ``value`` the choice's name.

    Returns
    -------
    list of dict
        ``{"parameter", "end" ("low"|"high"|"choice"), "value", "case", "organ", "qoi",
        "change_percent", "sigma_percent"}`` in parameter order (as in ``summary["parameters"]``),
        low before high.
    """
    q0, s0 = nominal_case(summary)
    organs = [k for k in (summary.get("outputs") or q0.keys()) if k.startswith(ORGAN_PREFIX) and finite(q0.get(k))
              and float(q0[k]) != 0]
    order = [p.get("name") for p in summary.get("parameters") or []]
    by_par: dict[str, list[dict]] = {}
    for c in summary.get("cases") or []:
        par = c.get("varied")
        v = (c.get("params") or {}).get(par)
        if par and (finite(v) or isinstance(v, str)):
            by_par.setdefault(par, []).append(c)
    pars = [p for p in order if p in by_par] + sorted(p for p in by_par if p not in order)
    rows = []
    for par in pars:
        cs = by_par[par]
        if any(isinstance(c["params"][par], str) for c in cs):  # named choices: one group each
            ends = [("choice", c) for c in cs if isinstance(c["params"][par], str)]
        elif len(cs) > 1:
            cs = sorted(cs, key=lambda c: float(c["params"][par]))
            ends = [("low", cs[0]), ("high", cs[-1])]
        else:
            nv = _nominal_value(summary, par)
            ends = [("low" if nv is not None and float(cs[0]["params"][par]) < nv else "high", cs[0])]
        for end, c in ends:
            outs, sig = c.get("outputs") or {}, c.get("sigma") or {}
            for k in organs:
                if not finite(outs.get(k)):
                    continue
                q, qn = float(outs[k]), float(q0[k])
                ratio = q / qn
                rs = (float(sig[k]) / q if finite(sig.get(k)) and q else 0.0)
                rs0 = float(s0[k]) / qn if finite(s0.get(k)) else 0.0
                v = c["params"][par]
                rows.append({"parameter": par, "end": end, "value": v if isinstance(v, str) else float(v),
                             "case": c.get("id"),
                             "organ": k[len(ORGAN_PREFIX):], "qoi": k, "change_percent": 100 * (ratio - 1),
                             "sigma_percent": 100 * abs(ratio) * math.hypot(rs, rs0)})
    return rows


def _nominal_value(summary: Mapping, par: str) -> float | None:
    for p in summary.get("parameters") or []:
        if p.get("name") == par and finite(p.get("nominal")):
            return float(p["nominal"])
    return None


def organ_dose_change_png(summary: Mapping, out_png: str | os.PathLike, *, band_percent: float = 10.0) -> Path:
    """Percent change of each organ dose per perturbation (one group per varied parameter at
    its low and high end, one bar per organ) with ±2σ Monte Carlo error bars; the
    ±``band_percent`` decision band shaded.

    Parameters
    ----------
    summary : dict
        A study summary (schema 2.0) with OAT cases (``varied`` set) and
        ``organ_dose_mGy.<organ>`` outputs; values from :func:`organ_dose_changes`.
    out_png : path
        The PNG to write.
    band_percent : float
        Half-width of the shaded band (the "|change| > 10 %" decision rule).
    """
    rows = organ_dose_changes(summary)
    if not rows:
        raise ValueError("no organ-dose change to plot: the summary needs OAT cases (with 'varied') and "
                         f"'{ORGAN_PREFIX}<organ>' outputs in the nominal case and the cases")
    groups = list(dict.fromkeys((r["parameter"], r["end"], r["value"]) for r in rows))
    organs = list(dict.fromkeys(r["organ"] for r in rows))
    val = {(r["parameter"], r["end"], r["value"], r["organ"]): r for r in rows}
    plt = _plt()
    cmap = plt.get_cmap("tab20" if len(organs) > 10 else "tab10")
    w = 0.8 / len(organs)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.5, 0.18 * len(groups) * len(organs) + 2.5)), 4.2))
    ax.axhspan(-band_percent, band_percent, color="#9bbb59", alpha=0.18, label=f"±{band_percent:g} % band")
    for n, o in enumerate(organs):
        xs, ys, es = [], [], []
        for g, grp in enumerate(groups):
            r = val.get((*grp, o))
            if r is not None:
                xs.append(g - 0.4 + (n + 0.5) * w)
                ys.append(r["change_percent"])
                es.append(2 * r["sigma_percent"])
        ax.bar(xs, ys, w * 0.92, yerr=es, color=cmap(n % cmap.N), capsize=1.5, label=o,
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(np.arange(len(groups)), [f"{p}\n{v}" if isinstance(v, str) else f"{p}\n{e} ({v:.3g})"
                                          for p, e, v in groups], fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("change of organ dose (%)\nerror bars ±2σ (Monte Carlo)")
    ax.legend(fontsize=7, ncol=max(1, math.ceil(len(organs) / 8)), bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png)


def loglog_points(summary: Mapping, qoi: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean radius r₀ + δ and output of the cases behind the elasticity of ``qoi``.

    Uses ``analysis[qoi]["elasticity"]`` (``parameter``, ``reference_radius_mm``) and the cases
    in which that parameter was varied, plus the nominal case; positive outputs only.

    Returns
    -------
    (r_mm, q, elasticity_dict)
    """
    e = ((summary.get("analysis") or {}).get(qoi) or {}).get("elasticity")
    if not e or not finite(e.get("elasticity")):
        raise ValueError(f"summary has no elasticity for {qoi!r} (analysis.{qoi}.elasticity)")
    par = e.get("parameter") or "boundary_offset_mm"
    r0 = e.get("reference_radius_mm", summary.get("reference_radius_mm"))
    if not finite(r0):
        raise ValueError(f"elasticity of {qoi!r} has no reference_radius_mm")
    cases = summary.get("cases") or []
    nom_id = (summary.get("nominal") or {}).get("id")
    use = [c for c in cases if c.get("varied") == par or c.get("id") == nom_id]
    if not any(c.get("varied") == par for c in use):
        use = cases
    pts = sorted({(float(r0) + float(c["params"][par]), float(c["outputs"][qoi])) for c in use
                  if finite((c.get("params") or {}).get(par)) and finite((c.get("outputs") or {}).get(qoi))})
    pts = [(x, y) for x, y in pts if x > 0 and y > 0]
    if len(pts) < 2:
        raise ValueError(f"fewer than 2 cases with positive {qoi!r} along {par!r} for the log-log plot")
    x, y = (np.array(a) for a in zip(*pts))
    return x, y, {**e, "parameter": par, "reference_radius_mm": float(r0)}


def loglog_png(summary: Mapping, qoi: str, out_png: str | os.PathLike, *,
               reference_slope: float | None = None) -> Path:
    """Output against the mean lumen radius r₀ + δ on log–log axes, the fitted line (slope =
    elasticity, with its CI in the legend) and the Hagen–Poiseuille line of slope −4 through
    the nominal point.

    Parameters
    ----------
    summary : dict
        Study summary (schema 2.0) with ``analysis[qoi]["elasticity"]``.
    qoi, out_png
        Quantity-of-interest key and the PNG to write.
    reference_slope : float, optional
        Slope of the reference line; default −4 for pressure outputs and none otherwise.
    """
    x, y, e = loglog_points(summary, qoi)
    r0 = e["reference_radius_mm"]
    if reference_slope is None and qoi.startswith("wss"):
        reference_slope = -3.0  # Poiseuille wall shear stress at fixed flow: τ = 4μQ/(πr³)
    elif reference_slope is None and ("pressure" in qoi or qoi_unit(qoi) in ("Pa", "mmHg")):
        reference_slope = -4.0
    slope = float(e["elasticity"])
    xs = np.geomspace(x.min() * 0.98, x.max() * 1.02, 50)
    # the line through the data's log-centroid with the fitted slope (or the stored intercept)
    icpt = float(e["intercept"]) if finite(e.get("intercept")) else float(np.mean(np.log(y) - slope * np.log(x)))
    i0 = int(np.argmin(np.abs(x - r0)))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    ax.loglog(x, y, "o", color=_HIGH_COLOUR, label="cases", zorder=3)
    ci = (f" [{float(e['ci_low']):.2f}, {float(e['ci_high']):.2f}]"
          if finite(e.get("ci_low")) and finite(e.get("ci_high")) else "")
    ax.loglog(xs, np.exp(icpt) * xs ** slope, "-", color="black", label=f"fit: slope {slope:.3f}{ci}")
    if reference_slope is not None:
        ax.loglog(xs, y[i0] * (xs / x[i0]) ** reference_slope, "--", color="grey",
                  label=f"Poiseuille, slope {reference_slope:g}" if reference_slope in (-4, -3) else
                  f"reference slope {reference_slope:g}")
    par = e["parameter"]
    ax.set_xlabel(f"mean lumen radius r₀ + δ (mm), r₀ = {r0:.3g} mm" if par.endswith("_mm")
                  else f"r₀ + {par}")
    ax.set_ylabel(_axis_label(qoi))
    from matplotlib.ticker import FormatStrFormatter

    for axis in (ax.xaxis, ax.yaxis):  # plain numbers on the narrow log ranges, not 2×10⁰
        axis.set_major_formatter(FormatStrFormatter("%.3g"))
        axis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax.tick_params(which="minor", labelsize=7)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out_png)
