"""Lumen label map -> watertight, tagged triangle surface with flat inlet/outlet caps.

This is the geometry stage between segmentation and volume meshing. The surface is
closed and its faces carry integer tags used by every later stage:

* ``WALL = 1`` (vessel wall, no-slip),
* ``INLET = 2`` (the inflow cap),
* ``OUTLET_FIRST = 3`` and up (``outlet1``, ``outlet2``, ... sorted by cap area, largest first).

Method
------
1. **Iso-surface** by marching cubes (Lorensen & Cline 1987, as implemented by
   ``skimage.measure.marching_cubes``, Lewiner et al. 2003) in array-index space, mapped to
   world (x, y, z) mm by :attr:`pipeline.image.Volume.affine`. With a CT ``intensity`` image
   and the segmentation's ``level`` (half-maximum, HU) the iso-surface of the image itself is
   taken near the mask, which recovers the lumen radius to sub-voxel accuracy. Without it, a
   lightly Gaussian-smoothed float mask is contoured at 0.5. On image faces that the vessel
   reaches, the field is first extended by replicating the edge slice, so the surface stays a
   clean tube up to (and beyond) the later cut planes; then one layer of "outside" closes it.
   Deliberate geometric perturbations (sensitivity studies) then move the vertices along
   their normals: by a displacement field sampled at each vertex (``normal_displacement_mm``,
   e.g. correlated boundary noise or a local offset from :mod:`pipeline.perturb`), then by a
   uniform ``boundary_offset_mm``. Both keep the sub-voxel image contour they start from, so
   a displacement of 0.05 mm moves the wall by 0.05 mm, not by zero or one voxel.
2. **Non-shrinking smoothing** by Taubin's lambda|mu filter (Taubin 1995, "A signal
   processing approach to fair surface design", SIGGRAPH). Plain Laplacian smoothing
   (``smoothing_method="laplacian"``), which shrinks small vessels (FACTS.md: 18-75 % radius
   loss at 2.5-5 voxel radii), is available only to study that shrinkage.
3. **Decimation** of the wall (quadric error metric, Garland & Heckbert 1997, via
   ``fast_simplification``) to a size gmsh can classify, before the caps are made.
4. **Open ends**: for each image face the mask touches, a cut plane parallel to that face,
   inset by ``crop_margin_mm``; the cut is closed by a flat, triangulated cap
   (``trimesh.intersections.slice_mesh_plane`` then ear clipping with ``mapbox_earcut``). Each connected patch of cap
   triangles on a plane is one opening.
5. **Centreline for mesh sizing**: the 3-D skeleton of the mask (Lee et al. 1994, via
   ``skimage.morphology.skeletonize``) with the local radius from the Euclidean distance
   transform in mm.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physics.atomic import atomic_path
from physics.atomic import to_jsonable as _jsonable
from pipeline.image import Volume

__all__ = [
    "WALL",
    "INLET",
    "OUTLET_FIRST",
    "FLUID",
    "SurfaceError",
    "Cap",
    "TaggedSurface",
    "make_tagged_surface",
    "check_watertight",
    "surface_from_mesh_file",
    "SMOOTHING_METHODS",
]

WALL = 1
INLET = 2
OUTLET_FIRST = 3
FLUID = 1  # volume (cell) tag of the fluid domain

#: Fraction of faces kept by the sliver-removing decimation after smoothing.
_SLIVER_DECIMATION_KEEP = 0.85
#: Vertices closer than this fraction of the median edge to a cut plane are pushed off it.
_CUT_CLEARANCE_EDGE_FRACTION = 0.25
#: Default wall face budget after decimation (FACTS.md: ~30k faces classify well in gmsh).
DEFAULT_MAX_FACES = 30000
#: Default inset of each cut plane from the image face, in voxels along that axis.
DEFAULT_CROP_MARGIN_VOXELS = 1.5
#: Number of voxels the field is extended (edge replication) beyond each touched image face.
_EXTEND_VOXELS = 4
#: Gaussian sigma (voxels) for the float mask when no intensity image is given.
_MASK_SIGMA_VOXELS = 0.6
#: Automatic 2x upsampling of the iso-field below this median centreline radius (voxels).
_UPSAMPLE_BELOW_RADIUS_VOXELS = 4.0
#: Dilation (voxels) of the mask that bounds the intensity iso-surface.
_INTENSITY_DILATION_VOXELS = 2
#: Radius (voxels) of the neighbourhood whose quadric gives the wall's curvature along the axis.
_AXIAL_FIT_VOXELS = 3.0
#: Largest outward offset of the blur correction, in voxels (a guard against odd images).
_MAX_BLUR_OFFSET_VOXELS = 0.5
#: Surface smoothing filters: "taubin" (lambda|mu, keeps the volume) and "laplacian" (shrinks).
SMOOTHING_METHODS = ("taubin", "laplacian")


class SurfaceError(ValueError):
    """A mask, image or surface that cannot give a watertight tagged surface (message says why)."""


# ----------------------------------------------------------------------------- data types
@dataclass
class Cap:
    """One flat opening (inlet or outlet) of the vessel surface.

    Attributes
    ----------
    tag : int
        Facet tag (``INLET`` or ``OUTLET_FIRST + n``).
    name : str
        ``"inlet"``, ``"outlet1"``, ``"outlet2"``, ...
    centre_xyz_mm : tuple of 3 floats
        Area-weighted centroid of the cap, world (x, y, z) mm.
    normal_xyz : tuple of 3 floats
        Outward unit normal (pointing out of the fluid).
    area_mm2 : float
        Cap area in mm^2.
    radius_mm : float
        Equivalent radius ``sqrt(area / pi)`` in mm.
    """

    tag: int
    name: str
    centre_xyz_mm: tuple
    normal_xyz: tuple
    area_mm2: float
    radius_mm: float


@dataclass
class TaggedSurface:
    """A closed, consistently oriented triangle surface with per-face boundary tags.

    Attributes
    ----------
    vertices_xyz_mm : ndarray, shape (N, 3)
        World (x, y, z) mm.
    faces : ndarray, shape (M, 3), int
        Vertex indices, counter-clockwise seen from outside (outward normals).
    face_tags : ndarray, shape (M,), int
        ``WALL``, ``INLET`` or an outlet tag per face.
    caps : list of Cap
        Inlet first, then outlets in tag order.
    centreline_xyz_mm : ndarray, shape (P, 3)
        Skeleton points (world mm) used for mesh sizing.
    centreline_radius_mm : ndarray, shape (P,)
        Local lumen radius at each centreline point, mm.
    report : dict
        Diagnostics (volumes before/after smoothing, face counts, checks).
    """

    vertices_xyz_mm: np.ndarray
    faces: np.ndarray
    face_tags: np.ndarray
    caps: list[Cap]
    centreline_xyz_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    centreline_radius_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vertices_xyz_mm = np.asarray(self.vertices_xyz_mm, dtype=float)
        self.faces = np.asarray(self.faces, dtype=np.int64)
        self.face_tags = np.asarray(self.face_tags, dtype=np.int64)
        self.centreline_xyz_mm = np.asarray(self.centreline_xyz_mm, dtype=float).reshape(-1, 3)
        self.centreline_radius_mm = np.asarray(self.centreline_radius_mm, dtype=float).ravel()
        if self.vertices_xyz_mm.ndim != 2 or self.vertices_xyz_mm.shape[1] != 3:
            raise SurfaceError(f"vertices_xyz_mm must have shape (N, 3), got {self.vertices_xyz_mm.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise SurfaceError(f"faces must have shape (M, 3), got {self.faces.shape}")
        if self.face_tags.shape != (len(self.faces),):
            raise SurfaceError(
                f"face_tags must have one tag per face ({len(self.faces)}), got shape {self.face_tags.shape}"
            )
        if len(self.centreline_radius_mm) != len(self.centreline_xyz_mm):
            raise SurfaceError(
                f"centreline_radius_mm has {len(self.centreline_radius_mm)} values for "
                f"{len(self.centreline_xyz_mm)} centreline points"
            )

    # ------------------------------------------------------------------ accessors
    @property
    def tag_names(self) -> dict[str, int]:
        """Boundary name -> facet tag, e.g. ``{"wall": 1, "inlet": 2, "outlet1": 3}``."""
        names = {"wall": WALL}
        for c in self.caps:
            names[c.name] = int(c.tag)
        return names

    @property
    def volume_mm3(self) -> float:
        """Enclosed volume in mm^3 (divergence theorem over the oriented faces)."""
        return _signed_volume(self.vertices_xyz_mm, self.faces)

    def to_trimesh(self):
        """The surface as a ``trimesh.Trimesh`` (no processing, same vertex/face order)."""
        import trimesh

        return trimesh.Trimesh(self.vertices_xyz_mm.copy(), self.faces.copy(), process=False)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the surface atomically.

        ``.vtp`` keeps the face tags as cell data ``face_tags`` (ParaView, and
        :func:`surface_from_mesh_file` reads them back); ``.stl``, ``.ply`` and ``.obj``
        store geometry only.
        """
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".vtp", ".stl", ".ply", ".obj"):
            raise SurfaceError(f"cannot write surface {p}: use a .vtp, .stl, .ply or .obj path")
        with atomic_path(p) as tmp:
            if suffix == ".vtp":
                _write_vtp(tmp, self.vertices_xyz_mm, self.faces, self.face_tags)
            else:
                self.to_trimesh().export(str(tmp), file_type=suffix[1:])
        return p

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready summary: boundary tags, cap geometry, report and the centreline."""
        return {
            "boundaries": self.tag_names,
            "caps": [asdict(c) for c in self.caps],
            "n_vertices": int(len(self.vertices_xyz_mm)),
            "n_faces": int(len(self.faces)),
            "n_faces_per_tag": {
                name: int(np.count_nonzero(self.face_tags == t)) for name, t in self.tag_names.items()
            },
            "volume_mm3": float(self.volume_mm3),
            "report": _jsonable(self.report),
            "centreline": {
                "xyz_mm": self.centreline_xyz_mm.tolist(),
                "radius_mm": self.centreline_radius_mm.tolist(),
            },
        }


# ----------------------------------------------------------------------------- helpers


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def check_watertight(mesh, what: str = "surface") -> None:
    """Raise :class:`SurfaceError` unless ``mesh`` is closed, consistently wound and encloses a positive volume.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The surface to check.
    what : str
        Name used in the error message.
    """
    import trimesh

    if not isinstance(mesh, trimesh.Trimesh):
        raise SurfaceError(f"{what}: expected a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise SurfaceError(f"{what} has no faces")
    if not mesh.is_watertight:
        edges = mesh.edges_sorted
        _, counts = np.unique(edges, axis=0, return_counts=True)
        n_open = int(np.count_nonzero(counts == 1))
        n_nonmanifold = int(np.count_nonzero(counts > 2))
        raise SurfaceError(
            f"{what} is not watertight: {n_open} open (boundary) edges and {n_nonmanifold} "
            "non-manifold edges. A closed surface is needed to mesh the fluid volume: repair "
            "it (fill holes, remove duplicate faces) or regenerate it from the label map"
        )
    if not mesh.is_winding_consistent:
        raise SurfaceError(
            f"{what} has inconsistent face winding (some normals point inwards, others outwards); "
            "re-orient the faces consistently (e.g. trimesh.repair.fix_winding)"
        )
    vol = float(mesh.volume)
    if not vol > 0:
        raise SurfaceError(
            f"{what} encloses a non-positive volume ({vol:.6g} mm^3): the faces are oriented "
            "inwards or the surface is degenerate; invert the faces or regenerate the surface"
        )


def _validate_volume(vol, name: str) -> Volume:
    if not isinstance(vol, Volume):
        raise SurfaceError(f"{name} must be a pipeline.image.Volume, got {type(vol).__name__}")
    return vol


def _largest_mask_component(binary: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    lab, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return binary, n
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes)), n


def _touched_faces(binary: np.ndarray) -> list[tuple[int, int]]:
    """(axis, side) pairs, side 0 = low index face, 1 = high, where the mask reaches the image edge."""
    out = []
    for axis in range(3):
        n = binary.shape[axis]
        for side, idx in ((0, 0), (1, n - 1)):
            if np.take(binary, idx, axis=axis).any():
                out.append((axis, side))
    return out


def _iso_field(binary, intensity, level) -> np.ndarray:
    """Scalar field positive inside the lumen, contoured at 0."""
    from scipy import ndimage

    if intensity is None:
        f = ndimage.gaussian_filter(binary.astype(np.float64), sigma=_MASK_SIGMA_VOXELS, mode="nearest")
        return f - 0.5
    f = np.asarray(intensity, dtype=np.float64) - float(level)
    near = ndimage.binary_dilation(
        binary, structure=ndimage.generate_binary_structure(3, 1), iterations=_INTENSITY_DILATION_VOXELS
    )
    low = min(float(f.min()), 0.0) - 1.0
    f[~near] = low
    return f


_HALF_MAX_TABLE: tuple[np.ndarray, np.ndarray] | None = None


def _disk_radius_from_half_max(rho_over_sigma: np.ndarray) -> np.ndarray:
    """True radius R/sigma of a Gaussian-blurred disk whose half-maximum contour is at rho/sigma.

    The blurred disk's value at distance rho from its centre is P(|X + rho| < R) for a 2-D
    normal X of deviation sigma: a non-central chi-square CDF, ncx2.cdf((R/s)^2, 2, (rho/s)^2).
    The half-maximum radius rho_h(R) is tabulated once by root finding and inverted by
    interpolation. (For R >> sigma, R - rho_h -> sigma^2 / (2 R).)
    """
    global _HALF_MAX_TABLE
    if _HALF_MAX_TABLE is None:
        from scipy.optimize import brentq
        from scipy.stats import ncx2

        t = np.geomspace(1.178, 400.0, 400)  # R/sigma; below 1.1774 the peak is under half
        rho_h = np.array([brentq(lambda r, tt=tt: ncx2.cdf(tt * tt, 2, r * r) - 0.5, 0.0, tt + 10.0)
                          for tt in t])
        _HALF_MAX_TABLE = (rho_h, t)
    rho_h, t = _HALF_MAX_TABLE
    x = np.asarray(rho_over_sigma, dtype=float)
    big = x > rho_h[-1]
    out = np.interp(x, rho_h, t)
    out[big] = 0.5 * (x[big] + np.sqrt(x[big] ** 2 + 2.0))  # R - rho = 1/(2R) asymptote
    return out


def _axial_curvature(mesh, axis_dir: np.ndarray, radius_mm: float) -> np.ndarray:
    """Normal curvature (1/mm, > 0 convex) of the surface along the local vessel axis at each vertex.

    A weighted least-squares quadric w = c + b1 x + b2 y + (k_xx x² + 2 k_xy x y + k_yy y²)/2 of
    the vertices within ``radius_mm`` (Gaussian weights of width radius_mm / 2) in the tangent
    frame of each vertex, x along the axis projected onto the tangent plane, y across it and w
    along the outward normal; the curvature along x is −k_xx (the normal points out of the
    lumen). Returns 0 where fewer than 8 neighbours support the fit.
    """
    from scipy.spatial import cKDTree

    V = np.asarray(mesh.vertices, float)
    N = np.asarray(mesh.vertex_normals, float)
    ex = axis_dir - np.einsum("ni,ni->n", axis_dir, N)[:, None] * N
    ex /= np.maximum(np.linalg.norm(ex, axis=1), 1e-12)[:, None]
    ey = np.cross(N, ex)
    tree = cKDTree(V)
    pairs = tree.query_pairs(radius_mm, output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(V))])
    j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(V))])
    d = V[j] - V[i]
    x, y, w = (np.einsum("ni,ni->n", d, e[i]) for e in (ex, ey, N))
    wt = np.exp(-2.0 * (x * x + y * y + w * w) / radius_mm**2)
    cols = [np.ones_like(x), x, y, 0.5 * x * x, x * y, 0.5 * y * y]
    n = len(V)
    ata = np.empty((n, 6, 6))
    for a in range(6):  # weighted normal equations, summed per vertex (bincount: no (pairs, 6, 6) array)
        for b in range(a, 6):
            ata[:, a, b] = ata[:, b, a] = np.bincount(i, wt * cols[a] * cols[b], minlength=n)
    atb = np.stack([np.bincount(i, wt * w * c, minlength=n) for c in cols], axis=1)
    ok = np.bincount(i, minlength=n) >= 8
    kappa = np.zeros(n)
    ata[~ok] = np.eye(6)
    sol = np.linalg.solve(ata + 1e-12 * np.eye(6), atb[..., None])[..., 0]
    kappa[ok] = -sol[ok, 3]
    return kappa


def _blur_correction(mesh, binary: np.ndarray, intensity: np.ndarray, level: float, vol: Volume,
                     cl_xyz: np.ndarray, half_max_level: float | None = None) -> tuple[np.ndarray, dict]:
    """Outward vertex offsets (mm) undoing the inward bias of a half-maximum iso-surface.

    Blurring a bright tube of radius R by a Gaussian of width sigma moves its half-maximum
    contour inwards (exactly: ``_disk_radius_from_half_max``), by about sigma^2 / (2 R) (the curvature term of the blurred edge; for a
    surface, sigma^2 * H with mean curvature H, and H = 1/(2R) on a tube). With sigma = 0.25 mm
    and R = 2 mm that is 0.8 % of the radius, or 3.2 % of a Poiseuille pressure drop (ΔP ∝ r⁻⁴).

    sigma is measured from the image: a blurred step of height dI has its steepest slope
    dI / (sigma sqrt(2 pi)) at the half-maximum, so sigma follows from the median gradient
    along the normals on the surface (from the cubic-spline interpolant, which adds little blur
    of its own). dI = 2 (I_core -
    level), I_core the median of the lumen core. The local radius R of each vertex is its
    distance to the centroid of its nearest medial points of the mask.

    The disk relation covers the curvature around the axis. The wall's curvature along the
    axis adds sigma^2/2 kappa_axial (first order in sigma; kappa_axial > 0 where the wall bulges
    out, < 0 at a stenosis throat, where the wall is saddle-shaped and the disk relation alone
    over-corrects: on a 75 % stenosis that alone moved ΔP by -8 %). kappa_axial comes from a
    local quadric fit of the surface (:func:`_axial_curvature`, radius max(3 voxels, 1.5 sigma)).

    When the surface is contoured off the half maximum on purpose (``level`` differs from
    ``half_max_level``, a threshold-shift study), the contrast is measured from
    ``half_max_level`` and the slope at the contour is that of the edge at the level fraction
    ``f = 1/2 + (level - half_max_level) / dI``: the steepest slope times
    ``exp(-z**2 / 2)``, ``z = Phi^-1(f)``. The correction keeps the half-maximum curvature
    term (to first order the same at nearby levels).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    img = np.asarray(intensity, dtype=np.float64)
    core = ndimage.binary_erosion(binary, iterations=2)
    if core.sum() < 10:
        core = ndimage.binary_erosion(binary, iterations=1)
    if core.sum() < 10:
        return np.zeros(len(mesh.vertices)), {"applied": False, "reason": "lumen too thin to measure its core"}
    ref = float(level) if half_max_level is None else float(half_max_level)
    contrast = 2.0 * (float(np.median(img[core])) - ref)
    if not contrast > 0:
        return np.zeros(len(mesh.vertices)), {"applied": False, "reason": "no contrast above the level"}
    frac = 0.5 + (float(level) - ref) / contrast  # level as a fraction of the edge height
    if not 0.02 < frac < 0.98:
        return np.zeros(len(mesh.vertices)), {"applied": False,
                                              "reason": f"level is at {frac:.3f} of the edge height, too far off "
                                                        "the half maximum to measure the blur"}
    from scipy.special import ndtri

    slope_factor = float(np.exp(-0.5 * ndtri(frac) ** 2))  # slope at the level / steepest slope
    sp = np.asarray(vol.spacing_mm, float)
    # slope along the normal: central difference of the cubic-spline interpolant, step +-delta
    coeffs = ndimage.spline_filter(img, order=3)
    delta = 0.25 * float(sp.min())
    normals = mesh.vertex_normals

    def sample(points):
        return ndimage.map_coordinates(coeffs, vol.world_to_index(points).T, order=3, mode="nearest",
                                       prefilter=False)

    slope = np.abs(sample(mesh.vertices - delta * normals) - sample(mesh.vertices + delta * normals)) / (2 * delta)
    sigma2 = (contrast * slope_factor / (np.sqrt(2 * np.pi) * np.median(slope))) ** 2 - delta**2 / 3.0
    info = {"contrast_hu": contrast, "blur_sigma_mm": float(np.sqrt(max(sigma2, 0.0)))}
    if not sigma2 > 0:
        return np.zeros(len(mesh.vertices)), {**info, "applied": False, "reason": "edge sharper than the grid"}
    # local radius: distance to the local axis, i.e. to the line through the centroid of the
    # nearby medial points along their principal direction (a voxelised ridge is a bundle of
    # voxel lines around the true axis; near an image face its points lie on one side only)
    k = int(min(32, len(cl_xyz)))
    _, nn = cKDTree(cl_xyz).query(mesh.vertices, k=k)
    nn = np.atleast_2d(nn.T).T if k == 1 else nn
    pts = cl_xyz[nn]  # (n_vertices, k, 3)
    centroid = pts.mean(axis=1)
    rel = mesh.vertices - centroid
    if k >= 4:
        cov = np.einsum("nki,nkj->nij", pts - centroid[:, None], pts - centroid[:, None])
        axis_dir = np.linalg.eigh(cov)[1][:, :, -1]
        rel = rel - np.einsum("ni,ni->n", rel, axis_dir)[:, None] * axis_dir
    else:
        axis_dir = None
    rho = np.maximum(np.linalg.norm(rel, axis=1), 0.5 * float(sp.min()))
    sigma = np.sqrt(sigma2)
    offset = sigma * _disk_radius_from_half_max(rho / sigma) - rho
    if axis_dir is not None:
        # the wall's curvature along the axis adds sigma^2/2 kappa_axial (concave at a throat: less)
        kappa_ax = _axial_curvature(mesh, axis_dir, max(_AXIAL_FIT_VOXELS * float(sp.min()), 1.5 * sigma))
        offset = offset + 0.5 * sigma2 * kappa_ax
        info["axial_curvature_per_mm_range"] = [float(np.percentile(kappa_ax, 1)), float(np.percentile(kappa_ax, 99))]
    offset = np.clip(offset, 0.0, _MAX_BLUR_OFFSET_VOXELS * float(sp.min()))
    info.update(applied=True, offset_mm_mean=float(offset.mean()), offset_mm_max=float(offset.max()))
    return offset, info


def _displace_along_normals(mesh, field_mm: Volume):
    """Move each vertex along its outward normal by ``field_mm`` sampled there (trilinear, mm)."""
    import trimesh
    from scipy import ndimage

    idx = field_mm.world_to_index(mesh.vertices)
    disp = ndimage.map_coordinates(np.asarray(field_mm.array, dtype=np.float64), idx.T, order=1, mode="nearest")
    vol0 = float(mesh.volume)
    moved = trimesh.Trimesh(mesh.vertices + disp[:, None] * mesh.vertex_normals, mesh.faces, process=False)
    check_watertight(moved, "the surface displaced by normal_displacement_mm")
    info = {
        "mean_mm": float(disp.mean()),
        "rms_mm": float(np.sqrt(np.mean(disp**2))),
        "max_abs_mm": float(np.abs(disp).max()),
        "volume_change_percent": 100.0 * (float(moved.volume) - vol0) / vol0,
    }
    return moved, info


def _upsample(f: np.ndarray, factor: int) -> np.ndarray:
    """Cubic-spline resampling at index steps of 1/factor (sample q sits at index q/factor)."""
    from scipy import ndimage

    shape = [(n - 1) * factor + 1 for n in f.shape]
    grids = np.meshgrid(*[np.arange(n) / factor for n in shape], indexing="ij", sparse=True)
    coords = np.broadcast_arrays(*grids)
    return ndimage.map_coordinates(f, coords, order=3, mode="nearest")


def _pad_field(f: np.ndarray, touched: list[tuple[int, int]], extend: int) -> tuple[np.ndarray, np.ndarray]:
    """Extend by edge replication on touched faces, then close with one outside layer.

    Returns the padded field and the index offset of original voxel [0, 0, 0].
    """
    ext = [[0, 0], [0, 0], [0, 0]]
    for axis, side in touched:
        ext[axis][side] = extend
    f = np.pad(f, ext, mode="edge")
    low = min(float(f.min()), 0.0) - 1.0
    f = np.pad(f, 1, mode="constant", constant_values=low)
    offset = np.array([ext[a][0] + 1 for a in range(3)], dtype=float)
    return f, offset


def _largest_piece(mesh):
    pieces = mesh.split(only_watertight=False)
    if len(pieces) <= 1:
        return mesh, len(pieces)
    best = max(pieces, key=lambda m: abs(float(m.volume)) if m.is_watertight else float(m.area) * 0)
    if abs(float(best.volume)) == 0:
        best = max(pieces, key=lambda m: float(m.area))
    return best, len(pieces)


def _connected_face_groups(mesh, face_idx: np.ndarray) -> list[np.ndarray]:
    """Split ``face_idx`` into edge-connected groups."""
    import trimesh

    if len(face_idx) == 0:
        return []
    sel = np.zeros(len(mesh.faces), bool)
    sel[face_idx] = True
    adj = mesh.face_adjacency
    keep = sel[adj[:, 0]] & sel[adj[:, 1]]
    groups = trimesh.graph.connected_components(adj[keep], nodes=face_idx, min_len=1)
    return [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]


def _boundary_loops(mesh) -> list[np.ndarray]:
    """Closed loops of directed boundary edges (vertex indices, in face winding order)."""
    import trimesh

    edges = mesh.edges  # directed, three per face
    idx = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    directed = edges[idx]
    nxt: dict[int, int] = {}
    for a, b in directed:
        if int(a) in nxt:
            raise SurfaceError("the cut surface has a pinched (non-manifold) boundary vertex; "
                               "try a different crop_margin_mm")
        nxt[int(a)] = int(b)
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            if v not in nxt:
                raise SurfaceError("an open, non-closed boundary curve was found after cutting; "
                                   "the surface is not manifold near the cut plane")
            v = nxt[v]
        if v != start:
            raise SurfaceError("boundary loops after cutting are tangled (non-manifold surface)")
        loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def _cut_and_cap(mesh, origin: np.ndarray, keep_normal: np.ndarray, name: str):
    """Keep the part of ``mesh`` on the ``keep_normal`` side of the plane and close each cut with a flat cap.

    The caps are triangulated with ear clipping (mapbox-earcut) in the plane, holes handled
    by even-odd nesting; cap triangles face ``-keep_normal`` (outwards).
    """
    import trimesh

    # Vertices lying (nearly) on the plane make the cut produce sliver triangles, and slivers
    # make gmsh's surface classification recurse without end. Push such vertices off the
    # plane, each to its own side, by a fraction of the typical edge length.
    n_unit = np.asarray(keep_normal, float) / np.linalg.norm(keep_normal)
    clearance = _CUT_CLEARANCE_EDGE_FRACTION * float(np.median(mesh.edges_unique_length))
    d = (mesh.vertices - origin) @ n_unit
    near = np.abs(d) < clearance
    if np.any(near):
        side = np.where(d[near] >= 0, 1.0, -1.0)
        verts = mesh.vertices.copy()
        verts[near] += ((side * clearance - d[near])[:, None]) * n_unit
        mesh = trimesh.Trimesh(verts, mesh.faces, process=False)
    try:
        cut = trimesh.intersections.slice_mesh_plane(mesh, keep_normal, origin, cap=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises assorted errors on degenerate input
        raise SurfaceError(f"cutting the surface at image face {name} failed: {exc}") from None
    if cut is None or len(cut.faces) == 0:
        raise SurfaceError(f"the cut at image face {name} removed the whole surface; reduce crop_margin_mm")
    cut.merge_vertices()
    loops = _boundary_loops(cut)
    if not loops:
        return cut
    return _cap_loops(cut, loops, origin, keep_normal, f"image face {name}")


def _cap_loops(cut, loops: list[np.ndarray], origin: np.ndarray, keep_normal, what: str):
    """Close the planar boundary loops of ``cut`` with flat caps facing ``-keep_normal``.

    Ear clipping (mapbox-earcut) in the plane; holes by even-odd nesting of the loops.
    """
    import mapbox_earcut
    import trimesh
    from shapely.geometry import Point, Polygon

    # 2-D frame in the plane
    n = np.asarray(keep_normal, float) / np.linalg.norm(keep_normal)
    u = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    w = np.cross(n, u)
    xy = [np.column_stack([(cut.vertices[lp] - origin) @ u, (cut.vertices[lp] - origin) @ w]) for lp in loops]
    polys = [Polygon(p) for p in xy]
    contains = np.zeros((len(loops), len(loops)), bool)  # contains[i, j]: loop i contains loop j
    for i, pi in enumerate(polys):
        for j in range(len(loops)):
            if i != j:
                contains[i, j] = pi.contains(Point(xy[j][0]))
    depth = contains.sum(axis=0)
    new_faces = []
    for i in np.flatnonzero(depth % 2 == 0):
        holes = [j for j in range(len(loops)) if contains[i, j] and depth[j] == depth[i] + 1]
        rings = [i] + holes
        pts = np.vstack([xy[r] for r in rings])
        ids = np.concatenate([loops[r] for r in rings])
        ends = np.cumsum([len(xy[r]) for r in rings]).astype(np.uint32)
        tri = np.asarray(mapbox_earcut.triangulate_float64(pts, ends), dtype=np.int64).reshape(-1, 3)
        if len(tri) == 0:
            raise SurfaceError(f"triangulating the cap on {what} failed (degenerate cut polygon)")
        new_faces.append(ids[tri])
    caps = np.vstack(new_faces)
    tri3 = cut.vertices[caps]
    nrm = np.cross(tri3[:, 1] - tri3[:, 0], tri3[:, 2] - tri3[:, 0])
    flip = nrm @ (-n) < 0
    caps[flip] = caps[flip][:, ::-1]
    caps = caps[np.linalg.norm(nrm, axis=1) > 0]
    return trimesh.Trimesh(cut.vertices, np.vstack([cut.faces, caps]), process=False)


def _cap_geometry(mesh, idx: np.ndarray, normal) -> dict:
    areas = mesh.area_faces[idx]
    area = float(areas.sum())
    centre = (mesh.triangles_center[idx] * areas[:, None]).sum(axis=0) / area
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    return {"centre": centre, "normal": n, "area": area}


def _skeleton_centreline(binary: np.ndarray, mask: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Medial points of the mask and their inscribed radius (mm), for mesh sizing.

    The medial ridge of the distance transform: voxels whose distance to the background is
    maximal in their 3x3x3 neighbourhood and at least half the largest distance within
    two voxels (which drops ridge fragments near a bumpy wall). Thinning (Lee's
    skeletonisation) is not used: it erodes an open tube that leaves the image to nothing.
    """
    from scipy import ndimage

    edt = ndimage.distance_transform_edt(np.pad(binary, 1, mode="edge"), sampling=mask.spacing_mm)[
        1:-1, 1:-1, 1:-1]
    ridge = (edt > 0) & (edt >= ndimage.maximum_filter(edt, size=3))
    ridge &= edt >= 0.5 * ndimage.maximum_filter(edt, size=5)
    idx = np.argwhere(ridge)
    if len(idx) == 0:
        idx = np.array([np.unravel_index(int(np.argmax(edt)), edt.shape)])
    radius = edt[tuple(idx.T)].astype(float)
    return mask.index_to_world(idx.astype(float)), radius


def _resolve_inlet(inlet, caps_geo: list[dict]) -> int:
    n = len(caps_geo)
    if isinstance(inlet, str):
        if inlet != "largest":
            raise SurfaceError(
                f"inlet must be 'largest', a cap index (0..{n - 1}, caps sorted by area, largest "
                f"first) or a world point (x, y, z) mm; got {inlet!r}"
            )
        return int(np.argmax([c["area"] for c in caps_geo]))
    if isinstance(inlet, (int, np.integer)) and not isinstance(inlet, bool):
        if not 0 <= int(inlet) < n:
            raise SurfaceError(
                f"inlet cap index {inlet} is out of range: the surface has {n} caps (valid 0..{n - 1}, "
                "sorted by area, largest first)"
            )
        return int(inlet)
    p = np.asarray(inlet, dtype=float).ravel() if not isinstance(inlet, bool) else np.zeros(0)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise SurfaceError(
            f"inlet must be 'largest', a cap index or a world point (x, y, z) mm; got {inlet!r}"
        )
    d = [float(np.linalg.norm(c["centre"] - p)) for c in caps_geo]
    return int(np.argmin(d))


# ----------------------------------------------------------------------------- main entry
def make_tagged_surface(
    mask: Volume,
    *,
    intensity: Volume | None = None,
    level: float | None = None,
    inlet="largest",
    smoothing_iterations: int = 20,
    target_edge_mm: float | None = None,
    crop_margin_mm=None,
    max_faces: int = DEFAULT_MAX_FACES,
    upsample: int | None = None,
    blur_correction: bool = True,
    boundary_offset_mm: float = 0.0,
    smoothing_method: str = "taubin",
    normal_displacement_mm: Volume | None = None,
    half_max_level: float | None = None,
    clip_plan=None,
    flow_extension_radii: float = 0.0,
) -> TaggedSurface:
    """Build a watertight surface with flat, tagged caps from a lumen label map.

    Parameters
    ----------
    mask : Volume
        Lumen segmentation (non-zero = lumen). Only its largest 26-connected component is used.
    intensity : Volume, optional
        The CT image (HU) on the same grid. With ``level`` it gives a sub-voxel accurate wall.
    level : float, optional
        Iso-value of the wall in the intensity image (HU), e.g. the half-maximum level used
        by the segmentation. Required with ``intensity``; lumen is where intensity > level.
    inlet : {"largest"} or int or (x, y, z)
        Which cap is the inlet: the largest one, an index into the caps sorted by area
        (largest first), or the cap whose centre is nearest a world point in mm.
    smoothing_iterations : int
        Taubin (lambda = 0.5, mu = -0.52) iterations, >= 0.
    target_edge_mm : float, optional
        Decimate the wall to roughly this edge length (mm). Default: only cap the face
        count at ``max_faces``.
    crop_margin_mm : float or array_like, optional
        Inset (mm) of each cut plane from the centre of the image's last voxel layer on the
        face the vessel leaves through: one value for every face, three (one per array axis
        ``z, y, x``) or a 3 x 2 array (per axis: low-index face, high-index face). Default:
        1.5 voxel sizes along that face's axis.
    max_faces : int
        Upper bound on the wall face count after decimation.
    upsample : int, optional
        Resample the iso-field by this factor (cubic spline) before marching cubes, which
        shrinks the inscribed-polygon bias of the cross-section area (about
        ``-(2 pi / N)^2 / 6`` for N edges around the lumen: -2.6 % at a 2.5-voxel radius).
        Default: 2 when the median centreline radius is below 4 voxels, else 1.

    blur_correction : bool
        With ``intensity``: move the half-maximum surface outwards by sigma^2 / (2 R), the
        inward shift that scanner blur (sigma measured from the edge slope) causes on a
        curved lumen of local radius R, plus sigma^2/2 times the wall's curvature along the
        axis (see ``_blur_correction``). Reported under
        ``report["blur_correction"]``.
    boundary_offset_mm : float
        Move the wall outwards (> 0) or inwards (< 0) by this distance along its normals
        before the caps are cut: a uniform sub-voxel offset for geometric sensitivity
        studies (a tube of radius r becomes r + offset). Reported under
        ``report["boundary_offset"]``.
    smoothing_method : {"taubin", "laplacian"}
        ``"taubin"`` (default) keeps the volume; ``"laplacian"`` (trimesh's
        ``filter_laplacian``, lambda = 0.5, no volume constraint) shrinks convex walls, for
        studies of that shrinkage. Both run ``smoothing_iterations`` passes.
    normal_displacement_mm : Volume, optional
        A displacement field in mm (any grid, e.g. from :mod:`pipeline.perturb`): each vertex
        of the raw iso-surface moves along its outward normal by the field's value at its
        position (trilinear interpolation; edge values beyond the grid), after the blur
        correction and before ``boundary_offset_mm``. Reported under
        ``report["normal_displacement"]``.
    half_max_level : float, optional
        With ``intensity``: the half-maximum level of the lumen edge (HU), from which the blur
        correction measures the contrast. Default ``level``. Give it when ``level`` is moved
        off the half maximum on purpose (threshold-shift studies), so the blur is still
        measured correctly.
    clip_plan : pipeline.centreline.ClipPlan, optional
        Cut the ends where this plan says (planes perpendicular to the centreline, see
        :mod:`pipeline.centreline`) instead of at the image faces: the inlet clip becomes the
        inlet cap, the outlet clips the outlets (sorted by area), and the caps of closed
        branches are wall. ``inlet`` and ``crop_margin_mm`` are then not used.
    flow_extension_radii : float
        Add a straight, circular flow extension this many cap radii long to every opening
        (:func:`_add_flow_extensions`; VaMPy uses ``FLOW_EXTENSION_RADII_DEFAULT`` = 5). The
        caps move to the extensions' ends; ``report["flow_extensions"]`` lists them. 0: none.

    Returns
    -------
    TaggedSurface

    Raises
    ------
    SurfaceError
        Invalid inputs, an empty mask, a vessel reaching fewer than two image faces (no
        inlet + outlet), or a surface that is not watertight after capping.
    """
    mask, intensity, normal_displacement_mm, margins = _check_surface_inputs(
        mask, intensity, level, smoothing_iterations, boundary_offset_mm, smoothing_method,
        normal_displacement_mm, half_max_level, target_edge_mm, crop_margin_mm, upsample, max_faces)
    if clip_plan is not None:
        mask = _crop_to_plan(mask, clip_plan)
    binary, n_components, touched = _lumen_mask(mask, intensity, level)
    report: dict[str, Any] = {"n_mask_components": n_components, "mask_voxels": int(binary.sum()),
                              "touched_faces": [f"{'kji'[a]}{'-+'[s]}" for a, s in touched]}

    # centreline first: its radii choose the upsampling factor
    cl_xyz, cl_r = _skeleton_centreline(binary, mask)
    if clip_plan is not None and clip_plan.path_points_xyz_mm:  # the modelled tree sizes the mesh
        cl_xyz = np.vstack(clip_plan.path_points_xyz_mm)
        cl_r = np.concatenate(clip_plan.path_radius_mm)
    if upsample is None:
        upsample = _auto_upsample(cl_r, mask.spacing_mm)
    report["upsample"] = int(upsample)

    # 1. iso-surface, blur correction, deliberate perturbations along the normals
    mesh, report["raw_surface_pieces"] = _iso_surface(binary, mask, intensity, level, touched, upsample)
    report["raw_faces"] = int(len(mesh.faces))
    if intensity is not None and blur_correction:
        mesh, report["blur_correction"] = _correct_blur(mesh, binary, intensity.array, level, mask, cl_xyz,
                                                        half_max_level)
    if normal_displacement_mm is not None:
        mesh, report["normal_displacement"] = _displace_along_normals(mesh, normal_displacement_mm)
    if boundary_offset_mm:
        mesh, report["boundary_offset"] = _offset_along_normals(mesh, boundary_offset_mm)

    # 2. smoothing, 3. decimation of the closed wall (before capping, so caps stay flat)
    mesh, smoothing = _smooth(mesh, smoothing_iterations, smoothing_method)
    report.update(smoothing)
    mesh, decimation = _decimate(mesh, max_faces, target_edge_mm)
    report.update(decimation)

    # 4. cut the open ends and cap them, 5. find the openings, 6. tag them
    if clip_plan is not None:
        mesh, caps_geo, report["clips"], report["pieces_after_cut"] = _clip_to_plan(mesh, clip_plan)
        planes = []
        inlet = caps_geo[0]["centre"]
    else:
        planes = _cut_planes(mask, binary.shape, touched, crop_margin_mm, margins)
        mesh, report["pieces_after_cut"] = _cut_and_cap_ends(mesh, planes)
        caps_geo = _find_openings(mesh, planes, report["touched_faces"])
    if not np.isfinite(flow_extension_radii) or not 0.0 <= flow_extension_radii <= 50.0:
        raise SurfaceError(f"flow_extension_radii must be a length in cap radii in [0, 50], got {flow_extension_radii!r}")
    if flow_extension_radii:
        was_inlet = None if clip_plan is None else caps_geo[0]
        mesh, caps_geo, report["flow_extensions"], ax, ax_r = _add_flow_extensions(
            mesh, caps_geo, float(flow_extension_radii))
        cl_xyz, cl_r = np.vstack([cl_xyz, ax]), np.concatenate([cl_r, ax_r])
        if was_inlet is not None:
            inlet = caps_geo[0]["centre"]
    face_tags, caps = _tag_caps(len(mesh.faces), caps_geo, inlet)

    report.update(_summary(mesh, caps, intensity, level, crop_margin_mm, margins, planes, cl_r))
    return TaggedSurface(
        vertices_xyz_mm=np.asarray(mesh.vertices, float),
        faces=np.asarray(mesh.faces, np.int64),
        face_tags=face_tags,
        caps=caps,
        centreline_xyz_mm=cl_xyz,
        centreline_radius_mm=cl_r,
        report=report,
    )


# ----------------------------------------------------------------------------- flow extensions
#: VaMPy's default flow extension (Kjeldsberg et al. 2023, automatedPreprocessing: 5 radii at the
#: inlet and at each outlet), used when the option is given without a length.
FLOW_EXTENSION_RADII_DEFAULT = 5.0


def _cap_ring(faces: np.ndarray) -> list[int] | None:
    """The boundary of a cap patch as one loop of vertex ids, in the cap triangles' edge direction
    (None when the patch has holes or is not one disc)."""
    e = np.vstack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = {}
    for a, b in e:
        key[(int(a), int(b))] = key.get((int(a), int(b)), 0) + 1
    boundary = [(a, b) for (a, b) in key if (b, a) not in key]
    nxt = {}
    for a, b in boundary:
        if a in nxt:
            return None
        nxt[a] = b
    start = boundary[0][0]
    loop, v = [start], nxt[start]
    while v != start:
        loop.append(v)
        v = nxt.get(v)
        if v is None or len(loop) > len(boundary):
            return None
    return loop if len(loop) == len(boundary) else None


def _extension(ring_xyz: np.ndarray, centre: np.ndarray, normal: np.ndarray, radius: float, length: float,
               transition: float = 0.5):
    """Rings of a flow extension: from the cap's ring, along ``normal`` for ``length``, morphing
    to a circle of ``radius`` over the first ``transition`` of the length (smoothstep); each ring
    point goes to the circle point at its own arc-length fraction of the ring."""
    n = normal / np.linalg.norm(normal)
    u = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    w = np.cross(n, u)
    v = ring_xyz - centre
    x, y = v @ u, v @ w
    steps = np.linalg.norm(np.diff(np.vstack([ring_xyz, ring_xyz[:1]]), axis=0), axis=1)
    turn = 1.0 if float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) >= 0 else -1.0  # the ring's sense about n
    theta = np.arctan2(y[0], x[0]) + turn * 2.0 * np.pi * np.concatenate([[0.0], np.cumsum(steps[:-1])]) / steps.sum()
    # the circle's points at the ring's arc-length fractions: a simple circle even for a ring not star-shaped
    circle = centre + radius * (np.outer(np.cos(theta), u) + np.outer(np.sin(theta), w))
    edge = float(np.mean(steps))
    layers = int(np.clip(np.ceil(length / max(edge, 1e-9)), 2, 200))
    rings = []
    for k in range(1, layers + 1):
        s = k / layers
        t = min(s / transition, 1.0)
        w = t * t * (3.0 - 2.0 * t)
        rings.append((1.0 - w) * ring_xyz + w * circle + (s * length) * n)
    return rings


def _add_flow_extensions(mesh, caps_geo: list[dict], radii: float):
    """Step 5b: a straight, circular flow extension on every opening (VMTK's vmtkflowextensions,
    "boundarynormal" mode), ``radii`` times the cap's equivalent radius long.

    Each cap is replaced by a tube along its outward normal that morphs from the cut's outline
    to a circle of the cap's area over the first half of its length, closed by a new flat cap:
    the inflow profile develops before the anatomy and the outlets' recirculation stays out of
    it. Returns (mesh, caps, report, axis points mm, their radii mm) - the axes extend the
    sizing centreline.
    """
    import mapbox_earcut
    import trimesh

    V = np.asarray(mesh.vertices, float)
    F = np.asarray(mesh.faces, np.int64)
    verts, nv = [V], len(V)
    drop = np.zeros(len(F), bool)
    added: list[np.ndarray] = []  # wall faces of the tubes, then per cap its new cap faces
    new_caps, report, axis, axis_r = [], [], [], []
    for g in caps_geo:
        ring = _cap_ring(F[g["faces"]])
        if ring is None:
            report.append({"cap_centre_xyz_mm": np.round(g["centre"], 2).tolist(), "applied": False,
                           "why": "the cap is not one disc (a cut through two vessels or a hole)"})
            new_caps.append((g, None))
            continue
        n = np.asarray(g["normal"], float) / np.linalg.norm(g["normal"])
        radius = float(np.sqrt(g["area"] / np.pi))
        length = float(radii) * radius
        prev = np.asarray(ring, np.int64)
        for r in _extension(V[prev], np.asarray(g["centre"], float), n, radius, length):
            ids = nv + np.arange(len(prev))
            verts.append(r)
            nv += len(prev)
            a, b, a2, b2 = prev, np.roll(prev, -1), ids, np.roll(ids, -1)
            added.append(np.vstack([np.column_stack([a, b, b2]), np.column_stack([a, b2, a2])]))
            prev = ids
        allv = np.vstack(verts)
        u = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
        u /= np.linalg.norm(u)
        w = np.cross(n, u)
        xy = np.column_stack([(allv[prev] - g["centre"]) @ u, (allv[prev] - g["centre"]) @ w])
        tri = np.asarray(mapbox_earcut.triangulate_float64(xy, np.array([len(xy)], np.uint32)), np.int64)
        cap = prev[tri.reshape(-1, 3)]
        t3 = allv[cap]
        flip = np.cross(t3[:, 1] - t3[:, 0], t3[:, 2] - t3[:, 0]) @ n < 0
        cap[flip] = cap[flip][:, ::-1]
        drop[g["faces"]] = True
        new_caps.append((g, cap))
        axis.append(np.asarray(g["centre"], float) + np.linspace(0.0, length, 8)[:, None] * n)
        axis_r.append(np.full(8, radius))
        report.append({"cap_centre_xyz_mm": np.round(g["centre"], 2).tolist(), "applied": True,
                       "length_mm": round(length, 3), "radius_mm": round(radius, 3)})
    keep = np.flatnonzero(~drop)
    faces = [F[keep]] + added
    at = sum(len(f) for f in faces)
    old_to_new = np.full(len(F), -1, np.int64)
    old_to_new[keep] = np.arange(len(keep))
    out = []
    for g, cap in new_caps:
        g = dict(g)
        if cap is None:
            g["faces"] = old_to_new[g["faces"]]
        else:
            faces.append(cap)
            g["faces"] = at + np.arange(len(cap))
            at += len(cap)
        out.append(g)
    ext = trimesh.Trimesh(np.vstack(verts), np.vstack(faces), process=False)
    for g in out:
        centre_normal = _cap_geometry(ext, g["faces"], g["normal"])
        g["centre"], g["area"] = centre_normal["centre"], centre_normal["area"]
    check_watertight(ext, "the surface with flow extensions")
    cl = (np.vstack(axis), np.concatenate(axis_r)) if axis else (np.zeros((0, 3)), np.zeros(0))
    return ext, out, report, cl[0], cl[1]


# ----------------------------------------------------------------------------- stages of make_tagged_surface
def _check_surface_inputs(mask, intensity, level, smoothing_iterations, boundary_offset_mm, smoothing_method,
                          normal_displacement_mm, half_max_level, target_edge_mm, crop_margin_mm, upsample,
                          max_faces) -> tuple[Volume, Volume | None, Volume | None, np.ndarray | None]:
    """Validate the arguments of ``make_tagged_surface``; return the volumes and the 3 x 2 crop margins (mm)."""
    mask = _validate_volume(mask, "mask")
    if intensity is not None:
        intensity = _validate_volume(intensity, "intensity")
        if intensity.shape != mask.shape:
            raise SurfaceError(
                f"intensity has shape {intensity.shape} but mask has {mask.shape}: both must be on the same grid"
            )
        if not np.allclose(intensity.affine, mask.affine, rtol=1e-5, atol=1e-3):  # NIfTI stores float32
            raise SurfaceError("intensity and mask must share spacing, origin and direction (same grid)")
        if level is None or not np.isfinite(float(level)):
            raise SurfaceError(f"level must be a finite iso-value (HU) when intensity is given, got {level!r}")
    elif level is not None:
        raise SurfaceError(f"level={level!r} was given without an intensity image; pass intensity= too or drop level")
    if isinstance(smoothing_iterations, bool) or not isinstance(smoothing_iterations, (int, np.integer)) \
            or smoothing_iterations < 0:
        raise SurfaceError(f"smoothing_iterations must be an integer >= 0, got {smoothing_iterations!r}")
    if isinstance(boundary_offset_mm, bool) or not isinstance(boundary_offset_mm, (int, float)) \
            or not np.isfinite(boundary_offset_mm):
        raise SurfaceError(f"boundary_offset_mm must be a finite number (mm), got {boundary_offset_mm!r}")
    if smoothing_method not in SMOOTHING_METHODS:
        raise SurfaceError(f"smoothing_method must be one of {SMOOTHING_METHODS}, got {smoothing_method!r}")
    if normal_displacement_mm is not None:
        normal_displacement_mm = _validate_volume(normal_displacement_mm, "normal_displacement_mm")
        if not np.all(np.isfinite(np.asarray(normal_displacement_mm.array, dtype=float))):
            raise SurfaceError("normal_displacement_mm holds non-finite values: give a finite field in mm")
    if half_max_level is not None and (intensity is None or not np.isfinite(float(half_max_level))):
        raise SurfaceError(
            f"half_max_level={half_max_level!r} needs an intensity image and must be a finite level (HU)"
        )
    if target_edge_mm is not None and not (np.isfinite(target_edge_mm) and target_edge_mm > 0):
        raise SurfaceError(f"target_edge_mm must be a positive number of mm or None, got {target_edge_mm!r}")
    margins = None if crop_margin_mm is None else _crop_margins(crop_margin_mm)
    if upsample is not None and (isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer))
                                 or not 1 <= upsample <= 4):
        raise SurfaceError(f"upsample must be None or an integer 1..4, got {upsample!r}")
    if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 500:
        raise SurfaceError(f"max_faces must be an integer >= 500, got {max_faces!r}")
    return mask, intensity, normal_displacement_mm, margins


def _crop_margins(crop_margin_mm) -> np.ndarray:
    """The cut-plane insets as a 3 x 2 array in mm (per array axis: low-index face, high-index face)."""
    try:
        m_in = np.asarray(crop_margin_mm, dtype=float)
        if m_in.shape not in ((), (3,), (3, 2)):
            raise ValueError("wrong shape")
        margins = np.broadcast_to(m_in[:, None] if m_in.shape == (3,) else m_in, (3, 2))
    except (TypeError, ValueError):
        margins = np.array([np.nan])
    if not (np.all(np.isfinite(margins)) and np.all(margins >= 0)):
        raise SurfaceError(
            f"crop_margin_mm must be >= 0 mm (one value, three per array axis z, y, x, or 3 x 2 per "
            f"axis and side) or None, "
            f"got {crop_margin_mm!r}"
        )
    return margins


def _lumen_mask(mask: Volume, intensity: Volume | None, level) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
    """Largest lumen component (bool, shape of the mask), the number of components and the touched image faces."""
    binary = np.asarray(mask.array) > 0
    if not binary.any():
        raise SurfaceError("the mask is empty (no voxel > 0): nothing to build a surface from")
    binary, n_components = _largest_mask_component(binary)
    if min(binary.shape) < 3:
        raise SurfaceError(f"the mask grid {binary.shape} is too small: need at least 3 voxels per axis")
    touched = _touched_faces(binary)
    if intensity is not None:
        inside_mean = float(np.asarray(intensity.array, float)[binary].mean())
        if not inside_mean > float(level):
            raise SurfaceError(
                f"the mean intensity inside the mask ({inside_mean:.4g}) is not above level={level}: "
                "the lumen must be brighter than the level (contrast CT in HU)"
            )
    return binary, int(n_components), touched


def _auto_upsample(cl_r: np.ndarray, spacing_mm) -> int:
    """Iso-field upsampling factor: 2 below a median centreline radius of 4 voxels (radii in mm), else 1."""
    r_vox = float(np.median(cl_r)) / min(spacing_mm)
    return 2 if r_vox < _UPSAMPLE_BELOW_RADIUS_VOXELS else 1


def _iso_surface(binary: np.ndarray, mask: Volume, intensity: Volume | None, level, touched, upsample):
    """Step 1: watertight marching-cubes surface (world mm) near the mask; returns it and the raw piece count."""
    import trimesh
    from skimage import measure

    f = _iso_field(binary, None if intensity is None else intensity.array, level)
    lo = np.maximum(np.argwhere(binary).min(axis=0) - (_INTENSITY_DILATION_VOXELS + 2), 0)
    hi = np.minimum(np.argwhere(binary).max(axis=0) + (_INTENSITY_DILATION_VOXELS + 3), binary.shape)
    f = f[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if upsample > 1:
        f = _upsample(f, int(upsample))
    f, offset = _pad_field(f, touched, _EXTEND_VOXELS * int(upsample))
    try:
        verts, faces, _, _ = measure.marching_cubes(f, level=0.0, allow_degenerate=False)
    except (ValueError, RuntimeError) as exc:
        raise SurfaceError(f"marching cubes found no surface: {exc}") from None
    verts_world = mask.index_to_world((verts - offset) / float(upsample) + lo)
    mesh = trimesh.Trimesh(verts_world, faces, process=True)
    mesh, n_pieces = _largest_piece(mesh)
    if mesh.volume < 0:
        mesh.invert()
    check_watertight(mesh, "the raw marching-cubes surface")
    return mesh, int(n_pieces)


def _correct_blur(mesh, binary: np.ndarray, intensity_hu: np.ndarray, level, mask: Volume, cl_xyz: np.ndarray,
                  half_max_level):
    """Step 1b: move the vertices out by the blur correction (mm) of ``_blur_correction``; returns (mesh, info)."""
    import trimesh

    offset, binfo = _blur_correction(mesh, binary, intensity_hu, level, mask, cl_xyz, half_max_level)
    if binfo.get("applied"):
        vol0 = float(mesh.volume)
        mesh = trimesh.Trimesh(mesh.vertices + offset[:, None] * mesh.vertex_normals, mesh.faces,
                               process=False)
        binfo["volume_change_percent"] = 100.0 * (float(mesh.volume) - vol0) / vol0
    return mesh, binfo


def _offset_along_normals(mesh, offset_mm):
    """Step 1c: move every vertex by ``offset_mm`` (mm) along its outward normal; returns (mesh, info)."""
    import trimesh

    vol0 = float(mesh.volume)
    mesh = trimesh.Trimesh(mesh.vertices + float(offset_mm) * mesh.vertex_normals, mesh.faces, process=False)
    check_watertight(mesh, f"the surface offset by {offset_mm} mm")
    return mesh, {"offset_mm": float(offset_mm),
                  "volume_change_percent": 100.0 * (float(mesh.volume) - vol0) / vol0}


def _smooth(mesh, iterations, method: str):
    """Step 2: Taubin (non-shrinking) or Laplacian smoothing in place; returns (mesh, info with volumes in mm^3)."""
    import trimesh

    vol_before = float(mesh.volume)
    if iterations > 0 and method == "laplacian":
        trimesh.smoothing.filter_laplacian(mesh, lamb=0.5, iterations=int(iterations), volume_constraint=False)
    elif iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.52, iterations=int(iterations))
    vol_after = float(mesh.volume)
    return mesh, {
        "volume_before_smoothing_mm3": vol_before,
        "volume_after_smoothing_mm3": vol_after,
        "smoothing_volume_change_percent": 100.0 * (vol_after - vol_before) / vol_before,
        "smoothing_iterations": int(iterations),
        "smoothing_method": method,
    }


def _decimate(mesh, max_faces, target_edge_mm):
    """Step 3: quadric decimation to <= max_faces faces (or about target_edge_mm mm edges); returns (mesh, info)."""
    # always decimate a little: quadric collapse removes the near-degenerate slivers of
    # marching cubes first (they cost nothing), which gmsh's classification cannot digest
    n_target = min(int(max_faces), int(_SLIVER_DECIMATION_KEEP * len(mesh.faces)))
    if target_edge_mm is not None:
        n_target = min(n_target, int(np.ceil(mesh.area / (np.sqrt(3) / 4 * target_edge_mm**2))))
    n_target = max(n_target, 500)
    info: dict[str, Any] = {"decimated": False}
    if len(mesh.faces) > n_target:
        dec = mesh.simplify_quadric_decimation(face_count=n_target)
        dec.merge_vertices()
        dec.remove_unreferenced_vertices()
        if dec.is_watertight and dec.is_winding_consistent and dec.volume > 0:
            info["decimated"] = True
            info["volume_after_decimation_mm3"] = float(dec.volume)
            mesh = dec
        else:
            info["decimation_skipped"] = "decimated surface was not watertight; kept the smoothed one"
    return mesh, info


def _cut_planes(mask: Volume, shape, touched, crop_margin_mm, margins) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Step 4a: one cut plane per touched image face: (origin xyz mm, unit normal into the kept part, face name)."""
    planes = []
    aff = mask.affine
    for axis, side in touched:
        d = aff[:3, axis] / np.linalg.norm(aff[:3, axis])  # world direction of increasing index on axis
        margin_vox = (DEFAULT_CROP_MARGIN_VOXELS if crop_margin_mm is None
                      else float(margins[axis, side]) / mask.spacing_mm[axis])
        n_ax = shape[axis]
        if margin_vox >= (n_ax - 1) / 2:
            raise SurfaceError(
                f"crop_margin_mm={crop_margin_mm} is too large for axis {'kji'[axis]} of {n_ax} voxels "
                f"(spacing {mask.spacing_mm[axis]} mm): it must be below half the image extent"
            )
        pos = np.zeros(3)
        pos[axis] = margin_vox if side == 0 else (n_ax - 1) - margin_vox
        origin = mask.index_to_world(pos)
        keep_normal = d if side == 0 else -d  # points into the kept (interior) part
        planes.append((origin, keep_normal, f"{'kji'[axis]}{'-+'[side]}"))
    return planes


def _cut_and_cap_ends(mesh, planes):
    """Step 4b: cut the surface at every plane and close each cut flat; returns (watertight mesh, piece count)."""
    for origin, keep_normal, name in planes:
        mesh = _cut_and_cap(mesh, origin, keep_normal, name)
    return _closed_largest_piece(mesh, "the capped surface")


def _closed_largest_piece(mesh, what: str):
    """Merge duplicate vertices, keep the largest piece, orient it outwards and check it is watertight.

    Returns (mesh, number of pieces before the largest was kept).
    """
    import trimesh

    mesh.merge_vertices()
    mesh.remove_unreferenced_vertices()
    mesh, n_pieces = _largest_piece(mesh)
    if mesh.is_watertight and not mesh.is_winding_consistent:
        # an ear-clipped cap whose loop ran against the wall's (a cut through a non-convex
        # section): on a closed manifold the winding is made consistent by traversal
        trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()
    check_watertight(mesh, what)
    return mesh, int(n_pieces)


def _find_openings(mesh, planes, touched_names: list[str]) -> list[dict]:
    """Step 5: the openings, connected patches of outward faces on a cut plane (centre mm, area mm^2, faces)."""
    scale = float(np.linalg.norm(mesh.extents))
    tol = 1e-6 * max(scale, 1.0)
    normals = mesh.face_normals
    caps_geo: list[dict] = []
    is_cap = np.zeros(len(mesh.faces), bool)
    for origin, keep_normal, name in planes:
        dist = np.abs((mesh.vertices - origin) @ keep_normal)
        on = (dist[mesh.faces] < tol).all(axis=1) & (normals @ -keep_normal > 0.999) & ~is_cap
        for grp in _connected_face_groups(mesh, np.flatnonzero(on)):
            is_cap[grp] = True
            g = _cap_geometry(mesh, grp, -keep_normal)
            g["faces"] = grp
            g["plane"] = name
            caps_geo.append(g)
    if len(caps_geo) < 2:
        raise SurfaceError(
            f"the vessel reaches fewer than two crop planes ({len(caps_geo)} opening(s) found on the "
            f"image faces {touched_names or 'none'}): need an inlet and at least one outlet. "
            "The lumen must leave the image (or a cropped region) through at least two openings"
        )
    return caps_geo


def _tag_caps(n_faces: int, caps_geo: list[dict], inlet) -> tuple[np.ndarray, list[Cap]]:
    """Step 6: face tags (inlet, then outlets by area, largest first) and the caps (mm, mm^2)."""
    caps_geo = sorted(caps_geo, key=lambda c: -c["area"])
    i_in = _resolve_inlet(inlet, caps_geo)
    order = [i_in] + [i for i in range(len(caps_geo)) if i != i_in]
    face_tags = np.full(n_faces, WALL, dtype=np.int64)
    caps: list[Cap] = []
    for rank, i in enumerate(order):
        g = caps_geo[i]
        tag = INLET if rank == 0 else OUTLET_FIRST + rank - 1
        name = "inlet" if rank == 0 else f"outlet{rank}"
        face_tags[g["faces"]] = tag
        caps.append(Cap(
            tag=int(tag), name=name,
            centre_xyz_mm=tuple(float(v) for v in g["centre"]),
            normal_xyz=tuple(float(v) for v in g["normal"]),
            area_mm2=float(g["area"]), radius_mm=float(np.sqrt(g["area"] / np.pi)),
        ))
    return face_tags, caps


def _summary(mesh, caps: list[Cap], intensity, level, crop_margin_mm, margins, planes, cl_r) -> dict[str, Any]:
    """The final surface's entries of the report (counts, mm^3, mm^2, method, cut planes in mm)."""
    return {
        "n_faces": int(len(mesh.faces)),
        "n_vertices": int(len(mesh.vertices)),
        "watertight": bool(mesh.is_watertight),
        "winding_consistent": bool(mesh.is_winding_consistent),
        "volume_mm3": float(mesh.volume),
        "area_mm2": float(mesh.area),
        "n_caps": len(caps),
        "method": "intensity iso-surface" if intensity is not None else "smoothed mask at 0.5",
        "level": None if level is None else float(level),
        "crop_margin_mm": (crop_margin_mm if crop_margin_mm is None or np.ndim(crop_margin_mm) == 0
                           else margins.tolist()),
        "cut_planes": [{"face": name, "origin_xyz_mm": o.tolist(), "keep_normal_xyz": n.tolist()}
                       for o, n, name in planes],
        "centreline_points": int(len(cl_r)),
    }


# ----------------------------------------------------------------------------- file I/O
def _write_vtp(path: Path, vertices: np.ndarray, faces: np.ndarray, tags: np.ndarray) -> None:
    def arr(a, fmt):
        return " ".join(fmt % v for v in np.asarray(a).ravel())

    n, m = len(vertices), len(faces)
    text = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{n}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" NumberOfPolys="{m}">\n'
        '<Points><DataArray type="Float64" NumberOfComponents="3" format="ascii">\n'
        f"{arr(vertices, '%.17g')}\n</DataArray></Points>\n"
        '<CellData Scalars="face_tags"><DataArray type="Int32" Name="face_tags" format="ascii">\n'
        f"{arr(tags, '%d')}\n</DataArray></CellData>\n"
        '<Polys><DataArray type="Int64" Name="connectivity" format="ascii">\n'
        f"{arr(faces, '%d')}\n</DataArray>\n"
        '<DataArray type="Int64" Name="offsets" format="ascii">\n'
        f"{arr(np.arange(1, m + 1) * 3, '%d')}\n</DataArray></Polys>\n"
        "</Piece>\n</PolyData>\n</VTKFile>\n"
    )
    path.write_text(text)  # called on a temporary path by TaggedSurface.write


def _read_vtp(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        root = ET.parse(path).getroot()
        piece = root.find("PolyData/Piece")
        pts = np.array(piece.find("Points/DataArray").text.split(), float).reshape(-1, 3)
        polys = piece.find("Polys")
        conn = offs = None
        for da in polys.findall("DataArray"):
            if da.get("Name") == "connectivity":
                conn = np.array(da.text.split(), np.int64)
            elif da.get("Name") == "offsets":
                offs = np.array(da.text.split(), np.int64)
        if conn is None or offs is None or not np.all(np.diff(np.concatenate([[0], offs])) == 3):
            raise SurfaceError(f"{path}: only triangle polygons are supported")
        tags = None
        for da in piece.findall("CellData/DataArray"):
            if da.get("Name") == "face_tags":
                tags = np.array(da.text.split(), np.int64)
        return pts, conn.reshape(-1, 3), tags
    except SurfaceError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SurfaceError(
            f"cannot read {path} as an ASCII VTK PolyData (.vtp) surface: {exc}. "
            "Write it with TaggedSurface.write or give an STL/PLY/OBJ plus face_tags"
        ) from None


def surface_from_mesh_file(
    path: str | os.PathLike,
    *,
    face_tags: np.ndarray | None = None,
    centreline_xyz_mm: np.ndarray | None = None,
    centreline_radius_mm: np.ndarray | None = None,
) -> TaggedSurface:
    """Read a closed, tagged surface (e.g. one edited by hand) and check it.

    Parameters
    ----------
    path : path
        ``.vtp`` written by :meth:`TaggedSurface.write` (tags included), or an ``.stl``,
        ``.ply`` or ``.obj`` with ``face_tags`` given. Coordinates in world mm.
    face_tags : ndarray, shape (M,), optional
        Per-face tags (``WALL``, ``INLET``, outlets from ``OUTLET_FIRST``); overrides the file's.
    centreline_xyz_mm, centreline_radius_mm : ndarray, optional
        Sizing centreline. Default: the cap centres with the smallest cap radius.

    Raises
    ------
    SurfaceError
        Missing file, no tags, non-watertight surface, missing inlet or outlet tags.
    """
    import trimesh

    p = Path(path)
    if not p.exists():
        raise SurfaceError(f"surface file not found: {p}")
    if p.suffix.lower() == ".vtp":
        verts, faces, tags = _read_vtp(p)
    else:
        try:
            m = trimesh.load_mesh(str(p), process=False)
        except Exception as exc:  # noqa: BLE001
            raise SurfaceError(f"cannot read surface {p}: {exc}") from None
        verts, faces, tags = np.asarray(m.vertices), np.asarray(m.faces), None
    if face_tags is not None:
        tags = np.asarray(face_tags, np.int64).ravel()
    if tags is None:
        raise SurfaceError(f"{p} has no face tags: pass face_tags= (wall {WALL}, inlet {INLET}, outlets >= {OUTLET_FIRST})")
    if tags.shape != (len(faces),):
        raise SurfaceError(f"face_tags has {tags.size} values for {len(faces)} faces in {p}")
    mesh = trimesh.Trimesh(verts, faces, process=False)
    check_watertight(mesh, f"surface {p.name}")
    present = set(int(t) for t in np.unique(tags))
    bad = present - {WALL, INLET} - {t for t in present if t >= OUTLET_FIRST}
    if bad or INLET not in present or not any(t >= OUTLET_FIRST for t in present):
        raise SurfaceError(
            f"face tags {sorted(present)} in {p}: need wall={WALL}, inlet={INLET} and outlets >= {OUTLET_FIRST}"
        )
    caps = []
    normals = mesh.face_normals
    for t in sorted(present - {WALL}):
        idx = np.flatnonzero(tags == t)
        areas = mesh.area_faces[idx]
        n = (normals[idx] * areas[:, None]).sum(axis=0)
        n = n / np.linalg.norm(n)
        g = _cap_geometry(mesh, idx, n)
        caps.append(Cap(
            tag=t, name="inlet" if t == INLET else f"outlet{t - OUTLET_FIRST + 1}",
            centre_xyz_mm=tuple(float(v) for v in g["centre"]), normal_xyz=tuple(float(v) for v in n),
            area_mm2=g["area"], radius_mm=float(np.sqrt(g["area"] / np.pi)),
        ))
    if centreline_xyz_mm is None:
        centreline_xyz_mm = np.array([c.centre_xyz_mm for c in caps])
        centreline_radius_mm = np.full(len(caps), min(c.radius_mm for c in caps))
    return TaggedSurface(verts, faces, tags, caps, centreline_xyz_mm, centreline_radius_mm,
                         report={"source": str(p), "n_faces": int(len(faces))})


def read_surface_json(path: str | os.PathLike) -> dict:
    """Read a ``surface.json`` written from :meth:`TaggedSurface.to_json_dict`."""
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- centreline clipping
#: Shifts (in radii, along the clip normal) tried when a clip plane cuts more than one loop.
_CLIP_SHIFTS_RADII = (0.0, 0.15, -0.15, 0.3, -0.3)


def _clip_local(mesh, origin: np.ndarray, keep_normal: np.ndarray, beyond: np.ndarray, radius: float, what: str,
                guards=()):
    """:func:`_clip_once` at the plan's plane, or slightly moved along the normal when that cuts several loops.

    A plane through a wall fold or a small tunnel of the lumen cuts a second, tiny loop that
    cannot make a flat cap with the first; a shift of a fraction of the radius avoids it.
    Returns (mesh, origin of the plane used).
    """
    n_unit = np.asarray(keep_normal, float) / np.linalg.norm(keep_normal)
    first = None
    for k, shift in enumerate(_CLIP_SHIFTS_RADII):
        o = np.asarray(origin, float) + shift * float(radius) * n_unit
        try:
            capped, n_loops = _clip_once(mesh, o, n_unit, beyond, radius, what, guards)
        except SurfaceError:
            if k == 0:
                raise
            continue
        if n_loops == 1:
            return capped, o
        if first is None:
            first = (capped, o)
    return first


def _clip_once(mesh, origin: np.ndarray, keep_normal: np.ndarray, beyond: np.ndarray, radius: float, what: str,
               guards=()):
    """Remove the piece of ``mesh`` beyond one clip disc (the piece at ``beyond``) and cap the cut flat.

    Only the faces within a ball of twice the radius plus three edge lengths around ``origin`` are sliced by the
    plane, so a clip cuts its own vessel and no other that the infinite plane would cross.
    Of the surface on the far side of the disc, the connected piece holding the centreline
    point ``beyond`` goes; the cut it leaves is closed by an ear-clipped flat cap. Every point
    of ``guards`` (inside the vessels the other clips keep) must still be inside afterwards.
    Returns (mesh, number of loops capped).
    """
    import trimesh

    n_unit = np.asarray(keep_normal, float) / np.linalg.norm(keep_normal)
    where = f"the {what} clip at {np.round(origin, 1).tolist()} mm (radius {radius:.1f} mm)"
    edge = float(np.median(mesh.edges_unique_length))
    clearance = _CUT_CLEARANCE_EDGE_FRACTION * edge
    rho = 2.0 * float(radius) + 3.0 * edge
    verts = mesh.vertices.copy()
    d = (verts - origin) @ n_unit
    in_ball = np.linalg.norm(verts - origin, axis=1) < rho
    near = (np.abs(d) < clearance) & in_ball
    verts[near] += ((np.where(d[near] >= 0, 1.0, -1.0) * clearance - d[near])[:, None]) * n_unit
    faces = np.asarray(mesh.faces)
    in_s = in_ball[faces].any(axis=1)
    ball_part = trimesh.Trimesh(verts, faces[in_s], process=False)
    rest = trimesh.Trimesh(verts, faces[~in_s], process=False)
    try:
        near_s = trimesh.intersections.slice_mesh_plane(ball_part, n_unit, origin, cap=False)
        far_s = trimesh.intersections.slice_mesh_plane(ball_part, -n_unit, origin, cap=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises assorted errors on degenerate input
        raise SurfaceError(f"cutting the surface at {where} failed: {exc}") from None
    if far_s is None or len(far_s.faces) == 0 or near_s is None or len(near_s.faces) == 0:
        raise SurfaceError(f"{where} does not cross the vessel wall: move the clip point into the lumen")
    others = trimesh.util.concatenate([far_s, rest])
    others.merge_vertices(digits_vertex=6)
    pieces = others.split(only_watertight=False)
    dist = [float(np.min(np.linalg.norm(p.vertices - beyond, axis=1))) for p in pieces]
    go = int(np.argmin(dist))
    kept = trimesh.util.concatenate([near_s] + [p for i, p in enumerate(pieces) if i != go])
    kept.merge_vertices(digits_vertex=6)
    kept.remove_unreferenced_vertices()
    loops = _boundary_loops(kept)
    if not loops:
        raise SurfaceError(f"{where} cut nothing open: the plane misses the vessel")
    far = [lp for lp in loops if np.linalg.norm(kept.vertices[lp].mean(axis=0) - origin) > rho]
    if far:
        c = kept.vertices[far[0]].mean(axis=0)
        raise SurfaceError(f"{where} left an opening at {np.round(c, 1).tolist()} mm: the surface is not closed "
                           "there; move the clip point")
    capped = _cap_loops(kept, loops, origin, n_unit, what)
    lost = [g for g in guards if not _inside(capped, g)]
    if lost:
        raise SurfaceError(
            f"{where} would also remove the modelled vessel at {np.round(lost[0], 1).tolist()} mm: the part "
            "beyond the cut joins the rest again (a touching vessel or chamber, or a cross-section wider than "
            "the clip disc). Move the clip (--inlet-mm / --outlet-mm) to where the vessel is a plain tube")
    return capped, len(loops)


def _crop_to_plan(mask: Volume, plan) -> Volume:
    """The mask with everything outside the box around the kept centreline (and a margin) set to background.

    The surface is then made of the modelled part only, which keeps it small enough to
    decimate and mesh; the clips remove what is left beyond them.
    """
    pts = [np.asarray(c.origin_xyz_mm, float) for c in plan.clips]
    pts += [np.asarray(c.beyond_xyz_mm, float) for c in plan.clips]
    margin = 2.0 * max(float(c.radius_mm) for c in plan.clips) + 4.0
    idx = mask.world_to_index(np.vstack(pts + ([np.vstack(plan.path_points_xyz_mm)] if plan.path_points_xyz_mm
                                                   else [])))
    pad = margin / np.asarray(mask.spacing_mm)
    lo = np.maximum(np.floor(idx.min(axis=0) - pad).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=0) + pad).astype(int) + 1, mask.shape)
    arr = np.zeros_like(np.asarray(mask.array))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    arr[sl] = np.asarray(mask.array)[sl]
    return mask.with_array(arr)


def _inside(mesh, p: np.ndarray) -> bool:
    """Whether point ``p`` lies inside the closed surface (parity of a ray's crossings, Moller-Trumbore)."""
    tri = mesh.triangles
    d = np.array([0.5773, 0.5774, 0.5774])  # a direction unlikely to graze edges of a voxel surface
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    h = np.cross(d, e2)
    a = np.einsum("ij,ij->i", e1, h)
    ok = np.abs(a) > 1e-12
    f = np.where(ok, 1.0 / np.where(ok, a, 1.0), 0.0)
    sv = p - tri[:, 0]
    u = f * np.einsum("ij,ij->i", sv, h)
    q = np.cross(sv, e1)
    v = f * (q @ d)
    t = f * np.einsum("ij,ij->i", e2, q)
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return bool(hit.sum() % 2)


def _clip_to_plan(mesh, plan) -> tuple[Any, list[dict], list[dict], int]:
    """Step 4-5 with a centreline clip plan: clip and cap every end.

    Returns (mesh, inlet + outlet caps, clip report, number of pieces before the largest was kept).

    The first cap returned is the inlet. Caps of closed branches stay wall (not returned as
    openings) and are listed in the report.
    """
    skipped: set[int] = set()
    skip_reason: dict[int, str] = {}
    used_origin = {k: np.asarray(c.origin_xyz_mm, float) for k, c in enumerate(plan.clips)}
    for k, c in enumerate(plan.clips):
        if c.role == "closed" and not _inside(mesh, np.asarray(c.beyond_xyz_mm, float)):
            skipped.add(k)  # already removed with another clip
            continue
        try:
            guards = [np.asarray(o.origin_xyz_mm, float) + 0.5 * float(o.radius_mm) * np.asarray(o.keep_normal_xyz)
                      for j, o in enumerate(plan.clips) if j != k and o.role != "closed"]
            mesh, used_origin[k] = _clip_local(mesh, np.asarray(c.origin_xyz_mm, float),
                                               np.asarray(c.keep_normal_xyz, float), np.asarray(c.beyond_xyz_mm, float),
                                               float(c.radius_mm), f"{c.role} #{k}", guards)
        except SurfaceError as exc:
            if c.role != "closed":
                raise
            # the surface is closed without this cut (the branch keeps its own rounded or padded end)
            skipped.add(k)
            skip_reason[k] = str(exc)
    mesh, n_pieces = _closed_largest_piece(mesh, "the clipped and capped surface")
    scale = float(np.linalg.norm(mesh.extents))
    tol = 1e-6 * max(scale, 1.0)
    normals = mesh.face_normals
    centres = mesh.triangles_center
    taken = np.zeros(len(mesh.faces), bool)
    openings, report = [], []
    for k, c in enumerate(plan.clips):
        o = used_origin[k]
        n = np.asarray(c.keep_normal_xyz, float)
        n = n / np.linalg.norm(n)
        dist = np.abs((mesh.vertices - o) @ n)
        on = ((dist[mesh.faces] < tol).all(axis=1) & (normals @ -n > 0.999) & ~taken
              & (np.linalg.norm(centres - o, axis=1) < 3.0 * float(c.radius_mm) + 1.0))
        groups = [] if k in skipped else _connected_face_groups(mesh, np.flatnonzero(on))
        if not groups:
            if c.role == "closed":
                report.append({**c.to_json_dict(), "applied": False,
                               "why": skip_reason.get(k, "removed with another clip")})
                continue
            raise SurfaceError(f"the {c.role} clip at {np.round(o, 1).tolist()} mm left no cap: the plane "
                               "lies outside the final surface; move the clip point")
        grp = max(groups, key=len)
        taken[grp] = True
        g = _cap_geometry(mesh, grp, -n)
        g["faces"] = grp
        g["plane"] = f"{c.role}{k}"
        report.append({**c.to_json_dict(), "applied": True, "cap_area_mm2": g["area"],
                       "cap_centre_xyz_mm": g["centre"].tolist(),
                       "plane_shift_mm": float((o - np.asarray(c.origin_xyz_mm, float)) @ n)})
        if c.role != "closed":
            openings.append(g)
    if len(openings) < 2 or plan.clips[0].role != "inlet":
        raise SurfaceError(f"the clipped surface has {len(openings)} opening(s): need an inlet and an outlet")
    return mesh, openings, report, n_pieces
