"""The standard CTDI dosimetry phantoms (IEC 60601-2-44; FDA 21 CFR 1020.33) on a voxel grid.

Two solid PMMA cylinders, 15 cm long: the *head* phantom (16 cm diameter) and the *body*
phantom (32 cm diameter). Each has five chamber holes parallel to its axis: one on the
axis and four at 1 cm below the surface (hole centres at radius R − 10 mm) at 0°, 90°,
180° and 270°. In a measurement the 100-mm pencil ionisation chamber sits in one hole
and PMMA rods fill the others (McCollough et al., *Radiology* 259 (2011) 311, Fig. 1).

The model
---------
- **PMMA**: composition and density 1.19 g/cm³ of :func:`phantoms.tissues.tissue`
  ``("pmma")`` (NIST/ICRU 37). The holes' PMMA rods are not told apart from the cylinder:
  a filled hole is solid PMMA.
- **Chamber**: a coaxial cylinder of radius ``chamber_radius_mm`` and length
  :data:`CHAMBER_LENGTH_MM` = 100 mm centred on z = 0 in every hole. Default radius
  :data:`CHAMBER_RADIUS_MM` = 4.5 mm. A 3 cm³ chamber (e.g. Radcal 10X6-3CT, PTW 30009)
  has a 100-mm sensitive length and hence an air-cavity radius of
  sqrt(3000 / (π · 100)) = 3.1 mm; the default scores a coaxial 4.5-mm cylinder instead,
  2.1 times the mass and so 2.1 times fewer histories for the same noise. Because the
  rotation-averaged dose field varies smoothly across a hole (linear variation averages
  out over a disc; the curvature term is of order (a/ρ)² of the relative gradient), the
  choice changes the expectation by much less than the statistical noise; pass 3.1 to
  score the cavity proper.
- **"Air kerma" by the composition trick**: the chamber voxels hold *dry air composition
  at the PMMA density* (1.19 g/cm³). The engine works in the kerma approximation (energy
  transferred to electrons is deposited on the spot), so the energy deposited per unit
  mass there is the collision kerma of air in the local photon field, i.e. what an
  air-filled chamber measures, but with ~1000 times more interactions than real air
  (1.2 mg/cm³) would give. The attenuation perturbation is negligible: at equal density
  the total μ/ρ of air and PMMA differ by a few per cent (60 keV: 0.188 vs 0.187 cm²/g;
  NIST XCOM), over a path of a few millimetres. Because the chambers do not perturb the
  field, all five are scored in the same run (in a measurement PMMA rods fill the other
  four holes; here those are air-at-PMMA-density too, with the same negligible effect).
  ``chamber_fill="pmma"`` leaves the chambers PMMA, scoring dose to PMMA instead; the
  tests compare the two with the NIST (μen/ρ) ratio of air to PMMA.
- **Voxelisation** (as :func:`phantoms.tg195.case4_phantom`): ``pixel_mm`` in x–y,
  ``slab_mm`` along z; rim voxels of the cylinder hold PMMA at their area fraction times
  1.19 g/cm³ plus air for the rest (mass preserving); every voxel touched by a chamber's
  circle (over |z| < 50 mm) is chamber material at 1.19 g/cm³, and the chamber is scored
  as the weighted voxel sum with weight = the voxel's area fraction inside the circle
  (:func:`phantoms.tg195.circle_fraction`), so the scored mass is exact, not a staircase.
  Outside the grid is air (``world_material_id``), out to ``world_margin_mm``.

Coordinates: the phantom axis is the world z axis through the origin (the isocentre of
:class:`physics.transport.CTFanBeam`); the peripheral position at angle α is at
``(ρ_p cos α, ρ_p sin α)`` with ρ_p = R − 10 mm, α measured from +x towards +y (the
source of a CTFanBeam is at −x for θ = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from phantoms.tg195 import circle_fraction
from phantoms.tissues import tissue
from physics.transport import Material, VoxelPhantom

__all__ = ["PHANTOM_DIAMETERS_CM", "PHANTOM_LENGTH_MM", "HOLE_DEPTH_MM", "CHAMBER_LENGTH_MM",
           "CHAMBER_RADIUS_MM", "CHAMBER_3CC_RADIUS_MM", "PERIPHERAL_ANGLES_DEG", "CHAMBER_FILLS",
           "PMMA", "AIR", "CHAMBER_AIR", "CTDIPhantom", "CTDIPhantomError", "ctdi_phantom",
           "free_in_air_phantom"]

#: Diameters (cm) of the standard head and body phantoms.
PHANTOM_DIAMETERS_CM = (16, 32)
#: Length of the phantoms along their axis (mm), IEC 60601-2-44: "at least 14 cm"; 15 cm as built.
PHANTOM_LENGTH_MM = 150.0
#: Depth of the peripheral hole centres below the surface (mm).
HOLE_DEPTH_MM = 10.0
#: Sensitive length of the pencil chamber (mm): CTDI100 integrates over 100 mm.
CHAMBER_LENGTH_MM = 100.0
#: Default radius of the scored chamber cylinder (mm), see the module docstring.
CHAMBER_RADIUS_MM = 4.5
#: Cavity radius of a 3 cm³, 100-mm chamber: sqrt(3000 / (100 π)) mm.
CHAMBER_3CC_RADIUS_MM = math.sqrt(3000.0 / (100.0 * math.pi))
#: Angles (degrees from +x towards +y) of the four peripheral holes.
PERIPHERAL_ANGLES_DEG = (0, 90, 180, 270)
#: What the scored chamber volumes are filled with.
CHAMBER_FILLS = ("air", "pmma")

_pmma, _air = tissue("pmma"), tissue("air")
#: PMMA (NIST/ICRU 37 composition, 1.19 g/cm³), from the tissue library.
PMMA = Material("PMMA", _pmma.density_g_cm3, dict(_pmma.mass_fractions))
#: Dry air near sea level (NIST/ICRU 37, 1.20479 mg/cm³), from the tissue library.
AIR = Material("Air", _air.density_g_cm3, dict(_air.mass_fractions))
#: Air composition at the PMMA density: the chamber material ("air kerma" scoring).
CHAMBER_AIR = Material("Air (chamber, at PMMA density)", _pmma.density_g_cm3, dict(_air.mass_fractions))

#: Material ids of the grid.
AIR_ID, PMMA_ID, CHAMBER_ID = 0, 1, 2


class CTDIPhantomError(ValueError):
    """Invalid CTDI phantom parameter (the message names it and what is valid)."""


@dataclass
class CTDIPhantom:
    """A voxelised CTDI phantom (or a free-in-air chamber) with its chambers as scoring regions.

    Attributes
    ----------
    phantom : VoxelPhantom
        Material ids: 0 = air, 1 = PMMA (rim voxels at their partial density), 2 = the
        chamber material; world = air.
    materials : dict of int to Material
    regions : dict
        ``centre``, ``periphery_0``, ``periphery_90``, ``periphery_180``,
        ``periphery_270`` and ``periphery`` (the four together): (flat voxel indices,
        weights) for :func:`physics.transport.run`; ``centre`` only for free in air.
    region_mass_g : dict of str to float
        Scored mass of each region (g): Σ weight · density · voxel volume.
    diameter_cm : int or None
        16 or 32; None for the free-in-air chamber.
    chamber_radius_mm, chamber_length_mm : float
    chamber_fill : str
        ``'air'`` (air composition, so the score is air kerma) or ``'pmma'``.
    chamber_centres_mm : dict of str to (float, float)
        (x, y) of each chamber (mm).
    """

    phantom: VoxelPhantom
    materials: dict
    regions: dict
    region_mass_g: dict
    diameter_cm: int | None
    chamber_radius_mm: float
    chamber_length_mm: float = CHAMBER_LENGTH_MM
    chamber_fill: str = "air"
    chamber_centres_mm: dict = field(default_factory=dict)

    @property
    def radius_mm(self) -> float:
        """Phantom radius (mm); 0 free in air."""
        return 5.0 * self.diameter_cm if self.diameter_cm else 0.0

    def dose_Gy_per_photon(self, result, region: str) -> tuple[float, float]:
        """Mean dose in a region per source photon and its σ (Gy) from a transport result.

        ``D = E / m`` with E the region's energy (eV per photon, 1 eV = 1.602176634e-19 J)
        and m its scored mass.
        """
        m, s = result.region(region)
        k = 1.602176634e-19 / (self.region_mass_g[region] * 1e-3)
        return m * k, s * k


def _check_grid(pixel_mm, slab_mm, chamber_radius_mm):
    for v, name in ((pixel_mm, "pixel_mm"), (slab_mm, "slab_mm"), (chamber_radius_mm, "chamber_radius_mm")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CTDIPhantomError(f"{name} must be a finite number > 0 (mm), got {v!r}")
    if abs(25.0 / slab_mm - round(25.0 / slab_mm)) > 1e-9:
        raise CTDIPhantomError(f"slab_mm must divide 25 mm (so the 100-mm chamber and the 150-mm phantom end on "
                               f"voxel edges), e.g. 5 or 2.5, got {slab_mm!r}")


def _grid_edges(half_width_mm: float, pixel_mm: float) -> np.ndarray:
    n = 2 * int(math.ceil(half_width_mm / pixel_mm))
    return (np.arange(n + 1) - n / 2) * pixel_mm


def _regions(edges_xy, z_centres, centres, radius, plane):
    """Weighted chamber regions over |z| < 50 mm and the 2-D footprint of each chamber."""
    kz = np.nonzero(np.abs(z_centres) < 0.5 * CHAMBER_LENGTH_MM)[0]
    regions, footprints = {}, {}
    for name, (cx, cy) in centres.items():
        f = circle_fraction(edges_xy, edges_xy, cx, cy, radius)
        jj, ii = np.nonzero(f)
        flat2d = jj * (edges_xy.size - 1) + ii
        idx = (kz[:, None] * plane + flat2d[None, :]).ravel()
        regions[name] = (idx, np.tile(f[jj, ii], kz.size))
        footprints[name] = f > 0
    return regions, footprints, kz


def ctdi_phantom(diameter_cm: int, *, chamber_radius_mm: float = CHAMBER_RADIUS_MM, chamber_fill: str = "air",
                 pixel_mm: float = 1.0, slab_mm: float = 5.0, world_margin_mm: float = 1000.0) -> CTDIPhantom:
    """The 16-cm (head) or 32-cm (body) CTDI phantom with five scored pencil chambers.

    Parameters
    ----------
    diameter_cm : {16, 32}
        Phantom diameter (cm).
    chamber_radius_mm : float
        Radius of the scored chamber cylinders (mm, > 0, at most 6.5 mm: the holes are
        13.1 mm wide). Default :data:`CHAMBER_RADIUS_MM`.
    chamber_fill : {'air', 'pmma'}
        ``'air'``: air composition at the PMMA density (the score is air kerma, the CTDI
        convention); ``'pmma'``: the chambers stay PMMA (dose to PMMA).
    pixel_mm : float
        In-plane voxel size (mm, > 0). Default 1 mm.
    slab_mm : float
        Voxel size along the axis (mm); must divide 25 mm. Default 5 mm.
    world_margin_mm : float
        Air extends this far beyond the grid (mm, > 0); keep it larger than the
        source-to-isocentre distance so that the beam crosses air from the focal spot on.

    Returns
    -------
    CTDIPhantom

    Raises
    ------
    CTDIPhantomError
        A diameter other than 16 or 32, a chamber radius outside (0, 6.5] mm, an unknown
        ``chamber_fill``, or bad grid sizes.
    """
    if isinstance(diameter_cm, bool) or diameter_cm not in PHANTOM_DIAMETERS_CM:
        raise CTDIPhantomError(f"diameter_cm must be 16 (head) or 32 (body), got {diameter_cm!r}")
    _check_grid(pixel_mm, slab_mm, chamber_radius_mm)
    if chamber_radius_mm > 6.5:
        raise CTDIPhantomError(f"chamber_radius_mm must be <= 6.5 mm (the holes are 13.1 mm wide), "
                               f"got {chamber_radius_mm!r}")
    if chamber_fill not in CHAMBER_FILLS:
        raise CTDIPhantomError(f"chamber_fill must be one of {', '.join(map(repr, CHAMBER_FILLS))}, "
                               f"got {chamber_fill!r}")
    R = 5.0 * diameter_cm
    e_xy = _grid_edges(R + pixel_mm, pixel_mm)
    n_xy = e_xy.size - 1
    n_z = int(round(PHANTOM_LENGTH_MM / slab_mm))
    e_z = (np.arange(n_z + 1) - n_z / 2) * slab_mm
    zc = 0.5 * (e_z[1:] + e_z[:-1])
    area = circle_fraction(e_xy, e_xy, 0.0, 0.0, R)
    mat2d = np.where(area > 0, PMMA_ID, AIR_ID).astype(np.uint8)
    rho2d = np.where(area > 0, area * PMMA.density_g_cm3 + (1.0 - area) * AIR.density_g_cm3,
                     AIR.density_g_cm3).astype(np.float32)
    rp = R - HOLE_DEPTH_MM
    centres = {"centre": (0.0, 0.0)}
    for a in PERIPHERAL_ANGLES_DEG:
        t = math.radians(a)
        # exact zeros for the axis-aligned positions keep the four footprints identical
        centres[f"periphery_{a}"] = (round(rp * math.cos(t), 9) + 0.0, round(rp * math.sin(t), 9) + 0.0)
    plane = n_xy * n_xy
    regions, footprints, kz = _regions(e_xy, zc, centres, chamber_radius_mm, plane)
    material = np.broadcast_to(mat2d, (n_z, n_xy, n_xy)).copy()
    density = np.broadcast_to(rho2d, (n_z, n_xy, n_xy)).copy()
    if chamber_fill == "air":
        for fp in footprints.values():
            sl = material[kz]
            sl[:, fp] = CHAMBER_ID
            material[kz] = sl
    regions["periphery"] = tuple(np.concatenate([regions[f"periphery_{a}"][i] for a in PERIPHERAL_ANGLES_DEG])
                                 for i in (0, 1))
    origin = (e_xy[0] + 0.5 * pixel_mm, e_xy[0] + 0.5 * pixel_mm, e_z[0] + 0.5 * slab_mm)
    phantom = VoxelPhantom(material, spacing_mm=(slab_mm, pixel_mm, pixel_mm), origin_xyz_mm=origin,
                           density_g_cm3=density, world_material_id=AIR_ID, world_margin_mm=world_margin_mm)
    mats = {AIR_ID: AIR, PMMA_ID: PMMA, CHAMBER_ID: CHAMBER_AIR}
    return CTDIPhantom(phantom, mats, regions, _masses(phantom, regions), int(diameter_cm),
                       float(chamber_radius_mm), CHAMBER_LENGTH_MM, chamber_fill, centres)


def free_in_air_phantom(chamber_radius_mm: float = 20.0, chamber_density_g_cm3: float = 0.01, *,
                        chamber_fill: str = "air", pixel_mm: float = 1.0, slab_mm: float = 5.0,
                        world_margin_mm: float = 1000.0) -> CTDIPhantom:
    """A pencil chamber on the axis in air, for the free-in-air CTDI (no phantom).

    The grid is a box of air just around a chamber cylinder (radius
    ``chamber_radius_mm``, 100 mm long, centred on the origin) whose voxels hold air
    composition (or PMMA with ``chamber_fill='pmma'``) at ``chamber_density_g_cm3``. Free
    in air the beam is not attenuated by a phantom, so the chamber's size and density only
    trade statistics (interactions per photon ∝ ρ · r) against bias: the primary beam is
    attenuated inside the chamber before it reaches the scoring point, on average over
    the disc and a rotation by about μ/ρ · ρ · 0.85 r (0.3 % for the default 0.01 g/cm³,
    20 mm at 60 keV; the tests correct for it exactly at 0.05 g/cm³), and the
    rotation-averaged air kerma at distance d from the axis exceeds the axis value by
    R²/(R² − d²) (0.06 % averaged over a 20-mm disc at R = 570 mm).

    Parameters
    ----------
    chamber_radius_mm : float
        Chamber radius (mm, > 0). Default 20 mm.
    chamber_density_g_cm3 : float
        Density of the chamber material (g/cm³, > 0). Default 0.01.
    chamber_fill : {'air', 'pmma'}
        Composition of the chamber material.
    pixel_mm, slab_mm, world_margin_mm : float
        As in :func:`ctdi_phantom`.

    Returns
    -------
    CTDIPhantom
        With ``diameter_cm=None`` and the single region ``centre``.
    """
    _check_grid(pixel_mm, slab_mm, chamber_radius_mm)
    d = chamber_density_g_cm3
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
        raise CTDIPhantomError(f"chamber_density_g_cm3 must be a finite number > 0 (g/cm³), got {d!r}")
    if chamber_fill not in CHAMBER_FILLS:
        raise CTDIPhantomError(f"chamber_fill must be one of {', '.join(map(repr, CHAMBER_FILLS))}, "
                               f"got {chamber_fill!r}")
    e_xy = _grid_edges(chamber_radius_mm + pixel_mm, pixel_mm)
    n_xy = e_xy.size - 1
    n_z = int(round((CHAMBER_LENGTH_MM + 2 * slab_mm) / slab_mm))
    e_z = (np.arange(n_z + 1) - n_z / 2) * slab_mm
    zc = 0.5 * (e_z[1:] + e_z[:-1])
    centres = {"centre": (0.0, 0.0)}
    regions, footprints, kz = _regions(e_xy, zc, centres, chamber_radius_mm, n_xy * n_xy)
    material = np.full((n_z, n_xy, n_xy), AIR_ID, dtype=np.uint8)
    density = np.full((n_z, n_xy, n_xy), AIR.density_g_cm3, dtype=np.float32)
    sl = material[kz]
    sl[:, footprints["centre"]] = CHAMBER_ID
    material[kz] = sl
    density[material == CHAMBER_ID] = d
    origin = (e_xy[0] + 0.5 * pixel_mm, e_xy[0] + 0.5 * pixel_mm, e_z[0] + 0.5 * slab_mm)
    phantom = VoxelPhantom(material, spacing_mm=(slab_mm, pixel_mm, pixel_mm), origin_xyz_mm=origin,
                           density_g_cm3=density, world_material_id=AIR_ID, world_margin_mm=world_margin_mm)
    fill = AIR if chamber_fill == "air" else PMMA
    mats = {AIR_ID: AIR, CHAMBER_ID: Material(f"{fill.name} (chamber)", float(d), dict(fill.mass_fractions))}
    return CTDIPhantom(phantom, mats, regions, _masses(phantom, regions), None, float(chamber_radius_mm),
                       CHAMBER_LENGTH_MM, chamber_fill, centres)


def _masses(phantom: VoxelPhantom, regions: dict) -> dict[str, float]:
    dz, dy, dx = phantom.spacing_mm
    rho = phantom.density_g_cm3.ravel().astype(np.float64)
    return {name: float(np.sum(rho[idx] * w)) * dx * dy * dz * 1e-3 for name, (idx, w) in regions.items()}
