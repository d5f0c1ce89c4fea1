"""Image → blood flow, stage by stage: the vessel workflow behind ``digipat flow``.

Stages and what each leaves in the output folder (fixed names, so batch scripts can rely
on them):

====================  ==========================================================
stage                 artifacts
====================  ==========================================================
1 segment             ``segmentation.nii.gz`` (lumen mask, same grid as the image)
2 surface             ``surface.stl`` and ``surface.json`` (caps: inlet/outlets)
3 volume mesh         ``mesh/mesh.msh`` (+ ``mesh.xdmf``, ``facets.xdmf``, ``mesh.vtu``,
                      ``mesh_info.json``)
4 flow solve          ``flow.json`` and ``fields/`` (velocity, pressure, WSS for ParaView)
5 results             ``results.json`` (schema below) and ``summary.txt``
====================  ==========================================================

Each finished stage leaves ``stages/<name>.json`` with a hash of its inputs; a rerun with
the same inputs skips it. ``results.json`` is removed when a run starts and written last,
atomically, so a folder holding a ``results.json`` holds a finished, consistent run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workflows._io import (
    SCHEMA_VERSION,
    Progress,
    StageCache,
    hash_file,
    hash_params,
    provenance,
    write_json_atomic,
    write_text_atomic,
)

__all__ = ["VesselFlowConfig", "WorkflowError", "run_vessel_flow", "RESULT_FILE"]

RESULT_FILE = "results.json"
VALID_MODELS = ("stokes", "navier-stokes")
VALID_SOLVERS = ("direct", "iterative")
VALID_METHODS = ("auto", "otsu", "region-grow")


class WorkflowError(ValueError):
    """A workflow input that cannot be used (the message names it and what to do)."""


@dataclass
class VesselFlowConfig:
    """Every parameter of the vessel workflow (units in the names; SI for the physics).

    ``flow_rate_ml_s`` is the inflow (1 ml/s = 1e-6 m³/s; a resting coronary artery carries
    about 1–2 ml/s). ``seed_xyz_mm`` picks the vessel (world point inside the lumen) and
    ``inlet_xyz_mm`` the inlet cap (nearest opening); by default the largest bright
    component crossing the image and its largest opening are used. ``boundary_offset_mm``
    moves the reconstructed wall outwards (> 0) or inwards along its normals, for
    geometric sensitivity studies.
    """

    flow_rate_ml_s: float = 1.0
    seed_xyz_mm: tuple[float, float, float] | None = None
    inlet_xyz_mm: tuple[float, float, float] | None = None
    segmentation_method: str = "auto"
    lower_hu: float | None = None
    upper_hu: float | None = None
    smoothing_iterations: int = 20
    cells_per_radius: float = 4.0
    mesh_order: int = 1
    model: str = "navier-stokes"
    density_kg_m3: float = 1060.0
    viscosity_Pa_s: float = 3.5e-3
    proximal_pressure_Pa: float = 13332.0
    solver: str = "direct"
    newton_max_iterations: int = 25
    petsc_options: dict[str, str] = field(default_factory=dict)
    n_procs: int = 1
    write_fields: bool = True
    boundary_offset_mm: float = 0.0

    def __post_init__(self) -> None:
        def positive(name):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise WorkflowError(f"{name} must be a positive number, got {v!r}")

        for name in ("flow_rate_ml_s", "cells_per_radius", "density_kg_m3", "viscosity_Pa_s",
                     "proximal_pressure_Pa"):
            positive(name)
        if self.model not in VALID_MODELS:
            raise WorkflowError(f"model must be one of {VALID_MODELS}, got {self.model!r}")
        if self.solver not in VALID_SOLVERS:
            raise WorkflowError(f"solver must be one of {VALID_SOLVERS}, got {self.solver!r}")
        if self.segmentation_method not in VALID_METHODS:
            raise WorkflowError(
                f"segmentation_method must be one of {VALID_METHODS}, got {self.segmentation_method!r}"
            )
        if self.mesh_order not in (1, 2):
            raise WorkflowError(f"mesh_order must be 1 or 2, got {self.mesh_order!r}")
        if int(self.newton_max_iterations) < 1:
            raise WorkflowError(f"newton_max_iterations must be >= 1, got {self.newton_max_iterations!r}")
        if not isinstance(self.petsc_options, dict):
            raise WorkflowError(f"petsc_options must be a mapping of option -> value, got {self.petsc_options!r}")
        if int(self.n_procs) < 1:
            raise WorkflowError(f"n_procs must be >= 1, got {self.n_procs!r}")
        if not (isinstance(self.boundary_offset_mm, (int, float)) and np.isfinite(self.boundary_offset_mm)):
            raise WorkflowError(f"boundary_offset_mm must be a finite number (mm), got {self.boundary_offset_mm!r}")
        if self.smoothing_iterations < 0:
            raise WorkflowError(f"smoothing_iterations must be >= 0, got {self.smoothing_iterations}")
        for name in ("seed_xyz_mm", "inlet_xyz_mm"):
            v = getattr(self, name)
            if v is not None:
                arr = np.asarray(v, dtype=float).ravel()
                if arr.shape != (3,) or not np.all(np.isfinite(arr)):
                    raise WorkflowError(f"{name} must be three numbers (x y z in mm), got {v!r}")
                setattr(self, name, tuple(float(a) for a in arr))

    @property
    def flow_rate_m3_s(self) -> float:
        return self.flow_rate_ml_s * 1e-6


# ----------------------------------------------------------------------------- stages
def _segment(image, cfg: VesselFlowConfig, out: Path, truth_path: Path | None) -> dict:
    from pipeline.image import write_image
    from pipeline.segment.classical import segment_lumen

    seed_index = None
    if cfg.seed_xyz_mm is not None:
        idx = np.rint(image.world_to_index(cfg.seed_xyz_mm)).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.asarray(image.shape)):
            raise WorkflowError(
                f"seed point {cfg.seed_xyz_mm} mm lies outside the image (world extent "
                f"{image.index_to_world([0, 0, 0]).round(2).tolist()} to "
                f"{image.index_to_world(np.asarray(image.shape) - 1).round(2).tolist()} mm)"
            )
        seed_index = tuple(int(i) for i in idx)
    seg = segment_lumen(
        image.array.astype(np.float32),
        spacing_mm=image.spacing_mm,
        method=cfg.segmentation_method,
        seed_index_zyx=seed_index,
        lower_hu=cfg.lower_hu,
        upper_hu=cfg.upper_hu,
    )
    write_image(image.with_array(seg.mask.astype(np.uint8)), out / "segmentation.nii.gz")
    record = {
        "level_hu": float(seg.level_hu),
        "lower_hu": float(seg.lower_hu),
        "upper_hu": None if seg.upper_hu is None else float(seg.upper_hu),
        "method": seg.method,
        "lumen_volume_mm3": float(seg.volume_mm3),
        "n_candidate_components": int(seg.n_candidate_components),
    }
    if truth_path is not None:
        from pipeline.image import read_image
        from pipeline.metrics import segmentation_report

        truth = read_image(truth_path)
        if truth.shape != image.shape:
            raise WorkflowError(f"truth mask {truth_path} has shape {truth.shape}, image {image.shape}")
        record["metrics_vs_truth"] = segmentation_report(
            seg.mask, truth.array > 0, spacing_mm=image.spacing_mm
        )
    return record


def _geometry(image, seg_record: dict, cfg: VesselFlowConfig, out: Path) -> dict:
    from pipeline.image import read_image
    from pipeline.surface import make_tagged_surface
    from pipeline.volume_mesh import mesh_volume

    mask = read_image(out / "segmentation.nii.gz")
    inlet = cfg.inlet_xyz_mm if cfg.inlet_xyz_mm is not None else "largest"
    surf = make_tagged_surface(
        mask,
        intensity=image,
        level=seg_record["level_hu"],
        inlet=inlet,
        smoothing_iterations=cfg.smoothing_iterations,
        boundary_offset_mm=float(cfg.boundary_offset_mm),
    )
    surf.write(out / "surface.stl")
    write_json_atomic(out / "surface.json", surf.to_json_dict())
    vm = mesh_volume(surf, out / "mesh", cells_per_radius=cfg.cells_per_radius, order=cfg.mesh_order)
    return {
        "surface": {k: v for k, v in surf.to_json_dict().items() if k != "centreline"},
        "mesh": {"stats": vm.stats, "boundaries": vm.boundaries, "msh": str(vm.msh_path)},
    }


def _flow_problem_dict(cfg: VesselFlowConfig, outlet_tags: list[int]) -> dict:
    return {
        "flow_rate_m3_s": cfg.flow_rate_m3_s,
        "inlet_tag": 2,
        "outlet_tags": list(outlet_tags),
        "wall_tags": [1],
        "model": cfg.model,
        "blood": {"density_kg_m3": cfg.density_kg_m3, "viscosity_Pa_s": cfg.viscosity_Pa_s},
        "proximal_pressure_Pa": cfg.proximal_pressure_Pa,
        "solver": cfg.solver,
        "newton_max_iterations": int(cfg.newton_max_iterations),
        **({"petsc_options": dict(cfg.petsc_options)} if cfg.petsc_options else {}),
    }


def _solve(msh: Path, problem: dict, out: Path, cfg: VesselFlowConfig) -> dict:
    fields_dir = out / "fields" if cfg.write_fields else None
    flow_json = out / "flow.json"
    if cfg.n_procs == 1:
        from workflows._solve_stage import solve_to_json

        solve_to_json(msh, problem, flow_json, fields_dir)
    else:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(cfg.n_procs),
               sys.executable, "-m", "workflows._solve_stage", str(msh), json.dumps(problem),
               str(flow_json)] + ([str(fields_dir)] if fields_dir else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise WorkflowError(
                f"the flow solve under {' '.join(cmd[:3])} failed (exit {proc.returncode}): "
                + " | ".join(tail)
            )
    return json.loads(flow_json.read_text())


# ----------------------------------------------------------------------------- driver
def run_vessel_flow(
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: VesselFlowConfig | None = None,
    *,
    truth_path: str | os.PathLike | None = None,
    quiet: bool = False,
    force: bool = False,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Run image → segmentation → surface → mesh → flow and write ``results.json``.

    Parameters
    ----------
    image_path : path
        3-D CT angiogram (NIfTI, NRRD, MHA or a DICOM series folder), HU values.
    out_dir : path
        Output folder (created). Finished stages found there are reused.
    config : VesselFlowConfig
        Parameters; defaults as documented on the class.
    truth_path : path, optional
        A ground-truth lumen mask on the same grid: Dice and HD95 are then reported.
    quiet, force : bool
        Silence progress lines; recompute every stage.
    extra : dict, optional
        Added to ``results.json`` under ``"patient"`` (e.g. the synthetic patient's truth).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from pipeline.image import read_image

    cfg = config or VesselFlowConfig()
    image = read_image(image_path)  # fails early, before the output folder is touched
    if truth_path is not None and not Path(truth_path).exists():
        raise WorkflowError(f"truth mask not found: {truth_path}")
    image_hash = hash_file(image_path)
    truth_hash = hash_file(truth_path) if truth_path is not None else None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not look like this run's
    cache = StageCache(out, force=force)
    prog = Progress(5, quiet=quiet)
    timings: dict[str, float] = {}
    prog.say(f"image {image_path}: {image.shape[::-1]} voxels (x, y, z), spacing "
             f"{tuple(round(s, 3) for s in image.spacing_mm[::-1])} mm (x, y, z)")

    def timed(name, fn):
        t0 = time.perf_counter()
        r = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        return r

    # 1. segmentation
    seg_keys = ("segmentation_method", "seed_xyz_mm", "lower_hu", "upper_hu")
    seg_key = hash_params(image_hash, truth_hash, {k: getattr(cfg, k) for k in seg_keys})
    seg_rec = cache.done("segment", seg_key, [out / "segmentation.nii.gz"])
    if seg_rec is None:
        cache.invalidate_from(["geometry", "solve"])
        seg_rec = prog.stage("segment lumen", lambda: timed("segment", lambda: _segment(
            image, cfg, out, Path(truth_path) if truth_path else None)))
        cache.record("segment", seg_key, seg_rec)
    else:
        prog.stage("segment lumen", lambda: None, skipped=True)
    seg_rec.pop("key", None)

    # 2 + 3. surface and volume mesh (recomputed together: the surface object feeds gmsh)
    geo_keys = ("inlet_xyz_mm", "smoothing_iterations", "cells_per_radius", "mesh_order")
    geo_params = {k: getattr(cfg, k) for k in geo_keys}
    if cfg.boundary_offset_mm:  # (absent when 0, so caches of earlier runs stay valid)
        geo_params["boundary_offset_mm"] = float(cfg.boundary_offset_mm)
    geo_key = hash_params(seg_key, geo_params)
    msh = out / "mesh" / "mesh.msh"
    geo_rec = cache.done("geometry", geo_key, [msh, out / "surface.stl"])
    if geo_rec is None:
        cache.invalidate_from(["solve"])
        geo_rec = prog.stage("surface + volume mesh", lambda: timed("surface_and_mesh", lambda: _geometry(
            image, seg_rec, cfg, out)))
        cache.record("geometry", geo_key, geo_rec)
        prog.i += 1
    else:
        prog.stage("surface", lambda: None, skipped=True)
        prog.stage("volume mesh", lambda: None, skipped=True)
    geo_rec.pop("key", None)
    outlet_tags = sorted(int(t) for name, t in geo_rec["mesh"]["boundaries"].items()
                         if name.startswith("outlet") and isinstance(t, int))

    # 4. flow
    problem = _flow_problem_dict(cfg, outlet_tags)
    solve_key = hash_params(geo_key, problem, cfg.write_fields)
    flow = cache.done("solve", solve_key, [out / "flow.json"])
    if flow is None:
        flow = prog.stage(f"flow solve ({cfg.model}, {cfg.n_procs} rank(s))",
                          lambda: timed("solve", lambda: _solve(msh, problem, out, cfg)))
        cache.record("solve", solve_key, flow)
    else:
        prog.stage("flow solve", lambda: None, skipped=True)
    flow.pop("key", None)

    # 5. results
    results = _assemble_results(cfg, image_path, image_hash, seg_rec, geo_rec, flow, timings, extra)
    write_json_atomic(out / RESULT_FILE, results)
    write_text_atomic(out / "summary.txt", summary_text(results))
    prog.stage("results", lambda: None)
    prog.say(f"results: {out / RESULT_FILE}")
    return results


def _assemble_results(cfg, image_path, image_hash, seg_rec, geo_rec, flow, timings, extra) -> dict:
    boundaries = geo_rec["mesh"]["boundaries"]
    tag_to_name = {int(v): k for k, v in boundaries.items() if isinstance(v, int)}
    outflow = {tag_to_name.get(int(t), f"tag{t}"): q for t, q in flow["outflow_m3_s"].items()}
    p_out = {tag_to_name.get(int(t), f"tag{t}"): p for t, p in flow["pressure_outlets_Pa"].items()}
    dp_out = {tag_to_name.get(int(t), f"tag{t}"): p for t, p in flow.get("pressure_drops_Pa", {}).items()}
    res = {
        "schema_version": SCHEMA_VERSION,
        "workflow": "vessel_flow",
        "pressure_drop_Pa": flow["pressure_drop_Pa"],
        "pressure_drop_mmHg": flow["pressure_drop_Pa"] / 133.322,
        "pressure_drops_Pa": dp_out,
        "pressure_inlet_Pa": flow["pressure_inlet_Pa"],
        "pressure_outlets_Pa": p_out,
        "ffr_like": flow["ffr_like"],
        "inflow_m3_s": flow["inflow_m3_s"],
        "outflow_m3_s": outflow,
        "mass_balance_rel_error": flow["mass_balance_rel_error"],
        "wss_mean_Pa": flow["wss_mean_Pa"],
        "wss_max_Pa": flow["wss_max_Pa"],
        "max_velocity_m_s": flow["max_velocity_m_s"],
        "reynolds_inlet": flow.get("reynolds_inlet"),
        "n_dofs": flow["n_dofs"],
        "n_cells": flow.get("n_cells"),
        "model": flow.get("model", cfg.model),
        "segmentation": seg_rec,
        "surface": geo_rec["surface"],
        "mesh": geo_rec["mesh"],
        "parameters": asdict(cfg),
        "timings_s": timings,
        "provenance": provenance(image=str(image_path), image_sha256=image_hash),
    }
    truth = seg_rec.get("metrics_vs_truth")
    if truth:  # the headline segmentation numbers, when a truth mask was given
        res["segmentation_dice"] = truth["dice"]
        res["segmentation_hd95_mm"] = truth["hd95_mm"]
    if extra:
        res["patient"] = extra
    return res


def summary_text(r: dict) -> str:
    """A short human-readable summary of a results.json."""
    lines = [
        "digipat vessel flow",
        "===================",
        f"model                 {r['model']}   (blood rho={r['parameters']['density_kg_m3']} kg/m3, "
        f"mu={r['parameters']['viscosity_Pa_s'] * 1e3:.2f} mPa s)",
        f"inflow                {r['inflow_m3_s'] * 1e6:.4g} ml/s   (Re at inlet {r.get('reynolds_inlet') or float('nan'):.0f})",
        f"pressure drop         {r['pressure_drop_Pa']:.2f} Pa = {r['pressure_drop_mmHg']:.3f} mmHg",
        f"FFR-like Pd/Pa        {r['ffr_like']:.4f}   (Pa = {r['parameters']['proximal_pressure_Pa']:.0f} Pa)",
        "outflow               " + ", ".join(f"{k} {v * 1e6:.4g} ml/s" for k, v in r["outflow_m3_s"].items()),
        f"mass balance error    {r['mass_balance_rel_error'] * 100:.3f} %",
        f"wall shear stress     mean {r['wss_mean_Pa']:.3f} Pa, max {r['wss_max_Pa']:.3f} Pa",
        f"max velocity          {r['max_velocity_m_s']:.4f} m/s",
        f"mesh                  {r['mesh']['stats'].get('n_tetrahedra', '?')} tetrahedra, {r['n_dofs']} DOFs",
    ]
    m = r["segmentation"].get("metrics_vs_truth")
    if m:
        lines.append(f"segmentation vs truth Dice {m['dice']:.4f}, HD95 {m['hd95_mm']:.3f} mm")
    p = r.get("patient", {})
    if "poiseuille_dp_healthy_Pa" in p:
        lines.append(f"(healthy tube, Poiseuille: {p['poiseuille_dp_healthy_Pa']:.2f} Pa)")
    lines.append("timings               " + ", ".join(f"{k} {v:.1f} s" for k, v in r["timings_s"].items()))
    return "\n".join(lines) + "\n"
