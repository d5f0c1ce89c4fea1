"""``digipat flow`` (image → lumen → surface → mesh → blood flow) and ``digipat synth``.

:func:`register` adds both subcommands; :func:`add_flow_options` and :func:`config_from_args`
are shared with ``digipat demo``, which runs the same vessel path on the synthetic patient.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.surface import FLOW_EXTENSION_RADII_DEFAULT
from workflows.flow.vessel_flow import VesselFlowConfig, run_vessel_flow, summary_text

__all__ = ["register", "add_flow_options", "config_from_args", "print_flow_results", "GEOMETRIES"]

#: Shapes of the synthetic patient (``phantoms.vessels``).
GEOMETRIES = ("straight", "curved", "bifurcation")


def add_flow_options(p: argparse.ArgumentParser) -> None:
    d = VesselFlowConfig()
    g = p.add_argument_group("flow")
    g.add_argument("--flow-rate-ml-s", type=float, default=d.flow_rate_ml_s, metavar="Q",
                   help=f"inflow rate in ml/s (default {d.flow_rate_ml_s})")
    g.add_argument("--model", choices=("stokes", "navier-stokes"), default=d.model,
                   help=f"flow equations (default {d.model})")
    g.add_argument("--density-kg-m3", type=float, default=d.density_kg_m3,
                   help=f"blood density (default {d.density_kg_m3})")
    g.add_argument("--viscosity-pa-s", type=float, default=d.viscosity_Pa_s,
                   help=f"blood dynamic viscosity in Pa s (default {d.viscosity_Pa_s})")
    g.add_argument("--proximal-pressure-pa", type=float, default=d.proximal_pressure_Pa,
                   help="proximal (aortic) pressure for the FFR-like ratio Pd/Pa (default 13332 Pa = 100 mmHg)")
    g.add_argument("--solver", choices=("direct", "iterative"), default=d.solver,
                   help="linear solver: direct (MUMPS) or iterative (Krylov + GAMG, Stokes only) "
                        f"(default {d.solver})")
    g.add_argument("--newton-max-iterations", type=int, default=d.newton_max_iterations,
                   help=f"Newton iteration limit for Navier-Stokes (default {d.newton_max_iterations})")
    g.add_argument("--petsc-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra PETSc option passed to the flow solver, e.g. ksp_rtol=1e-10 (repeatable)")
    g.add_argument("--np", dest="n_procs", type=int, default=d.n_procs,
                   help="MPI ranks for the flow solve (runs mpiexec -n NP; default 1)")
    g.add_argument("--no-fields", action="store_true", help="do not write ParaView field files")
    g = p.add_argument_group("geometry")
    g.add_argument("--seed-mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="a world point (mm) inside the vessel to segment (default: the largest "
                        "bright component crossing the image)")
    g.add_argument("--inlet-mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="the inlet: with centreline clipping the world point (mm) on the vessel where it is cut "
                        "(everything upstream goes); with image-face crops the opening nearest it "
                        "(default: the widest end / the largest opening)")
    g.add_argument("--outlet-mm", type=float, nargs=3, action="append", metavar=("X", "Y", "Z"),
                   help="an outlet: the world point (mm) on a branch where it is cut (repeatable; default: every "
                        "other vessel end wider than --min-branch-radius-mm)")
    g.add_argument("--min-branch-radius-mm", type=float,
                   help="branches thinner than this are closed (wall), not outlets (default: the larger of two "
                        "voxels and a quarter of the inlet radius; not used when the inlet and outlets are named)")
    g.add_argument("--clip", choices=("auto", "faces", "centreline", "tracked"), default=d.clip,
                   help="where the ends are cut: perpendicular to the centreline, at the image faces, 'tracked' "
                        "(the vessel through --seed-mm, or the most tube-like wide one, is followed both ways: "
                        "inlet before it widens, outlets past its first split into large daughters), or auto "
                        "(centreline when the lumen reaches fewer than two image faces or outlets are named; "
                        "image faces otherwise, then 'tracked' if that model fails; "
                        f"default {d.clip})")
    g.add_argument("--outlet-flow-fractions", nargs="+", metavar="F",
                   help="split the inflow between the outlets: 'murray' (Q ~ r^3 of each outlet cap), one "
                        "fraction per outlet (outlet1 = largest first, summing to 1), or 'traction' (the default: "
                        "zero-traction outlets, the flow divides by itself)")
    g.add_argument("--flow-extension-radii", type=float, nargs="?", const=FLOW_EXTENSION_RADII_DEFAULT,
                   default=d.flow_extension_radii, metavar="N",
                   help="add a straight, circular flow extension N cap radii long to the inlet and every outlet "
                        "(VMTK's flow extensions; the flag alone gives VaMPy's "
                        f"{FLOW_EXTENSION_RADII_DEFAULT:g}); the caps, the pressure drop and the outlet pressures "
                        "are then at the extensions' ends (default 0: none)")
    g.add_argument("--segmentation", choices=("auto", "otsu", "region-grow", "unet"), default=d.segmentation_method,
                   help="lumen segmentation method; unet: the learned segmenter (--unet-model, default the model "
                        f"shipped with digipat) (default {d.segmentation_method})")
    g.add_argument("--unet-model", metavar="DIR",
                   help="model folder for --segmentation unet (made by 'digipat segment train'; default: the shipped "
                        "vessel model). (Named --unet-model: --model is the flow model.)")
    g.add_argument("--probability-level", type=float, metavar="P",
                   help="with --segmentation unet: take the wall at this level (0..1) of the network's lumen "
                        "probability instead of the image's half-maximum (the model's own uncertainty; a study "
                        "parameter, probability_level)")
    g.add_argument("--probability-sample-mm", type=float, default=0.0, metavar="L",
                   help="with --segmentation unet: draw the wall at random from the network's lumen probability, "
                        "spatially correlated over L mm (each voxel lumen with its probability; a study parameter, "
                        "probability_sample_mm; default 0: no sample)")
    g.add_argument("--probability-sample-seed", type=int, default=0, metavar="S",
                   help="seed of that sample (default 0)")
    g.add_argument("--modality", choices=("auto", "ct", "mr"), default=d.modality,
                   help="ct: CT angiogram in HU; mr: MR angiogram (signal in arbitrary units, levels measured from "
                        "the image, no calcium bound); auto: the DICOM Modality tag, else CT when the image holds "
                        "negative values "
                        f"(default {d.modality})")
    g.add_argument("--lower-hu", type=float, help="lumen threshold in HU (default: half-maximum, automatic)")
    g.add_argument("--upper-hu", type=float, help="upper HU bound excluding calcium (default: automatic)")
    g.add_argument("--smoothing-iterations", type=int, default=d.smoothing_iterations,
                   help=f"Taubin smoothing iterations of the surface (default {d.smoothing_iterations})")
    g.add_argument("--boundary-offset-mm", type=float, default=0.0,
                   help="move the reconstructed wall outwards (>0) or inwards (<0) by this many mm "
                        "(geometric sensitivity studies; default 0)")
    g.add_argument("--smoothing-method", choices=("taubin", "laplacian"), default=d.smoothing_method,
                   help="surface smoothing filter: taubin (volume-preserving) or laplacian (shrinks; "
                        f"sensitivity studies) (default {d.smoothing_method})")
    g = p.add_argument_group("segmentation perturbations (geometric sensitivity; all off by default)")
    g.add_argument("--threshold-shift-hu", type=float, default=0.0,
                   help="move the segmentation threshold / surface iso-level by this many HU")
    g.add_argument("--resample-voxel-mm", type=float, default=0.0,
                   help="resample the segmentation (and image) to this isotropic voxel size first (0: off)")
    g.add_argument("--boundary-noise-mm", type=float, default=0.0,
                   help="amplitude (RMS) of spatially correlated random wall displacement (0: off)")
    g.add_argument("--boundary-noise-correlation-mm", type=float, default=d.boundary_noise_correlation_mm,
                   help=f"correlation length of the wall noise (default {d.boundary_noise_correlation_mm})")
    g.add_argument("--boundary-noise-seed", type=int, default=0, help="seed of the wall noise (default 0)")
    g.add_argument("--local-offset-mm", type=float, default=0.0,
                   help="move the wall by this many mm only inside a sphere (e.g. the stenosis; needs --local-centre-mm)")
    g.add_argument("--local-centre-mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="world centre (mm) of the local perturbation")
    g.add_argument("--local-radius-mm", type=float, default=d.local_radius_mm,
                   help=f"radius of the local perturbation sphere (default {d.local_radius_mm})")
    g = p.add_argument_group("mesh")
    g.add_argument("--cells-per-radius", type=float, default=d.cells_per_radius,
                   help="mesh resolution: element size = local radius / this (default "
                        f"{d.cells_per_radius})")
    g.add_argument("--jet-spread", type=float, default=d.mesh_jet_spread,
                   help="Navier-Stokes meshes keep a narrowing's element size along its jet downstream, "
                        "widening by this much per unit length (default "
                        f"{d.mesh_jet_spread}; 0: size from the local radius only)")
    g.add_argument("--mesh-order", type=int, choices=(1, 2), default=d.mesh_order,
                   help="geometric order of the tetrahedra (2: curved wall; default 1)")
    g.add_argument("--error-estimate", nargs="?", choices=("coarse", "refine", "off"), const="refine",
                   default=d.error_estimate, metavar="{coarse,refine,off}",
                   help="numerical error of the pressure drop in results.json numerical_error, by Richardson "
                        "extrapolation from a second mesh of the same surface: 'coarse' (default) 1.5 times "
                        "coarser, about 0.3 times the cells, so the estimate is of this run's own ΔP; 'refine' "
                        "(also the bare flag, as in earlier releases) 1.5 times finer, 3.2 times the cells, "
                        "several times the cost; 'off' none")
    g.add_argument("--no-error-estimate", dest="error_estimate", action="store_const", const="off",
                   help="same as --error-estimate off")
    g = p.add_argument_group("run")
    g.add_argument("--force", action="store_true", help="recompute every stage (default: reuse finished ones)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.add_argument("--json", action="store_true", help="print results.json to standard output")


def petsc_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--petsc-option expects KEY=VALUE, got {item!r}")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def config_from_args(a: argparse.Namespace) -> VesselFlowConfig:
    return VesselFlowConfig(
        flow_rate_ml_s=a.flow_rate_ml_s,
        seed_xyz_mm=tuple(a.seed_mm) if a.seed_mm else None,
        inlet_xyz_mm=tuple(a.inlet_mm) if a.inlet_mm else None,
        segmentation_method=a.segmentation,
        unet_model=a.unet_model,
        probability_level=a.probability_level,
        probability_sample_mm=a.probability_sample_mm,
        probability_sample_seed=a.probability_sample_seed,
        modality=a.modality,
        lower_hu=a.lower_hu,
        upper_hu=a.upper_hu,
        smoothing_iterations=a.smoothing_iterations,
        cells_per_radius=a.cells_per_radius,
        boundary_offset_mm=a.boundary_offset_mm,
        smoothing_method=a.smoothing_method,
        threshold_shift_hu=a.threshold_shift_hu,
        resample_voxel_mm=a.resample_voxel_mm,
        boundary_noise_mm=a.boundary_noise_mm,
        boundary_noise_correlation_mm=a.boundary_noise_correlation_mm,
        boundary_noise_seed=a.boundary_noise_seed,
        local_offset_mm=a.local_offset_mm,
        local_centre_xyz_mm=tuple(a.local_centre_mm) if a.local_centre_mm else None,
        local_radius_mm=a.local_radius_mm,
        mesh_order=a.mesh_order,
        mesh_jet_spread=a.jet_spread,
        error_estimate=a.error_estimate,
        model=a.model,
        density_kg_m3=a.density_kg_m3,
        viscosity_Pa_s=a.viscosity_pa_s,
        proximal_pressure_Pa=a.proximal_pressure_pa,
        solver=a.solver,
        newton_max_iterations=a.newton_max_iterations,
        petsc_options=petsc_options(a.petsc_option),
        n_procs=a.n_procs,
        write_fields=not a.no_fields,
        clip=a.clip,
        outlets_xyz_mm=tuple(tuple(p) for p in a.outlet_mm) if a.outlet_mm else None,
        min_branch_radius_mm=a.min_branch_radius_mm,
        outlet_flow_split=_flow_split(a.outlet_flow_fractions),
        flow_extension_radii=a.flow_extension_radii,
    )


def _flow_split(values):
    if not values:
        return "traction"
    if len(values) == 1 and values[0].lower() in ("murray", "traction"):
        return values[0].lower()
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--outlet-flow-fractions takes 'murray' or numbers, got {' '.join(values)}") from None


def print_flow_results(results: dict, out: Path, a: argparse.Namespace) -> None:
    if a.json:
        print(json.dumps(results, indent=2))
    elif not a.quiet:
        print(summary_text(results), end="")
        print(f"results: {out / 'results.json'}")


def cmd_flow(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    out = Path(a.out)
    results = run_vessel_flow(a.image, out, cfg, truth_path=a.truth, quiet=a.quiet or a.json, force=a.force)
    print_flow_results(results, out, a)
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from phantoms.synthetic_patient import write_synthetic_patient

    info = write_synthetic_patient(Path(a.out), geometry=a.geometry, stenosis=a.stenosis,
                                   radius_mm=a.radius_mm, seed=a.seed, size=a.size)
    print(json.dumps(info, indent=2) if a.json else f"synthetic angiogram: {info['image']}")
    return 0


def register(sub) -> None:
    """Add ``flow`` and ``synth`` to the ``digipat`` subparsers."""
    f = sub.add_parser("flow", help="CT angiogram -> segmentation -> mesh -> blood flow",
                       description="Run the whole vessel path on IMAGE and write OUT/results.json "
                                   "(pressure_drop_Pa, inflow_m3_s, outflow_m3_s, wss_mean_Pa, "
                                   "wss_max_Pa, n_dofs, ...).")
    f.add_argument("image", help="3-D CT angiogram in HU: NIfTI, NRRD, MHA, or a DICOM series folder")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--truth", help="ground-truth lumen mask on the same grid (reports Dice and HD95)")
    add_flow_options(f)
    f.set_defaults(func=cmd_flow)

    s = sub.add_parser("synth", help="write a synthetic CT angiogram with known truth")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--geometry", choices=GEOMETRIES, default="straight")
    s.add_argument("--stenosis", type=float, default=0.5, help="area reduction 0..0.9 (0: none; default 0.5)")
    s.add_argument("--radius-mm", type=float, default=2.0, help="lumen radius in mm (default 2)")
    s.add_argument("--size", choices=("small", "medium", "large"), default="medium",
                   help="image size: small 64x48x48, medium 128x80x80, large 256^3")
    s.add_argument("--seed", type=int, default=0, help="random seed for the noise")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_synth)

