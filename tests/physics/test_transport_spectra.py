"""X-ray tube spectra from SpekPy (physics/transport/sources.py: spekpy_spectrum).

Truths used:
- the first half-value layer (HVL1) in aluminium, computed here from the returned
  binned spectrum as the Al thickness that halves the air kerma
  ``K(t) = Σ φ_i E_i (μen/ρ)_air(E_i) exp(−μ_Al(E_i) t)``, with μ_Al from
  :mod:`physics.transport.xsection` (xraylib, = NIST XCOM within 0.1 %) and
  (μen/ρ)_air from NIST (Hubbell & Seltzer, NISTIR 5632, Table 4, "Air, Dry (Near Sea
  Level)"), compared with SpekPy's own ``get_hvl1`` (its own attenuation data);
- this HVL calculator itself reproduces the published TG-195 120 kVp spectrum's
  "HVL 5.010 mm Al, mean 56.4 keV" (reference/tg195/README.md §1 "Spectra");
- SpekPy with TG-195's stated parameters (W, 11° anode, 2.861 mm Al) against those
  published numbers (an independent spectrum model: agreement is only approximate).
"""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import brentq

from physics.transport import Material, Spectrum, TransportError, build_tables
from physics.transport.sources import SPEKPY_KVP_RANGE, spekpy_spectrum

# NIST mass energy-absorption coefficient of dry air (Hubbell & Seltzer 1995, NISTIR 5632,
# Table 4): energy (MeV), mu_en/rho (cm^2/g). The Ar K edge (3.2029 keV) appears twice.
NIST_AIR_MUEN = [
    (1.0e-3, 3599.0), (1.5e-3, 1188.0), (2.0e-3, 526.2), (3.0e-3, 161.4), (3.2029e-3, 133.0),
    (3.2029e-3, 146.0), (4.0e-3, 76.36), (5.0e-3, 39.31), (6.0e-3, 22.70), (8.0e-3, 9.446),
    (1.0e-2, 4.742), (1.5e-2, 1.334), (2.0e-2, 0.5389), (3.0e-2, 0.1537), (4.0e-2, 0.06833),
    (5.0e-2, 0.04098), (6.0e-2, 0.03041), (8.0e-2, 0.02407), (1.0e-1, 0.02325), (1.5e-1, 0.02496),
    (2.0e-1, 0.02672),
]
ALUMINIUM = Material("Al", 2.699, {"Al": 1.0})  # NIST density of aluminium


def muen_air_cm2_g(energy_keV):
    """Log–log interpolation of the NIST table, within the segment between two edges."""
    e_tab = np.array([r[0] for r in NIST_AIR_MUEN]) * 1000.0
    m_tab = np.array([r[1] for r in NIST_AIR_MUEN])
    out = []
    for e in np.atleast_1d(energy_keV):
        j = int(np.searchsorted(e_tab, e, side="right")) - 1
        j = min(max(j, 0), e_tab.size - 2)
        if e_tab[j + 1] == e_tab[j]:  # just below an edge: use the segment above it
            j += 1
        out.append(math.exp(np.interp(math.log(e), np.log(e_tab[j:j + 2]), np.log(m_tab[j:j + 2]))))
    return np.array(out)


@pytest.fixture(scope="module")
def mu_al_per_mm():
    tables = build_tables([ALUMINIUM])
    return lambda e: tables.mu_linear(0, e) / 10.0


def hvl1_al_mm(spectrum: Spectrum, mu_al_per_mm) -> float:
    """First HVL (mm Al) of air kerma, evaluated at the bin centres."""
    if spectrum.bin_low_keV is not None:
        e = 0.5 * (spectrum.bin_low_keV + spectrum.bin_high_keV)
    else:
        e = spectrum.energy_keV
    k = spectrum.relative_fluence * e * muen_air_cm2_g(e)
    mu = mu_al_per_mm(e)
    return brentq(lambda t: np.sum(k * np.exp(-mu * t)) - 0.5 * k.sum(), 0.0, 100.0, xtol=1e-10)


def _tg195_spectrum(path) -> Spectrum:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    get = lambda c: np.array([float(r[c]) for r in rows])  # noqa: E731
    return Spectrum(get("bin_center_keV"), get("relative_fluence"), get("bin_low_keV"), get("bin_high_keV"))


def test_hvl_calculator_reproduces_tg195_published_values(mu_al_per_mm, shared_reference):
    """The TG-195 120 kVp table: mean 56.393 keV (stated 56.4), HVL 5.033 mm Al (stated 5.010, +0.5 %)."""
    spec = _tg195_spectrum(shared_reference("tg195", "spectrum_120kVp_tg195.csv"))
    assert spec.mean_energy_keV == pytest.approx(56.4, abs=0.05)
    assert hvl1_al_mm(spec, mu_al_per_mm) == pytest.approx(5.010, rel=0.01)


@pytest.mark.parametrize("kvp, angle, filters", [
    (120.0, 12.0, {"Al": 2.5}),
    (80.0, 12.0, {"Al": 2.5, "Cu": 0.1}),
    (120.0, 11.0, {"Al": 2.861}),
    (140.0, 7.0, {"Al": 6.0}),
])
def test_mean_and_hvl_match_spekpy(mu_al_per_mm, kvp, angle, filters):
    """Mean energy equals SpekPy's get_emean; HVL1 from our Al attenuation is within 2 % of get_hvl1.

    Measured: HVL1 from the binned spectrum is 0.2–0.7 % below SpekPy's (its PENELOPE
    attenuation data versus xraylib / NIST here).
    """
    import spekpy

    spec = spekpy_spectrum(kvp, angle, filters)
    ref = spekpy.Spek(kvp=kvp, th=angle)
    for m, t in filters.items():
        ref.filter(m, t)
    assert spec.mean_energy_keV == pytest.approx(ref.get_emean(), rel=1e-9)
    assert hvl1_al_mm(spec, mu_al_per_mm) == pytest.approx(ref.get_hvl1(), rel=0.02)


def test_spekpy_with_tg195_parameters_against_published_spectrum(mu_al_per_mm):
    """SpekPy for TG-195's stated "W, 11° anode, 2.861 mm Al" versus its "mean 56.4 keV, HVL 5.010 mm Al".

    Measured (SpekPy 2.5.4, default 'casim' model): mean 55.36 keV (−1.04 keV) and HVL1
    4.58 mm Al by SpekPy (4.555 mm with our attenuation), i.e. −8.5 % to −9.1 %: the TG-195
    spectrum comes from another tube model, and SpekPy needs 3.45 mm Al (12° anode) to
    match it (reference/README.md): mean 56.19 keV (−0.2 keV), HVL1 4.944 mm Al by SpekPy
    (−1.3 %), 4.917 mm with our attenuation (−1.9 %). Tolerances: 1.5 keV and 10 % at the
    stated parameters; 0.3 keV and 3 % at 3.45 mm Al.
    """
    stated = spekpy_spectrum(120.0, 11.0, {"Al": 2.861})
    assert stated.mean_energy_keV == pytest.approx(56.4, abs=1.5)
    assert hvl1_al_mm(stated, mu_al_per_mm) == pytest.approx(5.010, rel=0.10)
    matched = spekpy_spectrum(120.0, 12.0, {"Al": 3.45})
    assert matched.mean_energy_keV == pytest.approx(56.4, abs=0.3)
    assert hvl1_al_mm(matched, mu_al_per_mm) == pytest.approx(5.010, rel=0.03)


def test_bins_and_normalisation():
    spec = spekpy_spectrum(100.0, bin_keV=1.0)  # default 12° anode, 2.5 mm Al
    lo, hi = spec.bin_low_keV, spec.bin_high_keV
    assert np.allclose(hi - lo, 1.0) and np.allclose(lo[1:], hi[:-1])  # contiguous 1 keV bins
    assert hi[-1] == pytest.approx(100.0) and lo[0] > 5.0  # ends at kVp; filtered tail dropped
    assert np.allclose(spec.energy_keV, 0.5 * (lo + hi))
    assert spec.relative_fluence.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(spec.relative_fluence > 0)
    # samples stay inside the bins and reproduce the mean energy
    e = spec.sample(200_000, np.random.default_rng(0))
    assert e.min() >= lo[0] and e.max() <= 100.0
    assert e.mean() == pytest.approx(spec.mean_energy_keV, abs=4 * e.std() / math.sqrt(e.size))
    # W characteristic K lines (Kα1 59.32 keV) make the 59-60 keV bin a local spike
    i = int(np.flatnonzero((lo <= 59.32) & (hi > 59.32))[0])
    assert spec.relative_fluence[i] > 1.5 * spec.relative_fluence[i + 2]
    # no filtration: a softer spectrum
    assert spekpy_spectrum(100.0, filtration_mm={}).mean_energy_keV < spec.mean_energy_keV


@pytest.mark.parametrize("kwargs, match", [
    (dict(kvp=5.0), r"kvp must be a number in \[10, 500\] kV"),
    (dict(kvp=600.0), "kvp"),
    (dict(kvp=float("nan")), "kvp"),
    (dict(kvp="120"), "kvp"),
    (dict(kvp=80.0, target="Mo"), r"kvp .*\[10, 50\].*'Mo'"),
    (dict(target="Fe"), "target must be one of"),
    (dict(anode_angle_deg=0.0), "anode_angle_deg"),
    (dict(anode_angle_deg=95.0), r"anode_angle_deg must be in \(0, 90\)"),
    (dict(filtration_mm={"Unobtainium": 1.0}), "filtration_mm: unknown filter material 'Unobtainium'"),
    (dict(filtration_mm={"al": 1.0}), "unknown filter material 'al'"),
    (dict(filtration_mm={"Al": -1.0}), r"filtration_mm\['Al'\] must be a thickness"),
    (dict(filtration_mm=[("Al", 2.5)]), "filtration_mm must be a mapping"),
    (dict(bin_keV=0.0), "bin_keV"),
    (dict(bin_keV=20.0), "bin_keV must be <= kvp/10"),
    (dict(min_relative_fluence=1.0), "min_relative_fluence"),
])
def test_bad_input(kwargs, match):
    args = dict(kvp=120.0)
    args.update(kwargs)
    with pytest.raises(TransportError, match=match):
        spekpy_spectrum(**args)
    assert set(SPEKPY_KVP_RANGE) >= {"W", "Mo"}


def test_spekpy_is_imported_lazily():
    code = "import sys, physics.transport; assert 'spekpy' not in sys.modules; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
