"""AAPM TG-195 CT cases 4.1, 4.2 and 5 against the four-code means (EGSnrc, Geant4,
MCNP, PENELOPE; ``reference/tg195``).

The fast tests here run a few 1e5–1e6 histories per value; a value passes when it lies
within the issue's tolerance (2 %, small organs 5 %) plus 3σ of our own Monte Carlo
estimate (σ from 10 independent batches). ``make validate`` (``-m slow``) reruns every
value with 10–100× more histories; ``benchmarks/validate_tg195.py`` prints the table.
"""

import csv
import math

import numpy as np
import pytest

from phantoms import tg195
from physics.transport import Settings, run


@pytest.fixture(scope="module", autouse=True)
def _tg195_reference(shared_reference):
    """Skip the module, naming the folder, when the TG-195 reference data is absent."""
    folder = shared_reference("tg195")
    assert tg195.REFERENCE_DIR.resolve() == folder.resolve(), (tg195.REFERENCE_DIR, folder)


@pytest.fixture(scope="module")
def case4():
    return tg195.case4_phantom()


def test_circle_fraction_area_is_exact():
    e = np.arange(-10.0, 10.5, 1.0)
    for r, (cx, cy) in ((5.0, (0.0, 0.0)), (3.3, (0.7, -1.2))):
        f = tg195.circle_fraction(e, e, cx, cy, r)
        assert abs(f.sum() - math.pi * r * r) / (math.pi * r * r) < 2e-3
        assert f.max() == 1.0 and f.min() == 0.0


def test_case4_geometry_masses(case4):
    """Voxelised cylinder and chambers keep the spec's masses: slab 957.05 g, VOI 9.346 g."""
    ph = case4.phantom
    dz, dy, dx = ph.spacing_mm
    vox_cm3 = dx * dy * dz * 1e-3
    rho = ph.density_g_cm3.ravel().astype(float)
    for k in range(1, 5):
        idx, w = case4.regions[f"slab_VOI{k}"]
        a = tg195.AIR.density_g_cm3
        pmma_fraction = np.clip((rho[idx] - a) / (tg195.PMMA.density_g_cm3 - a), 0, 1)
        pmma_mass = float(np.sum(w * pmma_fraction)) * tg195.PMMA.density_g_cm3 * vox_cm3
        assert abs(pmma_mass - 957.05) / 957.05 < 1e-3, pmma_mass
    for voi in ("center", "periphery"):
        idx, w = case4.regions[voi]
        mass = float(np.sum(rho[idx] * w)) * vox_cm3
        assert abs(mass - 9.346) / 9.346 < 1e-3, (voi, mass)
    assert ph.world_material_id == 0 and case4.materials[0].name == "Air"


def test_case5_phantom_matches_the_spec():
    ph, mats = tg195.case5_phantom()
    assert ph.shape == (260, 320, 500)
    assert ph.origin_xyz_mm == (-249.5, -159.5, -129.5)
    counts = np.bincount(ph.material_id.ravel(), minlength=20)
    assert counts[4] == 913_871 and counts[12] == 1_850 and counts[19] == 1_352_146
    assert abs(mats[19].density_g_cm3 - 1.92) < 1e-12 and ph.world_material_id == 0
    src = tg195.case5_source(56.4, [0.0, 90.0])
    np.testing.assert_allclose(src.source_position_mm(src.angles_deg[0]), [0, -600, 0], atol=1e-9)  # anterior
    np.testing.assert_allclose(src.source_position_mm(src.angles_deg[1]), [-600, 0, 0], atol=1e-9)  # right


def _assert_rows(rows):
    bad = [r for r in rows if not r["pass"]]
    assert not bad, "\n" + tg195.format_rows(bad)


@pytest.mark.slow  # (make validate; make test keeps Case 4.2, the Case 4 geometry and Case 5)
def test_case4_1_all_configurations(case4):
    """Stationary fan into the PMMA cylinder; slabs VOI 1–4 within 2 % + 3σ (≈0.2–0.8 %)."""
    rows = tg195.run_case4_1(300_000, geometry=case4)
    assert len(rows) == 16
    _assert_rows(rows)
    assert max(r["sigma_pct"] for r in rows) < 1.5


def test_case4_2_peripheral_chamber_facing_the_source(case4):
    """θ = 0: the peripheral pencil chamber 1 cm under the surface facing the source."""
    ref = [r for r in tg195.case4_reference() if r["case"] == "Case 4.2" and r["volume"] == "0"
           and r["mode"].startswith("Pherifery 10mm")]
    ref = {r["spectrum"]: r["mean_of_codes"] for r in ref}
    src = tg195.case4_source(10, 56.4, angles_deg=[0.0])
    res = run(case4.phantom, case4.materials, src, settings=Settings(histories_per_batch=100_000, n_batches=10,
                                                                     seed=7), regions=case4.regions)
    m, s = res.region("periphery")
    r = ref["56.4 keV"]
    assert abs(m - r) <= 0.02 * r + 3 * s, (m, s, r)
    assert s / r < 0.03
    # the centre chamber gets the transmitted/scattered share: ≈ 12 eV per photon
    c, cs = res.region("center")
    assert abs(c - 12.14) <= 0.02 * 12.14 + 3 * cs


def test_case5_orientation_and_large_organs():
    """Projections 0° (AP) and 90°/270° (patient right/left) at 56.4 keV: soft tissue, skin and
    cortical bone within 2 % + 3σ; liver ≈ 3× higher from the right, spleen ≈ 4–5× from the left."""
    ph, mats = tg195.case5_phantom()
    ref = {(r["label_id"], r["source_angle_deg"]): r["mean_of_codes"] for r in tg195.case5_reference()
           if r["spectrum"] == "56.4 keV"}
    out = {}
    for ang in (0.0, 90.0, 270.0):
        res = run(ph, mats, tg195.case5_source(56.4, [ang]),
                  settings=Settings(histories_per_batch=100_000, n_batches=4, seed=11), tally="labels")
        out[ang] = {r["label"]: (r["edep_eV_per_photon"], r["edep_sigma_eV_per_photon"]) for r in res.label_table()}
        assert abs(res.energy_balance_error) < 1e-9
    for ang in (0.0, 90.0, 270.0):
        for lab in (3, 17, 19):
            m, s = out[ang][lab]
            r = ref[(lab, str(int(ang)))]
            assert abs(m - r) <= 0.02 * r + 3 * s, (ang, lab, m, s, r)
    liver = out[90.0][6][0] / out[270.0][6][0]
    spleen = out[270.0][8][0] / out[90.0][8][0]
    assert 2.0 < liver < 4.5 and 2.5 < spleen < 8.0, (liver, spleen)


def _print_summary(rows):
    """Per group: how many pass, max and median |deviation| (%), median σ (%)."""
    groups = {"Case 4.1": [r for r in rows if r["case"] == "4.1"],
              "Case 4.2": [r for r in rows if r["case"] == "4.2"],
              "Case 5 single projections, organs >= 100 cm3": [],
              "Case 5 single projections, smaller organs": [],
              "Case 5 8-projection means, organs >= 100 cm3": [],
              "Case 5 8-projection means, smaller organs": []}
    with (tg195.REFERENCE_DIR / "case5_materials.csv").open(newline="") as fh:
        large = {r["tissue_name"] for r in csv.DictReader(fh) if float(r["volume_cm3"]) >= tg195.SMALL_ORGAN_CM3}
    for r in rows:
        if r["case"] == "5":
            kind = "8-projection means" if "mean of" in r["quantity"] else "single projections"
            size = "organs >= 100 cm3" if r["quantity"].split(", ")[-1] in large else "smaller organs"
            groups[f"Case 5 {kind}, {size}"].append(r)
    print()
    for name, g in groups.items():
        if g:
            d = np.abs([r["deviation_pct"] for r in g])
            print(f"{name}: {sum(r['pass'] for r in g)}/{len(g)} within tolerance + 3 sigma; |dev| max "
                  f"{d.max():.2f} %, median {np.median(d):.2f} %; median sigma "
                  f"{np.median([r['sigma_pct'] for r in g]):.2f} %")


@pytest.mark.slow
def test_tg195_full_validation():
    """The whole table (``make validate``, about 7 min on 2 cores): Case 4.1, 4.2
    (36-angle means) and 5 (8 projections × 17 organs × 2 spectra, and 8-projection means).

    With ~330 comparisons each at "tolerance + 3σ", about one excursion is expected from
    noise alone (p ≈ 0.003 each), so Case 4 and the 8-projection means must all pass and
    at most 1 % of the 272 single-projection organ values may miss."""
    rows = tg195.run_case4_1(2_000_000) + tg195.run_case4_2(16_000_000) + tg195.run_case5(10_000_000)
    _print_summary(rows)
    # README: Case 4.1 "16/16 within 2 %" of the four-code mean, without the 3σ allowance
    # (σ ≈ 0.2 % at 2e6 histories; measured max 0.83 %)
    case41 = [r for r in rows if r["case"] == "4.1"]
    assert len(case41) == 16 and all(abs(r["deviation_pct"]) <= 2.0 for r in case41), "\n" + tg195.format_rows(
        [r for r in case41 if abs(r["deviation_pct"]) > 2.0])
    strict = [r for r in rows if r["case"] != "5" or "mean of" in r["quantity"]]
    _assert_rows(strict)
    single = [r for r in rows if r not in strict]
    assert sum(not r["pass"] for r in single) <= 0.01 * len(single), "\n" + tg195.format_rows(
        [r for r in single if not r["pass"]])
