"""The study runner's mechanics on a closed-form stand-in for the flow solve (each case is a
Hagen-Poiseuille pressure drop of the perturbed radius, written to the case's results.json
as the vessel workflow would): designs, Sobol indices against their analytic values,
decision flips against a known probability, seeds, resume and batch-style partial runs.
The physics of the real cases is checked in test_sensitivity.py (elasticity -4 through
the whole vessel path) and test_dose_study.py."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workflows.study import runner as S
from workflows.common import write_json_atomic

MU, L, Q, PA = 3.5e-3, 0.04, 1e-6, 13332.0
R0 = 2.0  # mm, the synthetic patient's radius


def poiseuille_case(study, ctx, case, case_dir, threads):
    """ΔP = 8 μ L Q / (π r⁴) with r = r0 + δ_wall + 0.3 δ_local."""
    p = case["params"]
    r = (R0 + p.get("boundary_offset_mm", 0.0) + 0.3 * p.get("local_offset_mm", 0.0)) * 1e-3
    dp = 8 * MU * L * Q / (math.pi * r ** 4) * 120.0  # scaled so the FFR-like ratio is near 0.80
    res = {"pressure_drop_Pa": dp, "pressure_drop_mmHg": dp / 133.322, "ffr_like": (PA - dp) / PA,
           "wss_mean_Pa": 4 * MU * Q / (math.pi * r ** 3), "wss_max_Pa": 1.0, "n_dofs": 1}
    Path(case_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(case_dir) / "results.json", res)
    return res


def study_text(design='type = "sobol"\nn = 64\nseed = 3', extra=""):
    return f"""
[study]
name = "stand-in"
outputs = ["pressure_drop_Pa", "ffr_like"]
[base]
synthetic = "straight"
size = "small"
stenosis = 0.0
[parameters.boundary_offset_mm]
low = -0.1
high = 0.1
origin = "test"
[parameters.local_offset_mm]
low = -0.1
high = 0.1
[design]
{design}
[decision]
ffr_threshold = 0.80
{extra}
"""


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(S, "_run_case", poiseuille_case)


def _run(tmp_path, text, out="o", **kw):
    f = tmp_path / "s.toml"
    f.write_text(text)
    return S.run_study(f, tmp_path / out, quiet=True, report=False, **kw)


def test_sobol_study_indices_flips_and_tornado(tmp_path, fake):
    res = _run(tmp_path, study_text())
    n_cases = 1 + 2 * 2 + 64 * (2 + 2)  # nominal, OAT ends, Saltelli rows
    assert len(res["cases"]) == n_cases
    a = res["analysis"]["pressure_drop_Pa"]
    # ln ΔP is linear in u = δ_w + 0.3 δ_l to first order: S1 = 1/1.09 and 0.09/1.09
    s = a["sobol"]
    assert s["S1"][0] == pytest.approx(1 / 1.09, abs=max(0.05, 2 * s["S1_conf"][0]))
    assert s["S1"][1] == pytest.approx(0.09 / 1.09, abs=max(0.05, 2 * s["S1_conf"][1]))
    assert s["ST"][0] >= s["S1"][0] - 0.05
    assert [t["parameter"] for t in a["tornado"]] == ["boundary_offset_mm", "local_offset_mm"]
    e = a["elasticity"]
    assert e["elasticity"] == pytest.approx(-4.0, rel=0.01) and e["reference_radius_mm"] == R0
    # Decision flips, counted here by a plain rule from the case folders. Saltelli's scheme (Saltelli
    # 2002; SALib's sobol.sample without second order) draws two independent N x D matrices A and B
    # and lays out, for each base point i, the rows A_i, AB_i^(1), ..., AB_i^(D), B_i, where AB^(j)
    # is A with its column j taken from B. Only the A and B rows are independent draws; the AB rows
    # reuse their columns. The blocks are checked against that definition from the case parameters.
    f = res["analysis"]["ffr_like"]["flip"]
    names = ["boundary_offset_mm", "local_offset_mm"]
    d = len(names)
    cases_dir = tmp_path / "o" / "cases"
    nominal = json.loads((cases_dir / "case_000" / "results.json").read_text())["ffr_like"]
    samples = sorted((c for c in res["cases"] if c["group"] == "sample"), key=lambda c: c["row"])
    assert len(samples) == 64 * (d + 2)
    a_and_b = []
    for i in range(64):
        block = [[c["params"][n] for n in names] for c in samples[i * (d + 2):(i + 1) * (d + 2)]]
        a, b = block[0], block[-1]
        for j in range(d):
            assert block[1 + j] == [b[m] if m == j else a[m] for m in range(d)], (i, j, block)
        a_and_b += [samples[i * (d + 2)], samples[i * (d + 2) + d + 1]]
    thr = 0.80
    flips = 0
    for c in a_and_b:
        q = json.loads((cases_dir / c["id"] / "results.json").read_text())["ffr_like"]
        flips += (q < thr) != (nominal < thr)
    assert f["n"] == 128 and f["basis"] == "sampled cases"
    assert f["n_flipped"] == flips and 0 < flips < 128, (f, flips)
    assert f["probability"] == flips / 128
    d = res["analysis"]["pressure_drop_Pa"]["distribution"]
    assert d["p2_5"] < res["nominal"]["outputs"]["pressure_drop_Pa"] < d["p97_5"]
    assert res["schema_version"] == "2.0" and json.loads((tmp_path / "o" / "study.json").read_text())["name"]


def test_flip_probability_of_a_symmetric_design(tmp_path, fake):
    """With the threshold set at the nominal FFR-like value (+1e-12), a case flips when its
    ΔP is below nominal, i.e. when δ_w + 0.3 δ_l > 0: probability 1/2 by symmetry."""
    q0 = (PA - 8 * MU * L * Q / (math.pi * (R0 * 1e-3) ** 4) * 120.0) / PA
    res = _run(tmp_path, study_text('type = "montecarlo"\nn = 200\nseed = 7', "").replace(
        "ffr_threshold = 0.80", f"ffr_threshold = {q0 + 1e-12!r}"))
    f = res["analysis"]["ffr_like"]["flip"]
    assert f["nominal_decision"] is True and f["ci_low"] < 0.5 < f["ci_high"]
    assert 0.35 < f["probability"] < 0.65


def test_reruns_reproduce_from_seeds_and_resume(tmp_path, fake):
    a = _run(tmp_path, study_text('type = "montecarlo"\nn = 8\nseed = 5'), "a")
    b = _run(tmp_path, study_text('type = "montecarlo"\nn = 8\nseed = 5'), "b")
    assert [c["params"] for c in a["cases"]] == [c["params"] for c in b["cases"]]
    assert a["analysis"] == b["analysis"]
    c = _run(tmp_path, study_text('type = "montecarlo"\nn = 8\nseed = 6'), "c")
    assert [x["params"] for x in c["cases"]] != [x["params"] for x in a["cases"]]
    # a study folder refuses a changed study
    with pytest.raises(S.StudyError, match="different study"):
        _run(tmp_path, study_text('type = "montecarlo"\nn = 8\nseed = 6'), "a")
    # resume: only the missing case is recomputed
    (tmp_path / "a" / "cases" / "case_004" / "results.json").unlink()
    before = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "a" / "cases").glob("*/results.json")}
    again = _run(tmp_path, study_text('type = "montecarlo"\nn = 8\nseed = 5'), "a")
    after = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "a" / "cases").glob("*/results.json")}
    assert set(after) - set(before) == {"case_004"} and all(after[k] == v for k, v in before.items())
    assert again["analysis"] == a["analysis"]


def test_batch_style_partial_runs(tmp_path, fake, capsys):
    text = study_text('type = "oat"\nlevels = 3')
    from workflows.cli import main

    (tmp_path / "s.toml").write_text(text)
    assert main(["study", "run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--plan-only"]) == 0
    listing = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("case_")]
    assert listing[0].startswith("case_000  nominal") and len(listing) == 5
    assert not (tmp_path / "o" / "cases").exists()
    part = _run(tmp_path, text, cases=["case_001", "case_002"])
    assert part["cases_run"] == ["case_001", "case_002"] and not (tmp_path / "o" / "study.json").exists()
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert [c["id"] for c in plan["cases"]] == [f"case_{i:03d}" for i in range(5)]
    with pytest.raises(S.StudyError, match="unknown case"):
        _run(tmp_path, text, cases=["case_099"])
    full = _run(tmp_path, text)
    assert len(full["cases"]) == 5 and "tornado" in full["analysis"]["pressure_drop_Pa"]
    assert full["cases"][0]["group"] == "nominal"


def test_morris_study(tmp_path, fake):
    res = _run(tmp_path, study_text('type = "morris"\nn = 6\nlevels = 4\nseed = 2\noat = false'))
    m = res["analysis"]["pressure_drop_Pa"]["morris"]
    assert m["names"] == ["boundary_offset_mm", "local_offset_mm"]
    assert m["mu_star"][0] > 2.5 * m["mu_star"][1]  # 1 : 0.3 sensitivity (mildly nonlinear)
    assert "tornado" not in res["analysis"]["pressure_drop_Pa"]


@pytest.mark.parametrize("edit, words", [
    (("[parameters.local_offset_mm]", "[parameters.viscosity]"), ["[parameters]", "'viscosity'"]),
    (("low = -0.1\nhigh = 0.1\norigin", "low = 0.2\nhigh = 0.1\norigin"), ["[parameters.boundary_offset_mm]", "low"]),
    (("n = 64", "n = 10"), ["[design] n", "power of 2"]),
    (('type = "sobol"', 'type = "latin"'), ["[design] type"]),
    (('outputs = ["pressure_drop_Pa", "ffr_like"]', 'outputs = ["dp"]'), ["[study] outputs"]),
    (("ffr_threshold = 0.80", "ffr_threshold = -1"), ["[decision] ffr_threshold"]),
    (("[decision]", "[numerics]\nmesh_cells_per_radius = 5\n[decision]"), ["[numerics] mesh_cells_per_radius"]),
    (("[parameters.local_offset_mm]\nlow = -0.1\nhigh = 0.1\n[design]",
      "[parameters.probability_level]\nlow = 0.3\nhigh = 0.7\n[design]"),
     ["[parameters.probability_level]", "segmentation = \"unet\""]),
    (("stenosis = 0.0", "stenosis = 0.0\nsegmentation = \"deep\""), ["[base] segmentation"]),
])
def test_bad_study_files_name_the_key(tmp_path, edit, words):
    assert edit[0] in study_text()
    with pytest.raises(S.StudyError) as ei:
        _run(tmp_path, study_text().replace(*edit))
    assert all(w in str(ei.value) for w in words), str(ei.value)


def test_yaml_study_file_is_read_like_toml(tmp_path):
    import tomllib

    import yaml

    data = tomllib.loads(study_text())
    y = tmp_path / "s.yaml"
    y.write_text(yaml.safe_dump(data))
    t = tmp_path / "s.toml"
    t.write_text(study_text())
    assert S.read_study(y) == S.read_study(t)
    y.write_text("study: [unclosed")
    with pytest.raises(S.StudyError, match="not valid YAML"):
        S.read_study(y)
    y.write_text(yaml.safe_dump({**data, "design": {**data["design"], "n": 10}}))
    with pytest.raises(S.StudyError, match=r"\[design\] n"):
        S.read_study(y)


def test_a_failing_case_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    """A case whose solve diverges is recorded (error, no outputs); the others are analysed;
    --retry-failed runs only it again."""
    from physics.flow.problem import ConvergenceError

    calls = []
    broken = [True]

    def flaky(study, ctx, case, case_dir, threads):
        calls.append(case["id"])
        if case["params"]["boundary_offset_mm"] < -0.05 and broken[0]:
            raise ConvergenceError("Newton (SNES) did not converge")
        return poiseuille_case(study, ctx, case, case_dir, threads)

    monkeypatch.setattr(S, "_run_case", flaky)
    res = _run(tmp_path, study_text('type = "oat"\nlevels = 3'))
    assert [f["id"] for f in res["failed_cases"]] == ["case_001"]
    assert "did not converge" in res["failed_cases"][0]["error"]
    assert res["analysis"]["pressure_drop_Pa"]["tornado"]  # from the cases that ran
    assert "elasticity" in res["analysis"]["pressure_drop_Pa"]  # nominal and +0.1 mm still give a slope
    calls.clear()
    assert _run(tmp_path, study_text('type = "oat"\nlevels = 3'))["failed_cases"] and calls == []  # not repeated
    broken[0] = False
    again = _run(tmp_path, study_text('type = "oat"\nlevels = 3'), retry_failed=True)
    assert calls == ["case_001"] and again["failed_cases"] == []


def test_reference_radius_of_a_user_image_from_volume_and_centreline(tmp_path):
    """r₀ = √(V / (π L)) with L from the centreline (a voxel skeleton that zig-zags by ±0.3 mm
    around a 40 mm axis: the smoothed arc length keeps r₀ within 2 % of the true 1.5 mm)."""
    z = np.arange(0.0, 40.01, 0.5)
    zig = np.where(np.arange(z.size) % 2, 0.3, -0.3)
    cl = np.stack([10 + zig, 10 - zig, z], axis=1)
    r = 1.5
    (tmp_path / "surface.json").write_text(json.dumps({"centreline": {"xyz_mm": cl.tolist()}}))
    res = {"surface": {"report": {"volume_mm3": math.pi * r ** 2 * 40.0},
                       "caps": [{"name": "inlet", "centre_xyz_mm": [10, 10, 0]},
                                {"name": "outlet1", "centre_xyz_mm": [10, 10, 40]}]}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    rec = {"results": str(tmp_path / "results.json"), "params": {"boundary_offset_mm": 0.0}}
    assert S._reference_radius({}, {}, rec) == pytest.approx(r, rel=0.02)
    assert S._reference_radius({}, {"radius_mm": 2.0}, rec) == 2.0  # a synthetic patient's known radius
