"""`digipat demo` end to end in its smoke form: vessel → flow, a 5y phantom → CT doses,
both sensitivity studies and the combined report (HTML, and a PDF whose first page is not
blank); a rerun reuses every finished stage and case."""

import json
from pathlib import Path

from workflows.cli import main


def test_quick_demo_runs_the_whole_digital_patient(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--quick", "--size", "small", "--model", "stokes", "--workers", "2"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "[demo 1/4]" in log and "[demo 4/4]" in log and f"report: {out / 'report.html'}" in log
    demo = json.loads((out / "demo.json").read_text())
    flow = json.loads((out / "flow" / "results.json").read_text())
    assert flow["pressure_drop_Pa"] > 0 and 0 < flow["ffr_like"] < 1
    fs = json.loads(Path(demo["flow_study"]).read_text())
    ds = json.loads(Path(demo["dose_study"]).read_text())
    # radius up -> pressure drop down, steeper than Poiseuille at the stenosis (r_s < r0)
    e = fs["analysis"]["pressure_drop_Pa"]["elasticity"]
    assert -6.0 < e["elasticity"] < -3.6, e
    assert "flip" in fs["analysis"]["ffr_like"] and fs["images"].get("pressure_map")
    # body outline 5 mm larger -> more attenuation -> every organ dose lower
    for q in ds["outputs"]:
        if q.startswith("organ_dose_mGy."):
            t = {r["parameter"]: r for r in ds["analysis"][q]["tornado"]}["body_offset_mm"]
            assert t["q_high"] < t["q_nominal"] < t["q_low"], (q, t)
    assert 1.0 < ds["nominal"]["outputs"]["effective_dose_mSv"] < 20.0  # paediatric CAP CT: a few mSv
    page = (out / "report.html").read_text()
    for heading in ("Bottom line", "Tornado", "Decision flip", "Numerical uncertainty", "Limitations", "Provenance"):
        assert heading in page, heading
    import pypdfium2

    img = pypdfium2.PdfDocument(str(out / "report.pdf"))[0].render(scale=1).to_numpy()
    assert img.std() > 5
    # rerun: nothing is recomputed
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("studies/*/cases/*/results.json")}
    assert main(args + ["--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("studies/*/cases/*/results.json")} == mtimes
