"""The dose scenario file: one TOML file that describes a whole photon-transport run.

A scenario names the phantom (an integer label map and a label → material table), the
source, the physics switches and the run settings, so a dose run is reproducible from
one small text file (and can later be sent to a cluster). The contract is the one of
issue 3 ("Interface")::

    [phantom]
    labels = "phantom.nii.gz"       # integer label map; grid from the file
    materials = "materials.csv"     # label_id, tissue_name, density_g_cm3, <element>...
    [source]
    type = "pencil"                 # pencil | parallel | point | ct
    position_mm = [0.0, 0.0, -1.0]  # world (x, y, z) mm
    direction = [0.0, 0.0, 1.0]
    energy_keV = 60.0               # or: spectrum = "spectrum.csv"
    [physics]
    compton = "binding"             # binding | klein-nishina
    rayleigh = true
    [run]
    histories = 10000000
    seed = 1

Relative paths are resolved against the scenario file's folder. Keys per source type:

- ``pencil``: ``position_mm``, ``direction``;
- ``parallel``: ``position_mm`` (centre of the beam rectangle), ``direction``,
  ``width_mm``, ``height_mm``, optional ``up``;
- ``point``: ``position_mm`` (isotropic emission);
- ``ct``: ``source_to_isocentre_mm``, ``fan_width_mm``, ``slice_width_mm``, optional
  ``angles_deg`` (default ``[0.0]``), ``isocentre_mm`` (default origin), ``axis``
  (default ``[0, 0, 1]``) — the TG-195 geometry of :class:`physics.transport.CTFanBeam`.

Every source takes exactly one of ``energy_keV`` or ``spectrum``. Optional keys:
``[physics] cutoff_keV`` (default 1), ``[run] batches`` (default 10; ``histories`` must
be a multiple of it) and ``[run] threads``.

This module only reads and checks the file (:func:`read_scenario` → :class:`Scenario`);
:mod:`workflows.ct_dose` turns a scenario into an engine run. Every error is a
:class:`ScenarioError` whose message names the section and key, e.g.
``"[source] energy_keV must be > 0, got -60.0"``.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ScenarioError", "SOURCE_TYPES", "COMPTON_MODELS", "PhantomSpec", "SourceSpec",
           "PhysicsSpec", "RunSpec", "Scenario", "read_scenario", "parse_scenario"]

SOURCE_TYPES = ("pencil", "parallel", "point", "ct")
COMPTON_MODELS = ("binding", "klein-nishina")
DEFAULT_BATCHES = 10

_SECTIONS = ("phantom", "source", "physics", "run")
_PHANTOM_KEYS = ("labels", "materials")
_PHYSICS_KEYS = ("compton", "rayleigh", "cutoff_keV")
_RUN_KEYS = ("histories", "seed", "batches", "threads")
_ENERGY_KEYS = ("energy_keV", "spectrum")
#: Geometry keys allowed per source type: (required, optional).
_SOURCE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pencil": (("position_mm", "direction"), ()),
    "parallel": (("position_mm", "direction", "width_mm", "height_mm"), ("up",)),
    "point": (("position_mm",), ()),
    "ct": (("source_to_isocentre_mm", "fan_width_mm", "slice_width_mm"),
           ("angles_deg", "isocentre_mm", "axis")),
}


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or invalid (the message names the key)."""


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class PhantomSpec:
    """``[phantom]``: absolute paths of the label map and the materials table."""

    labels: Path
    materials: Path


@dataclass(frozen=True)
class SourceSpec:
    """``[source]``: the source type, its geometry (mm, unit-free directions) and energy.

    Attributes
    ----------
    type : {'pencil', 'parallel', 'point', 'ct'}
    energy_keV : float or None
        Monoenergetic photons (keV, > 0); None when ``spectrum`` is given.
    spectrum : Path or None
        Spectrum CSV (``energy_keV, relative_fluence[, bin_low_keV, bin_high_keV]``).
    geometry : dict
        The type's geometry keys (see the module docstring), floats / 3-lists of floats.
    """

    type: str
    energy_keV: float | None = None
    spectrum: Path | None = None
    geometry: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PhysicsSpec:
    """``[physics]``: Compton model, Rayleigh on/off, photon cutoff energy (keV)."""

    compton: str = "binding"
    rayleigh: bool = True
    cutoff_keV: float = 1.0


@dataclass(frozen=True)
class RunSpec:
    """``[run]``: total histories, seed, number of batches (for σ), Numba threads."""

    histories: int
    seed: int
    batches: int = DEFAULT_BATCHES
    threads: int | None = None

    @property
    def histories_per_batch(self) -> int:
        return self.histories // self.batches


@dataclass(frozen=True)
class Scenario:
    """A validated scenario (all paths absolute; ``path`` is the scenario file)."""

    path: Path | None
    phantom: PhantomSpec
    source: SourceSpec
    physics: PhysicsSpec
    run: RunSpec

    def to_dict(self) -> dict:
        """JSON-ready description (paths as strings)."""
        src = {"type": self.source.type, **{k: v for k, v in self.source.geometry.items()}}
        if self.source.energy_keV is not None:
            src["energy_keV"] = self.source.energy_keV
        else:
            src["spectrum"] = str(self.source.spectrum)
        return {
            "scenario": str(self.path) if self.path else None,
            "phantom": {"labels": str(self.phantom.labels), "materials": str(self.phantom.materials)},
            "source": src,
            "physics": {"compton": self.physics.compton, "rayleigh": self.physics.rayleigh,
                        "cutoff_keV": self.physics.cutoff_keV},
            "run": {"histories": self.run.histories, "seed": self.run.seed, "batches": self.run.batches,
                    "threads": self.run.threads},
        }

    def input_files(self) -> list[Path]:
        """The files the run reads (for hashing / provenance)."""
        files = [self.phantom.labels, self.phantom.materials]
        if self.source.spectrum is not None:
            files.append(self.source.spectrum)
        return files


# ----------------------------------------------------------------------------- checks
def _number(sec: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ScenarioError(f"[{sec}] {key} must be a finite number, got {v!r}")
    return float(v)


def _positive(sec: str, key: str, v: Any) -> float:
    x = _number(sec, key, v)
    if x <= 0:
        raise ScenarioError(f"[{sec}] {key} must be > 0, got {v!r}")
    return x


def _integer(sec: str, key: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ScenarioError(f"[{sec}] {key} must be an integer >= {minimum}, got {v!r}")
    if v < minimum:
        raise ScenarioError(f"[{sec}] {key} must be an integer >= {minimum}, got {v!r}")
    return v


def _vec3(sec: str, key: str, v: Any, nonzero: bool = False) -> list[float]:
    if not isinstance(v, list) or len(v) != 3:
        raise ScenarioError(f"[{sec}] {key} must be a list of 3 numbers [x, y, z], got {v!r}")
    out = [_number(sec, key, x) for x in v]
    if nonzero and not any(out):
        raise ScenarioError(f"[{sec}] {key} must be a non-zero vector, got {v!r}")
    return out


def _file(sec: str, key: str, v: Any, base: Path) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise ScenarioError(f"[{sec}] {key} must be a file path (string), got {v!r}")
    p = Path(os.path.expanduser(v))
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise ScenarioError(f"[{sec}] {key}: file {str(p)!r} does not exist")
    return p.resolve()


def _table(data: Mapping, sec: str, required: bool = True) -> Mapping:
    t = data.get(sec)
    if t is None:
        if required:
            raise ScenarioError(f"missing section [{sec}]")
        return {}
    if not isinstance(t, dict):
        raise ScenarioError(f"[{sec}] must be a table (section), got {t!r}")
    return t


def _no_unknown(sec: str, table: Mapping, allowed) -> None:
    for k in table:
        if k not in allowed:
            raise ScenarioError(f"[{sec}] unknown key {k!r} (valid keys: {', '.join(allowed)})")


def _require(sec: str, table: Mapping, key: str, hint: str = "") -> Any:
    if key not in table:
        raise ScenarioError(f"[{sec}] missing key {key!r}{hint}")
    return table[key]


def parse_scenario(data: Mapping[str, Any], base_dir: str | os.PathLike = ".",
                   path: str | os.PathLike | None = None) -> Scenario:
    """Validate a scenario given as a dict (the parsed TOML).

    Parameters
    ----------
    data : mapping
        Sections ``phantom``, ``source``, ``run`` (required) and ``physics`` (optional).
    base_dir : path
        Folder against which relative file paths are resolved.
    path : path, optional
        The scenario file, recorded in :attr:`Scenario.path`.

    Returns
    -------
    Scenario

    Raises
    ------
    ScenarioError
        Unknown section or key, missing key or file, wrong type or value; the message
        names the section and key.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(f"a scenario must be a table of sections, got {type(data).__name__}")
    for sec in data:
        if sec not in _SECTIONS:
            raise ScenarioError(f"unknown section [{sec}] (valid sections: "
                                f"{', '.join('[' + s + ']' for s in _SECTIONS)})")
    base = Path(base_dir)

    # [phantom]
    t = _table(data, "phantom")
    _no_unknown("phantom", t, _PHANTOM_KEYS)
    phantom = PhantomSpec(_file("phantom", "labels", _require("phantom", t, "labels"), base),
                          _file("phantom", "materials", _require("phantom", t, "materials"), base))

    # [source]
    t = _table(data, "source")
    stype = _require("source", t, "type", f" (one of {', '.join(SOURCE_TYPES)})")
    if stype not in SOURCE_TYPES:
        raise ScenarioError(f"[source] type must be one of {', '.join(repr(s) for s in SOURCE_TYPES)}, "
                            f"got {stype!r}")
    required, optional = _SOURCE_KEYS[stype]
    allowed = ("type", *_ENERGY_KEYS, *required, *optional)
    for k in t:
        if k not in allowed:
            other = [s for s, (r, o) in _SOURCE_KEYS.items() if k in r or k in o]
            why = f"does not apply to type {stype!r}" if other else "is unknown"
            raise ScenarioError(f"[source] key {k!r} {why} (valid keys for {stype!r}: {', '.join(allowed)})")
    for k in required:
        _require("source", t, k, f" (needed by type {stype!r})")
    if ("energy_keV" in t) == ("spectrum" in t):
        raise ScenarioError("[source] give exactly one of energy_keV (keV) or spectrum (CSV file)")
    energy = _positive("source", "energy_keV", t["energy_keV"]) if "energy_keV" in t else None
    spectrum = _file("source", "spectrum", t["spectrum"], base) if "spectrum" in t else None
    geom: dict[str, Any] = {}
    for k in (*required, *optional):
        if k not in t:
            continue
        v = t[k]
        if k in ("position_mm", "isocentre_mm"):
            geom[k] = _vec3("source", k, v)
        elif k in ("direction", "up", "axis"):
            geom[k] = _vec3("source", k, v, nonzero=True)
        elif k == "angles_deg":
            if not isinstance(v, list) or not v:
                raise ScenarioError(f"[source] angles_deg must be a non-empty list of angles (degrees), got {v!r}")
            geom[k] = [_number("source", k, a) for a in v]
        else:
            geom[k] = _positive("source", k, v)
    source = SourceSpec(stype, energy, spectrum, geom)

    # [physics]
    t = _table(data, "physics", required=False)
    _no_unknown("physics", t, _PHYSICS_KEYS)
    compton = t.get("compton", "binding")
    if compton not in COMPTON_MODELS:
        raise ScenarioError(f"[physics] compton must be one of {', '.join(repr(c) for c in COMPTON_MODELS)}, "
                            f"got {compton!r}")
    rayleigh = t.get("rayleigh", True)
    if not isinstance(rayleigh, bool):
        raise ScenarioError(f"[physics] rayleigh must be true or false, got {rayleigh!r}")
    cutoff = _positive("physics", "cutoff_keV", t.get("cutoff_keV", 1.0))
    physics = PhysicsSpec(compton, rayleigh, cutoff)

    # [run]
    t = _table(data, "run")
    _no_unknown("run", t, _RUN_KEYS)
    histories = _integer("run", "histories", _require("run", t, "histories"), 1)
    seed = _integer("run", "seed", _require("run", t, "seed"), 0)
    if seed >= 2**63:
        raise ScenarioError(f"[run] seed must be < 2**63, got {seed}")
    batches = _integer("run", "batches", t.get("batches", DEFAULT_BATCHES), 1)
    if histories % batches:
        raise ScenarioError(f"[run] histories ({histories}) must be a multiple of batches ({batches}); "
                            f"e.g. histories = {max(1, histories // batches) * batches}")
    threads = t.get("threads")
    if threads is not None:
        threads = _integer("run", "threads", threads, 1)
    return Scenario(Path(path).resolve() if path is not None else None, phantom, source, physics,
                    RunSpec(histories, seed, batches, threads))


def read_scenario(path: str | os.PathLike) -> Scenario:
    """Read and validate a scenario TOML file.

    Parameters
    ----------
    path : path
        The ``.toml`` file; relative paths inside it are resolved against its folder.

    Returns
    -------
    Scenario

    Raises
    ------
    ScenarioError
        Missing or unparsable file, or any invalid section / key (see :func:`parse_scenario`).
    """
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"scenario file {str(p)!r} does not exist")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario file {str(p)!r} is not valid TOML: {exc}") from None
    try:
        return parse_scenario(data, p.resolve().parent, p)
    except ScenarioError as exc:
        raise ScenarioError(f"{p.name}: {exc}") from None
