"""Size-specific dose estimates (AAPM Reports 204 and 220) against closed forms and the report's table.

Water-equivalent diameter D_w = 2 sqrt(A_w / pi), A_w = sum (HU/1000 + 1) A_pixel: a water
cylinder's D_w is its diameter, an ellipse's 2 sqrt(a b), a cylinder of density 2 (1000 HU)
sqrt(2) times its diameter; the table under the patient and the air around are not counted;
lungs (-800 HU) count 0.2 of their area. Conversion factors: AAPM 204's fit against its
printed Table 1D (32 cm phantom, two decimals).
"""

import math

import numpy as np
import pytest

from workflows.dose.ssde import (AAPM204_TABLE_32CM, conversion_factor, ssde, water_equivalent_diameter_cm,
                                 water_equivalent_diameters)

PIX = 0.5  # mm


def _grid(n=900):
    c = (np.arange(n) - (n - 1) / 2) * PIX
    return np.meshgrid(c, c, indexing="ij")  # (y, x) mm


def _ellipse(a_mm, b_mm, hu=0.0, n=900):
    y, x = _grid(n)
    s = np.full((n, n), -1000.0)
    s[(x / a_mm) ** 2 + (y / b_mm) ** 2 <= 1.0] = hu
    return s


@pytest.mark.parametrize("diameter_cm", [10.0, 20.0, 30.0, 40.0])
def test_water_cylinder_diameter_within_one_percent(diameter_cm):
    d = water_equivalent_diameter_cm(_ellipse(5 * diameter_cm, 5 * diameter_cm), (PIX, PIX))
    assert d == pytest.approx(diameter_cm, rel=0.01)


def test_ellipse_and_density():
    assert water_equivalent_diameter_cm(_ellipse(180, 120), (PIX, PIX)) == pytest.approx(
        2 * math.sqrt(18 * 12), rel=0.01)
    assert water_equivalent_diameter_cm(_ellipse(100, 100, hu=1000.0), (PIX, PIX)) == pytest.approx(
        20 * math.sqrt(2), rel=0.01)


def test_table_and_air_are_left_out_lungs_count_by_attenuation():
    s = _ellipse(150, 150)
    ref = water_equivalent_diameter_cm(s, (PIX, PIX))
    s_table = s.copy()
    s_table[-40:-30, :] = 200.0  # a couch slab below the patient, apart from it
    assert water_equivalent_diameter_cm(s_table, (PIX, PIX)) == pytest.approx(ref, rel=1e-9)
    y, x = _grid()
    lung = ((x - 60) ** 2 + y ** 2 <= 40 ** 2) | ((x + 60) ** 2 + y ** 2 <= 40 ** 2)
    s_lung = s.copy()
    s_lung[lung] = -800.0  # inside the body: holes filled, counted at 0.2 of their area
    aw = (np.count_nonzero(s > -500) - 0.8 * np.count_nonzero(lung)) * PIX ** 2
    assert water_equivalent_diameter_cm(s_lung, (PIX, PIX)) == pytest.approx(2 * math.sqrt(aw / math.pi) / 10,
                                                                            rel=1e-6)


def test_conversion_factors_match_aapm204_table():
    for d, f in AAPM204_TABLE_32CM.items():
        assert conversion_factor(d, 32) == pytest.approx(f, abs=0.0051), d
    assert conversion_factor(np.array([16.0, 32.0]), 16).shape == (2,)
    with pytest.raises(ValueError, match="16 or 32"):
        conversion_factor(20.0, 24)
    with pytest.raises(ValueError, match="positive"):
        conversion_factor(-1.0)


def test_ssde_of_a_volume():
    vol = np.stack([_ellipse(125, 125), _ellipse(150, 150), np.full((900, 900), -1000.0)])
    dw = water_equivalent_diameters(vol, (5.0, PIX, PIX))
    assert dw[0] == pytest.approx(25, rel=0.01) and dw[1] == pytest.approx(30, rel=0.01) and dw[2] == 0
    r = ssde(vol, (5.0, PIX, PIX), ctdivol_mGy=10.0)
    expect = 10.0 * (conversion_factor(dw[0]) + conversion_factor(dw[1])) / 2
    assert r["ssde_mGy"] == pytest.approx(expect, rel=1e-9)
    assert r["ssde_per_slice_mGy"][2] is None and r["mean_dw_cm"] == pytest.approx(27.5, rel=0.01)
    with pytest.raises(ValueError, match="no slice holds a patient"):
        ssde(np.full((2, 10, 10), -1000.0), (1, 1, 1))
    with pytest.raises(ValueError, match="3-D"):
        water_equivalent_diameters(np.zeros((4, 4)), (1, 1, 1))


def test_ssde_command(tmp_path, capsys):
    from pipeline.image import Volume, write_image
    from workflows.cli import main

    vol = np.stack([_ellipse(150, 150, n=700)] * 3).astype(np.float32)
    write_image(Volume(vol, (5.0, PIX, PIX)), tmp_path / "ct.nii.gz")
    assert main(["ssde", str(tmp_path / "ct.nii.gz"), "--ctdivol", "10", "--json"]) == 0
    r = __import__("json").loads(capsys.readouterr().out)
    assert r["mean_dw_cm"] == pytest.approx(30.0, rel=0.01)
    assert r["ssde_mGy"] == pytest.approx(10 * conversion_factor(r["mean_dw_cm"]), rel=1e-9)
    assert main(["ssde", str(tmp_path / "missing.nii.gz")]) != 0
