"""The axisymmetric reference solver for stenosed tubes (``physics.flow.axisymmetric``).

Independent truths: Hagen–Poiseuille (exact for P2–P1 in a straight tube, Stokes and
Navier–Stokes alike); lubrication theory ΔP = ∫ 8μQ/(π r(z)⁴) dz for a long, gentle stenosis
(first correction O((dr/dz)²), here about 0.1 %); the inertial loss of a severe stenosis
between the Borda–Carnot sudden-expansion loss and Young & Tsai's (1973) expansion term; and
the solver's own convergence under uniform refinement (observed order, GCI).
"""

import math

import numpy as np
import pytest

from physics.flow import Blood, FlowError
from physics.flow.axisymmetric import (
    StenosedTube,
    converged_pressure_drop,
    flow_rate_for_reynolds,
    reynolds_inlet,
    solve_axisymmetric,
)

BLOOD = Blood()


@pytest.mark.parametrize("model", ["stokes", "navier-stokes"])
def test_poiseuille_is_exact(model):
    tube = StenosedTube(area_reduction=0.0, z_inlet_mm=-10.0, z_outlet_mm=30.0)
    q = flow_rate_for_reynolds(200.0, 2.0, BLOOD)
    r = solve_axisymmetric(tube, q, BLOOD, model=model, cells_per_radius=6)
    exact = 8 * BLOOD.viscosity_Pa_s * 0.040 * q / (math.pi * (2e-3) ** 4)
    print(f"\n{model}: dP {r['pressure_drop_Pa']:.6f} Pa, Poiseuille {exact:.6f} Pa")
    assert r["pressure_drop_Pa"] == pytest.approx(exact, rel=1e-9)
    assert r["outflow_m3_s"] == pytest.approx(q, rel=1e-9)
    assert r["reynolds_inlet"] == pytest.approx(200.0, rel=1e-12)


def test_long_gentle_stenosis_matches_lubrication_theory():
    tube = StenosedTube(area_reduction=0.5, length_mm=40.0, centre_mm=0.0, z_inlet_mm=-25.0, z_outlet_mm=25.0)
    q = 1e-6
    z = np.linspace(-25.0, 25.0, 200001)
    r = tube.radius(z) * 1e-3
    lubrication = np.trapezoid(8 * BLOOD.viscosity_Pa_s * q / (math.pi * r**4), z * 1e-3)
    s = solve_axisymmetric(tube, q, BLOOD, model="stokes", cells_per_radius=8)
    print(f"\nStokes {s['pressure_drop_Pa']:.4f} Pa, lubrication {lubrication:.4f} Pa "
          f"({100 * (s['pressure_drop_Pa'] / lubrication - 1):+.3f} %)")
    assert s["pressure_drop_Pa"] == pytest.approx(lubrication, rel=5e-3)  # measured +0.12 %


def test_severe_stenosis_inertial_loss_between_borda_carnot_and_young_tsai():
    a, re = 0.9, 100.0
    tube = StenosedTube(area_reduction=a, length_mm=6.0, centre_mm=0.0, z_inlet_mm=-10.0, z_outlet_mm=60.0)
    q = flow_rate_for_reynolds(re, 2.0, BLOOD)
    ns = solve_axisymmetric(tube, q, BLOOD, cells_per_radius=12)
    st = solve_axisymmetric(tube, q, BLOOD, cells_per_radius=12, model="stokes")
    a0 = math.pi * (2e-3) ** 2
    a1 = a0 * (1 - a)
    v, vs = q / a0, q / a1
    borda = 0.5 * BLOOD.density_kg_m3 * (vs - v) ** 2
    young_tsai = 0.76 * BLOOD.density_kg_m3 * (a0 / a1 - 1) ** 2 * v**2
    inertial = ns["pressure_drop_Pa"] - st["pressure_drop_Pa"]
    print(f"\ninertial loss {inertial:.1f} Pa; Borda-Carnot {borda:.1f} Pa; Young-Tsai {young_tsai:.1f} Pa")
    assert borda < inertial < young_tsai  # measured 304 Pa in 293-445 Pa


@pytest.mark.slow
def test_refinement_converges_with_a_small_grid_convergence_index():
    tube = StenosedTube(area_reduction=0.75, length_mm=6.0, centre_mm=0.0, z_inlet_mm=-10.0, z_outlet_mm=30.0)
    q = flow_rate_for_reynolds(300.0, 2.0, BLOOD)
    c = converged_pressure_drop(tube, q, BLOOD, cells_per_radius=(6, 12, 24))
    f = c["pressure_drops_Pa"]
    print(f"\ndP {f} -> {c['extrapolated_Pa']:.2f} Pa, order {c['observed_order']:.2f}, GCI {100 * c['gci']:.3f} %")
    assert abs(f[2] - f[1]) < abs(f[1] - f[0])  # converging
    assert c["observed_order"] > 1.5
    assert c["gci"] < 5e-3
    assert c["extrapolated_Pa"] == pytest.approx(f[2], rel=5e-3)


def test_reynolds_number_round_trip():
    q = flow_rate_for_reynolds(350.0, 1.5, BLOOD)
    assert reynolds_inlet(q, 1.5, BLOOD) == pytest.approx(350.0, rel=1e-12)


@pytest.mark.parametrize("kwargs, word", [
    ({"area_reduction": 0.995}, "area_reduction"),
    ({"radius_mm": -1.0}, "radius_mm"),
    ({"z_inlet_mm": 5.0, "z_outlet_mm": 5.0}, "z_inlet_mm"),
])
def test_bad_tube_is_named(kwargs, word):
    with pytest.raises(FlowError, match=word):
        StenosedTube(**kwargs)


def test_bad_flow_rate_and_model():
    tube = StenosedTube()
    with pytest.raises(FlowError, match="flow_rate"):
        solve_axisymmetric(tube, -1e-6)
    with pytest.raises(FlowError, match="model"):
        solve_axisymmetric(tube, 1e-6, model="euler")
    with pytest.raises(FlowError, match="three increasing"):
        converged_pressure_drop(tube, 1e-6, cells_per_radius=(8, 8, 16))
