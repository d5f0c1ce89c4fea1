"""Validation of physics.flow against Hagen–Poiseuille flow in a straight tube.

Truth (Newtonian, fully developed, radius R, length L, flow rate Q):
    ΔP = 8 μ L Q / (π R⁴),   τ_w = 4 μ Q / (π R³),   u_max = 2 Q / (π R²).
Poiseuille flow is an exact solution of both Stokes and Navier–Stokes with a
parabolic inlet and do-nothing outlet, so every model must reproduce it up to
discretisation error. The tube (R = 1 mm, L = 10 mm) is meshed by gmsh in mm
with its axis along (1, 1, 1) so the inlet plane is not aligned with any
coordinate axis.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import dolfinx_solver  # noqa: F401
from mpi4py import MPI

import gmsh

from physics.flow import (
    Blood,
    ConvergenceError,
    FlowError,
    FlowProblem,
    FlowResult,
    load_mesh,
    mesh_from_gmsh_model,
    solve_flow,
)

R_M = 1e-3
L_M = 1e-2
MU = 3.5e-3
RHO = 1060.0
AXIS = (1.0, 1.0, 1.0)
BASE_MM = (0.5, -0.3, 0.2)


def flow_rate_for_re(re: float) -> float:
    """Q (m³/s) giving diameter Reynolds number ``re`` in the exact tube."""
    u_mean = re * MU / (RHO * 2 * R_M)
    return u_mean * math.pi * R_M**2


def poiseuille_dp(q):
    return 8 * MU * L_M * q / (math.pi * R_M**4)


def poiseuille_wss(q):
    return 4 * MU * q / (math.pi * R_M**3)


def build_cylinder(h_mm, order=1, axis=AXIS, radius_mm=1.0, length_mm=10.0):
    """Create (and leave initialised) a gmsh model of a tagged tube in mm.

    Cells FLUID = 1; facets WALL = 1, INLET = 2 (at BASE_MM), OUTLET = 3.
    The caller must call ``gmsh.finalize()``.
    """
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.option.setNumber("General.NumThreads", 1)
    gmsh.model.add("tube")
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a) * length_mm
    base = np.asarray(BASE_MM)
    gmsh.model.occ.addCylinder(*base, *a, radius_mm)
    gmsh.model.occ.synchronize()
    wall, inlet, outlet = [], [], []
    for dim, tag in gmsh.model.getEntities(2):
        com = np.array(gmsh.model.occ.getCenterOfMass(dim, tag))
        if np.linalg.norm(com - base) < 1e-6:
            inlet.append(tag)
        elif np.linalg.norm(com - base - a) < 1e-6:
            outlet.append(tag)
        else:
            wall.append(tag)
    gmsh.model.addPhysicalGroup(3, [e[1] for e in gmsh.model.getEntities(3)], 1)
    gmsh.model.addPhysicalGroup(2, wall, 1)
    gmsh.model.addPhysicalGroup(2, inlet, 2)
    gmsh.model.addPhysicalGroup(2, outlet, 3)
    gmsh.option.setNumber("Mesh.MeshSizeMax", h_mm)
    gmsh.option.setNumber("Mesh.MeshSizeMin", h_mm)
    gmsh.model.mesh.generate(3)
    if order == 2:
        gmsh.model.mesh.setOrder(2)
    return gmsh.model


def tube_mesh(h_mm, order=1, comm=MPI.COMM_WORLD):
    """(mesh in m, cell_tags, facet_tags) of the test tube."""
    model = build_cylinder(h_mm, order) if comm.rank == 0 else None
    try:
        return mesh_from_gmsh_model(model, comm, length_unit_m=1e-3)
    finally:
        if comm.rank == 0:
            gmsh.finalize()


Q_RE100 = flow_rate_for_re(100.0)


@pytest.fixture(scope="module")
def curved():
    """Second-order geometry, h = 0.4 mm: 14k DOFs."""
    return tube_mesh(0.4, order=2)


@pytest.fixture(scope="module")
def stokes_curved(curved):
    mesh, _, ft = curved
    return solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=Q_RE100))


@pytest.fixture(scope="module")
def stokes_straight():
    """Straight-sided tets at two sizes: h = 0.3 mm (32k DOFs) and 0.25 mm (50k DOFs)."""
    out = {}
    for h in (0.3, 0.25):
        mesh, _, ft = tube_mesh(h)
        out[h] = solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=Q_RE100))
    return out


# --------------------------------------------------------------------------- physics
def test_poiseuille_pressure_drop_converges_on_straight_tets(stokes_straight):
    exact = poiseuille_dp(Q_RE100)
    err = {h: r.pressure_drop_Pa / exact - 1 for h, r in stokes_straight.items()}
    # measured: +2.14 % (h 0.3), +1.52 % (h 0.25); error from the faceted wall
    print(f"\nPoiseuille dP, straight tets: {100 * err[0.3]:+.2f} % (h 0.3 mm), {100 * err[0.25]:+.2f} % "
          f"(h 0.25 mm, {stokes_straight[0.25].n_dofs} DOFs; tolerance 2 %)")
    assert abs(err[0.25]) < 0.02
    assert abs(err[0.25]) < abs(err[0.3])
    assert 20_000 < stokes_straight[0.25].n_dofs < 60_000


def test_poiseuille_second_order_geometry(stokes_curved):
    r = stokes_curved
    exact = poiseuille_dp(Q_RE100)
    print(f"\nPoiseuille dP, second-order geometry: {100 * (r.pressure_drop_Pa / exact - 1):+.4f} % "
          "(tolerance 0.2 %)")
    assert abs(r.pressure_drop_Pa / exact - 1) < 0.002  # measured -0.002 %
    assert r.pressure_drops_Pa[3] == pytest.approx(r.pressure_drop_Pa, rel=1e-12)
    # outlet has zero traction: mean pressure ~ 0 compared with the drop
    assert abs(r.pressure_outlets_Pa[3]) < 0.01 * exact
    assert r.ffr_like == pytest.approx((13332.0 - r.pressure_drop_Pa) / 13332.0, rel=1e-12)
    # centreline velocity 2U
    assert r.max_velocity_m_s == pytest.approx(2 * Q_RE100 / (math.pi * R_M**2), rel=0.01)
    assert r.reynolds_inlet == pytest.approx(100.0, rel=0.005)
    assert r.inlet_radius_m == pytest.approx(R_M, rel=1e-3)
    # inlet normal from the mesh is the outward axis, -(1,1,1)/sqrt(3)
    assert np.allclose(r.inlet_normal, -np.ones(3) / math.sqrt(3), atol=1e-6)
    assert np.allclose(r.inlet_centre_m, np.array(BASE_MM) * 1e-3, atol=1e-8)


#: Mass balance |Q_in − ΣQ_out| / Q_in with the direct solver (MUMPS). Taylor–Hood tests
#: the continuity equation with P1 functions, which contain the constant 1, so ∫ div u = 0
#: holds exactly for the discrete solution and the net boundary flux vanishes up to
#: round-off: measured 2e-16 to 1.2e-15 (Stokes, 14k–50k DOFs), 5.5e-15 (Navier–Stokes, Re 100).
MASS_BALANCE_TOL = 1e-12


def test_mass_conservation(stokes_straight, stokes_curved):
    errors = []
    for r in [*stokes_straight.values(), stokes_curved]:
        assert r.inflow_m3_s == pytest.approx(Q_RE100, rel=1e-10)  # inlet rescaled to Q exactly
        assert r.outflow_m3_s[3] == pytest.approx(r.inflow_m3_s, rel=MASS_BALANCE_TOL)
        assert r.mass_balance_rel_error < MASS_BALANCE_TOL
        errors.append(r.mass_balance_rel_error)
        assert abs(r.flow_rates_m3_s[1]) < 1e-12 * Q_RE100  # no flux through the no-slip wall
        assert r.flow_rates_m3_s[2] == pytest.approx(-r.inflow_m3_s)
    print(f"\nmass balance (Stokes, MUMPS): largest relative error {max(errors):.1e} (tolerance {MASS_BALANCE_TOL:g})")


def test_wall_shear_stress(stokes_straight, stokes_curved):
    exact = poiseuille_wss(Q_RE100)
    # measured: +1.42 % (straight, h 0.25), -0.48 % (curved, h 0.4)
    print(f"\nmean WSS vs 4 mu Q / (pi R^3): {100 * (stokes_straight[0.25].wss_mean_Pa / exact - 1):+.2f} % "
          f"(straight, h 0.25), {100 * (stokes_curved.wss_mean_Pa / exact - 1):+.2f} % (curved; tolerance 3 %)")
    assert stokes_straight[0.25].wss_mean_Pa == pytest.approx(exact, rel=0.03)
    assert stokes_curved.wss_mean_Pa == pytest.approx(exact, rel=0.03)
    for r in (stokes_straight[0.25], stokes_curved):
        assert r.wss_mean_Pa <= r.wss_max_Pa < 1.2 * exact


def test_navier_stokes_low_re_equals_stokes(curved, stokes_curved):
    mesh, _, ft = curved
    q = flow_rate_for_re(1.0)
    ns = solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=q, model="navier-stokes"))
    # Stokes is linear in Q: scale the Re=100 Stokes result
    stokes_dp = stokes_curved.pressure_drop_Pa * q / Q_RE100
    assert ns.pressure_drop_Pa == pytest.approx(stokes_dp, rel=0.005)
    assert ns.model == "navier-stokes"
    assert ns.newton_iterations >= 1


def test_navier_stokes_re100_matches_poiseuille(curved):
    mesh, _, ft = curved
    r = solve_flow(mesh, ft, FlowProblem(mean_velocity_m_s=100 * MU / (RHO * 2 * R_M), model="navier-stokes"))
    assert r.pressure_drop_Pa == pytest.approx(poiseuille_dp(Q_RE100), rel=0.01)  # measured -0.07 %
    assert r.mass_balance_rel_error < MASS_BALANCE_TOL
    print(f"\nmass balance (Navier-Stokes, Re 100): relative error {r.mass_balance_rel_error:.1e}")
    assert r.reynolds_inlet == pytest.approx(100.0, rel=0.005)


def test_outlet_pressure_shifts_field(curved, stokes_curved):
    mesh, _, ft = curved
    messages = []
    r = solve_flow(
        mesh, ft, FlowProblem(flow_rate_m3_s=Q_RE100, outlet_pressures_Pa={3: 1000.0}), progress=messages.append
    )
    assert any("Stokes" in m for m in messages)
    # Stokes: a constant outlet traction adds a constant pressure
    assert r.pressure_outlets_Pa[3] == pytest.approx(stokes_curved.pressure_outlets_Pa[3] + 1000.0, rel=1e-6)
    assert r.pressure_drop_Pa == pytest.approx(stokes_curved.pressure_drop_Pa, rel=1e-6)


def test_iterative_matches_direct(curved, stokes_curved):
    mesh, _, ft = curved
    r = solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=Q_RE100, solver="iterative"))
    assert r.pressure_drop_Pa == pytest.approx(stokes_curved.pressure_drop_Pa, rel=1e-6)
    assert r.linear_iterations > 1
    # MINRES stops at its tolerance, so mass balance is no longer round-off: measured 2e-9
    assert r.mass_balance_rel_error < 1e-6


# --------------------------------------------------------------------------- failures
def test_newton_forced_failure_raises(curved):
    mesh, _, ft = curved
    pb = FlowProblem(flow_rate_m3_s=flow_rate_for_re(500.0), model="navier-stokes", newton_max_iterations=1)
    with pytest.raises(ConvergenceError, match="DIVERGED_MAX_IT.*newton_max_iterations"):
        solve_flow(mesh, ft, pb)


def test_linear_failure_raises(curved):
    mesh, _, ft = curved
    pb = FlowProblem(flow_rate_m3_s=Q_RE100, solver="iterative", petsc_options={"ksp_max_it": 3})
    with pytest.raises(ConvergenceError, match="DIVERGED_MAX_IT.*ksp_max_it"):
        solve_flow(mesh, ft, pb)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({}, "flow_rate_m3_s"),
        ({"flow_rate_m3_s": 1e-6, "mean_velocity_m_s": 0.1}, "mean_velocity_m_s"),
        ({"flow_rate_m3_s": -1e-6}, "flow_rate_m3_s"),
        ({"flow_rate_m3_s": float("nan")}, "flow_rate_m3_s"),
        ({"mean_velocity_m_s": 0.0}, "mean_velocity_m_s"),
        ({"flow_rate_m3_s": 1e-6, "model": "euler"}, "model"),
        ({"flow_rate_m3_s": 1e-6, "solver": "cg"}, "solver"),
        ({"flow_rate_m3_s": 1e-6, "solver": "iterative", "model": "navier-stokes"}, "solver"),
        ({"flow_rate_m3_s": 1e-6, "inlet_tag": 0}, "inlet_tag"),
        ({"flow_rate_m3_s": 1e-6, "inlet_tag": 1}, "inlet_tag"),
        ({"flow_rate_m3_s": 1e-6, "wall_tags": ()}, "wall_tags"),
        ({"flow_rate_m3_s": 1e-6, "outlet_tags": (2,)}, "outlet_tags"),
        ({"flow_rate_m3_s": 1e-6, "outlet_tags": (3,), "outlet_pressures_Pa": {4: 0.0}}, "outlet_pressures_Pa"),
        ({"flow_rate_m3_s": 1e-6, "outlet_pressures_Pa": {3: float("inf")}}, "outlet_pressures_Pa"),
        ({"flow_rate_m3_s": 1e-6, "blood": Blood(density_kg_m3=1060.0, viscosity_Pa_s=3.5e-3), "proximal_pressure_Pa": 0}, "proximal_pressure_Pa"),
        ({"flow_rate_m3_s": 1e-6, "newton_rtol": 2.0}, "newton_rtol"),
        ({"flow_rate_m3_s": 1e-6, "newton_max_iterations": 0}, "newton_max_iterations"),
        ({"flow_rate_m3_s": 1e-6, "petsc_options": "lu"}, "petsc_options"),
    ],
)
def test_bad_problem_names_field(kwargs, field):
    with pytest.raises(FlowError, match=field):
        FlowProblem(**kwargs)


def test_bad_blood():
    with pytest.raises(FlowError, match="viscosity_Pa_s"):
        Blood(viscosity_Pa_s=-1.0)
    with pytest.raises(FlowError, match="density_kg_m3"):
        Blood(density_kg_m3=0.0)


def test_tags_missing_from_mesh(curved):
    mesh, _, ft = curved
    with pytest.raises(FlowError, match="inlet_tag=7"):
        solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=1e-6, inlet_tag=7))
    with pytest.raises(FlowError, match=r"outlet_tags \[5\]"):
        solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=1e-6, outlet_tags=(3, 5)))
    with pytest.raises(FlowError, match="FlowProblem"):
        solve_flow(mesh, ft, {"flow_rate_m3_s": 1e-6})


def test_non_planar_inlet_rejected(curved):
    mesh, _, ft = curved
    # treat the curved wall as the inlet: not planar
    with pytest.raises(FlowError, match="not planar"):
        solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=1e-6, inlet_tag=1, wall_tags=(2,)))


def test_problem_round_trip_json():
    pb = FlowProblem(
        mean_velocity_m_s=0.2,
        outlet_tags=(3, 4),
        outlet_pressures_Pa={4: 50.0},
        model="navier-stokes",
        blood=Blood(density_kg_m3=1050.0),
        petsc_options={"snes_linesearch_type": "bt"},
    )
    d = json.loads(json.dumps(pb.to_dict()))
    assert d["outlet_pressures_Pa"] == {"4": 50.0}
    assert FlowProblem.from_dict(d) == pb
    with pytest.raises(FlowError, match="unknown FlowProblem fields"):
        FlowProblem.from_dict({**d, "flow_rate": 1.0})


# --------------------------------------------------------------------------- I/O
def test_load_mesh_matches_model(tmp_path, stokes_curved):
    path = tmp_path / "tube.msh"
    build_cylinder(0.4, order=2)
    try:
        gmsh.write(str(path))
    finally:
        gmsh.finalize()
    mesh, ct, ft = load_mesh(path)
    assert sorted(np.unique(ft.values).tolist()) == [1, 2, 3]
    assert np.unique(ct.values).tolist() == [1]
    r = solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=Q_RE100))
    for tag, area in stokes_curved.areas_m2.items():
        assert r.areas_m2[tag] == pytest.approx(area, rel=1e-12)
    assert r.pressure_drop_Pa == pytest.approx(stokes_curved.pressure_drop_Pa, rel=1e-9)
    # metres in the file: no scaling, areas 1e6 x larger in m^2
    mesh_m, _, ft_m = load_mesh(path, length_unit_m=1.0)
    x = mesh_m.geometry.x
    assert np.ptp(x[:, 0]) == pytest.approx(10 / math.sqrt(3) + 2 * math.sqrt(2 / 3), rel=0.02)


def test_load_mesh_bad_input(tmp_path):
    with pytest.raises(FlowError, match="does not exist"):
        load_mesh(tmp_path / "missing.msh")
    bad = tmp_path / "tube.stl"
    bad.write_text("solid x\nendsolid x\n")
    with pytest.raises(FlowError, match=r"\.msh"):
        load_mesh(bad)
    with pytest.raises(FlowError, match="length_unit_m"):
        load_mesh(bad, length_unit_m=0.0)


def test_write_fields_and_to_dict(tmp_path, stokes_curved):
    paths = stokes_curved.write_fields(tmp_path / "fields")
    assert [p.name for p in paths] == ["velocity.bp", "pressure.bp", "wss.bp"]
    for p in paths:
        assert p.exists() and any(p.iterdir())
    d = json.loads(json.dumps(stokes_curved.to_dict()))
    assert d["pressure_drop_Pa"] == stokes_curved.pressure_drop_Pa
    assert set(d["flow_rates_m3_s"]) == {"1", "2", "3"}
    assert "_fields" not in d
    assert isinstance(stokes_curved, FlowResult)


# --------------------------------------------------------------------------- MPI
_MPI_SCRIPT = """
import json, sys, importlib.util
spec = importlib.util.spec_from_file_location("flowtest", {test_file!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
from mpi4py import MPI
from physics.flow import FlowProblem, solve_flow
from physics.flow import load_mesh
import gmsh
path = sys.argv[1] + ".msh"
if MPI.COMM_WORLD.rank == 0:
    mod.build_cylinder(0.4, order=2)
    gmsh.write(path)
    gmsh.finalize()
MPI.COMM_WORLD.Barrier()
mesh, _, ft = load_mesh(path)  # parallel read, mm -> m
r = solve_flow(mesh, ft, FlowProblem(flow_rate_m3_s=mod.Q_RE100, model=sys.argv[2]))
if MPI.COMM_WORLD.rank == 0:
    d = r.to_dict(); d["size"] = MPI.COMM_WORLD.size
    open(sys.argv[1], "w").write(json.dumps(d))
"""


@pytest.mark.mpi
def test_serial_and_two_ranks_agree(run_under_mpi, stokes_curved):
    d = run_under_mpi(_MPI_SCRIPT, __file__, "stokes")
    assert d["size"] == 2 and d["n_ranks"] == 2
    assert d["n_dofs"] == stokes_curved.n_dofs
    assert d["pressure_drop_Pa"] == pytest.approx(stokes_curved.pressure_drop_Pa, rel=1e-6)
    for tag in (2, 3):
        assert d["flow_rates_m3_s"][str(tag)] == pytest.approx(stokes_curved.flow_rates_m3_s[tag], rel=1e-6)
    assert d["wss_mean_Pa"] == pytest.approx(stokes_curved.wss_mean_Pa, rel=1e-6)
