"""The ``digipat`` command line.

Subcommands
-----------
``digipat flow IMAGE --flow-rate-ml-s Q --out DIR``
    CT angiogram → lumen → surface → tagged mesh → blood flow; writes ``DIR/results.json``.
``digipat synth --out DIR``
    Writes a synthetic CT angiogram with known truth (image, lumen mask, centreline).
``digipat demo [--out DIR]``
    The main job on the built-in synthetic patient.
``digipat dose SCENARIO.toml --out DIR``
    Monte Carlo photon transport described by a scenario file; writes ``DIR/results.json``,
    ``DIR/dose.nii.gz`` and ``DIR/organs.csv`` (see :mod:`workflows.ct_dose`).

Errors in the input (missing file, 2-D image, no vessel, non-watertight surface, solver
divergence, ...) print ``digipat: error: ...`` and exit with status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workflows.vessel_flow import VesselFlowConfig


def _add_flow_options(p: argparse.ArgumentParser) -> None:
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
                   help="a world point (mm) near the inlet opening (default: the largest opening)")
    g.add_argument("--segmentation", choices=("auto", "otsu", "region-grow"), default=d.segmentation_method,
                   help=f"lumen segmentation method (default {d.segmentation_method})")
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
    g.add_argument("--mesh-order", type=int, choices=(1, 2), default=d.mesh_order,
                   help="geometric order of the tetrahedra (2: curved wall; default 1)")
    g = p.add_argument_group("run")
    g.add_argument("--force", action="store_true", help="recompute every stage (default: reuse finished ones)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.add_argument("--json", action="store_true", help="print results.json to standard output")


def _petsc_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--petsc-option expects KEY=VALUE, got {item!r}")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def _config_from_args(a: argparse.Namespace) -> VesselFlowConfig:
    return VesselFlowConfig(
        flow_rate_ml_s=a.flow_rate_ml_s,
        seed_xyz_mm=tuple(a.seed_mm) if a.seed_mm else None,
        inlet_xyz_mm=tuple(a.inlet_mm) if a.inlet_mm else None,
        segmentation_method=a.segmentation,
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
        model=a.model,
        density_kg_m3=a.density_kg_m3,
        viscosity_Pa_s=a.viscosity_pa_s,
        proximal_pressure_Pa=a.proximal_pressure_pa,
        solver=a.solver,
        newton_max_iterations=a.newton_max_iterations,
        petsc_options=_petsc_options(a.petsc_option),
        n_procs=a.n_procs,
        write_fields=not a.no_fields,
    )


def _finish(results: dict, out: Path, a: argparse.Namespace) -> None:
    from workflows.vessel_flow import summary_text

    if a.json:
        print(json.dumps(results, indent=2))
    elif not a.quiet:
        print(summary_text(results), end="")
        print(f"results: {out / 'results.json'}")


def cmd_flow(a: argparse.Namespace) -> int:
    from workflows.vessel_flow import run_vessel_flow

    cfg = _config_from_args(a)
    out = Path(a.out)
    results = run_vessel_flow(a.image, out, cfg, truth_path=a.truth, quiet=a.quiet or a.json, force=a.force)
    _finish(results, out, a)
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from workflows.demo import write_synthetic_patient

    info = write_synthetic_patient(Path(a.out), geometry=a.geometry, stenosis=a.stenosis,
                                   radius_mm=a.radius_mm, seed=a.seed, size=a.size)
    print(json.dumps(info, indent=2) if a.json else f"synthetic angiogram: {info['image']}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from workflows.demo import run_demo, run_full_demo

    cfg = _config_from_args(a)
    out = Path(a.out)
    if a.flow_only:
        results = run_demo(out, cfg, geometry=a.geometry, stenosis=a.stenosis, size=a.size, seed=a.seed,
                           quiet=a.quiet or a.json, force=a.force)
        _finish(results, out / "flow", a)
        return 0
    res = run_full_demo(out, cfg, geometry=a.geometry, stenosis=a.stenosis, size=a.size, seed=a.seed,
                        quiet=a.quiet or a.json, force=a.force, workers=a.workers, age=a.age, quick=a.quick)
    if a.json:
        print(json.dumps({k: v for k, v in res.items() if not k.endswith("_summary")}, indent=2, default=str))
    elif a.quiet:
        print(res["report_html"])
    return 0


def cmd_dose(a: argparse.Namespace) -> int:
    from workflows.ct_dose import run_dose

    out = Path(a.out)
    results = run_dose(a.scenario, out, threads=a.threads, force=a.force, quiet=a.quiet or a.json)
    if a.json:
        print(json.dumps(results, indent=2))
    elif not a.quiet and results.get("stage") == "patient_dose":
        unit = results["units"]["dose"]
        print(f"{'organ':<28} {'mass g':>9} {'dose':>10} {'±2σ':>9} {'/CTDIvol':>9}  ({unit})")
        for r in sorted(results["organs"], key=lambda r: -(r.get("dose_mGy") or r["dose_Gy_per_photon"])):
            d = r.get("dose_mGy", r["dose_Gy_per_photon"])
            s = r.get("dose_sigma_mGy", r["dose_sigma_Gy_per_photon"])
            pc = r.get("dose_per_ctdivol")
            print(f"{r['organ']:<28} {r['mass_g']:9.4g} {d:10.4g} {2 * s:9.2g} "
                  f"{pc if pc is not None else float('nan'):9.3g}{'  (σ > 10 %)' if r['sigma_flag'] else ''}")
        print(f"CTDIvol {results['ctdivol_mGy'] or float('nan'):.3g} mGy "
              f"({results['ctdi_phantom_diameter_cm']} cm phantom); effective dose "
              f"{results['effective_dose_mSv'] or float('nan'):.3g} ± "
              f"{2 * (results['effective_dose_sigma_mSv'] or float('nan')):.2g} mSv (2σ), covering "
              f"{results['effective_dose_detail']['weight_covered']:.2f} of Σw_T")
        print(f"results: {out / 'results.json'}")
    elif not a.quiet:
        for lab, r in results["labels"].items():
            print(f"label {lab:>4} {r['tissue_name']:<20} dose {r['dose_Gy_per_photon']:.4e} "
                  f"± {r['dose_sigma_Gy_per_photon'] or float('nan'):.2e} Gy/photon")
        print(f"results: {out / 'results.json'}")
    return 0


def cmd_study_run(a: argparse.Namespace) -> int:
    from workflows.study import run_study

    cases = [c.strip() for c in a.cases.split(",") if c.strip()] if a.cases else None
    res = run_study(a.study_file, a.out, quiet=a.quiet or a.json, cases=cases, analyse=not a.no_analysis,
                    report=not a.no_report, plan_only=a.plan_only, retry_failed=a.retry_failed)
    if a.plan_only and not (a.quiet or a.json):
        for c in res["cases"]:
            moved = ", ".join(f"{k}={v:g}" for k, v in c["params"].items())
            print(f"{c['id']}  {c['group']:<8} {moved}")
    if a.json:
        print(json.dumps(res, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="digipat",
        description="digipat: a segmented medical image becomes a digital patient "
                    "(vessel blood flow with FEniCSx; CT organ dose with a Monte Carlo photon-transport engine).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    f = sub.add_parser("flow", help="CT angiogram -> segmentation -> mesh -> blood flow",
                       description="Run the whole vessel path on IMAGE and write OUT/results.json "
                                   "(pressure_drop_Pa, inflow_m3_s, outflow_m3_s, wss_mean_Pa, "
                                   "wss_max_Pa, n_dofs, ...).")
    f.add_argument("image", help="3-D CT angiogram in HU: NIfTI, NRRD, MHA, or a DICOM series folder")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--truth", help="ground-truth lumen mask on the same grid (reports Dice and HD95)")
    _add_flow_options(f)
    f.set_defaults(func=cmd_flow)

    geometries = ("straight", "curved", "bifurcation")
    s = sub.add_parser("synth", help="write a synthetic CT angiogram with known truth")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--geometry", choices=geometries, default="straight")
    s.add_argument("--stenosis", type=float, default=0.5, help="area reduction 0..0.9 (0: none; default 0.5)")
    s.add_argument("--radius-mm", type=float, default=2.0, help="lumen radius in mm (default 2)")
    s.add_argument("--size", choices=("small", "medium", "large"), default="medium",
                   help="image size: small 64x48x48, medium 128x80x80, large 256^3")
    s.add_argument("--seed", type=int, default=0, help="random seed for the noise")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_synth)

    d = sub.add_parser("demo", help="the whole digital patient on built-in data, ending in a report",
                       description="The built-in digital patient: synthetic stenosed coronary-like vessel -> "
                                   "segmentation -> mesh -> Navier-Stokes (OUT/flow/), an age-specific phantom -> "
                                   "CT organ doses, a small sensitivity study of both (OUT/studies/), and "
                                   "OUT/report.html + OUT/report.pdf. Finished stages are reused on rerun.")
    d.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    d.add_argument("--geometry", choices=geometries, default="straight")
    d.add_argument("--stenosis", type=float, default=0.5, help="area reduction 0..0.9 (default 0.5)")
    d.add_argument("--size", choices=("small", "medium", "large"), default="medium")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--age", choices=("newborn", "1y", "5y", "10y", "15y", "adult"), default="5y",
                   help="age of the dose phantom (default 5y)")
    d.add_argument("--workers", type=int, default=2, help="study cases run in parallel (default 2)")
    d.add_argument("--quick", action="store_true",
                   help="a smoke run of the whole demo: fewer samples, no mesh-refinement case, fewer photons "
                        "(with --size small --model stokes about 1.5 minutes on 2 cores)")
    d.add_argument("--flow-only", action="store_true",
                   help="only the vessel flow job (OUT/flow/), as before the studies were added")
    _add_flow_options(d)
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("dose", help="Monte Carlo x-ray dose from a scenario file (TOML)",
                       description="Transport photons as described by SCENARIO (TOML: [phantom], [source], "
                                   "[physics], [run]) and write OUT/results.json (per label "
                                   "edep_eV_per_photon, edep_sigma_eV_per_photon, dose_Gy_per_photon; "
                                   "escaped energy; histories per second), OUT/dose.nii.gz and OUT/organs.csv.")
    x.add_argument("scenario", help="scenario file (.toml); relative paths in it are resolved against its folder")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--threads", type=int, help="Numba threads (default: [run] threads, else all cores)")
    x.add_argument("--force", action="store_true", help="rerun even if OUT holds a run of the same inputs")
    x.add_argument("--quiet", action="store_true", help="no progress lines")
    x.add_argument("--json", action="store_true", help="print results.json to standard output")
    x.set_defaults(func=cmd_dose)

    st = sub.add_parser("study", help="geometric sensitivity studies (run STUDY_FILE)")
    st_sub = st.add_subparsers(dest="study_command", metavar="ACTION")
    st_sub.required = True
    sr = st_sub.add_parser("run", help="run or resume a study (TOML); finished cases are skipped",
                           description="Run the cases of STUDY_FILE (workflows/study.py documents the format: "
                                       "flow or dose path, parameters with ranges or distributions, OAT / Morris / "
                                       "Sobol / Monte Carlo design) into OUT/cases/, then write OUT/study.json "
                                       "(elasticities, tornado data, Sobol or Morris indices, output distributions, "
                                       "decision-flip probabilities, numerical uncertainty) and OUT/report.html and "
                                       "OUT/report.pdf. A rerun skips finished cases.")
    sr.add_argument("study_file", help="study file (.toml)")
    sr.add_argument("--out", required=True, help="output folder")
    sr.add_argument("--cases", metavar="IDS",
                    help="run only these comma-separated case ids (e.g. one batch-array task: case_007); "
                         "OUT/plan.json lists them")
    sr.add_argument("--no-analysis", action="store_true", help="run the cases only (no study.json, no report)")
    sr.add_argument("--no-report", action="store_true", help="write study.json but no HTML/PDF report")
    sr.add_argument("--plan-only", action="store_true",
                    help="write OUT/plan.json, prepare the shared inputs and list the cases (ids, inputs) "
                         "without running any (run this once before batch-array tasks)")
    sr.add_argument("--retry-failed", action="store_true",
                    help="run again the cases recorded as failed (their results.json holds an error)")
    sr.add_argument("--quiet", action="store_true")
    sr.add_argument("--json", action="store_true", help="print study.json")
    sr.set_defaults(func=cmd_study_run)

    from workflows import ctdi, phantom_cmd

    phantom_cmd.add_parser(sub)
    ctdi.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except ValueError as exc:  # every digipat input error derives from ValueError
        print(f"digipat: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("digipat: interrupted (finished stages are kept; rerun to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
