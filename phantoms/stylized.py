"""Stylised (equation-defined) reference phantoms, newborn to adult, voxelised.

What it is for
--------------
A CT dose calculation needs a body: a label map whose labels are organs and whose
materials are tissues. :func:`build_reference_phantom` builds one for each ICRP reference
age (newborn, 1, 5, 10, 15 years, adult) and sex, in the spirit of the ORNL series of
Cristy & Eckerman (ORNL/TM-8381, 1987): the anatomy is a set of simple solids (elliptical
cylinders, ellipsoids, truncated cones, tubes, shells) whose sizes scale with age, voxelised
on an isotropic grid. :func:`write_phantom` writes it for the dose engine (``labels.nii.gz``,
``materials.csv``, ``organs.json``) and :func:`plot_phantom` draws three label slices.

Frame
-----
World coordinates are the LPS frame of :mod:`pipeline.image` in mm: +x towards the
phantom's left, +y posterior, +z superior (the ORNL axes). The phantom stands upright;
``z = 0`` is the base of the trunk (the top of the legs, which extend to ``z = -CL``), and the
trunk axis is ``x = y = 0``, the centre of the grid in x and y. The label map is ``uint8``.

Anatomy (equations; lengths in cm, ``AT, BT`` trunk semi-axes, ``CT`` trunk height)
-----------------------------------------------------------------------------------
* Trunk: elliptical cylinder ``(x/AT)² + (y/BT)² <= 1, 0 <= z <= CT``; the arms are inside
  the trunk ellipse, as in the ORNL phantoms. Neck: elliptical cylinder. Head: elliptical
  cylinder capped by a half ellipsoid. Legs: two elliptical truncated cones from
  ``(AT/2, BT)`` at ``z = 0`` to a round ankle at ``z = -CL``.
* Trunk organs are written in a normalised frame ``X = 20 x/AT, Y = 10 y/BT, Z = 70 z/CT``
  (the adult ORNL trunk, 20 × 10 × 70 cm), so one set of equations serves every age, as in
  Cristy's scaling. Their shapes and positions are design values close to the ORNL adult
  (lungs: half ellipsoids; liver: elliptical cylinder cut by a plane; stomach, spleen,
  kidneys, heart, bladder, gonads: ellipsoids; pancreas, adrenals: half ellipsoids; small
  intestine: elliptical-cylinder slab; colon and oesophagus: tubes).
* Skeleton: spine (elliptical cylinders), 12 pairs of ribs (elliptical annuli), pelvis
  (part of an elliptical annulus), cranium (ellipsoidal shell around the brain), mandible,
  clavicles, scapulae, arm bones inside the trunk, femora and tibiae. Every bone is a
  cortical shell (tissue ``cortical_bone``) around a marrow cavity; a deterministic fraction
  of each cavity's voxels is red marrow (``red_marrow``), the rest yellow marrow (``adipose``
  composition, the library has no yellow marrow), with a larger red fraction in the axial
  skeleton and, with age, less in the limbs (see ``_MARROW_WEIGHT``).
* Walled organs (stomach, small intestine, colon, heart, gall bladder, urinary bladder) are
  a contents region inside a wall region. Skin is the one-voxel outer layer of the body.
* Everything else in the body is residual soft tissue (``soft_tissue``, ICRU-46): muscle,
  adipose, cartilage, connective tissue, lymph nodes, vessels — as in the ORNL phantoms.

Calibration to ICRP Publication 89
----------------------------------
The design shapes give the layout; the size of each organ is then fitted to its ICRP 89
reference mass (:func:`phantoms.tissues.organ_masses`): every organ has one scale factor
(isotropic about its centre, or the radius of a tube), found by bracketing and bisection so
that the *voxelised* mass (voxel count × voxel volume × tissue density) hits the target.
Organs are painted in a fixed priority order (skin, breasts and testes, eyes, skeleton, then
small organs before large ones); each organ can only take voxels that no earlier organ took,
and is calibrated in that order, so the fit is exact for the final map. The skeleton has three
parameters: a bone-size factor (total bone + marrow volume), a cavity factor (marrow volume)
and the red-marrow fraction (red marrow mass). The trunk semi-axis ``AT`` (with ``BT/AT``
fixed per age) starts from the analytic volume that gives the ICRP 89 body mass and is
corrected (at most twice) until the voxelised body mass is within 1 % of it. The fit is
deterministic and runs on every build at the requested voxel size (0.5–2.5 s at the default
voxel sizes on one core), so no table of factors is stored; the factors used are reported in
``ReferencePhantom.calibration``.

What is compared and what is not
--------------------------------
``organs.json`` gives, per label, the mass, the ICRP 89 reference and the deviation. Not
compared (and why):

* (skin is compared: the one-voxel layer, 1–2 mm and stair-stepped, is thicker than real
  skin, about 0.7 mm newborn to 1.6 mm adult, so its density is scaled to give the ICRP 89
  mass — the mass thickness a photon crosses is then right; the factor is in the note);
* eye lenses — no ICRP 89 value was found; design size (a few voxels at the defaults);
* adipose, skeletal muscle — not modelled separately (residual soft tissue); lung tissue
  without blood — the lungs are modelled with their blood (ICRP 89 ``lungs``); total
  skeleton — it includes cartilage, teeth and periarticular tissue, which stay soft tissue
  here (the bone + marrow sum is compared instead, in ``composites``);
* breasts below 15 years and urinary-bladder contents — no ICRP 89 value was found; design
  masses (scaled values) flagged with ``"mass_reference": null`` and a note;
* extrathoracic airways, oral mucosa and lymphatic nodes (ICRP 103 remainder tissues) are
  not modelled; their doses are to be approximated by the residual soft tissue nearby.
"""

from __future__ import annotations

import abc
import dataclasses

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from physics.atomic import atomic_path, write_json
from phantoms.tissues import (AGES, SEXES, Tissue, organ_mass_sources, organ_masses,
                              remainder_tissues, tissue, tissue_weighting_factors, write_materials_csv)
from pipeline.image import Volume, write_image

__all__ = ["SUPPORTED_AGES", "DEFAULT_VOXEL_MM", "VOXEL_MM_RANGE", "LABELS", "EXCLUDED_FROM_MASS_CHECK",
           "PhantomError", "OrganEntry", "ReferencePhantom", "build_reference_phantom", "write_phantom",
           "plot_phantom"]

SCHEMA_VERSION = "1.0"
#: Ages for which a stylised reference phantom is built (the ICRP reference ages).
SUPPORTED_AGES: tuple[str, ...] = AGES
#: Default isotropic voxel size in mm per age (small enough for the smallest fitted organs:
#: newborn ovaries 0.3 g are ~290 voxels at 1 mm).
DEFAULT_VOXEL_MM: dict[str, float] = {"newborn": 1.0, "1y": 1.5, "5y": 2.0, "10y": 2.0, "15y": 2.0, "adult": 2.0}
#: Accepted voxel sizes in mm (inclusive).
VOXEL_MM_RANGE: tuple[float, float] = (1.0, 10.0)

#: ICRP 89 reference standing heights in cm (ICRP 89 Table 2.9, as transcribed by Huisinga
#: et al. 2012, see ``data/SOURCES.md``).
_HEIGHT_CM = {("newborn", "male"): 51.0, ("newborn", "female"): 51.0, ("1y", "male"): 76.0,
              ("1y", "female"): 76.0, ("5y", "male"): 109.0, ("5y", "female"): 109.0,
              ("10y", "male"): 138.0, ("10y", "female"): 138.0, ("15y", "male"): 167.0,
              ("15y", "female"): 161.0, ("adult", "male"): 176.0, ("adult", "female"): 163.0}

#: Body proportions per age (design values near the ORNL series): trunk height ``ct`` and
#: leg length ``cl`` as fractions of the height, neck height fraction, ``BT/AT``, cranium and
#: scalp thickness (cm), ankle radius as a fraction of AT.
_DESIGN = {
    "newborn": dict(ct=0.424, cl=0.329, neck=0.030, bt=0.80, skull=0.20, scalp=0.30, ankle=0.25),
    "1y": dict(ct=0.404, cl=0.349, neck=0.035, bt=0.75, skull=0.30, scalp=0.35, ankle=0.25),
    "5y": dict(ct=0.374, cl=0.420, neck=0.040, bt=0.68, skull=0.45, scalp=0.45, ankle=0.25),
    "10y": dict(ct=0.368, cl=0.460, neck=0.040, bt=0.62, skull=0.55, scalp=0.50, ankle=0.25),
    "15y": dict(ct=0.378, cl=0.467, neck=0.035, bt=0.56, skull=0.65, scalp=0.55, ankle=0.25),
    "adult": dict(ct=0.398, cl=0.455, neck=0.035, bt=0.50, skull=0.70, scalp=0.60, ankle=0.25),
}
#: Relative red-marrow weight of the marrow cavities (axial skeleton; proximal long bones:
#: humeri, femora; distal long bones: forearms, tibiae). Design values following the known
#: retreat of red marrow from the distal limbs with age; the absolute red fraction is fitted.
_MARROW_WEIGHT = {
    "newborn": (1.0, 1.0, 1.0), "1y": (1.0, 1.0, 0.9), "5y": (1.0, 0.8, 0.5),
    "10y": (1.0, 0.6, 0.25), "15y": (1.0, 0.45, 0.08), "adult": (1.0, 0.35, 0.0),
}
#: Adult brain semi-axes (x, y, z) in cm defining the brain's shape (scaled to its mass).
_BRAIN_SHAPE = (6.0, 9.0, 6.5)


class PhantomError(ValueError):
    """Invalid input to the phantom builder (the message names the parameter and the valid values)."""


# ----------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class _LabelDef:
    name: str
    tissue: str
    icrp103: str | None = None


#: Label id → (organ name, tissue of :func:`phantoms.tissues.tissue`, ICRP 103 tissue it
#: stands for). Label 0 is the air around the body.
LABELS: dict[int, _LabelDef] = {
    0: _LabelDef("air", "air"),
    1: _LabelDef("soft_tissue", "soft_tissue", "muscle"),
    2: _LabelDef("skin", "skin", "skin"),
    3: _LabelDef("cortical_bone", "cortical_bone"),
    4: _LabelDef("red_marrow", "red_marrow", "red_marrow"),
    5: _LabelDef("yellow_marrow", "adipose"),
    6: _LabelDef("brain", "brain", "brain"),
    7: _LabelDef("eyes", "soft_tissue"),
    8: _LabelDef("eye_lens", "eye_lens"),
    9: _LabelDef("salivary_glands", "soft_tissue", "salivary_glands"),
    10: _LabelDef("thyroid", "thyroid", "thyroid"),
    11: _LabelDef("oesophagus", "gi_tract_wall", "oesophagus"),
    12: _LabelDef("thymus", "soft_tissue", "thymus"),
    13: _LabelDef("heart_wall", "heart", "heart"),
    14: _LabelDef("heart_contents", "blood"),
    15: _LabelDef("lungs", "lung_inflated", "lung"),
    16: _LabelDef("breast", "breast", "breast"),
    17: _LabelDef("liver", "liver", "liver"),
    18: _LabelDef("gallbladder_wall", "gi_tract_wall", "gallbladder"),
    19: _LabelDef("gallbladder_contents", "gi_tract_contents"),
    20: _LabelDef("stomach_wall", "gi_tract_wall", "stomach"),
    21: _LabelDef("stomach_contents", "gi_tract_contents"),
    22: _LabelDef("spleen", "spleen", "spleen"),
    23: _LabelDef("pancreas", "pancreas", "pancreas"),
    24: _LabelDef("adrenals", "soft_tissue", "adrenals"),
    25: _LabelDef("kidneys", "kidney", "kidneys"),
    26: _LabelDef("small_intestine_wall", "gi_tract_wall", "small_intestine"),
    27: _LabelDef("small_intestine_contents", "gi_tract_contents"),
    28: _LabelDef("colon_wall", "gi_tract_wall", "colon"),
    29: _LabelDef("colon_contents", "gi_tract_contents"),
    30: _LabelDef("urinary_bladder_wall", "soft_tissue", "bladder"),
    31: _LabelDef("urinary_bladder_contents", "water"),
    32: _LabelDef("testes", "soft_tissue", "gonads"),
    33: _LabelDef("ovaries", "soft_tissue", "gonads"),
    34: _LabelDef("uterus", "soft_tissue", "uterus_cervix"),
    35: _LabelDef("prostate", "soft_tissue", "prostate"),
}
_ID = {d.name: k for k, d in LABELS.items()}
AIR, SOFT, SKIN, BONE, RED, YELLOW = (_ID[n] for n in ("air", "soft_tissue", "skin", "cortical_bone",
                                                       "red_marrow", "yellow_marrow"))

#: Organ → ICRP 89 keys of :func:`organ_masses` whose sum (or difference, sign -1) is its
#: reference mass.
_REFERENCE_KEYS: dict[str, tuple[tuple[int, str], ...]] = {
    "skin": ((1, "skin"),), "cortical_bone": ((1, "bone_cortical"), (1, "bone_trabecular")),
    "red_marrow": ((1, "marrow_active"),), "yellow_marrow": ((1, "marrow_inactive"),),
    "brain": ((1, "brain"),), "eyes": ((1, "eyes"),), "salivary_glands": ((1, "salivary_glands"),),
    "thyroid": ((1, "thyroid"),), "oesophagus": ((1, "oesophagus_wall"),), "thymus": ((1, "thymus"),),
    "heart_wall": ((1, "heart_tissue"),), "heart_contents": ((1, "heart_with_blood"), (-1, "heart_tissue")),
    "lungs": ((1, "lungs"),), "breast": ((1, "breast"),), "liver": ((1, "liver"),),
    "gallbladder_wall": ((1, "gallbladder_wall"),), "gallbladder_contents": ((1, "gallbladder_contents"),),
    "stomach_wall": ((1, "stomach_wall"),), "stomach_contents": ((1, "stomach_contents"),),
    "spleen": ((1, "spleen"),), "pancreas": ((1, "pancreas"),), "adrenals": ((1, "adrenals"),),
    "kidneys": ((1, "kidneys"),), "small_intestine_wall": ((1, "small_intestine_wall"),),
    "small_intestine_contents": ((1, "small_intestine_contents"),), "colon_wall": ((1, "colon_wall"),),
    "colon_contents": ((1, "colon_contents"),), "urinary_bladder_wall": ((1, "urinary_bladder_wall"),),
    "testes": ((1, "testes"),), "ovaries": ((1, "ovaries"),), "uterus": ((1, "uterus"),),
    "prostate": ((1, "prostate"),),
}
#: Sums of labels compared with an ICRP 89 total.
_COMPOSITES = {
    "heart_with_blood": (("heart_wall", "heart_contents"), ("heart_with_blood",)),
    "gallbladder_wall_and_contents": (("gallbladder_wall", "gallbladder_contents"),
                                      ("gallbladder_wall", "gallbladder_contents")),
    "marrow_total": (("red_marrow", "yellow_marrow"), ("marrow_active", "marrow_inactive")),
    "bone_and_marrow": (("cortical_bone", "red_marrow", "yellow_marrow"),
                        ("bone_cortical", "bone_trabecular", "marrow_active", "marrow_inactive")),
}
#: Organs whose mass is reported but not fitted to (or checked against) ICRP 89, and why.
EXCLUDED_FROM_MASS_CHECK = {
    "eye_lens": "no ICRP 89 value found; design size of a few voxels at the default voxel sizes",
    "soft_tissue": "residual tissue (muscle, adipose, cartilage, vessels, ...); no single reference",
}


# ----------------------------------------------------------------------------- validation
def _check_age_sex(age: object, sex: object) -> None:
    if age not in SUPPORTED_AGES:
        raise PhantomError(f"age must be one of {list(SUPPORTED_AGES)}, got {age!r}")
    if sex not in SEXES:
        raise PhantomError(f"sex must be one of {list(SEXES)}, got {sex!r}")


def _check_voxel(age: str, voxel_mm: object) -> float:
    if voxel_mm is None:
        return DEFAULT_VOXEL_MM[age]
    try:
        v = float(voxel_mm)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = math.nan
    lo, hi = VOXEL_MM_RANGE
    if isinstance(voxel_mm, bool) or not (math.isfinite(v) and lo <= v <= hi):
        raise PhantomError(f"voxel_mm must be a number of millimetres in [{lo:g}, {hi:g}] (or None for "
                           f"the default {DEFAULT_VOXEL_MM[age]:g} mm at age {age}), got {voxel_mm!r}")
    return v


# ----------------------------------------------------------------------------- grid and shapes
@dataclass(frozen=True)
class _Grid:
    """Isotropic voxel grid; voxel centres in cm: x, y symmetric about 0, z from ``z0``."""

    v: float
    nx: int
    ny: int
    nz: int
    z0: float  # world z (cm) of the lower face of slice k = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)

    def xs(self) -> np.ndarray:
        return (np.arange(self.nx) - (self.nx - 1) / 2.0) * self.v

    def ys(self) -> np.ndarray:
        return (np.arange(self.ny) - (self.ny - 1) / 2.0) * self.v

    def zs(self) -> np.ndarray:
        return self.z0 + (np.arange(self.nz) + 0.5) * self.v

    def window(self, lo, hi):
        """Slices (k, j, i) of the voxels whose centres lie in the box [lo, hi] (cm), and their coordinates."""
        out, coords = [], []
        for axis, (first, n) in enumerate(((-(self.nx - 1) / 2.0 * self.v, self.nx),
                                           (-(self.ny - 1) / 2.0 * self.v, self.ny),
                                           (self.z0 + 0.5 * self.v, self.nz))):
            i0 = max(0, int(math.ceil((lo[axis] - first) / self.v - 1e-9)))
            i1 = min(n, int(math.floor((hi[axis] - first) / self.v + 1e-9)) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
            coords.append(first + np.arange(i0, i1) * self.v)
        x, y, z = coords
        sl = (out[2], out[1], out[0])
        return sl, x[None, None, :], y[None, :, None], z[:, None, None]


class _Shape(abc.ABC):
    """A solid: ``inside(x, y, z)`` on broadcastable coordinate arrays, and a bounding box."""

    @abc.abstractmethod
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners (x, y, z) in cm."""

    @abc.abstractmethod
    def inside(self, x, y, z) -> np.ndarray:
        """Boolean array: which points lie in the solid."""


def _clip(mask, clips, x, y, z):
    for nx_, ny_, nz_, d in clips:
        mask = mask & (nx_ * x + ny_ * y + nz_ * z <= d)
    return mask


@dataclass(frozen=True)
class _Ellipsoid(_Shape):
    """``Σ ((p - c)/a)² <= 1`` and the half-spaces ``n·p <= d`` in ``clips``."""

    c: tuple[float, float, float]
    a: tuple[float, float, float]
    clips: tuple = ()

    def bbox(self):
        c, a = np.asarray(self.c), np.asarray(self.a)
        return c - a, c + a

    def inside(self, x, y, z):
        m = ((x - self.c[0]) / self.a[0]) ** 2 + ((y - self.c[1]) / self.a[1]) ** 2 \
            + ((z - self.c[2]) / self.a[2]) ** 2 <= 1.0
        return _clip(m, self.clips, x, y, z)


@dataclass(frozen=True)
class _EllipsoidShell(_Shape):
    """Between the ellipsoids of semi-axes ``a + t_in`` and ``a + t_out`` (same centre)."""

    c: tuple[float, float, float]
    a: tuple[float, float, float]
    t_in: float
    t_out: float
    clips: tuple = ()

    def bbox(self):
        c, a = np.asarray(self.c), np.asarray(self.a) + self.t_out
        return c - a, c + a

    def _q(self, x, y, z, t):
        return ((x - self.c[0]) / (self.a[0] + t)) ** 2 + ((y - self.c[1]) / (self.a[1] + t)) ** 2 \
            + ((z - self.c[2]) / (self.a[2] + t)) ** 2

    def inside(self, x, y, z):
        m = (self._q(x, y, z, self.t_out) <= 1.0) & (self._q(x, y, z, self.t_in) > 1.0)
        return _clip(m, self.clips, x, y, z)


@dataclass(frozen=True)
class _EllipticCylinder(_Shape):
    """``((x-cx)/ax)² + ((y-cy)/ay)² <= 1``, ``z0 <= z <= z1``."""

    cx: float
    cy: float
    ax: float
    ay: float
    z0: float
    z1: float
    clips: tuple = ()

    def bbox(self):
        return (np.array([self.cx - self.ax, self.cy - self.ay, self.z0]),
                np.array([self.cx + self.ax, self.cy + self.ay, self.z1]))

    def inside(self, x, y, z):
        m = (((x - self.cx) / self.ax) ** 2 + ((y - self.cy) / self.ay) ** 2 <= 1.0) & (z >= self.z0) & (z <= self.z1)
        return _clip(m, self.clips, x, y, z)


@dataclass(frozen=True)
class _EllipticAnnulus(_Shape):
    """An elliptical wall: between the ellipses inset by ``t_in`` and ``t_out`` (cm) from (ax, ay).

    Points with ``q(ax - t_in, ay - t_in) <= 1`` and ``q(ax - t_out, ay - t_out) > 1``, where
    ``q(a, b) = ((x-cx)/a)² + ((y-cy)/b)²``, and ``z0 <= z <= z1``. ``t_in = 0, t_out = t`` is
    a wall of thickness t inside the outer ellipse; a middle band of it is a marrow cavity.
    """

    cx: float
    cy: float
    ax: float
    ay: float
    t_in: float
    t_out: float
    z0: float
    z1: float
    clips: tuple = ()

    def bbox(self):
        ax, ay = self.ax - self.t_in, self.ay - self.t_in
        return (np.array([self.cx - ax, self.cy - ay, self.z0]), np.array([self.cx + ax, self.cy + ay, self.z1]))

    def inside(self, x, y, z):
        def q(t):
            return ((x - self.cx) / (self.ax - t)) ** 2 + ((y - self.cy) / (self.ay - t)) ** 2

        m = (q(self.t_in) <= 1.0) & (q(self.t_out) > 1.0) & (z >= self.z0) & (z <= self.z1)
        return _clip(m, self.clips, x, y, z)


@dataclass(frozen=True)
class _Capsule(_Shape):
    """Points within distance ``r`` of the segment p0–p1 (a tube with round ends)."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r: float

    def bbox(self):
        p0, p1 = np.asarray(self.p0), np.asarray(self.p1)
        return np.minimum(p0, p1) - self.r, np.maximum(p0, p1) + self.r

    def inside(self, x, y, z):
        p0, d = np.asarray(self.p0), np.asarray(self.p1) - np.asarray(self.p0)
        dd = float(d @ d)
        rx, ry, rz = x - p0[0], y - p0[1], z - p0[2]
        t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / dd, 0.0, 1.0) if dd > 0 else 0.0
        return (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2 <= self.r ** 2


@dataclass(frozen=True)
class _Frustum(_Shape):
    """Vertical elliptical truncated cone: semi-axes (a, b) linear in z from the top to the bottom."""

    cx: float
    cy: float
    z_top: float
    z_bot: float
    a_top: float
    b_top: float
    a_bot: float
    b_bot: float

    def bbox(self):
        a, b = max(self.a_top, self.a_bot), max(self.b_top, self.b_bot)
        return np.array([self.cx - a, self.cy - b, self.z_bot]), np.array([self.cx + a, self.cy + b, self.z_top])

    def inside(self, x, y, z):
        t = np.clip((self.z_top - z) / (self.z_top - self.z_bot), 0.0, 1.0)
        a = self.a_top + (self.a_bot - self.a_top) * t
        b = self.b_top + (self.b_bot - self.b_top) * t
        return (((x - self.cx) / a) ** 2 + ((y - self.cy) / b) ** 2 <= 1.0) & (z <= self.z_top) & (z >= self.z_bot)


@dataclass(frozen=True)
class _Scaled(_Shape):
    """A shape scaled by ``s`` about the point ``c`` (same coordinates as the shape)."""

    shape: _Shape
    c: tuple[float, float, float]
    s: float

    def bbox(self):
        lo, hi = self.shape.bbox()
        c = np.asarray(self.c)
        return c + (lo - c) * self.s, c + (hi - c) * self.s

    def inside(self, x, y, z):
        c = self.c
        return self.shape.inside(c[0] + (x - c[0]) / self.s, c[1] + (y - c[1]) / self.s, c[2] + (z - c[2]) / self.s)


@dataclass(frozen=True)
class _InFrame(_Shape):
    """A shape written in a frame stretched by ``f`` = (fx, fy, fz): world = f * frame coordinates."""

    shape: _Shape
    f: tuple[float, float, float]

    def bbox(self):
        lo, hi = self.shape.bbox()
        f = np.asarray(self.f)
        return lo * f, hi * f

    def inside(self, x, y, z):
        return self.shape.inside(x / self.f[0], y / self.f[1], z / self.f[2])


def _raster(grid: _Grid, shapes: Iterable[_Shape]):
    """Union of shapes on the grid: (slices of the union's window, boolean mask) or None if empty."""
    shapes = list(shapes)
    if not shapes:
        return None
    boxes = [s.bbox() for s in shapes]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    w = grid.window(lo, hi)
    if w is None:
        return None
    sl, *_ = w
    mask = np.zeros(tuple(s.stop - s.start for s in sl), dtype=bool)
    for sh, (blo, bhi) in zip(shapes, boxes):
        ws = grid.window(blo, bhi)
        if ws is None:
            continue
        ssl, x, y, z = ws
        sub = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(ssl, sl))
        mask[sub] |= np.broadcast_to(sh.inside(x, y, z), tuple(s.stop - s.start for s in ssl))
    return sl, mask


def _interior(body: np.ndarray) -> np.ndarray:
    """Voxels of ``body`` whose six face neighbours are all in ``body`` (outside the array = outside)."""
    out = body.copy()
    for ax in range(3):
        n = body.shape[ax]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(1, n), slice(0, n - 1)
        out[tuple(lo)] &= body[tuple(hi)]
        out[tuple(hi)] &= body[tuple(lo)]
        edge = [slice(None)] * 3
        edge[ax] = 0
        out[tuple(edge)] = False
        edge[ax] = n - 1
        out[tuple(edge)] = False
    return out


def _hash_uniform(flat_index: np.ndarray) -> np.ndarray:
    """Deterministic numbers in [0, 1) per voxel: the 64-bit finaliser of MurmurHash3 of the flat index."""
    h = flat_index.astype(np.uint64)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ----------------------------------------------------------------------------- body dimensions
@dataclass(frozen=True)
class _Body:
    """Outer dimensions (cm) of a phantom for a given trunk semi-axis AT."""

    age: str
    sex: str
    at: float
    bt: float
    ct: float
    cl: float
    neck_h: float
    a_n: float
    b_n: float
    brain0: tuple[float, float, float]  # brain semi-axes from the analytic volume (cm)
    skull: float
    scalp: float
    a_h: float
    b_h: float
    cap: float  # semi-axis of the head cap
    z_head: float  # base of the head
    z_bc: float  # centre of the brain (top of the head's cylinder part)
    ankle: float

    @property
    def f(self) -> tuple[float, float, float]:
        """Stretch of the normalised trunk frame (adult ORNL trunk 20 × 10 × 70 cm) to this body."""
        return (self.at / 20.0, self.bt / 10.0, self.ct / 70.0)

    @property
    def face(self) -> float:
        """Height of the head below the brain (cm)."""
        return self.z_bc - self.brain0[2] - self.z_head

    @property
    def top(self) -> float:
        return self.z_bc + self.cap

    @property
    def height(self) -> float:
        return self.top + self.cl


def _ellipsoid_semi_for(volume_cm3: float, shape=_BRAIN_SHAPE) -> tuple[float, float, float]:
    v1 = 4.0 / 3.0 * math.pi * shape[0] * shape[1] * shape[2]
    s = (volume_cm3 / v1) ** (1.0 / 3.0)
    return (shape[0] * s, shape[1] * s, shape[2] * s)


def _body(age: str, sex: str, at: float, targets: dict[str, float]) -> _Body:
    d = _DESIGN[age]
    h = _HEIGHT_CM[(age, sex)]
    ct, cl, neck_h = d["ct"] * h, d["cl"] * h, d["neck"] * h
    brain0 = _ellipsoid_semi_for(targets["brain"] / tissue("brain", age).density_g_cm3)
    dd = d["skull"] + d["scalp"]
    a_h, b_h, cap = brain0[0] + dd, brain0[1] + dd, brain0[2] + dd
    head_h = h - ct - cl - neck_h
    cyl = max(head_h - cap, 1.25 * brain0[2])  # at least a quarter of the brain's height as face
    z_head = ct + neck_h
    return _Body(age=age, sex=sex, at=at, bt=d["bt"] * at, ct=ct, cl=cl, neck_h=neck_h, a_n=0.75 * a_h,
                 b_n=0.62 * b_h, brain0=brain0, skull=d["skull"], scalp=d["scalp"], a_h=a_h, b_h=b_h, cap=cap,
                 z_head=z_head, z_bc=z_head + cyl, ankle=d["ankle"] * at)


def _outline_shapes(b: _Body) -> list[_Shape]:
    """Trunk, neck, head and legs (the body without breasts and scrotum)."""
    legs = [_Frustum(sx * b.at / 2.0, 0.0, 0.0, -b.cl, b.at / 2.0, b.bt, b.ankle, b.ankle) for sx in (-1, 1)]
    return [
        _EllipticCylinder(0.0, 0.0, b.at, b.bt, 0.0, b.ct),
        _EllipticCylinder(0.0, 0.0, b.a_n, b.b_n, b.ct - 0.5, b.z_head + 0.5),
        _EllipticCylinder(0.0, 0.0, b.a_h, b.b_h, b.z_head, b.z_bc),
        _Ellipsoid((0.0, 0.0, b.z_bc), (b.a_h, b.b_h, b.cap), clips=((0.0, 0.0, -1.0, -b.z_bc),)),
        *legs,
    ]


def _analytic_at(age: str, sex: str, targets: dict[str, float]) -> float:
    """Trunk semi-axis AT (cm) giving the reference body mass, from analytic volumes (first guess)."""
    rho = tissue("soft_tissue", age).density_g_cm3
    b1 = _body(age, sex, 1.0, targets)
    head = math.pi * b1.a_h * b1.b_h * (b1.z_bc - b1.z_head) + 2.0 / 3.0 * math.pi * b1.a_h * b1.b_h * b1.cap
    neck = math.pi * b1.a_n * b1.b_n * b1.neck_h
    d = _DESIGN[age]
    a0, b0, a1, b1_ = 0.5, d["bt"], d["ankle"], d["ankle"]
    leg = math.pi * b1.cl * (a0 * b0 + (a0 * (b1_ - b0) + b0 * (a1 - a0)) / 2.0 + (a1 - a0) * (b1_ - b0) / 3.0)
    trunk = math.pi * d["bt"] * b1.ct
    # organs denser or lighter than soft tissue shift the mass: sum m (1 - rho_soft/rho_organ)
    shift = 0.0
    for name, m in targets.items():
        if name in _ID and name not in ("soft_tissue", "skin"):
            shift += m * (1.0 - rho / tissue(LABELS[_ID[name]].tissue, age).density_g_cm3)
    need = (targets["total_body"] - shift) / rho - head - neck
    return math.sqrt(max(need, 1.0) / (trunk + 2.0 * leg))


# ----------------------------------------------------------------------------- targets
def _targets(age: str, sex: str) -> tuple[dict[str, float], dict[str, dict]]:
    """Target mass (g) of every fitted organ and, per organ, its reference and note."""
    ref = organ_masses(age, sex)
    src = organ_mass_sources(age, sex)
    targets: dict[str, float] = {"total_body": ref["total_body"]}
    info: dict[str, dict] = {}
    for name, keys in _REFERENCE_KEYS.items():
        if name in ("testes", "prostate") and sex != "male":
            continue
        if name in ("ovaries", "uterus") and sex != "female":
            continue
        if all(k in ref for _, k in keys):
            m = float(sum(sign * ref[k] for sign, k in keys))
            sources = sorted({src[k] for _, k in keys})
            how = " ".join(("- " if sign < 0 else "+ ") + k for sign, k in keys)[2:]
            info[name] = dict(reference_mass_g=m, mass_reference=f"ICRP 89 {how} ({'; '.join(sources)})", note="")
            targets[name] = m
    # design values where ICRP 89 gives none
    if "breast" not in targets:
        adult_male = organ_masses("adult", "male")
        m = adult_male["breast"] * ref["total_body"] / adult_male["total_body"]
        targets["breast"] = m
        info["breast"] = dict(reference_mass_g=None, mass_reference=None,
                              note=f"no ICRP 89 breast mass found below 15 y; design value {m:.3g} g = adult male "
                                   f"breast ({adult_male['breast']:g} g) scaled by body mass")
    m = 4.0 * targets["urinary_bladder_wall"]
    targets["urinary_bladder_contents"] = m
    info["urinary_bladder_contents"] = dict(
        reference_mass_g=None, mass_reference=None,
        note=f"no ICRP 89 urine volume found; design value {m:.3g} g = 4 x the bladder wall mass "
             "(a moderately filled bladder, about 200 ml in the adult male)")
    return targets, info


# ----------------------------------------------------------------------------- calibration
def _solve_scale(mass_of: Callable[[float], float], target: float, s0: float,
                 rel_tol: float = 0.002, max_eval: int = 40) -> float:
    """Scale s with mass_of(s) ≈ target (mass_of non-decreasing in s): bracket, then bisect in log s."""
    best = (math.inf, s0)

    def f(s):
        nonlocal best
        m = mass_of(s)
        err = abs(m - target)
        if err < best[0]:
            best = (err, s)
        return m - target

    lo, hi = s0 / 1.15, s0 * 1.15
    flo, fhi = f(lo), f(hi)
    n = 2
    while flo > 0 and n < max_eval // 2:
        hi, fhi = lo, flo
        lo /= 1.5
        flo = f(lo)
        n += 1
    while fhi < 0 and n < max_eval // 2 and hi < 4.0 * s0:
        lo, flo = hi, fhi
        hi *= 1.5
        fhi = f(hi)
        n += 1
    if flo > 0 or fhi < 0:
        return best[1]
    while n < max_eval and best[0] > rel_tol * target and hi / lo - 1.0 > 1e-6:
        mid = math.sqrt(lo * hi)
        fm = f(mid)
        n += 1
        if fm < 0:
            lo = mid
        else:
            hi = mid
    return best[1]


class _Fitter:
    """Solves scale factors and records them (for the phantom's calibration report)."""

    def __init__(self):
        self.scales: dict[str, float] = {}

    def scale(self, key: str, mass_of: Callable[[float], float], target: float, s0: float) -> float:
        s = _solve_scale(mass_of, target, s0)
        self.scales[key] = s
        return s


@dataclass
class _Canvas:
    grid: _Grid
    lab: np.ndarray
    age: str
    v3: float  # voxel volume, cm^3

    def density(self, label: int) -> float:
        return tissue(LABELS[label].tissue, self.age).density_g_cm3

    def free_count(self, shapes) -> int:
        r = _raster(self.grid, shapes)
        if r is None:
            return 0
        sl, m = r
        return int(np.count_nonzero(m & (self.lab[sl] == SOFT)))

    def paint(self, shapes, label: int) -> int:
        r = _raster(self.grid, shapes)
        if r is None:
            return 0
        sl, m = r
        sub = self.lab[sl]
        m &= sub == SOFT
        sub[m] = label
        return int(np.count_nonzero(m))


def _fit_organ(cv: _Canvas, fit: _Fitter, key: str, label: int, make: Callable[[float], list[_Shape]],
               target_g: float, dim: int = 3, extra_g: float = 0.0) -> float:
    """Fit the scale of ``make`` so its free voxels weigh ``target_g`` (+ ``extra_g`` already inside), paint it."""
    rho = cv.density(label)
    n1 = cv.free_count(make(1.0))
    s0 = ((target_g + extra_g) / max(n1 * cv.v3 * rho, 1e-9)) ** (1.0 / dim) if n1 else 1.0
    s = fit.scale(key, lambda s: cv.free_count(make(s)) * cv.v3 * rho, target_g, s0)
    cv.paint(make(s), label)
    return s


# ----------------------------------------------------------------------------- anatomy
def _trunk(b: _Body, shape: _Shape, c=None, s: float = 1.0) -> _Shape:
    """A shape written in the normalised trunk frame, optionally scaled by s about c (frame coords)."""
    if c is not None and s != 1.0:
        shape = _Scaled(shape, c, s)
    return _InFrame(shape, b.f)


def _organ_makers(b: _Body) -> dict[str, Callable[[float], list[_Shape]]]:
    """Shape factories (scale → shapes) of the soft-tissue organs, in the normalised trunk frame or world cm."""
    T = lambda sh, c, s: _trunk(b, sh, c, s)  # noqa: E731
    mk: dict[str, Callable[[float], list[_Shape]]] = {}

    def ell(c, a, clips=()):
        return lambda s: [T(_Ellipsoid(c, a, clips), c, s)]

    def pair(c, a, clips_of=lambda sx: ()):
        return lambda s: [T(_Ellipsoid((sx * c[0], c[1], c[2]), a, clips_of(sx)), (sx * c[0], c[1], c[2]), s)
                          for sx in (-1, 1)]

    # head and neck (world cm)
    bc = (0.0, 0.0, b.z_bc)
    mk["brain"] = lambda s: [_Scaled(_Ellipsoid(bc, b.brain0), bc, s)]
    face = b.face
    par_c = (0.72 * b.a_h, 0.15 * b.b_h, b.z_bc - b.brain0[2] - 0.35 * face)
    par_a = (0.17 * b.a_h, 0.22 * b.b_h, max(0.25 * face, 0.12 * b.b_h))
    mk["salivary_glands"] = lambda s: [_Scaled(_Ellipsoid((sx * par_c[0], par_c[1], par_c[2]), par_a),
                                               (sx * par_c[0], par_c[1], par_c[2]), s) for sx in (-1, 1)]
    thy_c = (0.3 * b.a_n, -0.55 * b.b_n, b.ct + 0.45 * b.neck_h)
    thy_a = (0.15 * b.a_n, 0.17 * b.b_n, max(0.3 * b.neck_h, 0.25 * b.a_n))
    mk["thyroid"] = lambda s: [_Scaled(_Ellipsoid((sx * thy_c[0], thy_c[1], thy_c[2]), thy_a),
                                       (sx * thy_c[0], thy_c[1], thy_c[2]), s) for sx in (-1, 1)]
    # oesophagus: a solid tube from the pharynx to the stomach (neck part in world cm, thorax in the frame)
    r_oes = 0.7

    def oesophagus(s):
        f = b.f
        r_world = r_oes * s * 0.5 * (f[0] + f[1])
        top = (0.0, 0.15 * b.b_n, b.z_head + 0.3 * face)
        base = (0.0, 2.0 * f[1], b.ct)
        return [_Capsule(top, base, r_world),
                _InFrame(_Capsule((0.0, 2.0, 70.0), (0.5, 2.0, 46.0), r_oes * s), f),
                _InFrame(_Capsule((0.5, 2.0, 46.0), (5.0, -1.8, 41.5), r_oes * s), f)]
    mk["oesophagus"] = oesophagus
    # thorax and abdomen (normalised trunk frame)
    mk["thymus"] = ell((0.0, -7.0, 62.0), (3.0, 1.0, 4.0))
    mk["adrenals"] = pair((4.5, 6.5, 38.0), (1.5, 0.5, 3.5), lambda sx: ((0.0, 0.0, -1.0, -38.0),))
    mk["gallbladder"] = ell((-4.5, -3.2, 30.0), (1.8, 1.8, 4.0))
    mk["pancreas"] = ell((0.0, 0.0, 37.0), (16.0, 1.2, 3.0), ((-1.0, 0.0, 0.0, 0.0),))
    mk["heart"] = ell((1.0, -2.5, 51.5), (6.0, 4.5, 6.5))
    mk["stomach"] = ell((8.0, -4.0, 35.0), (4.0, 3.0, 8.0))
    mk["spleen"] = ell((11.0, 3.0, 37.0), (3.5, 2.0, 6.0))
    mk["kidneys"] = pair((6.0, 6.0, 32.5), (4.5, 1.5, 5.5), lambda sx: ((-float(sx), 0.0, 0.0, -3.0),))
    liver_c = (-6.0, 0.0, 35.0)
    liver = _EllipticCylinder(0.0, 0.0, 16.5, 8.0, 27.0, 43.0,
                              clips=((1.0 / 35.0, 1.0 / 45.0, -1.0 / 43.0, -1.0),))
    mk["liver"] = lambda s: [T(liver, liver_c, s)]
    mk["lungs"] = pair((8.5, 0.0, 43.5), (5.0, 7.5, 24.0), lambda sx: ((0.0, 0.0, -1.0, -43.5),))
    mk["uterus"] = ell((0.0, 0.8, 12.0), (3.0, 1.4, 3.6))
    mk["ovaries"] = pair((6.0, 0.5, 12.0), (1.0, 0.5, 2.0))
    mk["prostate"] = ell((0.0, -2.5, 3.5), (1.5, 1.3, 1.6))
    mk["urinary_bladder"] = ell((0.0, -4.5, 8.0), (4.9, 3.7, 3.2))
    colon = [((-8.5, -2.4, 8.0), (-8.5, -2.4, 25.5)), ((-8.5, -2.4, 25.5), (9.0, -1.0, 25.5)),
             ((9.0, -1.0, 25.5), (9.0, 1.0, 9.5)), ((9.0, 1.0, 9.5), (0.0, 4.0, 6.5)),
             ((0.0, 4.0, 6.5), (0.0, 4.5, 0.8))]
    mk["colon"] = lambda s: [_InFrame(_Capsule(p0, p1, 2.0 * s), b.f) for p0, p1 in colon]
    si = _EllipticCylinder(0.0, -3.0, 10.0, 4.5, 12.0, 23.0)
    mk["small_intestine"] = lambda s: [T(si, (0.0, -3.0, 17.5), s)]
    return mk


def _breast_maker(b: _Body):
    y_surf = -10.0 * math.sqrt(1.0 - (9.0 / 20.0) ** 2)  # trunk surface at X = ±9 (frame)
    c = (9.0, y_surf - 0.5, 47.0)

    def make(s):
        return [_trunk(b, _Ellipsoid((sx * c[0], c[1], c[2]), (4.5, 4.5, 4.5), ((0.0, 1.0, 0.0, y_surf + 0.8),)),
                       (sx * c[0], c[1], c[2]), s) for sx in (-1, 1)]
    return make


def _testes_makers(b: _Body):
    c, a = (1.5, -8.5, -3.0), (1.3, 1.5, 2.3)

    def testes(s):
        return [_trunk(b, _Ellipsoid((sx * c[0], c[1], c[2]), a), (sx * c[0], c[1], c[2]), s) for sx in (-1, 1)]

    def scrotum(s, margin_cm):
        f = b.f
        semi = ((c[0] + a[0] * s) * f[0] + margin_cm, a[1] * s * f[1] + margin_cm, a[2] * s * f[2] + margin_cm)
        return [_Ellipsoid((0.0, c[1] * f[1], c[2] * f[2]), semi)]
    return testes, scrotum


@dataclass(frozen=True)
class _Bone:
    group: int  # 0 axial, 1 proximal long bone, 2 distal long bone
    outer: Callable[[float], _Shape]  # bone-size factor s → outer solid
    cavity: Callable[[float, float], _Shape]  # (s, k) → marrow cavity


def _bones(b: _Body) -> list[_Bone]:
    """The skeleton: each bone's outer solid for size factor s and its marrow cavity for cavity factor k."""
    f = b.f
    out: list[_Bone] = []

    def fr(sh):
        return _InFrame(sh, f)

    def annulus(cx, cy, ax, ay, t, z0, z1, clips=(), group=0):
        out.append(_Bone(group, lambda s: fr(_EllipticAnnulus(cx, cy, ax, ay, 0.0, t * s, z0, z1, clips)),
                         lambda s, k: fr(_EllipticAnnulus(cx, cy, ax, ay, t * s * (1 - k) / 2, t * s * (1 + k) / 2,
                                                          z0, z1, clips))))

    def cylinder(cx, cy, ax, ay, z0, z1, group=0, frame=True):
        wrap = fr if frame else (lambda sh: sh)
        out.append(_Bone(group, lambda s: wrap(_EllipticCylinder(cx, cy, ax * s, ay * s, z0, z1)),
                         lambda s, k: wrap(_EllipticCylinder(cx, cy, ax * s * k, ay * s * k, z0, z1))))

    def tube(p0, p1, r, group=0, frame=True):
        wrap = fr if frame else (lambda sh: sh)
        out.append(_Bone(group, lambda s: wrap(_Capsule(p0, p1, r * s)), lambda s, k: wrap(_Capsule(p0, p1, r * s * k))))

    # spine: thoraco-lumbar (frame) and cervical (world, in the neck)
    cylinder(0.0, 5.5, 2.0, 2.5, 14.0, 70.0)
    cylinder(0.0, 0.45 * b.b_n, 0.28 * b.a_n, 0.25 * b.b_n, b.ct, b.z_head + 0.4 * b.face, frame=False)
    # ribs: 12 elliptical annuli between Z = 35.1 and 63.3
    pitch = (63.3 - 35.1) / 12.0
    for i in range(12):
        z0 = 35.1 + i * pitch
        annulus(0.0, 0.0, 16.5, 9.2, 0.6, z0, z0 + 0.6 * pitch)
    # pelvis: posterior and lateral part of an elliptical annulus
    annulus(0.0, -1.0, 12.5, 9.5, 0.9, 7.0, 21.0, clips=((0.0, -1.0, 0.0, 4.0),))
    # scapulae: posterior plates
    for sx in (-1, 1):
        clips = ((0.0, -1.0, 0.0, -5.5), (-float(sx), 0.0, 0.0, -5.0), (float(sx), 0.0, 0.0, 14.0))
        annulus(0.0, 0.0, 16.9, 9.7, 0.4, 50.0, 66.0, clips=clips)
        # clavicles
        tube((sx * 1.5, -7.5, 66.5), (sx * 15.0, -1.5, 67.5), 0.6)
        # arm bones inside the trunk ellipse: humerus (proximal) and forearm (distal)
        cylinder(sx * 18.0, 0.0, 1.1, 1.2, 36.0, 67.0, group=1)
        cylinder(sx * 18.0, 0.3, 0.9, 1.5, 8.0, 35.0, group=2)
        # femur (proximal) and tibia (distal) along the leg axis (world cm)
        xl, r = sx * b.at / 2.0, 0.058 * b.at
        tube((xl, 0.0, -0.03 * b.cl), (xl, 0.0, -0.48 * b.cl), r, group=1, frame=False)
        tube((xl, 0.0, -0.53 * b.cl), (xl, 0.0, -0.95 * b.cl), 0.8 * r, group=2, frame=False)
    # cranium: shell outside the (analytic) brain; mandible: front arc of an elliptical annulus
    bc = (0.0, 0.0, b.z_bc)
    out.append(_Bone(0, lambda s: _EllipsoidShell(bc, b.brain0, 0.0, b.skull * s),
                     lambda s, k: _EllipsoidShell(bc, b.brain0, b.skull * s * (1 - k) / 2, b.skull * s * (1 + k) / 2)))
    zm0, zm1 = b.z_head + 0.05 * b.face, b.z_head + 0.5 * b.face
    t_m = 1.2 * b.skull
    out.append(_Bone(0, lambda s: _EllipticAnnulus(0.0, 0.0, 0.88 * b.a_h, 0.92 * b.b_h, 0.0, t_m * s, zm0, zm1,
                                                   ((0.0, 1.0, 0.0, 0.3 * b.b_h),)),
                     lambda s, k: _EllipticAnnulus(0.0, 0.0, 0.88 * b.a_h, 0.92 * b.b_h, t_m * s * (1 - k) / 2,
                                                   t_m * s * (1 + k) / 2, zm0, zm1, ((0.0, 1.0, 0.0, 0.3 * b.b_h),))))
    return out


def _skeleton_masks(grid: _Grid, lab: np.ndarray, bones: list[_Bone], s: float, k: float | None):
    """Free voxels of the bones' outer solids, and (if k) of their cavities with each voxel's marrow weight group."""
    free = lab == SOFT
    outer = np.zeros(grid.shape, dtype=bool)
    cav = np.zeros(grid.shape, dtype=bool) if k is not None else None
    group = np.full(grid.shape, 3, dtype=np.int8) if k is not None else None
    for bone in bones:
        r = _raster(grid, [bone.outer(s)])
        if r is not None:
            sl, m = r
            outer[sl] |= m
        if k is not None:
            r = _raster(grid, [bone.cavity(s, k)])
            if r is not None:
                sl, m = r
                cav[sl] |= m
                g = group[sl]
                np.minimum(g, np.where(m, bone.group, 3).astype(np.int8), out=g)
    outer &= free
    if k is not None:
        cav &= outer
    return outer, cav, group


# ----------------------------------------------------------------------------- assembly
#: Paint (and fit) order of the soft-tissue organs after skin, breasts, testes, eyes and skeleton:
#: an organ only takes voxels no earlier organ took, so small organs come before large ones.
_PAINT_ORDER = ("brain", "salivary_glands", "thyroid", "oesophagus", "thymus", "adrenals", "gallbladder", "pancreas",
                "heart", "stomach", "spleen", "kidneys", "liver", "lungs", "uterus", "ovaries", "prostate",
                "urinary_bladder", "colon", "small_intestine")
#: Organs made of a contents region inside a wall region (labels ``<name>_wall``, ``<name>_contents``).
_WALLED = ("gallbladder", "heart", "stomach", "urinary_bladder", "colon", "small_intestine")
@dataclass(frozen=True)
class OrganEntry:
    """One label of a phantom and its mass.

    Attributes
    ----------
    label : int
        Label id in the label map.
    name : str
        Organ or tissue region name (e.g. ``"liver"``, ``"stomach_wall"``).
    tissue : Tissue
        Material of the label (composition, density in g/cm³).
    mass_g, volume_cm3 : float
        Voxelised mass (g) and volume (cm³).
    target_mass_g : float or None
        Mass the calibration aimed at (g): the ICRP 89 reference or a design value.
    reference_mass_g : float or None
        ICRP 89 reference mass (g); None where no value was found.
    mass_reference : str or None
        Where the reference comes from; None for design values (see ``note``).
    deviation_pct : float or None
        ``100 (mass - reference)/reference``; None without a reference.
    icrp103_tissue : str or None
        The ICRP 103 tissue this label stands for in effective dose, if any.
    note : str
        Caveats (design values, exclusions from the mass check).
    """

    label: int
    name: str
    tissue: Tissue
    mass_g: float
    volume_cm3: float
    target_mass_g: float | None
    reference_mass_g: float | None
    mass_reference: str | None
    deviation_pct: float | None
    icrp103_tissue: str | None
    note: str = ""


@dataclass
class ReferencePhantom:
    """A voxelised stylised reference phantom.

    Attributes
    ----------
    age, sex : str
        ICRP reference age and sex.
    voxel_mm : float
        Isotropic voxel size (mm).
    labels : Volume
        ``uint8`` label map ``[z, y, x]`` in the LPS frame (mm); ``x = y = 0`` is the trunk
        axis (the grid centre in x and y) and ``z = 0`` the base of the trunk.
    organs : dict of int to OrganEntry
        Every label present (air excluded), by label id.
    body : dict
        Whole-body numbers: ``mass_g``, ``reference_mass_g``, ``deviation_pct``,
        ``height_cm``, ``reference_height_cm``, ``trunk_semi_axes_cm`` (AT, BT),
        ``trunk_height_cm``, ``leg_length_cm``.
    composites : dict
        Sums of labels compared with an ICRP 89 total (e.g. ``heart_with_blood``).
    calibration : dict
        The scale factors used and where they come from.
    """

    age: str
    sex: str
    voxel_mm: float
    labels: Volume
    organs: dict[int, OrganEntry]
    body: dict
    composites: dict
    calibration: dict

    def organ(self, name: str) -> OrganEntry:
        """The entry of a label by organ name (raises PhantomError listing the names if absent)."""
        for e in self.organs.values():
            if e.name == name:
                return e
        raise PhantomError(f"no organ {name!r} in this phantom; organs: {[e.name for e in self.organs.values()]}")

    def materials(self) -> list[tuple[int, Tissue]]:
        """Label → tissue rows for :func:`phantoms.tissues.write_materials_csv` (air label 0 included)."""
        return [(AIR, tissue("air", self.age))] + [(k, e.tissue) for k, e in sorted(self.organs.items())]


def _grid_for(b: _Body, voxel_cm: float) -> _Grid:
    margin = 2 * voxel_cm
    x_half = max(b.at, b.a_h) + margin
    y_half = max(1.6 * b.bt, b.b_h) + margin
    nx = 2 * int(math.ceil(x_half / voxel_cm))
    ny = 2 * int(math.ceil(y_half / voxel_cm))
    k_below = int(math.ceil((b.cl + margin) / voxel_cm))
    nz = k_below + int(math.ceil((b.top + margin) / voxel_cm))
    return _Grid(voxel_cm, nx, ny, nz, -k_below * voxel_cm)


def _assemble(age: str, sex: str, voxel_mm: float, at: float):
    """Build the label map for trunk semi-axis ``at`` (cm), fitting every organ's scale in paint order."""
    targets, _ = _targets(age, sex)
    fit = _Fitter()
    b = _body(age, sex, at, targets)
    v = voxel_mm / 10.0
    grid = _grid_for(b, v)
    lab = np.zeros(grid.shape, dtype=np.uint8)
    cv = _Canvas(grid, lab, age, v ** 3)
    r = _raster(grid, _outline_shapes(b))
    body = np.zeros(grid.shape, dtype=bool)
    body[r[0]] |= r[1]

    # appendages (breasts, scrotum) extend the outline: fit each with the skin computed locally
    appendages: list[tuple[str, int, Callable, Callable]] = []
    breast = _breast_maker(b)
    appendages.append(("breast", _ID["breast"], breast, breast))
    if sex == "male":
        testes, scrotum = _testes_makers(b)
        appendages.append(("testes", _ID["testes"], testes, lambda s: scrotum(s, 2.0 * v)))
    pad = 2 * v
    for name, label, organ, envelope in appendages:
        rho = cv.density(label)

        def count(s, organ=organ, envelope=envelope):
            # organ voxels inside the local body (base outline + this envelope) less its skin layer;
            # the organ lies inside its envelope, so the envelope's padded box holds all of it
            env = envelope(s)
            lo = np.min([e.bbox()[0] for e in env], axis=0) - pad
            hi = np.max([e.bbox()[1] for e in env], axis=0) + pad
            w = grid.window(lo, hi)
            if w is None:
                return 0
            sl, x, y, z = w
            local = body[sl].copy()
            for e in env:
                local |= np.broadcast_to(e.inside(x, y, z), local.shape)
            om = np.zeros(local.shape, dtype=bool)
            for o in organ(s):
                om |= np.broadcast_to(o.inside(x, y, z), local.shape)
            return int(np.count_nonzero(om & _interior(local)))

        n1 = count(1.0)
        s0 = (targets[name] / max(n1 * cv.v3 * rho, 1e-9)) ** (1.0 / 3.0) if n1 else 1.0
        s = fit.scale(name, lambda s: count(s) * cv.v3 * rho, targets[name], s0)
        for e in envelope(s):
            re = _raster(grid, [e])
            if re is not None:
                body[re[0]] |= re[1]

    lab[body] = SOFT
    lab[body & ~_interior(body)] = SKIN
    for name, label, organ, _ in appendages:
        cv.paint(organ(fit.scales[name]), label)

    # eyes and lenses (lens: design size, not fitted)
    r_eye = ((targets["eyes"] / 2.0 / cv.density(_ID["eyes"])) * 3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    # eyes just behind the front of the head (the head's ellipse at x = ±0.4 a_h), below the brain's centre
    y_front = -b.b_h * math.sqrt(1.0 - 0.4 ** 2)
    eye_c = [(sx * 0.4 * b.a_h, y_front + r_eye + max(0.25, 1.5 * v), b.z_bc - 0.75 * b.brain0[2]) for sx in (-1, 1)]
    lens = [_Ellipsoid((c[0], c[1] - 0.75 * r_eye, c[2]), (0.375 * r_eye, 0.17 * r_eye, 0.375 * r_eye)) for c in eye_c]
    n_lens = cv.paint(lens, _ID["eye_lens"])
    if n_lens == 0:  # below the resolution: keep one voxel per lens at its centre
        for le in lens:
            idx = np.round(np.array([(le.c[2] - grid.z0) / v - 0.5, le.c[1] / v + (grid.ny - 1) / 2.0,
                                     le.c[0] / v + (grid.nx - 1) / 2.0])).astype(int)
            if lab[tuple(idx)] == SOFT:
                lab[tuple(idx)] = _ID["eye_lens"]
    _fit_organ(cv, fit, "eyes", _ID["eyes"],
               lambda s: [_Scaled(_Ellipsoid(c, (r_eye,) * 3), c, s) for c in eye_c], targets["eyes"])

    # skeleton: size s (bone + marrow volume), cavity k (marrow volume), red fraction alpha (red mass)
    bones = _bones(b)
    rho_b, rho_r, rho_y = cv.density(BONE), cv.density(RED), cv.density(YELLOW)
    m_red, m_yel = targets["red_marrow"], targets["yellow_marrow"]
    v_all = targets["cortical_bone"] / rho_b + m_red / rho_r + m_yel / rho_y
    v_cav = m_red / rho_r + m_yel / rho_y
    s_b = fit.scale("skeleton_size", lambda s: float(np.count_nonzero(_skeleton_masks(grid, lab, bones, s, None)[0]))
                    * cv.v3, v_all, 1.0)
    k_b = fit.scale("skeleton_cavity", lambda k: float(np.count_nonzero(_skeleton_masks(grid, lab, bones, s_b, k)[1]))
                    * cv.v3, v_cav, 0.6)
    outer, cav, group = _skeleton_masks(grid, lab, bones, s_b, k_b)
    idx = np.flatnonzero(cav)
    weights = np.asarray(_MARROW_WEIGHT[age] + (0.0,))[group.ravel()[idx]]
    u = _hash_uniform(idx)
    with np.errstate(divide="ignore"):
        ratio = np.where(weights > 0, u / np.where(weights > 0, weights, 1.0), np.inf)
    # the n_red voxels of smallest u/w are red: red iff u < alpha w, alpha the (n_red+1)-th smallest ratio
    n_red = int(round(m_red / (rho_r * cv.v3)))
    finite = np.sort(ratio[np.isfinite(ratio)])
    alpha = math.inf if n_red >= finite.size else float(finite[n_red]) if n_red > 0 else 0.0
    fit.scales["red_fraction"] = alpha if math.isfinite(alpha) else 1e300
    flat = lab.reshape(-1)
    flat[np.flatnonzero(outer)] = BONE
    red = ratio < alpha
    flat[idx[red]] = RED
    flat[idx[~red]] = YELLOW

    # soft-tissue organs, small before large (first painted wins); walled organs: contents, then wall
    mk = _organ_makers(b)
    for name in _PAINT_ORDER:
        if name in ("uterus", "ovaries") and sex != "female" or name == "prostate" and sex != "male":
            continue
        dim = 2 if name in ("colon", "oesophagus") else 3  # tubes scale in radius only
        if name in _WALLED:
            wall, cont = f"{name}_wall", f"{name}_contents"
            _fit_organ(cv, fit, cont, _ID[cont], mk[name], targets[cont], dim=dim)
            _fit_organ(cv, fit, wall, _ID[wall], mk[name], targets[wall], dim=dim, extra_g=targets[cont])
        else:
            _fit_organ(cv, fit, name, _ID[name], mk[name], targets[name], dim=dim)
    return b, grid, lab, fit.scales, targets


def _body_mass_g(lab: np.ndarray, age: str, v3: float) -> float:
    counts = np.bincount(lab.ravel(), minlength=max(LABELS) + 1)
    return float(sum(counts[k] * v3 * tissue(d.tissue, age).density_g_cm3 for k, d in LABELS.items() if k != AIR))


def build_reference_phantom(age: str, sex: str = "male", voxel_mm: float | None = None) -> ReferencePhantom:
    """Build the stylised reference phantom of an ICRP reference age and sex.

    Parameters
    ----------
    age : str
        One of :data:`SUPPORTED_AGES`: ``"newborn", "1y", "5y", "10y", "15y", "adult"``.
    sex : str, optional
        ``"male"`` (default) or ``"female"``.
    voxel_mm : float, optional
        Isotropic voxel size in mm, in [1, 10]; default :data:`DEFAULT_VOXEL_MM` (1 mm newborn,
        1.5 mm at 1 y, 2 mm from 5 y). Organ sizes are fitted at this voxel size; organs of a
        few voxels or less (e.g. newborn gonads at 10 mm) cannot reach their masses, which the
        organ table then shows.

    Returns
    -------
    ReferencePhantom
        The label map (``uint8``, LPS, mm; ``z = 0`` at the base of the trunk, trunk axis at
        ``x = y = 0``), the organ table with masses against ICRP 89 and the body mass.

    Raises
    ------
    PhantomError
        Unsupported age (the message lists :data:`SUPPORTED_AGES`), sex, or voxel size
        outside [1, 10] mm.
    """
    _check_age_sex(age, sex)
    vmm = _check_voxel(age, voxel_mm)
    targets, _ = _targets(age, sex)
    m_target = targets["total_body"]
    at = _analytic_at(age, sex, targets)
    for attempt in range(3):
        b, grid, lab, scales, targets = _assemble(age, sex, vmm, at)
        m = _body_mass_g(lab, age, grid.v ** 3)
        if abs(m - m_target) <= 0.01 * m_target or attempt == 2:
            break
        # the head and neck do not scale with AT: correct the rest of the mass in proportion to AT²
        k_neck = int(math.floor((b.ct - grid.z0) / grid.v))
        m_head = _body_mass_g(lab[k_neck:], age, grid.v ** 3)
        at *= math.sqrt(max(m_target - m_head, 1.0) / max(m - m_head, 1.0))
    params = {"trunk_semi_x_cm": at, "scales": scales, "passes": attempt + 1}
    return _finish(age, sex, vmm, b, grid, lab, targets, params)


def _finish(age, sex, vmm, b: _Body, grid: _Grid, lab, targets, params) -> ReferencePhantom:
    _, info = _targets(age, sex)
    v3 = grid.v ** 3
    counts = np.bincount(lab.ravel(), minlength=max(LABELS) + 1)
    organs: dict[int, OrganEntry] = {}
    for k, d in LABELS.items():
        if k == AIR or counts[k] == 0 and d.name not in targets:
            continue
        t = tissue(d.tissue, age)
        vol = float(counts[k] * v3)
        mass = vol * t.density_g_cm3
        i = info.get(d.name, {})
        ref = i.get("reference_mass_g")
        note = i.get("note", "")
        if d.name == "skin" and ref and mass > 0:
            # the closed one-voxel layer is thicker than real skin: keep its mass thickness
            # (and the organ mass) by scaling its density, as mass-preserving resampling does
            f = ref / mass
            t = dataclasses.replace(t, density_g_cm3=t.density_g_cm3 * f)
            mass = vol * t.density_g_cm3
            note = "; ".join(x for x in (note, f"one-voxel layer; density scaled x{f:.3f} so that the mass "
                                               "(and mass thickness) is the ICRP 89 value") if x)
        if d.name in EXCLUDED_FROM_MASS_CHECK:
            note = "; ".join(x for x in (note, "not fitted: " + EXCLUDED_FROM_MASS_CHECK[d.name]) if x)
        if d.name == "yellow_marrow":
            note = "; ".join(x for x in (note, "adipose composition stands in for yellow marrow") if x)
        if d.name == "urinary_bladder_contents":
            note = "; ".join(x for x in (note, "water composition stands in for urine") if x)
        dev = None if not ref else 100.0 * (mass - ref) / ref
        target = targets.get(d.name)
        organs[k] = OrganEntry(label=k, name=d.name, tissue=t, mass_g=mass, volume_cm3=vol, target_mass_g=target,
                               reference_mass_g=ref, mass_reference=i.get("mass_reference"), deviation_pct=dev,
                               icrp103_tissue=d.icrp103, note=note)
    ref_all = organ_masses(age, sex)
    by_name = {e.name: e for e in organs.values()}
    composites = {}
    for cname, (parts, keys) in _COMPOSITES.items():
        if all(p in by_name for p in parts) and all(k in ref_all for k in keys):
            m = float(sum(by_name[p].mass_g for p in parts))
            r = float(sum(ref_all[k] for k in keys))
            composites[cname] = dict(labels=[_ID[p] for p in parts], mass_g=m, reference_mass_g=r,
                                     deviation_pct=100.0 * (m - r) / r if r else None)
    total = float(sum(e.mass_g for e in organs.values()))
    ref_body = ref_all["total_body"]
    origin_xyz_mm = (float(grid.xs()[0] * 10.0), float(grid.ys()[0] * 10.0), float(grid.zs()[0] * 10.0))
    vol = Volume(lab, spacing_mm=(vmm, vmm, vmm), origin_xyz_mm=origin_xyz_mm)
    body = dict(mass_g=total, reference_mass_g=ref_body, deviation_pct=100.0 * (total - ref_body) / ref_body,
                height_cm=b.height, reference_height_cm=_HEIGHT_CM[(age, sex)],
                trunk_semi_axes_cm=[b.at, b.bt], trunk_height_cm=b.ct, leg_length_cm=b.cl,
                head_semi_axes_cm=[b.a_h, b.b_h], neck_height_cm=b.neck_h)
    calibration = dict(trunk_semi_x_cm=float(params["trunk_semi_x_cm"]), passes=params["passes"],
                       scales={k: float(v) for k, v in params["scales"].items()},
                       note="scale factors fitted at this voxel size: organs isotropically about their "
                            "centres (tubes: radius), skeleton size/cavity/red fraction, breasts and testes "
                            "with their skin envelope")
    return ReferencePhantom(age=age, sex=sex, voxel_mm=vmm, labels=vol, organs=organs, body=body,
                            composites=composites, calibration=calibration)


# ----------------------------------------------------------------------------- output
def _icrp103_map(ph: ReferencePhantom) -> dict:
    """ICRP 103 tissue → labels that represent it (None where not modelled)."""
    by_tissue: dict[str, list[int]] = {}
    for k, e in ph.organs.items():
        if e.icrp103_tissue:
            by_tissue.setdefault(e.icrp103_tissue, []).append(k)
    names = [t for t in tissue_weighting_factors() if t != "remainder"] + remainder_tissues(ph.sex)
    out = {}
    for t in names:
        if t == "bone_surface":
            labs = [k for k in (RED, YELLOW) if k in ph.organs]
            out[t] = dict(labels=labs, note="endosteum approximated by the marrow cavities (mass-weighted mean dose)")
        elif t in by_tissue:
            out[t] = dict(labels=sorted(by_tissue[t]), note="")
        else:
            out[t] = dict(labels=None, note="not modelled; approximate by the residual soft tissue nearby")
    return out


def _organs_json(ph: ReferencePhantom) -> dict:
    organs = {}
    for k, e in sorted(ph.organs.items()):
        organs[e.name] = dict(label_ids=[k], tissue=e.tissue.name, density_g_cm3=e.tissue.density_g_cm3,
                              mass_g=e.mass_g, volume_cm3=e.volume_cm3, target_mass_g=e.target_mass_g,
                              reference_mass_g=e.reference_mass_g, mass_reference=e.mass_reference,
                              deviation_pct=e.deviation_pct, icrp103_tissue=e.icrp103_tissue, note=e.note)
    lab = ph.labels
    return {
        "schema_version": SCHEMA_VERSION,
        "phantom": dict(kind="stylized", age=ph.age, sex=ph.sex, voxel_mm=ph.voxel_mm,
                        shape_zyx=list(lab.shape), spacing_mm=list(lab.spacing_mm),
                        origin_xyz_mm=list(lab.origin_xyz_mm),
                        frame="LPS (x left, y posterior, z superior), mm; x = y = 0 on the trunk axis, "
                              "z = 0 at the base of the trunk (legs below)"),
        "body": ph.body,
        "organs": organs,
        "composites": ph.composites,
        "icrp103": _icrp103_map(ph),
        "excluded_from_mass_check": EXCLUDED_FROM_MASS_CHECK,
        "calibration": ph.calibration,
        "source": "digipat phantoms.stylized (ORNL-style equations, masses fitted to ICRP Publication 89)",
    }


def write_phantom(ph: ReferencePhantom, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a phantom for the dose engine, each file atomically.

    Parameters
    ----------
    ph : ReferencePhantom
        From :func:`build_reference_phantom`.
    out_dir : str or path-like
        Output folder (created if missing).

    Returns
    -------
    dict of str to Path
        ``labels`` (``labels.nii.gz``, uint8 label map, LPS, mm), ``materials``
        (``materials.csv``: ``label_id, tissue_name, density_g_cm3``, element mass fractions;
        label 0 is air) and ``organs`` (``organs.json``: per organ label ids, mass_g,
        volume_cm3, tissue, reference_mass_g, deviation_pct, notes; body mass; ICRP 103
        tissue → labels).

    Raises
    ------
    PhantomError
        ``ph`` is not a ReferencePhantom.
    """
    if not isinstance(ph, ReferencePhantom):
        raise PhantomError(f"ph must be a ReferencePhantom (from build_reference_phantom), got {type(ph).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"labels": write_image(ph.labels, out / "labels.nii.gz"),
             "materials": write_materials_csv(ph.materials(), out / "materials.csv"),
             "organs": write_json(out / "organs.json", _organs_json(ph))}
    return paths


def _label_colours():
    from matplotlib import colormaps

    cols = np.ones((max(LABELS) + 1, 4))
    pal = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors) + list(colormaps["Set3"].colors)
    fixed = {SOFT: (0.93, 0.80, 0.72), SKIN: (0.75, 0.55, 0.45), BONE: (0.98, 0.98, 0.90), RED: (0.80, 0.10, 0.15),
             YELLOW: (0.95, 0.85, 0.30), _ID["lungs"]: (0.70, 0.85, 1.00)}
    j = 0
    for k in LABELS:
        if k == AIR:
            continue
        if k in fixed:
            cols[k, :3] = fixed[k]
        else:
            cols[k, :3] = pal[j % len(pal)][:3]
            j += 1
    return cols


def plot_phantom(ph: ReferencePhantom, path: str | os.PathLike) -> Path:
    """Draw coronal, sagittal and axial label slices of a phantom to a PNG (atomically).

    Parameters
    ----------
    ph : ReferencePhantom
        The phantom.
    path : str or path-like
        Output PNG file.

    Returns
    -------
    Path
        The written file. Slices: coronal through the trunk axis (y = 0), sagittal through
        the midline (x = 0), axial at mid-trunk (z = CT/2). Radiological display: the
        patient's left on the right of the coronal and axial views.

    Raises
    ------
    PhantomError
        ``ph`` is not a ReferencePhantom.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if not isinstance(ph, ReferencePhantom):
        raise PhantomError(f"ph must be a ReferencePhantom, got {type(ph).__name__}")
    arr = ph.labels.array
    nz, ny, nx = arr.shape
    v = ph.voxel_mm
    ox, oy, oz = ph.labels.origin_xyz_mm
    cmap = ListedColormap(_label_colours())
    k_mid = int(round((ph.body["trunk_height_cm"] * 5.0 - oz) / v))
    k_mid = min(max(k_mid, 0), nz - 1)
    ext_x = (ox - v / 2, ox + (nx - 0.5) * v)
    ext_y = (oy - v / 2, oy + (ny - 0.5) * v)
    ext_z = (oz - v / 2, oz + (nz - 0.5) * v)
    fig, axes = plt.subplots(1, 4, figsize=(16, 9), gridspec_kw=dict(width_ratios=[1.0, 0.9, 1.2, 0.6]))
    kw = dict(cmap=cmap, vmin=-0.5, vmax=max(LABELS) + 0.5, interpolation="nearest")
    axes[0].imshow(arr[:, ny // 2, :], origin="lower", extent=(*ext_x, *ext_z), **kw)
    axes[0].set(title="coronal (y = 0)", xlabel="x (mm, patient left →)", ylabel="z (mm)")
    axes[1].imshow(arr[:, :, nx // 2], origin="lower", extent=(*ext_y, *ext_z), **kw)
    axes[1].set(title="sagittal (x = 0)", xlabel="y (mm, posterior →)")
    axes[2].imshow(arr[k_mid], origin="upper", extent=(ext_x[0], ext_x[1], ext_y[1], ext_y[0]), **kw)
    axes[2].set(title=f"axial (z = {oz + k_mid * v:.0f} mm)", xlabel="x (mm)", ylabel="y (mm, posterior ↓)")
    colours = cmap.colors
    present = [k for k in sorted(ph.organs)]
    handles = [Patch(facecolor=colours[k], edgecolor="k", linewidth=0.3, label=f"{k} {ph.organs[k].name}")
               for k in present]
    axes[3].axis("off")
    axes[3].legend(handles=handles, loc="center left", fontsize=7, frameon=False)
    fig.suptitle(f"digipat stylised phantom: {ph.age} {ph.sex}, {v:g} mm voxels, "
                 f"{ph.body['mass_g'] / 1000:.1f} kg (ICRP 89 {ph.body['reference_mass_g'] / 1000:.1f} kg), "
                 f"{ph.body['height_cm']:.0f} cm")
    fig.tight_layout()
    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return p
