"""`digipat dose SCENARIO.toml --out DIR`: outputs, energy balance, and bad scenarios.

The phantom is a 4 × 4 × 4 box of 1 cm water voxels; a 60 keV pencil beam enters along
+z through the middle. Independent truths: energy conservation (deposited + escaped =
60 000 eV per photon, exactly up to round-off), dose = energy / (ρ V) with ρ V known, and
for the parallel beam the uncollided transmission exp(−μ x) with NIST XCOM
μ/ρ(water, 60 keV) = 0.2059 cm²/g. The scan, bowtie, SpekPy and world-material keys are
checked through the Python API (parse + build) for speed, each bad value by the key its
message names, and once end to end.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.image import Volume, read_image, write_image
from physics.transport import run as transport_run
from workflows.dose.run import build_model
from workflows.dose.scenario import ScenarioError, read_scenario

DIGIPAT = [sys.executable, "-m", "workflows.cli"]
WATER = "1,Water,1.0,0.111894,0.888106\n"
HEADER = "label_id,tissue_name,density_g_cm3,H,O\n"


def _run(*args):
    return subprocess.run(DIGIPAT + [str(a) for a in args], capture_output=True, text=True,
                          env=dict(os.environ, MPLBACKEND="Agg"))


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # inline table, e.g. filtration_mm = {Al = 2.5}; None drops the key
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    return repr(v)


def _scenario(tmp_path: Path, *, materials=HEADER + WATER, labels=None, **sections) -> Path:
    """Write a water-box scenario; ``sections`` override keys, e.g. source={"energy_keV": -1}.

    A value of None removes the key; an entry ``"extra": {...}`` adds a whole section.
    """
    if labels is None:
        labels = np.ones((4, 4, 4), dtype=np.int16)
    write_image(Volume(labels, spacing_mm=(10.0, 10.0, 10.0), origin_xyz_mm=(-15.0, -15.0, -15.0)),
                tmp_path / "box.nii.gz")
    (tmp_path / "materials.csv").write_text(materials)
    base = {
        "phantom": {"labels": "box.nii.gz", "materials": "materials.csv"},
        "source": {"type": "pencil", "position_mm": [0.0, 0.0, -100.0], "direction": [0.0, 0.0, 1.0],
                   "energy_keV": 60.0},
        "physics": {"compton": "binding", "rayleigh": True},
        "run": {"histories": 4000, "seed": 1, "batches": 4},
    }
    for sec, kv in sections.items():
        base.setdefault(sec, {})
        for k, v in kv.items():
            if v is None:
                base[sec].pop(k, None)
            else:
                base[sec][k] = v
    text = "".join(f"[{sec}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in kv.items()) + "\n"
                   for sec, kv in base.items())
    p = tmp_path / "scenario.toml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def pencil_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dose")
    scen = _scenario(tmp)
    out = tmp / "out"
    p = _run("dose", scen, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    return scen, out, json.loads((out / "results.json").read_text())


def test_outputs_and_keys(pencil_run):
    _, out, res = pencil_run
    assert res["schema_version"]
    assert res["histories"] == 4000 and res["batches"] == 4
    assert res["histories_per_second"] > 0
    assert res["provenance"]["seed"] == 1 and len(res["provenance"]["inputs_hash"]) == 64
    lab = res["labels"]["1"]
    for k in ("edep_eV_per_photon", "edep_sigma_eV_per_photon", "dose_Gy_per_photon",
              "dose_sigma_Gy_per_photon", "mass_g", "tissue_name", "voxel_count"):
        assert k in lab
    assert lab["tissue_name"] == "Water" and lab["voxel_count"] == 64
    assert lab["mass_g"] == pytest.approx(64.0, rel=1e-6)  # 64 cm³ × 1 g/cm³
    assert 0 < lab["edep_sigma_eV_per_photon"] < 0.2 * lab["edep_eV_per_photon"]
    # dose = E / m: eV → J over kg
    assert lab["dose_Gy_per_photon"] == pytest.approx(lab["edep_eV_per_photon"] * 1.602176634e-19 / 0.064,
                                                      rel=1e-12)
    with open(out / "organs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["label_id"] == "1"
    assert float(rows[0]["edep_eV_per_photon"]) == pytest.approx(lab["edep_eV_per_photon"], rel=1e-15)
    dose = read_image(out / "dose.nii.gz")
    assert dose.shape == (4, 4, 4)
    assert dose.spacing_mm == pytest.approx((10.0, 10.0, 10.0))
    assert dose.origin_xyz_mm == pytest.approx((-15.0, -15.0, -15.0))
    # voxel doses × voxel masses (1 g each) sum to the label's energy
    e_vox_eV = np.asarray(dose.array, float).sum() * 1e-3 / 1.602176634e-19
    assert e_vox_eV == pytest.approx(lab["edep_eV_per_photon"], rel=1e-9)
    assert read_image(out / "dose_sigma.nii.gz").shape == (4, 4, 4)
    assert not list(out.glob(".tmp*"))


def test_energy_balance(pencil_run):
    _, _, res = pencil_run
    dep = sum(r["edep_eV_per_photon"] for r in res["labels"].values())
    assert res["incident_eV_per_photon"] == pytest.approx(60_000.0, rel=1e-12)
    assert abs(dep + res["escaped_eV_per_photon"] + res["world_eV_per_photon"]
               + res["filtered_at_source_eV_per_photon"] - 60_000.0) / 60_000.0 < 1e-9
    assert res["world_eV_per_photon"] == 0.0 and res["filtered_at_source_eV_per_photon"] == 0.0
    assert abs(res["energy_balance_relative_error"]) < 1e-9
    # a pencil beam along +z into the middle of the box: nothing misses, most energy leaves
    assert res["escape"]["missed"]["photons_per_photon"] == 0.0
    assert res["escape"]["+z"]["energy_eV_per_photon"] > res["escape"]["-z"]["energy_eV_per_photon"]


def test_rerun_skips_and_is_reproducible(pencil_run, tmp_path):
    scen, out, res = pencil_run
    p = _run("dose", scen, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    # same inputs: the finished run is reused, not recomputed
    assert json.loads(p.stdout)["provenance"]["created_utc"] == res["provenance"]["created_utc"]
    # same seed, fresh folder, another thread count: same numbers
    p = _run("dose", scen, "--out", tmp_path / "again", "--quiet", "--threads", "1")
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["labels"]["1"]["edep_eV_per_photon"] == pytest.approx(res["labels"]["1"]["edep_eV_per_photon"],
                                                                       rel=1e-12)


def test_parallel_beam_spectrum_uncollided_transmission(tmp_path):
    """Broad beam through 4 cm of water: uncollided +z escape ≈ exp(−μx), μ/ρ = 0.2059 cm²/g (NIST XCOM)."""
    (tmp_path / "spec.csv").write_text("energy_keV,relative_fluence\n60.0,1.0\n")
    scen = _scenario(tmp_path, source={"type": "parallel", "energy_keV": None, "spectrum": "spec.csv",
                                       "position_mm": [0.0, 0.0, -30.0], "width_mm": 20.0, "height_mm": 20.0},
                     run={"histories": 20000, "batches": 4})
    p = _run("dose", scen, "--out", tmp_path / "out", "--quiet")
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    sc = read_scenario(scen)
    assert sc.source.spectrum == (tmp_path / "spec.csv").resolve()
    # the same model through the Python API: same numbers, plus the uncollided tally
    model = build_model(sc)
    r = transport_run(model.phantom, model.materials, model.source, model.physics, model.settings)
    unc = r.escape("+z", "uncollided_count")[0]
    expect = math.exp(-0.2059 * 1.0 * 4.0)  # binomial σ = sqrt(p(1-p)/N) ≈ 0.0033
    assert abs(unc - expect) < 4 * math.sqrt(expect * (1 - expect) / 20000)
    assert r.label_edep_eV_per_photon[0] == pytest.approx(res["labels"]["1"]["edep_eV_per_photon"], rel=1e-12)
    dep = sum(v["edep_eV_per_photon"] for v in res["labels"].values())
    assert abs(dep + res["escaped_eV_per_photon"] + res["world_eV_per_photon"]
               + res["filtered_at_source_eV_per_photon"] - 60_000.0) / 60_000.0 < 1e-9
    assert res["world_eV_per_photon"] == 0.0 and res["filtered_at_source_eV_per_photon"] == 0.0


# ----------------------------------------------------------------------------- bad input
def _assert_failed(p, out: Path, *words):
    assert p.returncode == 1, (p.returncode, p.stderr)
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("digipat: error:"), p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)
    assert "Traceback" not in p.stderr
    assert not (out / "results.json").exists()


BAD = {
    "negative energy": (dict(source={"energy_keV": -60.0}), ["[source]", "energy_keV", "> 0"]),
    "zero histories": (dict(run={"histories": 0}), ["[run]", "histories", ">= 1"]),
    "unknown key": (dict(source={"energy_kev": 60.0}), ["[source]", "'energy_kev'"]),
    "unknown section": (dict(extra={"x": 1}), ["unknown section [extra]"]),
    "key of another type": (dict(source={"fan_width_mm": 10.0}), ["'fan_width_mm'", "does not apply", "pencil"]),
    "bad source type": (dict(source={"type": "laser"}), ["[source] type", "'laser'", "pencil"]),
    "bad compton": (dict(physics={"compton": "free"}), ["[physics] compton", "klein-nishina"]),
    "bad fluorescence": (dict(physics={"fluorescence": "yes"}), ["[physics] fluorescence", "true or false"]),
    "missing labels file": (dict(phantom={"labels": "nope.nii.gz"}), ["[phantom] labels", "nope.nii.gz",
                                                                     "does not exist"]),
    "missing spectrum": (dict(source={"energy_keV": None, "spectrum": "no.csv"}), ["[source] spectrum", "no.csv"]),
    "both energies": (dict(source={"spectrum": "materials.csv"}), ["[source]", "exactly one"]),
    "pencil misses": (dict(source={"position_mm": [0.0, 100.0, -100.0]}), ["[source] position_mm", "misses"]),
    "pencil points away": (dict(source={"direction": [0.0, 0.0, -1.0]}), ["[source]", "misses"]),
    "ct misses": (dict(source={"type": "ct", "position_mm": None, "direction": None, "source_to_isocentre_mm": 600.0,
                               "fan_width_mm": 10.0, "slice_width_mm": 10.0, "isocentre_mm": [0.0, 500.0, 0.0]}),
                  ["[source] isocentre_mm", "misses"]),
    "histories not multiple": (dict(run={"histories": 1001}), ["[run] histories", "multiple of batches"]),
    "missing seed": (dict(run={"seed": None}), ["[run] missing key 'seed'"]),
    "missing position": (dict(source={"position_mm": None}), ["[source] missing key 'position_mm'"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_scenario_exits_1_naming_the_key(tmp_path, case):
    sections, words = BAD[case]
    scen = _scenario(tmp_path, **sections)
    out = tmp_path / "out"
    _assert_failed(_run("dose", scen, "--out", out), out, *words)


BAD_FILES = {
    "unknown element": (dict(materials="label_id,tissue_name,density_g_cm3,H,Xx\n1,W,1.0,0.1,0.9\n"),
                        ["[phantom] materials", "Xx"]),
    "label without material": (dict(materials=HEADER + "2,Bone,1.9,0.1,0.9\n"),
                               ["[phantom] materials", "[1]", "no row"]),
    "negative density": (dict(materials=HEADER + "1,Water,-1.0,0.111894,0.888106\n"),
                         ["[phantom] materials", "density_g_cm3", "> 0"]),
    "fractions not 1": (dict(materials=HEADER + "1,Water,1.0,0.2,0.5\n"),
                        ["[phantom] materials", "sum to 0.7"]),
    "negative label": (dict(labels=-np.ones((4, 4, 4), dtype=np.int16)), ["[phantom] labels", ">= 0"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_phantom_files_exit_1(tmp_path, case):
    kwargs, words = BAD_FILES[case]
    scen = _scenario(tmp_path, **kwargs)
    out = tmp_path / "out"
    _assert_failed(_run("dose", scen, "--out", out), out, *words)


def test_negative_spectrum_weight_exits_1(tmp_path):
    (tmp_path / "spec.csv").write_text("energy_keV,relative_fluence\n50.0,1.0\n60.0,-0.5\n")
    scen = _scenario(tmp_path, source={"energy_keV": None, "spectrum": "spec.csv"})
    out = tmp_path / "out"
    _assert_failed(_run("dose", scen, "--out", out), out, "[source] spectrum", "relative_fluence", "-0.5")


def test_missing_scenario_and_bad_toml(tmp_path):
    out = tmp_path / "out"
    _assert_failed(_run("dose", tmp_path / "none.toml", "--out", out), out, "none.toml", "does not exist")
    (tmp_path / "broken.toml").write_text("[run\nhistories = 1\n")
    _assert_failed(_run("dose", tmp_path / "broken.toml", "--out", out), out, "not valid TOML")


def test_failed_rerun_removes_old_results(pencil_run, tmp_path):
    """An error after an earlier success must not leave the old results.json as if current."""
    out = tmp_path / "out"
    ok = _scenario(tmp_path, run={"histories": 400})
    assert _run("dose", ok, "--out", out, "--quiet").returncode == 0
    assert (out / "results.json").exists()
    bad = _scenario(tmp_path, run={"histories": 400}, source={"position_mm": [0.0, 500.0, -100.0]})
    _assert_failed(_run("dose", bad, "--out", out), out, "misses")


def test_read_scenario_api_errors(tmp_path):
    scen = _scenario(tmp_path, physics={"rayleigh": "yes"})
    with pytest.raises(ScenarioError, match=r"\[physics\] rayleigh must be true or false"):
        read_scenario(scen)
    sc = read_scenario(_scenario(tmp_path))
    assert sc.run.histories_per_batch == 1000 and sc.source.energy_keV == 60.0
    assert sc.phantom.labels == (tmp_path / "box.nii.gz").resolve()
    assert isinstance(ScenarioError("x"), ValueError)


def test_help():
    p = _run("dose", "--help")
    assert p.returncode == 0 and "usage: digipat dose" in p.stdout and "SCENARIO" in p.stdout.upper()


def test_ct_source_four_angles_energy_balance(tmp_path):
    """TG-195-style fan beam from four angles: runs, conserves energy, is symmetric in x."""
    scen = _scenario(tmp_path, source={"type": "ct", "position_mm": None, "direction": None,
                                       "source_to_isocentre_mm": 600.0, "fan_width_mm": 40.0,
                                       "slice_width_mm": 10.0, "angles_deg": [0.0, 90.0, 180.0, 270.0]},
                     run={"histories": 8000, "batches": 4})
    out = tmp_path / "out"
    p = _run("dose", scen, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"]["source"]["angles_deg"] == [0.0, 90.0, 180.0, 270.0]
    dep = sum(v["edep_eV_per_photon"] for v in res["labels"].values())
    assert abs(dep + res["escaped_eV_per_photon"] + res["world_eV_per_photon"]
               + res["filtered_at_source_eV_per_photon"] - 60_000.0) / 60_000.0 < 1e-9
    assert res["world_eV_per_photon"] == 0.0 and res["filtered_at_source_eV_per_photon"] == 0.0
    assert dep > 0
    # the slice is 10 mm thick at the isocentre (z in [-5, 5] mm): the outer z-layers get little dose
    d = np.asarray(read_image(out / "dose.nii.gz").array)
    assert d[1:3].sum() > 5 * (d[0].sum() + d[3].sum())


# ----------------------------------------------------------------------------- CT scans, bowtie, SpekPy, world
MATERIALS_3 = ("label_id,tissue_name,density_g_cm3,H,C,N,O,Al,Ar\n"
               "0,Air,0.001205,0,0.000124,0.755268,0.231781,0,0.012827\n"
               "1,Water,1.0,0.111894,0,0,0.888106,0,0\n"
               "2,Aluminium,2.699,0,0,0,0,1.0,0\n")
CT = {"type": "ct", "position_mm": None, "direction": None, "source_to_isocentre_mm": 600.0,
      "fan_width_mm": 40.0, "slice_width_mm": 10.0}
HELICAL = {**CT, "rotation": "continuous", "pitch": 1.0, "z_start_mm": -10.0, "z_end_mm": 10.0,
           "start_angle_deg": 90.0}
BOWTIE = {"material_id": 2, "centre_thickness_mm": 1.0, "phantom_radius_mm": 20.0, "ratio": 0.3}
KVP = {"energy_keV": None, "kvp": 80.0, "anode_angle_deg": 10.0, "filtration_mm": {"Al": 2.5, "Cu": 0.1}}


def _build_error(tmp_path, **sections) -> str:
    """The ScenarioError message of reading and building a scenario (it must fail)."""
    with pytest.raises(ScenarioError) as info:
        build_model(read_scenario(_scenario(tmp_path, materials=MATERIALS_3, **sections)))
    return str(info.value)


def test_helical_bowtie_kvp_scenario_parses_and_builds(tmp_path):
    from physics.transport import Bowtie, CTFanBeam, Spectrum
    sc = read_scenario(_scenario(tmp_path, materials=MATERIALS_3,
                                 source={**HELICAL, **KVP, "bowtie": BOWTIE}))
    s = sc.source
    assert (s.kvp, s.anode_angle_deg, s.filtration_mm) == (80.0, 10.0, {"Al": 2.5, "Cu": 0.1})
    assert s.energy_keV is None and s.spectrum is None and s.energy_key == "kvp"
    assert s.geometry["rotation"] == "continuous" and s.geometry["pitch"] == 1.0
    assert s.geometry["bowtie"] == BOWTIE
    model = build_model(sc)
    src = model.source
    assert isinstance(src, CTFanBeam) and isinstance(src.bowtie, Bowtie) and isinstance(src.energy, Spectrum)
    assert src.rotation == "continuous" and src.start_angle_deg == 90.0
    assert (src.z_start_mm, src.z_end_mm) == pytest.approx((-10.0, 10.0))
    assert src.total_angle_deg == pytest.approx(720.0)  # 20 mm at 10 mm per rotation
    assert src.bowtie.material.name == "Aluminium" and src.bowtie.kind == "cylinder_compensator"
    assert src.energy.max_energy_keV == pytest.approx(80.0)
    d = sc.to_dict()["source"]
    assert d["kvp"] == 80.0 and d["filtration_mm"] == {"Al": 2.5, "Cu": 0.1} and d["bowtie"]["ratio"] == 0.3
    json.dumps(sc.to_dict())
    # defaults: anode 12°, 2.5 mm Al; a continuous axial scan centred on the isocentre
    sc = read_scenario(_scenario(tmp_path, materials=MATERIALS_3,
                                 source={**CT, "energy_keV": None, "kvp": 120.0, "rotation": "continuous"}))
    assert (sc.source.anode_angle_deg, sc.source.filtration_mm) == (12.0, {"Al": 2.5})
    src = build_model(sc).source
    assert (src.pitch, src.total_angle_deg, src.z_start_mm, src.bowtie) == (0.0, 360.0, 0.0, None)


def test_bowtie_section_and_profile_csv(tmp_path):
    """A hand-written [source.bowtie] section with a profile CSV; its content enters the inputs hash."""
    from workflows.dose.run import _inputs_hash
    _scenario(tmp_path, materials=MATERIALS_3)  # writes box.nii.gz and materials.csv
    (tmp_path / "bowtie.csv").write_text("fan_angle_deg,thickness_mm\n-3.0,6.0\n0.0,1.0\n3.0,6.0\n")
    text = ('[phantom]\nlabels = "box.nii.gz"\nmaterials = "materials.csv"\n'
            '[source]\ntype = "ct"\nsource_to_isocentre_mm = 600.0\nfan_width_mm = 40.0\nslice_width_mm = 10.0\n'
            'energy_keV = 60.0\nangles_deg = [0.0, 180.0]\n'
            '[source.bowtie]\nmaterial_id = 2\nprofile = "bowtie.csv"\n'
            '[run]\nhistories = 400\nseed = 3\nbatches = 4\n')
    (tmp_path / "bt.toml").write_text(text)
    sc = read_scenario(tmp_path / "bt.toml")
    assert sc.source.geometry["bowtie"]["profile"] == (tmp_path / "bowtie.csv").resolve()
    assert (tmp_path / "bowtie.csv").resolve() in sc.input_files()
    src = build_model(sc).source
    assert src.bowtie.kind == "table" and src.bowtie.coordinate == "fan_angle_deg"
    assert src.bowtie.thickness_mm(0.0, 600.0) == pytest.approx(1.0)
    h1 = _inputs_hash(sc)
    (tmp_path / "bowtie.csv").write_text("fan_angle_deg,thickness_mm\n-3.0,6.0\n0.0,2.0\n3.0,6.0\n")
    assert _inputs_hash(sc) != h1


def test_world_material_parses_and_reaches_the_engine(tmp_path):
    import dataclasses

    from physics.transport import VoxelPhantom
    plain = read_scenario(_scenario(tmp_path, materials=MATERIALS_3))
    assert plain.phantom.world_material is None and "world_material" not in plain.to_dict()["phantom"]
    sc = read_scenario(_scenario(tmp_path, materials=MATERIALS_3,
                                 phantom={"world_material": 0, "world_margin_mm": 500.0}))
    assert (sc.phantom.world_material, sc.phantom.world_margin_mm) == (0, 500.0)
    assert sc.to_dict()["phantom"]["world_material"] == 0
    if {"world_material_id", "world_margin_mm"} <= {f.name for f in dataclasses.fields(VoxelPhantom)}:
        ph = build_model(sc).phantom
        assert (ph.world_material_id, ph.world_margin_mm) == (0, 500.0)
    else:
        with pytest.raises(ScenarioError, match=r"\[phantom\] world_material needs engine support"):
            build_model(sc)


BAD_NEW_KEYS = {
    "rotation": (dict(source={**CT, "rotation": "spiral"}), r"[source] rotation must be one of 'discrete'"),
    "negative pitch": (dict(source={**HELICAL, "pitch": -1.0}), "[source] pitch must be >= 0, got -1.0"),
    "pitch without continuous": (dict(source={**CT, "pitch": 1.0}), '[source] pitch needs rotation = "continuous"'),
    "angles with continuous": (dict(source={**HELICAL, "angles_deg": [0.0]}), "[source] angles_deg applies to"),
    "zero rotations": (dict(source={**CT, "rotation": "continuous", "n_rotations": 0}),
                       "[source] n_rotations must be > 0"),
    "two extents": (dict(source={**CT, "rotation": "continuous", "arc_deg": 90.0, "n_rotations": 2}),
                    "[source] give at most one of arc_deg, n_rotations, z_end_mm"),
    "z_end without pitch": (dict(source={**HELICAL, "pitch": None}), "[source] z_end_mm needs pitch > 0"),
    "z_end before start": (dict(source={**HELICAL, "z_end_mm": -20.0}), "[source] z_end_mm must be > z_start_mm"),
    "z_start string": (dict(source={**HELICAL, "z_start_mm": "0"}), "[source] z_start_mm must be a finite number"),
    "kvp too low": (dict(source={**CT, **KVP, "kvp": 5.0}), "[source] kvp must be a number in [10, 500] kV"),
    "kvp negative": (dict(source={**CT, **KVP, "kvp": -80.0}), "[source] kvp must be > 0"),
    "kvp and energy": (dict(source={**CT, **KVP, "energy_keV": 60.0}), "[source] give exactly one of energy_keV"),
    "anode without kvp": (dict(source={**CT, "anode_angle_deg": 12.0}),
                          "[source] anode_angle_deg applies to a SpekPy spectrum only"),
    "anode angle": (dict(source={**CT, **KVP, "anode_angle_deg": 95.0}), "[source] anode_angle_deg must be in (0, 90)"),
    "filter material": (dict(source={**CT, **KVP, "filtration_mm": {"Xx": 1.0}}),
                        "[source] filtration_mm: unknown filter material 'Xx'"),
    "filter thickness": (dict(source={**CT, **KVP, "filtration_mm": {"Al": -1.0}}),
                         "[source] filtration_mm.Al must be >= 0"),
    "filter not a table": (dict(source={**CT, **KVP, "filtration_mm": 2.5}),
                           "[source] filtration_mm must be a table"),
    "bowtie without material": (dict(source={**CT, "bowtie": {**BOWTIE, "material_id": None}}),
                                "[source.bowtie] missing key 'material_id'"),
    "bowtie material not in table": (dict(source={**CT, "bowtie": {**BOWTIE, "material_id": 9}}),
                                     "[source.bowtie] material_id 9 has no row in materials.csv"),
    "bowtie both forms": (dict(source={**CT, "bowtie": {**BOWTIE, "profile": "materials.csv"}}),
                          "[source.bowtie] give either profile"),
    "bowtie neither form": (dict(source={**CT, "bowtie": {"material_id": 2}}), "[source.bowtie] give either profile"),
    "bowtie missing ratio": (dict(source={**CT, "bowtie": {**BOWTIE, "ratio": None}}),
                             "[source.bowtie] missing key 'ratio'"),
    "bowtie negative ratio": (dict(source={**CT, "bowtie": {**BOWTIE, "ratio": -0.3}}),
                              "[source.bowtie] ratio must be >= 0"),
    "bowtie cap below centre": (dict(source={**CT, "bowtie": {**BOWTIE, "max_thickness_mm": 0.5}}),
                                "[source.bowtie] max_thickness_mm must be >= centre_thickness_mm"),
    "bowtie unknown key": (dict(source={**CT, "bowtie": {**BOWTIE, "thickness": 1.0}}),
                           "[source.bowtie] unknown key 'thickness'"),
    "bowtie profile missing": (dict(source={**CT, "bowtie": {"material_id": 2, "profile": "no.csv"}}),
                               "[source.bowtie] profile: file"),
    "bowtie profile bad columns": (dict(source={**CT, "bowtie": {"material_id": 2, "profile": "materials.csv"}}),
                                   "[source.bowtie] profile: bowtie profile file"),
    "bowtie on a pencil beam": (dict(source={"bowtie": BOWTIE}), "[source] key 'bowtie' does not apply to type"),
    "world material negative": (dict(phantom={"world_material": -1}),
                                "[phantom] world_material must be an integer >= 0"),
    "world material name": (dict(phantom={"world_material": "air"}), "[phantom] world_material must be an integer"),
    "world material not in table": (dict(phantom={"world_material": 7}),
                                    "[phantom] world_material 7 has no row in materials.csv"),
    "world margin zero": (dict(phantom={"world_material": 0, "world_margin_mm": 0.0}),
                          "[phantom] world_margin_mm must be > 0"),
    "world margin alone": (dict(phantom={"world_margin_mm": 100.0}), "[phantom] world_margin_mm needs world_material"),
}


@pytest.mark.parametrize("case", list(BAD_NEW_KEYS))
def test_bad_new_keys_name_the_key(tmp_path, case):
    sections, words = BAD_NEW_KEYS[case]
    assert words in _build_error(tmp_path, **sections)


def test_bowtie_profile_must_cover_the_fan(tmp_path):
    (tmp_path / "narrow.csv").write_text("fan_mm,thickness_mm\n-10.0,1.0\n10.0,1.0\n")
    msg = _build_error(tmp_path, source={**CT, "bowtie": {"material_id": 2, "profile": "narrow.csv"}})
    assert "[source] bowtie profile covers fan_mm [-10, 10] mm, but the fan spans [-20, 20] mm" in msg


def test_helical_bowtie_kvp_end_to_end(tmp_path):
    """The CLI runs a helical, bowtie-filtered SpekPy beam and records the new keys; bad pitch exits 1."""
    scen = _scenario(tmp_path, materials=MATERIALS_3, source={**HELICAL, **KVP, "bowtie": BOWTIE},
                     run={"histories": 2000, "batches": 4})
    out = tmp_path / "out"
    p = _run("dose", scen, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    src = res["scenario"]["source"]
    assert (src["rotation"], src["pitch"], src["kvp"], src["bowtie"]["material_id"]) == ("continuous", 1.0, 80.0, 2)
    assert res["incident_eV_per_photon"] < 80_000.0 and res["labels"]["1"]["edep_eV_per_photon"] > 0
    assert abs(res["energy_balance_relative_error"]) < 1e-9
    bad = _scenario(tmp_path, materials=MATERIALS_3, source={**HELICAL, "pitch": -0.5})
    _assert_failed(_run("dose", bad, "--out", tmp_path / "bad"), tmp_path / "bad", "[source] pitch", ">= 0")
