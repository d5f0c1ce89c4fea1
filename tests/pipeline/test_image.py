"""Volume type and image I/O: axis conventions, round trips, bad input."""

import numpy as np
import pytest

from pipeline.image import ImageError, Volume, read_image, write_image


def _oblique_volume():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    return Volume(arr, spacing_mm=(2.5, 0.7, 0.5), origin_xyz_mm=(-10.0, 4.0, 33.0), direction_xyz=rot)


def test_index_to_world_matches_simpleitk():
    import SimpleITK as sitk

    from pipeline.image import to_sitk

    vol = _oblique_volume()
    img = to_sitk(vol)
    assert img.GetSize() == (7, 6, 5)  # (x, y, z)
    for kji in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        expected = img.TransformIndexToPhysicalPoint(tuple(int(v) for v in reversed(kji)))
        np.testing.assert_allclose(vol.index_to_world(kji), expected, atol=1e-9)
    # the voxel value at that index is the same in both conventions
    assert img[3, 1, 2] == pytest.approx(float(vol.array[2, 1, 3]))
    pt = vol.index_to_world([1.5, 2.25, 3.0])
    np.testing.assert_allclose(vol.world_to_index(pt), [1.5, 2.25, 3.0], atol=1e-12)
    del sitk


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip(tmp_path, suffix):
    vol = _oblique_volume()
    path = write_image(vol, tmp_path / f"img{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing_mm, vol.spacing_mm, rtol=1e-6)
    np.testing.assert_allclose(back.origin_xyz_mm, vol.origin_xyz_mm, atol=1e-5)
    np.testing.assert_allclose(back.direction_xyz, vol.direction_xyz, atol=1e-6)
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_dicom_series_round_trip(tmp_path, write_dicom_series):
    """Write a 3-D volume as a DICOM series with SimpleITK and read the folder back."""
    arr = (np.arange(4 * 8 * 9).reshape(4, 8, 9) % 300 - 100).astype(np.int16)
    vol = Volume(arr, spacing_mm=(2.0, 0.8, 0.8), origin_xyz_mm=(1.0, 2.0, 3.0))
    write_dicom_series(tmp_path, vol)
    back = read_image(tmp_path)
    assert back.shape == (4, 8, 9)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.spacing_mm, (2.0, 0.8, 0.8), rtol=1e-5)
    np.testing.assert_allclose(back.origin_xyz_mm, (1.0, 2.0, 3.0), atol=1e-4)


def test_dicom_modality_tag(tmp_path, write_dicom_series):
    from pipeline.image import dicom_modality, write_image

    vol = Volume((np.arange(3 * 5 * 6).reshape(3, 5, 6) % 50).astype(np.int16))
    for tag, expected in (("CT", "ct"), ("MR", "mr"), ("PT", None)):
        folder = tmp_path / tag
        folder.mkdir()
        write_dicom_series(folder, vol, tag)
        assert dicom_modality(folder) == expected
        assert dicom_modality(next(folder.glob("*.dcm"))) == expected
    write_image(vol, tmp_path / "v.nii.gz")
    assert dicom_modality(tmp_path / "v.nii.gz") is None  # not DICOM: the value range decides
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    assert dicom_modality(get_testdata_file("CT_small.dcm")) == "ct"
    assert dicom_modality(get_testdata_file("MR_small.dcm")) == "mr"
    del pydicom


def test_real_ct_slice_is_rejected_as_2d():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    with pytest.raises(ImageError, match="2-D"):
        read_image(path)
    del pydicom


def test_bad_input(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot read"):
        read_image(junk)
    with pytest.raises(ImageError, match="3-D"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(ImageError, match="spacing_mm"):
        Volume(np.zeros((2, 2, 2)), spacing_mm=(1, 0, 1))
    with pytest.raises(ImageError, match="direction"):
        Volume(np.zeros((2, 2, 2)), direction_xyz=np.ones((3, 3)))
    with pytest.raises(ImageError, match="use one of"):
        write_image(Volume(np.zeros((2, 2, 2))), tmp_path / "x.png")
