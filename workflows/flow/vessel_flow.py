"""Image → blood flow, stage by stage: the vessel workflow behind ``digipat flow``.

Stages and what each leaves in the output folder (fixed names, so batch scripts can rely
on them):

====================  ==========================================================
stage                 artifacts
====================  ==========================================================
1 segment             ``segmentation.nii.gz`` (lumen mask, same grid as the image)
2 surface             ``surface.stl``, ``surface.vtp`` (with face tags) and ``surface.json``
                      (caps: inlet/outlets); with centreline clipping also
                      ``segmentation_model.nii.gz`` (the modelled part of the lumen);
                      ``centerline.vtp`` (centrelines with their radii) and
                      ``check.png`` (three slices: lumen contour, centrelines, caps)
3 volume mesh         ``mesh/mesh.msh`` (+ ``mesh.xdmf``, ``facets.xdmf``, ``mesh.vtu``,
                      ``mesh_info.json``)
4 flow solve          ``flow.json`` and ``fields/`` (velocity, pressure, WSS for ParaView;
                      ``wall_pressure.npz``: wall node ``xyz_mm`` and ``pressure_Pa``)
5 results             ``results.json`` (keys in the README: pressures, flows, the per-outlet
                      ``outlets`` table, the ``centerline`` summary, ...) and ``summary.txt``
====================  ==========================================================

Each finished stage leaves ``stages/<name>.json`` with a hash of its inputs; a rerun with
the same inputs skips it. ``results.json`` is removed when a run starts and written last,
atomically, so a folder holding a ``results.json`` holds a finished, consistent run.

Geometric perturbations (sensitivity studies)
---------------------------------------------
Between the segmentation and the surface, the operators of :mod:`pipeline.perturb` can
change the lumen in a controlled way, always in this order (each is off at its default):

1. ``threshold_shift_hu``: the segmentation threshold *and* the surface iso-level move by
   this many HU (the mask is re-thresholded within 3 voxels of the segmentation, keeping the
   parts connected to it). The surface is still the image's own iso-surface, so the move is
   sub-voxel; for a Gaussian-blurred edge of width ``sigma`` and height ``dI`` it lies
   ``sigma * Phi^-1(1/2 + shift / dI)`` inside the half-maximum wall. The blur correction
   keeps measuring the edge from the unshifted half-maximum level.
2. ``resample_voxel_mm``: the mask is resampled to this isotropic voxel size
   (:func:`pipeline.perturb.resample_coarse`) and the CT image is averaged onto the same
   coarse voxels (exact overlap volumes: what a scan with bigger voxels records); the surface
   is the iso-surface of the coarse image near the coarse mask. The surface method is thus
   the same as without resampling, so only the voxel size changes (a voxel size equal to the
   image's gives nearly the unperturbed surface).
3. ``boundary_noise_mm``: spatially correlated random displacement of the wall
   (:func:`pipeline.perturb.correlated_noise_boundary`; RMS amplitude, correlation length,
   seed).
4. ``local_offset_mm``: the wall moves by this much inside a sphere (``local_centre_xyz_mm``,
   ``local_radius_mm``), blended to zero over ``local_blend_mm`` outside it
   (:func:`pipeline.perturb.local_offset`), e.g. a narrower stenosis.
5. ``boundary_offset_mm``: the uniform offset of the whole wall, applied last, on the surface.

Operators 3 and 4 are signed-distance operators. Their displacement field (mm, along the
outward normal) is ``phi - sdf_mm``, the signed distance of the mask before the operator
minus the operator's :attr:`~pipeline.perturb.Perturbation.sdf_mm`; the surface stage moves
each vertex of the sub-voxel image iso-surface along its normal by that field
(``make_tagged_surface(normal_displacement_mm=...)``). So a 0.05 mm local offset moves the
wall by 0.05 mm, not by zero or a whole voxel, an amplitude of zero gives exactly the
unperturbed surface, and the mesh sizing (from the unperturbed mask's centreline) does not
jump between nearby cases. The perturbed voxel mask is written to
``segmentation_perturbed.nii.gz`` for inspection; ``smoothing_method = "laplacian"`` swaps the
surface's non-shrinking Taubin filter for the shrinking Laplacian one. Each operator's report
(volume change, equivalent mean radius change, surface distances to the original; see
:mod:`pipeline.perturb`) goes into ``results.json["perturbation"]`` (empty when none).
Perturbation parameters enter the geometry stage's cache key only when they are active, so
the caches of unperturbed runs stay valid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from workflows.common import (
    HASH_KEY,
    SCHEMA_VERSION,
    Progress,
    StageCache,
    hash_file,
    hash_params,
    provenance,
    write_json_atomic,
    write_text_atomic,
)

__all__ = ["VesselFlowConfig", "WorkflowError", "SurfaceInputs", "perturb_segmentation", "build_surface",
           "clip_plan", "even_contrast", "outlet_fractions",
           "run_vessel_flow", "RESULT_FILE"]

RESULT_FILE = "results.json"
VALID_MODELS = ("stokes", "navier-stokes")
#: ``VesselFlowConfig.error_estimate``: the second mesh is coarser, finer, or there is none.
ERROR_ESTIMATES = ("coarse", "refine", "off")
VALID_SOLVERS = ("direct", "iterative")
VALID_METHODS = ("auto", "otsu", "region-grow", "unet")
VALID_MODALITIES = ("auto", "ct", "mr")
#: Where the model's ends are cut: at image faces, perpendicular to the centreline, or chosen.
VALID_CLIPS = ("auto", "faces", "centreline", "tracked")
#: Surface smoothing filters (``pipeline.surface.SMOOTHING_METHODS``); the first is the default.
VALID_SMOOTHING_METHODS = ("taubin", "laplacian")
#: Face dilation (voxels) of the segmentation within which a threshold shift may move the wall.
_THRESHOLD_REACH_VOXELS = 3


class WorkflowError(ValueError):
    """A workflow input that cannot be used (the message names it and what to do)."""


@dataclass
class VesselFlowConfig:
    """Every parameter of the vessel workflow (units in the names; SI for the physics).

    ``flow_rate_ml_s`` is the inflow (1 ml/s = 1e-6 m³/s; a resting coronary artery carries
    about 1–2 ml/s). ``seed_xyz_mm`` picks the vessel (world point inside the lumen); by
    default the largest bright component crossing the image is used. ``clip`` says where the
    ends are cut: ``"faces"`` (image-face crops: ``inlet_xyz_mm`` picks the nearest opening,
    default the largest), ``"centreline"`` (perpendicular to the centreline: ``inlet_xyz_mm``
    and ``outlets_xyz_mm`` are the cut points, default the widest end and the other ends,
    branches thinner than ``min_branch_radius_mm`` closed), ``"tracked"`` (the vessel through
    ``seed_xyz_mm``, or the most tube-like wide vessel when no seed is given, is followed both
    ways and its ends found, see :func:`pipeline.centreline.track_vessel_ends`) or ``"auto"``
    (centreline when the lumen reaches fewer than two image faces or outlets are named; image
    faces for one cropped vessel, "tracked" when the lumen has tunnels (a real scan's lumen
    that touches other vessels or runs into the heart) or the image-face model fails). ``outlet_flow_split`` is
    ``"traction"`` (zero-traction outlets), ``"murray"`` (Q ~ r^3 of the caps) or one fraction
    per outlet (outlet1, the largest, first). ``segmentation_method="unet"`` segments with the
    U-Net in ``unet_model`` (a folder made by ``digipat segment train``; None: the shipped vessel
    model); ``probability_level`` then takes the wall at that level of the network's lumen
    probability instead of the image's half-maximum (the model's own uncertainty as a
    perturbation: a study parameter); ``probability_sample_mm`` > 0 instead draws a random
    wall from that map, spatially correlated over that length and seeded by
    ``probability_sample_seed`` (each voxel lumen with its probability, see
    :func:`pipeline.perturb.probability_sample`). ``flow_extension_radii`` adds a straight, circular
    tube that many cap radii long to every opening (0: none; VaMPy uses 5): the caps, and so the
    pressure drop and the outlet pressures, are then at the tubes' ends. ``boundary_offset_mm``
    moves the reconstructed wall outwards (> 0) or inwards along its normals, for
    geometric sensitivity studies. ``mesh_jet_spread`` (Navier–Stokes only; 0 = off) keeps the
    element size of a narrowing along its jet downstream, the sizing radius widening from the
    throat's by that much per unit length (see :func:`pipeline.volume_mesh.jet_sizing_radius`).
    ``error_estimate`` is the numerical error of ΔP in ``results.json`` ``numerical_error``:
    ``"coarse"`` (default) also solves on the same surface meshed ``RICHARDSON_RATIO`` times
    coarser (about 0.3 times the cells) and extrapolates from the two (Richardson), so the
    estimate is of the run's own ΔP; ``"refine"`` (``True``) solves 1.5 times finer instead
    (several times the run's cost); ``"off"`` (``False``) skips it.

    Geometric perturbations (all off by default; applied in this order, see the module
    docstring): ``threshold_shift_hu`` (HU added to the segmentation threshold and surface
    iso-level); ``resample_voxel_mm`` (0 = off, else the isotropic voxel size in mm the mask
    is resampled to); ``boundary_noise_mm`` (RMS amplitude of correlated wall noise, mm; 0 =
    off) with ``boundary_noise_correlation_mm`` and ``boundary_noise_seed``;
    ``local_offset_mm`` (mm, inside the sphere of ``local_radius_mm`` around the world point
    ``local_centre_xyz_mm``, which it requires, blended to 0 over ``local_blend_mm``).
    ``smoothing_method`` is ``"taubin"`` (non-shrinking, the default) or ``"laplacian"``
    (shrinks the lumen). ``modality`` is ``"ct"`` (HU), ``"mr"`` (signal in arbitrary units,
    no HU assumptions: no air cut-off, no calcium bound) or ``"auto"`` (the DICOM Modality
    tag, else CT when the image holds negative values).
    """

    flow_rate_ml_s: float = 1.0
    seed_xyz_mm: tuple[float, float, float] | None = None
    inlet_xyz_mm: tuple[float, float, float] | None = None
    segmentation_method: str = "auto"
    modality: str = "auto"
    lower_hu: float | None = None
    upper_hu: float | None = None
    smoothing_iterations: int = 20
    cells_per_radius: float = 4.0
    mesh_order: int = 1
    mesh_jet_spread: float = 0.15
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
    threshold_shift_hu: float = 0.0
    resample_voxel_mm: float = 0.0
    boundary_noise_mm: float = 0.0
    boundary_noise_correlation_mm: float = 2.0
    boundary_noise_seed: int = 0
    local_offset_mm: float = 0.0
    local_centre_xyz_mm: tuple[float, float, float] | None = None
    local_radius_mm: float = 3.0
    local_blend_mm: float = 1.0
    smoothing_method: str = "taubin"
    clip: str = "auto"
    outlets_xyz_mm: tuple[tuple[float, float, float], ...] | None = None
    min_branch_radius_mm: float | None = None
    outlet_flow_split: str | tuple[float, ...] = "traction"
    flow_extension_radii: float = 0.0
    unet_model: str | None = None
    probability_level: float | None = None
    probability_sample_mm: float = 0.0
    probability_sample_seed: int = 0
    error_estimate: str = "coarse"

    def __post_init__(self) -> None:
        def positive(name):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise WorkflowError(f"{name} must be a positive number, got {v!r}")

        for name in ("flow_rate_ml_s", "cells_per_radius", "density_kg_m3", "viscosity_Pa_s",
                     "proximal_pressure_Pa"):
            positive(name)
        if not (isinstance(self.mesh_jet_spread, (int, float)) and np.isfinite(self.mesh_jet_spread)
                and self.mesh_jet_spread >= 0):
            raise WorkflowError(f"mesh_jet_spread must be a number >= 0 (0: off), got {self.mesh_jet_spread!r}")
        if self.model not in VALID_MODELS:
            raise WorkflowError(f"model must be one of {VALID_MODELS}, got {self.model!r}")
        if isinstance(self.error_estimate, bool):  # (the flag of earlier releases: True = refine)
            self.error_estimate = "refine" if self.error_estimate else "off"
        if self.error_estimate not in ERROR_ESTIMATES:
            raise WorkflowError(f"error_estimate must be one of {ERROR_ESTIMATES} (or True / False), "
                                f"got {self.error_estimate!r}")
        if self.solver not in VALID_SOLVERS:
            raise WorkflowError(f"solver must be one of {VALID_SOLVERS}, got {self.solver!r}")
        if self.segmentation_method not in VALID_METHODS:
            raise WorkflowError(
                f"segmentation_method must be one of {VALID_METHODS}, got {self.segmentation_method!r}"
            )
        pl = self.probability_level
        if pl is not None:
            if isinstance(pl, bool) or not isinstance(pl, (int, float)) or not 0.0 < pl < 1.0:
                raise WorkflowError(f"probability_level must lie strictly between 0 and 1, got {pl!r}")
            if self.segmentation_method != "unet":
                raise WorkflowError("probability_level is a level of the U-Net's probability map: it needs "
                                    "segmentation_method='unet' (--segmentation unet)")
        ps = self.probability_sample_mm
        if isinstance(ps, bool) or not isinstance(ps, (int, float)) or not np.isfinite(ps) or ps < 0:
            raise WorkflowError(f"probability_sample_mm must be a correlation length >= 0 mm, got {ps!r}")
        if ps > 0:
            if self.segmentation_method != "unet":
                raise WorkflowError("probability_sample_mm draws the wall from the U-Net's probability map: it "
                                    "needs segmentation_method='unet' (--segmentation unet)")
            if pl is not None:
                raise WorkflowError("give either probability_level (one level of the U-Net's map) or "
                                    "probability_sample_mm (a random sample of it), not both")
        seed = self.probability_sample_seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise WorkflowError(f"probability_sample_seed must be a non-negative integer, got {seed!r}")
        if self.unet_model is not None and self.segmentation_method != "unet":
            raise WorkflowError("a U-Net model (--unet-model) was given without --segmentation unet: add it, or "
                                "drop the model")
        if self.modality not in VALID_MODALITIES:
            raise WorkflowError(f"modality must be one of {VALID_MODALITIES}, got {self.modality!r}")
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
        for name in ("seed_xyz_mm", "inlet_xyz_mm", "local_centre_xyz_mm"):
            v = getattr(self, name)
            if v is not None:
                try:
                    arr = np.asarray(v, dtype=float).ravel()
                except (TypeError, ValueError):
                    arr = np.zeros(0)
                if arr.shape != (3,) or not np.all(np.isfinite(arr)):
                    raise WorkflowError(f"{name} must be three numbers (x y z in mm), got {v!r}")
                setattr(self, name, tuple(float(a) for a in arr))
        self._check_perturbations()
        self._check_model_ends()

    def _check_model_ends(self) -> None:
        if self.clip not in VALID_CLIPS:
            raise WorkflowError(f"clip must be one of {VALID_CLIPS}, got {self.clip!r}")
        if self.outlets_xyz_mm is not None:
            pts = []
            for v in self.outlets_xyz_mm:
                arr = np.asarray(v, dtype=float).ravel() if not isinstance(v, str) else np.zeros(0)
                if arr.shape != (3,) or not np.all(np.isfinite(arr)):
                    raise WorkflowError(f"each outlet point must be three numbers (x y z in mm), got {v!r}")
                pts.append(tuple(float(a) for a in arr))
            if not pts:
                raise WorkflowError("outlets_xyz_mm is empty: give at least one outlet point or None")
            self.outlets_xyz_mm = tuple(pts)
            if self.clip == "faces":
                raise WorkflowError("outlet points need centreline clipping: drop clip='faces' (--clip faces)")
        r = self.min_branch_radius_mm
        if r is not None and not (isinstance(r, (int, float)) and np.isfinite(r) and r > 0):
            raise WorkflowError(f"min_branch_radius_mm must be a positive radius in mm or None, got {r!r}")
        fe = self.flow_extension_radii
        if isinstance(fe, bool) or not (isinstance(fe, (int, float)) and np.isfinite(fe) and 0 <= fe <= 50):
            raise WorkflowError(f"flow_extension_radii must be a length in cap radii in [0, 50] (VaMPy uses 5), "
                                f"got {fe!r}")
        split = self.outlet_flow_split
        if isinstance(split, str):
            if split not in ("traction", "murray"):
                raise WorkflowError(
                    f"outlet_flow_split must be 'traction', 'murray' or a list of fractions, got {split!r}")
        else:
            try:
                fr = tuple(float(f) for f in split)
            except (TypeError, ValueError):
                raise WorkflowError(f"outlet flow fractions must be numbers, got {split!r}") from None
            if not fr or not all(np.isfinite(f) and f > 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
                raise WorkflowError(
                    f"outlet flow fractions must be positive and sum to 1 (one per outlet, outlet1 first), "
                    f"got {list(fr)} (sum {sum(fr):.6g})")
            self.outlet_flow_split = fr

    def _check_perturbations(self) -> None:
        def number(name, *, lo=None, strict=False, what="a finite number"):
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and np.isfinite(v)
            if ok and lo is not None:
                ok = v > lo if strict else v >= lo
            if not ok:
                raise WorkflowError(f"{name} must be {what}, got {v!r}")
            setattr(self, name, float(v))

        number("threshold_shift_hu", what="a finite number of HU (0 = no shift)")
        number("resample_voxel_mm", lo=0.0, what="a voxel size >= 0 mm (0 = no resampling)")
        number("boundary_noise_mm", lo=0.0, what="an RMS amplitude >= 0 mm (0 = no noise)")
        number("boundary_noise_correlation_mm", lo=0.0, strict=True, what="a correlation length > 0 mm")
        number("local_offset_mm", what="a finite offset in mm (0 = none)")
        number("local_radius_mm", lo=0.0, strict=True, what="a radius > 0 mm")
        number("local_blend_mm", lo=0.0, what="a blend width >= 0 mm")
        seed = self.boundary_noise_seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise WorkflowError(f"boundary_noise_seed must be a non-negative integer, got {seed!r}")
        self.boundary_noise_seed = int(seed)
        if self.local_offset_mm != 0.0 and self.local_centre_xyz_mm is None:
            raise WorkflowError(
                f"local_offset_mm={self.local_offset_mm} needs local_centre_xyz_mm: the world point "
                "(x y z, mm) at the centre of the region to perturb (e.g. the stenosis)"
            )
        if self.smoothing_method not in VALID_SMOOTHING_METHODS:
            raise WorkflowError(
                f"smoothing_method must be one of {VALID_SMOOTHING_METHODS}, got {self.smoothing_method!r}"
            )

    def perturbation_params(self) -> dict[str, Any]:
        """The active geometric perturbations' parameters (empty when none is active).

        Only operators that change something are listed, with the parameters that matter
        for them, so the dict is empty (and cache keys unchanged) for an unperturbed run.
        """
        d: dict[str, Any] = {}
        if self.threshold_shift_hu:
            d["threshold_shift_hu"] = self.threshold_shift_hu
        if self.resample_voxel_mm:
            d["resample_voxel_mm"] = self.resample_voxel_mm
        if self.boundary_noise_mm:
            d.update(boundary_noise_mm=self.boundary_noise_mm,
                     boundary_noise_correlation_mm=self.boundary_noise_correlation_mm,
                     boundary_noise_seed=self.boundary_noise_seed)
        if self.local_offset_mm:
            d.update(local_offset_mm=self.local_offset_mm, local_centre_xyz_mm=list(self.local_centre_xyz_mm),
                     local_radius_mm=self.local_radius_mm, local_blend_mm=self.local_blend_mm)
        if self.smoothing_method != VALID_SMOOTHING_METHODS[0]:
            d["smoothing_method"] = self.smoothing_method
        return d

    @property
    def flow_rate_m3_s(self) -> float:
        return self.flow_rate_ml_s * 1e-6


# ----------------------------------------------------------------------------- stages
def _at_probability_level(seg, level: float, image, what: str | None = None):
    """The U-Net's lumen re-taken at ``level`` of its probability map: the pieces of
    ``probability > level`` that overlap the vessel it chose; the wall's level is then ``level``
    of the map (no calcium bound, no tissue level: the map is no image)."""
    from scipy import ndimage

    from pipeline.segment.classical import fill_holes

    lab, _ = ndimage.label(seg.probability > level, structure=ndimage.generate_binary_structure(3, 1))
    keep = np.unique(lab[seg.mask & (lab > 0)])
    if len(keep) == 0:
        if what is not None:
            raise WorkflowError(f"{what}: the sample holds none of the U-Net's vessel; use another seed or a "
                                "longer correlation length")
        raise WorkflowError(f"probability_level={level}: no lumen of the U-Net's vessel lies above that level of "
                            "its probability map; use a lower level")
    seg.mask = fill_holes(np.isin(lab, keep))
    seg.level_hu = seg.lower_hu = level
    seg.upper_hu = seg.tissue_hu = seg.lumen_hu = None
    seg.volume_mm3 = float(seg.mask.sum()) * float(np.prod(image.spacing_mm))
    return seg


def _segment(image, cfg: VesselFlowConfig, out: Path, truth_path: Path | None, modality: str) -> dict:
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
    if cfg.segmentation_method == "unet":
        from pipeline.segment.infer import segment_lumen_learned
        from pipeline.segment.train import TrainingError

        try:
            seg = segment_lumen_learned(image, model_dir=cfg.unet_model, seed_index_zyx=seed_index, modality=modality)
        except TrainingError as exc:
            raise WorkflowError(f"{exc} (--unet-model)") from None
        write_image(image.with_array(seg.probability), out / "segmentation_probability.nii.gz")
        if cfg.probability_level is not None:
            seg = _at_probability_level(seg, float(cfg.probability_level), image)
        elif cfg.probability_sample_mm > 0:
            from pipeline.perturb import probability_sample

            shortest = 2.0 * float(max(image.spacing_mm))
            if cfg.probability_sample_mm < shortest:
                raise WorkflowError(f"probability_sample_mm={cfg.probability_sample_mm} is shorter than two voxels "
                                    f"({shortest:g} mm): the sampled wall would be rougher than a mesh resolves; "
                                    f"use a correlation length of at least {shortest:g} mm")

            from scipy import ndimage

            from pipeline.perturb import MASK_SIGMA_VOXELS

            field = probability_sample(seg.probability, image.spacing_mm, cfg.probability_sample_mm,
                                       cfg.probability_sample_seed)
            # drawn near the network's own wall only (within two voxels of its 0.5 level): the map's
            # stray specks elsewhere (window edges, image faces) would become islands and slivers
            median = seg.probability > 0.5
            near = ndimage.binary_dilation(median, iterations=2) & ~ndimage.binary_erosion(median, iterations=2)
            field = np.where(near, field, seg.probability).astype(np.float32)
            # a network sure of itself has a map that steps from 0 to 1 in a voxel: the sample's
            # wall is then that staircase, shifted within the voxel. Smoothed as a mask's level
            # field is, it is a wall the mesher can follow.
            field = ndimage.gaussian_filter(field, MASK_SIGMA_VOXELS).astype(np.float32)
            write_image(image.with_array(field), out / "segmentation_sample.nii.gz")
            seg.probability = field  # (the sample's level field: lumen above 0.5)
            seg = _at_probability_level(seg, 0.5, image, what=f"probability_sample_mm={cfg.probability_sample_mm} "
                                                               f"(seed {cfg.probability_sample_seed})")
    else:
        seg = segment_lumen(
            image.array.astype(np.float32),
            spacing_mm=image.spacing_mm,
            method=cfg.segmentation_method,
            seed_index_zyx=seed_index,
            lower_hu=cfg.lower_hu,
            upper_hu=cfg.upper_hu,
            modality=modality,
        )
    write_image(image.with_array(seg.mask.astype(np.uint8)), out / "segmentation.nii.gz")
    record = {
        "surface_from": ("probability" if cfg.probability_level is not None else
                         "probability sample" if cfg.probability_sample_mm > 0 else "image"),
        "level_hu": float(seg.level_hu),
        "lower_hu": float(seg.lower_hu),
        "upper_hu": None if seg.upper_hu is None else float(seg.upper_hu),
        "method": seg.method,
        "modality": seg.modality,
        "lumen_volume_mm3": float(seg.volume_mm3),
        "n_candidate_components": int(seg.n_candidate_components),
        "lumen_hu": None if seg.lumen_hu is None else float(seg.lumen_hu),
        "tissue_hu": None if seg.tissue_hu is None else float(seg.tissue_hu),
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


@dataclass
class SurfaceInputs:
    """What the surface stage contours, after the geometric perturbations.

    Attributes
    ----------
    mask : pipeline.image.Volume
        Lumen mask handed to ``make_tagged_surface`` (after threshold shift and resampling;
        the noise and local offset travel in ``displacement`` instead).
    intensity : pipeline.image.Volume
        The CT image to contour (averaged onto the coarse grid after resampling).
    level, half_max_level : float or None
        Iso-level of the contour (HU) and the unshifted half-maximum level (HU).
    displacement : pipeline.image.Volume or None
        Outward normal displacement field of the wall, mm (noise + local offset).
    crop_margin_mm : list of 3 [low, high] pairs or None
        Cut-plane insets (mm) per array axis and side for the surface stage (after
        resampling: those that keep the cut planes, hence the vessel length, where the
        unresampled run has them); ``None`` for the surface stage's default.
    perturbed_mask : pipeline.image.Volume
        The perturbed voxel mask (all operators), for inspection.
    reports : list of dict
        One report per operator applied, in order (see :mod:`pipeline.perturb`).
    """

    mask: Any
    intensity: Any
    level: float | None
    half_max_level: float | None
    displacement: Any
    crop_margin_mm: list[list[float]] | None
    perturbed_mask: Any
    reports: list[dict]


def perturb_segmentation(image, mask, level_hu: float, upper_hu: float | None,
                         cfg: VesselFlowConfig) -> SurfaceInputs:
    """Apply the configured geometric perturbations to a segmentation, in the fixed order.

    Threshold shift, then resampling, then correlated boundary noise, then the local offset
    (the uniform ``boundary_offset_mm`` is applied later, on the surface). See the module
    docstring for how each reaches the surface at sub-voxel precision.

    Parameters
    ----------
    image : pipeline.image.Volume
        CT angiogram, HU.
    mask : pipeline.image.Volume
        Lumen segmentation on the image's grid (non-zero = lumen).
    level_hu : float
        The segmentation's half-maximum iso-level, HU.
    upper_hu : float or None
        The segmentation's calcium bound, HU (kept out of a re-thresholded mask).
    cfg : VesselFlowConfig
        The perturbation parameters.

    Returns
    -------
    SurfaceInputs

    Raises
    ------
    WorkflowError
        A perturbation that cannot be applied (the message names the parameter).
    """
    from pipeline import perturb
    from pipeline.image import Volume

    binary = np.asarray(mask.array) > 0
    grid = mask
    intensity, level, half_max = image, float(level_hu), None
    crop_margin = None
    reports: list[dict] = []

    def fail(name, exc):
        return WorkflowError(f"{name}={getattr(cfg, name)!r}: {exc}")

    # 1. threshold shift (segmentation threshold and surface iso-level)
    if cfg.threshold_shift_hu:
        binary, rep = _threshold_shift(image, binary, float(level_hu), upper_hu, cfg.threshold_shift_hu, fail)
        reports.append(rep)
        level, half_max = float(level_hu) + cfg.threshold_shift_hu, float(level_hu)

    # 2. resampling of the mask (and the image) to a coarser isotropic voxel
    if cfg.resample_voxel_mm:
        v = cfg.resample_voxel_mm
        try:
            pr = perturb.resample_coarse(binary, grid.spacing_mm, (v, v, v))
        except perturb.PerturbationError as exc:
            raise fail("resample_voxel_mm", exc) from None
        shift_ijk = np.asarray(pr.report["origin_shift_mm"], float)[::-1]  # array (z, y, x) -> (i, j, k)
        origin = np.asarray(grid.origin_xyz_mm) + grid.direction_xyz @ shift_ijk
        grid = Volume(pr.mask.astype(np.uint8), (v, v, v), tuple(origin), grid.direction_xyz.copy())
        binary = pr.mask
        # the image is averaged onto the same coarse voxels (what a scan with bigger voxels
        # records), so the surface is still the sub-voxel iso-surface, now of the coarse image
        intensity = grid.with_array(_box_average(np.asarray(image.array, np.float64), image.spacing_mm, (v, v, v)))
        # keep the cut planes where the unresampled surface has them, so the vessel length (and
        # with it the pressure drop) does not change just because the voxels did
        crop_margin = _same_cut_planes(image.shape, image.spacing_mm, pr.mask.shape, v)
        reports.append({**pr.report, "crop_margin_mm": crop_margin})

    # 3 + 4. signed-distance operators on a crop around the lumen -> a normal displacement field
    final = binary
    displacement = None
    if cfg.boundary_noise_mm or cfg.local_offset_mm:
        sp = grid.spacing_mm
        reach_mm = abs(cfg.local_offset_mm) + 5.0 * cfg.boundary_noise_mm
        margin = 4 + int(np.ceil(reach_mm / min(sp)))
        idx = np.argwhere(binary)
        lo = np.maximum(idx.min(axis=0) - margin, 0)
        hi = np.minimum(idx.max(axis=0) + margin + 1, binary.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_grid = Volume(np.zeros(tuple(hi - lo), np.float32), sp, tuple(grid.index_to_world(lo)),
                          grid.direction_xyz.copy())
        cur = binary[box]
        disp = np.zeros(cur.shape)
        if cfg.boundary_noise_mm:
            phi = perturb.signed_distance(cur, spacing_mm=sp)
            try:
                pn = perturb.correlated_noise_boundary(cur, sp, cfg.boundary_noise_mm,
                                                       cfg.boundary_noise_correlation_mm, cfg.boundary_noise_seed)
            except perturb.PerturbationError as exc:
                raise fail("boundary_noise_mm", exc) from None
            disp += phi - pn.sdf_mm  # = the noise field, mm outwards
            cur = pn.mask
            reports.append(pn.report)
        if cfg.local_offset_mm:
            centre_zyx_mm = sub_grid.world_to_index(cfg.local_centre_xyz_mm) * np.asarray(sp)
            wall = cur & ~_erode(cur)
            gap = float(np.sqrt((((np.argwhere(wall) * np.asarray(sp)) - centre_zyx_mm) ** 2).sum(axis=1)).min())
            if gap > cfg.local_radius_mm + cfg.local_blend_mm:
                raise WorkflowError(
                    f"local_centre_xyz_mm={cfg.local_centre_xyz_mm} is {gap:.2f} mm from the lumen wall, beyond "
                    f"local_radius_mm + local_blend_mm = {cfg.local_radius_mm + cfg.local_blend_mm} mm: the local "
                    "offset would change nothing; put the centre on the vessel (e.g. at the stenosis)"
                )
            phi = perturb.signed_distance(cur, spacing_mm=sp)
            try:
                pl = perturb.local_offset(cur, sp, cfg.local_offset_mm, centre_mm=centre_zyx_mm,
                                          radius_mm=cfg.local_radius_mm, blend_mm=cfg.local_blend_mm)
            except perturb.PerturbationError as exc:
                raise fail("local_offset_mm", exc) from None
            disp += phi - pl.sdf_mm  # = local_offset_mm * blend weight, mm outwards
            cur = pl.mask
            # the operator's centre_mm is in the crop's array frame; report the world point instead
            reports.append({**{k: v for k, v in pl.report.items() if k != "centre_mm"},
                            "centre_xyz_mm": list(cfg.local_centre_xyz_mm)})
        displacement = Volume(disp, sp, sub_grid.origin_xyz_mm, grid.direction_xyz.copy())
        final = binary.copy()
        final[box] = cur

    return SurfaceInputs(
        mask=grid.with_array(binary.astype(np.uint8)),
        intensity=intensity,
        level=level,
        half_max_level=half_max,
        displacement=displacement,
        crop_margin_mm=crop_margin,
        perturbed_mask=grid.with_array(final.astype(np.uint8)),
        reports=reports,
    )


def _same_cut_planes(shape, spacing_mm, coarse_shape, v: float) -> list[list[float]]:
    """Cut-plane insets (mm, per axis: [low, high]) on the coarse grid that put the planes where
    the surface stage's default insets put them on the original grid.

    Original planes: ``DEFAULT_CROP_MARGIN_VOXELS`` voxels inside the first and last voxel
    centres. Coarse voxel 0's centre lies ``(v - h) / 2`` beyond the original one; the last
    coarse centre lies at ``(v - h) / 2 + (N - 1) v`` (insets clipped at 0 for v > 4 h).
    """
    from pipeline.surface import DEFAULT_CROP_MARGIN_VOXELS as k

    out = []
    for n, h, big_n in zip(shape, spacing_mm, coarse_shape):
        c0 = 0.5 * (v - h)
        lo = k * h - c0
        hi = (c0 + (big_n - 1) * v) - (n - 1 - k) * h
        out.append([max(lo, 0.0), max(hi, 0.0)])
    return out


def _box_average(arr: np.ndarray, spacing_mm, new_spacing_mm) -> np.ndarray:
    """Average an image onto coarser voxels by exact overlap volume (the grid of ``resample_coarse``).

    Both grids start at the same low voxel edge; a last, partial coarse voxel averages only
    the part inside the old grid (as :func:`pipeline.perturb.resample_coarse` does for masks).
    """
    out = arr
    for a, (h, big) in enumerate(zip(spacing_mm, new_spacing_mm)):
        n_old = out.shape[a]
        extent = n_old * h
        n_new = max(1, int(np.ceil(extent / big - 1e-9)))
        lo_new = np.arange(n_new)[:, None] * big
        hi_new = np.minimum(lo_new + big, extent)
        lo_old = np.arange(n_old)[None, :] * h
        w = np.clip(np.minimum(hi_new, lo_old + h) - np.maximum(lo_new, lo_old), 0.0, None)
        w /= w.sum(axis=1, keepdims=True)
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, a, 0), axes=(1, 0)), 0, a)
    return out


def _erode(binary: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(binary, ndimage.generate_binary_structure(3, 1), border_value=1)


def _threshold_shift(image, binary, level_hu, upper_hu, shift_hu, fail) -> tuple[np.ndarray, dict]:
    """Re-threshold near the segmentation at ``level_hu + shift_hu``; keep what connects to it."""
    from scipy import ndimage

    from pipeline import perturb
    from pipeline.segment.classical import fill_holes

    face = ndimage.generate_binary_structure(3, 1)
    arr = np.asarray(image.array, dtype=np.float64)
    near = ndimage.binary_dilation(binary, face, iterations=_THRESHOLD_REACH_VOXELS)
    restricted = np.where(near, arr, min(float(arr.min()), level_hu) - 1.0)  # other bright structures out
    try:
        pt = perturb.threshold_shift(restricted, level_hu, shift_hu, spacing_mm=image.spacing_mm)
    except perturb.PerturbationError as exc:
        raise fail("threshold_shift_hu", exc) from None
    new = pt.mask if upper_hu is None else pt.mask & (arr <= upper_hu)
    labels, _ = ndimage.label(new, face)
    keep = np.unique(labels[new & binary])
    new = np.isin(labels, keep[keep > 0])
    new = fill_holes(new)
    if upper_hu is not None:
        new &= arr <= upper_hu
    if not new.any():
        raise fail("threshold_shift_hu", "no lumen connected to the segmentation is left above "
                   f"{level_hu + shift_hu:.1f} HU; use a smaller shift")
    rim = near & ~ndimage.binary_dilation(binary, face, iterations=_THRESHOLD_REACH_VOXELS - 1)
    if (new & rim).any():
        raise fail("threshold_shift_hu", f"the level {level_hu + shift_hu:.1f} HU grows the lumen more than "
                   f"{_THRESHOLD_REACH_VOXELS} voxels beyond the segmentation (it is too close to the "
                   "background level); use a smaller negative shift")
    rep = {**pt.report, "level_after_hu": level_hu + shift_hu,
           "lumen_volume_after_mm3": float(new.sum()) * float(np.prod(image.spacing_mm))}
    return new, rep


def clip_plan(mask, cfg: VesselFlowConfig, *, track: bool = False, image=None):
    """The modelled part of the mask and where the model is clipped: ``(mask, plan, report)``.

    ``plan`` is None for image-face crops (the mask is then returned unchanged, report None).
    ``cfg.clip = "auto"`` clips along the centreline when the lumen reaches fewer than two
    image faces or when outlets are named; otherwise it cuts at the image faces as for a
    cropped tube (``clip="centreline"`` forces centreline clipping). The centreline modelling
    itself is :func:`pipeline.centreline.model_region`. ``clip="tracked"`` (or ``track``, the
    fallback of ``"auto"``) finds the ends by following the vessel through ``cfg.seed_xyz_mm``;
    without a seed, ``image`` (a CT angiogram, HU) lets the automatic seed prefer the vessel the
    bolus was timed for (:func:`pipeline.centreline.main_vessel_seed`).
    """
    from pipeline.centreline import CentrelineError, model_region

    track = track or cfg.clip == "tracked"
    if cfg.clip == "faces":
        return mask, None, None
    if cfg.clip == "auto" and not track and not cfg.outlets_xyz_mm and len(_touched_faces(mask)) >= 2:
        if _looks_like_one_tube(mask):
            return mask, None, None  # a cropped vessel leaving the image: crop at the faces as before
        track = cfg.inlet_xyz_mm is None  # a real scan's lumen full of loops: follow the vessel instead
    try:
        return model_region(mask, inlet_xyz=cfg.inlet_xyz_mm, outlets_xyz=cfg.outlets_xyz_mm,
                            min_branch_radius_mm=cfg.min_branch_radius_mm, track=track,
                            seed_xyz=cfg.seed_xyz_mm, image=image)
    except CentrelineError as exc:
        raise WorkflowError(str(exc)) from None


def _looks_like_one_tube(mask) -> bool:
    """Whether the mask could be one cropped vessel: its Euler number (pieces - tunnels + cavities,
    26-connected) is at least 0. A tube or a tree is 1; a real angiogram's lumen fused with the
    heart, veins and lung vessels has tens to hundreds of tunnels (-15 on the shared aorta MRA,
    about -300 on the pulmonary CTA)."""
    from skimage.measure import euler_number

    return euler_number(np.asarray(mask.array) > 0, connectivity=3) >= 0


def _touched_faces(mask) -> list[tuple[int, int]]:
    """The image faces (array axis, 0 = low / -1 = high) that the mask reaches."""
    binary = np.asarray(mask.array) > 0
    return [(ax, side) for ax in range(3) for side in (0, -1) if np.take(binary, side, axis=ax).any()]


def build_surface(image, mask, level_hu: float, upper_hu: float | None, cfg: VesselFlowConfig, *,
                  plan="auto", tissue_hu: float | None = None, blur_correction: bool = True):
    """Stage 2: the perturbed segmentation's tagged surface, exactly as the workflow builds it.

    Parameters
    ----------
    image, mask : pipeline.image.Volume
        The angiogram (CT in HU or MR signal) and its lumen segmentation (same grid).
    level_hu, upper_hu : float, float or None
        The segmentation's iso-level and calcium bound (image units).
    cfg : VesselFlowConfig
        Surface and perturbation parameters.
    plan : "auto", None or pipeline.centreline.ClipPlan
        Where to clip the ends: ``"auto"`` decides here (:func:`clip_plan`); ``None`` cuts at
        the image faces; a plan (from :func:`clip_plan` of the unperturbed mask, so every
        perturbed case is cut at the same planes) clips along the centreline, ``mask`` being
        then its modelled region.
    tissue_hu : float, optional
        The segmentation's tissue level: with centreline clipping the lumen contrast is then
        evened out first (:func:`even_contrast`, reported as ``surface.report["contrast_evening"]``).
    blur_correction : bool
        Correct the scanner blur's shift of the half-maximum wall (off when ``image`` is a
        probability map, not a blurred image).

    Returns
    -------
    (pipeline.surface.TaggedSurface, SurfaceInputs)
    """
    from pipeline.surface import make_tagged_surface

    if isinstance(plan, str):
        mask, plan, _ = clip_plan(mask, cfg)
    contrast = None
    if plan is not None:
        image, contrast = even_contrast(image, mask, level_hu, tissue_hu)
    si = perturb_segmentation(image, mask, level_hu, upper_hu, cfg)
    inlet = cfg.inlet_xyz_mm if cfg.inlet_xyz_mm is not None else "largest"
    surf = make_tagged_surface(
        si.mask,
        intensity=si.intensity,
        level=si.level,
        inlet=inlet,
        smoothing_iterations=cfg.smoothing_iterations,
        boundary_offset_mm=float(cfg.boundary_offset_mm),
        smoothing_method=cfg.smoothing_method,
        normal_displacement_mm=si.displacement,
        half_max_level=si.half_max_level,
        crop_margin_mm=si.crop_margin_mm,
        clip_plan=plan,
        flow_extension_radii=float(cfg.flow_extension_radii),
        **({} if blur_correction else {"blur_correction": False}),  # (else the library's default)
    )
    if contrast is not None:
        surf.report["contrast_evening"] = contrast
    return surf, si


def even_contrast(image, mask, level_hu: float, tissue_hu: float | None):
    """The image with an even lumen contrast around the mask's lumen, and the report.

    Works on the mask's bounding box (plus a margin) and returns the image on its own grid.
    """
    from pipeline.segment.classical import even_lumen_contrast

    if tissue_hu is None:  # (a caller-given threshold: no tissue level measured)
        return image, {"applied": False, "why_not": "no tissue level measured (threshold given)"}
    lo, hi = mask.mask_box(8)
    sub, sub_mask = image.crop(lo, hi), mask.crop(lo, hi)
    arr, rep = even_lumen_contrast(sub.array, np.asarray(sub_mask.array) > 0, spacing_mm=image.spacing_mm,
                                   level=float(level_hu), tissue=float(tissue_hu))
    if not rep["applied"]:
        return image, rep
    full = np.asarray(image.array, dtype=np.float32).copy()
    full[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = arr
    return image.with_array(full), rep


def _geometry(image, seg_record: dict, cfg: VesselFlowConfig, out: Path) -> dict:
    from pipeline.image import read_image
    from pipeline.surface import SurfaceError
    from pipeline.volume_mesh import MeshingError

    segmentation = read_image(out / "segmentation.nii.gz")
    if seg_record.get("surface_from") == "probability":  # the wall at a level of the U-Net's map
        image = read_image(out / "segmentation_probability.nii.gz")
    elif seg_record.get("surface_from") == "probability sample":  # a random wall drawn from it
        image = read_image(out / "segmentation_sample.nii.gz")
    seed = ("the vessel through --seed-mm" if cfg.seed_xyz_mm is not None
            else "the most tube-like wide vessel (found automatically; give --seed-mm to pick another)")
    advice = ("Name where to cut the vessel with --inlet-mm X Y Z and --outlet-mm X Y Z (repeatable), see the "
              "README's 'Your own patient'")
    ct = image if seg_record.get("modality") == "ct" and seg_record.get("surface_from", "image") == "image" else None
    # (contrast ranks vessels in HU only)
    mask, plan, region = clip_plan(segmentation, cfg, image=ct)
    try:
        surf, si, vm = _model_and_mesh(image, seg_record, cfg, out, mask, plan, region)
    except (SurfaceError, MeshingError) as exc:
        if region is not None and "ends" in region:  # ends found by following the vessel
            raise WorkflowError(f"{exc}. The model's ends were found by following {seed}. {advice}") from None
        if plan is not None or cfg.clip != "auto":
            raise
        # not a cropped tube: a real scan's vessel that branches, touches others or runs into the
        # heart. Follow the vessel through the seed (or the most tube-like one) and model that.
        first = str(exc)
        try:
            mask, plan, region = clip_plan(segmentation, cfg, track=True, image=ct)
            surf, si, vm = _model_and_mesh(image, seg_record, cfg, out, mask, plan, region)
        except (SurfaceError, MeshingError, WorkflowError) as exc2:
            raise WorkflowError(
                f"{first}. The lumen reaches the image faces but is not a cropped tube (it branches, touches "
                f"other vessels or runs into the heart); following {seed} failed too: {exc2}. {advice}") from None
    centerline = _centerline_outputs(image, mask, surf, plan, out)
    reports = list(si.reports)
    if cfg.smoothing_method != VALID_SMOOTHING_METHODS[0]:
        r = surf.report
        reports.append({"operator": "surface_smoothing", "method": cfg.smoothing_method,
                        "iterations": int(cfg.smoothing_iterations),
                        "volume_before_mm3": r["volume_before_smoothing_mm3"],
                        "volume_after_mm3": r["volume_after_smoothing_mm3"],
                        "volume_change_percent": r["smoothing_volume_change_percent"]})
    return {
        "centerline": centerline,
        "surface": {k: v for k, v in surf.to_json_dict().items() if k != "centreline"},
        "mesh": {"stats": vm.stats, "boundaries": vm.boundaries, "msh": str(vm.msh_path)},
        "perturbation": reports,
    }


def _jet_spread(cfg: VesselFlowConfig) -> float | None:
    """The mesh's jet sizing: Navier–Stokes runs only (Stokes flow has no jet), None when off."""
    return float(cfg.mesh_jet_spread) if cfg.model == "navier-stokes" and cfg.mesh_jet_spread > 0 else None


def _model_and_mesh(image, seg_record: dict, cfg: VesselFlowConfig, out: Path, mask, plan, region, *,
                    smoothed_again: bool = False):
    """Surface (with ``plan``'s clips) and volume mesh of the modelled ``mask``; writes their files."""
    from pipeline.image import write_image
    from pipeline.volume_mesh import MeshingError, mesh_volume

    if plan is not None:
        write_image(mask, out / "segmentation_model.nii.gz")
    surf, si = build_surface(image, mask, seg_record["level_hu"], seg_record.get("upper_hu"), cfg, plan=plan,
                             tissue_hu=seg_record.get("tissue_hu"),
                             blur_correction=seg_record.get("surface_from", "image") == "image")
    if si.reports:
        write_image(si.perturbed_mask, out / "segmentation_perturbed.nii.gz")
    if region is not None:
        surf.report["model_region"] = region
    surf.write(out / "surface.stl")
    surf.write(out / "surface.vtp")
    write_json_atomic(out / "surface.json", surf.to_json_dict())
    try:
        vm = mesh_volume(surf, out / "mesh", cells_per_radius=cfg.cells_per_radius, order=cfg.mesh_order,
                         jet_spread=_jet_spread(cfg))
    except MeshingError as exc:
        # a real scan's clipped lumen whose wall gmsh re-meshes across itself at every size (two
        # walls almost touching), or whose inside gmsh cannot find (no tetrahedra from a closed,
        # oriented surface: the same near-contact): smoothed twice as long the notch opens. Once,
        # and only for centreline-clipped models (image-face crops and their studies keep their
        # smoothing).
        why = str(exc)
        if plan is None or ("intersect" not in why and "no tetrahedra" not in why) \
                or cfg.smoothing_iterations == 0 or smoothed_again:
            raise
        again = replace(cfg, smoothing_iterations=2 * cfg.smoothing_iterations)
        surf, si, vm = _model_and_mesh(image, seg_record, again, out, mask, plan, region, smoothed_again=True)
        surf.report["smoothing_doubled_for_meshing"] = {"iterations": again.smoothing_iterations, "why": str(exc)}
        write_json_atomic(out / "surface.json", surf.to_json_dict())
    return surf, si, vm


def _centerline_outputs(image, mask, surf, plan, out: Path) -> dict:
    """Write ``centerline.vtp`` (when there is a centreline) and ``check.png``; return the summary for results.json.

    With image-face crops the centreline is the skeleton tree of the mask, drawn for the eye
    only: if it cannot be made, the run goes on without it.
    """
    from pipeline.centreline import CentrelineError, centreline_tree, write_centreline_vtp
    from workflows.flow.figures import check_figure

    caps = [{"name": c.name, "centre_xyz_mm": c.centre_xyz_mm, "normal_xyz": c.normal_xyz,
             "radius_mm": c.radius_mm} for c in surf.caps]
    summary: dict[str, Any] = {"clipping": "image faces" if plan is None else "centreline"}
    lines, radii = [], []
    if plan is not None:
        lines, radii = plan.path_points_xyz_mm, plan.path_radius_mm
        summary.update(plan.summary)
        summary["inlet_radius_mm"] = next(c.radius_mm for c in surf.caps if c.name == "inlet")
        summary["outlet_radii_mm"] = {c.name: c.radius_mm for c in surf.caps if c.name != "inlet"}
        summary["clip_centreline_radius_mm"] = {"inlet": plan.summary["inlet_radius_mm"],
                                                "outlets": plan.summary["outlet_radii_mm"]}
        summary["closed_branch_caps"] = [c for c in surf.report.get("clips", []) if c["role"] == "closed"]
        ends = surf.report.get("model_region", {}).get("ends")
        if ends is not None:  # found by following the vessel from a seed (clip "tracked")
            summary["ends"] = ends
    else:
        try:
            tree = centreline_tree(mask)
        except CentrelineError as exc:
            summary["centerline_error"] = str(exc)
        else:
            ids = tree.polylines()
            lines, radii = [tree.points_xyz_mm[p] for p in ids], [tree.radius_mm[p] for p in ids]
            summary.update({"tree_points": int(len(tree.radius_mm)), "tree_ends": len(tree.ends()),
                            "branch_points": len(tree.junctions()),
                            "length_mm": float(sum(np.sum(np.linalg.norm(np.diff(x, axis=0), axis=1))
                                                   for x in lines))})
    if lines:
        write_centreline_vtp(out / "centerline.vtp", lines, radii)
    try:
        check_figure(image, mask, out / "check.png", centrelines=lines, caps=caps,
                     title="vessel model check: lumen, centreline, caps")
    except ValueError as exc:  # a picture must not stop the run
        summary["check_png_error"] = str(exc)
    return summary


def outlet_fractions(cfg: VesselFlowConfig, surface: dict) -> dict[str, float] | None:
    """Outlet name -> fraction of the inflow (Murray's law or given), or None for zero-traction outlets."""
    from physics.flow import murray_fractions

    outlets = [c for c in surface["caps"] if c["name"] != "inlet"]
    split = cfg.outlet_flow_split
    if split == "traction":
        return None
    if not isinstance(split, str) and len(split) != len(outlets):
        raise WorkflowError(
            f"{len(split)} outlet flow fractions given for {len(outlets)} outlet(s) "
            f"({', '.join(c['name'] for c in outlets)}, largest first): give one per outlet")
    if len(outlets) < 2:
        return None  # one outlet carries all the flow whatever the split
    if split == "murray":  # Q ~ r^3, r from the cap area
        fr = murray_fractions({k + 1: c["radius_mm"] for k, c in enumerate(outlets)})
        return {c["name"]: float(fr[k + 1]) for k, c in enumerate(outlets)}
    return {c["name"]: float(f) for c, f in zip(outlets, split)}


def _flow_problem_dict(cfg: VesselFlowConfig, outlet_tags: list[int], fractions: dict[int, float] | None = None
                       ) -> dict:
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
        **({"outlet_flow_fractions": {str(t): f for t, f in fractions.items()}} if fractions else {}),
    }


def _solve(msh: Path, problem: dict, out: Path, cfg: VesselFlowConfig) -> dict:
    fields_dir = out / "fields" if cfg.write_fields else None
    flow_json = out / "flow.json"
    if cfg.n_procs == 1:
        from workflows.flow.solve_stage import solve_to_json

        solve_to_json(msh, problem, flow_json, fields_dir)
    else:
        from workflows.hpc import mpi_command

        mpiexec = Path(sys.executable).with_name("mpiexec")
        launch = mpi_command(cfg.n_procs, str(mpiexec) if mpiexec.exists() else "mpiexec")  # srun in a Slurm job
        cmd = launch + [sys.executable, "-m", "workflows.flow.solve_stage", str(msh), json.dumps(problem),
                        str(flow_json)] + ([str(fields_dir)] if fields_dir else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise WorkflowError(
                f"the flow solve under {' '.join(launch)} failed (exit {proc.returncode}): "
                + " | ".join(tail)
            )
        flow = json.loads(flow_json.read_text())
        flow["mpi_launcher"] = Path(launch[0]).name
        return flow
    return json.loads(flow_json.read_text())


#: Mesh ratio of the error estimate: cells per radius divided ("coarse") or multiplied
#: ("refine") by this (about 0.3 or 3.2 times the cells).
RICHARDSON_RATIO = 1.5
#: Order assumed for the pressure drop of Taylor–Hood elements on the mesh sizes used here (the
#: mesh-convergence benchmark observes 2.7 on the demo stenosis; 2 is the conservative choice).
RICHARDSON_ORDER = 2.0
#: Folder of the second solve, by mode.
ERROR_ESTIMATE_DIR = {"coarse": "coarsened", "refine": "refined"}


def _mesh_apart(out: Path, dest: Path, cells_per_radius: float, cfg: VesselFlowConfig) -> dict:
    """Mesh the run's surface (``out/surface.vtp``) again in a child process
    (:mod:`workflows.flow.mesh_stage`: a gmsh crash ends that process, not the run); returns the
    mesh statistics. A crash is retried once at a 2 % different size (gmsh's crashes seen here
    depend on the exact size)."""
    jet = _jet_spread(cfg)
    for attempt, c in enumerate((cells_per_radius, 1.02 * cells_per_radius)):
        cmd = [sys.executable, "-m", "workflows.flow.mesh_stage", str(out), str(dest), repr(float(c)),
               str(int(cfg.mesh_order)), "none" if jet is None else repr(float(jet))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return json.loads((dest / "mesh_info.json").read_text())["stats"]
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        if proc.returncode > 0:  # a meshing error, not a crash: the same again would fail the same way
            raise WorkflowError(f"meshing at {c:g} cells per radius failed: {tail}")
    raise WorkflowError(f"gmsh crashed (signal {-proc.returncode}) meshing the surface at {cells_per_radius:g} and "
                        f"{1.02 * cells_per_radius:g} cells per radius")


def _error_estimate(cfg: VesselFlowConfig, problem: dict, out: Path, flow: dict, geo_rec: dict) -> dict:
    """ΔP on the same surface meshed ``RICHARDSON_RATIO`` times coarser (``cfg.error_estimate
    == "coarse"``) or finer (``"refine"``); Richardson extrapolation from the two with the
    effective refinement ratio (cube root of the tetrahedra ratio) and order
    ``RICHARDSON_ORDER``; the grid convergence index of the finer solution (Roache, J. Fluids
    Eng. 116 (1994) 405; safety factor 1.25 for two grids with a known order). In the coarse
    mode the finer solution is the run's own, so the estimate is of the ΔP the run reports."""
    mode = cfg.error_estimate
    c0 = float(geo_rec["mesh"]["stats"].get("cells_per_radius", cfg.cells_per_radius))
    c1 = c0 / RICHARDSON_RATIO if mode == "coarse" else c0 * RICHARDSON_RATIO
    other_dir = out / ERROR_ESTIMATE_DIR[mode]
    stats = _mesh_apart(out, other_dir / "mesh", c1, cfg)
    fallback = None
    if mode == "coarse" and float(stats.get("cells_per_radius", c1)) >= c0 * (1 - 1e-9):
        # gmsh could not mesh this surface coarser (its re-meshed wall crossed itself and the
        # mesher refined back to the run's size): estimate from a finer mesh instead
        fallback = (f"the surface could not be meshed coarser than {c0:g} cells per radius (gmsh's wall "
                    "crossed itself at the coarser size), so the estimate comes from a finer mesh")
        mode, c1 = "refine", c0 * RICHARDSON_RATIO
        other_dir = out / ERROR_ESTIMATE_DIR[mode]
        stats = _mesh_apart(out, other_dir / "mesh", c1, cfg)
    flow_o = _solve(other_dir / "mesh" / "mesh.msh", problem, other_dir, replace(cfg, write_fields=False))
    n0, n1 = float(geo_rec["mesh"]["stats"]["n_tetrahedra"]), float(stats["n_tetrahedra"])
    d0, d1 = float(flow["pressure_drop_Pa"]), float(flow_o["pressure_drop_Pa"])
    # (fine, coarse) whichever way the second mesh went
    (df, nf), (dc, nc) = ((d0, n0), (d1, n1)) if mode == "coarse" else ((d1, n1), (d0, n0))
    r = (nf / nc) ** (1.0 / 3.0)
    p = RICHARDSON_ORDER
    if not r > 1.0:
        raise WorkflowError(f"the error estimate's {mode} mesh ({int(n1)} tetrahedra) is not "
                            f"{'coarser' if mode == 'coarse' else 'finer'} than the run's ({int(n0)}): the "
                            "element sizes are clamped; use --error-estimate off, or change --cells-per-radius")
    ext = df + (df - dc) / (r ** p - 1.0)
    return {
        "method": f"Richardson extrapolation from a {'coarser' if mode == 'coarse' else 'finer'} mesh "
                  f"(cells per radius {c0:g} -> {c1:g}), assumed order {p:g}",
        "mode": mode, **({"fallback": fallback} if fallback else {}),
        "cells_per_radius": [c0, float(stats.get("cells_per_radius", c1))], "n_tetrahedra": [int(n0), int(n1)],
        "effective_refinement_ratio": r, "pressure_drop_Pa": [d0, d1], "pressure_drop_extrapolated_Pa": ext,
        "relative_error_estimate": (d0 - ext) / ext if ext else None,
        "gci_fine": 1.25 * abs(df - dc) / abs(df) / (r ** p - 1.0) if df else None,
        "ffr_like": [flow.get("ffr_like"), flow_o.get("ffr_like")],
    }


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
        3-D angiogram (NIfTI, NRRD, MHA or a DICOM series folder): CT in HU, or MR.
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
    from pipeline.image import dicom_modality, read_image

    cfg = config or VesselFlowConfig()
    image = read_image(image_path)  # fails early, before the output folder is touched
    if truth_path is not None and not Path(truth_path).exists():
        raise WorkflowError(f"truth mask not found: {truth_path}")
    image_hash = hash_file(image_path)
    truth_hash = hash_file(truth_path) if truth_path is not None else None

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WorkflowError(f"--out {out} is a file; give a folder (new, or one holding an earlier run to resume)")
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not look like this run's
    cache = StageCache(out, force=force)
    prog = Progress(5 if cfg.error_estimate == "off" else 6, quiet=quiet)
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
    seg_params = {k: getattr(cfg, k) for k in seg_keys}
    # --modality auto: the DICOM Modality tag when there is one, else the value range
    modality = cfg.modality if cfg.modality != "auto" else (dicom_modality(image_path) or "auto")
    if modality != "auto":  # (absent otherwise, so caches of earlier runs stay valid)
        seg_params["modality"] = modality
    if cfg.segmentation_method == "unet":  # the model's weights name it
        from pipeline.segment.train import model_fingerprint

        seg_params["unet_model_sha256"] = model_fingerprint(cfg.unet_model)
        if cfg.probability_level is not None:
            seg_params["probability_level"] = float(cfg.probability_level)
        if cfg.probability_sample_mm > 0:
            seg_params["probability_sample"] = [float(cfg.probability_sample_mm), int(cfg.probability_sample_seed)]
    seg_key = hash_params(image_hash, truth_hash, seg_params)
    seg_rec = cache.done("segment", seg_key, [out / "segmentation.nii.gz"])
    if seg_rec is not None and "tissue_hu" not in seg_rec:
        seg_rec = None  # written before the levels were recorded: the contrast evening needs them
    if seg_rec is None:
        cache.invalidate_from(["geometry", "solve"])
        seg_rec = prog.stage("segment lumen", lambda: timed("segment", lambda: _segment(
            image, cfg, out, Path(truth_path) if truth_path else None, modality)))
        cache.record("segment", seg_key, seg_rec)
    else:
        prog.stage("segment lumen", lambda: None, skipped=True)
    seg_rec.pop(HASH_KEY, None)

    # 2 + 3. surface and volume mesh (recomputed together: the surface object feeds gmsh)
    geo_keys = ("inlet_xyz_mm", "smoothing_iterations", "cells_per_radius", "mesh_order")
    geo_params = {k: getattr(cfg, k) for k in geo_keys}
    if _jet_spread(cfg) is not None:  # (the one the mesh used; absent for Stokes, whose caches stay valid)
        geo_params["mesh_jet_spread"] = _jet_spread(cfg)
    if cfg.boundary_offset_mm:  # (absent when 0, so caches of earlier runs stay valid)
        geo_params["boundary_offset_mm"] = float(cfg.boundary_offset_mm)
    geo_params.update(cfg.perturbation_params())  # likewise: only the active perturbations
    for k, default in (("clip", "auto"), ("outlets_xyz_mm", None), ("min_branch_radius_mm", None),
                       ("flow_extension_radii", 0.0)):
        if getattr(cfg, k) != default:  # likewise
            geo_params[k] = getattr(cfg, k)
    geo_key = hash_params(seg_key, geo_params)
    msh = out / "mesh" / "mesh.msh"
    geo_artifacts = [msh, out / "surface.stl"]
    if cfg.perturbation_params().keys() - {"smoothing_method"}:
        geo_artifacts.append(out / "segmentation_perturbed.nii.gz")
    geo_rec = cache.done("geometry", geo_key, geo_artifacts)
    if geo_rec is None:
        cache.invalidate_from(["solve"])
        geo_rec = prog.stage("surface + volume mesh", lambda: timed("surface_and_mesh", lambda: _geometry(
            image, seg_rec, cfg, out)))
        cache.record("geometry", geo_key, geo_rec)
        prog.i += 1
    else:
        prog.stage("surface", lambda: None, skipped=True)
        prog.stage("volume mesh", lambda: None, skipped=True)
    geo_rec.pop(HASH_KEY, None)
    outlet_tags = sorted(int(t) for name, t in geo_rec["mesh"]["boundaries"].items()
                         if name.startswith("outlet") and isinstance(t, int))

    # 4. flow
    fractions = outlet_fractions(cfg, geo_rec["surface"])
    tag_of = {k: int(v) for k, v in geo_rec["mesh"]["boundaries"].items() if isinstance(v, int)}
    problem = _flow_problem_dict(cfg, outlet_tags, None if fractions is None else
                                 {tag_of[name]: f for name, f in fractions.items()})
    solve_key = hash_params(geo_key, problem, cfg.write_fields)
    solve_artifacts = [out / "flow.json"] + ([out / "fields" / "wall_pressure.npz"] if cfg.write_fields else [])
    flow = cache.done("solve", solve_key, solve_artifacts)
    if flow is None:
        flow = prog.stage(f"flow solve ({cfg.model}, {cfg.n_procs} rank(s))",
                          lambda: timed("solve", lambda: _solve(msh, problem, out, cfg)))
        cache.record("solve", solve_key, flow)
    else:
        prog.stage("flow solve", lambda: None, skipped=True)
    flow.pop(HASH_KEY, None)

    # 4b. numerical error: the same surface meshed coarser (or finer) and solved again (Richardson)
    est = None
    if cfg.error_estimate != "off":
        mode = cfg.error_estimate
        est_key = hash_params(solve_key, "richardson", RICHARDSON_RATIO, RICHARDSON_ORDER,
                              *([] if mode == "refine" else [mode]))  # (refine: the key of earlier runs)
        est = cache.done("error_estimate", est_key, [])
        if est is not None and not (out / ERROR_ESTIMATE_DIR.get(est.get("mode"), "?") / "flow.json").exists():
            est = None  # (its second solve is gone; a coarse estimate may have fallen back to a finer mesh)
        if est is None:
            def estimate():
                try:
                    return _error_estimate(cfg, problem, out, flow, geo_rec)
                except ValueError as exc:  # (MeshingError, a solve that fails on the other mesh, ...)
                    # the run's own ΔP stands; say why it has no estimate instead of failing
                    return {"mode": mode, "error": f"{type(exc).__name__}: {exc}",
                            "relative_error_estimate": None}
            est = prog.stage(f"numerical error estimate ({'coarser' if mode == 'coarse' else 'finer'} mesh)",
                             lambda: timed("error_estimate", estimate))
            if "error" not in est:  # (a failure is not cached: a rerun tries again)
                cache.record("error_estimate", est_key, est)
        else:
            prog.stage("numerical error estimate", lambda: None, skipped=True)
        est.pop(HASH_KEY, None)
        if "error" in est:
            prog.say(f"warning: no numerical error estimate: {est['error']}")

    # 5. results
    results = _assemble_results(cfg, image_path, image_hash, seg_rec, geo_rec, flow, timings, extra)
    if est is not None:
        results["numerical_error"] = est
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
        "perturbation": geo_rec.get("perturbation", []),
        "surface": geo_rec["surface"],
        "mesh": geo_rec["mesh"],
        "parameters": asdict(cfg),
        "timings_s": timings,
        "provenance": provenance(image=str(image_path), image_sha256=image_hash),
    }
    res["outlets"] = _outlet_table(geo_rec, flow, tag_to_name)
    if "mpi_launcher" in flow:  # (runs on several ranks: mpiexec, or srun inside a Slurm job)
        res["mpi_launcher"] = flow["mpi_launcher"]
    if "centerline" in geo_rec:
        res["centerline"] = geo_rec["centerline"]
    truth = seg_rec.get("metrics_vs_truth")
    if truth:  # the headline segmentation numbers, when a truth mask was given
        res["segmentation_dice"] = truth["dice"]
        res["segmentation_hd95_mm"] = truth["hd95_mm"]
    if extra:
        res["patient"] = extra
    return res


def _outlet_table(geo_rec: dict, flow: dict, tag_to_name: dict) -> list[dict]:
    """One row per outlet: cap geometry (mm), flow (m^3/s and fraction), mean pressure and drop (Pa)."""
    caps = {c["name"]: c for c in geo_rec["surface"]["caps"]}
    inflow = float(flow["inflow_m3_s"])
    rows = []
    for t, q in flow["outflow_m3_s"].items():
        name = tag_to_name.get(int(t), f"tag{t}")
        cap = caps.get(name, {})
        rows.append({
            "name": name, "tag": int(t),
            "radius_mm": cap.get("radius_mm"), "area_mm2": cap.get("area_mm2"),
            "centre_xyz_mm": cap.get("centre_xyz_mm"),
            "flow_m3_s": float(q), "flow_fraction": float(q) / inflow,
            "mean_pressure_Pa": float(flow["pressure_outlets_Pa"][t]),
            "pressure_drop_Pa": float(flow.get("pressure_drops_Pa", {}).get(t, float("nan"))),
        })
    return rows


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
    e = r.get("numerical_error")
    if e and e.get("relative_error_estimate") is not None:
        lines.append(f"numerical error       {100 * e['relative_error_estimate']:+.2f} % of ΔP (Richardson, "
                     f"{e.get('mode', 'refine')} mesh; extrapolated {e['pressure_drop_extrapolated_Pa']:.2f} Pa)")
    elif e and e.get("error"):
        lines.append(f"numerical error       not estimated: {e['error']}")
    for rep in r.get("perturbation", []):
        dv = rep.get("volume_change_percent")
        lines.append(f"perturbation          {rep.get('operator')}: volume "
                     + (f"{dv:+.2f} %" if isinstance(dv, (int, float)) else "n/a"))
    m = r["segmentation"].get("metrics_vs_truth")
    if m:
        lines.append(f"segmentation vs truth Dice {m['dice']:.4f}, HD95 {m['hd95_mm']:.3f} mm")
    p = r.get("patient", {})
    if "poiseuille_dp_healthy_Pa" in p:
        lines.append(f"(healthy tube, Poiseuille: {p['poiseuille_dp_healthy_Pa']:.2f} Pa)")
    lines.append("timings               " + ", ".join(f"{k} {v:.1f} s" for k, v in r["timings_s"].items()))
    return "\n".join(lines) + "\n"
