"""Angular sampling of the transport kernels vs analytic distributions (χ² tests).

Truth: Klein–Nishina dσ/dμ ∝ P²(P + 1/P − 1 + μ²), P = 1/(1 + α(1 − μ)), times the
incoherent scattering function S(x)/Z; form-factor-weighted Thomson
dσ/dμ ∝ (1 + μ²) F²(x), x = (E/hc)·sqrt((1 − μ)/2). S and F come straight from
xraylib here, not from the engine's tables.
"""

import numpy as np
import pytest
import xraylib
from scipy import integrate, stats

from physics.transport import Material, build_tables
from physics.transport import _kernels

WATER = Material("water", 1.0, {"H": 2 * 1.008 / 18.015, "O": 15.999 / 18.015})
HC = 12.3984193
N = 200_000


def _mixture(material, fn, x):
    if x <= 0:
        return sum(w / xraylib.AtomicWeight(z) * fn(z, 1e-9) for z, w in material.elements)
    return sum(w / xraylib.AtomicWeight(z) * fn(z, x) for z, w in material.elements)


def _chi2_pvalue(samples, pdf, edges):
    expected = np.array([integrate.quad(pdf, a, b, limit=200)[0] for a, b in zip(edges[:-1], edges[1:])])
    expected *= samples.size / expected.sum()
    observed = np.histogram(samples, edges)[0]
    keep = expected >= 5
    chi2 = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    return stats.chi2.sf(chi2, keep.sum() - 1), chi2, keep.sum() - 1


def _kn(mu, e):
    a = e / 510.99895
    p = 1.0 / (1.0 + a * (1.0 - mu))
    return p * p * (p + 1.0 / p - 1.0 + mu * mu)


@pytest.mark.parametrize("e_keV, binding", [(60.0, True), (20.0, True), (150.0, False), (30.0, False)])
def test_compton_angular_distribution(e_keV, binding):
    t = build_tables([WATER], compton="binding" if binding else "klein-nishina")
    hx = t.x_per_angstrom[1]
    mu = _kernels.sample_compton_many(11, N, e_keV, t.compton_s_over_z[0], hx)
    zsum = sum(w / xraylib.AtomicWeight(z) * z for z, w in WATER.elements)

    def pdf(m):
        s = 1.0
        if binding:
            x = e_keV / HC * np.sqrt(max(0.5 * (1 - m), 0.0))
            s = _mixture(WATER, xraylib.SF_Compt, x) / zsum if x > 0 else 0.0
        return _kn(m, e_keV) * s

    p, chi2, dof = _chi2_pvalue(mu, pdf, np.linspace(-1, 1, 41))
    assert p > 1e-3, (chi2, dof)


def test_compton_sampler_detects_wrong_distribution():
    """The χ² test can fail: free-electron samples do not pass as bound ones at 20 keV."""
    t = build_tables([WATER], compton="klein-nishina")
    mu = _kernels.sample_compton_many(11, N, 20.0, t.compton_s_over_z[0], t.x_per_angstrom[1])
    zsum = sum(w / xraylib.AtomicWeight(z) * z for z, w in WATER.elements)

    def pdf(m):
        x = 20.0 / HC * np.sqrt(max(0.5 * (1 - m), 0.0))
        return _kn(m, 20.0) * (_mixture(WATER, xraylib.SF_Compt, x) / zsum if x > 0 else 0.0)

    assert _chi2_pvalue(mu, pdf, np.linspace(-1, 1, 41))[0] < 1e-6


@pytest.mark.parametrize("e_keV", [20.0, 60.0, 120.0])
def test_rayleigh_angular_distribution(e_keV):
    t = build_tables([WATER])
    mu = _kernels.sample_rayleigh_many(5, N, e_keV, t.rayleigh_cum[0], t.x_per_angstrom[1])
    k = e_keV / HC

    def pdf(m):
        x = k * np.sqrt(max(0.5 * (1 - m), 0.0))
        return (1 + m * m) * _mixture(WATER, lambda z, q: xraylib.FF_Rayl(z, q) ** 2, x)

    # bins uniform in x (the form factor falls off on a scale of ~1/Å)
    xs = np.linspace(0, k, 41)
    edges = np.sort(1 - 2 * (xs / k) ** 2)
    p, chi2, dof = _chi2_pvalue(mu, pdf, edges)
    assert p > 1e-3, (chi2, dof)
    # and it is not plain Thomson
    p_thomson = _chi2_pvalue(mu, lambda m: 1 + m * m, edges)[0]
    assert p_thomson < 1e-6


def test_random_stream_uniform_and_reproducible():
    u = _kernels.uniform_stream(3, 1, 7, 100_000)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    assert np.array_equal(_kernels.uniform_stream(3, 1, 7, 10), u[:10])
    # neighbouring histories / batches / seeds give unrelated streams
    first = [_kernels.uniform_stream(3, 1, h, 1)[0] for h in range(2000)]
    assert stats.kstest(first, "uniform").pvalue > 1e-3
    assert _kernels.uniform_stream(3, 2, 7, 1)[0] != u[0]
    assert _kernels.uniform_stream(4, 1, 7, 1)[0] != u[0]
