"""Photon sources: where photons start, in which direction, with which energy.

A source is any object with a ``sample(n, rng)`` method returning a
:class:`PhotonBatch` in **world** coordinates (x, y, z mm, unit directions, keV) and a
``max_energy_keV`` property; the engine converts to the grid frame. New geometries
(CT fan beams, helical scans, bowtie filters) subclass :class:`Source` and use the same
``rng`` (a NumPy ``Generator`` seeded from ``(seed, batch, chunk)`` by the engine), so
runs stay reproducible.

Energy is either a single energy in keV or a :class:`Spectrum`: discrete lines
(``energy_keV``, ``relative_fluence``) or, when bin edges are given, a histogram sampled
uniformly inside each bin. Spectrum files are CSV with columns ``energy_keV,
relative_fluence`` and optional ``bin_low_keV, bin_high_keV`` (the format of the
reference spectra in ``reference/`` and ``reference/tg195/``). :func:`spekpy_spectrum`
computes a tube spectrum from kVp, anode angle and filtration with SpekPy (Poludniowski
et al., *Phys. Med. Biol.* 66 (2021) 21NT02; Bujila et al., *Phys. Med.* 75 (2020) 44),
binned with the same ``[bin_low_keV, bin_high_keV)`` convention.
"""

from __future__ import annotations

import abc
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from .materials import TransportError

__all__ = ["PhotonBatch", "Spectrum", "read_spectrum_csv", "spekpy_spectrum", "SPEKPY_KVP_RANGE",
           "Source", "PencilBeam", "ParallelBeam", "PointSource", "spekpy_materials"]


@dataclass
class PhotonBatch:
    """Photons to transport (structure of arrays).

    Attributes
    ----------
    position_mm : float64 (n, 3)
        World positions (x, y, z) in mm.
    direction : float64 (n, 3)
        Unit direction vectors (x, y, z).
    energy_keV : float64 (n,)
    weight : float64 (n,), optional
        Statistical weight in (0, 1] after source-side filtration (e.g. the expected
        transmission through a bowtie filter); None means 1 for every photon. The engine
        counts every photon as emitted (incident energy ``Σ E``) and tallies the filtered
        part ``Σ (1 − w) E`` separately, so the energy balance stays exact.
    """

    position_mm: np.ndarray
    direction: np.ndarray
    energy_keV: np.ndarray
    weight: np.ndarray | None = None


def check_vec3(value, name: str, unit: bool = False) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float).reshape(3)
    except (TypeError, ValueError):
        raise TransportError(f"{name} must be 3 numbers (x, y, z), got {value!r}") from None
    if not np.all(np.isfinite(a)):
        raise TransportError(f"{name} must be finite, got {value!r}")
    if unit:
        nrm = np.linalg.norm(a)
        if nrm == 0:
            raise TransportError(f"{name} must be a non-zero vector, got {value!r}")
        a = a / nrm
    return a


def check_positive(value, name: str) -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0:
        raise TransportError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Spectrum:
    """A photon energy spectrum.

    Parameters
    ----------
    energy_keV : array (n,)
        Line energies, or bin representatives when bins are given (keV, > 0).
    relative_fluence : array (n,)
        Relative number of photons per line/bin (>= 0, not all zero); normalised.
    bin_low_keV, bin_high_keV : array (n,), optional
        Histogram bin edges (keV); if given, energies are uniform within the bin.
    """

    def __init__(self, energy_keV, relative_fluence, bin_low_keV=None, bin_high_keV=None):
        e = np.asarray(energy_keV, dtype=float).ravel()
        f = np.asarray(relative_fluence, dtype=float).ravel()
        if e.size == 0 or e.size != f.size:
            raise TransportError(
                f"energy_keV and relative_fluence must be non-empty and of equal length, got {e.size} and {f.size}")
        if not np.all(np.isfinite(e)) or np.any(e <= 0):
            raise TransportError("spectrum energy_keV must be finite and > 0")
        if not np.all(np.isfinite(f)) or np.any(f < 0):
            bad = f[~(np.isfinite(f) & (f >= 0))][0]
            raise TransportError(f"spectrum relative_fluence must be finite and >= 0, got {bad!r}")
        if f.sum() <= 0:
            raise TransportError("spectrum relative_fluence is all zero")
        if (bin_low_keV is None) != (bin_high_keV is None):
            raise TransportError("give both bin_low_keV and bin_high_keV, or neither")
        self.energy_keV = e
        self.relative_fluence = f / f.sum()
        self.bin_low_keV = self.bin_high_keV = None
        if bin_low_keV is not None:
            lo = np.asarray(bin_low_keV, dtype=float).ravel()
            hi = np.asarray(bin_high_keV, dtype=float).ravel()
            if lo.size != e.size or hi.size != e.size:
                raise TransportError("bin_low_keV and bin_high_keV must have the length of energy_keV")
            if np.any(lo < 0) or np.any(hi <= lo) or not np.all(np.isfinite(hi)):
                raise TransportError("spectrum bins need 0 <= bin_low_keV < bin_high_keV")
            self.bin_low_keV, self.bin_high_keV = lo, hi
        self._cdf = np.cumsum(self.relative_fluence)
        self._cdf[-1] = 1.0

    @property
    def max_energy_keV(self) -> float:
        keep = self.relative_fluence > 0
        top = self.bin_high_keV if self.bin_high_keV is not None else self.energy_keV
        return float(top[keep].max())

    @property
    def min_energy_keV(self) -> float:
        keep = self.relative_fluence > 0
        bot = self.bin_low_keV if self.bin_low_keV is not None else self.energy_keV
        return float(bot[keep].min())

    @property
    def mean_energy_keV(self) -> float:
        if self.bin_low_keV is not None:
            return float(np.sum(self.relative_fluence * 0.5 * (self.bin_low_keV + self.bin_high_keV)))
        return float(np.sum(self.relative_fluence * self.energy_keV))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` energies (keV)."""
        k = np.searchsorted(self._cdf, rng.random(n), side="right")
        k = np.minimum(k, self._cdf.size - 1)
        if self.bin_low_keV is None:
            return self.energy_keV[k]
        lo, hi = self.bin_low_keV[k], self.bin_high_keV[k]
        return lo + (hi - lo) * rng.random(n)

    def to_dict(self) -> dict:
        d = {"energy_keV": self.energy_keV.tolist(), "relative_fluence": self.relative_fluence.tolist()}
        if self.bin_low_keV is not None:
            d["bin_low_keV"] = self.bin_low_keV.tolist()
            d["bin_high_keV"] = self.bin_high_keV.tolist()
        return d


def read_spectrum_csv(path: str | Path) -> Spectrum:
    """Read a spectrum CSV (``energy_keV, relative_fluence[, bin_low_keV, bin_high_keV]``)."""
    path = Path(path)
    if not path.is_file():
        raise TransportError(f"spectrum file {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        for req in ("energy_keV", "relative_fluence"):
            if req not in cols:
                raise TransportError(f"spectrum file {str(path)!r}: missing column {req!r} (have {cols})")
        rows = [{k.strip(): v for k, v in r.items() if k} for r in reader]
    try:
        get = lambda c: np.array([float(r[c]) for r in rows])  # noqa: E731
        bins = "bin_low_keV" in cols and "bin_high_keV" in cols
        return Spectrum(get("energy_keV"), get("relative_fluence"),
                        get("bin_low_keV") if bins else None, get("bin_high_keV") if bins else None)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, TransportError):
            raise TransportError(f"spectrum file {str(path)!r}: {exc}") from None
        raise TransportError(f"spectrum file {str(path)!r}: unreadable number ({exc})") from None


#: Anode targets of SpekPy's default ('casim') model and their tube-potential range (kV),
#: as enforced by ``spekpy.Spek`` (SpekPy 2.5).
SPEKPY_KVP_RANGE: Mapping[str, tuple[float, float]] = MappingProxyType({
    "W": (10.0, 500.0), "Mo": (10.0, 50.0), "Rh": (10.0, 50.0), "Cr": (10.0, 50.0),
    "Cu": (10.0, 50.0), "Ag": (10.0, 50.0), "Au": (10.0, 50.0),
})


def spekpy_materials() -> set[str]:
    """Names SpekPy accepts as filter materials (its default and user material files)."""
    from spekpy.IO import get_matls

    usr, default = get_matls()
    return set(usr) | set(default)


def spekpy_spectrum(kvp, anode_angle_deg=12.0, filtration_mm: Mapping[str, float] = MappingProxyType({"Al": 2.5}),
                    bin_keV=0.5, *, target: str = "W", min_relative_fluence: float = 1e-12) -> Spectrum:
    """An x-ray tube spectrum computed with SpekPy, as a binned :class:`Spectrum`.

    SpekPy's default physics model ('casim') gives the bremsstrahlung and characteristic
    photon fluence of a thick-target tube at the reference point 1 m from the focal spot
    on the central axis, attenuated by the given filters (SpekPy's own attenuation
    tables). The fluence is returned per energy bin: SpekPy's bins have width
    ``bin_keV`` and end at ``kvp``, so bin ``i`` is ``[k_i − Δ/2, k_i + Δ/2)`` around
    SpekPy's mid-bin energy ``k_i``; photons are sampled uniformly inside a bin and the
    mean energy (:attr:`Spectrum.mean_energy_keV`) equals SpekPy's ``get_emean``.

    Parameters
    ----------
    kvp : float
        Tube potential (kV); within :data:`SPEKPY_KVP_RANGE` of ``target`` (W: 10–500 kV).
    anode_angle_deg : float
        Anode (target) angle in degrees, 0 < angle < 90. SpekPy's default is 12°.
    filtration_mm : mapping of str to float
        Filter material → thickness (mm, >= 0), applied in order, e.g.
        ``{"Al": 2.5, "Cu": 0.1}``. Material names are SpekPy's: element symbols
        (``"Al"``, ``"Cu"``) or its named materials (``"Water, Liquid"``, ``"Air"``, …;
        see ``spekpy.Spek.show_matls()``). Default 2.5 mm Al. An empty mapping gives the
        unfiltered spectrum.
    bin_keV : float
        Energy bin width (keV), 0 < ``bin_keV`` <= ``kvp``/10. Default 0.5 keV.
    target : str
        Anode material, one of the keys of :data:`SPEKPY_KVP_RANGE`. Default ``"W"``.
    min_relative_fluence : float
        Bins holding less than this fraction of all photons are dropped (default 1e-12:
        the strongly filtered low-energy tail, whose removal changes the total by < 1e-9).

    Returns
    -------
    Spectrum
        Bin representatives ``energy_keV`` = SpekPy's mid-bin energies, ``bin_low_keV``,
        ``bin_high_keV`` edges (keV), ``relative_fluence`` = photon number per bin,
        normalised to sum 1.

    Raises
    ------
    TransportError
        A parameter out of range, an unknown target or filter material (the message names
        the parameter and what is valid), or SpekPy failing.
    ImportError
        SpekPy is not installed.

    Notes
    -----
    SpekPy is imported only when this function is called.
    """
    if not isinstance(target, str) or target not in SPEKPY_KVP_RANGE:
        raise TransportError(f"target must be one of {', '.join(repr(t) for t in SPEKPY_KVP_RANGE)}, "
                             f"got {target!r}")
    lo, hi = SPEKPY_KVP_RANGE[target]
    if isinstance(kvp, bool) or not isinstance(kvp, (int, float, np.integer, np.floating)) \
            or not math.isfinite(kvp) or not lo <= kvp <= hi:
        raise TransportError(f"kvp must be a number in [{lo:g}, {hi:g}] kV for target {target!r} "
                             f"(SpekPy's range), got {kvp!r}")
    kvp = float(kvp)
    th = check_positive(anode_angle_deg, "anode_angle_deg")
    if th >= 90.0:
        raise TransportError(f"anode_angle_deg must be in (0, 90) degrees, got {anode_angle_deg!r}")
    dk = check_positive(bin_keV, "bin_keV")
    if dk > kvp / 10.0:
        raise TransportError(f"bin_keV must be <= kvp/10 = {kvp / 10.0:g} keV (at least 10 bins), got {bin_keV!r}")
    if isinstance(min_relative_fluence, bool) or not isinstance(min_relative_fluence, (int, float)) \
            or not 0.0 <= min_relative_fluence < 1.0:
        raise TransportError(f"min_relative_fluence must be a number in [0, 1), got {min_relative_fluence!r}")
    if not isinstance(filtration_mm, Mapping):
        raise TransportError(f"filtration_mm must be a mapping of filter material to thickness in mm, "
                             f"e.g. {{'Al': 2.5}}, got {filtration_mm!r}")
    try:
        import spekpy
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ImportError("spekpy_spectrum needs SpekPy: pip install spekpy") from exc
    known = spekpy_materials()
    filters = []
    for matl, t in filtration_mm.items():
        if not isinstance(matl, str) or matl not in known:
            symbols = sorted(m for m in known if len(m) <= 2)
            raise TransportError(
                f"filtration_mm: unknown filter material {matl!r}; SpekPy knows element symbols "
                f"({', '.join(symbols[:12])}, …) and {len(known) - len(symbols)} named materials such as "
                f"'Water, Liquid', 'Air', 'Polymethyl Methacrylate' (case-sensitive)")
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) \
                or not math.isfinite(t) or t < 0:
            raise TransportError(f"filtration_mm[{matl!r}] must be a thickness in mm >= 0, got {t!r}")
        filters.append((matl, float(t)))
    try:
        spek = spekpy.Spek(kvp=kvp, th=th, dk=dk, targ=target)
        for matl, t in filters:
            if t > 0:
                spek.filter(matl, t)
        k, n_per_bin = spek.get_spectrum(flu=True, diff=False)
        width = float(spek.state.model_parameters.dk)
    except Exception as exc:  # noqa: BLE001 - SpekPy raises bare Exception
        raise TransportError(f"SpekPy failed for kvp={kvp:g}, anode_angle_deg={th:g}, "
                             f"filtration_mm={dict(filters)}: {exc}") from None
    k = np.asarray(k, dtype=float)
    n_per_bin = np.clip(np.asarray(n_per_bin, dtype=float), 0.0, None)
    total = n_per_bin.sum()
    if not np.isfinite(total) or total <= 0:
        raise TransportError(f"SpekPy returned an empty spectrum for kvp={kvp:g}, filtration_mm={dict(filters)} "
                             f"(filtration too thick?)")
    keep = n_per_bin > min_relative_fluence * total
    low = np.maximum(k - 0.5 * width, 0.0)
    high = np.minimum(k + 0.5 * width, kvp)
    return Spectrum(k[keep], n_per_bin[keep], low[keep], high[keep])


def check_energy(value) -> float | Spectrum:
    if isinstance(value, Spectrum):
        return value
    return check_positive(value, "energy_keV")


class Source(abc.ABC):
    """Base class: subclasses implement :meth:`sample` and set ``energy``."""

    energy: float | Spectrum

    @property
    def max_energy_keV(self) -> float:
        return self.energy.max_energy_keV if isinstance(self.energy, Spectrum) else float(self.energy)

    @property
    def min_energy_keV(self) -> float:
        return self.energy.min_energy_keV if isinstance(self.energy, Spectrum) else float(self.energy)

    def _energies(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if isinstance(self.energy, Spectrum):
            return self.energy.sample(n, rng)
        return np.full(n, float(self.energy))

    @abc.abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> PhotonBatch:
        """Draw ``n`` source photons (world positions in mm, unit directions, energies in keV)."""

    def central_ray(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A ray that should hit the phantom (for a miss check), or None."""
        return None


class PencilBeam(Source):
    """All photons start at ``position_mm`` going along ``direction``.

    Parameters
    ----------
    position_mm : 3 floats
        World start point (x, y, z) in mm.
    direction : 3 floats
        Direction (normalised here).
    energy_keV : float or Spectrum
    """

    def __init__(self, position_mm, direction, energy_keV):
        self.position_mm = check_vec3(position_mm, "position_mm")
        self.direction = check_vec3(direction, "direction", unit=True)
        self.energy = check_energy(energy_keV)

    def sample(self, n, rng):
        return PhotonBatch(np.tile(self.position_mm, (n, 1)), np.tile(self.direction, (n, 1)),
                           self._energies(n, rng))

    def central_ray(self):
        return self.position_mm, self.direction


class ParallelBeam(Source):
    """Parallel broad beam, uniform over a rectangle perpendicular to ``direction``.

    Parameters
    ----------
    center_mm : 3 floats
        Centre of the rectangle (world, mm).
    direction : 3 floats
        Beam direction.
    width_mm, height_mm : float
        Rectangle sides along ``e1`` and ``e2 = direction × e1`` (mm).
    up : 3 floats, optional
        ``e1`` is the component of ``up`` perpendicular to ``direction`` (default: the
        world axis least aligned with ``direction``).
    energy_keV : float or Spectrum
    """

    def __init__(self, center_mm, direction, width_mm, height_mm, energy_keV, up=None):
        self.center_mm = check_vec3(center_mm, "center_mm")
        self.direction = check_vec3(direction, "direction", unit=True)
        self.width_mm = check_positive(width_mm, "width_mm")
        self.height_mm = check_positive(height_mm, "height_mm")
        self.energy = check_energy(energy_keV)
        if up is None:
            up = np.eye(3)[int(np.argmin(np.abs(self.direction)))]
        up = check_vec3(up, "up")
        e1 = up - np.dot(up, self.direction) * self.direction
        if np.linalg.norm(e1) < 1e-9:
            raise TransportError(f"up must not be parallel to direction, got up={up.tolist()}")
        self.e1 = e1 / np.linalg.norm(e1)
        self.e2 = np.cross(self.direction, self.e1)

    def sample(self, n, rng):
        a = (rng.random(n) - 0.5) * self.width_mm
        b = (rng.random(n) - 0.5) * self.height_mm
        pos = self.center_mm + a[:, None] * self.e1 + b[:, None] * self.e2
        return PhotonBatch(pos, np.tile(self.direction, (n, 1)), self._energies(n, rng))

    def central_ray(self):
        return self.center_mm, self.direction


class PointSource(Source):
    """Isotropic point source (uniform over 4π sr) at ``position_mm``."""

    def __init__(self, position_mm, energy_keV):
        self.position_mm = check_vec3(position_mm, "position_mm")
        self.energy = check_energy(energy_keV)

    def sample(self, n, rng):
        w = 2.0 * rng.random(n) - 1.0
        phi = 2.0 * np.pi * rng.random(n)
        s = np.sqrt(1.0 - w * w)
        d = np.stack([s * np.cos(phi), s * np.sin(phi), w], axis=1)
        return PhotonBatch(np.tile(self.position_mm, (n, 1)), d, self._energies(n, rng))
