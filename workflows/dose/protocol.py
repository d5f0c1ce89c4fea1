"""The CT scan protocol file: scanner geometry, tube, scan range and tube-current modulation.

A protocol is one small TOML file that says how a CT scanner was run, so that a dose
calculation (:mod:`workflows.dose.ctdi`, and phantom dose runs through :meth:`Protocol.source`)
can be reproduced from it::

    [scanner]
    source_to_isocentre_mm = 570.0  # focal spot to rotation axis (mm); default 570
    fan_width_mm = 500.0            # full fan width on the isocentre plane (mm, the scan FOV); default 500
    bowtie = "body"                 # "body" | "head" | "none" (default), or a [scanner.bowtie] table

    [tube]
    kvp = 120.0                     # tube potential (kV), 10-150 (the transport tables end at 150 keV)
    anode_angle_deg = 12.0          # default 12
    filtration_mm = {Al = 6.0}      # SpekPy filter material -> thickness (mm); default {Al = 2.5}
    mAs_per_rotation = 200.0        # or tube_current_mA (with [scan] rotation_time_s); optional
    ctdivol_mGy_per_100mAs = 7.8    # optional: the measured CTDIvol of this protocol per 100 mAs per rotation,
    ctdi_phantom_diameter_cm = 32   #   in this phantom (16 or 32; required with the measurement)

    [scan]
    collimation_mm = 40.0           # N x T: total nominal beam width on the isocentre plane (mm)
    pitch = 1.0                     # table feed per rotation / collimation_mm (> 0)
    z_start_mm = -150.0             # focal-spot (central-ray plane) range along the table axis (mm)
    z_end_mm = 150.0
    rotation_time_s = 0.5           # optional (needed with tube_current_mA)
    tube_current_modulation = [[-150.0, 1.0], [0.0, 0.6], [150.0, 1.2]]  # optional (z_mm, relative mA)

Keys
----
``[scanner]``
    ``source_to_isocentre_mm`` (> 0; default 570 mm, within the 540–630 mm of clinical
    scanners: GE 541, Philips 570, Siemens 595, Canon 600), ``fan_width_mm`` (> 0,
    default 500 mm: the usual 50 cm scan field of view), ``bowtie``.
``bowtie``
    ``"none"`` (default), a preset or a table. The presets are *generic* aluminium
    cylinder compensators (:meth:`physics.transport.Bowtie.cylinder_compensator`), not
    models of a particular scanner: zero thickness on the central ray (the flat
    filtration is in ``[tube] filtration_mm``) and ``ratio`` = 0.15 mm Al per mm of
    missing chord, half of what would fully compensate PMMA at 60 keV (μ_PMMA/μ_Al =
    0.229/0.750 ≈ 0.30; NIST XCOM), capped at 30 mm Al; ``"body"`` compensates a
    cylinder of radius 160 mm (the body CTDI phantom), ``"head"`` one of radius 100 mm.
    The ratio and radii were picked among a few such compensators (ratios 0.1–0.3) so
    that, with a 120 kVp, 6 mm Al beam, the CTDI centre/periphery ratios land inside the
    range of clinical scanners: about 0.50 (body phantom, body bowtie) and 1.00 (head
    phantom, head bowtie) (``tests/workflows/test_ctdi.py``); without a bowtie they are
    0.30 and 0.79. A table ``[scanner.bowtie]`` gives
    ``material`` (``"aluminium"``, ``"ptfe"`` — :data:`BOWTIE_MATERIALS` — or an inline
    table ``{density_g_cm3 = 2.2, mass_fractions = {C = 0.240183, F = 0.759817}}``) and
    either ``profile`` (CSV with columns ``fan_mm`` or ``fan_angle_deg`` and
    ``thickness_mm``, relative to the protocol file) or ``centre_thickness_mm``,
    ``phantom_radius_mm``, ``ratio`` and optional ``max_thickness_mm``.
``[tube]``
    ``kvp`` (required, 10–150 kV), ``anode_angle_deg``, ``filtration_mm`` as in the dose scenario
    (:func:`physics.transport.spekpy_spectrum`; an unknown filter material is an error
    naming the key). At most one of ``mAs_per_rotation`` (> 0) or ``tube_current_mA``
    (> 0, needs ``[scan] rotation_time_s``). ``ctdivol_mGy_per_100mAs`` (> 0) is a
    measured CTDIvol for *this* protocol (its collimation and pitch) per 100 mAs per
    rotation, i.e. the vendor's nCTDIw / pitch; with it :func:`workflows.dose.ctdi.run_ctdi`
    calibrates the tube output (photons per mAs) instead of estimating it with SpekPy.
``[scan]``
    ``collimation_mm``, ``pitch`` (> 0), ``z_start_mm`` < ``z_end_mm`` (required),
    ``rotation_time_s`` (> 0), ``tube_current_modulation``.

Tube-current modulation
-----------------------
``tube_current_modulation`` is a list of at least two ``[z_mm, relative_mA]`` points
with strictly increasing z; the relative tube current m(z) is linear between points and
constant beyond the ends. The tube current is ``m(z)`` times the nominal current (the
one of ``mAs_per_rotation``). With a constant rotation speed and table feed, the photons
emitted per unit focal-spot travel are proportional to m(z), so the helix position of a
source photon is drawn from the density ``m(z) / ∫ m`` over ``[z_start_mm, z_end_mm]``
(exactly: segment by its trapezoid mass, then the inverse of the linear density's CDF
inside the segment; :class:`ModulatedCTFanBeam`). Results per source photon are then
averaged over the modulated scan, and the scan's tube load is
``mAs_per_rotation · n_rotations · mean(m)`` (:attr:`Protocol.scan_mAs`). Angular
(x–y) modulation is not modelled.

Geometry conventions follow :class:`physics.transport.CTFanBeam`: the table axis is
world +z through the isocentre (by default the origin), ``z_start_mm``/``z_end_mm`` are
focal-spot positions (the irradiated length is longer by about ``collimation_mm``).

Every error is a :class:`ProtocolError` (a ``ValueError``) naming the section and key,
e.g. ``"[scan] pitch must be > 0, got 0.0"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workflows.toml_checks import Checks

import numpy as np

from physics.transport import Bowtie, CTFanBeam, Material, Spectrum, TransportError, spekpy_spectrum
from physics.transport.sources import spekpy_materials

__all__ = ["ProtocolError", "Protocol", "ModulatedCTFanBeam", "BOWTIE_MATERIALS", "BOWTIE_PRESETS",
           "DEFAULT_SOURCE_TO_ISOCENTRE_MM", "DEFAULT_FAN_WIDTH_MM", "read_protocol", "parse_protocol",
           "tube_fluence_per_mAs_cm2"]

DEFAULT_SOURCE_TO_ISOCENTRE_MM = 570.0
DEFAULT_FAN_WIDTH_MM = 500.0
DEFAULT_ANODE_ANGLE_DEG = 12.0
DEFAULT_FILTRATION_MM = {"Al": 2.5}
#: SpekPy's reference distance for fluence (mm): 1 m from the focal spot.
SPEKPY_REFERENCE_DISTANCE_MM = 1000.0

#: Bowtie filter materials by name: aluminium (NIST density 2.699 g/cm³) and PTFE /
#: Teflon (C2F4, NIST/ICRU 37 composition and density 2.2 g/cm³).
BOWTIE_MATERIALS: Mapping[str, Material] = {
    "aluminium": Material("aluminium", 2.699, {"Al": 1.0}),
    "ptfe": Material("PTFE (Teflon)", 2.2, {"C": 0.240183, "F": 0.759817}),
}
#: Generic bowtie presets (module docstring): analytic cylinder compensators in aluminium.
BOWTIE_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "body": {"material": "aluminium", "centre_thickness_mm": 0.0, "phantom_radius_mm": 160.0, "ratio": 0.15,
             "max_thickness_mm": 30.0},
    "head": {"material": "aluminium", "centre_thickness_mm": 0.0, "phantom_radius_mm": 100.0, "ratio": 0.15,
             "max_thickness_mm": 30.0},
}

_SECTIONS = ("scanner", "tube", "scan")
_SCANNER_KEYS = ("source_to_isocentre_mm", "fan_width_mm", "bowtie")
_TUBE_KEYS = ("kvp", "anode_angle_deg", "filtration_mm", "mAs_per_rotation", "tube_current_mA",
              "ctdivol_mGy_per_100mAs", "ctdi_phantom_diameter_cm")
_SCAN_KEYS = ("collimation_mm", "pitch", "z_start_mm", "z_end_mm", "rotation_time_s", "tube_current_modulation")
_BOWTIE_KEYS = ("material", "profile", "centre_thickness_mm", "phantom_radius_mm", "ratio", "max_thickness_mm")
_BOWTIE_ANALYTIC = ("centre_thickness_mm", "phantom_radius_mm", "ratio")
_CTDI_DIAMETERS_CM = (16, 32)


class ProtocolError(ValueError):
    """A protocol file is missing, unreadable or invalid (the message names the key)."""


_CHECKS = Checks(ProtocolError)
_number, _positive, _non_negative = _CHECKS.number, _CHECKS.positive, _CHECKS.non_negative
_table, _no_unknown, _require = _CHECKS.table, _CHECKS.no_unknown, _CHECKS.require


# ----------------------------------------------------------------------------- the source
class ModulatedCTFanBeam(CTFanBeam):
    """A helical :class:`~physics.transport.CTFanBeam` with tube-current modulation along z.

    The focal spot's axial position z of each photon is drawn from the density
    ``m(z) / ∫ m`` on ``[z_start_mm, z_end_mm]``, with ``m`` the piecewise-linear
    relative tube current (constant beyond its ends); the angle follows the helix,
    ``θ = start_angle_deg + 360° (z − z_start_mm) / (pitch · slice_width_mm)``. Everything
    else (fan, collimation, bowtie weights, energies) is as in the parent.

    Parameters
    ----------
    *args, **kwargs
        As :class:`~physics.transport.CTFanBeam` with ``rotation='continuous'``,
        ``pitch`` > 0 and the range ``z_start_mm``, ``z_end_mm``.
    relative_mA : array (n, 2)
        Rows ``(z_mm, relative_mA)``: z strictly increasing, values >= 0 and finite,
        with a positive integral over the scan range.
    """

    def __init__(self, *args, relative_mA, **kwargs):
        super().__init__(*args, **kwargs)
        if self.rotation != "continuous" or self.pitch <= 0:
            raise TransportError("tube-current modulation needs a helical scan: rotation='continuous', pitch > 0")
        table = np.asarray(relative_mA, dtype=float)
        if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] < 2:
            raise TransportError(f"relative_mA must have shape (n >= 2, 2): rows of (z_mm, relative_mA), "
                                 f"got shape {table.shape}")
        if not np.all(np.isfinite(table)) or np.any(np.diff(table[:, 0]) <= 0) or np.any(table[:, 1] < 0):
            raise TransportError("relative_mA: z_mm must be strictly increasing and relative_mA finite and >= 0")
        self.relative_mA = table
        z0, z1 = self.z_start_mm, self.z_end_mm
        inner = table[(table[:, 0] > z0) & (table[:, 0] < z1), 0]
        knots = np.concatenate([[z0], inner, [z1]])
        vals = np.interp(knots, table[:, 0], table[:, 1])
        mass = 0.5 * (vals[1:] + vals[:-1]) * np.diff(knots)
        if mass.sum() <= 0:
            raise TransportError(f"relative_mA is zero over the whole scan range [{z0:g}, {z1:g}] mm")
        self._knots, self._vals = knots, vals
        self._cdf = np.cumsum(mass) / mass.sum()
        self._cdf[-1] = 1.0
        self.mean_relative_mA = float(mass.sum() / (z1 - z0))

    def sample_z_mm(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` focal-spot axial positions (mm) with density ∝ the relative tube current."""
        k = np.minimum(np.searchsorted(self._cdf, rng.random(n), side="right"), self._cdf.size - 1)
        u = rng.random(n)
        a, b = self._vals[k], self._vals[k + 1]
        # inside the segment the density is ∝ a + (b − a) t on t ∈ [0, 1]; its CDF
        # (a t + (b − a) t²/2) / ((a + b)/2) = u gives t = (−a + sqrt(a² + u (b² − a²))) / (b − a)
        d = b - a
        flat = np.abs(d) <= 1e-12 * (a + b)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(flat, u, (-a + np.sqrt(a * a + u * (b * b - a * a))) / np.where(flat, 1.0, d))
        t = np.clip(t, 0.0, 1.0)
        return self._knots[k] + t * (self._knots[k + 1] - self._knots[k])

    def _scan_mode(self) -> tuple:
        """Mode 2 of the compiled sampler: z from the relative-mA density, the angle on the helix."""
        return 2, self._knots, self._vals, self._cdf

    def _scan_positions(self, n, rng):
        """Axial position drawn with density ∝ relative mA; the angle follows the helix."""
        z = self.sample_z_mm(n, rng)
        phi_deg = 360.0 * (z - self.z_start_mm) / (self.pitch * self.slice_width_mm)
        return np.radians(self.start_angle_deg + phi_deg), z

    def to_dict(self) -> dict:
        return {**super().to_dict(), "type": "ModulatedCTFanBeam",
                "tube_current_modulation": self.relative_mA.tolist(), "mean_relative_mA": self.mean_relative_mA}


# ----------------------------------------------------------------------------- the protocol
@dataclass(frozen=True)
class Protocol:
    """A validated CT protocol (module docstring for the meaning of every field).

    Attributes
    ----------
    source_to_isocentre_mm, fan_width_mm : float
        Scanner geometry (mm).
    bowtie : dict or None
        ``{"name": preset name or "custom", "material": Material, and either "profile":
        Path or the analytic keys}``; None without a bowtie.
    kvp, anode_angle_deg : float
    filtration_mm : dict of str to float
    mAs_per_rotation_given, tube_current_mA : float or None
        As given in ``[tube]`` (at most one).
    ctdivol_mGy_per_100mAs : float or None
        Measured CTDIvol per 100 mAs per rotation in the ``ctdi_phantom_diameter_cm`` phantom.
    ctdi_phantom_diameter_cm : int or None
    collimation_mm, pitch, z_start_mm, z_end_mm : float
    rotation_time_s : float or None
    tube_current_modulation : tuple of (float, float) or None
        ``(z_mm, relative_mA)`` points.
    path : Path or None
        The protocol file.
    """

    kvp: float
    collimation_mm: float
    pitch: float
    z_start_mm: float
    z_end_mm: float
    source_to_isocentre_mm: float = DEFAULT_SOURCE_TO_ISOCENTRE_MM
    fan_width_mm: float = DEFAULT_FAN_WIDTH_MM
    bowtie: Mapping[str, Any] | None = None
    anode_angle_deg: float = DEFAULT_ANODE_ANGLE_DEG
    filtration_mm: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FILTRATION_MM))
    mAs_per_rotation_given: float | None = None
    tube_current_mA: float | None = None
    ctdivol_mGy_per_100mAs: float | None = None
    ctdi_phantom_diameter_cm: int | None = None
    rotation_time_s: float | None = None
    tube_current_modulation: tuple | None = None
    path: Path | None = None

    # -- derived quantities -------------------------------------------------------------
    @property
    def mAs_per_rotation(self) -> float | None:
        """Tube load per rotation (mAs): as given, or tube current × rotation time; None if unknown."""
        if self.mAs_per_rotation_given is not None:
            return self.mAs_per_rotation_given
        if self.tube_current_mA is not None:
            return self.tube_current_mA * self.rotation_time_s
        return None

    @property
    def table_feed_mm(self) -> float:
        """Table travel per rotation (mm): pitch × collimation."""
        return self.pitch * self.collimation_mm

    @property
    def n_rotations(self) -> float:
        """Rotations of the helical scan, ``(z_end − z_start) / table feed``."""
        return (self.z_end_mm - self.z_start_mm) / self.table_feed_mm

    def relative_mA(self, z_mm) -> np.ndarray:
        """Relative tube current m(z) at focal-spot positions ``z_mm`` (1 without modulation)."""
        z = np.asarray(z_mm, dtype=float)
        if self.tube_current_modulation is None:
            return np.ones_like(z)
        t = np.asarray(self.tube_current_modulation, dtype=float)
        return np.interp(z, t[:, 0], t[:, 1])

    @property
    def mean_relative_mA(self) -> float:
        """Mean of m(z) over the scan range (exact for the piecewise-linear profile)."""
        if self.tube_current_modulation is None:
            return 1.0
        return _mean_relative(self.tube_current_modulation, self.z_start_mm, self.z_end_mm)

    @property
    def scan_mAs(self) -> float | None:
        """Tube load of the whole scan (mAs): mAs per rotation × rotations × mean relative mA."""
        m = self.mAs_per_rotation
        return None if m is None else m * self.n_rotations * self.mean_relative_mA

    # -- engine objects -------------------------------------------------------------------
    def spectrum(self, bin_keV: float = 0.5) -> Spectrum:
        """The tube spectrum (SpekPy, :func:`physics.transport.spekpy_spectrum`)."""
        try:
            return spekpy_spectrum(self.kvp, self.anode_angle_deg, dict(self.filtration_mm), bin_keV)
        except TransportError as exc:
            raise ProtocolError(f"[tube] {exc}") from None

    def bowtie_filter(self) -> Bowtie | None:
        """The bowtie filter as a :class:`physics.transport.Bowtie`, or None."""
        b = self.bowtie
        if b is None:
            return None
        try:
            if "profile" in b:
                return Bowtie.from_csv(b["material"], b["profile"])
            return Bowtie.cylinder_compensator(b["material"], b["centre_thickness_mm"], b["phantom_radius_mm"],
                                               b["ratio"], b.get("max_thickness_mm"))
        except TransportError as exc:
            raise ProtocolError(f"[scanner.bowtie] {exc}") from None

    def source(self, isocentre_xyz_mm=(0.0, 0.0, 0.0), phantom=None, *, spectrum: Spectrum | None = None,
               start_angle_deg: float = 0.0) -> CTFanBeam:
        """The helical scan as a photon source.

        Parameters
        ----------
        isocentre_xyz_mm : 3 floats
            World position of the isocentre (mm); the table axis is world +z through it,
            and ``z_start_mm``/``z_end_mm`` are measured along it from the isocentre.
        phantom : VoxelPhantom, optional
            If given, the irradiated range ``[z_start − H/2, z_end + H/2]`` (H the
            collimation) must overlap the grid's extent along z.
        spectrum : Spectrum, optional
            Use this instead of :meth:`spectrum` (e.g. a cached one).
        start_angle_deg : float
            Tube angle at ``z_start_mm`` (degrees).

        Returns
        -------
        CTFanBeam
            ``rotation='continuous'`` over the range, with the protocol's pitch, SpekPy
            spectrum and bowtie; a :class:`ModulatedCTFanBeam` with tube-current modulation.

        Raises
        ------
        ProtocolError
            The scan range misses the phantom, or the spectrum / bowtie is invalid.
        """
        iso = np.asarray(isocentre_xyz_mm, dtype=float)
        if phantom is not None:
            lo, hi = _grid_z_extent_mm(phantom)
            a = iso[2] + self.z_start_mm - 0.5 * self.collimation_mm
            b = iso[2] + self.z_end_mm + 0.5 * self.collimation_mm
            if b <= lo or a >= hi:
                raise ProtocolError(f"[scan] z_start_mm = {self.z_start_mm:g}, z_end_mm = {self.z_end_mm:g}: the "
                                    f"irradiated range z ∈ [{a:g}, {b:g}] mm misses the phantom, which spans z ∈ "
                                    f"[{lo:g}, {hi:g}] mm (move the scan range or the isocentre)")
        kw = dict(rotation="continuous", start_angle_deg=float(start_angle_deg), pitch=self.pitch,
                  z_start_mm=self.z_start_mm, z_end_mm=self.z_end_mm, bowtie=self.bowtie_filter())
        energy = spectrum if spectrum is not None else self.spectrum()
        args = (self.source_to_isocentre_mm, self.fan_width_mm, self.collimation_mm)
        try:
            if self.tube_current_modulation is not None:
                return ModulatedCTFanBeam(*args, energy_keV=energy, isocentre_xyz_mm=tuple(iso), **kw,
                                          relative_mA=self.tube_current_modulation)
            return CTFanBeam(*args, energy_keV=energy, isocentre_xyz_mm=tuple(iso), **kw)
        except TransportError as exc:
            raise ProtocolError(f"[scan] {exc}") from None

    def axial_source(self, fan_width_mm: float | None = None, isocentre_xyz_mm=(0.0, 0.0, 0.0), *,
                     spectrum: Spectrum | None = None) -> CTFanBeam:
        """One full axial rotation (pitch 0) at the isocentre, the CTDI irradiation.

        Parameters
        ----------
        fan_width_mm : float, optional
            Fan width on the isocentre plane (mm); default the protocol's. A narrower fan
            is the central part of the same beam (same bowtie profile and collimation).
        isocentre_xyz_mm : 3 floats
        spectrum : Spectrum, optional

        Returns
        -------
        CTFanBeam
            ``rotation='continuous'``, 360°, no table feed, no tube-current modulation.
        """
        fan = self.fan_width_mm if fan_width_mm is None else float(fan_width_mm)
        try:
            return CTFanBeam(self.source_to_isocentre_mm, fan, self.collimation_mm,
                             energy_keV=spectrum if spectrum is not None else self.spectrum(),
                             isocentre_xyz_mm=tuple(isocentre_xyz_mm), rotation="continuous", n_rotations=1.0,
                             bowtie=self.bowtie_filter())
        except TransportError as exc:
            raise ProtocolError(f"[scanner] {exc}") from None

    def to_dict(self) -> dict:
        """JSON-ready description (units in keys; the bowtie material as its composition)."""
        bt = None
        if self.bowtie is not None:
            bt = {k: (v.to_dict() if isinstance(v, Material) else str(v) if isinstance(v, Path) else v)
                  for k, v in self.bowtie.items()}
        return {
            "protocol": str(self.path) if self.path else None,
            "scanner": {"source_to_isocentre_mm": self.source_to_isocentre_mm, "fan_width_mm": self.fan_width_mm,
                        "bowtie": bt},
            "tube": {"kvp": self.kvp, "anode_angle_deg": self.anode_angle_deg,
                     "filtration_mm": dict(self.filtration_mm), "mAs_per_rotation": self.mAs_per_rotation,
                     "tube_current_mA": self.tube_current_mA, "ctdivol_mGy_per_100mAs": self.ctdivol_mGy_per_100mAs,
                     "ctdi_phantom_diameter_cm": self.ctdi_phantom_diameter_cm},
            "scan": {"collimation_mm": self.collimation_mm, "pitch": self.pitch, "z_start_mm": self.z_start_mm,
                     "z_end_mm": self.z_end_mm, "rotation_time_s": self.rotation_time_s,
                     "tube_current_modulation": (None if self.tube_current_modulation is None
                                                 else [list(p) for p in self.tube_current_modulation]),
                     "n_rotations": self.n_rotations, "mean_relative_mA": self.mean_relative_mA,
                     "scan_mAs": self.scan_mAs},
        }


def tube_fluence_per_mAs_cm2(protocol: Protocol) -> float:
    """Photon fluence per mAs at 1 m from the focal spot on the central axis (photons / cm² / mAs).

    SpekPy's ``get_flu()`` for the protocol's tube (kVp, anode angle, filtration; W
    target, default 'casim' model, 1 mAs, reference point 1 m from the focal spot, no air).
    Multiplying by (100 cm)² gives photons per steradian per mAs.
    """
    import spekpy

    try:
        s = spekpy.Spek(kvp=protocol.kvp, th=protocol.anode_angle_deg, dk=0.5, targ="W", mas=1.0)
        for m, t in protocol.filtration_mm.items():
            if t > 0:
                s.filter(m, t)
        return float(s.get_flu())
    except Exception as exc:  # noqa: BLE001 - SpekPy raises bare Exception
        raise ProtocolError(f"[tube] SpekPy failed: {exc}") from None


def _mean_relative(points, z0: float, z1: float) -> float:
    """Exact mean over [z0, z1] of the piecewise-linear profile through ``points`` (constant beyond)."""
    t = np.asarray(points, dtype=float)
    inner = t[(t[:, 0] > z0) & (t[:, 0] < z1), 0]
    knots = np.concatenate([[z0], inner, [z1]])
    v = np.interp(knots, t[:, 0], t[:, 1])
    return float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(knots)) / (z1 - z0))


def _grid_z_extent_mm(phantom) -> tuple[float, float]:
    """World z range (mm) covered by a VoxelPhantom's grid box."""
    nz, ny, nx = phantom.shape
    dz, dy, dx = phantom.spacing_mm
    o = np.asarray(phantom.origin_xyz_mm, float)
    d = np.asarray(phantom.direction_xyz, float)
    corners = []
    for i in (-0.5, nx - 0.5):
        for j in (-0.5, ny - 0.5):
            for k in (-0.5, nz - 0.5):
                corners.append(o + d @ np.array([i * dx, j * dy, k * dz]))
    z = np.array(corners)[:, 2]
    return float(z.min()), float(z.max())


# ----------------------------------------------------------------------------- parsing


def _material(v: Any) -> Material:
    sec = "scanner.bowtie"
    if isinstance(v, str):
        if v.lower() not in BOWTIE_MATERIALS:
            raise ProtocolError(f"[{sec}] material must be one of {', '.join(map(repr, BOWTIE_MATERIALS))} or a "
                                f"table {{density_g_cm3 = ..., mass_fractions = {{symbol = fraction, ...}}}}, "
                                f"got {v!r}")
        return BOWTIE_MATERIALS[v.lower()]
    if not isinstance(v, dict) or set(v) != {"density_g_cm3", "mass_fractions"}:
        raise ProtocolError(f"[{sec}] material table needs exactly density_g_cm3 and mass_fractions "
                            f"(e.g. {{density_g_cm3 = 2.2, mass_fractions = {{C = 0.240183, F = 0.759817}}}}), "
                            f"got {v!r}")
    if not isinstance(v["mass_fractions"], dict):
        raise ProtocolError(f"[{sec}] material.mass_fractions must be a table {{symbol = fraction}}, "
                            f"got {v['mass_fractions']!r}")
    rho = _positive(sec, "material.density_g_cm3", v["density_g_cm3"])
    fr = {str(k): _non_negative(sec, f"material.mass_fractions.{k}", x) for k, x in v["mass_fractions"].items()}
    try:
        return Material("bowtie", rho, fr)
    except TransportError as exc:
        raise ProtocolError(f"[{sec}] material: {exc}") from None


def _bowtie(v: Any, base: Path) -> dict[str, Any] | None:
    if isinstance(v, str):
        if v == "none":
            return None
        if v not in BOWTIE_PRESETS:
            raise ProtocolError(f"[scanner] bowtie must be one of {', '.join(map(repr, (*BOWTIE_PRESETS, 'none')))} "
                                f"or a table [scanner.bowtie], got {v!r}")
        p = dict(BOWTIE_PRESETS[v])
        return {"name": v, **p, "material": BOWTIE_MATERIALS[p["material"]]}
    sec = "scanner.bowtie"
    if not isinstance(v, dict):
        raise ProtocolError(f"[scanner] bowtie must be \"body\", \"head\", \"none\" or a table [scanner.bowtie], "
                            f"got {v!r}")
    _no_unknown(sec, v, _BOWTIE_KEYS)
    out: dict[str, Any] = {"name": "custom", "material": _material(_require(
        sec, v, "material", f" ({', '.join(map(repr, BOWTIE_MATERIALS))} or a composition table)"))}
    analytic = [k for k in (*_BOWTIE_ANALYTIC, "max_thickness_mm") if k in v]
    if ("profile" in v) == bool(analytic):
        raise ProtocolError(f"[{sec}] give either profile (CSV file: fan_mm or fan_angle_deg, thickness_mm) or "
                            f"the analytic {', '.join(_BOWTIE_ANALYTIC)}[, max_thickness_mm], not "
                            f"{'both' if analytic else 'neither'}")
    if "profile" in v:
        p = v["profile"]
        if not isinstance(p, str) or not p.strip():
            raise ProtocolError(f"[{sec}] profile must be a file path (string), got {p!r}")
        path = Path(os.path.expanduser(p))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ProtocolError(f"[{sec}] profile: file {str(path)!r} does not exist")
        out["profile"] = path.resolve()
        return out
    for k in _BOWTIE_ANALYTIC:
        _require(sec, v, k, f" (the analytic bowtie needs {', '.join(_BOWTIE_ANALYTIC)})")
    out["centre_thickness_mm"] = _non_negative(sec, "centre_thickness_mm", v["centre_thickness_mm"])
    out["phantom_radius_mm"] = _positive(sec, "phantom_radius_mm", v["phantom_radius_mm"])
    out["ratio"] = _non_negative(sec, "ratio", v["ratio"])
    if "max_thickness_mm" in v:
        out["max_thickness_mm"] = _non_negative(sec, "max_thickness_mm", v["max_thickness_mm"])
        if out["max_thickness_mm"] < out["centre_thickness_mm"]:
            raise ProtocolError(f"[{sec}] max_thickness_mm must be >= centre_thickness_mm = "
                                f"{out['centre_thickness_mm']:g} mm, got {v['max_thickness_mm']!r}")
    return out


def _filtration(v: Any) -> dict[str, float]:
    if not isinstance(v, dict):
        raise ProtocolError(f"[tube] filtration_mm must be a table of filter material to thickness in mm, "
                            f"e.g. filtration_mm = {{Al = 6.0, Cu = 0.1}}, got {v!r}")
    out = {str(m): _non_negative("tube", f"filtration_mm.{m}", x) for m, x in v.items()}
    known = spekpy_materials()
    for m in out:
        if m not in known:
            raise ProtocolError(f"[tube] filtration_mm: unknown filter material {m!r}; use SpekPy's names: element "
                                f"symbols such as 'Al', 'Cu', 'Sn' or named materials such as 'Water, Liquid', "
                                f"'Polymethyl Methacrylate' (case-sensitive)")
    return out


def _modulation(v: Any) -> tuple:
    sec, key = "scan", "tube_current_modulation"
    if not isinstance(v, list) or len(v) < 2 or not all(isinstance(p, list) and len(p) == 2 for p in v):
        raise ProtocolError(f"[{sec}] {key} must be a list of at least two [z_mm, relative_mA] pairs, got {v!r}")
    pts = tuple((_number(sec, f"{key} z_mm", p[0]), _non_negative(sec, f"{key} relative_mA", p[1])) for p in v)
    z = [p[0] for p in pts]
    if any(b <= a for a, b in zip(z, z[1:])):
        raise ProtocolError(f"[{sec}] {key}: z_mm must be strictly increasing, got {z}")
    return pts


def parse_protocol(data: Mapping[str, Any], base_dir: str | os.PathLike = ".",
                   path: str | os.PathLike | None = None) -> Protocol:
    """Validate a protocol given as a dict (the parsed TOML).

    Parameters
    ----------
    data : mapping
        Sections ``tube`` and ``scan`` (required) and ``scanner`` (optional).
    base_dir : path
        Folder against which a relative bowtie ``profile`` is resolved.
    path : path, optional
        The protocol file, recorded in :attr:`Protocol.path`.

    Returns
    -------
    Protocol

    Raises
    ------
    ProtocolError
        Unknown section or key, a missing key, a wrong type or value (e.g. pitch <= 0,
        ``z_end_mm`` <= ``z_start_mm``, an unknown filter or bowtie material, a
        modulation that is zero over the scan range); the message names the key.
    """
    if not isinstance(data, Mapping):
        raise ProtocolError(f"a protocol must be a table of sections, got {type(data).__name__}")
    for sec in data:
        if sec not in _SECTIONS:
            raise ProtocolError(f"unknown section [{sec}] (valid sections: "
                                f"{', '.join('[' + s + ']' for s in _SECTIONS)})")
    base = Path(base_dir)

    t = _table(data, "scanner", required=False)
    _no_unknown("scanner", t, _SCANNER_KEYS)
    sid = _positive("scanner", "source_to_isocentre_mm", t.get("source_to_isocentre_mm",
                                                               DEFAULT_SOURCE_TO_ISOCENTRE_MM))
    fan = _positive("scanner", "fan_width_mm", t.get("fan_width_mm", DEFAULT_FAN_WIDTH_MM))
    if fan >= 2.0 * sid:
        raise ProtocolError(f"[scanner] fan_width_mm must be < 2 × source_to_isocentre_mm = {2 * sid:g} mm "
                            f"(a fan narrower than 180°), got {fan:g}")
    bowtie = _bowtie(t.get("bowtie", "none"), base)

    t = _table(data, "tube", required=True)
    _no_unknown("tube", t, _TUBE_KEYS)
    kvp = _positive("tube", "kvp", _require("tube", t, "kvp", " (tube potential, kV)"))
    if not 10.0 <= kvp <= 150.0:
        raise ProtocolError(f"[tube] kvp must be in [10, 150] kV (SpekPy's W-anode model; transport tables end at "
                            f"150 keV), got {kvp:g}")
    anode = _positive("tube", "anode_angle_deg", t.get("anode_angle_deg", DEFAULT_ANODE_ANGLE_DEG))
    if anode >= 90.0:
        raise ProtocolError(f"[tube] anode_angle_deg must be in (0, 90) degrees, got {anode:g}")
    filtration = _filtration(t.get("filtration_mm", DEFAULT_FILTRATION_MM))
    if "mAs_per_rotation" in t and "tube_current_mA" in t:
        raise ProtocolError("[tube] give at most one of mAs_per_rotation or tube_current_mA (with [scan] "
                            "rotation_time_s), not both")
    mas = _positive("tube", "mAs_per_rotation", t["mAs_per_rotation"]) if "mAs_per_rotation" in t else None
    ma = _positive("tube", "tube_current_mA", t["tube_current_mA"]) if "tube_current_mA" in t else None
    ctdivol = diam = None
    if "ctdivol_mGy_per_100mAs" in t:
        ctdivol = _positive("tube", "ctdivol_mGy_per_100mAs", t["ctdivol_mGy_per_100mAs"])
        diam = _require("tube", t, "ctdi_phantom_diameter_cm",
                        " (the phantom of the measured ctdivol_mGy_per_100mAs: 16 or 32)")
        if isinstance(diam, bool) or diam not in _CTDI_DIAMETERS_CM:
            raise ProtocolError(f"[tube] ctdi_phantom_diameter_cm must be 16 or 32, got {diam!r}")
        diam = int(diam)
    elif "ctdi_phantom_diameter_cm" in t:
        raise ProtocolError("[tube] ctdi_phantom_diameter_cm needs ctdivol_mGy_per_100mAs (the measured CTDIvol)")

    t = _table(data, "scan", required=True)
    _no_unknown("scan", t, _SCAN_KEYS)
    collimation = _positive("scan", "collimation_mm", _require("scan", t, "collimation_mm",
                                                               " (N x T, total nominal beam width, mm)"))
    pitch = _positive("scan", "pitch", _require("scan", t, "pitch", " (table feed per rotation / collimation)"))
    z0 = _number("scan", "z_start_mm", _require("scan", t, "z_start_mm"))
    z1 = _number("scan", "z_end_mm", _require("scan", t, "z_end_mm"))
    if z1 <= z0:
        raise ProtocolError(f"[scan] z_end_mm must be > z_start_mm = {z0:g} mm (the scan range is empty), "
                            f"got {z1:g}")
    rot = _positive("scan", "rotation_time_s", t["rotation_time_s"]) if "rotation_time_s" in t else None
    if ma is not None and rot is None:
        raise ProtocolError("[tube] tube_current_mA needs [scan] rotation_time_s (or give mAs_per_rotation)")
    tcm = _modulation(t["tube_current_modulation"]) if "tube_current_modulation" in t else None
    if tcm is not None and _mean_relative(tcm, z0, z1) <= 0:
        raise ProtocolError(f"[scan] tube_current_modulation is zero over the whole scan range "
                            f"[{z0:g}, {z1:g}] mm")
    return Protocol(kvp=kvp, collimation_mm=collimation, pitch=pitch, z_start_mm=z0, z_end_mm=z1,
                    source_to_isocentre_mm=sid, fan_width_mm=fan, bowtie=bowtie, anode_angle_deg=anode,
                    filtration_mm=filtration, mAs_per_rotation_given=mas, tube_current_mA=ma,
                    ctdivol_mGy_per_100mAs=ctdivol, ctdi_phantom_diameter_cm=diam, rotation_time_s=rot,
                    tube_current_modulation=tcm, path=Path(path).resolve() if path is not None else None)


def read_protocol(path: str | os.PathLike) -> Protocol:
    """Read and validate a protocol TOML file (see the module docstring).

    Parameters
    ----------
    path : path
        The ``.toml`` file; a relative bowtie ``profile`` is resolved against its folder.

    Returns
    -------
    Protocol

    Raises
    ------
    ProtocolError
        Missing or unparsable file, or any invalid section / key (see :func:`parse_protocol`).
    """
    return _CHECKS.read(path, "protocol file", parse_protocol)
