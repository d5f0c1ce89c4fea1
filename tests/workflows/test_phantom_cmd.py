"""`digipat phantom build|from-ct`: files and table of `build`, argument passing of `from-ct`, bad input.

The parser is the ``digipat`` one (:func:`workflows.cli.build_parser`). ``phantoms.from_ct``
is replaced by a recorder, so the test checks what the command hands over, not the CT
conversion itself.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from phantoms.tissues import organ_masses, read_materials_csv
from pipeline.image import read_image
from workflows.cli import build_parser


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def test_build_writes_files_and_prints_mass_table(tmp_path, capsys):
    out = tmp_path / "nb"
    a = parse("phantom", "build", "--age", "newborn", "--sex", "female", "--voxel-mm", "2", "--out", out)
    assert a.func(a) == 0
    assert {p.name for p in out.iterdir()} == {"labels.nii.gz", "materials.csv", "organs.json", "phantom.png"}
    text = capsys.readouterr().out
    ref = organ_masses("newborn", "female")
    liver_line = next(line for line in text.splitlines() if " liver " in line)
    assert f"{ref['liver']:g}" in liver_line.split()  # the ICRP 89 value is printed next to the liver's mass
    assert "total body" in text and "ICRP89" in text
    data = json.loads((out / "organs.json").read_text())
    assert data["phantom"]["age"] == "newborn" and data["phantom"]["voxel_mm"] == 2.0
    labels = read_image(out / "labels.nii.gz")
    assert labels.spacing_mm == pytest.approx((2.0, 2.0, 2.0))
    mats = dict(read_materials_csv(out / "materials.csv"))
    assert set(np.unique(labels.array).tolist()) <= set(mats)
    ovaries = data["organs"]["ovaries"]
    assert ovaries["reference_mass_g"] == ref["ovaries"]
    assert (out / "phantom.png").read_bytes()[:4] == b"\x89PNG"


def test_build_defaults_and_options(tmp_path):
    a = parse("phantom", "build", "--age", "adult", "--out", tmp_path)
    assert (a.sex, a.voxel_mm, a.no_plot, a.quiet) == ("male", None, False, False)
    b = parse("phantom", "build", "--age", "5y", "--sex", "female", "--voxel-mm", "6", "--out", tmp_path / "q",
              "--no-plot", "--quiet")
    assert b.func(b) == 0
    assert not (tmp_path / "q" / "phantom.png").exists()
    assert json.loads((tmp_path / "q" / "organs.json").read_text())["phantom"]["sex"] == "female"


@pytest.mark.parametrize("argv, msg", [
    (["--age", "2y"], r"age must be one of \['newborn', '1y', '5y', '10y', '15y', 'adult'\]"),
    (["--age", "adult", "--sex", "f"], "sex must be one of"),
    (["--age", "adult", "--voxel-mm", "0.2"], r"voxel_mm must be .*\[1, 10\]"),
])
def test_build_bad_input_raises_value_error(tmp_path, argv, msg):
    a = parse("phantom", "build", *argv, "--out", tmp_path / "x")
    with pytest.raises(ValueError, match=msg):
        a.func(a)
    assert not (tmp_path / "x").exists()


def test_phantom_needs_an_action():
    with pytest.raises(SystemExit):
        parse("phantom")
    with pytest.raises(SystemExit):
        parse("phantom", "build", "--out", "x")  # --age is required


@pytest.fixture
def fake_from_ct(monkeypatch):
    calls = []

    def phantom_from_ct(ct_path, out_dir, age, labels_path=None, label_map_path=None, assign_all_from_hu=False):
        calls.append(dict(ct_path=ct_path, out_dir=out_dir, age=age, labels_path=labels_path,
                          label_map_path=label_map_path, assign_all_from_hu=assign_all_from_hu))
        return {"labels": str(out_dir / "labels.nii.gz")}

    mod = types.ModuleType("phantoms.from_ct")
    mod.phantom_from_ct = phantom_from_ct
    monkeypatch.setitem(sys.modules, "phantoms.from_ct", mod)
    return calls


def test_from_ct_passes_arguments(tmp_path, fake_from_ct, capsys):
    a = parse("phantom", "from-ct", "ct.nii.gz", "--labels", "seg.nii.gz", "--label-map", "map.csv", "--age", "10y",
              "--out", tmp_path, "--all-hu")
    assert a.func(a) == 0
    (call,) = fake_from_ct
    assert call["ct_path"] == "ct.nii.gz" and call["out_dir"] == tmp_path and call["age"] == "10y"
    assert call["labels_path"] == "seg.nii.gz" and call["label_map_path"] == "map.csv"
    assert call["assign_all_from_hu"] is True
    assert "labels.nii.gz" in capsys.readouterr().out


def test_from_ct_defaults(tmp_path, fake_from_ct):
    a = parse("phantom", "from-ct", "ct.nii.gz", "--age", "adult", "--out", tmp_path)
    assert a.func(a) == 0
    (call,) = fake_from_ct
    assert call["labels_path"] is None and call["label_map_path"] is None and call["assign_all_from_hu"] is False


def test_from_ct_label_map_needs_labels(tmp_path, fake_from_ct):
    a = parse("phantom", "from-ct", "ct.nii.gz", "--label-map", "map.csv", "--age", "adult", "--out", tmp_path)
    with pytest.raises(ValueError, match="--label-map .*needs --labels"):
        a.func(a)
    assert fake_from_ct == []
