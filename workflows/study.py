"""Geometric sensitivity studies of the vessel path: a study file, a resumable runner, elasticities.

A study (TOML) names the base case, the perturbation and the design::

    [study]
    name = "radius sensitivity"
    output = "pressure_drop_Pa"          # a key of the vessel workflow's results.json
    [base]
    synthetic = "straight"               # straight | curved | bifurcation (built-in patient), or
    # image = "cta.nii.gz"               # the user's CT angiogram (relative to this file)
    stenosis = 0.0                       # synthetic patients only
    size = "small"                       # small | medium | large
    flow_rate_ml_s = 1.0
    model = "stokes"                     # stokes | navier-stokes
    [design]
    type = "oat"                         # one-at-a-time sweep
    parameter = "boundary_offset_mm"     # the wall offset of digipat flow (mm)
    values = [-0.1, -0.05, 0.0, 0.05, 0.1]
    [run]
    workers = 1                          # cases run in parallel (processes)

Every case runs the vessel workflow in ``OUT/cases/case_NNN`` and is finished when its
``results.json`` exists (written last and atomically by the workflow), so a rerun skips
finished cases and a killed study loses at most the cases in flight. ``OUT/study.json``
(written last) and ``OUT/report.html`` (self-contained) hold each case's input and output and, for ``boundary_offset_mm``, the
elasticity d ln Q / d ln r of the output to the mean lumen radius (r = r₀ + δ, with r₀ the
equivalent radius of the unperturbed lumen, √(V/(πL)) from the surface report, or the
synthetic patient's radius), with its confidence interval. The case list is explicit
(:func:`plan_cases`), so a later version can hand the same cases to Slurm.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping

from workflows._io import hash_params, provenance, write_json_atomic
from workflows._toml import Checks

__all__ = ["StudyError", "read_study", "plan_cases", "run_study"]

DESIGNS = ("oat",)
PARAMETERS = ("boundary_offset_mm",)
SYNTHETIC = ("straight", "curved", "bifurcation")


class StudyError(ValueError):
    """An invalid study file (the message names the section and key)."""


_C = Checks(StudyError)


def read_study(path: str | os.PathLike) -> dict:
    """Read and validate a study file; returns a plain dict with resolved paths."""
    data, p = _C.load(path, "study file")
    return parse_study(data, p.resolve().parent)


def parse_study(data: Mapping[str, Any], base_dir: Path) -> dict:
    """Validate a parsed study (see the module docstring)."""
    for sec in data:
        if sec not in ("study", "base", "design", "run"):
            raise StudyError(f"unknown section [{sec}] (sections: study, base, design, run)")
    st = _C.table(data, "study")
    _C.no_unknown("study", st, ("name", "output"))
    output = st.get("output", "pressure_drop_Pa")
    if output not in ("pressure_drop_Pa", "wss_mean_Pa", "wss_max_Pa", "ffr_like"):
        raise StudyError(f"[study] output must be one of pressure_drop_Pa, wss_mean_Pa, wss_max_Pa, ffr_like, "
                         f"got {output!r}")
    b = _C.table(data, "base")
    _C.no_unknown("base", b, ("synthetic", "image", "stenosis", "size", "flow_rate_ml_s", "model", "seed"))
    if ("synthetic" in b) == ("image" in b):
        raise StudyError("[base] give exactly one of synthetic = \"straight\" (built-in patient) or image = PATH")
    base: dict[str, Any] = {"flow_rate_ml_s": _C.positive("base", "flow_rate_ml_s", b.get("flow_rate_ml_s", 1.0)),
                            "model": b.get("model", "stokes")}
    if base["model"] not in ("stokes", "navier-stokes"):
        raise StudyError(f"[base] model must be 'stokes' or 'navier-stokes', got {base['model']!r}")
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
    d = _C.table(data, "design")
    _C.no_unknown("design", d, ("type", "parameter", "values"))
    if d.get("type", "oat") not in DESIGNS:
        raise StudyError(f"[design] type must be one of {DESIGNS} in this version, got {d.get('type')!r}")
    par = d.get("parameter", "boundary_offset_mm")
    if par not in PARAMETERS:
        raise StudyError(f"[design] parameter must be one of {PARAMETERS}, got {par!r}")
    vals = _C.require("design", d, "values", " (a list of numbers, e.g. [-0.1, 0.0, 0.1])")
    if not isinstance(vals, list) or len(vals) < 2:
        raise StudyError(f"[design] values must be a list of at least 2 numbers, got {vals!r}")
    vals = [_C.number("design", "values", v) for v in vals]
    if len(set(vals)) != len(vals):
        raise StudyError(f"[design] values must be distinct, got {vals!r}")
    r = _C.table(data, "run", required=False)
    _C.no_unknown("run", r, ("workers",))
    workers = _C.integer("run", "workers", r.get("workers", 1), 1)
    return {"name": st.get("name", "study"), "output": output, "base": base,
            "design": {"type": "oat", "parameter": par, "values": vals}, "workers": workers}


def plan_cases(study: dict) -> list[dict]:
    """The explicit list of cases: ``{"id": "case_000", "parameter": name, "value": v}``."""
    par = study["design"]["parameter"]
    return [{"id": f"case_{i:03d}", "parameter": par, "value": v} for i, v in enumerate(study["design"]["values"])]


def _run_case(image: str, case_dir: str, base: dict, case: dict) -> dict:
    from workflows.vessel_flow import VesselFlowConfig, run_vessel_flow

    cfg = VesselFlowConfig(flow_rate_ml_s=base["flow_rate_ml_s"], model=base["model"], write_fields=False,
                           **{case["parameter"]: case["value"]})
    return run_vessel_flow(image, Path(case_dir), cfg, quiet=True)


def run_study(study: dict | str | os.PathLike, out_dir: str | os.PathLike, *, quiet: bool = False) -> dict:
    """Run (or resume) a study; writes ``OUT/study.json`` and returns it."""
    from workflows.sensitivity import elasticity

    if not isinstance(study, dict):
        study = read_study(study)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda t: None) if quiet else (lambda t: print(t, flush=True))
    base = study["base"]
    r0 = None
    if "synthetic" in base:
        from workflows.demo import write_synthetic_patient

        pdir = out / "patient"
        meta = pdir / "patient.json"
        if meta.is_file():
            info = json.loads(meta.read_text())
        else:
            info = write_synthetic_patient(pdir, geometry=base["synthetic"], stenosis=base["stenosis"],
                                           size=base["size"], seed=base["seed"])
            write_json_atomic(meta, {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()})
        image = str(info["image"])
        r0 = float(info["radius_mm"])
    else:
        image = base["image"]
    cases = plan_cases(study)
    todo = [c for c in cases if not (out / "cases" / c["id"] / "results.json").is_file()]
    say(f"[study] {len(cases)} cases, {len(cases) - len(todo)} already finished")
    if todo:
        if study["workers"] > 1:
            with ProcessPoolExecutor(max_workers=study["workers"]) as ex:
                futs = {ex.submit(_run_case, image, str(out / "cases" / c["id"]), base, c): c for c in todo}
                for f in as_completed(futs):
                    f.result()
                    say(f"[study] {futs[f]['id']} done ({futs[f]['parameter']} = {futs[f]['value']:g})")
        else:
            for c in todo:
                _run_case(image, str(out / "cases" / c["id"]), base, c)
                say(f"[study] {c['id']} done ({c['parameter']} = {c['value']:g})")
    rows = []
    for c in cases:
        res = json.loads((out / "cases" / c["id"] / "results.json").read_text())
        rows.append({**c, "output": res.get(study["output"]), "n_dofs": res.get("n_dofs"),
                     "results": str(out / "cases" / c["id"] / "results.json")})
    summary: dict[str, Any] = {"schema_version": "1.0", "name": study["name"], "output": study["output"],
                               "design": study["design"], "base": base, "cases": rows}
    if study["design"]["parameter"] == "boundary_offset_mm":
        if r0 is None:  # equivalent radius of the unperturbed lumen: sqrt(V / (pi L))
            ref = min(rows, key=lambda r: abs(r["value"]))
            rep = json.loads(Path(ref["results"]).read_text())["surface"]
            caps = {cp["name"]: cp for cp in rep["caps"]}
            vol = rep["report"].get("volume_mm3")
            names = sorted(caps)
            if vol and len(names) >= 2:
                import numpy as np

                length = float(np.linalg.norm(np.asarray(caps[names[0]]["centre_xyz_mm"])
                                              - np.asarray(caps[names[1]]["centre_xyz_mm"])))
                r0 = math.sqrt(vol / (math.pi * length)) - ref["value"]
        ok = [r for r in rows if r["output"] is not None and r["output"] > 0]
        if r0 is not None and len(ok) >= 2:
            summary["reference_radius_mm"] = r0
            summary["elasticity"] = elasticity([r0 + r["value"] for r in ok], [r["output"] for r in ok])
    summary["provenance"] = provenance(inputs_sha256=hash_params(study))
    from workflows.study_report import write_study_report

    summary["report"] = str(write_study_report(summary, out))
    write_json_atomic(out / "study.json", summary)
    if "elasticity" in summary:
        e = summary["elasticity"]
        say(f"[study] d ln {study['output']} / d ln r = {e['elasticity']:.3f} "
            f"(95 % CI {e['ci_low']:.3f} to {e['ci_high']:.3f})")
    say(f"[study] results: {out / 'study.json'}")
    return summary
