"""The `digipat` command line: help, exit codes, and bad input that leaves no results file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.image import Volume, write_image

DIGIPAT = [sys.executable, "-m", "workflows.cli"]


def _run(*args, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(DIGIPAT + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("sub", [[], ["flow"], ["demo"], ["synth"]])
def test_help(sub):
    p = _run(*sub, "--help")
    assert p.returncode == 0
    assert "usage: digipat" in p.stdout


def test_flow_requires_out():
    p = _run("flow", "x.nii.gz")
    assert p.returncode == 2
    assert "--out" in p.stderr


def _assert_failed_cleanly(p, out: Path, *words):
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("digipat: error:"), p.stderr
    for w in words:
        assert w in p.stderr, p.stderr
    assert not (out / "results.json").exists()
    assert "Traceback" not in p.stderr


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    p = _run("flow", tmp_path / "nope.nii.gz", "--out", out)
    _assert_failed_cleanly(p, out, "not found")


def test_two_dimensional_image(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((32, 32), dtype=np.int16))
    sitk.WriteImage(img, str(tmp_path / "slice.nii.gz"))
    out = tmp_path / "out"
    p = _run("flow", tmp_path / "slice.nii.gz", "--out", out)
    _assert_failed_cleanly(p, out, "2-D")


def test_image_without_vessel(tmp_path):
    rng = np.random.default_rng(1)
    arr = (40 + 10 * rng.standard_normal((32, 32, 32))).astype(np.float32)
    write_image(Volume(arr), tmp_path / "empty.nii.gz")
    out = tmp_path / "out"
    p = _run("flow", tmp_path / "empty.nii.gz", "--out", out)
    _assert_failed_cleanly(p, out, "vessel")


def test_vessel_ending_inside_the_image(tmp_path):
    from phantoms.vessels import make_angiogram

    ang = make_angiogram("straight", shape_zyx=(48, 40, 40), spacing_mm=(0.5, 0.5, 0.5), radius_mm=2.0, seed=3)
    arr = ang.image.array.copy()
    arr[30:] = 40.0  # the vessel now ends inside the image: only the z=0 face is open
    write_image(ang.image.with_array(arr), tmp_path / "stump.nii.gz")
    out = tmp_path / "out"
    # automatic detection refuses a bright structure that does not cross the image ...
    p = _run("flow", tmp_path / "stump.nii.gz", "--out", out)
    _assert_failed_cleanly(p, out, "two faces")
    # ... and with a seed inside it, the model is clipped along its centreline: one end at
    # the open face, the other short of the rounded end, each cap a section of the 2 mm tube
    seed = ang.centrelines_xyz_mm[0][10]
    p = _run("flow", tmp_path / "stump.nii.gz", "--out", out, "--seed-mm", *seed)
    assert p.returncode == 0, p.stderr + p.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["centerline"]["clipping"] == "centreline"
    assert [c["name"] for c in r["surface"]["caps"]] == ["inlet", "outlet1"]
    for c in r["surface"]["caps"]:
        assert c["radius_mm"] == pytest.approx(2.0, rel=0.1)
    assert r["mass_balance_rel_error"] < 1e-6
    assert (out / "centerline.vtp").exists() and (out / "check.png").exists()


def test_stale_results_removed_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    p = _run("flow", tmp_path / "nope.nii.gz", "--out", out)
    assert p.returncode == 1
    # the image is checked before the folder is touched: an earlier result stays untouched
    assert (out / "results.json").exists()
    # ... but a run that starts and then fails leaves no results.json
    rng = np.random.default_rng(2)
    write_image(Volume((40 + rng.standard_normal((24, 24, 24))).astype(np.float32)), tmp_path / "e.nii.gz")
    p = _run("flow", tmp_path / "e.nii.gz", "--out", out)
    _assert_failed_cleanly(p, out, "vessel")


def test_seed_outside_image(tmp_path):
    write_image(Volume(np.zeros((16, 16, 16), np.float32)), tmp_path / "z.nii.gz")
    out = tmp_path / "out"
    p = _run("flow", tmp_path / "z.nii.gz", "--out", out, "--seed-mm", 500, 0, 0)
    _assert_failed_cleanly(p, out, "outside the image")


def test_synth_then_flow_json(tmp_path):
    import json

    p = _run("synth", "--out", tmp_path / "pat", "--size", "small", "--stenosis", "0.3", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    p = _run("flow", info["image"], "--out", tmp_path / "run", "--flow-rate-ml-s", "0.2", "--model", "stokes",
             "--json", "--no-fields", "--cells-per-radius", "3", "--no-error-estimate")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["pressure_drop_Pa"] > 0
    assert res["parameters"]["flow_rate_ml_s"] == 0.2
    assert (tmp_path / "run" / "results.json").exists()
    assert (tmp_path / "run" / "mesh" / "mesh.msh").exists()


def test_newton_failure_exits_nonzero_without_results(tmp_path):
    p = _run("synth", "--out", tmp_path / "pat", "--size", "small", "--stenosis", "0.6", "--json")
    assert p.returncode == 0, p.stderr
    import json

    image = json.loads(p.stdout)["image"]
    out = tmp_path / "run"
    p = _run("flow", image, "--out", out, "--flow-rate-ml-s", "20", "--newton-max-iterations", "1",
             "--no-fields", "--cells-per-radius", "2.5")
    _assert_failed_cleanly(p, out, "converge")


def test_bad_petsc_option(tmp_path):
    p = _run("flow", tmp_path / "x.nii.gz", "--out", tmp_path / "o", "--petsc-option", "novalue")
    assert p.returncode == 1
    assert "KEY=VALUE" in p.stderr


def test_dicom_modality_tag_chooses_the_intensity_model(tmp_path, write_dicom_series):
    """A DICOM series tagged MR is segmented as MR (no HU rules) although its values go negative."""
    from phantoms.vessels import make_angiogram

    ang = make_angiogram("straight", shape_zyx=(40, 32, 32), spacing_mm=(0.5, 0.5, 0.5), radius_mm=2.0, seed=3)
    assert ang.image.array.min() < 0  # the value range alone would say CT
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(series, ang.image.with_array(np.rint(ang.image.array).astype(np.int16)), "MR")
    out = tmp_path / "out"
    p = _run("flow", series, "--out", out, "--model", "stokes", "--no-fields", "--quiet", "--no-error-estimate")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "results.json").read_text())["segmentation"]["modality"] == "mr"
