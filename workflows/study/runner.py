"""Geometric sensitivity studies: a study file, a resumable case runner, the analysis.

A study perturbs the geometry of one digital patient on purpose and measures how the
quantities of interest (QoIs) move: the vessel path (``path = "flow"``: pressure drop,
FFR-like ratio, wall shear stress) or the dose path (``path = "dose"``: organ doses,
effective dose). A study file (TOML; YAML with the same sections and keys is read too when
its name ends in ``.yaml``)::

    [study]
    name = "radius sensitivity"
    question = "Can a 0.1 mm segmentation error flip the FFR decision?"   # context of use
    path = "flow"                          # flow | dose
    outputs = ["pressure_drop_Pa", "ffr_like"]   # flow: pressure_drop_Pa, pressure_drop_mmHg,
                                           # ffr_like, wss_mean_Pa, wss_max_Pa; dose:
                                           # "organ_dose_mGy.<organ>", effective_dose_mSv, ctdivol_mGy
    [base]                                 # flow: the patient (or image) and the flow settings
    synthetic = "straight"                 # straight | curved | bifurcation, or image = "cta.nii.gz"
    stenosis = 0.5                         # synthetic patients only (area reduction)
    size = "small"                         # small | medium | large
    flow_rate_ml_s = 1.0
    model = "stokes"                       # stokes | navier-stokes
    cells_per_radius = 4.0
    smoothing_method = "taubin"            # taubin (non-shrinking) | laplacian (shrinks)
    # local_centre_xyz_mm = [x, y, z]      # centre of local_offset_mm (default: the synthetic stenosis)
    # local_radius_mm = 3.0; noise_correlation_mm = 2.0
    # dose: age, sex, voxel_mm, protocol, histories, seed, organs, ... (workflows/study/dose_cases.py)
    [parameters.boundary_offset_mm]        # one table per perturbation parameter
    low = -0.1                             # uniform on [low, high] ...
    high = 0.1
    nominal = 0.0                          # the base case (default 0, or the base setting)
    # distribution = "normal"; sd = 0.05  # ... or normal(nominal, sd)
    origin = "inter-observer lumen-boundary variability in coronary CTA, about 0.1 mm"
    [design]
    type = "sobol"                         # oat | morris | sobol | montecarlo
    n = 8                                  # Sobol base samples (power of 2), Morris trajectories, MC samples
    levels = 3                             # OAT points per parameter (ends included); Morris grid levels
    seed = 1                               # sampling, boundary-noise realisations
    oat = true                             # sampled designs also sweep each input alone (tornado data)
    [decision]
    ffr_threshold = 0.80                   # FFR-like < threshold: haemodynamically significant
    dose_change = 0.10                     # an organ dose moving by more than this fraction
    [numerics]
    mesh_cells_per_radius = [6.0]          # flow: nominal case re-run on these meshes (mesh convergence)
    [run]
    workers = 1                            # cases run in parallel (processes)

A parameter with named choices (the dose path's ``organ_labels`` on a patient's CT:
``[parameters.organ_labels] values = ["atlas", "atlas-multi"]``, nominal ``given``) takes
``values``, ``nominal`` and ``origin`` only and can be varied one at a time only (``[design]
type = "oat"``); its analysis (``categories``) is each choice's output against the nominal.

The older single-parameter form ``[design] parameter = "boundary_offset_mm"`` with
``values = [...]`` (an OAT sweep of those values) is still read.

Flow parameters (:data:`FLOW_PARAMETERS`) map onto :class:`workflows.flow.vessel_flow.VesselFlowConfig`;
dose parameters are :data:`workflows.study.dose_cases.DOSE_PARAMETERS` (a stylised phantom) or
:data:`workflows.study.ct_cases.CT_PARAMETERS` (``[base] ct = ...``, a patient's CT).

Cases. :func:`plan_cases` lists every case explicitly: the nominal case (``case_000``), the
one-at-a-time sweeps, the sampled rows, and the numerical checks (mesh refinements of the
nominal case). The plan is written to ``OUT/plan.json``; each case runs in
``OUT/cases/<id>`` and is finished when its ``results.json`` exists (written last and
atomically), so a rerun skips finished cases and a killed study loses at most the cases in
flight. ``digipat study run STUDY --out OUT --cases case_003,case_004 --no-analysis`` runs
only those cases, which is how a batch system (one array task per case) can share the
work; a final ``digipat study run`` without ``--cases`` then analyses.

Outputs: ``OUT/study.json`` (schema 2.0: cases, analysis per QoI -- elasticity, tornado,
Sobol or Morris indices, output distribution, decision-flip probability -- and numerical
uncertainty kept apart), ``OUT/report.html`` and ``OUT/report.pdf``.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from workflows.common import hash_file, hash_params, provenance, write_json_atomic
from workflows.toml_checks import Checks
from workflows.flow.vessel_flow import VesselFlowConfig, run_vessel_flow
from workflows.study import analysis as sa
from workflows.study import figures as sf
from workflows.study.analysis import sample_design
from workflows.study.dose_cases import dose_parameters
from workflows.study.dose_cases import parse_dose_base
from workflows.study.dose_cases import prepare_dose_base
from workflows.study.dose_cases import run_dose_case
from workflows.study.report import write_report

__all__ = ["StudyError", "read_study", "parse_study", "plan_cases", "run_study", "FLOW_PARAMETERS",
           "FLOW_OUTPUTS"]

SCHEMA_VERSION = "2.0"
DESIGNS = ("oat", "morris", "sobol", "montecarlo")
PATHS = ("flow", "dose")
SYNTHETIC = ("straight", "curved", "bifurcation")
FLOW_OUTPUTS = ("pressure_drop_Pa", "pressure_drop_mmHg", "ffr_like", "wss_mean_Pa", "wss_max_Pa")

#: Flow-path perturbations: name -> VesselFlowConfig field, unit, nominal, description.
FLOW_PARAMETERS: dict[str, dict[str, Any]] = {
    "boundary_offset_mm": {"field": "boundary_offset_mm", "unit": "mm", "nominal": 0.0,
                           "description": "uniform offset of the lumen wall along its normals"},
    "threshold_shift_hu": {"field": "threshold_shift_hu", "unit": "HU", "nominal": 0.0,
                           "description": "shift of the segmentation threshold / surface iso-level"},
    "smoothing_iterations": {"field": "smoothing_iterations", "unit": "", "nominal": 20, "integer": True,
                             "minimum": 0, "description": "surface smoothing iterations ([base] smoothing_method: "
                                                          "laplacian shrinks, taubin does not)"},
    "boundary_noise_mm": {"field": "boundary_noise_mm", "unit": "mm", "nominal": 0.0, "minimum": 0.0,
                          "description": "amplitude of spatially correlated boundary noise (seeded per case)"},
    "local_offset_mm": {"field": "local_offset_mm", "unit": "mm", "nominal": 0.0,
                        "description": "wall offset at the stenosis only (blended to zero outside)"},
    "resample_voxel_mm": {"field": "resample_voxel_mm", "unit": "mm", "nominal": 0.0, "minimum": 0.0,
                          "description": "segmentation resampled to this voxel size (0: original grid)"},
    "probability_level": {"field": "probability_level", "unit": "", "nominal": 0.5, "minimum": 0.0,
                          "description": "level of the U-Net's lumen probability taken as the wall: the model's "
                                         "own segmentation uncertainty (needs [base] segmentation = \"unet\")"},
    "probability_sample_mm": {"field": "probability_sample_mm", "unit": "mm", "nominal": 0.0, "minimum": 0.0,
                              "description": "correlation length of a random wall drawn from the U-Net's lumen "
                                             "probability (each voxel lumen with its probability; seeded per case; "
                                             "0: no sample; needs [base] segmentation = \"unet\")"},
}


class StudyError(ValueError):
    """An invalid study file (the message names the section and key)."""


_C = Checks(StudyError)


# ----------------------------------------------------------------------------- reading
def read_study(path: str | os.PathLike) -> dict:
    """Read and validate a study file (TOML, or YAML with the same sections and keys when the
    name ends in .yaml/.yml); returns a plain dict with resolved paths."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        if not p.is_file():
            raise StudyError(f"study file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise StudyError(f"study file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise StudyError(f"study file {str(p)!r} must hold a mapping of sections (study:, base:, ...)")
        return parse_study(data, p.resolve().parent)
    data, p = _C.load(path, "study file")
    return parse_study(data, p.resolve().parent)


def _dose_parameters(base: Mapping) -> dict:

    return dose_parameters(base)


def _parse_flow_base(b: Mapping, base_dir: Path) -> dict:
    _C.no_unknown("base", b, ("synthetic", "image", "stenosis", "size", "flow_rate_ml_s", "model", "seed",
                              "cells_per_radius", "local_centre_xyz_mm", "local_radius_mm",
                              "noise_correlation_mm", "smoothing_method", "segmentation"))
    if ("synthetic" in b) == ("image" in b):
        raise StudyError("[base] give exactly one of synthetic = \"straight\" (built-in patient) or image = PATH")
    base: dict[str, Any] = {"flow_rate_ml_s": _C.positive("base", "flow_rate_ml_s", b.get("flow_rate_ml_s", 1.0)),
                            "model": b.get("model", "stokes"),
                            "cells_per_radius": _C.positive("base", "cells_per_radius",
                                                            b.get("cells_per_radius", 4.0)),
                            "local_radius_mm": _C.positive("base", "local_radius_mm", b.get("local_radius_mm", 3.0)),
                            "noise_correlation_mm": _C.positive("base", "noise_correlation_mm",
                                                                b.get("noise_correlation_mm", 2.0))}
    if base["model"] not in ("stokes", "navier-stokes"):
        raise StudyError(f"[base] model must be 'stokes' or 'navier-stokes', got {base['model']!r}")
    if "segmentation" in b:  # (absent by default, so earlier studies keep their case keys)
        base["segmentation"] = b["segmentation"]
        if base["segmentation"] not in ("auto", "otsu", "region-grow", "unet"):
            raise StudyError(f"[base] segmentation must be 'auto', 'otsu', 'region-grow' or 'unet', "
                             f"got {base['segmentation']!r}")
    base["smoothing_method"] = b.get("smoothing_method", "taubin")
    if base["smoothing_method"] not in ("taubin", "laplacian"):
        raise StudyError(f"[base] smoothing_method must be 'taubin' (non-shrinking) or 'laplacian' (shrinks), "
                         f"got {base['smoothing_method']!r}")
    if "local_centre_xyz_mm" in b:
        c = b["local_centre_xyz_mm"]
        if not isinstance(c, list) or len(c) != 3:
            raise StudyError(f"[base] local_centre_xyz_mm must be [x, y, z] in mm, got {c!r}")
        base["local_centre_xyz_mm"] = [_C.number("base", "local_centre_xyz_mm", v) for v in c]
    if "synthetic" in b:
        if b["synthetic"] not in SYNTHETIC:
            raise StudyError(f"[base] synthetic must be one of {SYNTHETIC}, got {b['synthetic']!r}")
        base.update(synthetic=b["synthetic"], stenosis=_C.non_negative("base", "stenosis", b.get("stenosis", 0.0)),
                    size=b.get("size", "small"), seed=_C.integer("base", "seed", b.get("seed", 0), 0))
        if base["size"] not in ("small", "medium", "large"):
            raise StudyError(f"[base] size must be small, medium or large, got {base['size']!r}")
        if base["stenosis"] >= 0.95:
            raise StudyError(f"[base] stenosis must be < 0.95 (area reduction), got {base['stenosis']!r}")
    else:
        img = Path(b["image"])
        img = img if img.is_absolute() else base_dir / img
        if not img.exists():
            raise StudyError(f"[base] image {str(img)!r} does not exist")
        base["image"] = str(img)
    return base


def _parse_parameter(name: str, t: Any, known: Mapping[str, dict], base: dict) -> dict:
    sec = f"parameters.{name}"
    if name not in known:
        raise StudyError(f"[parameters] unknown parameter {name!r} for this path (known: {', '.join(known)})")
    if not isinstance(t, Mapping):
        raise StudyError(f"[{sec}] must be a table (low = ..., high = ..., origin = \"...\")")
    info = known[name]
    if info.get("categorical"):
        return _parse_categorical(name, t, info)
    _C.no_unknown(sec, t, ("low", "high", "nominal", "distribution", "sd", "origin", "values"))
    nominal_default = base.get(name, info.get("nominal", 0.0))
    p: dict[str, Any] = {"name": name, "unit": info.get("unit", ""), "description": info.get("description", ""),
                         "nominal": _C.number(sec, "nominal", t.get("nominal", nominal_default)),
                         "distribution": t.get("distribution", "uniform"),
                         "origin": str(t.get("origin", "not stated (give origin = \"...\" in the study file)"))}
    if p["distribution"] not in ("uniform", "normal"):
        raise StudyError(f"[{sec}] distribution must be 'uniform' or 'normal', got {p['distribution']!r}")
    if p["distribution"] == "normal":
        p["mean"] = p["nominal"]
        p["sd"] = _C.positive(sec, "sd", _C.require(sec, t, "sd", " (the standard deviation of the normal input)"))
        p["low"] = _C.number(sec, "low", t.get("low", p["mean"] - 2 * p["sd"]))
        p["high"] = _C.number(sec, "high", t.get("high", p["mean"] + 2 * p["sd"]))
    elif "values" in t and "low" not in t:
        vals = t["values"]
        if not isinstance(vals, list) or not vals:
            raise StudyError(f"[{sec}] values must be a non-empty list of numbers")
        vals = [_C.number(sec, "values", v) for v in vals]
        p["low"], p["high"] = min(vals + [p["nominal"]]), max(vals + [p["nominal"]])
    else:
        p["low"] = _C.number(sec, "low", _C.require(sec, t, "low", " (lower end of the range)"))
        p["high"] = _C.number(sec, "high", _C.require(sec, t, "high", " (upper end of the range)"))
    if not p["low"] < p["high"]:
        raise StudyError(f"[{sec}] low must be below high, got low = {p['low']!r}, high = {p['high']!r}")
    if p["distribution"] == "uniform" and not p["low"] <= p["nominal"] <= p["high"]:
        raise StudyError(f"[{sec}] nominal = {p['nominal']!r} lies outside [low, high] = "
                         f"[{p['low']!r}, {p['high']!r}]")
    lo_bound = info.get("minimum")
    if lo_bound is not None and p["distribution"] == "normal" and p["mean"] - 4 * p["sd"] < lo_bound:
        raise StudyError(f"[{sec}] a normal distribution with mean {p['mean']:g} and sd {p['sd']:g} reaches below "
                         f"{lo_bound:g}, the smallest valid {name}: use a uniform range (low, high)")
    if lo_bound is not None and p["low"] < lo_bound:
        raise StudyError(f"[{sec}] low must be >= {lo_bound} for {name}, got {p['low']!r}")
    hi_bound = info.get("maximum")
    if hi_bound is not None and p["high"] > hi_bound:
        raise StudyError(f"[{sec}] high must be <= {hi_bound} for {name}, got {p['high']!r}")
    if "values" in t:
        vals = t["values"]
        if not isinstance(vals, list) or len(vals) < 1:
            raise StudyError(f"[{sec}] values must be a non-empty list of numbers")
        p["values"] = [_C.number(sec, "values", v) for v in vals]
        if len(set(p["values"])) != len(p["values"]):
            raise StudyError(f"[{sec}] values must be distinct, got {p['values']!r}")
        bad = [v for v in p["values"] if (lo_bound is not None and v < lo_bound)
               or (hi_bound is not None and v > hi_bound)]
        if bad:
            raise StudyError(f"[{sec}] values {bad} lie outside the valid range of {name} "
                             f"([{lo_bound}, {hi_bound}])")
    if info.get("integer"):
        p["integer"] = True
    return p


def _parse_categorical(name: str, t: Mapping, info: Mapping) -> dict:
    """A parameter with named choices (e.g. ``organ_labels``): ``values`` (choices to run
    beside the nominal), ``nominal``, ``origin``; it can only be swept one at a time."""
    sec = f"parameters.{name}"
    _C.no_unknown(sec, t, ("values", "nominal", "origin"))
    choices = list(info["choices"])
    nominal = t.get("nominal", info.get("nominal"))
    if nominal not in choices:
        raise StudyError(f"[{sec}] nominal must be one of {choices}, got {nominal!r}")
    vals = _C.require(sec, t, "values", f" (a list of choices among {choices})")
    if not isinstance(vals, list) or not vals or not all(isinstance(v, str) for v in vals):
        raise StudyError(f"[{sec}] values must be a non-empty list of choices among {choices}, got {vals!r}")
    bad = [v for v in vals if v not in choices]
    if bad:
        raise StudyError(f"[{sec}] values: {bad[0]!r} is not a choice of {name} (choices: {', '.join(choices)})")
    if len(set(vals)) != len(vals):
        raise StudyError(f"[{sec}] values must be distinct, got {vals!r}")
    return {"name": name, "unit": "", "description": info.get("description", ""), "categorical": True,
            "choices": choices, "nominal": nominal, "values": list(vals), "distribution": "categorical",
            "origin": str(t.get("origin", "not stated (give origin = \"...\" in the study file)"))}


def _categorical(p: Mapping) -> bool:
    return bool(p.get("categorical"))


def _fmt_value(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:g}"


def parse_study(data: Mapping[str, Any], base_dir: Path) -> dict:
    """Validate a parsed study (see the module docstring); every error names its key."""
    sections = ("study", "base", "parameters", "design", "decision", "numerics", "run")
    for sec in data:
        if sec not in sections:
            raise StudyError(f"unknown section [{sec}] (sections: {', '.join(sections)})")
    st = _C.table(data, "study")
    _C.no_unknown("study", st, ("name", "output", "outputs", "path", "question"))
    path = st.get("path", "flow")
    if path not in PATHS:
        raise StudyError(f"[study] path must be 'flow' or 'dose', got {path!r}")
    if "output" in st and "outputs" in st:
        raise StudyError("[study] give output = \"...\" or outputs = [...], not both")
    outputs = st.get("outputs", [st["output"]] if "output" in st else None)
    b = _C.table(data, "base")
    if path == "flow":
        base = _parse_flow_base(b, base_dir)
        known = FLOW_PARAMETERS
        outputs = outputs or ["pressure_drop_Pa", "ffr_like"]
        if not isinstance(outputs, list) or not outputs:
            raise StudyError("[study] outputs must be a non-empty list")
        for o in outputs:
            if o not in FLOW_OUTPUTS:
                key = "output" if "output" in st else "outputs"
                raise StudyError(f"[study] {key} must be among {', '.join(FLOW_OUTPUTS)}, got {o!r}")
    else:

        base = parse_dose_base(b, base_dir, StudyError)
        known = _dose_parameters(base)
        organs = base.get("organs") or []
        valid = [f"organ_dose_mGy.{o}" for o in organs] + ["effective_dose_mSv", "ctdivol_mGy"]
        outputs = outputs or valid[:-1]
        if not isinstance(outputs, list) or not outputs:
            raise StudyError("[study] outputs must be a non-empty list")
        for o in outputs:
            if o not in valid:
                raise StudyError(f"[study] outputs: {o!r} is not a QoI of this study (valid: {', '.join(valid)}; "
                                 "organ doses need the organ in [base] organs)")
    d = _C.table(data, "design")
    _C.no_unknown("design", d, ("type", "parameter", "values", "n", "levels", "seed", "oat", "bootstrap"))
    kind = d.get("type", "oat")
    if kind not in DESIGNS:
        raise StudyError(f"[design] type must be one of {', '.join(DESIGNS)}, got {kind!r}")
    ptab = data.get("parameters", {})
    if not isinstance(ptab, Mapping):
        raise StudyError("[parameters] must be a table of tables, e.g. [parameters.boundary_offset_mm]")
    params = [_parse_parameter(n, t, known, base) for n, t in ptab.items()]
    for name in ("probability_level", "probability_sample_mm"):
        if path == "flow" and name in ptab and base.get("segmentation") != "unet":
            raise StudyError(f"[parameters.{name}] draws on the U-Net's probability map: set "
                             "[base] segmentation = \"unet\"")
    if path == "flow" and "probability_level" in ptab and "probability_sample_mm" in ptab:
        raise StudyError("[parameters] give probability_level (levels of the U-Net's map) or probability_sample_mm "
                         "(random samples of it), not both")
    if "parameter" in d or "values" in d:  # the single-parameter OAT form
        if params:
            raise StudyError("[design] parameter/values is the short form for one parameter: "
                             "use [parameters.NAME] tables instead when giving several")
        par = d.get("parameter", "boundary_offset_mm")
        if par not in known:
            raise StudyError(f"[design] parameter must be one of {', '.join(known)}, got {par!r}")
        vals = _C.require("design", d, "values", " (a list of numbers, e.g. [-0.1, 0.0, 0.1])")
        if not isinstance(vals, list) or len(vals) < 2:
            raise StudyError(f"[design] values must be a list of at least 2 numbers, got {vals!r}")
        vals = [_C.number("design", "values", v) for v in vals]
        if len(set(vals)) != len(vals):
            raise StudyError(f"[design] values must be distinct, got {vals!r}")
        params = [_parse_parameter(par, {"values": vals, "nominal": min(vals, key=abs)}, known, base)]
    if not params:
        raise StudyError("[parameters] name at least one parameter, e.g. [parameters.boundary_offset_mm] "
                         "low = -0.1, high = 0.1")
    cats = [p["name"] for p in params if _categorical(p)]
    if cats and kind != "oat":
        raise StudyError(f"[parameters.{cats[0]}] has named choices, which only a one-at-a-time design can vary: "
                         f"use [design] type = \"oat\" (got {kind!r})")
    design: dict[str, Any] = {"type": kind, "seed": _C.integer("design", "seed", d.get("seed", 1), 0),
                              "levels": _C.integer("design", "levels", d.get("levels", 3 if kind == "oat" else 4), 2),
                              "bootstrap": _C.integer("design", "bootstrap", d.get("bootstrap", 200), 10),
                              "oat": bool(d.get("oat", True)) if kind != "oat" else True}
    if not isinstance(d.get("oat", True), bool):
        raise StudyError(f"[design] oat must be true or false, got {d.get('oat')!r}")
    if kind != "oat":
        design["n"] = _C.integer("design", "n", _C.require("design", d, "n", " (number of base samples)"), 2)
        if kind == "sobol" and design["n"] & (design["n"] - 1):
            raise StudyError(f"[design] n must be a power of 2 for a Sobol design, got {design['n']}")
        if kind == "morris" and len(params) < 2:
            raise StudyError("[design] a Morris design needs at least 2 parameters (use type = \"oat\" for one)")
    dec = _C.table(data, "decision", required=False)
    _C.no_unknown("decision", dec, ("ffr_threshold", "dose_change"))
    decision = {"ffr_threshold": _C.positive("decision", "ffr_threshold", dec.get("ffr_threshold", 0.80)),
                "dose_change": _C.positive("decision", "dose_change", dec.get("dose_change", 0.10))}
    num = _C.table(data, "numerics", required=False)
    _C.no_unknown("numerics", num, ("mesh_cells_per_radius",))
    mesh_levels = num.get("mesh_cells_per_radius", [])
    if not isinstance(mesh_levels, list):
        raise StudyError(f"[numerics] mesh_cells_per_radius must be a list of numbers, got {mesh_levels!r}")
    mesh_levels = [_C.positive("numerics", "mesh_cells_per_radius", v) for v in mesh_levels]
    if mesh_levels and path != "flow":
        raise StudyError("[numerics] mesh_cells_per_radius applies to flow studies only (a dose study's "
                         "numerical uncertainty is its Monte Carlo σ)")
    r = _C.table(data, "run", required=False)
    _C.no_unknown("run", r, ("workers", "slurm"))
    workers = _C.integer("run", "workers", r.get("workers", 1), 1)
    out = {"name": st.get("name", "study"), "question": st.get("question", ""), "path": path,
           "outputs": list(outputs), "output": outputs[0], "base": base, "parameters": params,
           "design": design, "decision": decision, "numerics": {"mesh_cells_per_radius": mesh_levels},
           "workers": workers}
    if "slurm" in r:  # (absent otherwise: studies without it keep their plan files as they were)
        from workflows.hpc import HPCError, slurm_options

        if not isinstance(r["slurm"], Mapping):
            raise StudyError("[run.slurm] must be a table of sbatch settings (partition, time_min, ...)")
        try:
            slurm_options(r["slurm"])
        except HPCError as exc:
            raise StudyError(str(exc)) from None
        out["slurm"] = dict(r["slurm"])
    return out


# ----------------------------------------------------------------------------- planning
def _oat_values(p: dict, levels: int) -> list:
    if "values" in p:
        return list(p["values"])
    return [float(v) for v in np.linspace(p["low"], p["high"], levels)]


def _clean(p: dict, v: Any) -> float | int | str:
    if _categorical(p):
        return str(v)
    return int(math.floor(v + 0.5)) if p.get("integer") else float(v)


def _same(v: Any, w: Any) -> bool:
    if isinstance(v, str) or isinstance(w, str):
        return v == w
    return abs(v - w) <= 1e-12 * max(1.0, abs(v))


def plan_cases(study: dict) -> list[dict]:
    """The explicit, deterministic list of cases.

    Each case: ``id``, ``group`` (``nominal``, ``oat``, ``sample``, ``numerics``), ``params``
    (every parameter's value), ``varied`` (OAT: the parameter moved), ``row`` (sample: its
    row in the design matrix), ``seed`` (the boundary-noise seed: one per study, from
    ``[design] seed``), ``sample_seed`` (with ``probability_sample_mm`` only: a new draw of the
    U-Net's map per case), and for mesh checks ``cells_per_radius``.
    """
    params = study["parameters"]
    nominal = {p["name"]: _clean(p, p["nominal"]) for p in params}
    dz = study["design"]
    cases: list[dict] = [{"group": "nominal", "params": dict(nominal), "varied": None}]
    if dz["oat"]:
        for p in params:
            # sampled designs sweep each input to its two ends only (tornado data)
            seen = {nominal[p["name"]]}
            for v in _oat_values(p, dz["levels"] if dz["type"] == "oat" else 2):
                v = _clean(p, v)
                if any(_same(v, w) for w in seen):
                    continue  # the nominal point, or a duplicate after rounding
                seen.add(v)
                cases.append({"group": "oat", "params": {**nominal, p["name"]: v}, "varied": p["name"]})
    if dz["type"] != "oat":

        x = sample_design(dz["type"], params, dz["n"], dz["seed"], levels=dz["levels"])
        for i, row in enumerate(x):
            cases.append({"group": "sample", "row": i, "varied": None,
                          "params": {p["name"]: _clean(p, v) for p, v in zip(params, row)}})
    for c in study["numerics"]["mesh_cells_per_radius"]:
        cases.append({"group": "numerics", "params": dict(nominal), "varied": None, "cells_per_radius": c})
    for i, c in enumerate(cases):
        c["id"] = f"case_{i:03d}"
        # one noise realisation for the whole study (common random numbers): the cases are then a
        # deterministic function of their inputs, as the Sobol and Morris estimators assume
        c["seed"] = int(zlib.crc32(f"{dz['seed']}:boundary-noise".encode()))
        if any(p["name"] == "probability_sample_mm" for p in params):
            # a sample of the U-Net's map is the uncertainty itself: a new draw in every case
            c["sample_seed"] = int(zlib.crc32(f"{dz['seed']}:probability-sample:{i}".encode()))
    return cases


# ----------------------------------------------------------------------------- running
def _synthetic_stenosis_centre(info: dict) -> list[float] | None:
    """World point of the synthetic patient's stenosis (its centreline at the stenosis arc length)."""
    gp = info.get("generator_params", {})
    arc = gp.get("derived", {}).get("stenosis_centre_arc_mm")
    cl = info.get("centrelines_xyz_mm")
    if not cl:
        return None
    c = np.asarray(cl[0], float)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(c, axis=0), axis=1))])
    if arc is None:  # no stenosis: the middle of the vessel
        arc = 0.5 * s[-1]
    return [float(np.interp(arc, s, c[:, k])) for k in range(3)]


def _prepare(study: dict, out: Path, say) -> dict:
    """Per-study set-up shared by every case: the synthetic patient, the dose base run."""
    base = study["base"]
    ctx: dict[str, Any] = {}
    if study["path"] == "flow":
        if "synthetic" in base:
            from phantoms.synthetic_patient import write_synthetic_patient

            say("[study] writing the synthetic patient")
            info = write_synthetic_patient(out / "patient", geometry=base["synthetic"], stenosis=base["stenosis"],
                                           size=base["size"], seed=base["seed"])
            ctx.update(image=str(info["image"]), truth=str(info["truth_lumen"]), radius_mm=float(info["radius_mm"]),
                       local_centre_xyz_mm=base.get("local_centre_xyz_mm") or _synthetic_stenosis_centre(info))
        else:
            ctx.update(image=base["image"], truth=None, radius_mm=None,
                       local_centre_xyz_mm=base.get("local_centre_xyz_mm"))
        if any(p["name"] == "local_offset_mm" for p in study["parameters"]) and not ctx["local_centre_xyz_mm"]:
            raise StudyError("[base] local_centre_xyz_mm is needed for local_offset_mm with a user image "
                             "(the world point, in mm, of the region to perturb, e.g. the stenosis)")
        ctx["image_sha256"] = hash_file(ctx["image"])
    else:

        say("[study] preparing the dose base (phantom, CTDI normalisation)")
        ctx["prepared"] = prepare_dose_base(base, out / "dose_base", quiet=True)
    return ctx


def _run_case(study: dict, ctx: dict, case: dict, case_dir: str, threads: int | None) -> dict:
    """Run one case into ``case_dir`` (its results.json is written last)."""
    base = study["base"]
    if study["path"] == "dose":

        b = dict(base)
        if threads:
            b["threads"] = threads
        return run_dose_case(b, case["params"], Path(case_dir), prepared=ctx.get("prepared"), quiet=True,
                             figures=case["group"] == "nominal")

    kw: dict[str, Any] = {}
    for name, v in case["params"].items():
        kw[FLOW_PARAMETERS[name]["field"]] = v
    if kw.get("boundary_noise_mm"):
        kw.update(boundary_noise_seed=case["seed"], boundary_noise_correlation_mm=base["noise_correlation_mm"])
    if kw.get("probability_sample_mm"):
        kw.update(probability_sample_seed=case.get("sample_seed", case["seed"]))
    if kw.get("local_offset_mm"):
        kw.update(local_centre_xyz_mm=tuple(ctx["local_centre_xyz_mm"]), local_radius_mm=base["local_radius_mm"])
    cfg = VesselFlowConfig(flow_rate_ml_s=base["flow_rate_ml_s"], model=base["model"],
                           smoothing_method=base.get("smoothing_method", "taubin"),
                           segmentation_method=base.get("segmentation", "auto"),
                           cells_per_radius=case.get("cells_per_radius", base["cells_per_radius"]),
                           write_fields=case["group"] == "nominal",
                           # (a study has its own numerical uncertainty: the mesh-refinement case)
                           error_estimate="off", **kw)
    return run_vessel_flow(ctx["image"], Path(case_dir), cfg, quiet=True,
                           truth_path=ctx.get("truth") if case["group"] == "nominal" else None)


def _run_case_safe(study: dict, ctx: dict, case: dict, case_dir: str, threads: int | None) -> dict:
    """:func:`_run_case`, recording a user-level failure as the case's result.

    A case that fails with a ``ValueError`` (every digipat input or physics error derives from
    it: an offset that empties an organ, a solve that does not converge, no vessel found)
    gets ``results.json`` = ``{"error": message, "error_type": ...}``: it counts as finished (a
    rerun does not repeat a deterministic failure; ``--retry-failed`` does), its outputs are
    missing, and the analysis counts it (conservatively, in the flip bound) and the report
    lists it. Any other exception is a bug or a broken machine (``TypeError``, ``OSError``,
    ``MemoryError``): it stops the study with its traceback and nothing is recorded, so
    the case runs again once the cause is fixed.
    """
    import traceback

    try:
        return _run_case(study, ctx, case, case_dir, threads)
    except ValueError as exc:
        res = {"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__,
               "traceback_tail": traceback.format_exc().strip().splitlines()[-6:], "params": case["params"]}
        d = Path(case_dir)
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "results.json", res)
        return res


def _cases_hash(study: dict) -> str:
    """Hash of what the cases depend on (not the decision rule, QoI list, bootstrap, texts or
    run settings, so those can change and the finished cases be re-analysed)."""
    base = {k: v for k, v in study["base"].items() if k != "threads"}
    pars = [{k: v for k, v in p.items() if k not in ("origin", "description", "unit")} for p in study["parameters"]]
    design = {k: v for k, v in study["design"].items() if k != "bootstrap"}
    return hash_params({"path": study["path"], "base": base, "parameters": pars, "design": design,
                        "numerics": study["numerics"]})


def _case_record(study: dict, case: dict, res: dict, path: Path) -> dict:
    if study["path"] == "dose":
        q, s = res.get("qoi", {}), res.get("qoi_sigma", {})
        outputs = {k: q.get(k) for k in study["outputs"]}
        sigma = {k: s.get(k) for k in study["outputs"] if s.get(k) is not None}
        pert = res.get("perturbation", {})
    else:
        outputs = {k: res.get(k) for k in study["outputs"]}
        sigma = {}
        pert = {"operators": res.get("perturbation", [])}
        off = res.get("surface", {}).get("report", {}).get("boundary_offset")
        if off:
            pert["boundary_offset"] = off
    rec = {k: case[k] for k in ("id", "group", "params", "varied", "seed", "sample_seed") if k in case}
    for k in ("row", "cells_per_radius"):
        if k in case:
            rec[k] = case[k]
    rec.update(outputs=outputs, sigma=sigma, perturbation=pert, results=str(path), n_dofs=res.get("n_dofs"))
    if "error" in res:
        rec["error"] = res["error"]
    return rec


def _slurm_case(out_dir: str, case_id: str) -> str:
    """One Slurm array task: run one case of the study planned in ``out_dir`` (its plan.json)."""
    plan = json.loads((Path(out_dir) / "plan.json").read_text())
    run_study(plan["study"], out_dir, quiet=True, cases=[case_id], analyse=False, report=False)
    return case_id


def run_study(study: dict | str | os.PathLike, out_dir: str | os.PathLike, *, quiet: bool = False,
              cases: Sequence[str] | None = None, analyse: bool = True, report: bool = True,
              plan_only: bool = False, retry_failed: bool = False, executor: str = "local",
              slurm: Mapping | None = None, wait: bool = True, poll_s: float = 2.0) -> dict:
    """Run (or resume) a study; writes ``OUT/study.json`` (and the report) and returns it.

    ``cases`` restricts the run to those case ids (e.g. one batch-array task); with
    ``analyse=False`` only the cases run and ``plan.json`` is written; ``plan_only`` writes
    ``plan.json`` (and prepares the shared inputs: the synthetic patient, the dose base) and
    returns the case list without running any case. A case that fails (a diverging solver, an
    offset that empties an organ) is recorded as finished with an ``error`` and no outputs,
    so the rest of the study goes on; ``retry_failed`` runs such cases again.

    ``executor="slurm"`` submits the unfinished cases as one Slurm job array (sbatch settings
    from the study's ``[run.slurm]`` table, then ``slurm``: see :mod:`workflows.hpc`), skipping
    cases whose job is still queued or running; it then waits for them (polling every
    ``poll_s`` seconds) and analyses, or with ``wait=False`` returns at once (a later call
    analyses what finished). A case whose job left the queue without a result (cancelled,
    timed out, preempted) is submitted again by the next call; ``OUT/jobs.json`` records
    every submission (``digipat jobs OUT``).
    """
    if not isinstance(study, dict):
        study = read_study(study)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda t: None) if quiet else (lambda t: print(t, flush=True))
    study_hash = _cases_hash(study)
    plan_file = out / "plan.json"
    if plan_file.is_file():  # resume: the stored plan, so results and inputs stay paired
        old = json.loads(plan_file.read_text())
        if old.get("study_sha256") != study_hash:
            raise StudyError(f"{out} holds the cases of a different study (its plan.json differs from this study "
                             "file in the base case, parameters, design or numerics): give another --out, or "
                             "remove that folder to start again")
        plan = old["cases"]
    else:
        plan = plan_cases(study)
        write_json_atomic(plan_file, {"study_sha256": study_hash, "study": study, "cases": plan})
    ids = {c["id"] for c in plan}
    if plan_only:
        _prepare(study, out, say)
        say(f"[study] {len(plan)} cases planned: {plan_file}")
        return {"schema_version": SCHEMA_VERSION, "name": study["name"], "plan": str(plan_file),
                "cases": [{k: c[k] for k in ("id", "group", "params", "varied")} for c in plan]}
    if cases is not None:
        unknown = [c for c in cases if c not in ids]
        if unknown:
            raise StudyError(f"unknown case id(s) {unknown}: the plan has case_000 to case_{len(plan) - 1:03d} "
                             f"(see {plan_file})")
    selected = [c for c in plan if cases is None or c["id"] in cases]

    def finished(c: dict) -> bool:
        f = out / "cases" / c["id"] / "results.json"
        if not f.is_file():
            return False
        return not (retry_failed and "error" in json.loads(f.read_text()))

    todo = [c for c in selected if not finished(c)]
    say(f"[study] {study['name']}: {len(plan)} cases ({study['design']['type']} design), "
        f"{sum(1 for c in plan if finished(c))} already finished")
    if executor not in ("local", "slurm"):
        raise StudyError(f"executor must be 'local' or 'slurm', got {executor!r}")
    ctx = _prepare(study, out, say)
    if executor == "slurm" and todo:
        left = _on_slurm(study, out, todo, slurm, wait, poll_s, say, finished)
        if left is not None:
            return left
        todo = []
    elif todo and cases is None and (out / "jobs.json").is_file():  # a whole local run beside cases on Slurm
        from workflows.hpc import JobBook

        active = JobBook(out / "jobs.json").active()
        if active:
            say(f"[study] {len(active)} case(s) still queued or running on Slurm: left to them")
            todo = [c for c in todo if c["id"] not in active]
            analyse = False
    workers = min(study["workers"], max(1, len(todo)))
    threads = 1 if workers > 1 else None
    done = 0
    tc = time.perf_counter()

    def progress(c: dict, res: dict) -> None:
        nonlocal done
        done += 1
        el = time.perf_counter() - tc
        eta = el / done * (len(todo) - done)
        moved = f"{c['varied']} = {_fmt_value(c['params'][c['varied']])}" if c["varied"] else c["group"]
        state = f"FAILED: {res['error']}" if "error" in res else "done"
        say(f"[study] [{done}/{len(todo)}] {c['id']} {state} ({moved}); {el:.0f} s elapsed, ~{eta:.0f} s left")

    if todo:
        if workers > 1:
            # spawn, not fork: the parent may hold OpenMP threads (Numba, the dose base run)
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
                futs = {ex.submit(_run_case_safe, study, ctx, c, str(out / "cases" / c["id"]), threads): c
                        for c in todo}
                for f in as_completed(futs):
                    progress(futs[f], f.result())
        else:
            for c in todo:
                progress(c, _run_case_safe(study, ctx, c, str(out / "cases" / c["id"]), threads))
    if not analyse or cases is not None and any(
            not (out / "cases" / c["id"] / "results.json").is_file() for c in plan):
        say(f"[study] {len(todo)} case(s) run; analysis waits for all {len(plan)} cases")
        return {"schema_version": SCHEMA_VERSION, "name": study["name"], "plan": str(plan_file),
                "cases_run": [c["id"] for c in todo]}
    summary = analyse_study(study, out, plan, ctx)
    summary["timings_s"] = {"total": time.perf_counter() - t0}
    if report:

        paths = write_report([summary], out, title=f"Sensitivity study: {study['name']}")
        summary["report"] = str(paths["html"])
        if paths.get("pdf"):
            summary["report_pdf"] = str(paths["pdf"])
    write_json_atomic(out / "study.json", summary)
    for q in study["outputs"]:
        a = summary["analysis"].get(q, {})
        if "elasticity" in a:
            e = a["elasticity"]
            say(f"[study] d ln {q} / d ln r = {e['elasticity']:.3f} (95 % CI {e['ci_low']:.3f} to {e['ci_high']:.3f})")
        if "flip" in a and (a["flip"]["n_flipped"] or not q.startswith("organ_dose_mGy.")):
            f = a["flip"]
            failed = f" ({f['n_failed']} failed, counted as flips in the upper limit)" if f.get("n_failed") else ""
            say(f"[study] {q}: decision ({f['rule']}) flips in {f['n_flipped']}/{f['n']} {f['basis']}{failed} "
                f"(p = {f['probability']:.2f}, 95 % CI {f['ci_low']:.2f}-{f['ci_high']:.2f})")
    quiet_organs = [q for q in study["outputs"] if q.startswith("organ_dose_mGy.")
                    and summary["analysis"].get(q, {}).get("flip", {}).get("n_flipped") == 0]
    if quiet_organs:
        say(f"[study] {len(quiet_organs)} organ dose(s) never changed by more than "
            f"{100 * study['decision']['dose_change']:g} % in any case")
    say(f"[study] results: {out / 'study.json'}")
    if "report" in summary:
        say(f"[study] report: {summary['report']}")
    return summary


def _on_slurm(study: dict, out: Path, todo: list[dict], slurm: Mapping | None, wait: bool, poll_s: float, say,
              finished) -> dict | None:
    """Submit ``todo`` (less what is still queued) as a job array and wait for it; returns None
    when every case has its result, else the summary to return (``wait=False``)."""
    from workflows.hpc import HPCError, JobBook, require_slurm, slurm_options, submit_array, wait_for

    try:
        require_slurm()
        options = slurm_options(study.get("slurm"), slurm)
    except HPCError as exc:
        raise StudyError(str(exc)) from None
    book = JobBook(out / "jobs.json")
    active = book.active()
    new = [c["id"] for c in todo if c["id"] not in active]
    if active:
        say(f"[study] {sum(1 for c in todo if c['id'] in active)} case(s) already queued or running on Slurm")
    if new:
        again = sum(1 for i in new if book.latest(i) is not None)
        ids = submit_array(_slurm_case, [(str(out.resolve()), i) for i in new], out.resolve() / "slurm", options,
                           name=f"digipat-{study['name']}"[:60])
        book.add("case", new, ids)
        say(f"[study] submitted {len(new)} case(s) as Slurm job array {ids[0].split('_')[0]}"
            + (f" ({again} again: they had left the queue without a result)" if again else "")
            + f"; status: digipat jobs {out}")
    if not wait:
        return {"schema_version": SCHEMA_VERSION, "name": study["name"], "submitted": new,
                "queued": sorted(set(active) | set(new)), "jobs": str(out / "jobs.json")}
    byid = {c["id"]: c for c in todo}
    lost = wait_for(list(byid), lambda i: finished(byid[i]), book, say, "[study] Slurm: cases", poll_s)
    if lost:
        raise StudyError(f"{len(lost)} case(s) left the Slurm queue without a result (cancelled, timed out or "
                         f"preempted: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}); run the same "
                         f"command again to submit them anew (digipat jobs {out} lists them)")
    return None


# ----------------------------------------------------------------------------- analysis
def _reference_radius(study: dict, ctx: dict, nominal_rec: dict) -> float | None:
    """Equivalent radius of the nominal lumen, √(V / (π L)) with L the arc length of the
    centreline smoothed over 5 points (the voxel skeleton zig-zags: unsmoothed it is ~30 %
    too long; smoothed ~2 % on the demo vessel), else the distance between the first two
    caps; for a synthetic patient its known radius."""
    if ctx.get("radius_mm"):
        return float(ctx["radius_mm"])
    rep = json.loads(Path(nominal_rec["results"]).read_text()).get("surface", {})
    vol = rep.get("report", {}).get("volume_mm3")
    length = None
    sj = Path(nominal_rec["results"]).parent / "surface.json"
    if sj.is_file():
        cl = (json.loads(sj.read_text()).get("centreline") or {}).get("xyz_mm")
        if cl and len(cl) >= 5:
            c = np.asarray(cl, float)
            k = np.ones(5) / 5
            sm = np.stack([np.convolve(np.pad(c[:, i], (2, 2), mode="edge"), k, mode="valid") for i in range(3)], 1)
            length = float(np.linalg.norm(np.diff(sm, axis=0), axis=1).sum())
    if length is None:
        caps = {cp["name"]: cp for cp in rep.get("caps", [])}
        names = sorted(caps)
        if len(names) >= 2:
            length = float(np.linalg.norm(np.asarray(caps[names[0]]["centre_xyz_mm"]) -
                                          np.asarray(caps[names[1]]["centre_xyz_mm"])))
    if not vol or not length:
        return None
    return math.sqrt(vol / (math.pi * length)) - float(nominal_rec["params"].get("boundary_offset_mm", 0.0))


def analyse_study(study: dict, out: Path, plan: list[dict], ctx: dict) -> dict:
    """Assemble study.json (schema 2.0) from the finished cases."""

    recs = []
    for c in plan:
        p = out / "cases" / c["id"] / "results.json"
        recs.append(_case_record(study, c, json.loads(p.read_text()), p))
    nominal = recs[0]
    oat = [r for r in recs if r["group"] == "oat"]
    samples = sorted((r for r in recs if r["group"] == "sample"), key=lambda r: r["row"])
    num = [r for r in recs if r["group"] == "numerics"]
    pars = study["parameters"]
    dz = study["design"]
    independent: list[dict] = []
    if dz["type"] == "montecarlo":
        independent = samples
    elif dz["type"] == "sobol":
        k = len(pars) + 2
        independent = [r for r in samples if r["row"] % k in (0, k - 1)]
    analysis: dict[str, dict] = {}
    r0 = _reference_radius(study, ctx, nominal) if study["path"] == "flow" else None
    for q in study["outputs"]:
        q0 = nominal["outputs"].get(q)
        a: dict[str, Any] = {}
        if q0 is None:
            analysis[q] = {"note": "the nominal case has no value"}
            continue
        sweeps = {p["name"]: [(nominal["params"][p["name"]], q0)] +
                  [(r["params"][p["name"]], r["outputs"][q]) for r in oat if r["varied"] == p["name"]
                   and _ok(r["outputs"].get(q))] for p in pars if not _categorical(p)}
        cats = {p["name"]: _category_changes(nominal, [r for r in oat if r["varied"] == p["name"]], q)
                for p in pars if _categorical(p)}
        if cats:
            a["categories"] = cats
        if oat:
            a["tornado"] = sa.tornado(q0, {k: v for k, v in sweeps.items() if len(v) > 1})
        bo = sweeps.get("boundary_offset_mm", []) if q != "ffr_like" else []  # a ratio near 1: no power law
        if r0 is not None and len(bo) >= 2 and all(_ok(v) and v > 0 for _, v in bo):
            pts = sorted(bo)
            e = sa.elasticity([r0 + d for d, _ in pts], [v for _, v in pts])
            a["elasticity"] = {"parameter": "boundary_offset_mm", "reference_radius_mm": r0, **e}
        ys = [r["outputs"].get(q) for r in samples]
        if samples and not all(_ok(y) for y in ys):
            a["note"] = (f"{sum(not _ok(y) for y in ys)} sampled case(s) have no {q} (failed): no "
                         f"{dz['type']} indices; rerun them with --retry-failed")
        elif samples:
            if dz["type"] == "sobol":
                a["sobol"] = sa.sobol_indices(pars, ys, n_bootstrap=dz["bootstrap"], seed=dz["seed"])
            elif dz["type"] == "morris":
                x = np.array([[r["params"][p["name"]] for p in pars] for r in samples], float)
                a["morris"] = sa.morris_indices(pars, x, ys, levels=dz["levels"], n_bootstrap=dz["bootstrap"],
                                                seed=dz["seed"])
        if independent and any(_ok(r["outputs"].get(q)) for r in independent):
            a["distribution"] = sa.distribution([r["outputs"].get(q) for r in independent])
        # decision flips: over the sampled cases when there are any (a probability under the input
        # distributions), else over the one-at-a-time cases (how many of the swept inputs flip it).
        # A Saltelli design's A_B^i rows reuse columns of A and B: only A and B are independent draws.
        # Failed cases stay in: flip_probability counts them, and as flips in the upper bound.
        basis = independent if independent else oat
        vals = [r["outputs"].get(q) if _ok(r["outputs"].get(q)) else None for r in basis]
        if any(v is not None for v in vals):
            if q == "ffr_like":
                a["flip"] = sa.flip_probability(vals, q0, below=study["decision"]["ffr_threshold"])
            elif q.startswith("organ_dose_mGy.") or q == "effective_dose_mSv":
                s0 = nominal["sigma"].get(q, 0.0)
                sig = [math.hypot(r["sigma"].get(q, 0.0), s0) for r in basis]
                a["flip"] = sa.flip_probability(vals, q0, rel_change=study["decision"]["dose_change"], sigma=sig)
            if "flip" in a:
                a["flip"]["basis"] = "sampled cases" if independent else "one-at-a-time cases"
        analysis[q] = a
    numerical: dict[str, Any] = {}
    if study["path"] == "flow":
        levels = [{"cells_per_radius": study["base"]["cells_per_radius"], "n_dofs": nominal["n_dofs"],
                   "outputs": nominal["outputs"]}] + [
            {"cells_per_radius": r["cells_per_radius"], "n_dofs": r["n_dofs"], "outputs": r["outputs"]} for r in num]
        numerical["mesh_convergence"] = sorted(levels, key=lambda m: m["cells_per_radius"])
        if num:
            numerical["mesh_relative_change"] = {
                q: max(abs(r["outputs"][q] / nominal["outputs"][q] - 1) for r in num)
                for q in study["outputs"] if nominal["outputs"].get(q) and all(r["outputs"].get(q) for r in num)}
        numerical["note"] = ("Mesh convergence: the nominal case re-run on finer/coarser meshes; the relative change "
                             "bounds the discretisation error of each QoI. Every perturbed case is remeshed, so the "
                             "scatter of the one-at-a-time points about a smooth trend (elasticity residual RMS) "
                             "is numerical noise too.")
    else:
        numerical["mc_relative_sigma"] = {q: nominal["sigma"][q] / nominal["outputs"][q]
                                          for q in study["outputs"] if nominal["sigma"].get(q)
                                          and nominal["outputs"].get(q)}
        numerical["note"] = ("Monte Carlo σ of each case (batch statistics). Every case uses the same seed (common "
                             "random numbers), so differences between cases are less noisy than σ suggests; a flip "
                             "is counted beyond noise only when the change clears the threshold by more than 2σ of "
                             "the difference (σ of the two cases added in quadrature).")
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": study["name"], "question": study["question"] or _default_question(study),
        "path": study["path"], "outputs": study["outputs"], "output": study["output"],
        "parameters": pars, "design": dz, "decision": study["decision"], "base": study["base"],
        "nominal": {"id": nominal["id"], "outputs": nominal["outputs"], "sigma": nominal["sigma"]},
        "cases": recs, "analysis": analysis, "numerical": numerical,
        "failed_cases": [{"id": r["id"], "params": r["params"], "error": r["error"]} for r in recs if "error" in r],
        "images": _images(study, out, ctx, nominal), "limitations": _limitations(study),
    }
    # single-output, single-parameter OAT: the keys of study.json 1.0 (kept for scripts)
    e = analysis.get(study["output"], {}).get("elasticity")
    if e:
        summary["elasticity"] = e
        summary["reference_radius_mm"] = e["reference_radius_mm"]
    if len(pars) == 1:
        for r in recs:
            r.update(parameter=pars[0]["name"], value=r["params"][pars[0]["name"]],
                     output=r["outputs"].get(study["output"]))
    seeds = {"design": dz["seed"], "cases": {r["id"]: r["seed"] for r in recs}}
    if "seed" in study["base"]:
        seeds["base"] = study["base"]["seed"]
    inputs = {"study": hash_params(study)}
    if ctx.get("image_sha256"):
        inputs["image"] = ctx["image_sha256"]
    summary["provenance"] = provenance(inputs_sha256=inputs, seeds=seeds)
    return summary


def _category_changes(nominal: dict, recs: list[dict], q: str) -> list[dict]:
    """Output of each choice of a categorical parameter against the nominal case: difference,
    percent change and its Monte Carlo 1σ (the two cases' σ in quadrature; the cases share
    their photons, so this bounds the noise of the difference from above)."""
    q0, s0 = nominal["outputs"].get(q), nominal["sigma"].get(q) or 0.0
    out = []
    for r in recs:
        v, s = r["outputs"].get(q), r["sigma"].get(q) or 0.0
        row: dict[str, Any] = {"value": r["params"][r["varied"]], "case": r["id"], "q": v if _ok(v) else None,
                               "q_nominal": q0}
        if _ok(v) and _ok(q0) and q0:
            row.update(difference=v - q0, change_percent=100.0 * (v / q0 - 1),
                       sigma_percent=100.0 * abs(v / q0) * math.hypot(s / v if v else 0.0, s0 / q0))
        elif "error" in r:
            row["error"] = r["error"]
        out.append(row)
    return out


def _ok(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _default_question(study: dict) -> str:
    names = ", ".join(p["name"] for p in study["parameters"])
    return (f"How much do {', '.join(study['outputs'])} move under segmentation-like perturbations of the "
            f"geometry ({names}) within the stated ranges, and can the clinical decision flip?")


def _limitations(study: dict) -> list[str]:
    common = ["One base patient: the sensitivities hold near this geometry, not for every patient.",
              "Input ranges are stated, not measured here: their origin is given per parameter.",
              "Sampled designs are small (cost): Sobol indices and flip probabilities carry wide intervals."]
    if study["path"] == "flow":
        return common + ["Steady flow, rigid wall, Newtonian blood, a plug/parabolic inflow and zero-pressure "
                         "outlets: FFR-like = (Pa − ΔP)/Pa with a fixed Pa, not a coupled lumped-parameter model."]
    if study["base"].get("kind") == "ct":
        return common + ["A real patient's CT: organ doses are those of ICRP 103 tissues as each label map "
                         "delimits them; a segmentation method is compared with the nominal labels, which are a "
                         "peer's answer, not the truth. Tissues outside the CT are not scored; the Monte Carlo σ "
                         "is the numerical uncertainty of each organ dose."]
    return common + ["Stylised age phantom and a generic CT protocol; the Monte Carlo σ is the numerical "
                     "uncertainty of each organ dose."]


def _images(study: dict, out: Path, ctx: dict, nominal: dict) -> dict:
    """Base-case images for the report (missing ones are left out)."""
    import warnings

    cdir = Path(nominal["results"]).parent
    figs = out / "figures"
    images: dict[str, str] = {}
    figs.mkdir(exist_ok=True)
    jobs = []
    if study["path"] == "flow":
        jobs = [("segmentation_overlay", lambda p: sf.segmentation_overlay_png(
                    ctx["image"], cdir / "segmentation.nii.gz", p, truth_path=ctx.get("truth")),
                 cdir / "segmentation.nii.gz"),
                ("mesh", lambda p: sf.surface_mesh_png(cdir / "surface.stl", p), cdir / "surface.stl"),
                ("pressure_map", lambda p: sf.pressure_map_png(cdir / "fields" / "wall_pressure.npz", p),
                 cdir / "fields" / "wall_pressure.npz")]
    else:
        if (cdir / "dose_map.png").is_file():
            images["dose_map"] = str(cdir / "dose_map.png")
    for name, fn, src in jobs:
        if not Path(src).is_file():
            continue
        try:
            images[name] = str(fn(figs / f"{name}.png"))
        except Exception as exc:  # a figure must never lose a finished study
            warnings.warn(f"study figure {name} failed: {exc}")
    return images
