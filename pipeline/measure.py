"""Clinical measurements on segmentations: local thickness of a structure, minimum distance between two.

What it is for: the thickness of a shell-like structure (a cartilage cap, a vessel wall, a
placental bed) and the gap between two structures (placental edge to the internal cervical
os), in millimetres, from binary masks on an anisotropic voxel grid.

Local thickness (Hildebrand & Rüegsegger, *J. Microsc.* 185 (1997) 67–75)
--------------------------------------------------------------------------
The local thickness at a point ``x`` of a structure ``Ω`` is the diameter of the largest
sphere that lies inside ``Ω`` and contains ``x``::

    τ(x) = 2 max{ r : x ∈ B(c, r) ⊆ Ω, c ∈ Ω }.

On the voxel grid (the discrete definition of the paper and of BoneJ / Fiji's "Local
Thickness", Dougherty & Kunzelmann, *Microsc. Microanal.* 13 S02 (2007) 1678):

1. ``r(c)``, the radius of the largest sphere centred on foreground voxel ``c`` holding only
   foreground voxel centres, is the exact Euclidean distance in mm from ``c`` to the nearest
   background voxel centre (``scipy.ndimage.distance_transform_edt`` with
   ``sampling = spacing_mm``, Maurer et al. 2003). The sphere is open: it holds the voxel
   centres ``x`` with ``|x − c| < r(c)``. Outside the array is background.
2. Spheres whose voxel set is contained in the voxel set of a 26-neighbour's sphere cannot
   raise any value and are dropped (the "distance ridge"). Containment is tested on the voxel
   sets, not on the continuous balls: for each radius present, the farthest distance from a
   neighbour offset to the lattice points of the ball is tabulated once.
3. The remaining spheres are taken from the largest down; each gives the value ``2 r`` to the
   foreground voxels inside it that no larger sphere has reached. A voxel is never written
   twice, and a grid row is skipped as soon as it is fully assigned, so each sphere costs
   about the rows it crosses (100³ voxels take about a second).

Everything is computed in mm on the image's own grid (no resampling), so anisotropic voxels
are handled exactly. The values are diameters between voxel *centres*: a slab ``n`` voxels
thick reads ``n`` voxels if ``n`` is even and ``n + 1`` if it is odd (the sphere reaches the
background voxel centres on both sides), and on curved shells the map's median lies within
one voxel above the true thickness (tests/pipeline/test_measure.py: a 4 mm spherical shell
reads 4.47 mm at 1 mm voxels and 4.12–4.24 mm at 0.5 mm voxels).

Minimum distance between two structures
---------------------------------------
The boundary voxels of each mask (:func:`pipeline.metrics.surface_voxels`: in the mask with a
face neighbour outside it) are placed in mm with the spacing, and a k-d tree of one set
(``scipy.spatial.cKDTree``) gives every boundary voxel of the other its nearest partner. The
smallest of these is the distance between the closest boundary voxel centres, exact for the
voxel sets. Because those centres lie inside the true surfaces (by up to about one voxel along
the line joining them), it overestimates the gap between the structures the masks digitise,
by 0.3 to 0.6 of a voxel (measured along that line) on average and at most about 1.7 voxels
over 480 random sphere pairs at 0.5 to 2 mm voxels; it is exact when the surfaces pass
through voxel centres. Masks that share a voxel overlap: the distance is 0.

The sub-voxel estimate (``surface_distance_mm``, the number to report) measures between the
structures' surfaces instead: each mask is smoothed with a Gaussian of ``SURFACE_SIGMA_VOXELS``
voxels per axis and its 0.5 iso-surface taken by marching cubes (scikit-image), which places the
wall between the inside and outside voxel centres with sub-voxel precision where the wall is
oblique or curved (the staircase dithers). Smoothing moves the 0.5 level of a curved wall
inwards by half the Gaussian's variance in the wall's tangent plane times the curvature
(σ²/R on a sphere of radius R for an isotropic σ; the same Gaussian-blur relation the vessel
path corrects for); the curvature is fitted (a sphere, least squares) to the surface within 3
voxels of each closest point and the shift added back, convex or concave. Over 142
random sphere pairs at 0.5–2 mm voxels, isotropic and anisotropic, its error was −0.3 to +0.4
of a voxel along the line (mean +0.01, SD 0.12); tests/pipeline/test_measure.py checks it stays
within half a voxel.
Points are reported as array indices ``(k, j, i)`` and as world ``(x, y, z)`` mm through the
image's origin and direction (:meth:`pipeline.image.Volume.index_to_world`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.image import Volume
from pipeline.metrics import surface_voxels

__all__ = ["MeasureError", "local_thickness", "thickness_statistics", "DistanceResult", "min_distance",
           "THICKNESS_PERCENTILES"]

#: Percentiles of the thickness map reported by :func:`thickness_statistics`.
THICKNESS_PERCENTILES = (5, 25, 75, 95)

#: Relative tolerance of the strict "inside the open sphere" comparisons on squared mm.
_REL_TOL = 1e-12

#: The 7 neighbour-offset patterns up to sign (the lattice ball is symmetric in each axis).
_PATTERNS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]])


class MeasureError(ValueError):
    """A mask or parameter a measurement cannot use (the message says which and why)."""


# --------------------------------------------------------------------------- validation
def _mask(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 3:
        raise MeasureError(f"{name} must be a 3-D mask (z, y, x); got {arr.ndim}-D with shape {arr.shape}")
    if arr.size == 0:
        raise MeasureError(f"{name} is an empty array (shape {arr.shape})")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise MeasureError(f"{name} must be a boolean (or 0/1) mask, got dtype {arr.dtype} with other values; "
                               "select a label first (mask = labels == L)")
        arr = arr.astype(bool)
    return arr


def _spacing(spacing_mm) -> np.ndarray:
    sp = np.asarray(spacing_mm, dtype=float).ravel()
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise MeasureError(f"spacing_mm must be 3 positive voxel sizes in mm (z, y, x), got {spacing_mm!r}")
    return sp


# --------------------------------------------------------------------------- kernels
# Plain Python over arrays and floats; :func:`_jit` compiles them with Numba on first use
# (cached on disk), so importing this module compiles nothing.
def _ridge_kernel(mask, r2, vidx, far2, sz, sy, sx):  # pragma: no cover - runs compiled
    """True where a voxel's sphere is not contained in a 26-neighbour's (see the module docstring)."""
    nz, ny, nx = mask.shape
    keep = np.zeros(mask.shape, np.bool_)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if not mask[z, y, x]:
                    continue
                rp = r2[z, y, x]
                v = vidx[z, y, x]
                ok = True
                for dz in range(-1, 2):
                    zz = z + dz
                    if zz < 0 or zz >= nz or not ok:
                        continue
                    for dy in range(-1, 2):
                        yy = y + dy
                        if yy < 0 or yy >= ny or not ok:
                            continue
                        for dx in range(-1, 2):
                            xx = x + dx
                            if xx < 0 or xx >= nx or (dz == 0 and dy == 0 and dx == 0):
                                continue
                            if not mask[zz, yy, xx]:
                                continue
                            rq = r2[zz, yy, xx]
                            if rq < rp:
                                continue
                            az = abs(dz)
                            ay = abs(dy)
                            ax = abs(dx)
                            m = az + ay + ax
                            if m == 1:
                                k = 0 if az else (1 if ay else 2)
                            elif m == 2:
                                k = 3 if (az and ay) else (4 if az else 5)
                            else:
                                k = 6
                            if far2[v, k] < rq * (1.0 - 1e-12):
                                ok = False
                                break
                keep[z, y, x] = ok
    return keep


def _paint_kernel(mask, out, rowlo, rowhi, cz, cy, cx, cr2, sz, sy, sx):  # pragma: no cover - runs compiled
    """Give ``2 sqrt(cr2)`` to the unassigned foreground voxels inside each sphere, largest first.

    ``rowlo[z, y]``, ``rowhi[z, y]`` bound the unassigned foreground voxels of each grid row
    (``lo >= hi``: row done); they are tightened as voxels are assigned. Returns the number of
    foreground voxels left unassigned (0 when done).
    """
    nz, ny, nx = mask.shape
    left = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(rowlo[z, y], rowhi[z, y]):
                if mask[z, y, x]:
                    left += 1
    for c in range(cz.shape[0]):
        if left == 0:
            break
        kz = cz[c]
        ky = cy[c]
        kx = cx[c]
        r2 = cr2[c] * (1.0 - 1e-12)
        val = 2.0 * np.sqrt(cr2[c])
        hz = int(np.sqrt(r2) / sz)
        for z in range(max(kz - hz, 0), min(kz + hz + 1, nz)):
            dz2 = ((z - kz) * sz) ** 2
            rem = r2 - dz2
            if rem <= 0.0:
                continue
            hy = int(np.sqrt(rem) / sy)
            for y in range(max(ky - hy, 0), min(ky + hy + 1, ny)):
                lo = rowlo[z, y]
                hi = rowhi[z, y]
                if lo >= hi:
                    continue
                dzy = dz2 + ((y - ky) * sy) ** 2
                rem2 = r2 - dzy
                if rem2 <= 0.0:
                    continue
                hx = int(np.sqrt(rem2) / sx)
                x0 = max(kx - hx, lo)
                x1 = min(kx + hx + 1, hi)
                if x0 >= x1:
                    continue
                for x in range(x0, x1):
                    if out[z, y, x] == 0.0 and mask[z, y, x]:
                        if dzy + ((x - kx) * sx) ** 2 < r2:
                            out[z, y, x] = val
                            left -= 1
                while lo < hi and (out[z, y, lo] != 0.0 or not mask[z, y, lo]):
                    lo += 1
                while hi > lo and (out[z, y, hi - 1] != 0.0 or not mask[z, y, hi - 1]):
                    hi -= 1
                rowlo[z, y] = lo
                rowhi[z, y] = hi
    return left


_COMPILED: dict = {}


def _jit(fn):
    """``fn`` compiled with Numba (``cache=True``: compiled once per machine, on first call)."""
    if fn.__name__ not in _COMPILED:
        from numba import njit

        _COMPILED[fn.__name__] = njit(cache=True, nogil=True)(fn)
    return _COMPILED[fn.__name__]


# --------------------------------------------------------------------------- thickness
def _containment_table(r2_values: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """``far2[v, k]``: largest squared distance (mm²) from neighbour pattern ``k`` to the lattice
    points strictly inside radius ``sqrt(r2_values[v])``.

    By the lattice's symmetry in each axis this is the maximum over the non-negative octant of
    ``|(o + δ) s|²``, a running maximum over the octant's points sorted by norm.
    """
    top = float(r2_values.max())
    reach = [int(np.floor(np.sqrt(top) / v)) + 1 for v in sp]
    o = np.stack(np.meshgrid(*[np.arange(n + 1) for n in reach], indexing="ij"), -1).reshape(-1, 3)
    norm2 = ((o * sp) ** 2).sum(axis=1)
    inside = norm2 < top
    o, norm2 = o[inside], norm2[inside]
    order = np.argsort(norm2, kind="stable")
    o, norm2 = o[order], norm2[order]
    count = np.searchsorted(norm2, r2_values * (1.0 - _REL_TOL), side="left")
    far2 = np.zeros((len(r2_values), len(_PATTERNS)))
    for k, d in enumerate(_PATTERNS):
        running = np.maximum.accumulate((((o + d) * sp) ** 2).sum(axis=1))
        far2[:, k] = np.where(count > 0, running[np.maximum(count - 1, 0)], 0.0)
    return far2


def local_thickness(mask, *, spacing_mm) -> np.ndarray:
    """Local thickness map (Hildebrand & Rüegsegger 1997): the diameter in mm of the largest
    sphere inside the structure containing each voxel.

    Parameters
    ----------
    mask : ndarray of bool (or 0/1), shape (nz, ny, nx)
        The structure. Voxels outside the array count as background.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm; anisotropic grids are handled exactly (distances in
        mm, no resampling).

    Returns
    -------
    ndarray of float64, shape (nz, ny, nx)
        Thickness in mm at each voxel of ``mask``, 0 outside it. Values are diameters between
        voxel centres (see the module docstring for what that means for a slab).

    Raises
    ------
    MeasureError
        ``mask`` is not a 3-D boolean mask, is empty of foreground, or ``spacing_mm`` is bad.
    """
    m = _mask(mask, "mask")
    sp = _spacing(spacing_mm)
    if not m.any():
        raise MeasureError("mask has no foreground voxel: nothing to measure (check the label or the file)")
    lo = np.argwhere(m).min(axis=0)
    hi = np.argwhere(m).max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = np.pad(m[box], 1)  # one background layer: outside the array is background

    edt = ndimage.distance_transform_edt(sub, sampling=sp)
    r2 = np.where(sub, edt * edt, 0.0)
    values, inverse = np.unique(r2[sub], return_inverse=True)
    vidx = np.zeros(sub.shape, np.int64)
    vidx[sub] = inverse.ravel()
    far2 = _containment_table(values, sp)
    keep = _jit(_ridge_kernel)(sub, r2, vidx, far2, float(sp[0]), float(sp[1]), float(sp[2]))

    centres = np.argwhere(keep)
    cr2 = r2[keep]
    order = np.argsort(-cr2, kind="stable")
    centres, cr2 = centres[order], np.ascontiguousarray(cr2[order])
    out = np.zeros(sub.shape)
    any_x = sub.any(axis=2)
    rowlo = np.where(any_x, np.argmax(sub, axis=2), 0).astype(np.int64)
    rowhi = np.where(any_x, sub.shape[2] - np.argmax(sub[:, :, ::-1], axis=2), 0).astype(np.int64)
    left = _jit(_paint_kernel)(sub, out, rowlo, rowhi, *(np.ascontiguousarray(centres[:, i]) for i in range(3)),
                               cr2, float(sp[0]), float(sp[1]), float(sp[2]))
    if left:  # cannot happen: every voxel lies in its own sphere
        raise RuntimeError(f"local thickness left {left} voxels without a sphere (a bug)")
    result = np.zeros(m.shape)
    result[box] = out[1:-1, 1:-1, 1:-1]
    return result


def thickness_statistics(thickness_mm, *, spacing_mm) -> dict:
    """Summary of a thickness map over its structure (the voxels with thickness > 0).

    Parameters
    ----------
    thickness_mm : ndarray, shape (nz, ny, nx)
        A map from :func:`local_thickness` (mm; 0 outside the structure).
    spacing_mm : sequence of 3 floats
        Voxel size (mm), for the structure's volume.

    Returns
    -------
    dict
        ``n_voxels``, ``volume_mm3``, ``max_mm``, ``mean_mm``, ``sd_mm``, ``median_mm``,
        ``mode_mm`` (the most frequent value: the map takes discrete values, twice the
        lattice distances), and ``p5_mm``, ``p25_mm``, ``p75_mm``, ``p95_mm`` (NumPy's
        linear-interpolation percentiles). Every voxel has the same volume, so these are
        also the volume-weighted statistics of Hildebrand & Rüegsegger.
    """
    t = np.asarray(thickness_mm, dtype=float)
    sp = _spacing(spacing_mm)
    if t.ndim != 3:
        raise MeasureError(f"thickness_mm must be a 3-D map, got shape {t.shape}")
    v = t[t > 0]
    if v.size == 0:
        raise MeasureError("thickness_mm has no voxel with thickness > 0: the structure is empty")
    vals, counts = np.unique(v, return_counts=True)
    out = {
        "n_voxels": int(v.size),
        "volume_mm3": float(v.size * np.prod(sp)),
        "max_mm": float(v.max()),
        "mean_mm": float(v.mean()),
        "sd_mm": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "median_mm": float(np.median(v)),
        "mode_mm": float(vals[np.argmax(counts)]),
    }
    for q, val in zip(THICKNESS_PERCENTILES, np.percentile(v, THICKNESS_PERCENTILES)):
        out[f"p{q}_mm"] = float(val)
    return out


# --------------------------------------------------------------------------- distance
@dataclass
class DistanceResult:
    """The minimum distance between two structures and where it is attained.

    Attributes
    ----------
    distance_mm : float
        Distance between the closest boundary voxel centres (0 when the masks overlap).
    overlap : bool
        The masks share at least one voxel.
    overlap_voxels, overlap_volume_mm3 : int, float
        Size of the shared region (0 when they do not overlap).
    touching : bool
        The closest boundary voxels are 26-neighbours (or the masks overlap): nothing lies
        between the structures at this resolution.
    index_a, index_b : tuple of int
        Array indices ``(k, j, i)`` of the closest voxel of each mask (the same voxel, the one
        nearest the shared region's centroid, when they overlap).
    point_a_xyz_mm, point_b_xyz_mm : tuple of float
        The same voxel centres in world ``(x, y, z)`` mm.
    voxel_along_line_mm : float
        Length of one voxel along the line joining the two points (the resolution of the
        distance in that direction); the smallest spacing when the points coincide.
    surface_distance_mm : float
        Sub-voxel distance between the two structures' surfaces (see the module docstring;
        within half a voxel of the true gap on the sphere pairs tested), 0 when they overlap.
    surface_point_a_xyz_mm, surface_point_b_xyz_mm : tuple of float
        Its two closest points, on the surfaces, in world ``(x, y, z)`` mm.
    """

    distance_mm: float
    overlap: bool
    overlap_voxels: int
    overlap_volume_mm3: float
    touching: bool
    index_a: tuple
    index_b: tuple
    point_a_xyz_mm: tuple
    point_b_xyz_mm: tuple
    voxel_along_line_mm: float
    spacing_mm: tuple = field(default=(1.0, 1.0, 1.0))
    surface_distance_mm: float = 0.0
    surface_point_a_xyz_mm: tuple = field(default=(0.0, 0.0, 0.0))
    surface_point_b_xyz_mm: tuple = field(default=(0.0, 0.0, 0.0))

    def to_dict(self) -> dict:
        """Plain-Python dict (JSON-ready)."""
        return {
            "distance_mm": float(self.distance_mm),
            "overlap": bool(self.overlap),
            "overlap_voxels": int(self.overlap_voxels),
            "overlap_volume_mm3": float(self.overlap_volume_mm3),
            "touching": bool(self.touching),
            "index_a_kji": [int(v) for v in self.index_a],
            "index_b_kji": [int(v) for v in self.index_b],
            "point_a_xyz_mm": [float(v) for v in self.point_a_xyz_mm],
            "point_b_xyz_mm": [float(v) for v in self.point_b_xyz_mm],
            "voxel_along_line_mm": float(self.voxel_along_line_mm),
            "spacing_mm": [float(v) for v in self.spacing_mm],
            "surface_distance_mm": float(self.surface_distance_mm),
            "surface_point_a_xyz_mm": [float(v) for v in self.surface_point_a_xyz_mm],
            "surface_point_b_xyz_mm": [float(v) for v in self.surface_point_b_xyz_mm],
        }


#: Gaussian smoothing (voxels, per axis) before the sub-voxel surfaces of :func:`min_distance`.
SURFACE_SIGMA_VOXELS = 1.0


def _smoothed_surface(mask: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Vertices (array-axis mm, from voxel [0,0,0]'s centre) of the 0.5 iso-surface of the mask
    smoothed by ``SURFACE_SIGMA_VOXELS``, computed on the mask's bounding box plus a margin."""
    from skimage.measure import marching_cubes

    pad = int(np.ceil(4 * SURFACE_SIGMA_VOXELS)) + 1
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    sub = np.pad(mask[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32), pad)
    f = ndimage.gaussian_filter(sub, SURFACE_SIGMA_VOXELS)
    if f.max() <= 0.5:  # (a structure thinner than the smoothing: its own voxel centres stand in)
        return idx * sp
    verts, *_ = marching_cubes(f, 0.5, spacing=tuple(sp))
    return verts + (lo - pad) * sp


def _blur_shift_mm(verts: np.ndarray, p: np.ndarray, q: np.ndarray, sp: np.ndarray) -> float:
    """How far smoothing moved the surface at ``p`` towards its inside, along the line to ``q``:
    σ_n²/R from a sphere fitted to the vertices within 3 voxels of ``p`` (negative where the
    surface is concave towards ``q``; 0 where the fit fails or the surface is flat)."""
    near = verts[np.linalg.norm(verts - p, axis=1) <= 3.0 * sp.max()]
    n = q - p
    if len(near) < 10 or not np.linalg.norm(n) > 0:
        return 0.0
    n = n / np.linalg.norm(n)
    A = np.c_[2.0 * near, np.ones(len(near))]
    sol, *_ = np.linalg.lstsq(A, (near ** 2).sum(axis=1), rcond=None)
    centre = sol[:3]
    r2 = sol[3] + centre @ centre
    if not r2 > 0:
        return 0.0
    # a Gaussian of covariance S moves a wall of curvature 1/R by tr(S restricted to the wall's
    # tangent plane) / (2R) = (tr S - n.S.n) / (2R); isotropic: sigma^2 / R
    var = (SURFACE_SIGMA_VOXELS * sp) ** 2
    tangential = float(var.sum() - (var * n * n).sum())
    return tangential / (2.0 * float(np.sqrt(r2))) * (1.0 if (centre - p) @ n < 0 else -1.0)


def min_distance(a, b, *, spacing_mm, origin_xyz_mm=(0.0, 0.0, 0.0), direction_xyz=None) -> DistanceResult:
    """Minimum distance in mm between two structures on the same grid, and the closest points.

    Parameters
    ----------
    a, b : ndarray of bool (or 0/1), same shape (nz, ny, nx)
        The two structures.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    origin_xyz_mm : sequence of 3 floats, optional
        World position (x, y, z) in mm of voxel ``[0, 0, 0]`` (as :class:`pipeline.image.Volume`).
    direction_xyz : (3, 3) array, optional
        ITK direction matrix (default identity).

    Returns
    -------
    DistanceResult
        See the module docstring for the accuracy (0 to about 1.7 voxels, on average about
        half a voxel, above the gap between the structures the masks digitise).

    Raises
    ------
    MeasureError
        A mask is not 3-D boolean, is empty, the shapes differ, or the spacing is bad.
    """
    ma, mb = _mask(a, "a"), _mask(b, "b")
    if ma.shape != mb.shape:
        raise MeasureError(f"a has shape {ma.shape} but b has shape {mb.shape}: they must be on the same grid")
    sp = _spacing(spacing_mm)
    for name, m in (("a", ma), ("b", mb)):
        if not m.any():
            raise MeasureError(f"mask {name} has no foreground voxel: nothing to measure from")
    grid = Volume(np.zeros((1, 1, 1), np.uint8), tuple(sp), origin_xyz_mm,
                  np.eye(3) if direction_xyz is None else direction_xyz)

    both = ma & mb
    n_overlap = int(np.count_nonzero(both))
    if n_overlap:
        idx = np.argwhere(both)
        centroid = idx.mean(axis=0)
        ia = ib = idx[np.argmin((((idx - centroid) * sp) ** 2).sum(axis=1))]
        dist, along, touching = 0.0, float(sp.min()), True
    else:
        from scipy.spatial import cKDTree

        sa, sb = np.argwhere(surface_voxels(ma)), np.argwhere(surface_voxels(mb))
        dd, nearest = cKDTree(sb * sp).query(sa * sp)
        k = int(np.argmin(dd))
        ia, ib = sa[k], sb[nearest[k]]
        dist = float(dd[k])
        step = np.abs(ib - ia) * sp / dist  # |direction cosines| of the line a -> b
        along = float(np.min(sp[step > 0] / step[step > 0]))  # a voxel's chord through its centre along it
        touching = bool(np.all(np.abs(ib - ia) <= 1))
    pa, pb = grid.index_to_world(ia.astype(float)), grid.index_to_world(ib.astype(float))
    if n_overlap:
        sdist, qa, qb = 0.0, pa, pb
    else:
        from scipy.spatial import cKDTree

        va, vb = _smoothed_surface(ma, sp), _smoothed_surface(mb, sp)
        dd, nearest = cKDTree(vb).query(va)
        k = int(np.argmin(dd))
        xa, xb = va[k], vb[nearest[k]]
        sdist = max(0.0, float(dd[k]) - _blur_shift_mm(va, xa, xb, sp) - _blur_shift_mm(vb, xb, xa, sp))
        qa, qb = grid.index_to_world(xa / sp), grid.index_to_world(xb / sp)
    return DistanceResult(
        surface_distance_mm=sdist, surface_point_a_xyz_mm=tuple(float(v) for v in qa),
        surface_point_b_xyz_mm=tuple(float(v) for v in qb),
        distance_mm=dist, overlap=bool(n_overlap), overlap_voxels=n_overlap,
        overlap_volume_mm3=float(n_overlap * np.prod(sp)), touching=touching,
        index_a=tuple(int(v) for v in ia), index_b=tuple(int(v) for v in ib),
        point_a_xyz_mm=tuple(float(v) for v in pa), point_b_xyz_mm=tuple(float(v) for v in pb),
        voxel_along_line_mm=along, spacing_mm=tuple(float(v) for v in sp),
    )
