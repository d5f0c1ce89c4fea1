"""``digipat labels instances | pq`` end to end on small NIfTI maps written here, with hand-counted
answers (object counts, volumes in mm³, world centroids, PQ of a hand-worked pair), and bad input:
exit status 1, one clear message, no output written."""

import json

import numpy as np
import pytest

from pipeline.image import Volume, read_image, write_image
from workflows.cli import main

SPACING = (2.0, 0.5, 0.5)
ORIGIN = (-10.0, 5.0, 100.0)


def _semantic():
    s = np.zeros((6, 10, 12), dtype=np.uint8)
    s[:, 8:, :] = 1            # stuff: 6 * 2 * 12 = 144 voxels
    s[0:2, 0:2, 0:2] = 2       # object A: 8 voxels = 4 mm³
    s[3:5, 3:6, 3:6] = 2       # object B: 18 voxels = 9 mm³
    s[2, 2, 2] = 3             # class 3, touches A only at a vertex
    return s


@pytest.fixture
def semantic_file(tmp_path):
    return write_image(Volume(_semantic(), SPACING, ORIGIN), tmp_path / "sem.nii.gz")


def test_instances_end_to_end(semantic_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["labels", "instances", str(semantic_file), "--things", "2,3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "objects" in text and "instances.json" in text
    assert sorted(p.name for p in out.iterdir()) == ["instances.json", "instances.nii.gz", "panoptic.nii.gz"]
    pan = read_image(out / "panoptic.nii.gz")
    inst = read_image(out / "instances.nii.gz")
    assert pan.spacing_mm == SPACING and np.allclose(pan.origin_xyz_mm, ORIGIN)
    assert np.unique(pan.array).tolist() == [0, 1000, 2001, 2002, 3001]
    assert np.unique(inst.array).tolist() == [0, 1, 2, 3]
    assert np.all(pan.array // 1000 == _semantic())
    rec = json.loads((out / "instances.json").read_text())
    assert rec["schema_version"] == "1.0"
    assert rec["encoding"]["label_divisor"] == 1000 and rec["encoding"]["panoptic"] == "class * 1000 + instance"
    assert rec["connectivity"]["neighbours"] == 26 and rec["connectivity"]["neighbours_used"] == 26
    assert rec["things"] == [2, 3] and rec["stuff"] == [1]
    assert rec["counts_per_class"]["2"] == {"kind": "thing", "instances": 2, "voxels": 26, "volume_mm3": 13.0,
                                            "removed_voxels": 0, "removed_volume_mm3": 0.0}
    assert rec["counts_per_class"]["1"]["volume_mm3"] == 144 * 0.5
    a, b, c = rec["instances"]
    assert (a["segment_id"], a["instance_label"], a["voxels"], a["volume_mm3"]) == (2001, 1, 8, 4.0)
    assert (b["segment_id"], b["instance_label"], b["volume_mm3"]) == (2002, 2, 9.0)
    assert c["segment_id"] == 3001 and c["instance_label"] == 3
    # B's centroid: index (3.5, 4, 4) -> world (x, y, z) = origin + (0.5 * 4, 0.5 * 4, 2 * 3.5)
    assert b["centroid_index_zyx"] == [3.5, 4.0, 4.0]
    assert b["centroid_world_xyz_mm"] == pytest.approx([-8.0, 7.0, 107.0])
    assert b["bbox_index_zyx"] == {"lo": [3, 3, 3], "hi": [5, 6, 6]}
    assert b["equivalent_diameter_mm"] == pytest.approx((6 * 9.0 / np.pi) ** (1 / 3))
    assert rec["stuff_segments"][0]["segment_id"] == 1000


def test_connectivity_and_min_volume_options(tmp_path, capsys):
    s = np.zeros((4, 4, 4), dtype=np.uint8)
    s[0:2, 0:2, 0:2] = 2
    s[2:4, 2:4, 2:4] = 2
    s[3, 0, 3] = 2  # a speck of 1 voxel = 1 mm³
    f = write_image(Volume(s), tmp_path / "corner.nii.gz")
    for conn, n in ((6, 3), (26, 2)):
        out = tmp_path / f"c{conn}"
        assert main(["labels", "instances", str(f), "--things", "2", "--connectivity", str(conn),
                     "--out", str(out), "--quiet"]) == 0
        assert json.loads((out / "instances.json").read_text())["counts_per_class"]["2"]["instances"] == n
    out = tmp_path / "big"
    assert main(["labels", "instances", str(f), "--things", "2", "--min-volume-mm3", "2", "--out", str(out)]) == 0
    rec = json.loads((out / "instances.json").read_text())
    assert rec["counts_per_class"]["2"]["instances"] == 1 and rec["counts_per_class"]["2"]["removed_voxels"] == 1
    assert read_image(out / "panoptic.nii.gz").array[3, 0, 3] == 0


def _line_map(fill, segs):
    a = np.full((2, 2, 60), fill, dtype=np.int32)
    for (lo, hi), v in segs.items():
        a[..., lo:hi] = v
    return a


def _pq_pair(tmp_path):
    t = write_image(Volume(_line_map(1000, {(0, 10): 2001, (20, 30): 2002, (50, 55): 2003})), tmp_path / "t.nii.gz")
    p = write_image(Volume(_line_map(1000, {(2, 10): 2001, (20, 26): 2007, (40, 45): 2009})), tmp_path / "p.nii.gz")
    return p, t


def test_pq_end_to_end(tmp_path, capsys):
    p, t = _pq_pair(tmp_path)
    out = tmp_path / "pq.json"
    assert main(["labels", "pq", str(p), str(t), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    rec = json.loads(out.read_text())
    assert printed == rec
    c2 = rec["per_class"]["2"]
    # TP 2 (IoU 0.8 and 0.6), FP 1, FN 1: SQ 0.7, RQ 2/3, PQ 0.4667
    assert (c2["tp"], c2["fp"], c2["fn"]) == (2, 1, 1)
    assert c2["sq"] == pytest.approx(0.7) and c2["rq"] == pytest.approx(2 / 3) and c2["pq"] == pytest.approx(1.4 / 3)
    assert rec["per_class"]["1"]["pq"] == pytest.approx(30 / 46)
    assert rec["all"]["pq"] == pytest.approx((30 / 46 + 1.4 / 3) / 2)
    assert rec["stuff"]["n_classes"] == 1 and rec["things"]["n_classes"] == 1
    # text output, with a listed class absent from both maps shown as nan (strict JSON: null)
    assert main(["labels", "pq", str(p), str(t), "--things", "2,7", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0.4667" in text and "nan" in text and "things" in text
    assert json.loads(out.read_text())["per_class"]["7"]["pq"] is None


# ------------------------------------------------------------------------------ bad input
def _fails(argv, capsys, match):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("digipat: error:") and match in err, err


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    _fails(["labels", "instances", str(tmp_path / "nope.nii.gz"), "--things", "2", "--out", str(out)],
           capsys, "image not found")
    assert not out.exists()


def test_non_integer_map(tmp_path, capsys):
    f = write_image(Volume(np.full((3, 3, 3), 0.5, dtype=np.float32)), tmp_path / "prob.nii.gz")
    out = tmp_path / "out"
    _fails(["labels", "instances", str(f), "--things", "2", "--out", str(out)], capsys, "not an integer label map")
    assert not out.exists()


def test_things_not_present(semantic_file, tmp_path, capsys):
    out = tmp_path / "out"
    _fails(["labels", "instances", str(semantic_file), "--things", "2,5", "--out", str(out)], capsys,
           "[5] not present")
    assert not out.exists()
    _fails(["labels", "instances", str(semantic_file), "--things", "two", "--out", str(out)], capsys,
           "--things must be comma-separated positive class labels")
    assert not out.exists()


def test_out_is_a_file(semantic_file, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    _fails(["labels", "instances", str(semantic_file), "--things", "2", "--out", str(f)], capsys, "in the way")
    assert f.read_text() == "x"


def test_pq_different_grids(tmp_path, capsys):
    p, t = _pq_pair(tmp_path)
    other = write_image(Volume(np.zeros((2, 2, 59), np.int32)), tmp_path / "o.nii.gz")
    out = tmp_path / "pq.json"
    _fails(["labels", "pq", str(p), str(other), "--out", str(out)], capsys, "not on the same grid")
    finer = write_image(Volume(read_image(t).array, spacing_mm=(1.0, 1.0, 0.5)), tmp_path / "f.nii.gz")
    _fails(["labels", "pq", str(p), str(finer), "--out", str(out)], capsys, "not on the same grid")
    _fails(["labels", "pq", str(p), str(tmp_path / "missing.nii.gz"), "--out", str(out)], capsys, "image not found")
    assert not out.exists()
