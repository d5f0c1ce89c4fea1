"""``digipat measure``: thickness, distance, agreement and prevalence end to end, and bad input
(exit 1, a clear message, nothing written)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.image import Volume, read_image, write_image
from workflows.cli import main

SPACING = (1.0, 0.5, 0.5)
ORIGIN = (-12.0, 30.0, 5.0)
DIRECTION = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # a flipped (LPS-style) grid

WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI_WRIGHT = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def _radius_mm(shape, centre):
    g = np.indices(shape).astype(float)
    s = np.asarray(SPACING)[:, None, None, None]
    return np.sqrt((((g - np.asarray(centre, float)[:, None, None, None]) * s) ** 2).sum(axis=0))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    shape = (34, 64, 64)
    r = _radius_mm(shape, (16.5, 31.5, 31.5))
    shell = ((r >= 10.0) & (r <= 14.0)).astype(np.uint8)  # a 4 mm shell
    write_image(Volume(shell, SPACING, ORIGIN, DIRECTION), d / "shell.nii.gz")
    labels = np.zeros((41, 61, 61), np.uint8)
    labels[_radius_mm(labels.shape, (20, 30, 10)) <= 4.0] = 1  # gap along x: 20 - 4 - 5 = 11 mm
    labels[_radius_mm(labels.shape, (20, 30, 50)) <= 5.0] = 2
    write_image(Volume(labels, SPACING, ORIGIN, DIRECTION), d / "labels.nii.gz")
    for lab in (1, 2):
        write_image(Volume((labels == lab).astype(np.uint8), SPACING, ORIGIN, DIRECTION), d / f"sphere{lab}.nii.gz")
    write_image(Volume(np.zeros((8, 8, 8), np.uint8), SPACING), d / "empty.nii.gz")
    write_image(Volume((labels == 2).astype(np.uint8), (1.0, 0.6, 0.5), ORIGIN, DIRECTION), d / "other_grid.nii.gz")
    write_image(Volume(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32), SPACING), d / "ct.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((10, 12), np.uint8)), str(d / "slice2d.nii.gz"))
    (d / "pefr.csv").write_text("subject,wright,mini\n" + "".join(
        f"S{i + 1},{w},{m}\n" for i, (w, m) in enumerate(zip(WRIGHT, MINI_WRIGHT))))
    (d / "sf.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in SHROUT_FLEISS))
    return d


# --------------------------------------------------------------------------- thickness
def test_thickness_writes_map_record_and_histogram(images, tmp_path, capsys):
    out = tmp_path / "thick"
    assert main(["measure", "thickness", str(images / "shell.nii.gz"), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "thickness.json").read_text())
    assert printed["statistics"] == record["statistics"]
    st = record["statistics"]
    assert abs(st["median_mm"] - 4.0) <= 0.5 and abs(st["mode_mm"] - 4.0) <= 0.5  # within one voxel
    assert st["max_mm"] >= st["p95_mm"] >= st["p75_mm"] >= st["median_mm"] >= st["p25_mm"] >= st["p5_mm"] > 0
    assert record["spacing_mm_zyx"] == list(SPACING) and record["schema_version"] == "1.0"
    tmap = read_image(out / "thickness.nii.gz")
    shell = read_image(images / "shell.nii.gz")
    assert tmap.spacing_mm == pytest.approx(SPACING) and tmap.origin_xyz_mm == pytest.approx(ORIGIN)
    np.testing.assert_allclose(tmap.direction_xyz, DIRECTION)
    assert np.all((tmap.array > 0) == (shell.array > 0))
    assert np.median(tmap.array[tmap.array > 0]) == pytest.approx(st["median_mm"], rel=1e-6)
    assert (out / "thickness_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["thickness.json", "thickness.nii.gz", "thickness_histogram.png"]


def test_thickness_prints_statistics_in_mm(images, capsys):
    assert main(["measure", "thickness", str(images / "shell.nii.gz")]) == 0
    text = capsys.readouterr().out
    for word in ("max", "mean", "median", "5th pct", "95th pct", " mm"):
        assert word in text


def test_thickness_of_one_label(images, capsys):
    assert main(["measure", "thickness", str(images / "labels.nii.gz"), "--label", "1", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["statistics"]
    assert 8.0 <= st["max_mm"] < 8.0 + 2 * 1.0  # a ball of radius 4 mm: one sphere, 2R to 2R + 2 voxels


# --------------------------------------------------------------------------- distance
def test_distance_between_two_files(images, tmp_path, capsys):
    out = tmp_path / "dist"
    assert main(["measure", "distance", str(images / "sphere1.nii.gz"), str(images / "sphere2.nii.gz"),
                 "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["distance_mm"] == pytest.approx(11.0) and not r["overlap"]
    assert abs(r["surface_distance_mm"] - 11.0) <= 0.5 * 0.5  # sub-voxel: within half a voxel along x
    gap = np.subtract(r["surface_point_b_xyz_mm"], r["surface_point_a_xyz_mm"])
    assert 0 <= np.linalg.norm(gap) - r["surface_distance_mm"] <= 0.5  # (the smoothing's shift, added back)
    assert r["index_a_kji"] == [20, 30, 18] and r["index_b_kji"] == [20, 30, 40]
    vol = read_image(images / "sphere1.nii.gz")
    assert r["point_a_xyz_mm"] == pytest.approx(vol.index_to_world([20, 30, 18]).tolist())
    assert r["point_b_xyz_mm"] == pytest.approx(vol.index_to_world([20, 30, 40]).tolist())
    assert np.linalg.norm(np.subtract(r["point_b_xyz_mm"], r["point_a_xyz_mm"])) == pytest.approx(11.0)
    assert json.loads((out / "distance.json").read_text())["distance_mm"] == pytest.approx(11.0)


def test_distance_between_two_labels_of_one_file_and_overlap(images, capsys):
    labels = str(images / "labels.nii.gz")
    assert main(["measure", "distance", labels, labels, "--label-a", "1", "--label-b", "2"]) == 0
    assert "11.000 mm between boundary voxel centres" in capsys.readouterr().out
    assert main(["measure", "distance", labels, str(images / "sphere2.nii.gz"), "--label-a", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["overlap"] and r["distance_mm"] == 0.0 and r["overlap_voxels"] > 0


# --------------------------------------------------------------------------- agreement
def test_agreement_on_the_pefr_table(images, tmp_path, capsys):
    out = tmp_path / "agree"
    assert main(["measure", "agreement", str(images / "pefr.csv"), "--columns", "wright,mini", "--limits-sd", "2",
                 "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    ba = r["bland_altman"]
    assert (ba["method_a"], ba["method_b"], ba["n"]) == ("wright", "mini", 17)
    assert round(ba["bias"], 1) == -2.1 and round(ba["sd"], 1) == 38.8  # Bland & Altman (1986)
    assert ba["lower_limit"] == pytest.approx(-79.7, abs=0.2) and ba["upper_limit"] == pytest.approx(75.5, abs=0.2)
    assert ba["bias_ci"] == pytest.approx([-22.0, 17.8], abs=0.1)
    assert set(r["icc"]) == {"ICC(2,1)", "ICC(3,1)"} and -1 <= r["lin_ccc"]["value"] <= 1
    assert (out / "bland_altman.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "agreement.json").read_text())["bland_altman"] == ba


def test_agreement_on_a_headerless_table_gives_the_shrout_fleiss_iccs(images, capsys):
    assert main(["measure", "agreement", str(images / "sf.csv"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["columns"] == ["1", "2", "3", "4"]
    assert round(r["icc"]["ICC(2,1)"]["value"], 2) == 0.29 and round(r["icc"]["ICC(3,1)"]["value"], 2) == 0.71
    assert main(["measure", "agreement", str(images / "sf.csv")]) == 0
    text = capsys.readouterr().out
    assert "Bland-Altman (1 - 2)" in text and "ICC(2,1)" in text and "Lin's CCC" in text


# --------------------------------------------------------------------------- prevalence
def test_prevalence_table_and_plot(tmp_path, capsys):
    out = tmp_path / "prev"
    assert main(["measure", "prevalence", "--sensitivity", "0.9", "--specificity", "0.9", "--prevalence", "0.01",
                 "0.5", "--own-prevalence", "0.2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0.0833" in text
    rows = (out / "predictive_values.csv").read_text().splitlines()
    assert rows[0] == "prevalence,ppv,npv"
    p, ppv, npv = map(float, rows[1].split(","))
    assert (p, ppv, npv) == pytest.approx((0.01, 90 / 1080, 8910 / 8920), rel=1e-5)
    record = json.loads((out / "prevalence.json").read_text())
    assert record["own_prevalence"]["ppv"] == pytest.approx(0.18 / 0.26)
    assert (out / "predictive_values.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["measure", "prevalence", "--sensitivity", "0.9", "--specificity", "0.8", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["table"]
    assert [row["prevalence"] for row in table] == [0.001, 0.01, 0.05, 0.1, 0.2, 0.5]


# --------------------------------------------------------------------------- bad input
BAD = [
    (["thickness", "{d}/missing.nii.gz"], "image not found"),
    (["thickness", "{d}/empty.nii.gz"], "is empty"),
    (["thickness", "{d}/slice2d.nii.gz"], "2-D"),
    (["thickness", "{d}/ct.nii.gz"], "not a mask"),
    (["thickness", "{d}/labels.nii.gz"], "choose one with --label"),
    (["thickness", "{d}/labels.nii.gz", "--label", "7"], "no voxel with label 7"),
    (["distance", "{d}/sphere1.nii.gz", "{d}/other_grid.nii.gz"], "not on the same grid"),
    (["distance", "{d}/sphere1.nii.gz", "{d}/empty.nii.gz"], "is empty"),
    (["distance", "{d}/sphere1.nii.gz", "{d}/missing.nii.gz"], "image not found"),
    (["agreement", "{d}/one_column.csv"], "at least 2 columns"),
    (["agreement", "{d}/pefr.csv"], "not a finite number"),
    (["agreement", "{d}/pefr.csv", "--columns", "wright,nope"], "column 'nope' is not in"),
    (["agreement", "{d}/missing.csv"], "table not found"),
    (["prevalence", "--sensitivity", "1.2", "--specificity", "0.9"], "sens must be a fraction"),
    (["prevalence", "--sensitivity", "0.9", "--specificity", "0.9", "--prevalence", "0"], "prevalence must be in"),
    (["prevalence", "--sensitivity", "0.9", "--specificity", "0.9", "--own-prevalence", "2"], "--own-prevalence"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_exits_1_and_writes_nothing(images, tmp_path, capsys, args, message):
    (images / "one_column.csv").write_text("a\n1\n2\n3\n")
    out = tmp_path / "out"
    argv = ["measure"] + [a.format(d=images) for a in args] + ["--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("digipat: error: ") and message in err
    assert not out.exists() or list(out.iterdir()) == []


def test_out_that_is_a_file_is_refused(images, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["measure", "thickness", str(images / "shell.nii.gz"), "--out", str(f)]) == 1
    assert "is a file" in capsys.readouterr().err


def test_a_failure_while_writing_leaves_nothing(images, tmp_path, monkeypatch, capsys):
    """The map, histogram and record are moved into DIR together: if writing the map fails,
    neither the histogram nor the record appears."""
    import pipeline.image

    def broken(vol, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pipeline.image, "write_image", broken)
    out = tmp_path / "thick"
    assert main(["measure", "thickness", str(images / "shell.nii.gz"), "--out", str(out)]) == 1
    assert "No space left" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
