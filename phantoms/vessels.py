"""Synthetic CT angiograms of vessels with exactly known lumen geometry.

This is digipat's built-in demo patient and the test fixture of the whole vessel path
(segmentation → surface → mesh → flow): every image comes with its ground-truth lumen
mask, centrelines, radii and analytic cross-section areas.

Geometry (all world coordinates ``(x, y, z)`` in mm, identity direction matrix)
--------------------------------------------------------------------------------
Every branch has an *axis* that is a smooth planar curve ``x = X(z)`` in the plane
``y = y_c`` (the middle of the image in y). A point ``p`` is assigned the arc-length
coordinate ``s`` of its nearest axis point ``a(s)``; the lumen of the branch is

.. math::  \\Omega_b = \\{ p : \\lVert p - a(s) - o(s)\\,\\hat y \\rVert < r(s) \\},

i.e. in the plane normal to the axis at ``s`` the lumen is *exactly* a disk of radius
``r(s)`` whose centre is shifted by ``o(s)`` along ``ŷ`` (always normal to an in-plane
axis). The cross-section area normal to the axis is therefore exactly ``π r(s)²``, and
because the centroid of each disk moves only along ``ŷ`` the volume of a tube segment is
``∫ π r(s)² ds`` (Pappus' centroid theorem). The nearest-point projection is unique
because every radius stays well below the smallest axis curvature radius. Ends of an axis
that lie inside the image (the bifurcation junction) are closed by the sphere of radius
``r`` that the clamped projection produces; the lumen of a vessel tree is the union of
its branches.

* ``"straight"``: one axis along z through the middle of the image.
* ``"curved"``: an S-curve in the x–z plane,
  ``X(z) = x_c + A (u - 1/2 - sin(2πu)/(2π))`` with ``u`` running 0 → 1 over the central
  ``length_fraction`` of the z field of view (straight outside). ``X' = X'' = 0`` at both
  ends of the curved part, so the vessel crosses both z faces along z. The amplitude is
  the largest that keeps the lumen two radii from the x faces and the curvature radius
  ``≥ 5 r``.
* ``"bifurcation"``: a parent of radius ``r_p`` along z up to the junction at mid-volume,
  then two daughters of radius ``r_d = r_p / 2^{1/3}`` (Murray's law, Murray 1926,
  PNAS 12:207) that leave the junction at ``±angle/2`` and bend back parallel to z along
  ``X = x_c ± D (1 - (1-u)²)``, both leaving through the last z slice.

Every vessel enters the image through the first z slice and leaves through the last; the
axes are extended straight beyond both faces so that the end slices are clean crop planes.

Stenosis (parent branch only): the lumen *area* follows a raised-cosine profile,

.. math::  A(s) = \\pi r_0^2 \\left[1 - a\\,\\tfrac12\\left(1 + \\cos\\tfrac{2\\pi(s-s_0)}{L}\\right)\\right],
           \\quad |s - s_0| < L/2,

so ``r(s) = r_0 \\sqrt{1 - a b(s)}`` and the throat keeps ``(1 - a)`` of the area. An
eccentricity ``e`` moves the lumen centre by ``o(s) = e (r_0 - r(s))`` along ``+ŷ``:
with ``e = 1`` the plaque lies entirely on the ``-ŷ`` side and the lumen touches the
original wall on the ``+ŷ`` side.

Calcification (parent branch only): a crescent of radial thickness ``t`` just outside the
original wall, ``r_0 ≤ |p - a(s)| ≤ r_0 + t``, within ±60° of ``-ŷ`` (the plaque side)
and ``|s - s_c| ≤ L/2``. It is never part of the lumen mask.

Image formation
---------------
1. Truth mask: a voxel is lumen when its centre is inside the lumen (signed distance < 0).
2. Partial volume: lumen fraction ``f = clip(1/2 - d/h, 0, 1)`` with ``d`` the signed
   distance to the wall measured in the normal plane and ``h = Σ_a |n_a| Δ_a`` the width
   of the voxel along the wall normal ``n`` (exact at ``d = 0`` for a planar wall and
   unbiased to first order, so the summed fraction reproduces the lumen volume).
3. ``HU = tissue + f (lumen - tissue) + f_cal (cal - tissue)``, ``f_cal ≤ 1 - f``.
4. Gaussian point-spread function with the given FWHM (``σ = FWHM / (2 √(2 ln 2))``, per
   axis in voxels), ``mode="nearest"`` at the borders.
5. White Gaussian noise of standard deviation ``noise_hu`` from
   ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline.image import Volume

__all__ = [
    "VesselGeometryError",
    "Stenosis",
    "Calcification",
    "SyntheticAngiogram",
    "make_angiogram",
    "GEOMETRIES",
    "MURRAY_RATIO",
]

GEOMETRIES = ("straight", "curved", "bifurcation")
#: daughter / parent radius for a symmetric bifurcation under Murray's law (r_p³ = 2 r_d³)
MURRAY_RATIO = 2.0 ** (-1.0 / 3.0)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_CLEARANCE_RADII = 2.0  # lumen keeps this many radii from the x / y faces
_MIN_CURVATURE_RADII = 5.0  # smallest axis curvature radius, in vessel radii
_CALC_HALF_ANGLE_RAD = math.radians(60.0)


class VesselGeometryError(ValueError):
    """Parameters that do not describe a valid synthetic vessel image (the message says why)."""


def _finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise VesselGeometryError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise VesselGeometryError(f"{name} must be a finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class Stenosis:
    """A smooth narrowing of the parent vessel.

    Parameters
    ----------
    area_reduction : float
        Fraction of the lumen *area* removed at the throat, ``0 <= a < 0.95``.
    length_mm : float
        Axial (arc-length) extent of the raised-cosine narrowing in mm, > 0.
    position : float
        Centre of the narrowing as a fraction of the parent centreline arc length inside
        the image, in ``[0, 1]``.
    eccentricity : float
        0 = concentric; 1 = plaque entirely on one side (``-y``): the lumen centre moves by
        ``eccentricity * (r0 - r(s))`` towards ``+y``.
    """

    area_reduction: float
    length_mm: float
    position: float = 0.5
    eccentricity: float = 0.0

    def __post_init__(self) -> None:
        a = _finite(self.area_reduction, "Stenosis.area_reduction")
        if not 0.0 <= a < 0.95:
            raise VesselGeometryError(f"Stenosis.area_reduction must be in [0, 0.95), got {a}")
        length = _finite(self.length_mm, "Stenosis.length_mm")
        if length <= 0:
            raise VesselGeometryError(f"Stenosis.length_mm must be > 0 mm, got {length}")
        p = _finite(self.position, "Stenosis.position")
        if not 0.0 <= p <= 1.0:
            raise VesselGeometryError(f"Stenosis.position must be in [0, 1] (fraction of arc length), got {p}")
        e = _finite(self.eccentricity, "Stenosis.eccentricity")
        if not 0.0 <= e <= 1.0:
            raise VesselGeometryError(f"Stenosis.eccentricity must be in [0, 1], got {e}")


@dataclass(frozen=True)
class Calcification:
    """A calcified crescent in the parent vessel wall, just outside the lumen.

    Parameters
    ----------
    position : float
        Centre as a fraction of the parent centreline arc length inside the image, [0, 1].
    length_mm : float
        Axial extent in mm, > 0.
    thickness_mm : float
        Radial thickness in mm outside the original (unstenosed) wall, > 0.
    hu : float
        CT number of the calcium in HU.
    """

    position: float = 0.5
    length_mm: float = 3.0
    thickness_mm: float = 0.6
    hu: float = 900.0

    def __post_init__(self) -> None:
        p = _finite(self.position, "Calcification.position")
        if not 0.0 <= p <= 1.0:
            raise VesselGeometryError(f"Calcification.position must be in [0, 1], got {p}")
        for name in ("length_mm", "thickness_mm"):
            v = _finite(getattr(self, name), f"Calcification.{name}")
            if v <= 0:
                raise VesselGeometryError(f"Calcification.{name} must be > 0 mm, got {v}")
        _finite(self.hu, "Calcification.hu")


@dataclass
class SyntheticAngiogram:
    """A synthetic CT angiogram and its exact truth.

    Attributes
    ----------
    image : Volume
        float32 CT numbers in HU.
    lumen : Volume
        uint8 ground-truth lumen mask (1 where the voxel centre is inside the lumen).
    centrelines_xyz_mm : list of ndarray, shape (N, 3)
        Lumen centres (axis plus eccentric shift) in world (x, y, z) mm, one array per
        branch: index 0 is the parent (or the only vessel), 1 and 2 the daughters (-x, +x).
        Sampled at every image slice z inside the branch; bifurcation branches also hold
        the junction point.
    radii_mm : list of ndarray, shape (N,)
        Lumen radius at those points (after any stenosis), mm.
    params : dict
        Every parameter used, and the derived geometry, JSON-serialisable (incl. seed).
    arc_length_mm : list of ndarray, shape (N,)
        Arc length along the branch axis at those points, mm (parent: 0 at the first
        slice; daughters: 0 at the junction).
    """

    image: Volume
    lumen: Volume
    centrelines_xyz_mm: list[np.ndarray]
    radii_mm: list[np.ndarray]
    params: dict
    arc_length_mm: list[np.ndarray] = field(default_factory=list)

    def lumen_area_mm2(self, branch: int = 0) -> np.ndarray:
        """Analytic lumen cross-section area (mm²) normal to the axis at the centreline points.

        Parameters
        ----------
        branch : int
            Branch index, ``0 <= branch < len(self.radii_mm)``.
        """
        if not isinstance(branch, (int, np.integer)) or not 0 <= branch < len(self.radii_mm):
            raise VesselGeometryError(
                f"branch must be an integer in [0, {len(self.radii_mm) - 1}], got {branch!r}"
            )
        return math.pi * np.asarray(self.radii_mm[branch], dtype=float) ** 2


# ----------------------------------------------------------------------------- geometry
@dataclass
class _Branch:
    """One vessel branch: axis x = X(z) in the plane y = y_c, radius law along arc length."""

    z_lo: float  # axis runs over z in [z_lo, z_hi] (world mm)
    z_hi: float
    x_of_z: object  # vectorised callable z -> x
    r0: float
    s_shift: float = 0.0  # arc length at z = z_ref is 0
    stenosis: Stenosis | None = None
    stenosis_s0: float = 0.0
    verts: np.ndarray | None = None  # (M, 2) polyline in (z, x)
    cum_s: np.ndarray | None = None  # (M,) arc length at the vertices

    def build(self, step_mm: float, z_ref: float) -> None:
        n = max(int(math.ceil((self.z_hi - self.z_lo) / step_mm)) + 1, 2)
        z = np.linspace(self.z_lo, self.z_hi, n)
        x = np.asarray(self.x_of_z(z), dtype=float)
        self.verts = np.column_stack([z, x])
        seg = np.hypot(np.diff(z), np.diff(x))
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        self.s_shift = float(np.interp(z_ref, z, cum))
        self.cum_s = cum - self.s_shift

    def s_at_z(self, z: np.ndarray) -> np.ndarray:
        return np.interp(z, self.verts[:, 0], self.cum_s)

    def radius(self, s: np.ndarray) -> np.ndarray:
        r = np.full(np.shape(s), self.r0, dtype=float)
        st = self.stenosis
        if st is not None and st.area_reduction > 0:
            u = (np.asarray(s, dtype=float) - self.stenosis_s0) / st.length_mm
            bump = np.where(np.abs(u) < 0.5, 0.5 * (1.0 + np.cos(2.0 * np.pi * u)), 0.0)
            r = self.r0 * np.sqrt(1.0 - st.area_reduction * bump)
        return r

    def offset(self, s: np.ndarray, r: np.ndarray) -> np.ndarray:
        e = 0.0 if self.stenosis is None else self.stenosis.eccentricity
        return e * (self.r0 - r)

    def project(self, pts_zx: np.ndarray):
        """Nearest point on the axis polyline: arc length s and the vector p - a(s) (z, x)."""
        v, cum = self.verts, self.cum_s
        m = len(v)
        _, i = cKDTree(v).query(pts_zx)
        best_d2 = np.full(len(pts_zx), np.inf)
        best_s = np.zeros(len(pts_zx))
        best_w = np.zeros_like(pts_zx)
        for j0 in (i - 1, i):
            j = np.clip(j0, 0, m - 2)
            a, b = v[j], v[j + 1]
            ab = b - a
            l2 = np.einsum("ij,ij->i", ab, ab)
            t = np.clip(np.einsum("ij,ij->i", pts_zx - a, ab) / l2, 0.0, 1.0)
            w = pts_zx - (a + t[:, None] * ab)
            d2 = np.einsum("ij,ij->i", w, w)
            better = d2 < best_d2
            best_d2 = np.where(better, d2, best_d2)
            best_s = np.where(better, cum[j] + t * np.sqrt(l2), best_s)
            best_w = np.where(better[:, None], w, best_w)
        return best_s, best_w


def _s_curve(x_c: float, amp: float, z_a: float, z_b: float):
    def x_of_z(z):
        u = np.clip((np.asarray(z, dtype=float) - z_a) / (z_b - z_a), 0.0, 1.0)
        return x_c + amp * (u - 0.5 - np.sin(2.0 * np.pi * u) / (2.0 * np.pi))

    return x_of_z


def _daughter(x_c: float, sign: float, dist: float, z_j: float, l_curve: float):
    def x_of_z(z):
        u = np.clip((np.asarray(z, dtype=float) - z_j) / l_curve, 0.0, 1.0)
        return x_c + sign * dist * (1.0 - (1.0 - u) ** 2)

    return x_of_z


def _validate(geometry, shape_zyx, spacing_mm, radius_mm, length_fraction, stenosis,
              calcification, lumen_hu, tissue_hu, psf_fwhm_mm, noise_hu, origin_xyz_mm,
              seed, bifurcation_angle_deg):
    if geometry not in GEOMETRIES:
        raise VesselGeometryError(f"geometry must be one of {list(GEOMETRIES)}, got {geometry!r}")
    try:
        shape = tuple(int(n) for n in shape_zyx)
        ok = len(shape) == 3 and all(float(a) == b for a, b in zip(shape_zyx, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(shape) < 8:
        raise VesselGeometryError(f"shape_zyx must be three integers >= 8 (nz, ny, nx), got {shape_zyx!r}")
    try:
        spacing = tuple(float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise VesselGeometryError(
            f"spacing_mm must be three positive finite numbers (dz, dy, dx) in mm, got {spacing_mm!r}")
    try:
        origin = tuple(float(v) for v in origin_xyz_mm)
    except (TypeError, ValueError):
        origin = ()
    if len(origin) != 3 or not all(math.isfinite(v) for v in origin):
        raise VesselGeometryError(f"origin_xyz_mm must be three finite numbers (x, y, z) mm, got {origin_xyz_mm!r}")
    r = _finite(radius_mm, "radius_mm")
    if r <= 0:
        raise VesselGeometryError(f"radius_mm must be > 0, got {r}")
    lf = _finite(length_fraction, "length_fraction")
    if not 0.0 < lf <= 1.0:
        raise VesselGeometryError(f"length_fraction must be in (0, 1], got {lf}")
    if stenosis is not None and not isinstance(stenosis, Stenosis):
        raise VesselGeometryError(f"stenosis must be a Stenosis or None, got {type(stenosis).__name__}")
    if calcification is not None and not isinstance(calcification, Calcification):
        raise VesselGeometryError(
            f"calcification must be a Calcification or None, got {type(calcification).__name__}")
    for name, v in (("lumen_hu", lumen_hu), ("tissue_hu", tissue_hu)):
        _finite(v, name)
    psf = _finite(psf_fwhm_mm, "psf_fwhm_mm")
    if psf < 0:
        raise VesselGeometryError(f"psf_fwhm_mm must be >= 0 mm (0 = no blur), got {psf}")
    noise = _finite(noise_hu, "noise_hu")
    if noise < 0:
        raise VesselGeometryError(f"noise_hu must be >= 0 HU, got {noise}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VesselGeometryError(f"seed must be a non-negative integer, got {seed!r}")
    ang = _finite(bifurcation_angle_deg, "bifurcation_angle_deg")
    if not 10.0 <= ang <= 90.0:
        raise VesselGeometryError(f"bifurcation_angle_deg must be in [10, 90] degrees, got {ang}")
    return shape, spacing, origin, r, lf, psf, noise, ang


def _layout(geometry, shape, spacing, origin, r, lf, stenosis, angle_deg):
    """Build the branches and the derived geometry dict (world mm)."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    ox, oy, oz = origin
    z0, z1 = oz, oz + (nz - 1) * dz
    x_lo, x_hi = ox, ox + (nx - 1) * dx
    y_lo, y_hi = oy, oy + (ny - 1) * dy
    x_c, y_c = 0.5 * (x_lo + x_hi), 0.5 * (y_lo + y_hi)
    half_x, half_y = 0.5 * (x_hi - x_lo), 0.5 * (y_hi - y_lo)
    need = (1.0 + _CLEARANCE_RADII) * r
    if half_x < need or half_y < need:
        raise VesselGeometryError(
            f"radius_mm={r} does not fit: the lumen must keep {_CLEARANCE_RADII:g} radii from the x/y faces, "
            f"which needs a half-width of {need:.3g} mm, but the image half-width is {half_x:.3g} mm in x "
            f"and {half_y:.3g} mm in y (shape_zyx={shape}, spacing_mm={spacing}); use a smaller "
            "radius_mm or a larger shape_zyx / spacing_mm")
    length_z = z1 - z0
    z_mid = 0.5 * (z0 + z1)
    z_a, z_b = z_mid - 0.5 * lf * length_z, z_mid + 0.5 * lf * length_z
    ext = 3.0 * r + 2.0 * max(spacing)
    derived: dict = {"centre_x_mm": x_c, "centre_y_mm": y_c, "feature_z_range_mm": [z_a, z_b]}
    if geometry == "straight":
        branches = [_Branch(z0 - ext, z1 + ext, lambda z: np.full(np.shape(z), x_c), r)]
    elif geometry == "curved":
        lf_len = z_b - z_a
        amp = min(2.0 * (half_x - need), lf_len ** 2 / (2.0 * math.pi * _MIN_CURVATURE_RADII * r))
        if amp < r:
            raise VesselGeometryError(
                f"a curved vessel of radius_mm={r} needs more room: the S-curve amplitude would be "
                f"{amp:.3g} mm (< one radius); enlarge shape_zyx (x and z), length_fraction={lf} or "
                "reduce radius_mm")
        derived.update(curve_amplitude_mm=amp,
                       min_curvature_radius_mm=lf_len ** 2 / (2.0 * math.pi * amp))
        branches = [_Branch(z0 - ext, z1 + ext, _s_curve(x_c, amp, z_a, z_b), r)]
    else:  # bifurcation
        r_d = r * MURRAY_RATIO
        z_j = z_mid
        half = math.radians(0.5 * angle_deg)
        d_max = half_x - (1.0 + _CLEARANCE_RADII) * r_d
        l_curve = min(0.7 * (z_b - z_j), 2.0 * d_max / math.tan(half))
        dist = 0.5 * l_curve * math.tan(half)
        if dist < 1.2 * r_d or l_curve <= 0:
            raise VesselGeometryError(
                f"a bifurcation of radius_mm={r} does not fit: the daughters (radius {r_d:.3g} mm) would end "
                f"only {dist:.3g} mm from the mid-line (need >= {1.2 * r_d:.3g} mm); enlarge shape_zyx "
                f"(x and z), length_fraction={lf} or reduce radius_mm")
        derived.update(junction_z_mm=z_j, daughter_radius_mm=r_d, daughter_offset_mm=dist,
                       daughter_curve_length_z_mm=l_curve, bifurcation_angle_deg=angle_deg)
        branches = [_Branch(z0 - ext, z_j, lambda z: np.full(np.shape(z), x_c), r)]
        for sign in (-1.0, 1.0):
            branches.append(_Branch(z_j, z1 + ext, _daughter(x_c, sign, dist, z_j, l_curve), r_d))
    step = min(spacing) / 20.0
    for k, b in enumerate(branches):
        b.build(step, z0 if k == 0 else b.z_lo)
    parent = branches[0]
    derived["parent_arc_length_mm"] = float(parent.s_at_z(np.array(parent.z_hi if geometry == "bifurcation" else z1)))
    if stenosis is not None:
        parent.stenosis = stenosis
        parent.stenosis_s0 = stenosis.position * derived["parent_arc_length_mm"]
        derived["stenosis_centre_arc_mm"] = parent.stenosis_s0
    return branches, derived, (x_c, y_c)


# ----------------------------------------------------------------------------- public
def make_angiogram(geometry: str = "straight", *, shape_zyx=(96, 64, 64), spacing_mm=(0.5, 0.4, 0.4),
                   radius_mm: float = 2.0, length_fraction: float = 1.0,
                   stenosis: Stenosis | None = None, calcification: Calcification | None = None,
                   lumen_hu: float = 400.0, tissue_hu: float = 40.0, psf_fwhm_mm: float = 0.6,
                   noise_hu: float = 15.0, origin_xyz_mm=(0.0, 0.0, 0.0), seed: int = 0,
                   bifurcation_angle_deg: float = 50.0) -> SyntheticAngiogram:
    """Generate a synthetic CT angiogram with its exact lumen truth.

    Parameters
    ----------
    geometry : {"straight", "curved", "bifurcation"}
        Vessel layout (see the module docstring).
    shape_zyx : tuple of 3 int
        Image size ``(nz, ny, nx)``, each >= 8.
    spacing_mm : tuple of 3 float
        Voxel size ``(dz, dy, dx)`` in mm (anisotropic allowed).
    radius_mm : float
        Lumen radius of the (parent) vessel in mm; must leave two radii to the x/y faces.
    length_fraction : float
        Fraction (0, 1] of the z field of view, centred, over which the curve or the
        bifurcation is laid out; outside it the vessels run straight along z (flow
        extensions). No effect on ``"straight"``.
    stenosis : Stenosis, optional
        Narrowing of the parent vessel.
    calcification : Calcification, optional
        Calcified crescent in the parent vessel wall.
    lumen_hu, tissue_hu : float
        CT numbers (HU) of contrast-filled lumen and surrounding tissue.
    psf_fwhm_mm : float
        Full width at half maximum of the Gaussian scanner blur in mm (0 = none).
    noise_hu : float
        Standard deviation of the additive white Gaussian noise in HU (0 = none).
    origin_xyz_mm : tuple of 3 float
        World position (x, y, z) mm of the centre of voxel [0, 0, 0].
    seed : int
        Seed of ``numpy.random.default_rng`` for the noise.
    bifurcation_angle_deg : float
        Total angle between the daughters where they leave the junction, degrees [10, 90].

    Returns
    -------
    SyntheticAngiogram

    Raises
    ------
    VesselGeometryError
        A parameter is invalid or the vessel does not fit in the image.
    """
    shape, spacing, origin, r, lf, psf, noise, angle = _validate(
        geometry, shape_zyx, spacing_mm, radius_mm, length_fraction, stenosis, calcification,
        lumen_hu, tissue_hu, psf_fwhm_mm, noise_hu, origin_xyz_mm, seed, bifurcation_angle_deg)
    branches, derived, (x_c, y_c) = _layout(geometry, shape, spacing, origin, r, lf, stenosis, angle)
    (nz, ny, nx), (dz, dy, dx), (ox, oy, oz) = shape, spacing, origin
    z, y, x = oz + dz * np.arange(nz), oy + dy * np.arange(ny), ox + dx * np.arange(nx)

    # y band that can hold lumen or calcium; everything else is tissue
    j0, j1 = _lumen_band(y_c, r, calcification, shape, spacing, origin)
    d_min, h_min, f_cal, s_cal = _wall_distance(branches, z, y[j0:j1] - y_c, x, spacing, calcification,
                                                derived["parent_arc_length_mm"])
    if s_cal is not None:
        derived["calcification_centre_arc_mm"] = s_cal
    lumen, hu = _render(shape, j0, j1, d_min, h_min, f_cal, lumen_hu, tissue_hu, calcification)
    hu = _blur_and_noise(hu, spacing, psf, noise, seed)
    centrelines, radii, arcs = _centrelines(branches, z, y_c, geometry)

    params = {
        "generator": "phantoms.vessels.make_angiogram",
        "schema_version": 1,
        "geometry": geometry,
        "shape_zyx": list(shape),
        "spacing_mm": list(spacing),
        "radius_mm": r,
        "length_fraction": lf,
        "stenosis": None if stenosis is None else asdict(stenosis),
        "calcification": None if calcification is None else asdict(calcification),
        "lumen_hu": float(lumen_hu),
        "tissue_hu": float(tissue_hu),
        "psf_fwhm_mm": psf,
        "noise_hu": noise,
        "origin_xyz_mm": list(origin),
        "seed": int(seed),
        "bifurcation_angle_deg": angle,
        "derived": {k: (float(v) if not isinstance(v, list) else [float(t) for t in v])
                    for k, v in derived.items()},
    }
    return SyntheticAngiogram(
        image=Volume(hu.astype(np.float32, copy=False), spacing_mm=spacing, origin_xyz_mm=origin),
        lumen=Volume(lumen, spacing_mm=spacing, origin_xyz_mm=origin),
        centrelines_xyz_mm=centrelines,
        radii_mm=radii,
        params=params,
        arc_length_mm=arcs,
    )


# ----------------------------------------------------------------------------- stages of make_angiogram
def _lumen_band(y_c: float, r: float, calcification, shape, spacing, origin) -> tuple[int, int]:
    """Index range [j0, j1) along y of the slab that can hold lumen or calcium (the rest is tissue)."""
    ny = shape[1]
    dz, dy, dx = spacing
    oy = origin[1]
    t_cal = calcification.thickness_mm if calcification is not None else 0.0
    band = r + t_cal + dz + dy + dx
    j0 = max(int(math.floor((y_c - band - oy) / dy)), 0)
    j1 = min(int(math.ceil((y_c + band - oy) / dy)) + 1, ny)
    return j0, j1


def _wall_distance(branches, z: np.ndarray, y_rel: np.ndarray, x: np.ndarray, spacing, calcification,
                   parent_arc_mm: float):
    """Signed distance to the lumen wall (mm, < 0 inside) over the band, the voxel width along the wall
    normal (mm), and the calcium fraction with its centre arc length (mm) or None, None."""
    dz, dy, dx = spacing
    nz, nb, nx = len(z), len(y_rel), len(x)
    yb = y_rel[None, :, None]
    zz, xx = np.meshgrid(z, x, indexing="ij")
    pts = np.column_stack([zz.ravel(), xx.ravel()])

    d_min = np.full((nz, nb, nx), np.inf)
    h_min = np.ones_like(d_min)
    f_cal, s_cal = None, None
    for k, b in enumerate(branches):
        s, w = b.project(pts)
        s = s.reshape(nz, nx)[:, None, :]
        wz = w[:, 0].reshape(nz, nx)[:, None, :]
        wx = w[:, 1].reshape(nz, nx)[:, None, :]
        rad = b.radius(s)
        wy = yb - b.offset(s, rad)
        rho = np.sqrt(wz ** 2 + wx ** 2 + wy ** 2)
        d = rho - rad
        h = (np.abs(wz) * dz + np.abs(wy) * dy + np.abs(wx) * dx) / np.maximum(rho, 1e-12)
        better = d < d_min
        d_min = np.where(better, d, d_min)
        h_min = np.where(better, h, h_min)
        if k == 0 and calcification is not None:
            f_cal, s_cal = _calcium_fraction(b, s, wz, wx, yb, spacing, calcification, parent_arc_mm)
    h_min = np.maximum(h_min, 1e-6 * min(spacing))
    return d_min, h_min, f_cal, s_cal


def _calcium_fraction(b: _Branch, s, wz, wx, yb, spacing, c: Calcification, parent_arc_mm: float):
    """Partial-volume fraction of the calcified crescent around the parent branch, and its centre arc (mm)."""
    dz, dy, dx = spacing
    s_c = c.position * parent_arc_mm
    rho0 = np.sqrt(wz ** 2 + wx ** 2 + yb ** 2)
    phi = np.arccos(np.clip(-yb / np.maximum(rho0, 1e-12), -1.0, 1.0))
    d_c = np.maximum(np.maximum(b.r0 - rho0, rho0 - b.r0 - c.thickness_mm),
                     np.maximum(np.abs(s - s_c) - 0.5 * c.length_mm,
                                rho0 * (phi - _CALC_HALF_ANGLE_RAD)))
    h0 = (np.abs(wz) * dz + np.abs(yb) * dy + np.abs(wx) * dx) / np.maximum(rho0, 1e-12)
    return np.clip(0.5 - d_c / h0, 0.0, 1.0), s_c


def _render(shape, j0: int, j1: int, d_min, h_min, f_cal, lumen_hu, tissue_hu, calcification):
    """Truth mask (uint8) and the sharp partial-volume image (float32 HU) from the wall distance."""
    f_lumen = np.clip(0.5 - d_min / h_min, 0.0, 1.0)
    lumen = np.zeros(shape, dtype=np.uint8)
    lumen[:, j0:j1, :] = d_min < 0.0
    hu = np.full(shape, tissue_hu, dtype=np.float32)
    band_hu = tissue_hu + f_lumen * (lumen_hu - tissue_hu)
    if f_cal is not None:
        band_hu = band_hu + np.minimum(f_cal, 1.0 - f_lumen) * (calcification.hu - tissue_hu)
    hu[:, j0:j1, :] = band_hu
    return lumen, hu


def _blur_and_noise(hu: np.ndarray, spacing, psf: float, noise: float, seed) -> np.ndarray:
    """Gaussian scanner blur of FWHM ``psf`` mm, then white noise of ``noise`` HU from ``seed``."""
    if psf > 0:
        sigma = tuple(psf * _FWHM_TO_SIGMA / sp for sp in spacing)
        hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=4.0)
    if noise > 0:
        rng = np.random.default_rng(int(seed))
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise)
    return hu


def _centrelines(branches, z: np.ndarray, y_c: float, geometry: str):
    """Lumen centres (x, y, z mm), radii (mm) and arc lengths (mm): one point per slice in each branch."""
    centrelines, radii, arcs = [], [], []
    for b in branches:
        zs = z[(z >= b.z_lo) & (z <= b.z_hi)]
        if geometry == "bifurcation":
            zs = np.union1d(zs, [branches[0].z_hi])  # + the junction
        s = b.s_at_z(zs)
        rad = b.radius(s)
        xs = np.asarray(b.x_of_z(zs), dtype=float)
        ys = y_c + b.offset(s, rad)
        centrelines.append(np.column_stack([xs, ys, zs]))
        radii.append(rad)
        arcs.append(s)
    return centrelines, radii, arcs
