"""Transport engine: transmission, energy balance, reproducibility, resume, EGSnrc slab.

Independent truths: Beer–Lambert exp(−μx) for uncollided photons (μ from the XCOM-grade
tables), exact energy conservation, and EGSnrc (tutor7pp, kerma mode) for a 60 keV
pencil beam into 20 cm of water (``../shared/reference/egsnrc_water_slab_60keV_kerma.csv``;
``benchmarks/validate_egsnrc_slab.py`` prints the per-layer table).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from physics.transport import (BatchRecord, Material, ParallelBeam, PencilBeam, Physics, PointSource, Settings,
                               Spectrum, TransportError, VoxelPhantom, build_tables, read_spectrum_csv, run)

WATER = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})  # EGSnrc's water
PMMA = Material("PMMA", 1.19, {"H": 0.080538, "C": 0.599848, "O": 0.319614})
AL = Material("aluminium", 2.699, {"Al": 1.0})


def slab(n_layers=1, thickness_cm=1.0, lateral_mm=2000.0, mat=0):
    return VoxelPhantom(np.full((n_layers, 1, 1), mat, np.int16),
                        spacing_mm=(10.0 * thickness_cm / n_layers, lateral_mm, lateral_mm))


def pencil(e=60.0):
    return PencilBeam((0.0, 0.0, -50.0), (0.0, 0.0, 1.0), e)


@pytest.mark.parametrize("material", [WATER, PMMA, AL], ids=lambda m: m.name)
@pytest.mark.parametrize("e_keV", [20.0, 60.0, 120.0])
def test_narrow_beam_transmission(material, e_keV):
    mu = build_tables([material]).mu_linear(0, e_keV)
    x_cm = 1.0 / mu  # transmission e^-1: best relative statistics
    res = run(slab(thickness_cm=x_cm), {0: material}, pencil(e_keV),
              settings=Settings(histories_per_batch=4000, n_batches=10, seed=3))
    t, s = res.escape("+z", "uncollided_count")
    assert abs(t - np.exp(-1.0)) < 3 * s, (t, s)
    assert s < 0.01


def test_transmission_density_scaling():
    """Twice the density over half the thickness transmits the same (per-voxel density)."""
    mu = build_tables([WATER]).mu_linear(0, 60.0)
    ph = slab(n_layers=4, thickness_cm=0.5 / mu)
    ph = VoxelPhantom(ph.material_id, ph.spacing_mm, density_g_cm3=np.full(ph.shape, 2.0, np.float32))
    res = run(ph, {0: WATER}, pencil(), settings=Settings(histories_per_batch=4000, n_batches=10, seed=4))
    t, s = res.escape("+z", "uncollided_count")
    assert abs(t - np.exp(-1.0)) < 3 * s
    # and the majorant is not the nominal density's: a wrong one would bias t by e^-1 -> e^-0.5
    assert abs(t - np.exp(-0.5)) > 10 * s


def test_energy_balance_and_tallies():
    ph = VoxelPhantom(np.array([[[0, 1], [1, 2]], [[2, 0], [0, 1]]], np.int16), spacing_mm=(20, 30, 30),
                      origin_xyz_mm=(5.0, -3.0, 2.0))
    mats = {0: WATER, 1: PMMA, 2: AL}
    spec = Spectrum([30.0, 60.0, 90.0], [1.0, 2.0, 1.0])
    for src in (PointSource((20.0, 10.0, 12.0), spec),
                ParallelBeam((20.0, 10.0, -100.0), (0.1, 0.0, 1.0), 50.0, 40.0, 80.0),
                PointSource((500.0, 0.0, 0.0), 40.0)):  # outside the grid: most photons miss
        res = run(ph, mats, src, settings=Settings(histories_per_batch=3000, n_batches=3, seed=1))
        assert abs(res.energy_balance_error) < 1e-9
        e_mean = src.energy.mean_energy_keV if isinstance(src.energy, Spectrum) else src.energy
        assert res.incident_total_eV / res.histories == pytest.approx(e_mean * 1e3, rel=0.03)
        assert res.label_edep_eV_per_photon.sum() == pytest.approx(res.edep_eV_per_photon.sum(), rel=1e-12)
        counts = sum(res.escape(c, "count")[0] for c in ("-x", "+x", "-y", "+y", "-z", "+z", "missed"))
        assert counts <= 1.0 + 1e-12
    assert res.escape("missed", "count")[0] > 0.9
    dose, sig = res.dose_Gy_per_photon()
    assert dose.shape == ph.shape and np.all(np.isfinite(dose))
    table = res.label_table()
    assert [r["label"] for r in table] == [0, 1, 2]
    assert table[2]["mass_g"] == pytest.approx(2 * 2.699 * 2 * 3 * 3, rel=1e-6)


def test_seed_reproducible_and_thread_independent():
    import numba
    ph = slab(n_layers=5, thickness_cm=5.0, lateral_mm=100.0)
    st = dict(histories_per_batch=5000, n_batches=2, seed=9)
    a = run(ph, {0: WATER}, pencil(), settings=Settings(**st, threads=1))
    b = run(ph, {0: WATER}, pencil(), settings=Settings(**st, threads=1))
    assert np.array_equal(a.voxel_sum, b.voxel_sum)
    if numba.config.NUMBA_NUM_THREADS >= 2:
        c = run(ph, {0: WATER}, pencil(), settings=Settings(**st, threads=2))
        np.testing.assert_allclose(c.voxel_sum, a.voxel_sum, rtol=1e-12)
        np.testing.assert_allclose(c.escape_sum, a.escape_sum, rtol=1e-12)
    d = run(ph, {0: WATER}, pencil(), settings=Settings(**{**st, "seed": 10}))
    assert not np.allclose(d.voxel_sum, a.voxel_sum)


def test_resume_and_merge(tmp_path):
    ph = slab(n_layers=3, thickness_cm=3.0, lateral_mm=100.0)
    calls = []
    full = run(ph, {0: WATER}, pencil(), settings=Settings(histories_per_batch=2000, n_batches=4, seed=2),
               progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # "interrupted" after 2 batches, then resumed
    st2 = Settings(histories_per_batch=2000, n_batches=2, seed=2, state_dir=tmp_path)
    run(ph, {0: WATER}, pencil(), settings=st2)
    files = sorted(tmp_path.glob("batch_*.npz"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    resumed = run(ph, {0: WATER}, pencil(), settings=Settings(histories_per_batch=2000, n_batches=4, seed=2,
                                                              state_dir=tmp_path))
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # not recomputed
    assert resumed.histories == 8000 and resumed.n_batches == 4
    assert np.array_equal(resumed.voxel_sum, full.voxel_sum)
    assert np.array_equal(resumed.voxel_sum_sq, full.voxel_sum_sq)
    merged = type(full).merge(sorted(tmp_path.glob("batch_*.npz")), ph.shape, full.label_ids)
    assert np.array_equal(merged.voxel_sum, full.voxel_sum)
    assert merged.deposited_total_eV == full.deposited_total_eV
    with pytest.raises(TransportError, match="already added"):
        merged.add_batch(BatchRecord.load(files[0]))
    # a different run's state is not reused
    other = run(ph, {0: WATER}, pencil(70.0), settings=Settings(histories_per_batch=2000, n_batches=4, seed=2,
                                                                 state_dir=tmp_path / "x"))
    assert not np.array_equal(other.voxel_sum, full.voxel_sum)


#: EGSnrc's energy balance (reference README): fraction of the incident 60 keV deposited in
#: the slab and leaving through the front (−z) and back (+z) faces, with 1σ.
EGSNRC_FRACTIONS = {"deposited": (0.68218, 0.0), "-z": (0.24251, 0.00012), "+z": (0.07531, 0.00008)}
#: Per-layer tolerance beyond 3σ (σ: ours and EGSnrc's combined), for what statistics do not
#: cover: cross-section data (xraylib vs EGSnrc's XCOM) and sampling details. At 1e7 histories
#: χ²/20 of the layer deviations is 1.0–1.7 over seeds 1–6 and 17: a systematic of ~0.1–0.2 %.
LAYER_SYSTEMATIC = 0.002
#: Tolerance on the three energy fractions beyond 3σ (absolute, fraction of incident energy);
#: at 1e7 histories ours differ by −0.04 to −0.07 % (deposited) and +0.04 to +0.06 % (back).
FRACTION_SYSTEMATIC = 0.001


def _water_slab(shared_reference, histories_per_batch, n_batches):
    """Run the EGSnrc slab; per-layer relative deviation and combined relative 1σ, and the
    energy fractions as {name: (ours − EGSnrc, combined 1σ)}."""
    ref = np.loadtxt(shared_reference("egsnrc_water_slab_60keV_kerma.csv"), delimiter=",", skiprows=1)
    r, rs = ref[:, 2] * 1e6, ref[:, 3] * 1e6  # eV per photon
    res = run(slab(n_layers=20, thickness_cm=20.0), {0: WATER}, pencil(),
              settings=Settings(histories_per_batch=histories_per_batch, n_batches=n_batches, seed=17))
    assert abs(res.energy_balance_error) < 1e-9
    m = res.edep_eV_per_photon.ravel()
    s = res.edep_sigma_eV_per_photon.ravel()
    dev, sig = m / r - 1, np.hypot(s, rs) / r
    e0 = 60e3
    ours = {"deposited": (res.label_edep_eV_per_photon[0], res.label_edep_sigma_eV_per_photon[0]),
            "-z": res.escape("-z"), "+z": res.escape("+z")}
    fractions = {k: (v / e0 - EGSNRC_FRACTIONS[k][0], float(np.hypot(sv / e0, EGSNRC_FRACTIONS[k][1])))
                 for k, (v, sv) in ours.items()}
    k = int(np.argmax(np.abs(dev)))
    print(f"\nEGSnrc water slab, {res.histories:.0e} histories: worst layer {k}-{k + 1} cm "
          f"{100 * dev[k]:+.3f} % (combined 1 sigma {100 * sig[k]:.3f} %), largest |dev|/sigma "
          f"{np.max(np.abs(dev / sig)):.2f}; fractions (ours - EGSnrc, % absolute): "
          + ", ".join(f"{n} {100 * d:+.3f} ± {100 * sd:.3f}" for n, (d, sd) in fractions.items()))
    return dev, sig, fractions


def test_egsnrc_water_slab_fast(shared_reference):
    """2e5 histories: combined 1σ per layer 0.6–0.7 % (first layers) to 2–2.5 % (last): every
    layer within 3σ + 0.2 %, the energy fractions within 3σ + 0.1 % absolute (σ ≈ 0.1 %)."""
    dev, sig, fractions = _water_slab(shared_reference, 20_000, 10)
    bad = np.abs(dev) > 3 * sig + LAYER_SYSTEMATIC
    assert not bad.any(), (np.flatnonzero(bad), np.round(100 * dev, 2), np.round(100 * sig, 2))
    for name, (d, sd) in fractions.items():
        assert abs(d) <= 3 * sd + FRACTION_SYSTEMATIC, (name, d, sd)
    # the tolerance resolves something: a 5 % error in any of the first ten layers would fail
    assert np.all(3 * sig[:10] + LAYER_SYSTEMATIC < 0.05)


@pytest.mark.slow
def test_egsnrc_water_slab_full(shared_reference):
    """1e7 histories, as EGSnrc: every layer within 3σ + 0.2 % (combined 1σ 0.13 % in the
    first layers to 0.45 % in the last; measured worst layer 18-19 cm, −0.55 %, seed 17),
    and the deposited, front and back fractions within 0.1 % absolute of EGSnrc's
    (measured −0.05, +0.01, +0.04 %)."""
    dev, sig, fractions = _water_slab(shared_reference, 500_000, 20)
    bad = np.abs(dev) > 3 * sig + LAYER_SYSTEMATIC
    assert not bad.any(), (np.flatnonzero(bad), np.round(100 * dev, 3), np.round(100 * sig, 3))
    assert np.max(sig) < 0.005  # σ as stated (0.45 % at most): the tolerance stays below 1.7 %
    for name, (d, _) in fractions.items():
        assert abs(d) <= FRACTION_SYSTEMATIC, (name, d)


def test_spectrum_csv(tmp_path, shared_reference):
    sp = read_spectrum_csv(shared_reference("tg195", "spectrum_120kVp_tg195.csv"))
    assert sp.bin_low_keV is not None and sp.max_energy_keV <= 120.5
    e = sp.sample(200_000, np.random.default_rng(0))
    assert e.mean() == pytest.approx(sp.mean_energy_keV, rel=2e-3)
    assert np.all((e >= sp.min_energy_keV) & (e <= sp.max_energy_keV))
    sp2 = read_spectrum_csv(shared_reference("spectrum_W_120kVp_3p45mmAl.csv"))
    assert sp2.bin_low_keV is None and 50 < sp2.mean_energy_keV < 60
    p = tmp_path / "s.csv"
    p.write_text("energy_keV,relative_fluence\n30,1\n40,-0.5\n")
    with pytest.raises(TransportError, match="relative_fluence must be finite and >= 0"):
        read_spectrum_csv(p)
    p.write_text("energy_keV,weight\n30,1\n")
    with pytest.raises(TransportError, match="relative_fluence"):
        read_spectrum_csv(p)


def test_bad_input():
    ph = slab()
    with pytest.raises(TransportError, match=r"material ids \[0\]"):
        run(ph, {1: WATER}, pencil())
    with pytest.raises(TransportError, match="misses the phantom"):
        run(ph, {0: WATER}, PencilBeam((5000.0, 0, -50), (0, 0, 1), 60.0))
    with pytest.raises(TransportError, match="histories_per_batch"):
        Settings(histories_per_batch=0)
    with pytest.raises(TransportError, match="seed"):
        Settings(seed=-1)
    with pytest.raises(TransportError, match="exceeds the tables"):
        run(ph, {0: WATER}, pencil(200.0))
    with pytest.raises(TransportError, match="energy_keV"):
        PencilBeam((0, 0, 0), (0, 0, 1), -5.0)
    with pytest.raises(TransportError, match="direction"):
        PencilBeam((0, 0, 0), (0, 0, 0), 60.0)
    with pytest.raises(TransportError, match="compton must be one of"):
        Physics(compton="free")
    with pytest.raises(TransportError, match="cutoff_keV"):
        Physics(cutoff_keV=0.5)
    with pytest.raises(TransportError, match="material_id"):
        VoxelPhantom(np.zeros((2, 2)), spacing_mm=(1, 1, 1))
    with pytest.raises(TransportError, match="spacing_mm"):
        VoxelPhantom(np.zeros((1, 1, 1), int), spacing_mm=(1, 0, 1))
    with pytest.raises(TransportError, match="direction_xyz"):
        VoxelPhantom(np.zeros((1, 1, 1), int), direction_xyz=np.ones((3, 3)))
    with pytest.raises(TransportError, match="density_g_cm3"):
        VoxelPhantom(np.zeros((1, 1, 1), int), density_g_cm3=-np.ones((1, 1, 1)))
    with pytest.raises(TransportError, match="spectrum relative_fluence is all zero"):
        Spectrum([30.0], [0.0])


def test_pure_python_kernels(tmp_path):
    """The kernels give the same answer with NUMBA_DISABLE_JIT=1 (tiny run)."""
    code = (
        "import numpy as np\n"
        "from physics.transport import *\n"
        "w = Material('water', 1.0, {'H': 0.111894, 'O': 0.888106})\n"
        "ph = VoxelPhantom(np.zeros((4, 1, 1), np.int16), spacing_mm=(10.0, 400.0, 400.0))\n"
        "r = run(ph, {0: w}, PencilBeam((0, 0, -50.0), (0, 0, 1), 60.0),\n"
        "        settings=Settings(histories_per_batch=150, n_batches=2, seed=5, threads=1))\n"
        "np.save(%r, np.concatenate([r.voxel_sum, r.escape_sum.ravel()]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = {}
    for flag in ("0", "1"):
        path = str(tmp_path / f"r{flag}.npy")
        env = {**os.environ, "NUMBA_DISABLE_JIT": flag, "DIGIPAT_CACHE_DIR": str(tmp_path / "xs")}
        subprocess.run([sys.executable, "-c", code % path], cwd=root, env=env, check=True, timeout=300)
        out[flag] = np.load(path)
    np.testing.assert_allclose(out["1"], out["0"], rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- world medium
AIR = Material("air", 0.001205, {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827})


def test_world_medium_attenuates_before_and_after_the_grid():
    """A dense 'world' (water at 0.05 g/cm³, margin 30 cm) in front of and behind a water
    slab: the uncollided transmission is exp(−μ_w·ρ_w·L_world − μ·x) over the whole path
    (Beer–Lambert through both media), and the energy balance holds with the world term."""
    thin_water = Material("thin water", 0.05, dict(WATER.mass_fractions))
    t = build_tables([WATER, thin_water])
    mu_s = t.mu_linear(0, 60.0)
    mu_w = t.mu_linear(1, 60.0)
    x_cm = 0.5 / mu_s
    margin_cm = 30.0
    ph = VoxelPhantom(np.zeros((1, 1, 1), np.int16), spacing_mm=(10 * x_cm, 2000.0, 2000.0),
                      origin_xyz_mm=(0.0, 0.0, 5 * x_cm), world_material_id=1, world_margin_mm=10 * margin_cm)
    # source 50 cm before the grid: 30 cm of it inside the world, then the slab, then 30 cm more
    src = PencilBeam((0.0, 0.0, -500.0), (0.0, 0.0, 1.0), 60.0)
    res = run(ph, {0: WATER, 1: thin_water}, src, settings=Settings(histories_per_batch=5000, n_batches=10, seed=9))
    tr, s = res.escape("+z", "uncollided_count")
    expect = np.exp(-mu_w * 2 * margin_cm - mu_s * x_cm)
    assert abs(tr - expect) < 3 * s + 1e-12, (tr, expect, s)
    assert abs(tr - np.exp(-mu_s * x_cm)) > 10 * s  # the world matters here
    assert abs(res.energy_balance_error) < 1e-9
    w, ws = res.world_eV_per_photon
    assert w > 0 and ws > 0
    # photons that never reach the grid (scattered away in the world first) count as 'missed'
    assert res.escape("missed", "count")[0] > 0


def test_world_air_balance_and_vacuum_default_unchanged():
    """Real air around a water block (TG-195's world): the balance holds with the world term;
    without a world material nothing is deposited outside the grid."""
    base = dict(spacing_mm=(50.0, 200.0, 200.0), origin_xyz_mm=(0.0, 0.0, 25.0))
    src = PencilBeam((0.0, 0.0, -600.0), (0.0, 0.0, 1.0), 56.4)
    st = Settings(histories_per_batch=4000, n_batches=4, seed=2)
    vac = run(VoxelPhantom(np.zeros((5, 1, 1), np.int16), **base), {0: WATER}, src, settings=st)
    air = run(VoxelPhantom(np.zeros((5, 1, 1), np.int16), world_material_id=1, world_margin_mm=700.0, **base),
              {0: WATER, 1: AIR}, src, settings=st)
    assert vac.world_eV_per_photon[0] == 0.0 and vac.filtered_eV_per_photon[0] == 0.0
    assert abs(vac.energy_balance_error) < 1e-9 and abs(air.energy_balance_error) < 1e-9
    assert air.world_eV_per_photon[0] > 0


class _WeightedPencil(PencilBeam):
    """A pencil beam whose photons carry weights uniform in [0.2, 1] (a test filter)."""

    def sample(self, n, rng):
        b = super().sample(n, rng)
        b.weight = 0.2 + 0.8 * rng.random(n)
        return b


def test_source_weights_scale_tallies_and_keep_the_balance():
    ph = slab(n_layers=4, thickness_cm=4.0)
    st = Settings(histories_per_batch=3000, n_batches=5, seed=5)
    plain = run(ph, {0: WATER}, pencil(), settings=st)
    weighted = run(ph, {0: WATER}, _WeightedPencil((0.0, 0.0, -50.0), (0.0, 0.0, 1.0), 60.0), settings=st)
    assert abs(weighted.energy_balance_error) < 1e-9
    f, _ = weighted.filtered_eV_per_photon
    assert abs(f / 60e3 - 0.4) < 0.02  # E[1 − w] = 0.4
    ratio = weighted.deposited_total_eV / plain.deposited_total_eV
    assert abs(ratio - 0.6) < 0.05  # E[w] = 0.6


def test_world_bad_input():
    with pytest.raises(TransportError, match="world_material_id"):
        VoxelPhantom(np.zeros((1, 1, 1), np.int16), world_material_id=-1)
    with pytest.raises(TransportError, match="world_margin_mm"):
        VoxelPhantom(np.zeros((1, 1, 1), np.int16), world_material_id=0, world_margin_mm=0)
    with pytest.raises(TransportError, match="world_material_id 7 has no material"):
        run(VoxelPhantom(np.zeros((1, 1, 1), np.int16), world_material_id=7), {0: WATER}, pencil(),
            settings=Settings(histories_per_batch=10, n_batches=1))


def test_iodine_k_fluorescence_escape_matches_analytic():
    """50 keV pencil beam on a thin iodine foil (μT ≈ 0.1): switching K fluorescence on
    lowers the deposited energy by the escaping K-line energy, computed independently as
    Σ_l E_l ω_K p_l ∫ τ_K ρ e^{−μx} ½[E₂(μ_l x) + E₂(μ_l (T−x))] dx (isotropic emission,
    single-flight escape; xraylib's partial K cross section, yield and line rates)."""
    import xraylib as xrl
    from scipy.integrate import quad
    from scipy.special import expn

    iodine = Material("iodine", 4.93, {"I": 1.0})
    t = build_tables([iodine])
    mu = t.mu_linear(0, 50.0)
    T = 0.1 / mu
    tau_k = xrl.CS_Photo_Partial(53, xrl.K_SHELL, 50.0) * iodine.density_g_cm3
    omega = xrl.FluorYield(53, xrl.K_SHELL)
    expect = 0.0
    for name in ("KL2_LINE", "KL3_LINE", "KM2_LINE", "KM3_LINE", "KN2_LINE", "KN3_LINE"):
        line = getattr(xrl, name)
        try:
            el, rate = xrl.LineEnergy(53, line), xrl.RadRate(53, line)
        except ValueError:
            continue
        mu_l = t.mu_linear(0, el)
        f = quad(lambda x: tau_k * np.exp(-mu * x) * 0.5 * (expn(2, mu_l * x) + expn(2, mu_l * (T - x))), 0, T)[0]
        expect += el * omega * rate * f * 1000.0  # eV per photon
    ph = VoxelPhantom(np.zeros((1, 1, 1), np.int16), spacing_mm=(10 * T, 2000.0, 2000.0))
    st = Settings(histories_per_batch=50_000, n_batches=8, seed=12)
    on = run(ph, {0: iodine}, pencil(50.0), Physics(fluorescence=True), st)
    off = run(ph, {0: iodine}, pencil(50.0), Physics(fluorescence=False), st)
    d_on, d_off = on.label_edep_eV_per_photon[0], off.label_edep_eV_per_photon[0]
    sig = np.hypot(on.label_edep_sigma_eV_per_photon[0], off.label_edep_sigma_eV_per_photon[0])
    assert abs((d_off - d_on) - expect) < 3 * sig + 0.03 * expect, (d_off - d_on, expect, sig)
    assert expect > 10 * sig  # the effect is resolved
    assert abs(on.energy_balance_error) < 1e-9
