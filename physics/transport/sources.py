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
reference spectra in ``reference/`` and ``reference/tg195/``).
"""

from __future__ import annotations

import abc
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .materials import TransportError

__all__ = ["PhotonBatch", "Spectrum", "read_spectrum_csv", "Source", "PencilBeam",
           "ParallelBeam", "PointSource"]


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
    """

    position_mm: np.ndarray
    direction: np.ndarray
    energy_keV: np.ndarray


def _vec3(value, name: str, unit: bool = False) -> np.ndarray:
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


def _positive(value, name: str) -> float:
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


def _energy(value) -> float | Spectrum:
    if isinstance(value, Spectrum):
        return value
    return _positive(value, "energy_keV")


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
        self.position_mm = _vec3(position_mm, "position_mm")
        self.direction = _vec3(direction, "direction", unit=True)
        self.energy = _energy(energy_keV)

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
        self.center_mm = _vec3(center_mm, "center_mm")
        self.direction = _vec3(direction, "direction", unit=True)
        self.width_mm = _positive(width_mm, "width_mm")
        self.height_mm = _positive(height_mm, "height_mm")
        self.energy = _energy(energy_keV)
        if up is None:
            up = np.eye(3)[int(np.argmin(np.abs(self.direction)))]
        up = _vec3(up, "up")
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
        self.position_mm = _vec3(position_mm, "position_mm")
        self.energy = _energy(energy_keV)

    def sample(self, n, rng):
        w = 2.0 * rng.random(n) - 1.0
        phi = 2.0 * np.pi * rng.random(n)
        s = np.sqrt(1.0 - w * w)
        d = np.stack([s * np.cos(phi), s * np.sin(phi), w], axis=1)
        return PhotonBatch(np.tile(self.position_mm, (n, 1)), d, self._energies(n, rng))
