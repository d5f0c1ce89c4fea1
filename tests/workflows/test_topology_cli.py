"""``digipat topology``: end to end on NIfTI masks written to tmp_path, and bad input.

The mask is a vessel that splits into a thick and a thin branch which join again (one loop),
then continues past a 3 mm gap: b0 = 2, b1 = 1, b2 = 0 by construction; the repair must give
one component without loops, with one bridge and one cut on the thin branch.
"""

import json

import numpy as np
import pytest

from pipeline.image import Volume, read_image, write_image
from pipeline.topology import betti_numbers
from workflows.cli import main

SPACING = (1.0, 0.8, 0.9)


def _capsule(g, a, b, r):
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(((g - a) @ d) / (d @ d), 0.0, 1.0)
    return np.linalg.norm(g - (a + t[..., None] * d), axis=-1) <= r


def _broken_loop_tree():
    axes = [np.arange(n) * s for n, s in zip((20, 50, 64), SPACING)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    m = _capsule(g, (10, 20, 4), (10, 20, 14), 3.0) | _capsule(g, (10, 20, 34), (10, 20, 44), 3.0)
    for a, b in [((10, 20, 14), (10, 10, 24)), ((10, 10, 24), (10, 20, 34))]:
        m |= _capsule(g, a, b, 3.0)
    for a, b in [((10, 20, 14), (10, 30, 24)), ((10, 30, 24), (10, 20, 34))]:
        m |= _capsule(g, a, b, 1.5)
    m |= _capsule(g, (10, 20, 53), (10, 20, 55), 3.0)  # beyond a 3 mm gap: caps end at 47 and start at 50
    return m


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory):
    m = _broken_loop_tree()
    assert betti_numbers(m).as_tuple() == (2, 1, 0)
    path = tmp_path_factory.mktemp("topo") / "tree.nii.gz"
    write_image(Volume(m.astype(np.uint8), spacing_mm=SPACING, origin_xyz_mm=(-5.0, 3.0, 7.0)), path)
    return path


def test_text_output(mask_file, capsys):
    assert main(["topology", str(mask_file)]) == 0
    out = capsys.readouterr().out
    assert "b0 = 2, b1 = 1, b2 = 0" in out
    assert "26-connected foreground, 6-connected background" in out
    # trunk, stub and the piece past the gap (two ends): 4 ends; the loop's two forks
    assert "4 end points, 2 branch points, 5 edges, 1 cycle, total length" in out


def test_json_and_connectivity(mask_file, capsys):
    assert main(["topology", str(mask_file), "--json", "--connectivity", "6"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["betti"]["b0"], d["betti"]["b1"], d["betti"]["b2"]) == (2, 1, 0)
    assert (d["betti"]["foreground_connectivity"], d["betti"]["background_connectivity"]) == (6, 26)
    s = d["skeleton"]
    assert s["cycles"] == 1 and s["components"] == 2 and s["total_length_mm"] > 40
    assert d["spacing_mm"] == pytest.approx(SPACING)  # NIfTI stores float32


def test_repair_report_and_cldice(mask_file, tmp_path, capsys):
    out, rep = tmp_path / "repaired.nii.gz", tmp_path / "report.json"
    assert main(["topology", str(mask_file), "--repair", str(out), "--report", str(rep),
                 "--cldice", str(mask_file), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cldice"]["cldice"] == 1.0
    r = d["repair"]
    assert r["is_tree"] and (r["components_before"], r["components_after"]) == (2, 1)
    assert (r["loops_before"], r["loops_after"]) == (1, 0)
    assert len(r["bridges"]) == 1 and len(r["cuts"]) == 1 and r["cuts"][0]["severed"]
    assert 3.0 <= r["bridges"][0]["gap_mm"] <= 3.0 + 2 * max(SPACING)  # 3 mm between voxel centres
    assert r["skeleton_after"]["cycles"] == 0
    # the cut sits on the thin branch: world position back to the drawing's mm frame
    vol = read_image(out)
    assert vol.spacing_mm == pytest.approx(SPACING)
    idx = np.asarray(r["cuts"][0]["index_zyx"])
    np.testing.assert_allclose(vol.index_to_world(idx), r["cuts"][0]["xyz_mm"], atol=1e-3)
    p = idx * SPACING
    assert p[1] > 22.0  # the thin branch runs at y = 20..30 mm, the thick one at y = 10..20 mm
    assert betti_numbers(vol.array != 0).as_tuple() == (1, 0, 0)
    full = json.loads(rep.read_text())
    assert full["skeleton"]["node_list"] and "xyz_mm" in full["skeleton"]["node_list"][0]
    assert full["repair"]["voxels_added"] == r["voxels_added"] and "provenance" in full


def test_text_repair(mask_file, tmp_path, capsys):
    out = tmp_path / "r.nrrd"
    assert main(["topology", str(mask_file), "--repair", str(out)]) == 0
    text = capsys.readouterr().out
    assert "components 2 -> 1, loops 1 -> 0" in text and "bridge: gap" in text and out.exists()


def _bad(tmp_path, argv, capsys, match):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["topology"] + argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("digipat: error: ") and match in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"


def test_bad_input_exits_1_and_writes_nothing(mask_file, tmp_path, capsys):
    out, rep = str(tmp_path / "o.nii.gz"), str(tmp_path / "o.json")
    write = ["--repair", out, "--report", rep]
    _bad(tmp_path, [str(tmp_path / "missing.nii.gz")] + write, capsys, "image not found")
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3], labels[3:5, 3:5, 3:5] = 1, 2
    write_image(Volume(labels), tmp_path / "in_labels.nii.gz")
    _bad(tmp_path, [str(tmp_path / "in_labels.nii.gz")] + write, capsys, "is not a binary mask")
    write_image(Volume(np.zeros((6, 6, 6), np.uint8)), tmp_path / "in_empty.nii.gz")
    _bad(tmp_path, [str(tmp_path / "in_empty.nii.gz")] + write, capsys, "is empty")
    write_image(Volume(np.ones((1, 6, 6), np.uint8)), tmp_path / "in_flat.nii.gz")
    _bad(tmp_path, [str(tmp_path / "in_flat.nii.gz")] + write, capsys, "2-D image")
    small = np.zeros((6, 6, 6), np.uint8)
    small[2:4, 2:4, 2:4] = 1
    write_image(Volume(small), tmp_path / "in_small.nii.gz")
    _bad(tmp_path, [str(mask_file), "--cldice", str(tmp_path / "in_small.nii.gz")] + write, capsys,
         "same grid")
    _bad(tmp_path, [str(mask_file), "--repair", str(tmp_path / "o.png")], capsys, "must end with")
    _bad(tmp_path, [str(mask_file), "--repair", str(mask_file)], capsys, "is an input file")
    _bad(tmp_path, [str(mask_file), "--repair", out, "--max-gap-mm", "-2"], capsys, "--max-gap-mm")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.json").exists()
