"""The one atomic writer (physics.atomic): whole or absent, never half-written, nothing left over."""

import json
import os
import stat

import numpy as np
import pytest

from physics.atomic import atomic_files, atomic_path, write_json, write_npz, write_text


def _leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".tmp-")]


def test_json_roundtrip_strict_nan_and_numpy(tmp_path):
    p = write_json(tmp_path / "sub" / "r.json", {"a": np.float64(1.5), "b": np.arange(3), "c": float("nan"),
                                                  "d": np.int32(7), "e": tmp_path})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": 7, "e": str(tmp_path)}
    assert _leftovers(tmp_path) == []


def test_failed_serialisation_leaves_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "r.json", "old\n")
    with pytest.raises(TypeError):
        write_json(target, {"x": object()})
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_writer_failure_inside_block_removes_temporary(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_temporary_keeps_the_extension_and_final_mode_is_the_usual_one(tmp_path):
    with atomic_path(tmp_path / "img.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith("-img.nii.gz")
        tmp.write_bytes(b"x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "img.nii.gz").stat().st_mode) == 0o666 & ~mask


def test_npz_without_a_second_suffix(tmp_path):
    p = write_npz(tmp_path / "a.npz", x=np.arange(4))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.npz"]
    assert np.load(p)["x"].tolist() == [0, 1, 2, 3]


def test_multi_file_write_is_all_or_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_files(tmp_path) as d:
            (d / "a.raw").write_bytes(b"1")
            raise ValueError("writer failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_files(tmp_path, last="a.mhd") as d:
        (d / "a.raw").write_bytes(b"1")
        (d / "a.mhd").write_text("ElementDataFile = a.raw\n")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.mhd", "a.raw"]


def test_mhd_image_written_whole(tmp_path):
    """An .mhd header names its data file: both must land under their final names."""
    from pipeline.image import Volume, read_image, write_image

    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    write_image(Volume(arr, (2.0, 1.0, 0.5)), tmp_path / "v.mhd")
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names[0] == "v.mhd" and len(names) == 2 and not names[1].startswith(".")
    header = (tmp_path / "v.mhd").read_text()
    assert f"ElementDataFile = {names[1]}" in header
    back = read_image(tmp_path / "v.mhd")
    assert np.array_equal(back.array, arr) and back.spacing_mm == (2.0, 1.0, 0.5)
