"""Dose to another medium (``run(dose_to=...)``): red marrow inside a spongiosa the phantom does not resolve.

Independent truths:
- NIST mass energy-absorption coefficients (Hubbell & Seltzer, NISTIR 5632, 1995, Table 4)
  of water and of cortical bone (ICRU-44): the engine's μen/ρ (:func:`physics.transport.xsection.mu_en_rho`,
  from its own photoabsorption and Compton tables) within 2.5 %, and their ratio, which is
  what a dose-to-medium conversion uses, within 3 %.
- Physics of the estimator: the converted dose of a thin water slab scored as air equals
  NIST's (μen/ρ)_air / (μen/ρ)_water at 60 keV; and the converted dose of a layer of
  spongiosa scored as red marrow equals the dose the same engine deposits in a layer of
  real red marrow put in its place (a photon-fluence "cavity" of the same size), within the
  Monte Carlo noise.
"""

import numpy as np
import pytest

from physics.transport import Material, PencilBeam, Settings, TransportError, VoxelPhantom, build_tables, run
from physics.transport.xsection import klein_nishina_transfer_fraction, mu_en_rho

WATER = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})
AIR = Material("air", 0.0012048, {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827})
# NISTIR 5632 Table 4, μen/ρ (cm²/g): energy (keV) -> water, cortical bone (ICRU-44)
NIST_MUEN = {40.0: (0.06947, 0.4507), 50.0: (0.04223, 0.2336), 60.0: (0.03190, 0.1400), 80.0: (0.02597, 0.06896),
             100.0: (0.02546, 0.04585)}
NIST_AIR_60 = 0.03041


def _tissue(name):
    from phantoms.tissues import tissue

    t = tissue(name, "adult")
    return Material(t.name, t.density_g_cm3, dict(t.mass_fractions))


def test_klein_nishina_transfer_fraction_limits():
    # low-energy limit: σ_tr/σ -> E/mc² (Attix); 1 MeV: 0.440 (Attix Table 7.1 / Johns & Cunningham)
    assert klein_nishina_transfer_fraction(1.0) == pytest.approx(1.0 / 511.0, rel=0.01)
    assert klein_nishina_transfer_fraction(1000.0) == pytest.approx(0.440, abs=0.003)


@pytest.mark.parametrize("e_keV", sorted(NIST_MUEN))
def test_mu_en_matches_nist(e_keV):
    tab = build_tables([WATER, _tissue("cortical_bone")])
    w, b = (float(np.interp(e_keV, tab.energy_keV, mu_en_rho(tab, r))) for r in (0, 1))
    w0, b0 = NIST_MUEN[e_keV]
    assert w == pytest.approx(w0, rel=0.025)
    assert b == pytest.approx(b0, rel=0.025)
    assert b / w == pytest.approx(b0 / w0, rel=0.03)


def test_thin_water_slab_scored_as_air_gives_the_nist_ratio():
    ph = VoxelPhantom(np.zeros((1, 1, 1), np.int16), spacing_mm=(1.0, 2000.0, 2000.0))
    r = run(ph, {0: WATER}, PencilBeam((0, 0, -50), (0, 0, 1), 60.0), settings=Settings(10000, 10, 1),
            dose_to={0: AIR})
    ratio = r.medium_dose_table()[0]["edep_eV_per_photon"] / r.label_table()[0]["edep_eV_per_photon"]
    assert ratio == pytest.approx(NIST_AIR_60 / NIST_MUEN[60.0][0], rel=0.02)


def test_spongiosa_scored_as_marrow_equals_a_marrow_layer_in_its_place():
    """Ten 2 mm layers of spongiosa; the middle layer scored as red marrow (dose_to) against the
    same slab with that layer made of red marrow. Photon transport through a 2 mm layer barely
    depends on which of the two it is, so both estimate Φ·μen_marrow there."""
    sp, rm = _tissue("spongiosa"), _tissue("red_marrow")
    ids = np.zeros((10, 1, 1), np.int16)
    ids[5] = 1
    beam = PencilBeam((0, 0, -50), (0, 0, 1), 60.0)
    s = Settings(20000, 10, 7)
    conv = run(VoxelPhantom(ids, spacing_mm=(2.0, 2000.0, 2000.0)), {0: sp, 1: sp}, beam, settings=s,
               dose_to={1: rm})
    real = run(VoxelPhantom(ids, spacing_mm=(2.0, 2000.0, 2000.0)), {0: sp, 1: rm}, beam, settings=s)
    d_conv = conv.medium_dose_table()[0]
    d_real = next(r for r in real.label_table() if r["label"] == 1)
    d_sp = next(r for r in conv.label_table() if r["label"] == 1)
    # the conversion matters: marrow absorbs about half of what spongiosa does at 60 keV
    assert d_conv["dose_Gy_per_photon"] < 0.6 * d_sp["dose_Gy_per_photon"]
    sig = np.hypot(d_conv["dose_sigma_Gy_per_photon"], d_real["dose_sigma_Gy_per_photon"])
    assert abs(d_conv["dose_Gy_per_photon"] - d_real["dose_Gy_per_photon"]) < 3 * sig + 0.01 * d_real[
        "dose_Gy_per_photon"], (d_conv, d_real)
    assert d_conv["mass_g"] == pytest.approx(d_sp["mass_g"])


def test_dose_to_checks_its_input():
    ph = VoxelPhantom(np.zeros((1, 1, 1), np.int16), spacing_mm=(1.0, 20.0, 20.0))
    beam = PencilBeam((0, 0, -50), (0, 0, 1), 60.0)
    with pytest.raises(TransportError, match="material id 3"):
        run(ph, {0: WATER}, beam, settings=Settings(100, 2, 1), dose_to={3: AIR})
    with pytest.raises(TransportError, match="must be a Material"):
        run(ph, {0: WATER}, beam, settings=Settings(100, 2, 1), dose_to={0: "air"})


def test_label_tallies_equal_the_voxel_map_summed_per_label():
    """``tally='labels'`` sums deposits per label in the threads: the same photons give the
    same label energies (to round-off) as the voxel map summed per label, and the voxel map is refused."""
    ids = np.array([[[0, 1], [1, 2]], [[2, 0], [0, 1]]], np.int16)
    ph = VoxelPhantom(ids, spacing_mm=(20, 30, 30), origin_xyz_mm=(-30, -30, 0))
    mats = {0: WATER, 1: _tissue("cortical_bone"), 2: _tissue("red_marrow")}
    beam = PencilBeam((5, 5, -50), (0.1, 0.05, 1), 60.0)
    s = Settings(5000, 4, 11)
    a = run(ph, mats, beam, settings=s)
    b = run(ph, mats, beam, settings=s, tally="labels")
    assert np.allclose(b.label_edep_eV_per_photon, a.label_edep_eV_per_photon, rtol=1e-12)
    assert np.allclose(b.label_edep_sigma_eV_per_photon, a.label_edep_sigma_eV_per_photon, rtol=1e-9)
    assert abs(b.energy_balance_error) < 1e-12
    with pytest.raises(TransportError, match="tally='voxels'"):
        b.dose_Gy_per_photon()
    # labels that split a material (scored per voxel, not through the material) and a density map
    lab = np.arange(8, dtype=np.int16).reshape(ids.shape)
    rho = np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(ids.shape)
    ph2 = VoxelPhantom(ids, spacing_mm=(20, 30, 30), origin_xyz_mm=(-30, -30, 0), labels=lab, density_g_cm3=rho)
    a2 = run(ph2, mats, beam, settings=s)
    b2 = run(ph2, mats, beam, settings=s, tally="labels")
    assert len(b2.label_ids) == 8
    assert np.allclose(b2.label_edep_eV_per_photon, a2.label_edep_eV_per_photon, rtol=1e-12)
    with pytest.raises(TransportError, match="regions"):
        run(ph, mats, beam, settings=s, tally="labels", regions={"r": (np.array([0]), np.array([1.0]))})
