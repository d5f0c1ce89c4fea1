"""Materials and cross-section tables of physics.transport (truth: NIST XCOM via FACTS.md)."""

import numpy as np
import pytest

from physics.transport import Material, TransportError, build_tables, read_materials_csv
from physics.transport.xsection import ELECTRON_REST_KEV

# H2O by mass from atomic weights H 1.008, O 15.999
WATER = {"H": 2 * 1.008 / 18.015, "O": 15.999 / 18.015}


def test_material_normalises_and_sorts():
    m = Material("water", 1.0, {"O": 0.8881, "H": 0.1119, "C": 0.0})
    assert list(m.mass_fractions) == ["H", "O"]
    assert sum(m.mass_fractions.values()) == pytest.approx(1.0, abs=1e-15)
    assert m.elements[0][0] == 1 and m.elements[1][0] == 8
    assert Material.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("kwargs, match", [
    (dict(density_g_cm3=-1.0, mass_fractions={"H": 1.0}), "density_g_cm3"),
    (dict(density_g_cm3=0.0, mass_fractions={"H": 1.0}), "density_g_cm3"),
    (dict(density_g_cm3=float("nan"), mass_fractions={"H": 1.0}), "density_g_cm3"),
    (dict(density_g_cm3=1.0, mass_fractions={"Xx": 1.0}), "unknown element symbol 'Xx'"),
    (dict(density_g_cm3=1.0, mass_fractions={"h": 1.0}), "unknown element"),
    (dict(density_g_cm3=1.0, mass_fractions={"H": 0.5, "O": 0.4}), "sum to 0.9"),
    (dict(density_g_cm3=1.0, mass_fractions={"H": -0.1, "O": 1.1}), "mass fraction of H"),
    (dict(density_g_cm3=1.0, mass_fractions={}), "empty"),
])
def test_material_bad_input(kwargs, match):
    with pytest.raises(TransportError, match=match):
        Material("bad", **kwargs)


def test_read_tg195_materials(shared_reference):
    mats = read_materials_csv(shared_reference("tg195", "case5_materials.csv"))
    assert mats[0].name == "Air" and mats[0].density_g_cm3 == pytest.approx(0.001205)
    assert mats[3].mass_fractions["O"] == pytest.approx(0.602, rel=1e-3)
    assert len(mats) >= 17
    assert all(abs(sum(m.mass_fractions.values()) - 1) < 1e-12 for m in mats.values())


def test_read_materials_bad(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("label_id,tissue_name,density_g_cm3,H,O\n1,water,1.0,0.1119,0.8881\n1,dup,1.0,0.5,0.5\n")
    with pytest.raises(TransportError, match="duplicate label_id 1"):
        read_materials_csv(p)
    p.write_text("label_id,tissue_name,density_g_cm3,H,O\n1,w,-1.0,0.1119,0.8881\n")
    with pytest.raises(TransportError, match="line 2.*density_g_cm3"):
        read_materials_csv(p)
    p.write_text("label_id,name,density_g_cm3,H\n1,w,1.0,1.0\n")
    with pytest.raises(TransportError, match="tissue_name"):
        read_materials_csv(p)
    with pytest.raises(TransportError, match="does not exist"):
        read_materials_csv(tmp_path / "nope.csv")


def test_water_60keV_matches_xcom():
    t = build_tables([Material("water", 1.0, WATER)])
    # NIST XCOM, water, 60 keV (cm^2/g)
    for col, ref in (("total", 0.2059), ("photoelectric", 0.01492), ("rayleigh", 0.01392), ("compton", 0.1771)):
        assert t.mu_rho(0, 60.0, col) == pytest.approx(ref, rel=2e-3), col
    assert t.mu_linear(0, 60.0, density_g_cm3=2.0) == pytest.approx(2 * 0.2059, rel=2e-3)
    # log-log interpolation reproduces the nodes and is monotone across a node gap
    e = t.energy_keV[100:103]
    assert np.allclose(t.mu_rho(0, e), t.mu_rho_cm2_g[0, 100:103, 0], rtol=1e-12)


def test_switches_and_kn_formula():
    m = Material("water", 1.0, WATER)
    kn = build_tables([m], compton="klein-nishina", rayleigh=False)
    e = 100.0
    a = e / ELECTRON_REST_KEV
    # Klein–Nishina total cross section per electron (Evans), r_e = 2.8179403262e-13 cm
    sig = 2 * np.pi * 2.8179403262e-13 ** 2 * (
        (1 + a) / a ** 2 * (2 * (1 + a) / (1 + 2 * a) - np.log(1 + 2 * a) / a)
        + np.log(1 + 2 * a) / (2 * a) - (1 + 3 * a) / (1 + 2 * a) ** 2)
    electrons_per_g = 6.02214076e23 * (WATER["H"] * 1 / 1.008 + WATER["O"] * 8 / 15.999)
    assert kn.mu_rho(0, e, "compton") == pytest.approx(sig * electrons_per_g, rel=2e-3)
    assert np.all(kn.mu_rho_cm2_g[0, :, 3] == 0)
    assert np.all(kn.compton_s_over_z == 1.0)
    bound = build_tables([m])
    # binding lowers the incoherent cross section, most at low energy
    assert bound.mu_rho(0, 10.0, "compton") < 0.9 * kn.mu_rho(0, 10.0, "compton")
    assert np.all((bound.compton_s_over_z >= 0) & (bound.compton_s_over_z <= 1))


def test_tables_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGIPAT_CACHE_DIR", str(tmp_path))
    m = Material("bone", 1.92, {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001,
                                "Mg": 0.002, "P": 0.103, "S": 0.003, "Ca": 0.225})
    t1 = build_tables([m], n_energy=200, n_x=256)
    files = list((tmp_path / "transport").glob("xs_*.npz"))
    assert len(files) == 1
    t2 = build_tables([m], n_energy=200, n_x=256)
    assert np.array_equal(t1.mu_rho_cm2_g, t2.mu_rho_cm2_g)
    assert np.array_equal(t1.rayleigh_cum, t2.rayleigh_cum)


def test_tables_bad_input():
    m = Material("water", 1.0, WATER)
    with pytest.raises(TransportError, match="compton must be"):
        build_tables([m], compton="free")
    with pytest.raises(TransportError, match="materials is empty"):
        build_tables([])
    t = build_tables([m])
    with pytest.raises(TransportError, match="energy_keV must lie"):
        t.mu_rho(0, 200.0)
    with pytest.raises(TransportError, match="column must be"):
        t.mu_rho(0, 60.0, "pair")
