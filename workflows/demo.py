"""The built-in synthetic patient and the demo job (``digipat demo`` / ``make demo``).

The patient is a coronary-sized vessel (radius 2 mm) with a stenosis, imaged as a CT
angiogram (lumen ~400 HU over 40 HU tissue, scanner blur, noise) by
:func:`phantoms.vessels.make_angiogram`, so every result can be compared with known truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workflows._io import write_json_atomic
from workflows.vessel_flow import VesselFlowConfig, WorkflowError, run_vessel_flow

# image sizes of the synthetic patient: (shape z, y, x), spacing (dz, dy, dx) mm
SIZES = {
    "small": ((64, 40, 40), (0.5, 0.5, 0.5)),
    "medium": ((100, 64, 64), (0.4, 0.4, 0.4)),
    "large": ((256, 256, 256), (0.25, 0.25, 0.25)),
}


def write_synthetic_patient(out: Path, *, geometry: str = "straight", stenosis: float = 0.5,
                            radius_mm: float = 2.0, seed: int = 0, size: str = "medium") -> dict[str, Any]:
    """Write ``image.nii.gz``, ``truth_lumen.nii.gz`` and ``patient.json`` into ``out``."""
    from phantoms.vessels import Stenosis, make_angiogram
    from pipeline.image import write_image

    if size not in SIZES:
        raise WorkflowError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not 0.0 <= stenosis < 0.95:
        raise WorkflowError(f"stenosis (area reduction) must be in [0, 0.95), got {stenosis}")
    shape, spacing = SIZES[size]
    request = {"geometry": geometry, "size": size, "radius_mm": radius_mm,
               "stenosis_area_reduction": stenosis, "seed": seed}
    out = Path(out)
    previous = out / "patient.json"
    if previous.exists() and (out / "image.nii.gz").exists() and (out / "truth_lumen.nii.gz").exists():
        info = json.loads(previous.read_text())
        if all(info.get(k) == v for k, v in request.items()):
            return info  # same patient already written: keep the files (and their hashes)
    sten = Stenosis(area_reduction=stenosis, length_mm=6.0 * radius_mm / 2.0, position=0.5,
                    eccentricity=0.3) if stenosis > 0 else None
    ang = make_angiogram(geometry, shape_zyx=shape, spacing_mm=spacing, radius_mm=radius_mm,
                         stenosis=sten, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    write_image(ang.image, out / "image.nii.gz")
    write_image(ang.lumen, out / "truth_lumen.nii.gz")
    info = {
        "image": str(out / "image.nii.gz"),
        "truth_lumen": str(out / "truth_lumen.nii.gz"),
        **request,
        "generator_params": ang.params,
        "centrelines_xyz_mm": [c.tolist() for c in ang.centrelines_xyz_mm],
        "radii_mm": [r.tolist() for r in ang.radii_mm],
    }
    write_json_atomic(out / "patient.json", info)
    return info


def run_demo(out: Path, config: VesselFlowConfig | None = None, *, geometry: str = "straight",
             stenosis: float = 0.5, size: str = "medium", seed: int = 0, quiet: bool = False,
             force: bool = False) -> dict[str, Any]:
    """Synthetic patient → vessel flow. Writes ``out/patient/`` and ``out/flow/results.json``."""
    out = Path(out)
    info = write_synthetic_patient(out / "patient", geometry=geometry, stenosis=stenosis, seed=seed, size=size)
    extra = {k: info[k] for k in ("geometry", "size", "radius_mm", "stenosis_area_reduction", "seed")}
    return run_vessel_flow(info["image"], out / "flow", config or VesselFlowConfig(),
                           truth_path=info["truth_lumen"], quiet=quiet, force=force, extra=extra)


def _study_from_template(name: str, overrides: dict[str, dict], folder: Path):
    """Read a packaged study template, apply ``{section: {key: value}}`` overrides, write it
    next to its results (so the user can rerun or edit it) and return the parsed study."""
    import tomllib
    from importlib.resources import files

    from workflows.study import parse_study

    text = files("workflows").joinpath("data", name).read_text()
    data = tomllib.loads(text)
    for sec, kv in overrides.items():
        data.setdefault(sec, {}).update(kv)
    folder.mkdir(parents=True, exist_ok=True)
    proto = data.get("base", {}).get("protocol")
    if proto and files("workflows").joinpath("data", proto).is_file():  # a packaged protocol: copy it alongside
        (folder / proto).write_text(files("workflows").joinpath("data", proto).read_text())
    (folder / name).write_text(text if not overrides else
                               text + "\n# digipat demo overrides: " + json.dumps(overrides) + "\n")
    return parse_study(data, folder)


def run_full_demo(out: Path, config: VesselFlowConfig | None = None, *, geometry: str = "straight",
                  stenosis: float = 0.5, size: str = "medium", seed: int = 0, quiet: bool = False,
                  force: bool = False, workers: int = 2, age: str = "5y", dose_histories: int | None = None,
                  flow_samples: int | None = None, pdf: bool = True, quick: bool = False) -> dict[str, Any]:
    """The whole digital patient: vessel → flow, age phantom → CT dose, sensitivity studies of
    both, one report. Writes ``out/flow/``, ``out/studies/{flow,dose}/``, ``out/report.html``,
    ``out/report.pdf`` and ``out/demo.json``; finished stages and cases are reused on rerun.

    ``quick`` is a smoke run (about 1.5 minutes on 2 cores with a small Stokes vessel): two
    Monte Carlo samples, no mesh-refinement case, 5e5 photons per dose case.
    """
    import time

    from workflows.study import run_study
    from workflows.study_report import write_report

    out = Path(out)
    say = (lambda t: None) if quiet else (lambda t: print(t, flush=True))
    t0 = time.perf_counter()
    say("[demo 1/4] vessel: synthetic CT angiogram -> segmentation -> surface -> mesh -> blood flow")
    flow = run_demo(out, config, geometry=geometry, stenosis=stenosis, size=size, seed=seed, quiet=quiet,
                    force=force)
    say(f"[demo 1/4] pressure drop {flow['pressure_drop_mmHg']:.3g} mmHg, FFR-like {flow['ffr_like']:.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
    say("[demo 2/4] sensitivity of the vessel path to segmentation error")
    fo: dict[str, dict] = {"base": {"synthetic": geometry, "stenosis": stenosis, "seed": seed},
                           "run": {"workers": workers}}
    if flow_samples is not None:
        fo["design"] = {"n": flow_samples}
    if quick:
        fo["design"] = {"n": flow_samples or 2}
        fo["numerics"] = {"mesh_cells_per_radius": []}
    fstudy = _study_from_template("demo_flow_study.toml", fo, out / "studies")
    fsum = run_study(fstudy, out / "studies" / "flow", quiet=quiet, report=False)
    say(f"[demo 2/4] done ({time.perf_counter() - t0:.0f} s)")
    say(f"[demo 3/4] {age} phantom -> CT organ doses, and their sensitivity to contour error")
    do: dict[str, dict] = {"base": {"age": age}, "run": {"workers": workers}}
    if dose_histories is not None or quick:
        do["base"]["histories"] = int(dose_histories or 500_000)
    dstudy = _study_from_template("demo_dose_study.toml", do, out / "studies")
    dsum = run_study(dstudy, out / "studies" / "dose", quiet=quiet, report=False)
    say(f"[demo 3/4] done ({time.perf_counter() - t0:.0f} s)")
    say("[demo 4/4] report")
    intro = (f"The built-in digital patient: a coronary-like vessel (radius 2 mm, {100 * stenosis:.0f} % area "
             f"stenosis) imaged by a synthetic CT angiogram, and a {age} stylised ICRP 89 phantom scanned with a "
             f"generic paediatric helical protocol (100 kVp). The vessel path alone (Navier-Stokes on the {size} image) gave a "
             f"pressure drop of {flow['pressure_drop_mmHg']:.3g} mmHg and an FFR-like ratio of "
             f"{flow['ffr_like']:.3f} ({out / 'flow' / 'results.json'}). Below, each path is perturbed the way "
             "segmentation errs, and the report says how far the results move.")
    paths = write_report([fsum, dsum], out, title="digipat: the digital patient and how far to trust it",
                         intro=intro, pdf=pdf)
    summary = {"flow": str(out / "flow" / "results.json"), "flow_study": str(out / "studies" / "flow" / "study.json"),
               "dose_study": str(out / "studies" / "dose" / "study.json"), "report_html": str(paths["html"]),
               "report_pdf": str(paths["pdf"]) if paths.get("pdf") else None,
               "wall_time_s": time.perf_counter() - t0}
    write_json_atomic(out / "demo.json", summary)
    say(f"[demo] finished in {summary['wall_time_s']:.0f} s")
    say(f"[demo] report: {paths['html']}" + (f" (PDF: {paths['pdf']})" if paths.get("pdf") else ""))
    return {**summary, "flow_results": flow, "flow_summary": fsum, "dose_summary": dsum}
