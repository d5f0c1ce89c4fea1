"""Effective dose (ICRP 103) from organ doses: hand-computable cases."""

import math

import pytest

from phantoms.tissues import remainder_tissues, tissue_weighting_factors
from workflows.dose.effective_dose import effective_dose, icrp_tissue


def test_uniform_whole_body_dose_gives_that_dose():
    """Every ICRP tissue (and every remainder tissue) at 2 mGy: E = 2 mGy, Σ w_T = 1."""
    organs = {t: (2.0, 0.1) for t in tissue_weighting_factors() if t != "remainder"}
    organs["testes"] = organs.pop("gonads")
    organs.update({t: (2.0, 0.1) for t in remainder_tissues("male")})
    r = effective_dose(organs, "male")
    assert r["effective_dose"] == pytest.approx(2.0, rel=1e-12)
    assert r["weight_covered"] == pytest.approx(1.0, rel=1e-12)
    assert not r["missing"]
    assert sum(w for w in tissue_weighting_factors().values()) == pytest.approx(1.0)


def test_partial_phantom_reports_what_is_missing():
    r = effective_dose({"Lung": (10.0, 1.0), "Esophagus": (5.0, 0.5), "Soft tissue": (3.0, 0.1),
                        "Heart": (4.0, 0.0), "Spleen": (6.0, 0.0), "Cortical Bone": (20.0, 0.0)}, "female")
    # 0.12·10 + 0.04·5 + 0.01·20 (bone surface surrogate) + 0.12·mean(4, 6)
    assert r["effective_dose"] == pytest.approx(1.2 + 0.2 + 0.2 + 0.6)
    assert r["effective_dose_sigma"] == pytest.approx(math.hypot(0.12 * 1.0, 0.04 * 0.5))
    assert r["weight_covered"] == pytest.approx(0.12 + 0.04 + 0.01 + 0.12)
    assert "breast" in r["missing"] and "gonads" in r["missing"]
    assert any("bone surface" in n for n in r["notes"])


def test_mass_weighted_combination_and_names():
    r = effective_dose({"lung_left": (1.0, 0.0), "lungs": (4.0, 0.0)}, organ_mass_g={"lungs": 3.0, "lung_left": 1.0})
    assert icrp_tissue("lung_left") is None  # unknown names are not guessed
    assert r["tissues"]["lung"]["dose"] == pytest.approx(4.0)
    r = effective_dose({"Large Intestine": (1.0, 0.0), "colon_wall": (3.0, 0.0)},
                       organ_mass_g={"Large Intestine": 1.0, "colon_wall": 3.0})
    assert r["tissues"]["colon"]["dose"] == pytest.approx(2.5)
    assert icrp_tissue("Urinary Bladder Wall") == "bladder" and icrp_tissue("ovaries") == "gonads"
    with pytest.raises(ValueError, match="sex"):
        effective_dose({}, "x")
