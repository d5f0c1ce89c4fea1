"""CT fan-beam source geometry (physics/transport/ct.py) against analytic truth.

Truths used:
- the solid angle of a plane rectangle [x1, x2] × [y1, y2] seen from a point at
  distance R above the origin of its plane is  Σ ± F(x, y)  over the corners, with
  F(x, y) = atan(x y / (R sqrt(R² + x² + y²)))  (integral of R / r³ dA; e.g. Mathar,
  "Solid angle of a rectangular plate", 2015) — derived independently of the module's
  4 asin(sin α sin β);
- isotropic emission gives a fluence per unit area on the plane ∝ cos³γ;
- TG-195 source position S(θ) = R (−cos θ, −sin θ, 0) (reference/tg195/README.md §2);
- a continuous scan draws θ uniformly (χ² and Kolmogorov–Smirnov tests) and a helical one
  moves the focal spot by exactly z = z0 + p H (θ − θ0)/360° (θ recovered from positions);
- a primary-only bowtie weights each photon by exp(−μ t(x)/cos β), with μ from the
  xraylib/XCOM tables and the compensator profile written out independently here; the
  mean weight is the solid-angle average ∫∫ w R/r³ dA / Ω (scipy dblquad).
"""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from physics.transport import Spectrum, TransportError
from physics.transport.ct import CTFanBeam

R_MM = 600.0


def _corner(x, y, R):
    return math.atan(x * y / (R * math.sqrt(R * R + x * x + y * y)))


def rect_solid_angle(x1, x2, y1, y2, R):
    """Solid angle (sr) of [x1,x2]×[y1,y2] on a plane at distance R (corner formula)."""
    return _corner(x2, y2, R) - _corner(x1, y2, R) - _corner(x2, y1, R) + _corner(x1, y1, R)


def plane_hits(src, batch):
    """Fan and slice coordinates (mm) where each photon crosses its isocentre plane."""
    c = src.isocentre_xyz_mm - batch.position_mm
    R = np.linalg.norm(c, axis=1)
    c /= R[:, None]
    t = R / np.einsum("ij,ij->i", batch.direction, c)
    hit = batch.position_mm + t[:, None] * batch.direction - src.isocentre_xyz_mm
    f = np.cross(src.axis, c)
    return np.einsum("ij,ij->i", hit, f), hit @ src.axis, np.einsum("ij,ij->i", hit, c)


def test_solid_angle_formulas_agree():
    # the module's 4 asin(sin a sin b), the corner formula and a numerical integral of R/r^3
    src = CTFanBeam(R_MM, 320.0, 80.0, energy_keV=56.4)
    a, b = 160.0, 40.0
    numeric, _ = integrate.dblquad(lambda y, x: R_MM / (R_MM**2 + x * x + y * y) ** 1.5, -a, a, -b, b,
                                   epsabs=1e-13, epsrel=1e-11)
    assert src.solid_angle_sr == pytest.approx(rect_solid_angle(-a, a, -b, b, R_MM), rel=1e-12)
    assert src.solid_angle_sr == pytest.approx(numeric, rel=1e-9)


def test_directions_hit_the_isocentre_rectangle_and_fill_it():
    src = CTFanBeam(R_MM, 320.0, 10.0, energy_keV=56.4)
    b = src.sample(50_000, np.random.default_rng(1))
    assert np.allclose(np.linalg.norm(b.direction, axis=1), 1.0, atol=1e-12)
    assert np.allclose(b.position_mm, [-R_MM, 0.0, 0.0])
    x, y, depth = plane_hits(src, b)
    assert np.allclose(depth, 0.0, atol=1e-9)
    assert np.all(np.abs(x) <= 160.0 + 1e-9) and np.all(np.abs(y) <= 5.0 + 1e-9)
    # and the samples reach the edges (not a smaller field)
    assert np.abs(x).max() > 159.0 and np.abs(y).max() > 4.99
    # fan along +y, slice along z at theta = 0 (TG-195 §2)
    assert np.allclose(src.fan_direction(0.0), [0, 1, 0]) and np.allclose(src.axis, [0, 0, 1])
    assert np.allclose(b.position_mm + 1.0 * b.direction, [-R_MM + 1, 0, 0], atol=0.3)


@pytest.mark.parametrize("sub", [(-160.0, 160.0, -2.0, 2.0),      # centred narrower slice
                                 (40.0, 150.0, -5.0, 1.0),        # off-centre
                                 (-160.0, -140.0, -5.0, 5.0)])    # fan edge
def test_fraction_through_subrectangle_matches_solid_angle_ratio(sub):
    src = CTFanBeam(R_MM, 320.0, 10.0, energy_keV=56.4)
    n = 400_000
    x, y, _ = plane_hits(src, src.sample(n, np.random.default_rng(7)))
    x1, x2, y1, y2 = sub
    got = np.mean((x >= x1) & (x <= x2) & (y >= y1) & (y <= y2))
    p = rect_solid_angle(x1, x2, y1, y2, R_MM) / rect_solid_angle(-160, 160, -5, 5, R_MM)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(got - p) < 3 * sigma, (got, p, sigma)
    # the same fraction if the plane were sampled uniformly differs by far more than 3 sigma
    uniform = (x2 - x1) * (y2 - y1) / (320.0 * 10.0)
    if sub[1] < 0.0:  # at the fan edge cos^3 is ~6 % below the field mean
        assert abs(uniform - p) > 8 * sigma, (uniform, p, sigma)


def test_plane_fluence_falls_off_as_cos_cubed():
    # wide fan (half-angle 45 deg) and thin slice, so cos^3 drops to 0.354 at the edge
    R, W, H = 100.0, 200.0, 0.1
    src = CTFanBeam(R, W, H, energy_keV=30.0)
    n = 200_000
    x, _, _ = plane_hits(src, src.sample(n, np.random.default_rng(3)))
    edges = np.linspace(-W / 2, W / 2, 21)
    counts, _ = np.histogram(x, edges)
    cos3 = lambda s: (R / np.sqrt(R * R + s * s)) ** 3  # noqa: E731
    w = np.array([integrate.quad(cos3, a, b)[0] for a, b in zip(edges[:-1], edges[1:])])
    expected = n * w / w.sum()
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.999, df=len(counts) - 1), chi2
    # edge-bin density / centre density ~ cos^3(45 deg) = 0.354 (bin-averaged analytic)
    dens = counts / np.diff(edges)
    ratio = 0.5 * (dens[0] + dens[-1]) / (0.5 * (dens[9] + dens[10]))
    truth = 0.5 * (w[0] + w[-1]) / (0.5 * (w[9] + w[10]))
    assert ratio == pytest.approx(truth, rel=0.03)
    assert truth == pytest.approx(math.cos(math.pi / 4) ** 3, rel=0.1)
    # and uniform sampling on the plane (ratio 1) would be rejected
    assert ratio < 0.5


def test_acceptance_is_mean_cos_cubed():
    src = CTFanBeam(R_MM, 320.0, 80.0, energy_keV=56.4)
    # TG-195 Case 4: cos^3 at the fan edge ~0.90, so acceptance lies between that and 1
    edge = (R_MM / math.hypot(R_MM, 160.0)) ** 3
    assert edge == pytest.approx(0.902, abs=0.001)
    assert edge < src.acceptance < 1.0


def test_angles_rotate_the_source_as_tg195():
    src = CTFanBeam(R_MM, 320.0, 10.0, angles_deg=[0, 30, 90, 180, 270], energy_keV=56.4)
    for th in (0.0, 30.0, 90.0, 180.0, 270.0, 123.4):
        t = math.radians(th)
        assert np.allclose(src.source_position_mm(th), R_MM * np.array([-math.cos(t), -math.sin(t), 0.0]))
    n = 50_000
    b = src.sample(n, np.random.default_rng(11))
    theta = np.degrees(np.arctan2(-b.position_mm[:, 1], -b.position_mm[:, 0])) % 360.0
    assert np.allclose(np.linalg.norm(b.position_mm, axis=1), R_MM)
    assert np.allclose(b.position_mm[:, 2], 0.0)
    vals, counts = np.unique(np.round(theta, 6), return_counts=True)
    assert np.allclose(vals, [0, 30, 90, 180, 270])
    p = 1 / 5
    assert np.all(np.abs(counts / n - p) < 3 * math.sqrt(p * (1 - p) / n) * 1.5)
    # every photon still goes through its own rectangle
    x, y, depth = plane_hits(src, b)
    assert np.all(np.abs(x) <= 160 + 1e-9) and np.all(np.abs(y) <= 5 + 1e-9)
    assert np.allclose(depth, 0.0, atol=1e-9)
    pos, d = src.central_ray()
    assert np.allclose(pos, [-R_MM, 0, 0]) and np.allclose(d, [1, 0, 0])


def test_general_axis_and_isocentre():
    iso = np.array([10.0, -20.0, 35.0])
    src = CTFanBeam(500.0, 100.0, 20.0, angles_deg=np.arange(0, 360, 15), energy_keV=40.0,
                    isocentre_xyz_mm=iso, axis=(1.0, 0.0, 0.0))
    frame = np.stack([src.u, src.v, src.axis])
    assert np.allclose(frame @ frame.T, np.eye(3)) and np.linalg.det(frame) == pytest.approx(1.0)
    b = src.sample(20_000, np.random.default_rng(5))
    rel = b.position_mm - iso
    assert np.allclose(np.linalg.norm(rel, axis=1), 500.0)
    assert np.allclose(rel @ src.axis, 0.0, atol=1e-9)  # source circle is perpendicular to the axis
    x, y, depth = plane_hits(src, b)
    assert np.allclose(depth, 0.0, atol=1e-9)
    assert np.all(np.abs(x) <= 50 + 1e-9) and np.all(np.abs(y) <= 10 + 1e-9)


def test_reproducible_and_energies():
    spec = Spectrum([40.0, 60.0], [1.0, 3.0])
    src = CTFanBeam(R_MM, 320.0, 10.0, angles_deg=[0, 90], energy_keV=spec)
    a = src.sample(1000, np.random.default_rng(42))
    b = src.sample(1000, np.random.default_rng(42))
    assert np.array_equal(a.direction, b.direction) and np.array_equal(a.position_mm, b.position_mm)
    assert np.array_equal(a.energy_keV, b.energy_keV)
    assert set(np.unique(a.energy_keV)) == {40.0, 60.0}
    assert src.max_energy_keV == 60.0
    assert src.sample(0, np.random.default_rng(0)).direction.shape == (0, 3)
    assert src.to_dict()["angles_deg"] == [0.0, 90.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(source_to_isocentre_mm=-600.0), "source_to_isocentre_mm"),
    (dict(source_to_isocentre_mm=float("inf")), "source_to_isocentre_mm"),
    (dict(fan_width_mm=0.0), "fan_width_mm"),
    (dict(slice_width_mm=float("nan")), "slice_width_mm"),
    (dict(slice_width_mm="10"), "slice_width_mm"),
    (dict(angles_deg=[]), "angles_deg"),
    (dict(angles_deg=[0.0, float("nan")]), "angles_deg"),
    (dict(angles_deg="abc"), "angles_deg"),
    (dict(energy_keV=-56.4), "energy_keV"),
    (dict(energy_keV=None), "energy_keV"),
    (dict(axis=(0, 0, 0)), "axis"),
    (dict(isocentre_xyz_mm=(0, 0)), "isocentre_xyz_mm"),
])
def test_bad_input(kwargs, match):
    args = dict(source_to_isocentre_mm=600.0, fan_width_mm=320.0, slice_width_mm=10.0, energy_keV=56.4)
    args.update(kwargs)
    with pytest.raises(TransportError, match=match):
        CTFanBeam(**args)
    assert issubclass(TransportError, ValueError)


@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_bad_sample_count(n):
    src = CTFanBeam(600.0, 320.0, 10.0, energy_keV=56.4)
    with pytest.raises(TransportError, match="n must be"):
        src.sample(n, np.random.default_rng(0))


def test_engine_missed_fraction_is_solid_angle_outside_phantom():
    """Through the engine: photons that miss a box are those outside its front face's solid angle."""
    from physics.transport import Material, Settings, VoxelPhantom, run
    water = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})
    # box 10 mm deep along the central ray (x), 160 mm across the fan (y), 40 mm along z
    ph = VoxelPhantom(np.zeros((1, 1, 1), np.int16), spacing_mm=(40.0, 160.0, 10.0),
                      origin_xyz_mm=(0.0, 0.0, 0.0))  # one voxel centred on the isocentre
    src = CTFanBeam(R_MM, 320.0, 10.0, energy_keV=56.4)
    res = run(ph, {0: water}, src, settings=Settings(histories_per_batch=10_000, n_batches=4, seed=9))
    d_front = R_MM - 5.0
    omega_in = rect_solid_angle(-80.0, 80.0, -5.0 * d_front / R_MM, 5.0 * d_front / R_MM, d_front)
    p_miss = 1.0 - omega_in / src.solid_angle_sr
    got, sig = res.escape("missed", "count")
    assert abs(got - p_miss) < 3 * max(sig, math.sqrt(p_miss * (1 - p_miss) / res.histories)), (got, p_miss, sig)
    assert abs(res.energy_balance_error) < 1e-9


# ----------------------------------------------------------------------------- continuous and helical scans
def _angles_deg(src, batch):
    """Projection angle θ (degrees, [0, 360)) of each photon from its focal-spot position."""
    rel = batch.position_mm - src.isocentre_xyz_mm
    return np.degrees(np.arctan2(-(rel @ src.v), -(rel @ src.u))) % 360.0


def test_continuous_axial_angles_are_uniform():
    src = CTFanBeam(R_MM, 320.0, 10.0, energy_keV=56.4, rotation="continuous", start_angle_deg=30.0)
    assert src.total_angle_deg == 360.0 and src.pitch == 0.0 and src.z_start_mm == src.z_end_mm == 0.0
    n = 72_000
    b = src.sample(n, np.random.default_rng(21))
    assert np.allclose(np.linalg.norm(b.position_mm, axis=1), R_MM) and np.allclose(b.position_mm[:, 2], 0.0)
    counts, _ = np.histogram(_angles_deg(src, b), np.linspace(0.0, 360.0, 37))
    chi2 = np.sum((counts - n / 36) ** 2 / (n / 36))
    assert chi2 < stats.chi2.ppf(0.999, df=35), chi2
    # every photon still goes through its own isocentre-plane rectangle
    x, y, depth = plane_hits(src, b)
    assert np.allclose(depth, 0.0, atol=1e-9)
    assert np.all(np.abs(x) <= 160 + 1e-9) and np.all(np.abs(y) <= 5 + 1e-9)
    # a partial arc covers exactly [start, start + arc)
    arc = CTFanBeam(R_MM, 320.0, 10.0, energy_keV=56.4, rotation="continuous", start_angle_deg=30.0, arc_deg=90.0)
    th = _angles_deg(arc, arc.sample(20_000, np.random.default_rng(2)))
    assert th.min() >= 30.0 - 1e-9 and th.max() < 120.0 + 1e-9
    assert stats.kstest((th - 30.0) / 90.0, "uniform").pvalue > 1e-3


def test_helical_z_is_linear_in_the_angle():
    """z = z_start + pitch · H · (θ − θ0) / 360°: recover the turned angle from z, compare θ mod 360."""
    pitch, H, z0, z1, th0 = 1.5, 10.0, -20.0, 25.0, 40.0
    src = CTFanBeam(R_MM, 320.0, H, energy_keV=56.4, rotation="continuous", pitch=pitch,
                    z_start_mm=z0, z_end_mm=z1, start_angle_deg=th0)
    assert src.total_angle_deg == pytest.approx(360.0 * (z1 - z0) / (pitch * H))  # 1080° = 3 rotations
    assert src.n_rotations == pytest.approx(3.0) and src.z_end_mm == pytest.approx(z1)
    n = 50_000
    b = src.sample(n, np.random.default_rng(8))
    z = b.position_mm @ src.axis
    assert z.min() >= z0 and z.max() < z1
    assert stats.kstest((z - z0) / (z1 - z0), "uniform").pvalue > 1e-3
    turned = 360.0 * (z - z0) / (pitch * H)
    diff = (_angles_deg(src, b) - (th0 + turned) + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(diff)) < 1e-9
    # radial distance R from the axis, and the beam is centred on the plane through z
    rel = b.position_mm - np.outer(z, src.axis)
    assert np.allclose(np.linalg.norm(rel, axis=1), R_MM)
    c = -rel / R_MM
    t = R_MM / np.einsum("ij,ij->i", b.direction, c)
    hit = b.position_mm + t[:, None] * b.direction - np.outer(z, src.axis)
    assert np.all(np.abs(hit @ src.axis) <= H / 2 + 1e-9)
    assert np.all(np.abs(np.einsum("ij,ij->i", hit, np.cross(src.axis, c))) <= 160.0 + 1e-9)
    d = src.to_dict()
    assert d["rotation"] == "continuous" and d["angles_deg"] is None
    assert (d["pitch"], d["z_start_mm"], d["start_angle_deg"]) == (pitch, z0, th0)
    assert d["z_end_mm"] == pytest.approx(z1) and d["arc_deg"] == pytest.approx(1080.0)


def test_helical_by_rotations_is_centred_and_pitch_zero_is_axial():
    src = CTFanBeam(R_MM, 320.0, 40.0, energy_keV=56.4, rotation="continuous", pitch=0.5, n_rotations=4)
    assert (src.z_start_mm, src.z_end_mm) == pytest.approx((-40.0, 40.0))  # travel 4 × 0.5 × 40 mm
    pos, d = src.central_ray()  # middle of the scan: θ = 720°, z = 0
    assert np.allclose(pos, [-R_MM, 0, 0]) and np.allclose(d, [1, 0, 0])
    assert np.allclose(src.helix_z_mm([0.0, 720.0, 1440.0]), [-40.0, 0.0, 40.0])
    # pitch 0 over n rotations: the continuous axial scan, same sampled geometry as arc_deg=360
    a = CTFanBeam(R_MM, 320.0, 40.0, energy_keV=56.4, rotation="continuous", pitch=0.0, z_start_mm=5.0)
    b = a.sample(2000, np.random.default_rng(4))
    assert np.allclose(b.position_mm[:, 2], 5.0)
    # a helical run is reproducible from the seed
    b1, b2 = (src.sample(1000, np.random.default_rng(3)) for _ in range(2))
    assert np.array_equal(b1.position_mm, b2.position_mm) and np.array_equal(b1.direction, b2.direction)
    assert b1.weight is None


def test_discrete_to_dict_lists_new_keys():
    d = CTFanBeam(R_MM, 320.0, 10.0, angles_deg=[0, 90], energy_keV=56.4).to_dict()
    assert d["rotation"] == "discrete" and d["angles_deg"] == [0.0, 90.0]
    for k in ("start_angle_deg", "arc_deg", "n_rotations", "pitch", "z_start_mm", "z_end_mm", "bowtie"):
        assert k in d and d[k] is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(rotation="spiral"), "rotation must be one of 'discrete', 'continuous'"),
    (dict(pitch=1.0), "pitch applies to rotation='continuous' only"),
    (dict(arc_deg=180.0), "arc_deg applies to rotation='continuous'"),
    (dict(rotation="continuous", angles_deg=[0, 90]), "angles_deg applies to rotation='discrete'"),
    (dict(rotation="continuous", pitch=-1.0), "pitch must be a finite number >= 0"),
    (dict(rotation="continuous", pitch=float("nan")), "pitch"),
    (dict(rotation="continuous", pitch="1"), "pitch"),
    (dict(rotation="continuous", n_rotations=0.0), "n_rotations must be a finite number > 0"),
    (dict(rotation="continuous", arc_deg=-90.0), "arc_deg"),
    (dict(rotation="continuous", start_angle_deg=float("inf")), "start_angle_deg"),
    (dict(rotation="continuous", arc_deg=90.0, n_rotations=2), "at most one of arc_deg, n_rotations, z_end_mm"),
    (dict(rotation="continuous", pitch=1.0, z_end_mm=50.0), "z_end_mm needs z_start_mm"),
    (dict(rotation="continuous", z_start_mm=0.0, z_end_mm=50.0), "z_end_mm needs pitch > 0"),
    (dict(rotation="continuous", pitch=1.0, z_start_mm=10.0, z_end_mm=10.0), "z_end_mm must be > z_start_mm"),
    (dict(rotation="continuous", pitch=1.0, slice_width_mm=0.0), "slice_width_mm"),
    (dict(bowtie="aluminium"), "bowtie must be a Bowtie"),
])
def test_bad_scan_input(kwargs, match):
    args = dict(source_to_isocentre_mm=600.0, fan_width_mm=320.0, slice_width_mm=10.0, energy_keV=56.4)
    args.update(kwargs)
    with pytest.raises(TransportError, match=match):
        CTFanBeam(**args)


# ----------------------------------------------------------------------------- bowtie filter

def _al():
    from physics.transport import Material
    return Material("Al", 2.699, {"Al": 1.0})


def _mu_al_per_mm(energy_keV):
    from physics.transport import build_tables
    return build_tables([_al()]).mu_linear(0, energy_keV) / 10.0


def _cylinder_t(x, R, t0, rho, k):
    """The compensator profile, written out independently: t0 + k (2ρ − chord at distance R sinγ)."""
    s = R * np.sin(np.arctan2(x, R))
    return t0 + k * (2 * rho - 2 * np.sqrt(np.clip(rho ** 2 - s ** 2, 0, None)))


def test_bowtie_weights_mono():
    from physics.transport.ct import Bowtie
    t0, rho, k, E = 3.0, 160.0, 0.25, 56.4
    src = CTFanBeam(R_MM, 320.0, 80.0, energy_keV=E, bowtie=Bowtie.cylinder_compensator(_al(), t0, rho, k))
    mu = float(_mu_al_per_mm(E))
    # the central ray crosses t0 exactly
    assert src.bowtie_transmission(0.0, 0.0, E) == pytest.approx(math.exp(-mu * t0), rel=1e-9)
    # symmetric in ±fan and ±slice
    x = np.linspace(0, 160, 17)
    for y in (0.0, 25.0, 40.0):
        w = src.bowtie_transmission(x, y, E)
        assert np.allclose(w, src.bowtie_transmission(-x, y, E), rtol=1e-12, atol=0)
        assert np.allclose(w, src.bowtie_transmission(x, -y, E), rtol=1e-12, atol=0)
    # every sampled weight is the flat-plate path t(x)/cos β through the filter
    b = src.sample(20_000, np.random.default_rng(12))
    xs, ys, _ = plane_hits(src, b)
    path = _cylinder_t(xs, R_MM, t0, rho, k) * np.sqrt(R_MM ** 2 + xs ** 2 + ys ** 2) / np.sqrt(R_MM ** 2 + xs ** 2)
    # (the compiled sampler interpolates t(x) and μ(E) on fine tables: 1e-6)
    assert np.allclose(b.weight, np.exp(-mu * path), rtol=1e-6, atol=0)
    assert np.all((b.weight > 0) & (b.weight <= 1))


def test_bowtie_mean_weight_is_the_solid_angle_average():
    """Mean sampled weight = ∫∫ w(x, y) R/r³ dx dy / Ω over the isocentre-plane rectangle."""
    from physics.transport.ct import Bowtie
    t0, rho, k, E, W, H = 2.0, 120.0, 0.3, 60.0, 400.0, 80.0
    src = CTFanBeam(R_MM, W, H, energy_keV=E, bowtie=Bowtie.cylinder_compensator(_al(), t0, rho, k))
    mu = float(_mu_al_per_mm(E))

    def w(y, x):
        r2 = R_MM ** 2 + x * x + y * y
        return math.exp(-mu * _cylinder_t(x, R_MM, t0, rho, k) * math.sqrt(r2 / (R_MM ** 2 + x * x))) \
            * R_MM / r2 ** 1.5

    num = 0.0  # split the x range at the kinks of the profile (the cylinder's shadow edge)
    x_edge = rho * R_MM / math.sqrt(R_MM ** 2 - rho ** 2)
    for a, b_ in ((-W / 2, -x_edge), (-x_edge, 0.0), (0.0, x_edge), (x_edge, W / 2)):
        num += integrate.dblquad(w, a, b_, -H / 2, H / 2, epsabs=1e-12, epsrel=1e-10)[0]
    truth = num / src.solid_angle_sr
    n = 400_000
    wts = src.sample(n, np.random.default_rng(13)).weight
    assert abs(wts.mean() - truth) < 4 * wts.std() / math.sqrt(n), (wts.mean(), truth)
    assert 0.05 < truth < 0.9  # a real test: far from both 1 and the central weight
    assert truth < math.exp(-mu * t0)


def test_bowtie_spectrum_weights_follow_energy():
    from physics.transport.ct import Bowtie
    table = [[-200.0, 8.0], [0.0, 1.0], [200.0, 8.0]]
    spec = Spectrum([30.0, 60.0, 90.0], [1.0, 1.0, 1.0])
    src = CTFanBeam(R_MM, 320.0, 10.0, energy_keV=spec, bowtie=Bowtie(_al(), table))
    b = src.sample(5000, np.random.default_rng(1))
    xs, ys, _ = plane_hits(src, b)
    t = np.interp(xs, [-200.0, 0.0, 200.0], [8.0, 1.0, 8.0])
    path = t * np.sqrt(R_MM ** 2 + xs ** 2 + ys ** 2) / np.sqrt(R_MM ** 2 + xs ** 2)
    assert np.allclose(b.weight, np.exp(-_mu_al_per_mm(b.energy_keV) * path), rtol=1e-6)
    # beam hardening: at the same ray, lower energies are filtered more
    w = src.bowtie_transmission(100.0, 0.0, [30.0, 60.0, 90.0])
    assert w[0] < w[1] < w[2]


def test_bowtie_profile_forms_agree(tmp_path):
    """A table in fan angle, the same table in mm, a callable and a CSV give the same thickness."""
    from physics.transport.ct import Bowtie
    R = R_MM
    x = np.linspace(-170.0, 170.0, 35)
    t = 1.0 + 0.0004 * x ** 2
    by_mm = Bowtie(_al(), np.column_stack([x, t]))
    by_deg = Bowtie(_al(), np.column_stack([np.degrees(np.arctan2(x, R)), t]), coordinate="fan_angle_deg")
    fn = Bowtie(_al(), lambda c: 1.0 + 0.0004 * np.asarray(c) ** 2)
    rows = "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(x, t))
    (tmp_path / "bt.csv").write_text("fan_mm,thickness_mm\n" + rows)
    from_csv = Bowtie.from_csv(_al(), tmp_path / "bt.csv")
    assert np.allclose(by_deg.thickness_mm(x, R), t, rtol=1e-12)
    assert np.allclose(fn.thickness_mm(x, R), t, rtol=1e-12)
    assert np.allclose(from_csv.thickness_mm(x, R), t, rtol=1e-12)
    assert np.allclose(by_mm.thickness_mm(x, R), t, rtol=1e-12)
    src = CTFanBeam(R, 320.0, 10.0, energy_keV=60.0, bowtie=fn)
    d = src.to_dict()["bowtie"]
    assert d["kind"] == "callable" and d["material"]["name"] == "Al"
    assert d["sampled_thickness_mm"][10] == pytest.approx(1.0)  # centre of 21 samples
    import json
    json.dumps(CTFanBeam(R, 320.0, 10.0, energy_keV=60.0, bowtie=from_csv).to_dict())


def test_bad_bowtie(tmp_path):
    from physics.transport.ct import Bowtie
    al = _al()
    with pytest.raises(TransportError, match="bowtie material must be a Material"):
        Bowtie("Al", [[0, 1], [1, 1]])
    with pytest.raises(TransportError, match="coordinate must be one of 'fan_mm', 'fan_angle_deg'"):
        Bowtie(al, [[0, 1], [1, 1]], coordinate="fan_deg")
    with pytest.raises(TransportError, match=r"shape \(n >= 2, 2\)"):
        Bowtie(al, [1.0, 2.0, 3.0])
    with pytest.raises(TransportError, match="strictly increasing"):
        Bowtie(al, [[0, 1], [0, 2]])
    with pytest.raises(TransportError, match="thickness_mm must be >= 0"):
        Bowtie(al, [[0, 1], [1, -2]])
    with pytest.raises(TransportError, match=r"covers fan_mm \[-100, 100\] mm, but the fan spans \[-160, 160\]"):
        CTFanBeam(R_MM, 320.0, 10.0, energy_keV=60.0, bowtie=Bowtie(al, [[-100, 1], [100, 1]]))
    with pytest.raises(TransportError, match="finite and >= 0 mm across the fan"):
        CTFanBeam(R_MM, 320.0, 10.0, energy_keV=60.0, bowtie=Bowtie(al, lambda c: c))
    with pytest.raises(TransportError, match="callable failed"):
        CTFanBeam(R_MM, 320.0, 10.0, energy_keV=60.0, bowtie=Bowtie(al, lambda c: 1 / 0))
    for kw, name in ((dict(centre_thickness_mm=-1.0), "centre_thickness_mm"),
                     (dict(phantom_radius_mm=0.0), "phantom_radius_mm"), (dict(ratio=-0.1), "ratio"),
                     (dict(max_thickness_mm=0.5), "max_thickness_mm must be >= centre_thickness_mm")):
        args = dict(centre_thickness_mm=1.0, phantom_radius_mm=100.0, ratio=0.3)
        args.update(kw)
        with pytest.raises(TransportError, match=name):
            Bowtie.cylinder_compensator(al, **args)
    (tmp_path / "bt.csv").write_text("angle,thickness_mm\n0,1\n")
    with pytest.raises(TransportError, match="need columns thickness_mm and one of fan_mm, fan_angle_deg"):
        Bowtie.from_csv(al, tmp_path / "bt.csv")
    (tmp_path / "bt.csv").write_text("fan_mm,thickness_mm\n0,x\n1,2\n")
    with pytest.raises(TransportError, match="unreadable number"):
        Bowtie.from_csv(al, tmp_path / "bt.csv")
    with pytest.raises(TransportError, match="does not exist"):
        Bowtie.from_csv(al, tmp_path / "none.csv")
    with pytest.raises(TransportError, match="has no bowtie"):
        CTFanBeam(R_MM, 320.0, 10.0, energy_keV=60.0).bowtie_mu_per_cm(60.0)
    assert np.all(CTFanBeam(R_MM, 320.0, 10.0, energy_keV=60.0).bowtie_transmission([0, 50], 0, 60.0) == 1.0)


def test_bowtie_max_thickness_caps_the_profile():
    from physics.transport.ct import Bowtie
    bt = Bowtie.cylinder_compensator(_al(), 1.0, 100.0, 0.5, max_thickness_mm=40.0)
    t = bt.thickness_mm(np.array([0.0, 50.0, 150.0, 300.0]), R_MM)
    assert t[0] == pytest.approx(1.0) and np.all(np.diff(t) >= 0)
    assert t[-1] == pytest.approx(40.0)  # uncapped value outside the cylinder: 1 + 0.5 * 200 = 101
    assert Bowtie.cylinder_compensator(_al(), 1.0, 100.0, 0.5).thickness_mm(300.0, R_MM) == pytest.approx(101.0)
