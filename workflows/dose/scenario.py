"""The dose scenario file: one TOML file that describes a whole photon-transport run.

A scenario names the phantom (an integer label map and a label → material table), the
source, the physics switches and the run settings, so a dose run is reproducible from
one small text file (and can later be sent to a cluster). The contract is the one of
issue 3 ("Interface")::

    [phantom]
    labels = "phantom.nii.gz"       # integer label map; grid from the file
    materials = "materials.csv"     # label_id, tissue_name, density_g_cm3, <element>...
    world_material = 0              # optional: label_id of the medium around the grid (air)
    [source]
    type = "pencil"                 # pencil | parallel | point | ct
    position_mm = [0.0, 0.0, -1.0]  # world (x, y, z) mm
    direction = [0.0, 0.0, 1.0]
    energy_keV = 60.0               # or: spectrum = "spectrum.csv", or: kvp = 120.0
    [physics]
    compton = "binding"             # binding | klein-nishina
    rayleigh = true
    [run]
    histories = 10000000
    seed = 1

Relative paths are resolved against the scenario file's folder.

``[phantom]``: ``labels`` and ``materials`` (required); optional ``world_material``, the
``label_id`` (a row of the materials table, e.g. air) of the medium that fills everything
outside the voxel grid, up to ``world_margin_mm`` (> 0, default 1000 mm; only with
``world_material``) beyond the grid on every side. Default: vacuum outside the grid.

``[source]`` keys per source type:

- ``pencil``: ``position_mm``, ``direction``;
- ``parallel``: ``position_mm`` (centre of the beam rectangle), ``direction``,
  ``width_mm``, ``height_mm``, optional ``up``;
- ``point``: ``position_mm`` (isotropic emission);
- ``ct``: ``source_to_isocentre_mm``, ``fan_width_mm``, ``slice_width_mm`` (full beam
  widths on the isocentre plane), optional ``isocentre_mm`` (default origin), ``axis``
  (default ``[0, 0, 1]``), and the scan (:class:`physics.transport.CTFanBeam`, TG-195
  geometry):

  - ``rotation = "discrete"`` (default) with ``angles_deg`` (default ``[0.0]``): one or
    more projections, each photon at one of the angles;
  - ``rotation = "continuous"``: angle uniform over the scan, with optional
    ``start_angle_deg`` (default 0), ``pitch`` (table feed per rotation / slice width,
    >= 0, default 0 = axial) and at most one of ``arc_deg`` (> 0), ``n_rotations``
    (> 0) or ``z_end_mm`` (needs ``pitch`` > 0 and ``z_start_mm``); default one
    rotation. ``z_start_mm`` is the focal spot's axial position at the start (mm along
    ``axis`` from the isocentre; default: the scan is centred on the isocentre);
  - ``[source.bowtie]`` (optional): a bowtie filter (primary-only weights) with
    ``material_id`` (a ``label_id`` of the phantom's materials table) and either
    ``profile`` (CSV with columns ``fan_mm`` or ``fan_angle_deg``, and ``thickness_mm``)
    or the analytic cylinder compensator ``centre_thickness_mm``, ``phantom_radius_mm``,
    ``ratio`` and optional ``max_thickness_mm``
    (:meth:`physics.transport.Bowtie.cylinder_compensator`).

  A helical scan with a bowtie::

    [source]
    type = "ct"
    source_to_isocentre_mm = 600.0
    fan_width_mm = 500.0
    slice_width_mm = 40.0
    rotation = "continuous"
    pitch = 1.0                     # 40 mm table feed per rotation
    z_start_mm = -100.0             # focal spot from z = -100 mm ...
    z_end_mm = 100.0                # ... to +100 mm: 5 rotations
    kvp = 120.0
    [source.bowtie]
    material_id = 20                # a label_id of the materials table, e.g. aluminium
    profile = "bowtie.csv"          # columns fan_mm (or fan_angle_deg), thickness_mm

Every source takes exactly one of ``energy_keV`` (monoenergetic, keV), ``spectrum``
(CSV ``energy_keV, relative_fluence[, bin_low_keV, bin_high_keV]``) or ``kvp`` (a tube
spectrum computed with SpekPy, :func:`physics.transport.spekpy_spectrum`), the last with
optional ``anode_angle_deg`` (default 12) and ``filtration_mm`` (a table of SpekPy filter
material → mm, default ``{Al = 2.5}``)::

    kvp = 120.0
    anode_angle_deg = 12.0
    filtration_mm = {Al = 2.5, Cu = 0.1}

Optional keys: ``[physics] cutoff_keV`` (default 1), ``[physics] fluorescence`` (K-shell
fluorescence photons transported, default true), ``[run] batches`` (default 10;
``histories`` must be a multiple of it) and ``[run] threads``.

This module only reads and checks the file (:func:`read_scenario` → :class:`Scenario`);
:mod:`workflows.dose.run` turns a scenario into an engine run. Every error is a
:class:`ScenarioError` whose message names the section and key, e.g.
``"[source] energy_keV must be > 0, got -60.0"``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workflows.toml_checks import Checks

__all__ = ["ScenarioError", "SOURCE_TYPES", "COMPTON_MODELS", "CT_ROTATIONS", "CT_CONTINUOUS_KEYS",
           "PhantomSpec", "SourceSpec",
           "PhysicsSpec", "RunSpec", "Scenario", "ProtocolScenario", "read_scenario", "parse_scenario",
           "read_dose_scenario", "parse_protocol_scenario", "PROTOCOL_PHANTOM_KEYS", "check_threads"]

SOURCE_TYPES = ("pencil", "parallel", "point", "ct")
COMPTON_MODELS = ("binding", "klein-nishina")
CT_ROTATIONS = ("discrete", "continuous")
DEFAULT_BATCHES = 10
DEFAULT_WORLD_MARGIN_MM = 1000.0
DEFAULT_ANODE_ANGLE_DEG = 12.0
DEFAULT_FILTRATION_MM = {"Al": 2.5}

_SECTIONS = ("phantom", "source", "physics", "run")
#: ``[source] type = "protocol"`` scenarios (a CT protocol on a digital patient, :mod:`workflows.dose.patient`).
PROTOCOL_PHANTOM_KEYS = ("builtin", "sex", "voxel_mm", "labels", "materials", "organs", "isocentre_mm")
_PROTOCOL_SOURCE_KEYS = ("type", "protocol")
_PROTOCOL_RUN_KEYS = ("histories", "ctdi_histories", "seed", "batches", "threads", "coverage_check")
_PHANTOM_KEYS = ("labels", "materials", "world_material", "world_margin_mm")
_PHYSICS_KEYS = ("compton", "rayleigh", "cutoff_keV", "fluorescence")
_RUN_KEYS = ("histories", "seed", "batches", "threads")
_ENERGY_KEYS = ("energy_keV", "spectrum", "kvp")
_KVP_KEYS = ("anode_angle_deg", "filtration_mm")
#: ``[source] type = "ct"`` keys that only apply to ``rotation = "continuous"``.
CT_CONTINUOUS_KEYS = ("start_angle_deg", "arc_deg", "n_rotations", "pitch", "z_start_mm", "z_end_mm")
_BOWTIE_KEYS = ("material_id", "profile", "centre_thickness_mm", "phantom_radius_mm", "ratio", "max_thickness_mm")
_BOWTIE_ANALYTIC = ("centre_thickness_mm", "phantom_radius_mm", "ratio")
#: Geometry keys allowed per source type: (required, optional).
_SOURCE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pencil": (("position_mm", "direction"), ()),
    "parallel": (("position_mm", "direction", "width_mm", "height_mm"), ("up",)),
    "point": (("position_mm",), ()),
    "ct": (("source_to_isocentre_mm", "fan_width_mm", "slice_width_mm"),
           ("angles_deg", "isocentre_mm", "axis", "rotation", *CT_CONTINUOUS_KEYS, "bowtie")),
}


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or invalid (the message names the key)."""


_CHECKS = Checks(ScenarioError)
_number, _positive, _non_negative, _integer = _CHECKS.number, _CHECKS.positive, _CHECKS.non_negative, _CHECKS.integer
_table, _no_unknown, _require = _CHECKS.table, _CHECKS.no_unknown, _CHECKS.require


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class PhantomSpec:
    """``[phantom]``: the label map, the materials table and the medium around the grid.

    Attributes
    ----------
    labels, materials : Path
        Absolute paths of the label map and the materials table.
    world_material : int or None
        ``label_id`` of the material outside the voxel grid (e.g. air); None: vacuum.
    world_margin_mm : float
        How far (mm) the world material extends beyond the grid on every side.
    """

    labels: Path
    materials: Path
    world_material: int | None = None
    world_margin_mm: float = DEFAULT_WORLD_MARGIN_MM


@dataclass(frozen=True)
class SourceSpec:
    """``[source]``: the source type, its geometry (mm, unit-free directions) and energy.

    Attributes
    ----------
    type : {'pencil', 'parallel', 'point', 'ct'}
    energy_keV : float or None
        Monoenergetic photons (keV, > 0); None when ``spectrum`` or ``kvp`` is given.
    spectrum : Path or None
        Spectrum CSV (``energy_keV, relative_fluence[, bin_low_keV, bin_high_keV]``).
    geometry : dict
        The type's geometry keys (see the module docstring), floats / 3-lists of floats;
        for ``ct`` also ``rotation`` (str) and ``bowtie`` (a dict with ``material_id``
        and either ``profile`` (Path) or the analytic parameters).
    kvp : float or None
        Tube potential (kV) of a SpekPy spectrum.
    anode_angle_deg : float or None
        Anode angle (degrees) of the SpekPy spectrum (set when ``kvp`` is).
    filtration_mm : dict or None
        SpekPy filter material → thickness (mm) (set when ``kvp`` is).
    """

    type: str
    energy_keV: float | None = None
    spectrum: Path | None = None
    geometry: Mapping[str, Any] = field(default_factory=dict)
    kvp: float | None = None
    anode_angle_deg: float | None = None
    filtration_mm: Mapping[str, float] | None = None

    @property
    def energy_key(self) -> str:
        """The scenario key that gives the energy: ``energy_keV``, ``spectrum`` or ``kvp``."""
        return "kvp" if self.kvp is not None else "spectrum" if self.spectrum is not None else "energy_keV"


@dataclass(frozen=True)
class PhysicsSpec:
    """``[physics]``: Compton model, Rayleigh on/off, photon cutoff energy (keV)."""

    compton: str = "binding"
    rayleigh: bool = True
    cutoff_keV: float = 1.0
    fluorescence: bool = True


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
        if "bowtie" in src:
            src["bowtie"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in src["bowtie"].items()}
        if self.source.energy_keV is not None:
            src["energy_keV"] = self.source.energy_keV
        elif self.source.spectrum is not None:
            src["spectrum"] = str(self.source.spectrum)
        else:
            src.update(kvp=self.source.kvp, anode_angle_deg=self.source.anode_angle_deg,
                       filtration_mm=dict(self.source.filtration_mm))
        phantom = {"labels": str(self.phantom.labels), "materials": str(self.phantom.materials)}
        if self.phantom.world_material is not None:
            phantom.update(world_material=self.phantom.world_material,
                           world_margin_mm=self.phantom.world_margin_mm)
        return {
            "scenario": str(self.path) if self.path else None,
            "phantom": phantom,
            "source": src,
            "physics": {"compton": self.physics.compton, "rayleigh": self.physics.rayleigh,
                        "cutoff_keV": self.physics.cutoff_keV, "fluorescence": self.physics.fluorescence},
            "run": {"histories": self.run.histories, "seed": self.run.seed, "batches": self.run.batches,
                    "threads": self.run.threads},
        }

    def input_files(self) -> list[Path]:
        """The files the run reads (for hashing / provenance)."""
        files = [self.phantom.labels, self.phantom.materials]
        if self.source.spectrum is not None:
            files.append(self.source.spectrum)
        profile = self.source.geometry.get("bowtie", {}).get("profile")
        if profile is not None:
            files.append(profile)
        return files


# ----------------------------------------------------------------------------- checks


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


def _filtration(v: Any) -> dict[str, float]:
    """``[source] filtration_mm``: a table of filter material → thickness (mm, >= 0)."""
    if not isinstance(v, dict):
        raise ScenarioError(f"[source] filtration_mm must be a table of filter material to thickness in mm, "
                            f"e.g. filtration_mm = {{Al = 2.5, Cu = 0.1}}, got {v!r}")
    return {str(m): _non_negative("source", f"filtration_mm.{m}", x) for m, x in v.items()}


def _bowtie(v: Any, base: Path) -> dict[str, Any]:
    """``[source.bowtie]``: material_id and either a profile CSV or the analytic parameters."""
    sec = "source.bowtie"
    if not isinstance(v, dict):
        raise ScenarioError(f"[source] bowtie must be a table ([source.bowtie]), got {v!r}")
    _no_unknown(sec, v, _BOWTIE_KEYS)
    out: dict[str, Any] = {"material_id": _integer(sec, "material_id", _require(
        sec, v, "material_id", " (the label_id of the filter material in the materials table)"), 0)}
    analytic = [k for k in (*_BOWTIE_ANALYTIC, "max_thickness_mm") if k in v]
    if ("profile" in v) == bool(analytic):
        raise ScenarioError(f"[{sec}] give either profile (CSV file: fan_mm or fan_angle_deg, thickness_mm) or "
                            f"the analytic {', '.join(_BOWTIE_ANALYTIC)}[, max_thickness_mm], not "
                            f"{'both' if analytic else 'neither'}")
    if "profile" in v:
        out["profile"] = _file(sec, "profile", v["profile"], base)
        return out
    for k in _BOWTIE_ANALYTIC:
        _require(sec, v, k, f" (the analytic bowtie needs {', '.join(_BOWTIE_ANALYTIC)})")
    out["centre_thickness_mm"] = _non_negative(sec, "centre_thickness_mm", v["centre_thickness_mm"])
    out["phantom_radius_mm"] = _positive(sec, "phantom_radius_mm", v["phantom_radius_mm"])
    out["ratio"] = _non_negative(sec, "ratio", v["ratio"])
    if "max_thickness_mm" in v:
        out["max_thickness_mm"] = _non_negative(sec, "max_thickness_mm", v["max_thickness_mm"])
    return out


def _geometry(t: Mapping, stype: str, required, optional, base: Path) -> dict[str, Any]:
    """The source type's geometry keys, each checked on its own (the source checks combinations)."""
    rotation = t.get("rotation", "discrete")
    if rotation not in CT_ROTATIONS:
        raise ScenarioError(f"[source] rotation must be one of {', '.join(repr(r) for r in CT_ROTATIONS)}, "
                            f"got {rotation!r}")
    for k in CT_CONTINUOUS_KEYS:
        if k in t and rotation != "continuous":
            raise ScenarioError(f'[source] {k} needs rotation = "continuous" (rotation is {rotation!r}; '
                                f"use angles_deg for discrete projections)")
    if "angles_deg" in t and rotation != "discrete":
        raise ScenarioError('[source] angles_deg applies to rotation = "discrete" only; for rotation = '
                            '"continuous" give start_angle_deg and one of arc_deg, n_rotations or z_end_mm')
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
        elif k == "rotation":
            geom[k] = v
        elif k == "bowtie":
            geom[k] = _bowtie(v, base)
        elif k in ("start_angle_deg", "z_start_mm", "z_end_mm"):
            geom[k] = _number("source", k, v)
        elif k == "pitch":
            geom[k] = _non_negative("source", k, v)
        else:
            geom[k] = _positive("source", k, v)
    return geom


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
    world = t.get("world_material")
    if world is not None:
        world = _integer("phantom", "world_material", world, 0)
    elif "world_margin_mm" in t:
        raise ScenarioError("[phantom] world_margin_mm needs world_material (the label_id of the medium "
                            "outside the grid, e.g. air)")
    margin = _positive("phantom", "world_margin_mm", t.get("world_margin_mm", DEFAULT_WORLD_MARGIN_MM))
    phantom = PhantomSpec(_file("phantom", "labels", _require("phantom", t, "labels"), base),
                          _file("phantom", "materials", _require("phantom", t, "materials"), base),
                          world, margin)

    # [source]
    t = _table(data, "source")
    stype = _require("source", t, "type", f" (one of {', '.join(SOURCE_TYPES)})")
    if stype not in SOURCE_TYPES:
        raise ScenarioError(f"[source] type must be one of {', '.join(repr(s) for s in SOURCE_TYPES)}, "
                            f"got {stype!r}")
    required, optional = _SOURCE_KEYS[stype]
    allowed = ("type", *_ENERGY_KEYS, *_KVP_KEYS, *required, *optional)
    for k in t:
        if k not in allowed:
            other = [s for s, (r, o) in _SOURCE_KEYS.items() if k in r or k in o]
            why = f"does not apply to type {stype!r}" if other else "is unknown"
            raise ScenarioError(f"[source] key {k!r} {why} (valid keys for {stype!r}: {', '.join(allowed)})")
    for k in required:
        _require("source", t, k, f" (needed by type {stype!r})")
    given = [k for k in _ENERGY_KEYS if k in t]
    if len(given) != 1:
        raise ScenarioError("[source] give exactly one of energy_keV (keV), spectrum (CSV file) or kvp "
                            f"(tube potential, kV, for a SpekPy spectrum), got {', '.join(given) or 'none'}")
    energy = _positive("source", "energy_keV", t["energy_keV"]) if "energy_keV" in t else None
    spectrum = _file("source", "spectrum", t["spectrum"], base) if "spectrum" in t else None
    kvp = anode = filtration = None
    if "kvp" in t:
        kvp = _positive("source", "kvp", t["kvp"])
        anode = _positive("source", "anode_angle_deg", t.get("anode_angle_deg", DEFAULT_ANODE_ANGLE_DEG))
        filtration = _filtration(t.get("filtration_mm", DEFAULT_FILTRATION_MM))
    else:
        for k in _KVP_KEYS:
            if k in t:
                raise ScenarioError(f"[source] {k} applies to a SpekPy spectrum only: give kvp, or remove {k}")
    geom = _geometry(t, stype, required, optional, base)
    source = SourceSpec(stype, energy, spectrum, geom, kvp, anode, filtration)

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
    fluorescence = t.get("fluorescence", True)
    if not isinstance(fluorescence, bool):
        raise ScenarioError(f"[physics] fluorescence must be true or false, got {fluorescence!r}")
    physics = PhysicsSpec(compton, rayleigh, cutoff, fluorescence)

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


@dataclass(frozen=True)
class ProtocolScenario:
    """A validated ``[source] type = "protocol"`` scenario: a CT protocol on a digital patient.

    ``phantom`` holds ``builtin``/``sex``/``voxel_mm`` or ``labels``/``materials``/``organs``
    paths; ``protocol`` is the protocol file; ``data`` the parsed TOML (hashed for the cache).
    """

    phantom: dict
    protocol: Path
    physics: dict
    histories: int
    batches: int
    ctdi_histories: int
    seed: int
    threads: int | None
    data: dict = field(default_factory=dict, compare=False)
    coverage_check: bool = False


def _section(data: Mapping, name: str, allowed, required=True) -> dict:
    t = _table(data, name, required)
    _no_unknown(name, t, allowed)
    return dict(t)


def parse_protocol_scenario(data: Mapping[str, Any], base: Path) -> ProtocolScenario:
    """Check a parsed ``[source] type = "protocol"`` scenario (layout: :mod:`workflows.dose.patient`).

    Relative paths are resolved against ``base``. Raises :class:`ScenarioError` naming the key.
    """
    _err = ScenarioError
    _int = _integer
    extra = set(data) - {"phantom", "source", "physics", "run"}
    if extra:
        raise _err(f"unknown section [{sorted(extra)[0]}] (sections: phantom, source, physics, run)")
    ph = _section(data, "phantom", PROTOCOL_PHANTOM_KEYS)
    src = _section(data, "source", _PROTOCOL_SOURCE_KEYS)
    phys = _section(data, "physics", _PHYSICS_KEYS, required=False)
    run = _section(data, "run", _PROTOCOL_RUN_KEYS)
    if "protocol" not in src:
        raise _err("[source] protocol is required with type = \"protocol\" (path to the CT protocol TOML)")
    proto = Path(src["protocol"])
    proto = proto if proto.is_absolute() else base / proto
    if not proto.is_file():
        raise _err(f"[source] protocol {str(proto)!r} does not exist")
    if "builtin" in ph:
        if "labels" in ph or "materials" in ph:
            raise _err("[phantom] give either builtin or labels + materials, not both")
        from phantoms.stylized import SUPPORTED_AGES

        if ph["builtin"] not in SUPPORTED_AGES:
            raise _err(f"[phantom] builtin must be one of {list(SUPPORTED_AGES)}, got {ph['builtin']!r}")
        sex = ph.get("sex", "male")
        if sex not in ("male", "female"):
            raise _err(f"[phantom] sex must be 'male' or 'female', got {sex!r}")
        vox = ph.get("voxel_mm")
        if vox is not None and (isinstance(vox, bool) or not isinstance(vox, (int, float)) or vox <= 0):
            raise _err(f"[phantom] voxel_mm must be a number > 0, got {vox!r}")
        phantom = {"builtin": ph["builtin"], "sex": sex, "voxel_mm": vox}
    else:
        for k in ("labels", "materials"):
            if k not in ph:
                raise _err(f"[phantom] needs builtin = AGE, or labels and materials (missing {k!r})")
        phantom = {}
        for k in ("labels", "materials", "organs"):
            if k in ph:
                p = Path(ph[k])
                p = p if p.is_absolute() else base / p
                if not p.exists():
                    raise _err(f"[phantom] {k} {str(p)!r} does not exist")
                phantom[k] = p
        phantom["sex"] = ph.get("sex", "male")
        if phantom["sex"] not in ("male", "female"):
            raise _err(f"[phantom] sex must be 'male' or 'female', got {phantom['sex']!r}")
    iso = ph.get("isocentre_mm", [0.0, 0.0, 0.0])
    if iso != "body" and not (isinstance(iso, list) and len(iso) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in iso)):
        raise _err(f"[phantom] isocentre_mm must be [x, y, z] in mm (world) or \"body\" (the body's centre in x, y "
                   f"on the scan's middle slice, z = 0), got {iso!r}")
    phantom["isocentre_mm"] = iso if iso == "body" else [float(v) for v in iso]
    if "histories" not in run:
        raise _err("[run] histories is required")
    hist = _int("run", "histories", run["histories"], 1)
    batches = _int("run", "batches", run.get("batches", 10), 1)
    if hist % batches:
        raise _err(f"[run] histories ({hist}) must be a multiple of batches ({batches})")
    ctdi_h = _int("run", "ctdi_histories", run.get("ctdi_histories", hist), 2)
    seed = _int("run", "seed", run.get("seed", 1), 0)
    threads = run.get("threads")
    if threads is not None:
        threads = _int("run", "threads", threads, 1)
    for k in ("rayleigh", "fluorescence"):
        if k in phys and not isinstance(phys[k], bool):
            raise _err(f"[physics] {k} must be true or false, got {phys[k]!r}")
    coverage = run.get("coverage_check", False)
    if not isinstance(coverage, bool):
        raise _err(f"[run] coverage_check must be true or false, got {coverage!r}")
    if coverage and ("builtin" in phantom or "organs" not in phantom):
        raise _err("[run] coverage_check = true estimates what a CT's truncation takes from the organ doses: it needs a "
                   "phantom made from a CT (digipat phantom from-ct) with its organs.json ([phantom] organs)")
    return ProtocolScenario(phantom=phantom, protocol=proto, physics=dict(phys), histories=hist, batches=batches,
                            ctdi_histories=ctdi_h, seed=seed, threads=threads, data=dict(data),
                            coverage_check=coverage)


def check_threads(threads: Any) -> int:
    """``threads`` as an integer >= 1 (a command-line override of ``[run] threads``)."""
    return _integer("run", "threads", threads, 1)


def read_dose_scenario(path: str | os.PathLike) -> Scenario | ProtocolScenario:
    """Read a ``digipat dose`` scenario file once and check it by its ``[source] type``.

    A ``type = "protocol"`` file gives a :class:`ProtocolScenario` (organ doses of a CT scan);
    every other type a :class:`Scenario` (see :func:`read_scenario`).
    """
    def parse(data: dict, folder: Path, p: Path) -> Scenario | ProtocolScenario:
        src = data.get("source")
        if isinstance(src, dict) and src.get("type") == "protocol":
            return parse_protocol_scenario(data, folder)
        return parse_scenario(data, folder, p)

    return _CHECKS.read(path, "scenario file", parse)


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
    return _CHECKS.read(path, "scenario file", parse_scenario)
