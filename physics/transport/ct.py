"""CT scanner source geometry: an isotropic point source on a circle, collimated to a fan.

This is the source model of AAPM TG-195 Cases 4 and 5 (Sechopoulos et al., *Med. Phys.*
42 (2015) 5679; spec in ``../shared/reference/tg195/README.md`` §1 "Source model" and §2
"Coordinate system"):

- an ideal point source (no focal-spot size, no heel effect, no bowtie) at

  .. math:: S(\\theta) = c - R\\,(\\cos\\theta\\,\\hat u + \\sin\\theta\\,\\hat v),

  where :math:`c` is the isocentre, :math:`R` the source-to-isocentre distance and
  :math:`(\\hat u, \\hat v, \\hat a)` a right-handed frame with :math:`\\hat a` the rotation
  axis. For the default axis :math:`\\hat a = \\hat z` this is TG-195's
  :math:`S(\\theta) = R(-\\cos\\theta, -\\sin\\theta, 0)`;
- the central ray :math:`\\hat c = (c - S)/R` points at the isocentre, the fan direction
  is :math:`\\hat f = \\hat a \\times \\hat c` (along +y at θ = 0) and the slice direction
  is :math:`\\hat a`;
- emission is **isotropic**, i.e. uniform per unit solid angle, inside the pyramid whose
  base is the rectangle ``fan_width_mm`` × ``slice_width_mm`` on the isocentre plane (the
  plane through the isocentre perpendicular to the central ray).

Sampling. A point :math:`(x, y)` of the isocentre-plane rectangle subtends
:math:`d\\Omega = R\\,dA / r^3 = \\cos^3\\!\\gamma\\, dA / R^2` with
:math:`r^2 = R^2 + x^2 + y^2` and γ the off-axis angle, so directions uniform in solid angle
are obtained exactly by drawing :math:`(x, y)` uniformly on the rectangle and accepting
with probability :math:`\\cos^3\\gamma = (R/r)^3` (acceptance = :math:`\\Omega R^2 / (W H)`,
≥ cos³ of the corner angle: about 0.90 for the TG-195 Case 4 fan). The fluence on the
isocentre plane therefore falls off as cos³γ, as TG-195 requires.

The solid angle of the centred rectangle with half-sides :math:`a, b` seen from distance
:math:`R` is :math:`\\Omega = 4\\arcsin(\\sin\\alpha\\,\\sin\\beta)`,
:math:`\\tan\\alpha = a/R`, :math:`\\tan\\beta = b/R`.

Several projection angles: each photon picks one angle uniformly from ``angles_deg``
(a dense list approximates TG-195's continuous rotation). Results are per source photon,
so a multi-angle run is the angle average of the single-projection runs.
"""

from __future__ import annotations

import math

import numpy as np

from .materials import TransportError
from .sources import PhotonBatch, Source, Spectrum, _energy, _positive, _vec3

__all__ = ["CTFanBeam"]


class CTFanBeam(Source):
    """Isotropic point source on a circle, collimated to a rectangle on the isocentre plane.

    Parameters
    ----------
    source_to_isocentre_mm : float
        Distance R from the focal spot to the isocentre (mm, > 0). TG-195: 600 mm.
    fan_width_mm : float
        Full width of the beam on the isocentre plane along the fan direction
        (perpendicular to the axis and to the central ray), mm, > 0. TG-195 Case 4: 320 mm.
    slice_width_mm : float
        Full width of the beam on the isocentre plane along the rotation axis (mm, > 0).
        TG-195 Case 4: 10 or 80 mm.
    angles_deg : sequence of float, optional
        Projection angles θ (degrees); each photon uses one, chosen uniformly. Default (0,).
    energy_keV : float or Spectrum
        Photon energy (keV) or spectrum.
    isocentre_xyz_mm : 3 floats, optional
        World position of the isocentre (mm). Default origin.
    axis : 3 floats, optional
        Rotation axis (normalised here). Default +z.

    Attributes
    ----------
    u, v, axis : ndarray (3,)
        Right-handed frame: θ = 0 puts the source at ``isocentre - R u``; θ = 90° at
        ``isocentre - R v``. ``u`` is the component of world x (or y, when the axis is
        along x) perpendicular to the axis; ``v = axis × u``.
    """

    def __init__(self, source_to_isocentre_mm, fan_width_mm, slice_width_mm, angles_deg=(0.0,),
                 energy_keV=None, isocentre_xyz_mm=(0.0, 0.0, 0.0), axis=(0.0, 0.0, 1.0)):
        self.source_to_isocentre_mm = _positive(source_to_isocentre_mm, "source_to_isocentre_mm")
        self.fan_width_mm = _positive(fan_width_mm, "fan_width_mm")
        self.slice_width_mm = _positive(slice_width_mm, "slice_width_mm")
        if energy_keV is None:
            raise TransportError("energy_keV is required: a float > 0 (keV) or a Spectrum")
        self.energy = _energy(energy_keV)
        try:
            ang = np.asarray(angles_deg, dtype=float).ravel()
        except (TypeError, ValueError):
            raise TransportError(f"angles_deg must be a sequence of numbers (degrees), got {angles_deg!r}") from None
        if ang.size == 0:
            raise TransportError("angles_deg must hold at least one angle (degrees), got an empty sequence")
        if not np.all(np.isfinite(ang)):
            raise TransportError(f"angles_deg must be finite (degrees), got {ang[~np.isfinite(ang)][0]!r}")
        self.angles_deg = ang
        self.isocentre_xyz_mm = _vec3(isocentre_xyz_mm, "isocentre_xyz_mm")
        self.axis = _vec3(axis, "axis", unit=True)
        ref = np.eye(3)[0] if abs(self.axis[0]) < 0.9 else np.eye(3)[1]
        u = ref - np.dot(ref, self.axis) * self.axis
        self.u = u / np.linalg.norm(u)
        self.v = np.cross(self.axis, self.u)

    # -- geometry ---------------------------------------------------------------------
    def central_direction(self, angle_deg: float) -> np.ndarray:
        """Unit vector from the source at ``angle_deg`` towards the isocentre."""
        t = math.radians(float(angle_deg))
        return math.cos(t) * self.u + math.sin(t) * self.v

    def fan_direction(self, angle_deg: float) -> np.ndarray:
        """Unit fan direction ``axis × central_direction`` at ``angle_deg`` (+y at θ = 0)."""
        return np.cross(self.axis, self.central_direction(angle_deg))

    def source_position_mm(self, angle_deg: float) -> np.ndarray:
        """World position (x, y, z) mm of the focal spot at projection angle ``angle_deg``."""
        return self.isocentre_xyz_mm - self.source_to_isocentre_mm * self.central_direction(angle_deg)

    @property
    def solid_angle_sr(self) -> float:
        """Solid angle (sr) of the collimated beam: ``4 asin(sin α sin β)``."""
        R = self.source_to_isocentre_mm
        a, b = 0.5 * self.fan_width_mm, 0.5 * self.slice_width_mm
        return 4.0 * math.asin(a * b / math.sqrt((a * a + R * R) * (b * b + R * R)))

    @property
    def acceptance(self) -> float:
        """Expected acceptance of the cos³ rejection sampler, ``Ω R² / (W H)``."""
        R = self.source_to_isocentre_mm
        return self.solid_angle_sr * R * R / (self.fan_width_mm * self.slice_width_mm)

    def central_ray(self):
        """Focal spot and central direction at the first angle (for the engine's miss check)."""
        a0 = self.angles_deg[0]
        return self.source_position_mm(a0), self.central_direction(a0)

    # -- sampling ---------------------------------------------------------------------
    def _plane_points(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` isocentre-plane points (fan, slice coordinates, mm) with density ∝ cos³γ."""
        R2 = self.source_to_isocentre_mm ** 2
        W, H = self.fan_width_mm, self.slice_width_mm
        xs, ys, have = [np.empty(0)], [np.empty(0)], 0
        while have < n:
            m = int((n - have) / self.acceptance * 1.05) + 16
            x = (rng.random(m) - 0.5) * W
            y = (rng.random(m) - 0.5) * H
            keep = rng.random(m) < (R2 / (R2 + x * x + y * y)) ** 1.5
            xs.append(x[keep])
            ys.append(y[keep])
            have += int(keep.sum())
        return np.concatenate(xs)[:n], np.concatenate(ys)[:n]

    def sample(self, n, rng):
        """Sample ``n`` photons (world frame).

        Parameters
        ----------
        n : int
            Number of photons (>= 0).
        rng : numpy.random.Generator

        Returns
        -------
        PhotonBatch
            Positions at the focal spot of each photon's projection angle (mm), unit
            directions uniform in solid angle inside the collimated pyramid, energies (keV).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise TransportError(f"n must be an integer >= 0, got {n!r}")
        n = int(n)
        R = self.source_to_isocentre_mm
        x, y = self._plane_points(n, rng)
        if self.angles_deg.size == 1:
            theta = np.full(n, math.radians(self.angles_deg[0]))
        else:
            theta = np.radians(self.angles_deg[rng.integers(0, self.angles_deg.size, size=n)])
        c = np.cos(theta)[:, None] * self.u + np.sin(theta)[:, None] * self.v
        f = np.cross(self.axis, c)
        pos = self.isocentre_xyz_mm - R * c
        d = R * c + x[:, None] * f + y[:, None] * self.axis
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return PhotonBatch(pos, d, self._energies(n, rng))

    def to_dict(self) -> dict:
        """JSON-ready description (units in keys)."""
        return {
            "type": "CTFanBeam",
            "source_to_isocentre_mm": self.source_to_isocentre_mm,
            "fan_width_mm": self.fan_width_mm,
            "slice_width_mm": self.slice_width_mm,
            "angles_deg": self.angles_deg.tolist(),
            "energy_keV": self.energy.to_dict() if isinstance(self.energy, Spectrum) else float(self.energy),
            "isocentre_xyz_mm": self.isocentre_xyz_mm.tolist(),
            "axis": self.axis.tolist(),
        }
