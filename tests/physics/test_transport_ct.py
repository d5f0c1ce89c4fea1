"""CT fan-beam source geometry (physics/transport/ct.py) against analytic truth.

Truths used:
- the solid angle of a plane rectangle [x1, x2] × [y1, y2] seen from a point at
  distance R above the origin of its plane is  Σ ± F(x, y)  over the corners, with
  F(x, y) = atan(x y / (R sqrt(R² + x² + y²)))  (integral of R / r³ dA; e.g. Mathar,
  "Solid angle of a rectangular plate", 2015) — derived independently of the module's
  4 asin(sin α sin β);
- isotropic emission gives a fluence per unit area on the plane ∝ cos³γ;
- TG-195 source position S(θ) = R (−cos θ, −sin θ, 0) (reference/tg195/README.md §2).
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
