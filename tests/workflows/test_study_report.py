"""The study report (issue 5): a self-contained HTML page and its PDF from study summaries
(schema 2.0) built by hand here, plus the figure functions on tiny inputs.

Numbers are checked against values computed in the test (Poiseuille ΔP ∝ r⁻⁴, hand-counted
decision flips, organ-dose changes and their Monte Carlo σ), never against the report's own
output. Neither the flow solver nor the Monte Carlo engine runs here.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
import pytest

from workflows.study import figures as sf
from workflows.study.report import bottom_line, format_number, upgrade_summary, write_report, write_study_report

R0 = 2.0  # mm, reference radius of the tube
C = 28.1 * R0 ** 4  # ΔP = C r^-4 Pa, so the nominal ΔP is 28.1 Pa
P_REF = 150.0  # ffr_like = 1 - ΔP / P_REF


def _png_pixels(data: bytes) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(data), format="png")


def _not_blank(path) -> bool:
    return _png_pixels(open(path, "rb").read())[..., :3].std() > 0.02


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


# ----------------------------------------------------------------------------- tiny inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A CT with a bright cylinder, its segmentation and truth, a cylinder STL, wall pressures."""
    import trimesh

    from pipeline.image import Volume, write_image

    d = tmp_path_factory.mktemp("inputs")
    z, y, x = np.indices((20, 28, 28))
    r2 = (x - 14.0) ** 2 + (y - 13.0) ** 2
    ct = np.where(r2 < 25, 350.0, 20.0) + np.random.default_rng(0).normal(0, 15, r2.shape)
    sp = (0.5, 0.4, 0.4)
    write_image(Volume(ct.astype(np.float32), spacing_mm=sp), d / "ct.nii.gz")
    write_image(Volume((r2 < 25).astype(np.uint8), spacing_mm=sp), d / "seg.nii.gz")
    write_image(Volume((r2 < 30).astype(np.uint8), spacing_mm=sp), d / "truth.nii.gz")
    cyl = trimesh.creation.cylinder(radius=R0, height=12.0, sections=24)
    cyl.export(d / "surface.stl")
    th, zz = np.meshgrid(np.linspace(0, 2 * np.pi, 30, endpoint=False), np.linspace(-6, 6, 40))
    xyz = np.stack([R0 * np.cos(th).ravel(), R0 * np.sin(th).ravel(), zz.ravel()], axis=1)
    np.savez(d / "wall.npz", xyz_mm=xyz, pressure_Pa=28.1 * (6 - xyz[:, 2]) / 12 + 2000.0)
    return d


def _flow_summary(images: dict) -> dict:
    """OAT over the wall offset and the cap position, with elasticity and tornado from
    Poiseuille; plus a Monte Carlo distribution, Sobol indices and a flip of ffr_like < 0.8."""
    offsets = [-0.1, -0.05, 0.05, 0.1]
    caps = [-0.5, 0.5]

    def dp(off, cap=0.0):
        return C * (R0 + off) ** -4 * (1 + 0.01 * cap)

    def outs(off, cap=0.0):
        return {"pressure_drop_Pa": dp(off, cap), "ffr_like": 1 - dp(off, cap) / P_REF}

    cases = [{"id": "case_000", "params": {"boundary_offset_mm": 0.0, "cap_position_mm": 0.0},
              "outputs": outs(0.0), "sigma": {}, "varied": None, "perturbation": {}, "results": "/x/case_000"}]
    for o in offsets:
        cases.append({"id": f"case_{len(cases):03d}", "params": {"boundary_offset_mm": o, "cap_position_mm": 0.0},
                      "outputs": outs(o), "sigma": {}, "varied": "boundary_offset_mm"})
    for cp in caps:
        cases.append({"id": f"case_{len(cases):03d}", "params": {"boundary_offset_mm": 0.0, "cap_position_mm": cp},
                      "outputs": outs(0.0, cp), "sigma": {}, "varied": "cap_position_mm"})
    r = R0 + np.array([0.0] + offsets)
    slope, icpt = np.polyfit(np.log(r), np.log([dp(o) for o in [0.0] + offsets]), 1)
    analysis = {}
    for q in ("pressure_drop_Pa", "ffr_like"):
        q0 = outs(0.0)[q]
        t = [{"parameter": "boundary_offset_mm", "low": -0.1, "high": 0.1, "q_low": outs(-0.1)[q],
              "q_high": outs(0.1)[q], "q_nominal": q0, "swing": abs(outs(0.1)[q] - outs(-0.1)[q])},
             {"parameter": "cap_position_mm", "low": -0.5, "high": 0.5, "q_low": outs(0, -0.5)[q],
              "q_high": outs(0, 0.5)[q], "q_nominal": q0, "swing": abs(outs(0, 0.5)[q] - outs(0, -0.5)[q])}]
        analysis[q] = {"tornado": t}
    analysis["pressure_drop_Pa"]["elasticity"] = {
        "parameter": "boundary_offset_mm", "reference_radius_mm": R0, "elasticity": float(slope),
        "ci_low": float(slope) - 0.03, "ci_high": float(slope) + 0.03, "n": 5, "intercept": float(icpt),
        "residual_rms": 1e-4}
    rng = np.random.default_rng(7)
    mc_off = rng.uniform(-0.1, 0.1, 64)
    mc_dp = np.array([dp(o) for o in mc_off])
    ffr = 1 - mc_dp / P_REF
    k = int(np.sum(ffr < 0.8))  # nominal ffr 0.8127 is not < 0.8: every case below flips
    lo, hi = _wilson(k, ffr.size)
    p = np.percentile(mc_dp, [2.5, 50, 97.5])
    analysis["pressure_drop_Pa"]["distribution"] = {
        "n": 64, "mean": float(mc_dp.mean()), "sd": float(mc_dp.std(ddof=1)), "p2_5": float(p[0]),
        "p50": float(p[1]), "p97_5": float(p[2]), "values": mc_dp.tolist()}
    analysis["pressure_drop_Pa"]["sobol"] = {"names": ["boundary_offset_mm", "cap_position_mm"],
                                             "S1": [0.953, 0.031], "S1_conf": [0.05, 0.02],
                                             "ST": [0.968, 0.044], "ST_conf": [0.04, 0.02],
                                             "confidence": 0.95, "n_bootstrap": 200}
    pf = np.percentile(ffr, [2.5, 50, 97.5])
    analysis["ffr_like"]["distribution"] = {"n": 64, "mean": float(ffr.mean()), "sd": float(ffr.std(ddof=1)),
                                            "p2_5": float(pf[0]), "p50": float(pf[1]), "p97_5": float(pf[2]),
                                            "values": ffr.tolist()}
    # the rule as workflows.study.analysis.flip_probability writes it (the report names the QoI)
    analysis["ffr_like"]["flip"] = {"rule": "< 0.8", "probability": k / 64, "ci_low": lo, "ci_high": hi,
                                    "n": 64, "n_flipped": k, "nominal_decision": False}
    return {
        "schema_version": "2.0", "name": "radius sensitivity", "path": "flow",
        "question": "How far does the pressure drop move when the segmented wall is off by 0.1 mm, as "
                    "inter-observer segmentation differences are? Context: triage of a coronary stenosis.",
        "outputs": ["pressure_drop_Pa", "ffr_like"], "output": "pressure_drop_Pa",
        "parameters": [
            {"name": "boundary_offset_mm", "nominal": 0.0, "low": -0.1, "high": 0.1, "distribution": "uniform",
             "unit": "mm", "description": "uniform wall offset along the normals",
             "origin": "inter-observer variability of lumen contours (about 0.1 mm)"},
            {"name": "cap_position_mm", "nominal": 0.0, "low": -0.5, "high": 0.5, "distribution": "uniform",
             "unit": "mm", "description": "where the outlet is cut", "origin": "judgement of the analyst"}],
        "design": {"type": "oat", "n": 7, "seed": 11},
        "base": {"synthetic": "straight", "flow_rate_ml_s": 1.0, "model": "stokes"},
        "nominal": {"id": "case_000", "outputs": outs(0.0), "sigma": {}},
        "cases": cases, "analysis": analysis,
        "numerical": {"mesh_convergence": [
            {"cells_per_radius": 3.0, "n_dofs": 40000, "outputs": {"pressure_drop_Pa": 28.1}},
            {"cells_per_radius": 6.0, "n_dofs": 310000, "outputs": {"pressure_drop_Pa": 27.76}}],
            "mesh_relative_change": {"pressure_drop_Pa": 0.012, "ffr_like": 0.0025},
            "note": "One refinement of the nominal case."},
        "images": images,
        "limitations": ["steady flow, rigid wall", "uniform offsets only"],
        "provenance": {"software": {"digipat": "0.1", "numpy": np.__version__}, "seeds": {"design": 11},
                       "inputs_sha256": "ab" * 32, "created_utc": "2025-01-01T00:00:00+00:00"},
        "timings_s": {"total": 123.0},
    }


ORGANS = {"liver": (10.0, 0.05), "lung": (12.0, 0.06), "stomach": (9.0, 0.08)}
# relative organ-dose change per perturbation end (table height -20/+20 mm, scale 0.9/1.1)
DOSE_EFFECT = {("table_height_mm", -20.0): {"liver": 0.04, "lung": -0.12, "stomach": 0.02},
               ("table_height_mm", 20.0): {"liver": -0.03, "lung": 0.15, "stomach": -0.01},
               ("patient_scale", 0.9): {"liver": 0.08, "lung": 0.06, "stomach": 0.09},
               ("patient_scale", 1.1): {"liver": -0.07, "lung": -0.05, "stomach": -0.11}}


def _dose_summary(images: dict) -> dict:
    def key(o):
        return f"organ_dose_mGy.{o}"

    nom = {key(o): v for o, (v, _) in ORGANS.items()} | {"effective_dose_mSv": 5.0}
    nsig = {key(o): s for o, (_, s) in ORGANS.items()} | {"effective_dose_mSv": 0.01}
    cases = [{"id": "case_000", "params": {"table_height_mm": 0.0, "patient_scale": 1.0}, "outputs": nom,
              "sigma": nsig, "varied": None}]
    for (par, v), eff in DOSE_EFFECT.items():
        outs = {key(o): ORGANS[o][0] * (1 + e) for o, e in eff.items()}
        outs["effective_dose_mSv"] = 5.0 * (1 + np.mean(list(eff.values())))
        sig = {k: 0.006 * val for k, val in outs.items()}
        params = {"table_height_mm": 0.0, "patient_scale": 1.0, par: v}
        cases.append({"id": f"case_{len(cases):03d}", "params": params, "outputs": outs, "sigma": sig,
                      "varied": par})
    analysis = {}
    for q in nom:
        rows = []
        for par, lo, hi in (("table_height_mm", -20.0, 20.0), ("patient_scale", 0.9, 1.1)):
            cl = next(c for c in cases if c["varied"] == par and c["params"][par] == lo)
            ch = next(c for c in cases if c["varied"] == par and c["params"][par] == hi)
            rows.append({"parameter": par, "low": lo, "high": hi, "q_low": cl["outputs"][q],
                         "q_high": ch["outputs"][q], "q_nominal": nom[q],
                         "swing": abs(ch["outputs"][q] - cl["outputs"][q])})
        rows.sort(key=lambda r: -r["swing"])
        changes = [abs(c["outputs"][q] / nom[q] - 1) for c in cases[1:]]
        k = sum(ch > 0.10 for ch in changes)
        lo_, hi_ = _wilson(k, len(changes))
        analysis[q] = {"tornado": rows, "flip": {"rule": "|change| > 10 %", "probability": k / len(changes),
                                                 "ci_low": lo_, "ci_high": hi_, "n": len(changes), "n_flipped": k,
                                                 "nominal_decision": False}}
    return {
        "schema_version": "2.0", "name": "dose sensitivity to patient position", "path": "dose",
        "question": "Does a plausible mis-centring or a patient-size error change an organ dose by more than 10 %?",
        "outputs": list(nom), "output": key("liver"),
        "parameters": [
            {"name": "table_height_mm", "nominal": 0.0, "low": -20.0, "high": 20.0, "distribution": "uniform",
             "unit": "mm", "description": "vertical mis-centring", "origin": "published mis-centring surveys"},
            {"name": "patient_scale", "nominal": 1.0, "low": 0.9, "high": 1.1, "distribution": "normal",
             "mean": 1.0, "sd": 0.05, "unit": "", "description": "isotropic size scale",
             "origin": "body-size spread of the age group"}],
        "design": {"type": "oat", "seed": 3}, "base": {"phantom": "adult", "kvp": 120},
        "nominal": {"id": "case_000", "outputs": nom, "sigma": nsig},
        "cases": cases, "analysis": analysis,
        "numerical": {"mc_relative_sigma": {k: nsig[k] / nom[k] for k in nom}},
        "images": images, "limitations": ["stylised phantom"],
        "provenance": {"software": {"digipat": "0.1"}, "seeds": {"transport": 12345},
                       "inputs_sha256": "cd" * 32},
    }


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory):
    from workflows.dose.figures import plot_dose_overlay

    d = tmp_path_factory.mktemp("report")
    imgs = {
        "segmentation_overlay": str(sf.segmentation_overlay_png(inputs / "ct.nii.gz", inputs / "seg.nii.gz",
                                                                d / "img" / "seg.png",
                                                                truth_path=inputs / "truth.nii.gz")),
        "mesh": str(sf.surface_mesh_png(inputs / "surface.stl", d / "img" / "mesh.png")),
        "pressure_map": str(sf.pressure_map_png(inputs / "wall.npz", d / "img" / "pressure.png")),
    }
    z, y, x = np.indices((10, 16, 16))
    labels = ((x - 8) ** 2 + (y - 8) ** 2 < 36).astype(np.int16)
    dose_png = plot_dose_overlay(labels, np.exp(-((x - 5) ** 2) / 20.0) * labels, (2.0, 1.0, 1.0),
                                 d / "img" / "dose.png")
    flow = _flow_summary(imgs)
    dose = _dose_summary({"dose_map": str(dose_png)})
    out = write_report([flow, dose], d / "out", title="Digital patient: how far to trust it",
                       intro="Two studies of one patient.")
    return {"out": out, "flow": flow, "dose": dose, "dir": d / "out"}


# ----------------------------------------------------------------------------- the report
SECTIONS = ["Bottom line", "Question and context of use", "Base case", "Inputs and their origin",
            "Nominal results", "Output against radius (log–log)", "Tornado chart", "Sobol indices",
            "Output distribution", "Decision flip", "Organ-dose change per perturbation", "Cases",
            "Numerical uncertainty", "Limitations", "Provenance"]


def test_report_is_self_contained_with_every_section_and_key_number(report):
    page = report["out"]["html"].read_text()
    assert report["out"]["html"].name == "report.html"
    for h in SECTIONS:
        assert f">{h}</h" in page, h
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 11  # 4 base images, log-log, 3 tornados, Sobol, 2 distributions, organ change
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'href="(?!#)', page) and "file:" not in page
    for s in srcs:
        img = _png_pixels(base64.b64decode(s.split(",", 1)[1]))
        assert img[..., :3].std() > 0.02
    flow, dose = report["flow"], report["dose"]
    assert "28.10 Pa" in page  # nominal ΔP, 4 significant figures with unit
    el = flow["analysis"]["pressure_drop_Pa"]["elasticity"]["elasticity"]
    assert abs(el + 4) < 0.01 and f"{el:.3f}" in page  # Poiseuille through the hand-made cases
    f = flow["analysis"]["ffr_like"]["flip"]
    assert 0 < f["n_flipped"] < 64 and f"{100 * f['probability']:.0f} %" in page
    assert f"{f['n_flipped']}/64" in page and "ffr_like &lt; 0.8" in page
    # organ-dose change at table height -20 mm: lung -12 %, with 2σ from the hand-made σ
    rl = 0.88 * math.hypot(0.006, 0.06 / 12.0)
    assert f"-12.0 ± {200 * rl:.1f}" in page
    assert "inter-observer variability of lumen contours" in page and "ab" * 32 in page
    assert "12345" in page  # transport seed in the provenance table
    assert "mesh refinement" in page and "Monte Carlo, 2σ" in page


def test_report_pdf_prints_on_several_pages(report):
    import pypdfium2

    pdf = report["out"]["pdf"]
    assert pdf is not None and pdf.name == "report.pdf" and pdf.exists()
    doc = pypdfium2.PdfDocument(str(pdf))
    try:
        assert len(doc) >= 2
        first = doc[0].render(scale=1).to_numpy()
        assert first.std() > 10  # a white page has std 0
        text = doc[0].get_textpage().get_text_range()
        assert "Bottom line" in text and "28.10 Pa" in text  # the bottom line opens the first page
        w, h = doc[0].get_size()
        assert abs(w - 595) < 3 and abs(h - 842) < 3  # A4 in points
    finally:
        doc.close()
    assert not list(report["dir"].glob(".tmp-*"))


def test_bottom_line_in_words(report):
    rows = {r["qoi"]: r for r in bottom_line(report["flow"])}
    dp = rows["pressure_drop_Pa"]
    d = report["flow"]["analysis"]["pressure_drop_Pa"]["distribution"]
    assert dp["low"] == d["p2_5"] and dp["high"] == d["p97_5"]  # sampled range wins over tornado
    assert dp["numerical_rel"] == pytest.approx(0.012) and dp["level"] == "ok"
    ffr = rows["ffr_like"]
    assert ffr["level"] == "bad" and "changed in" in ffr["verdict"]  # decision flips in >= 10 % of cases
    dose = {r["qoi"]: r for r in bottom_line(report["dose"])}
    lung = dose["organ_dose_mGy.lung"]
    # OAT ends: lowest 12 * 0.88, highest 12 * 1.15; MC numerical 2 σ/Q = 1 %
    assert lung["low"] == pytest.approx(12 * 0.88) and lung["high"] == pytest.approx(12 * 1.15)
    assert lung["half_width_rel"] == pytest.approx(0.15) and lung["numerical_rel"] == pytest.approx(0.01)
    # numerical error as large as the spread -> "bad"
    s = json.loads(json.dumps(report["flow"]))
    s["numerical"]["mesh_relative_change"]["pressure_drop_Pa"] = 0.5
    assert next(r for r in bottom_line(s) if r["qoi"] == "pressure_drop_Pa")["level"] == "bad"


def test_minimal_and_legacy_summaries_still_render(tmp_path):
    minimal = {"name": "bare", "outputs": ["pressure_drop_Pa"],
               "cases": [{"id": "case_000", "params": {}, "outputs": {"pressure_drop_Pa": 10.0}},
                         {"id": "case_001", "params": {}, "outputs": {"pressure_drop_Pa": None}}],
               "images": {"mesh": str(tmp_path / "missing.png")},
               "analysis": {"pressure_drop_Pa": {"tornado": [{"parameter": "a", "q_low": None}],
                                                 "sobol": {"names": ["a"], "S1": [], "ST": []}}}}
    with pytest.warns(UserWarning, match="tornado"):
        html_path = write_study_report(minimal, tmp_path / "bare")
    page = html_path.read_text()
    for h in ("Bottom line", "Question and context of use", "Limitations", "Provenance"):
        assert f">{h}</h" in page
    assert "missing.png" in page and "could not be drawn" in page  # notes, not crashes
    assert (tmp_path / "bare" / "report.pdf").exists()
    # schema 1.0 (one-parameter OAT): upgraded, the elasticity and its plot kept
    legacy = {"schema_version": "1.0", "name": "old", "output": "pressure_drop_Pa",
              "design": {"type": "oat", "parameter": "boundary_offset_mm", "values": [-0.1, 0.0, 0.1]},
              "cases": [{"id": f"case_00{i}", "parameter": "boundary_offset_mm", "value": v,
                         "output": C * (R0 + v) ** -4} for i, v in enumerate([-0.1, 0.0, 0.1])],
              "reference_radius_mm": R0,
              "elasticity": {"elasticity": -4.0, "ci_low": -4.1, "ci_high": -3.9, "n": 3, "intercept": math.log(C),
                             "residual_rms": 0.0}}
    up = upgrade_summary(legacy)
    assert up["nominal"]["outputs"]["pressure_drop_Pa"] == pytest.approx(28.1)
    assert [c["varied"] for c in up["cases"]] == ["boundary_offset_mm", None, "boundary_offset_mm"]
    out = write_report([legacy], tmp_path / "old", title="old", pdf=False)
    assert out["pdf"] is None and not (tmp_path / "old" / "report.pdf").exists()
    page = out["html"].read_text()
    assert "-4.000" in page and ">Output against radius (log–log)</h" in page
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path / "x", title="t")
    with pytest.raises(ValueError, match="dicts"):
        write_report(["study.json"], tmp_path / "x", title="t")


# ----------------------------------------------------------------------------- helpers and figures
def test_format_number_and_qoi_names():
    assert format_number(28.1) == "28.10"
    assert format_number(0.012346) == "0.01235"
    assert format_number(9.99996) == "10.00"
    assert format_number(1234567.0) == "1.235e+06"
    assert format_number(-4.0) == "-4.000"
    assert format_number(float("nan")) == format_number(None) == "—"
    assert sf.qoi_unit("pressure_drop_Pa") == "Pa" and sf.qoi_unit("organ_dose_mGy.red_marrow") == "mGy"
    assert sf.qoi_unit("ffr_like") == "" and sf.qoi_unit("flow_ml_s") == "ml/s"
    assert sf.qoi_label("organ_dose_mGy.red_marrow") == "red marrow dose"


def test_tornado_order_and_chart(tmp_path):
    rows = [{"parameter": "b", "q_low": 9.0, "q_high": 11.0},            # swing 2
            {"parameter": "a", "q_low": 12.0, "q_high": 7.0},            # swing 5 (decreasing)
            {"parameter": "c", "swing": 3.0},                            # stored swing only
            {"parameter": "d", "q_low": float("nan"), "q_high": None}]   # dropped
    assert [r["parameter"] for r in sf.tornado_order(rows)] == ["a", "c", "b"]
    for r in rows[:2]:
        r.update(q_nominal=10.0, low=-1.0, high=1.0)
    p = sf.tornado_png({"tornado": rows}, "pressure_drop_Pa", tmp_path / "t.png", units={"a": "mm"})
    assert p.exists() and _not_blank(p)
    with pytest.raises(ValueError, match="no tornado row"):
        sf.tornado_png({"tornado": [rows[2]]}, "q", tmp_path / "u.png")


def test_organ_dose_change_and_its_sigma(tmp_path, report):
    rows = sf.organ_dose_changes(report["dose"])
    assert len(rows) == 4 * 3
    for r in rows:
        eff = DOSE_EFFECT[(r["parameter"], r["value"])][r["organ"]]
        assert r["change_percent"] == pytest.approx(100 * eff)
    assert [(r["parameter"], r["end"]) for r in rows[::3]] == [
        ("table_height_mm", "low"), ("table_height_mm", "high"), ("patient_scale", "low"), ("patient_scale", "high")]
    # σ of the change against sampling: Q ~ N(11, 0.11), Q0 ~ N(10, 0.1) independent
    s = {"outputs": ["organ_dose_mGy.x"], "parameters": [{"name": "p", "nominal": 0.0}],
         "nominal": {"id": "n", "outputs": {"organ_dose_mGy.x": 10.0}, "sigma": {"organ_dose_mGy.x": 0.1}},
         "cases": [{"id": "c", "params": {"p": 1.0}, "varied": "p", "outputs": {"organ_dose_mGy.x": 11.0},
                    "sigma": {"organ_dose_mGy.x": 0.11}}]}
    (r,) = sf.organ_dose_changes(s)
    rng = np.random.default_rng(1)
    ch = 100 * (rng.normal(11, 0.11, 400_000) / rng.normal(10, 0.1, 400_000) - 1)
    assert r["end"] == "high" and r["sigma_percent"] == pytest.approx(ch.std(), rel=0.02)
    p = sf.organ_dose_change_png(report["dose"], tmp_path / "o.png")
    assert _not_blank(p)
    with pytest.raises(ValueError, match="no organ-dose change"):
        sf.organ_dose_change_png({"cases": []}, tmp_path / "n.png")


def test_loglog_sobol_distribution(tmp_path, report):
    flow = report["flow"]
    x, y, e = sf.loglog_points(flow, "pressure_drop_Pa")
    assert x.tolist() == pytest.approx([1.9, 1.95, 2.0, 2.05, 2.1])  # r0 + δ, nominal included, cap cases not
    assert y == pytest.approx(C * x ** -4)
    assert _not_blank(sf.loglog_png(flow, "pressure_drop_Pa", tmp_path / "l.png"))
    with pytest.raises(ValueError, match="no elasticity"):
        sf.loglog_png(flow, "ffr_like", tmp_path / "m.png")
    so = flow["analysis"]["pressure_drop_Pa"]["sobol"]
    assert _not_blank(sf.sobol_png(so, "pressure_drop_Pa", tmp_path / "s.png"))
    with pytest.raises(ValueError, match="one length"):
        sf.sobol_png({"names": ["a", "b"], "S1": [0.1], "ST": [0.2, 0.3]}, "q", tmp_path / "x.png")
    d = flow["analysis"]["ffr_like"]["distribution"]
    assert _not_blank(sf.distribution_png(d, "ffr_like", tmp_path / "d.png", threshold=0.8, nominal=0.81))
    no_values = {k: v for k, v in d.items() if k != "values"}
    assert _not_blank(sf.distribution_png(no_values, "ffr_like", tmp_path / "d2.png"))
    with pytest.raises(ValueError, match="neither values"):
        sf.distribution_png({"n": 0}, "q", tmp_path / "d3.png")


def test_base_case_images(tmp_path, inputs):
    import trimesh

    p = sf.segmentation_overlay_png(inputs / "ct.nii.gz", inputs / "seg.nii.gz", tmp_path / "s.png")
    assert _not_blank(p)
    with pytest.raises(ValueError, match="same voxel grid"):
        from pipeline.image import Volume, write_image

        write_image(Volume(np.ones((4, 4, 4), np.uint8)), tmp_path / "small.nii.gz")
        sf.segmentation_overlay_png(inputs / "ct.nii.gz", tmp_path / "small.nii.gz", tmp_path / "x.png")
    # caps of a cylinder found from its flat facets: two caps of `sections` triangles, normals ±z
    cyl = trimesh.creation.cylinder(radius=1.0, height=5.0, sections=20)
    tags = sf._face_tags_from_facets(cyl)
    assert sorted(np.bincount(tags)[1:].tolist()) == [20, 20]
    assert np.allclose(np.abs(cyl.face_normals[tags > 0][:, 2]), 1.0)
    caps = [{"name": "inlet", "centre_xyz_mm": [0, 0, -2.5], "normal_xyz": [0, 0, -1], "radius_mm": 1.0},
            {"name": "outlet1", "centre_xyz_mm": [0, 0, 2.5], "normal_xyz": [0, 0, 1], "radius_mm": 1.0}]
    t2 = sf._face_tags_from_caps(cyl, caps)
    assert np.bincount(t2).tolist()[1:] == [20, 20]
    assert np.all(cyl.triangles_center[t2 == 1][:, 2] < 0)
    assert _not_blank(sf.surface_mesh_png(inputs / "surface.stl", tmp_path / "m.png"))
    assert _not_blank(sf.pressure_map_png(inputs / "wall.npz", tmp_path / "p.png"))
    np.savez(tmp_path / "bad.npz", xyz_mm=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="pressure_Pa"):
        sf.pressure_map_png(tmp_path / "bad.npz", tmp_path / "q.png")
