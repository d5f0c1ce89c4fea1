"""The demo job (``digipat demo`` / ``make demo``): the whole digital patient, end to end.

1. the synthetic patient (:mod:`phantoms.synthetic_patient`) → vessel flow (:mod:`workflows.flow`);
2. a sensitivity study of the vessel path and 3. an age phantom → CT organ doses and its
   study (:mod:`workflows.study`, from the templates in ``workflows/data``);
4. one combined report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from phantoms.synthetic_patient import write_synthetic_patient
from workflows.common import write_json_atomic, write_text_atomic
from workflows.flow.cli import GEOMETRIES, add_flow_options, config_from_args, print_flow_results
from workflows.flow.vessel_flow import VesselFlowConfig, run_vessel_flow
from workflows.study.report import write_report
from workflows.study.runner import parse_study
from workflows.study.runner import run_study


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


    text = files("workflows").joinpath("data", name).read_text()
    data = tomllib.loads(text)
    for sec, kv in overrides.items():
        data.setdefault(sec, {}).update(kv)
    folder.mkdir(parents=True, exist_ok=True)
    proto = data.get("base", {}).get("protocol")
    if proto and files("workflows").joinpath("data", proto).is_file():  # a packaged protocol: copy it alongside
        write_text_atomic(folder / proto, files("workflows").joinpath("data", proto).read_text())
    write_text_atomic(folder / name, text if not overrides else
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


    out = Path(out)
    say = (lambda t: None) if quiet else (lambda t: print(t, flush=True))
    t0 = time.perf_counter()
    say("[demo 1/4] vessel: synthetic CT angiogram -> segmentation -> surface -> mesh -> blood flow")
    flow = run_demo(out, config, geometry=geometry, stenosis=stenosis, size=size, seed=seed, quiet=quiet,
                    force=force)
    ne = (flow.get("numerical_error") or {}).get("relative_error_estimate")
    say(f"[demo 1/4] pressure drop {flow['pressure_drop_mmHg']:.3g} mmHg"
        + (f" (numerical error {100 * ne:+.1f} %, Richardson)" if ne is not None else "")
        + f", FFR-like {flow['ffr_like']:.3f} ({time.perf_counter() - t0:.0f} s)")
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


# ----------------------------------------------------------------------------- command line
def cmd_demo(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    out = Path(a.out)
    if a.flow_only:
        results = run_demo(out, cfg, geometry=a.geometry, stenosis=a.stenosis, size=a.size, seed=a.seed,
                           quiet=a.quiet or a.json, force=a.force)
        print_flow_results(results, out / "flow", a)
        return 0
    res = run_full_demo(out, cfg, geometry=a.geometry, stenosis=a.stenosis, size=a.size, seed=a.seed,
                        quiet=a.quiet or a.json, force=a.force, workers=a.workers, age=a.age, quick=a.quick)
    if a.json:
        print(json.dumps({k: v for k, v in res.items() if not k.endswith("_summary")}, indent=2, default=str))
    elif a.quiet:
        print(res["report_html"])
    return 0


def register(sub) -> None:
    """Add ``demo`` to the ``digipat`` subparsers."""
    d = sub.add_parser("demo", help="the whole digital patient on built-in data, ending in a report",
                       description="The built-in digital patient: synthetic stenosed coronary-like vessel -> "
                                   "segmentation -> mesh -> Navier-Stokes (OUT/flow/), an age-specific phantom -> "
                                   "CT organ doses, a small sensitivity study of both (OUT/studies/), and "
                                   "OUT/report.html + OUT/report.pdf. Finished stages are reused on rerun.")
    d.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    d.add_argument("--geometry", choices=GEOMETRIES, default="straight")
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
    add_flow_options(d)
    d.set_defaults(func=cmd_demo)
