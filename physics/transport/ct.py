"""CT scanner source geometry: an isotropic point source on a circle or helix, collimated to
a fan, with an optional bowtie filter.

This is the source model of AAPM TG-195 Cases 4 and 5 (Sechopoulos et al., *Med. Phys.*
42 (2015) 5679; spec in ``../shared/reference/tg195/README.md`` §1 "Source model" and §2
"Coordinate system"), extended with the scan modes and beam shaping of issue 3:

- an ideal point source (no focal-spot size, no heel effect) at

  .. math:: S(\\theta, z) = c + z\\,\\hat a - R\\,(\\cos\\theta\\,\\hat u + \\sin\\theta\\,\\hat v),

  where :math:`c` is the isocentre, :math:`R` the source-to-isocentre distance,
  :math:`(\\hat u, \\hat v, \\hat a)` a right-handed frame with :math:`\\hat a` the rotation
  axis and :math:`z` the axial (table) position, 0 for axial scans. For the default axis
  :math:`\\hat a = \\hat z` and :math:`z = 0` this is TG-195's
  :math:`S(\\theta) = R(-\\cos\\theta, -\\sin\\theta, 0)`;
- the central ray :math:`\\hat c = (\\cos\\theta\\,\\hat u + \\sin\\theta\\,\\hat v)` points at
  :math:`c + z\\hat a`, the fan direction is :math:`\\hat f = \\hat a \\times \\hat c` (along +y
  at θ = 0) and the slice direction is :math:`\\hat a`;
- emission is **isotropic**, i.e. uniform per unit solid angle, inside the pyramid whose
  base is the rectangle ``fan_width_mm`` × ``slice_width_mm`` on the isocentre plane (the
  plane through :math:`c + z\\hat a` perpendicular to the central ray).

Sampling. A point :math:`(x, y)` of the isocentre-plane rectangle (fan coordinate x,
slice coordinate y) subtends :math:`d\\Omega = R\\,dA / r^3 = \\cos^3\\!\\gamma\\, dA / R^2`
with :math:`r^2 = R^2 + x^2 + y^2` and γ the off-axis angle, so directions uniform in solid
angle are obtained exactly by drawing :math:`(x, y)` uniformly on the rectangle and
accepting with probability :math:`\\cos^3\\gamma = (R/r)^3` (acceptance =
:math:`\\Omega R^2 / (W H)`, ≥ cos³ of the corner angle: about 0.90 for the TG-195 Case 4
fan). The fluence on the isocentre plane therefore falls off as cos³γ, as TG-195 requires.
The solid angle of the centred rectangle with half-sides :math:`a, b` seen from distance
:math:`R` is :math:`\\Omega = 4\\arcsin(\\sin\\alpha\\,\\sin\\beta)`,
:math:`\\tan\\alpha = a/R`, :math:`\\tan\\beta = b/R`.

Scan modes (``rotation``). Every photon is one source photon; results are per source
photon, i.e. averaged over the scan:

- ``"discrete"`` (default): each photon picks one angle uniformly from ``angles_deg``.
  One angle is TG-195's single projection; a multi-angle run is the angle average of the
  single-projection runs.
- ``"continuous"``: each photon's angle is uniform over the scan,
  :math:`\\theta = \\theta_0 + \\varphi`, :math:`\\varphi \\sim U[0, \\Phi)`, and the source
  moves along the axis with it (helical scan):

  .. math:: z(\\varphi) = z_0 + p\\,H\\,\\frac{\\varphi}{2\\pi},

  with pitch :math:`p` (table feed per rotation / total nominal collimation, the slice
  width :math:`H` at the isocentre) and :math:`z_0` = ``z_start_mm``. The scan extent
  :math:`\\Phi` is given by ``arc_deg``, ``n_rotations`` (:math:`\\Phi = 2\\pi n`) or the
  range ``z_start_mm`` … ``z_end_mm`` (:math:`\\Phi = 2\\pi (z_1 - z_0)/(pH)`); default
  one rotation. A continuous axial scan is the helical one with :math:`p = 0` over 360°,
  TG-195's "Continuous" rows. The range refers to the focal spot (central-ray plane);
  the irradiated length is longer by about the slice collimation.

Bowtie filter (:class:`Bowtie`). A filter of one material between the focal spot and the
collimator, with a thickness profile :math:`t(x)` across the fan (x on the isocentre
plane, or the fan angle :math:`\\gamma = \\arctan(x/R)`). :math:`t` is the path length of
the ray in the central fan plane (slice coordinate 0); a ray leaving that plane at slice
angle β crosses the filter over :math:`t/\\cos\\beta`, as through a flat plate, with
:math:`\\cos\\beta = \\sqrt{R^2 + x^2}/r`. The filter is **primary-only**: it is modelled
by the statistical weight of each photon, its uncollided transmission

.. math:: w = \\exp\\!\\left(-\\mu(E)\\, t(x) / \\cos\\beta\\right),

with μ the total (photoelectric + Compton + Rayleigh) linear attenuation coefficient of
the filter material from :mod:`physics.transport.xsection` (log–log interpolated), so no
photon scattered in the filter reaches the phantom (in real scanners that off-focal
scatter is a few per cent of the primary) and directions are still sampled as without a
filter. The engine counts every sampled photon as emitted and the part ``(1 − w) E`` as
filtered at the source, so results stay per photon emitted by the focal spot.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .materials import Material, TransportError
from .sources import PhotonBatch, Source, Spectrum, check_energy, check_positive, check_vec3

__all__ = ["CTFanBeam", "Bowtie", "ROTATIONS", "BOWTIE_COORDINATES"]

#: Scan modes of :class:`CTFanBeam`.
ROTATIONS = ("discrete", "continuous")
#: Coordinates in which a :class:`Bowtie` thickness profile can be given.
BOWTIE_COORDINATES = ("fan_mm", "fan_angle_deg")
#: Weights are clamped to this value from below, so they stay in (0, 1].
_MIN_WEIGHT = np.finfo(float).tiny


def _finite(value, name: str) -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) \
            or not math.isfinite(value):
        raise TransportError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _non_negative(value, name: str, what: str = "") -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0:
        raise TransportError(f"{name} must be a finite number >= 0{what}, got {value!r}")
    return float(value)


class Bowtie:
    """A bowtie (beam-shaping) filter: one material with a thickness profile across the fan.

    The filter is primary-only (see the module docstring): a photon crossing the isocentre
    plane at fan coordinate x and slice coordinate y gets the weight
    ``exp(-μ(E) t(x) / cos β)``.

    Parameters
    ----------
    material : Material
        Filter material (nominal density is used), e.g. aluminium or PTFE.
    thickness_mm : callable or array (n, 2)
        The profile t in mm, as a function of the coordinate named by ``coordinate``:
        either a vectorised callable ``f(coord: ndarray) -> ndarray`` (mm, finite, >= 0),
        or a table of rows ``(coordinate, thickness_mm)`` with strictly increasing
        coordinates (n >= 2), interpolated linearly. The profile must cover the whole fan
        of the beam it is attached to (checked by :class:`CTFanBeam`).
    coordinate : {'fan_mm', 'fan_angle_deg'}
        ``'fan_mm'``: signed position x on the isocentre plane along the fan direction
        (mm); ``'fan_angle_deg'``: signed fan angle γ = atan(x / R) in degrees.

    Attributes
    ----------
    kind : {'table', 'callable', 'cylinder_compensator'}
        How the profile is defined.
    parameters : dict
        The profile's definition (the table, the callable's name or the analytic
        parameters), for records.

    See Also
    --------
    Bowtie.cylinder_compensator : an analytic profile for a centred cylinder.
    Bowtie.from_csv : a tabulated profile from a CSV file.
    """

    def __init__(self, material: Material, thickness_mm, coordinate: str = "fan_mm"):
        if coordinate not in BOWTIE_COORDINATES:
            raise TransportError(f"bowtie coordinate must be one of "
                                 f"{', '.join(repr(c) for c in BOWTIE_COORDINATES)}, got {coordinate!r}")
        if callable(thickness_mm):
            fn = thickness_mm
            self._set(material, coordinate, "callable",
                      {"callable": getattr(fn, "__qualname__", repr(fn))},
                      lambda c, R: np.asarray(fn(c), dtype=float), None)
            return
        try:
            table = np.asarray(thickness_mm, dtype=float)
        except (TypeError, ValueError):
            raise TransportError(f"bowtie thickness_mm must be a callable or an (n, 2) table of "
                                 f"({coordinate}, thickness_mm), got {thickness_mm!r}") from None
        if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] < 2:
            raise TransportError(f"bowtie thickness_mm table must have shape (n >= 2, 2): rows of "
                                 f"({coordinate}, thickness_mm), got shape {table.shape}")
        if not np.all(np.isfinite(table)):
            raise TransportError("bowtie thickness_mm table must be finite")
        if np.any(np.diff(table[:, 0]) <= 0):
            raise TransportError(f"bowtie thickness_mm table: {coordinate} must be strictly increasing")
        if np.any(table[:, 1] < 0):
            raise TransportError(f"bowtie thickness_mm must be >= 0 mm, got {table[:, 1].min()!r}")
        xs, ts = table[:, 0].copy(), table[:, 1].copy()
        self._set(material, coordinate, "table", {coordinate: xs.tolist(), "thickness_mm": ts.tolist()},
                  lambda c, R: np.interp(c, xs, ts), (float(xs[0]), float(xs[-1])))

    def _set(self, material, coordinate, kind, parameters, profile, coord_range):
        """Store a validated profile: ``profile(coord, R) -> thickness_mm``."""
        if not isinstance(material, Material):
            raise TransportError(f"bowtie material must be a Material, got {type(material).__name__}")
        self.material = material
        self.coordinate = coordinate
        self.kind = kind
        self.parameters = parameters
        self._profile = profile
        self._range = coord_range

    @classmethod
    def cylinder_compensator(cls, material: Material, centre_thickness_mm, phantom_radius_mm, ratio,
                             max_thickness_mm=None) -> "Bowtie":
        """An analytic bowtie that evens out the path through a centred cylinder.

        A ray at fan coordinate x passes the isocentre at the distance
        ``s = R x / sqrt(R² + x²)`` (R: source-to-isocentre distance of the beam) and
        crosses a centred cylinder of radius ρ over the chord
        ``L(x) = 2 sqrt(ρ² − s²)`` (0 for |s| >= ρ). The filter adds ``ratio`` mm per mm
        of chord missing from the central one::

            t(x) = min(t0 + ratio · (2ρ − L(x)), t_max)

        so ``ratio = μ_phantom / μ_filter`` at an effective energy equalises the
        attenuation (water / aluminium at 60 keV: 0.206 / 0.750 ≈ 0.27). The profile is
        symmetric, equals t0 on the central ray and t0 + 2ρ·ratio (or t_max) outside the
        cylinder's shadow.

        Parameters
        ----------
        material : Material
            Filter material.
        centre_thickness_mm : float
            t0, thickness on the central ray (mm, >= 0).
        phantom_radius_mm : float
            ρ, radius of the cylinder to compensate (mm, > 0).
        ratio : float
            Filter thickness per unit of missing chord (>= 0, dimensionless).
        max_thickness_mm : float, optional
            t_max, cap on the thickness (mm, >= t0). Default no cap.

        Returns
        -------
        Bowtie
        """
        t0 = _non_negative(centre_thickness_mm, "centre_thickness_mm")
        rho = check_positive(phantom_radius_mm, "phantom_radius_mm")
        k = _non_negative(ratio, "ratio")
        if max_thickness_mm is not None:
            tmax = _non_negative(max_thickness_mm, "max_thickness_mm")
            if tmax < t0:
                raise TransportError(f"max_thickness_mm must be >= centre_thickness_mm = {t0:g} mm, "
                                     f"got {max_thickness_mm!r}")
        else:
            tmax = math.inf
        def profile(x, R):
            x = np.asarray(x, dtype=float)
            s = R * x / np.sqrt(R * R + x * x)
            chord = 2.0 * np.sqrt(np.maximum(rho * rho - s * s, 0.0))
            return np.minimum(t0 + k * (2.0 * rho - chord), tmax)

        bowtie = cls.__new__(cls)
        bowtie._set(material, "fan_mm", "cylinder_compensator",
                    {"centre_thickness_mm": t0, "phantom_radius_mm": rho, "ratio": k,
                     "max_thickness_mm": None if math.isinf(tmax) else tmax}, profile, None)
        return bowtie

    @classmethod
    def from_csv(cls, material: Material, path: str | Path) -> "Bowtie":
        """Read a tabulated profile.

        Parameters
        ----------
        material : Material
            Filter material.
        path : str or Path
            CSV with a header and two columns: ``fan_mm`` or ``fan_angle_deg`` (the
            coordinate, strictly increasing) and ``thickness_mm``.

        Returns
        -------
        Bowtie
        """
        path = Path(path)
        if not path.is_file():
            raise TransportError(f"bowtie profile file {str(path)!r} does not exist")
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in reader.fieldnames or []]
            coord = [c for c in BOWTIE_COORDINATES if c in cols]
            if len(coord) != 1 or "thickness_mm" not in cols:
                raise TransportError(f"bowtie profile file {str(path)!r}: need columns thickness_mm and one of "
                                     f"{', '.join(BOWTIE_COORDINATES)} (have {cols})")
            rows = [{k.strip(): v for k, v in r.items() if k} for r in reader]
        try:
            table = [[float(r[coord[0]]), float(r["thickness_mm"])] for r in rows]
        except (TypeError, ValueError) as exc:
            raise TransportError(f"bowtie profile file {str(path)!r}: unreadable number ({exc})") from None
        try:
            return cls(material, table, coord[0])
        except TransportError as exc:
            raise TransportError(f"bowtie profile file {str(path)!r}: {exc}") from None

    def thickness_mm(self, fan_mm, source_to_isocentre_mm: float) -> np.ndarray:
        """Filter thickness t (mm) on the central fan plane at isocentre-plane fan coordinates.

        Parameters
        ----------
        fan_mm : float or array
            Fan coordinate x on the isocentre plane (mm).
        source_to_isocentre_mm : float
            R of the beam (mm), which converts x to the fan angle atan(x / R).

        Returns
        -------
        ndarray
            Thickness in mm, the shape of ``fan_mm``.
        """
        x = np.asarray(fan_mm, dtype=float)
        R = float(source_to_isocentre_mm)
        c = np.degrees(np.arctan2(x, R)) if self.coordinate == "fan_angle_deg" else x
        return np.broadcast_to(self._profile(c, R), x.shape).astype(float)

    def _check_covers(self, half_fan_mm: float, R: float) -> np.ndarray:
        """Validate the profile over the fan ``[-half_fan_mm, half_fan_mm]``; return samples."""
        edge = math.degrees(math.atan2(half_fan_mm, R)) if self.coordinate == "fan_angle_deg" else half_fan_mm
        unit = "deg" if self.coordinate == "fan_angle_deg" else "mm"
        if self._range is not None and (self._range[0] > -edge * (1 + 1e-12) or self._range[1] < edge * (1 + 1e-12)):
            raise TransportError(f"bowtie profile covers {self.coordinate} [{self._range[0]:g}, {self._range[1]:g}] "
                                 f"{unit}, but the fan spans [{-edge:g}, {edge:g}] {unit}")
        x = np.linspace(-half_fan_mm, half_fan_mm, 257)
        try:
            t = self.thickness_mm(x, R)
        except Exception as exc:  # noqa: BLE001 - a user callable may raise anything
            raise TransportError(f"bowtie thickness_mm callable failed on an array of {self.coordinate} "
                                 f"values: {exc!r}") from None
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            bad = t[~(np.isfinite(t) & (t >= 0))][0]
            raise TransportError(f"bowtie thickness_mm must be finite and >= 0 mm across the fan, got {bad!r}")
        return t

    def to_dict(self) -> dict:
        """JSON-ready description (units in keys)."""
        return {"material": self.material.to_dict(), "coordinate": self.coordinate, "kind": self.kind,
                "parameters": self.parameters}


class CTFanBeam(Source):
    """Isotropic point source on a circle or helix, collimated to a rectangle on the isocentre plane.

    Parameters
    ----------
    source_to_isocentre_mm : float
        Distance R from the focal spot to the isocentre (mm, > 0). TG-195: 600 mm.
    fan_width_mm : float
        Full width of the beam on the isocentre plane along the fan direction
        (perpendicular to the axis and to the central ray), mm, > 0. TG-195 Case 4: 320 mm.
    slice_width_mm : float
        Full width H of the beam on the isocentre plane along the rotation axis (mm, > 0):
        the total nominal collimation. TG-195 Case 4: 10 or 80 mm.
    angles_deg : sequence of float, optional
        ``rotation='discrete'`` only: projection angles θ (degrees); each photon uses one,
        chosen uniformly. Default (0,).
    energy_keV : float or Spectrum
        Photon energy (keV) or spectrum.
    isocentre_xyz_mm : 3 floats, optional
        World position of the isocentre (mm). Default origin.
    axis : 3 floats, optional
        Rotation axis (normalised here); the table moves along +axis. Default +z.
    rotation : {'discrete', 'continuous'}
        Scan mode (module docstring): projections from ``angles_deg``, or an angle uniform
        over a continuous (axial or helical) scan.
    start_angle_deg : float, optional
        ``'continuous'`` only: angle θ0 at the start of the scan (degrees). Default 0.
    arc_deg, n_rotations : float, optional
        ``'continuous'`` only: scan extent as an angle (degrees, > 0) or a number of
        rotations (> 0). At most one of ``arc_deg``, ``n_rotations``, ``z_end_mm``;
        default one rotation (360°).
    pitch : float, optional
        ``'continuous'`` only: table feed per rotation divided by ``slice_width_mm``
        (>= 0). Default 0 (axial).
    z_start_mm : float, optional
        ``'continuous'`` only: axial position of the focal spot at the start of the scan,
        along ``axis`` from the isocentre (mm). Default: the scan is centred on the
        isocentre, ``-(table travel)/2``. Required with ``z_end_mm``.
    z_end_mm : float, optional
        ``'continuous'`` only: axial position at the end of the scan (mm,
        > ``z_start_mm``; needs ``pitch`` > 0).
    bowtie : Bowtie, optional
        Bowtie filter (primary-only weights, module docstring). Default none.

    Attributes
    ----------
    u, v, axis : ndarray (3,)
        Right-handed frame: θ = 0 puts the source at ``isocentre - R u``; θ = 90° at
        ``isocentre - R v``. ``u`` is the component of world x (or y, when the axis is
        along x) perpendicular to the axis; ``v = axis × u``.
    angles_deg : ndarray or None
        Projection angles (``'discrete'``), None for ``'continuous'``.
    total_angle_deg : float
        Scan extent Φ in degrees (``'continuous'``; 0 for ``'discrete'``).
    z_start_mm, z_end_mm : float
        Axial range of the focal spot (0, 0 for ``'discrete'``).
    """

    def __init__(self, source_to_isocentre_mm, fan_width_mm, slice_width_mm, angles_deg=None,
                 energy_keV=None, isocentre_xyz_mm=(0.0, 0.0, 0.0), axis=(0.0, 0.0, 1.0), *,
                 rotation: str = "discrete", start_angle_deg=None, arc_deg=None, n_rotations=None, pitch=None,
                 z_start_mm=None, z_end_mm=None, bowtie: Bowtie | None = None):
        self.source_to_isocentre_mm = check_positive(source_to_isocentre_mm, "source_to_isocentre_mm")
        self.fan_width_mm = check_positive(fan_width_mm, "fan_width_mm")
        self.slice_width_mm = check_positive(slice_width_mm, "slice_width_mm")
        if energy_keV is None:
            raise TransportError("energy_keV is required: a float > 0 (keV) or a Spectrum")
        self.energy = check_energy(energy_keV)
        self.isocentre_xyz_mm = check_vec3(isocentre_xyz_mm, "isocentre_xyz_mm")
        self.axis = check_vec3(axis, "axis", unit=True)
        ref = np.eye(3)[0] if abs(self.axis[0]) < 0.9 else np.eye(3)[1]
        u = ref - np.dot(ref, self.axis) * self.axis
        self.u = u / np.linalg.norm(u)
        self.v = np.cross(self.axis, self.u)
        self._set_scan(rotation, angles_deg, start_angle_deg, arc_deg, n_rotations, pitch, z_start_mm, z_end_mm)
        self._set_bowtie(bowtie)

    def _set_scan(self, rotation, angles_deg, start_angle_deg, arc_deg, n_rotations, pitch, z_start_mm, z_end_mm):
        if rotation not in ROTATIONS:
            raise TransportError(f"rotation must be one of {', '.join(repr(r) for r in ROTATIONS)}, "
                                 f"got {rotation!r}")
        self.rotation = rotation
        continuous_args = {"start_angle_deg": start_angle_deg, "arc_deg": arc_deg, "n_rotations": n_rotations,
                           "pitch": pitch, "z_start_mm": z_start_mm, "z_end_mm": z_end_mm}
        if rotation == "discrete":
            for name, value in continuous_args.items():
                if value is not None:
                    raise TransportError(f"{name} applies to rotation='continuous' only (rotation is 'discrete'; "
                                         f"use angles_deg for projection angles), got {name}={value!r}")
            ang = (0.0,) if angles_deg is None else angles_deg
            try:
                ang = np.asarray(ang, dtype=float).ravel()
            except (TypeError, ValueError):
                raise TransportError(f"angles_deg must be a sequence of numbers (degrees), got {angles_deg!r}") \
                    from None
            if ang.size == 0:
                raise TransportError("angles_deg must hold at least one angle (degrees), got an empty sequence")
            if not np.all(np.isfinite(ang)):
                raise TransportError(f"angles_deg must be finite (degrees), got {ang[~np.isfinite(ang)][0]!r}")
            self.angles_deg = ang
            self.start_angle_deg = self.total_angle_deg = self.pitch = 0.0
            self.z_start_mm = 0.0
            return
        if angles_deg is not None:
            raise TransportError("angles_deg applies to rotation='discrete' only; for rotation='continuous' "
                                 "give start_angle_deg and one of arc_deg, n_rotations or z_end_mm")
        self.angles_deg = None
        self.start_angle_deg = 0.0 if start_angle_deg is None else _finite(start_angle_deg, "start_angle_deg")
        self.pitch = 0.0 if pitch is None else _non_negative(
            pitch, "pitch", " (table feed per rotation / slice_width_mm)")
        extent = {k: v for k, v in (("arc_deg", arc_deg), ("n_rotations", n_rotations), ("z_end_mm", z_end_mm))
                  if v is not None}
        if len(extent) > 1:
            raise TransportError(f"give at most one of arc_deg, n_rotations, z_end_mm (the scan extent), "
                                 f"got {', '.join(f'{k}={v!r}' for k, v in extent.items())}")
        feed = self.pitch * self.slice_width_mm  # table travel per rotation, mm
        if z_end_mm is not None:
            if z_start_mm is None:
                raise TransportError("z_end_mm needs z_start_mm (the scan range of the focal spot, mm)")
            z0 = _finite(z_start_mm, "z_start_mm")
            z1 = _finite(z_end_mm, "z_end_mm")
            if self.pitch == 0.0:
                raise TransportError(f"z_end_mm needs pitch > 0 (a scan range needs table feed), got pitch={pitch!r}")
            if z1 <= z0:
                raise TransportError(f"z_end_mm must be > z_start_mm = {z0:g} mm (the table moves along +axis), "
                                     f"got {z_end_mm!r}")
            self.total_angle_deg = 360.0 * (z1 - z0) / feed
            self.z_start_mm = z0
            return
        if arc_deg is not None:
            self.total_angle_deg = check_positive(arc_deg, "arc_deg")
        elif n_rotations is not None:
            self.total_angle_deg = 360.0 * check_positive(n_rotations, "n_rotations")
        else:
            self.total_angle_deg = 360.0
        travel = feed * self.total_angle_deg / 360.0
        self.z_start_mm = -0.5 * travel if z_start_mm is None else _finite(z_start_mm, "z_start_mm")

    def _set_bowtie(self, bowtie):
        if bowtie is not None and not isinstance(bowtie, Bowtie):
            raise TransportError(f"bowtie must be a Bowtie or None, got {type(bowtie).__name__}")
        self.bowtie = bowtie
        self._bowtie_tables = None
        if bowtie is None:
            return
        from .xsection import build_tables

        bowtie._check_covers(0.5 * self.fan_width_mm, self.source_to_isocentre_mm)
        e_min = min(1.0, 0.999 * self.min_energy_keV)
        e_max = max(150.0, 1.001 * self.max_energy_keV)
        self._bowtie_tables = build_tables([bowtie.material], e_min_keV=e_min, e_max_keV=e_max)
        self._bowtie_mu_mono = (None if isinstance(self.energy, Spectrum)
                                else float(self._bowtie_tables.mu_linear(0, float(self.energy))))

    # -- geometry ---------------------------------------------------------------------
    @property
    def z_end_mm(self) -> float:
        """Axial position of the focal spot at the end of the scan (mm)."""
        return self.z_start_mm + self.pitch * self.slice_width_mm * self.total_angle_deg / 360.0

    @property
    def n_rotations(self) -> float:
        """Number of rotations of a continuous scan (``total_angle_deg / 360``; 0 if discrete)."""
        return self.total_angle_deg / 360.0

    def central_direction(self, angle_deg: float) -> np.ndarray:
        """Unit vector from the source at ``angle_deg`` towards the axis (the isocentre plane's centre)."""
        t = math.radians(float(angle_deg))
        return math.cos(t) * self.u + math.sin(t) * self.v

    def fan_direction(self, angle_deg: float) -> np.ndarray:
        """Unit fan direction ``axis × central_direction`` at ``angle_deg`` (+y at θ = 0)."""
        return np.cross(self.axis, self.central_direction(angle_deg))

    def source_position_mm(self, angle_deg: float, z_mm: float = 0.0) -> np.ndarray:
        """World position (x, y, z) mm of the focal spot at angle ``angle_deg`` and axial position ``z_mm``."""
        return (self.isocentre_xyz_mm + float(z_mm) * self.axis
                - self.source_to_isocentre_mm * self.central_direction(angle_deg))

    def helix_z_mm(self, scan_angle_deg) -> np.ndarray:
        """Axial position (mm) of the focal spot after turning ``scan_angle_deg`` from the start.

        ``z = z_start_mm + pitch · slice_width_mm · scan_angle / 360°`` (continuous scans).
        """
        return self.z_start_mm + self.pitch * self.slice_width_mm * np.asarray(scan_angle_deg, float) / 360.0

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
        """Focal spot and central direction (for the engine's miss check).

        The first angle for ``'discrete'``; the middle of the scan (angle and axial
        position) for ``'continuous'``.
        """
        if self.rotation == "discrete":
            a0 = self.angles_deg[0]
            return self.source_position_mm(a0), self.central_direction(a0)
        half = 0.5 * self.total_angle_deg
        a = self.start_angle_deg + half
        return self.source_position_mm(a, float(self.helix_z_mm(half))), self.central_direction(a)

    def bowtie_mu_per_cm(self, energy_keV) -> np.ndarray:
        """Total linear attenuation coefficient (1/cm) of the bowtie material at ``energy_keV``."""
        if self._bowtie_tables is None:
            raise TransportError("this CTFanBeam has no bowtie")
        return np.asarray(self._bowtie_tables.mu_linear(0, energy_keV), dtype=float)

    def bowtie_transmission(self, fan_mm, slice_mm, energy_keV) -> np.ndarray:
        """Photon weight ``exp(-μ(E) t(x) / cos β)`` for rays through isocentre-plane points.

        Parameters
        ----------
        fan_mm, slice_mm : float or array
            Where the ray crosses the isocentre plane: fan coordinate x and slice
            coordinate y (mm), broadcast together.
        energy_keV : float or array
            Photon energies (keV), broadcast with the coordinates.

        Returns
        -------
        ndarray
            Weights in (0, 1]; all ones without a bowtie.
        """
        x, y, e = np.broadcast_arrays(np.asarray(fan_mm, float), np.asarray(slice_mm, float),
                                      np.asarray(energy_keV, float))
        if self.bowtie is None:
            return np.ones(x.shape)
        R = self.source_to_isocentre_mm
        rx2 = R * R + x * x
        path_mm = self.bowtie.thickness_mm(x, R) * np.sqrt((rx2 + y * y) / rx2)
        if self._bowtie_mu_mono is not None and np.all(e == float(self.energy)):
            mu = self._bowtie_mu_mono
        else:
            mu = self.bowtie_mu_per_cm(e)
        return np.maximum(np.exp(-0.1 * mu * path_mm), _MIN_WEIGHT)

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

    def _scan_positions(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Tube angle (radians) of each photon and its axial offset (mm along the axis from
        the isocentre, None for axial scans). Subclasses change the scan here."""
        if self.rotation == "continuous":
            phi_deg = self.total_angle_deg * rng.random(n)
            return np.radians(self.start_angle_deg + phi_deg), self.helix_z_mm(phi_deg)
        if self.angles_deg.size == 1:
            return np.full(n, math.radians(self.angles_deg[0])), None
        return np.radians(self.angles_deg[rng.integers(0, self.angles_deg.size, size=n)]), None

    def _scan_mode(self) -> tuple:
        """How :func:`._kernels.sample_fan_beam` draws the scan position: ``(mode, knots, vals,
        zcdf)`` (mode 0 discrete angles, 1 continuous), or None when a subclass changed
        :meth:`_scan_positions` without saying how (then the NumPy sampler is used)."""
        if type(self)._scan_positions is not CTFanBeam._scan_positions:
            return None
        empty = np.zeros(2)
        return (1 if self.rotation == "continuous" else 0), empty, empty, empty[:1]

    def _fast_tables(self):
        """Arrays :func:`._kernels.sample_fan_beam` needs (built once)."""
        if getattr(self, "_fast", None) is not None:
            return self._fast
        if isinstance(self.energy, Spectrum):
            sp = self.energy
            cdf, val = sp._cdf, sp.energy_keV
            binned = sp.bin_low_keV is not None
            lo = sp.bin_low_keV if binned else val
            hi = sp.bin_high_keV if binned else val
        else:
            cdf, val = np.ones(1), np.full(1, float(self.energy))
            lo, hi, binned = val, val, False
        if self.bowtie is not None:
            # fine tables: weights within 1e-6 of the exact exp(-μ(E) t(x) / cos β) (tests)
            half = 0.5 * self.fan_width_mm
            xg = np.linspace(-half, half, 65537)
            t = self.bowtie.thickness_mm(xg, self.source_to_isocentre_mm)
            if self._bowtie_mu_mono is not None:
                ln0, ln1, mu = 0.0, 1.0, np.full(2, self._bowtie_mu_mono)
            else:
                ln0, ln1 = math.log(0.999 * self.min_energy_keV), math.log(1.001 * self.max_energy_keV)
                eg = np.exp(np.linspace(ln0, ln1, 16385))
                mu = self.bowtie_mu_per_cm(np.clip(eg, self._bowtie_tables.energy_keV[0],
                                                   self._bowtie_tables.energy_keV[-1]))
            bt = (float(xg[0]), 1.0 / float(xg[1] - xg[0]), np.ascontiguousarray(t, float),
                  ln0, (mu.size - 1) / (ln1 - ln0), np.ascontiguousarray(mu, float))
        else:
            bt = (0.0, 1.0, np.zeros(2), 0.0, 1.0, np.zeros(2))
        angles = np.radians(self.angles_deg) if self.angles_deg is not None else np.zeros(1)
        self._fast = (np.ascontiguousarray(angles, float), np.ascontiguousarray(cdf, float),
                      np.ascontiguousarray(val, float), np.ascontiguousarray(lo, float),
                      np.ascontiguousarray(hi, float), bool(binned), bt)
        return self._fast

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
            Positions at the focal spot of each photon's angle and axial position (mm),
            unit directions uniform in solid angle inside the collimated pyramid, energies
            (keV) and, with a bowtie, weights in (0, 1] (None without one).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise TransportError(f"n must be an integer >= 0, got {n!r}")
        n = int(n)
        mode = self._scan_mode()
        if mode is None:
            return self._sample_numpy(n, rng)
        from . import _kernels

        angles, cdf, val, lo, hi, binned, bt = self._fast_tables()
        seed = int(rng.integers(0, 2 ** 63))
        m, knots, vals, zcdf = mode
        feed = self.pitch * self.slice_width_mm
        pos, d, energy, weight = _kernels.sample_fan_beam(
            n, seed, float(self.source_to_isocentre_mm), float(self.fan_width_mm), float(self.slice_width_mm), m,
            angles, float(self.start_angle_deg), float(self.total_angle_deg), float(self.z_start_mm),
            float(feed), np.ascontiguousarray(knots, float), np.ascontiguousarray(vals, float),
            np.ascontiguousarray(zcdf, float), np.ascontiguousarray(self.isocentre_xyz_mm, float),
            np.ascontiguousarray(self.axis, float), np.ascontiguousarray(self.u, float),
            np.ascontiguousarray(self.v, float), cdf, val, lo, hi, binned, *bt, self.bowtie is not None,
            float(_MIN_WEIGHT))
        return PhotonBatch(pos, d, energy, None if self.bowtie is None else weight)

    def _sample_numpy(self, n: int, rng: np.random.Generator) -> PhotonBatch:
        """:meth:`sample` in NumPy (the reference the compiled sampler is tested against; used for
        subclasses that change :meth:`_scan_positions` without :meth:`_scan_mode`)."""
        R = self.source_to_isocentre_mm
        x, y = self._plane_points(n, rng)
        theta, z = self._scan_positions(n, rng)
        centre = self.isocentre_xyz_mm if z is None else self.isocentre_xyz_mm + z[:, None] * self.axis
        c = np.cos(theta)[:, None] * self.u + np.sin(theta)[:, None] * self.v
        f = np.cross(self.axis, c)
        pos = centre - R * c
        d = R * c + x[:, None] * f + y[:, None] * self.axis
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        energy = self._energies(n, rng)
        weight = None if self.bowtie is None else self.bowtie_transmission(x, y, energy)
        return PhotonBatch(pos, d, energy, weight)

    def to_dict(self) -> dict:
        """JSON-ready description (units in keys); every constructor parameter is included."""
        d = {
            "type": "CTFanBeam",
            "source_to_isocentre_mm": self.source_to_isocentre_mm,
            "fan_width_mm": self.fan_width_mm,
            "slice_width_mm": self.slice_width_mm,
            "rotation": self.rotation,
            "angles_deg": None if self.angles_deg is None else self.angles_deg.tolist(),
            # continuous scans only (None for discrete projections)
            **{k: (v if self.rotation == "continuous" else None) for k, v in (
                ("start_angle_deg", self.start_angle_deg), ("arc_deg", self.total_angle_deg),
                ("n_rotations", self.n_rotations), ("pitch", self.pitch), ("z_start_mm", self.z_start_mm),
                ("z_end_mm", self.z_end_mm))},
            "energy_keV": self.energy.to_dict() if isinstance(self.energy, Spectrum) else float(self.energy),
            "isocentre_xyz_mm": self.isocentre_xyz_mm.tolist(),
            "axis": self.axis.tolist(),
            "bowtie": None,
        }
        if self.bowtie is not None:
            x = np.linspace(-0.5 * self.fan_width_mm, 0.5 * self.fan_width_mm, 21)
            d["bowtie"] = {**self.bowtie.to_dict(), "sampled_fan_mm": x.tolist(),
                           "sampled_thickness_mm": self.bowtie.thickness_mm(x, self.source_to_isocentre_mm).tolist()}
        return d
