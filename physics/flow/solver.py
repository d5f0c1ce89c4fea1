"""Steady Stokes / Navier–Stokes blood flow in a tagged vessel mesh (FEniCSx).

Equations (SI units, velocity u in m/s, pressure p in Pa), on the fluid domain Ω:

    ρ (u·∇)u − μ Δu + ∇p = 0,    ∇·u = 0          (Navier–Stokes)
           − μ Δu + ∇p = 0,    ∇·u = 0          (Stokes, ρ term dropped)

Boundary conditions:

* wall (tags ``wall_tags``): no slip, u = 0;
* inlet: u = 2U (1 − (r/R)²) (−n), a Poiseuille profile on the planar inlet whose
  centre, area A, outward normal n and R = sqrt(A/π) are assembled from the
  mesh; negative values are clipped and the profile is rescaled so the
  assembled flux ∫u·n ds equals −Q exactly;
* outlets: μ ∂u/∂n − p n = −p_out n (do-nothing when p_out = 0), which enters
  the weak form as the Neumann term ∫ p_out n·v ds;
* outlets with a prescribed flow split (``outlet_flow_fractions``, f_i summing
  to 1): every outlet but one gets the inlet's construction turned outward,
  u = 2U_i (1 − (r/R_i)²) n_i rescaled to ∫u·n ds = f_i Q exactly, and must be
  planar; the outlet with the largest area (ties, areas equal within 1e-9
  relative: lowest tag) keeps zero traction. Without such an outlet the
  velocity would be Dirichlet everywhere and the pressure fixed only up to a
  constant; the largest is chosen because that is where the section, and
  usually the flow, is largest, so its do-nothing condition disturbs the least
  and it need not be planar. Its flow, Q − Σ f_i Q = f_free Q, follows from
  mass conservation, which Taylor–Hood satisfies to round-off (the P1 pressure
  test functions contain q = 1, so ∫ ∇·u dx = 0).

Weak form with Taylor–Hood P2–P1 elements (Brezzi & Fortin, *Mixed and Hybrid
Finite Element Methods*, 1991; Elman, Silvester & Wathen, *Finite Elements and
Fast Iterative Solvers*, 2nd ed. 2014, ch. 3 and 8): find (u, p) with

    ∫ ρ (∇u u)·v + μ ∇u:∇v − p ∇·v − q ∇·u dx + Σ_out ∫ p_out n·v ds = 0.

Stokes is one linear solve (MUMPS LU, or MINRES preconditioned by
diag(GAMG(A_uu), M_p/μ), Elman et al. ch. 4); Navier–Stokes is solved by
Newton's method (PETSc SNES) started from the Stokes solution.

Outputs: boundary means ∫p ds/∫ds; wall shear stress τ_t = τ − (τ·n)n with
τ = μ(∇u + ∇uᵀ)n, its area mean over the wall and a lumped L² projection onto
P1 (w_i = ∫τ_t φ_i ds / ∫φ_i ds) whose maximum is reported. The checks in
``tests/physics/test_flow.py`` compare against Hagen–Poiseuille,
ΔP = 8μLQ/(πR⁴) and τ_w = 4μQ/(πR³).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import dolfinx_solver  # noqa: F401  (orders MPI ahead of the dolfinx bindings)
from mpi4py import MPI
from petsc4py import PETSc

import basix.ufl
import dolfinx.fem.petsc
import ufl
from dolfinx import fem

from .outputs import FlowResult
from .problem import FIRST_OUTLET, ConvergenceError, FlowError, FlowProblem

__all__ = ["solve_flow", "default_petsc_options"]

_PLANARITY_TOL = 1e-3
#: Outlet areas within this relative difference count as equal when the traction-free outlet of a
#: flow split is chosen (mirror-image outlets differ by round-off), so the lowest tag wins.
_AREA_TIE_RTOL = 1e-9


def default_petsc_options(problem: FlowProblem) -> dict:
    """PETSc options (without prefix) used for ``problem``, before ``problem.petsc_options``.

    Parameters
    ----------
    problem : FlowProblem
        The flow problem (its ``model`` and ``solver`` pick the options).

    Returns
    -------
    dict
        Flat PETSc option dict.
    """
    if problem.solver == "iterative":
        opts = {
            "ksp_type": "minres",
            "ksp_rtol": 1e-10,
            "ksp_max_it": 2000,
            "pc_type": "fieldsplit",
            "pc_fieldsplit_type": "additive",
            "fieldsplit_u_0_ksp_type": "preonly",
            "fieldsplit_u_0_pc_type": "gamg",
            "fieldsplit_p_1_ksp_type": "preonly",
            "fieldsplit_p_1_pc_type": "jacobi",
        }
    else:
        opts = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
    if problem.model == "navier-stokes":
        opts.update(
            {
                "snes_type": "newtonls",
                "snes_linesearch_type": "none",
                "snes_rtol": problem.newton_rtol,
                "snes_atol": 1e-14,  # SI residual (N); roundoff floor ~1e-19 on vessel meshes
                "snes_stol": 0.0,
                "snes_max_it": problem.newton_max_iterations,
            }
        )
        if problem.solver == "direct":
            # inexact Newton: factorise the Jacobian once (first step), then solve later steps
            # with GMRES preconditioned by that LU (measured: 77 s -> 59 s at 204k DOFs, same dP
            # to 1e-6; the later Jacobians differ little from the first)
            opts.update({"ksp_type": "gmres", "ksp_gmres_restart": 100, "ksp_rtol": 1e-12,
                         "ksp_atol": 1e-30, "ksp_max_it": 300, "snes_lag_preconditioner": -2})
    return opts


def _reason_name(enum_cls, code: int) -> str:
    for k in dir(enum_cls):
        if not k.startswith("_") and getattr(enum_cls, k) == code:
            return k
    return str(code)


class _BoundaryIntegrals:
    """Assemble ∫ f_i ds(t_j) for many integrands and tags with one compiled form.

    The form Σ_ij W_ij f_i ds(t_j) is compiled once; each entry is obtained by
    setting the weight constant W to a unit matrix entry and assembling.
    """

    def __init__(self, msh, ds, integrands, tags):
        self.comm = msh.comm
        self.shape = (len(integrands), len(tags))
        self.W = fem.Constant(msh, np.zeros(self.shape, dtype=PETSc.ScalarType))
        expr = sum(self.W[i, j] * f * ds(t) for i, f in enumerate(integrands) for j, t in enumerate(tags))
        self.form = fem.form(expr)

    def values(self) -> np.ndarray:
        out = np.zeros(self.shape)
        for i in range(self.shape[0]):
            for j in range(self.shape[1]):
                self.W.value[:] = 0.0
                self.W.value[i, j] = 1.0
                out[i, j] = fem.assemble_scalar(self.form)
        self.W.value[:] = 0.0
        return self.comm.allreduce(out, op=MPI.SUM)


def _present_tags(facet_tags, comm) -> list[int]:
    local = np.unique(facet_tags.values).astype(int).tolist()
    return sorted({t for part in comm.allgather(local) for t in part})


def _resolve_tags(problem: FlowProblem, present: list[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Inlet, wall and outlet tags of ``problem`` checked against the tags ``present`` in the mesh."""
    if problem.inlet_tag not in present:
        raise FlowError(f"inlet_tag={problem.inlet_tag} is not in the mesh facet tags {present}")
    missing = [t for t in problem.wall_tags if t not in present]
    if missing:
        raise FlowError(f"wall_tags {missing} are not in the mesh facet tags {present}")
    if problem.outlet_tags is None:
        outlets = tuple(t for t in present if t >= FIRST_OUTLET and t not in problem.wall_tags and t != problem.inlet_tag)
        if not outlets:
            raise FlowError(f"no outlet tags (>= {FIRST_OUTLET}) in the mesh facet tags {present}")
    else:
        outlets = problem.outlet_tags
        missing = [t for t in outlets if t not in present]
        if missing:
            raise FlowError(f"outlet_tags {missing} are not in the mesh facet tags {present}")
    pressures = problem.outlet_pressures_Pa or {}
    bad = [t for t in pressures if t not in outlets]
    if bad:
        raise FlowError(f"outlet_pressures_Pa has tags {bad} that are not outlets {list(outlets)}")
    if problem.outlet_flow_fractions is not None:
        missing = sorted(set(outlets) - set(problem.outlet_flow_fractions))
        extra = sorted(set(problem.outlet_flow_fractions) - set(outlets))
        if missing or extra:
            raise FlowError(
                f"outlet_flow_fractions must give exactly the outlets solved, {sorted(outlets)}: "
                f"missing tags {missing}, extra tags {extra} (mesh facet tags {present})"
            )
    return problem.inlet_tag, tuple(problem.wall_tags), tuple(outlets)


def solve_flow(mesh, facet_tags, problem: FlowProblem, *, progress: Callable[[str], None] | None = None) -> FlowResult:
    """Solve steady Stokes or Navier–Stokes flow and return boundary-averaged results.

    Parameters
    ----------
    mesh : dolfinx.mesh.Mesh
        Tetrahedral fluid mesh with coordinates in metres (see :func:`physics.flow.load_mesh`).
    facet_tags : dolfinx.mesh.MeshTags
        Facet tags: wall, inlet and outlets as named in ``problem``.
    problem : FlowProblem
        Boundary conditions, model and solver settings.
    progress : callable(str), optional
        Called with short progress messages.

    Returns
    -------
    FlowResult
        Pressures (Pa), flow rates (m³/s), WSS (Pa) and the fields, identical on every rank.

    Raises
    ------
    FlowError
        If the problem or the tags are invalid or the inlet is not planar.
    ConvergenceError
        If the linear or Newton solve fails or gives NaN.
    """
    _check_solve_inputs(mesh, facet_tags, problem)
    say = progress if progress is not None else (lambda msg: None)
    t_start = time.perf_counter()
    comm = mesh.comm
    present = _present_tags(facet_tags, comm)
    inlet, walls, outlets = _resolve_tags(problem, present)
    mu_val = problem.blood.viscosity_Pa_s
    rho_val = problem.blood.density_kg_m3

    disc = _discretise(mesh, facet_tags)
    say(f"flow: {problem.model}, {disc.n_cells} cells, {disc.n_dofs} dofs, {comm.size} rank(s)")
    geo, split = _inlet_and_split(mesh, disc, inlet, outlets, problem)
    if split is not None:
        say(f"flow: outlet flow split {split.fractions}; outlet {split.free_tag} traction-free")
    bcs = _dirichlet_bcs(mesh, facet_tags, disc, inlet, walls, geo, split)
    forms = _stokes_forms(mesh, disc, problem, mu_val, rho_val)
    opts = default_petsc_options(problem)
    opts.update(problem.petsc_options or {})
    reynolds = rho_val * geo.mean_velocity_m_s * 2 * geo.radius_m / mu_val

    say("flow: Stokes solve")
    t0 = time.perf_counter()
    linear_its = _solve_stokes(forms, bcs, disc.V, problem, _stokes_petsc_options(problem, opts))
    _check_finite(comm, forms.uh, forms.ph, "Stokes")
    newton_its = 0
    if problem.model == "navier-stokes":
        newton_its = _solve_navier_stokes(forms, disc.dx, bcs, problem, opts, rho_val, reynolds, comm, say)
    solve_time = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)

    say("flow: post-processing")
    bnd = _boundary_results(mesh, disc, forms.uh, forms.ph, present, inlet, outlets)
    wss_mean, wss_max, wss = _wall_shear_stress(mesh, disc, forms, walls, bnd.areas_m2)
    umax = _max_speed(disc.V, forms.uh, comm)

    total = comm.allreduce(time.perf_counter() - t_start, op=MPI.MAX)
    say(f"flow: dP = {bnd.dp_Pa:.4g} Pa, Q = {bnd.inflow_m3_s:.4g} m3/s, {solve_time:.2f} s solve")
    return FlowResult(
        pressure_inlet_Pa=bnd.p_in_Pa,
        pressure_outlets_Pa=bnd.p_outlets_Pa,
        pressure_drop_Pa=float(bnd.dp_Pa),
        pressure_drops_Pa={t: bnd.p_in_Pa - bnd.p_outlets_Pa[t] for t in outlets},
        flow_rates_m3_s=bnd.fluxes_m3_s,
        inflow_m3_s=float(bnd.inflow_m3_s),
        outflow_m3_s=bnd.outflow_m3_s,
        mass_balance_rel_error=float(bnd.mass_err),
        max_velocity_m_s=umax,
        wss_mean_Pa=float(wss_mean),
        wss_max_Pa=wss_max,
        ffr_like=float((problem.proximal_pressure_Pa - bnd.dp_Pa) / problem.proximal_pressure_Pa),
        reynolds_inlet=float(reynolds),
        n_dofs=int(disc.n_dofs),
        n_cells=int(disc.n_cells),
        newton_iterations=int(newton_its),
        solve_time_s=float(solve_time),
        model=problem.model,
        solver=problem.solver,
        linear_iterations=int(linear_its),
        total_time_s=float(total),
        inlet_area_m2=float(geo.area_m2),
        inlet_radius_m=float(geo.radius_m),
        inlet_centre_m=tuple(float(c) for c in geo.centre_m),
        inlet_normal=tuple(float(c) for c in geo.normal),
        areas_m2={t: float(a_) for t, a_ in bnd.areas_m2.items()},
        mean_inlet_velocity_m_s=float(geo.mean_velocity_m_s),
        n_ranks=comm.size,
        outlet_flow_fractions_imposed=None if split is None else dict(split.fractions),
        traction_free_outlet_tag=None if split is None else int(split.free_tag),
        _fields={"velocity": forms.uh, "pressure": forms.ph, "wss": wss},
    )


# ----------------------------------------------------------------------------- stages of solve_flow
@dataclass
class _Discretisation:
    """Taylor–Hood P2–P1 spaces of a mesh, its measures and symbols, and the problem size."""

    V: Any  # velocity space, P2 vector (m/s)
    Qs: Any  # pressure space, P1 (Pa)
    ds: Any  # boundary measure with the facet tags
    dx: Any
    x: Any  # spatial coordinate (m)
    n: Any  # outward facet normal
    one: Any  # the constant 1
    n_dofs: int
    n_cells: int


@dataclass
class _Cap:
    """A boundary cap (inlet or outlet) assembled from the mesh (SI units)."""

    tag: int
    area_m2: float
    centre_m: np.ndarray
    normal: np.ndarray  # outward unit normal, ∫n ds / |∫n ds|
    radius_m: float  # sqrt(area / pi)
    planarity: float  # |∫n ds| / area: 1 for a plane


@dataclass
class _Inlet:
    """Planar inlet assembled from the mesh, and the imposed flow (SI units)."""

    area_m2: float
    centre_m: np.ndarray
    normal: np.ndarray  # outward unit normal
    radius_m: float  # sqrt(area / pi)
    flow_rate_m3_s: float
    mean_velocity_m_s: float


@dataclass
class _FlowSplit:
    """Prescribed outlet flow split: fractions, the profiled outlets' caps and flows, the free outlet."""

    fractions: dict  # tag -> fraction of the inflow, divided by their sum
    profiled: dict  # tag -> _Cap of the outlets with a Dirichlet Poiseuille profile
    flow_rates_m3_s: dict  # tag -> imposed outward flow (m^3/s) of the profiled outlets
    free_tag: int  # the zero-traction outlet (largest area; ties within _AREA_TIE_RTOL: lowest tag)


@dataclass
class _Forms:
    """Unknowns, test functions, material constants and the Stokes block forms."""

    uh: Any  # velocity (m/s)
    ph: Any  # pressure (Pa)
    v: Any
    q: Any
    mu: Any  # viscosity constant (Pa s)
    rho: Any  # density constant (kg/m^3), varied by the continuation
    neumann: Any  # outlet pressure term, sum of p_out n.v ds
    a: list
    L: list
    P: list | None  # block preconditioner (iterative solver only)
    kind: str  # "mpi" or "nest"


@dataclass
class _BoundaryResults:
    """Boundary areas, mean pressures and fluxes of a solution (SI units)."""

    areas_m2: dict
    p_in_Pa: float
    p_outlets_Pa: dict
    dp_Pa: float  # inlet minus area-weighted outlet pressure
    fluxes_m3_s: dict  # outward flux per tag
    inflow_m3_s: float
    outflow_m3_s: dict
    mass_err: float  # relative mass imbalance


def _check_solve_inputs(mesh, facet_tags, problem) -> None:
    """Validate the arguments of ``solve_flow``."""
    if not isinstance(problem, FlowProblem):
        raise FlowError(f"problem must be a FlowProblem, got {type(problem).__name__}")
    if mesh.topology.dim != 3 or mesh.geometry.dim != 3:
        raise FlowError(f"mesh must be a 3-D volume mesh, got tdim={mesh.topology.dim}, gdim={mesh.geometry.dim}")
    if facet_tags is None or facet_tags.dim != 2:
        raise FlowError("facet_tags must be the mesh's facet MeshTags (dimension 2)")


def _discretise(mesh, facet_tags) -> _Discretisation:
    """Taylor–Hood spaces (P2 velocity, P1 pressure) and the measures on a mesh in metres."""
    cell = mesh.basix_cell()
    V = fem.functionspace(mesh, basix.ufl.element("Lagrange", cell, 2, shape=(3,)))
    Qs = fem.functionspace(mesh, basix.ufl.element("Lagrange", cell, 1))
    n_dofs = V.dofmap.index_map.size_global * V.dofmap.index_map_bs + Qs.dofmap.index_map.size_global
    n_cells = mesh.topology.index_map(3).size_global
    return _Discretisation(
        V=V, Qs=Qs,
        ds=ufl.Measure("ds", domain=mesh, subdomain_data=facet_tags),
        dx=ufl.Measure("dx", domain=mesh),
        x=ufl.SpatialCoordinate(mesh),
        n=ufl.FacetNormal(mesh),
        one=fem.Constant(mesh, PETSc.ScalarType(1.0)),
        n_dofs=n_dofs, n_cells=n_cells,
    )


def _cap_geometry(mesh, disc: _Discretisation, tags: list[int], roles: dict[int, str]) -> dict[int, _Cap]:
    """Area (m²), centre (m), outward normal, radius sqrt(A/π) (m) and planarity of boundary caps.

    All from the boundary integrals ∫ds, ∫x ds and ∫n ds of each tag (one compiled form);
    ``roles`` names each tag ("inlet", "outlet") in error messages.
    """
    x, n = disc.x, disc.n
    geo = _BoundaryIntegrals(mesh, disc.ds, [disc.one, x[0], x[1], x[2], n[0], n[1], n[2]], tags).values()
    caps = {}
    for j, tag in enumerate(tags):
        area = geo[0, j]
        if not area > 0:
            raise FlowError(f"{roles[tag]} (tag {tag}) has zero area")
        nsum = geo[4:7, j]
        caps[tag] = _Cap(tag=tag, area_m2=area, centre_m=geo[1:4, j] / area, normal=nsum / np.linalg.norm(nsum),
                         radius_m=math.sqrt(area / math.pi), planarity=np.linalg.norm(nsum) / area)
    return caps


def _require_planar(cap: _Cap, role: str) -> None:
    """Raise FlowError unless |∫n ds|/A >= 1 − tolerance (a Poiseuille profile needs a planar cap)."""
    if cap.planarity < 1 - _PLANARITY_TOL:
        raise FlowError(
            f"{role} (tag {cap.tag}) is not planar: |∫n ds|/A = {cap.planarity:.4f} (needs >= "
            f"{1 - _PLANARITY_TOL}); cut the vessel with a plane before meshing"
        )


def _inlet_and_split(mesh, disc: _Discretisation, inlet: int, outlets: tuple[int, ...],
                     problem: FlowProblem) -> tuple[_Inlet, _FlowSplit | None]:
    """The planar inlet and the flow (m³/s, m/s); with ``outlet_flow_fractions``, the outlet flow split.

    The fractions are divided by their sum; every outlet but the largest (ties, areas within
    ``_AREA_TIE_RTOL``: lowest tag) is checked planar and gets the outward flow fraction × Q.
    """
    fractions = problem.outlet_flow_fractions
    tags = [inlet] if fractions is None else [inlet, *outlets]
    roles = {t: ("inlet" if t == inlet else "outlet") for t in tags}
    caps = _cap_geometry(mesh, disc, tags, roles)
    cap = caps[inlet]
    _require_planar(cap, "inlet")
    area = cap.area_m2
    if problem.flow_rate_m3_s is not None:
        Q = problem.flow_rate_m3_s
    else:
        Q = problem.mean_velocity_m_s * area
    geo = _Inlet(area_m2=area, centre_m=cap.centre_m, normal=cap.normal, radius_m=cap.radius_m, flow_rate_m3_s=Q,
                 mean_velocity_m_s=Q / area)
    if fractions is None:
        return geo, None
    total = math.fsum(fractions[t] for t in outlets)
    split = {t: fractions[t] / total for t in outlets}
    largest = max(caps[t].area_m2 for t in outlets)
    free = min(t for t in outlets if caps[t].area_m2 >= largest * (1 - _AREA_TIE_RTOL))
    profiled = {t: caps[t] for t in outlets if t != free}
    for c in profiled.values():
        _require_planar(c, "outlet")
    return geo, _FlowSplit(fractions=split, profiled=profiled,
                           flow_rates_m3_s={t: split[t] * Q for t in profiled}, free_tag=free)


def _poiseuille_bc(mesh, disc: _Discretisation, facet_tags, tag: int, cap, flux_out: float,
                   wall_dofs: np.ndarray, role: str):
    """Dirichlet BC on the planar cap ``tag``: u = 2U (1 − (r/R)²) sign(flux_out) n (m/s) with U = |flux_out|/A,
    centre, outward normal n, area A and R from ``cap`` (an _Inlet or _Cap), zero on the wall dofs of its rim,
    rescaled so that the assembled outward flux ∫u·n ds equals ``flux_out`` (m³/s) exactly."""
    V, n = disc.V, disc.n
    dofs = fem.locate_dofs_topological(V, 2, facet_tags.find(tag))
    centre, normal, radius = cap.centre_m, cap.normal, cap.radius_m
    sign = -1.0 if flux_out < 0 else 1.0
    U = abs(flux_out) / cap.area_m2

    def profile(xp):
        d = xp - centre[:, None]
        axial = normal @ d
        r2 = np.maximum(np.einsum("ij,ij->j", d, d) - axial**2, 0.0)
        s = np.clip(1.0 - r2 / radius**2, 0.0, None)
        return sign * normal[:, None] * (2.0 * U * s)[None, :]

    u_bc = fem.Function(V)
    u_bc.interpolate(profile)
    u_bc.x.array.reshape(-1, 3)[wall_dofs] = 0.0  # the rim belongs to the no-slip wall
    u_bc.x.scatter_forward()
    flux = mesh.comm.allreduce(fem.assemble_scalar(fem.form(ufl.dot(u_bc, n) * disc.ds(tag))), op=MPI.SUM)
    if not sign * flux > 0:
        way = "inward" if sign < 0 else "outward"
        raise FlowError(f"{role} profile has no {way} flux (flux {flux!r}); is the {role} mesh degenerate?")
    u_bc.x.array[:] *= flux_out / flux
    return fem.dirichletbc(u_bc, dofs)


def _dirichlet_bcs(mesh, facet_tags, disc: _Discretisation, inlet: int, walls: tuple[int, ...],
                   geo: _Inlet, split: _FlowSplit | None) -> list:
    """No slip on the walls; on the inlet, and on the profiled outlets of a flow split, Poiseuille
    profiles (m/s) rescaled to the exact flow rates."""
    fdim = 2
    mesh.topology.create_connectivity(fdim, 3)
    wall_facets = np.concatenate([facet_tags.find(t) for t in walls]).astype(np.int32)
    wall_dofs = fem.locate_dofs_topological(disc.V, fdim, wall_facets)
    bcs = [_poiseuille_bc(mesh, disc, facet_tags, inlet, geo, -geo.flow_rate_m3_s, wall_dofs, "inlet")]
    if split is not None:
        for t, cap in split.profiled.items():
            bcs.append(_poiseuille_bc(mesh, disc, facet_tags, t, cap, split.flow_rates_m3_s[t], wall_dofs,
                                      f"outlet (tag {t})"))
    return [*bcs, fem.dirichletbc(fem.Function(disc.V), wall_dofs)]


def _stokes_forms(mesh, disc: _Discretisation, problem: FlowProblem, mu_val: float, rho_val: float) -> _Forms:
    """Unknowns, constants (Pa s, kg/m³, outlet Pa) and the Stokes block forms (and preconditioner)."""
    V, Qs, dx, n, ds = disc.V, disc.Qs, disc.dx, disc.n, disc.ds
    mu = fem.Constant(mesh, PETSc.ScalarType(mu_val))
    rho = fem.Constant(mesh, PETSc.ScalarType(rho_val))
    u, p = ufl.TrialFunction(V), ufl.TrialFunction(Qs)
    v, q = ufl.TestFunction(V), ufl.TestFunction(Qs)
    pressures = problem.outlet_pressures_Pa or {}
    p_out = {t: fem.Constant(mesh, PETSc.ScalarType(val)) for t, val in pressures.items()}
    neumann = sum((p_out[t] * ufl.dot(n, v) * ds(t) for t in p_out), ufl.inner(fem.Constant(mesh, np.zeros(3)), v) * dx)

    uh = fem.Function(V, name="u")
    ph = fem.Function(Qs, name="p")
    a = [
        [mu * ufl.inner(ufl.grad(u), ufl.grad(v)) * dx, -p * ufl.div(v) * dx],
        [-q * ufl.div(u) * dx, None],
    ]
    L = [-neumann, fem.Constant(mesh, PETSc.ScalarType(0.0)) * q * dx]
    kind = "mpi"
    P = None
    if problem.solver == "iterative":
        kind = "nest"
        P = [[a[0][0], None], [None, (1.0 / mu) * p * q * dx]]
    return _Forms(uh=uh, ph=ph, v=v, q=q, mu=mu, rho=rho, neumann=neumann, a=a, L=L, P=P, kind=kind)


def _stokes_petsc_options(problem: FlowProblem, opts: dict) -> dict:
    """The linear-solver part of ``opts``; with the direct solver, one LU solve unless the user chose a KSP."""
    lin_opts = {k: v_ for k, v_ in opts.items() if not k.startswith("snes_")}
    if problem.solver == "direct" and "ksp_type" not in (problem.petsc_options or {}):
        lin_opts["ksp_type"] = "preonly"  # the Stokes solve is one LU solve
        for k in ("ksp_gmres_restart", "ksp_rtol", "ksp_atol", "ksp_max_it"):
            if k not in (problem.petsc_options or {}):
                lin_opts.pop(k, None)
    return lin_opts


def _solve_stokes(forms: _Forms, bcs: list, V, problem: FlowProblem, lin_opts: dict) -> int:
    """Solve the Stokes system into ``forms.uh`` (m/s) and ``forms.ph`` (Pa); returns the KSP iterations."""
    try:
        stokes = dolfinx.fem.petsc.LinearProblem(
            forms.a, forms.L, u=[forms.uh, forms.ph], bcs=bcs, P=forms.P, kind=forms.kind, petsc_options=lin_opts,
            petsc_options_prefix="digipat_flow_stokes_",
        )
        if problem.solver == "iterative":
            _set_near_nullspace(stokes.P_mat.getNestSubMatrix(0, 0), V)
        stokes.solve()
    except PETSc.Error as exc:
        raise ConvergenceError(
            f"Stokes linear solve failed in PETSc ({exc}); try solver='direct' or check the mesh"
        ) from exc
    ksp = stokes.solver
    reason = ksp.getConvergedReason()
    linear_its = ksp.getIterationNumber()
    del stokes
    if reason < 0:
        raise ConvergenceError(
            f"Stokes linear solve diverged: KSP reason {_reason_name(PETSc.KSP.ConvergedReason, reason)} "
            f"after {linear_its} iterations; try solver='direct', or raise ksp_max_it in petsc_options"
        )
    return linear_its


def _solve_navier_stokes(forms: _Forms, dx, bcs: list, problem: FlowProblem, opts: dict, rho_val: float,
                         reynolds: float, comm, say: Callable[[str], None]) -> int:
    """Newton from the Stokes solution in ``forms.uh``, ``forms.ph``, with continuation in the density
    (kg/m³) if that fails; returns the Newton iterations."""
    say(f"flow: Newton (Navier-Stokes), Re = {reynolds:.3g}")
    uh, ph, v, q = forms.uh, forms.ph, forms.v, forms.q
    F = [
        forms.rho * ufl.inner(ufl.grad(uh) * uh, v) * dx
        + forms.mu * ufl.inner(ufl.grad(uh), ufl.grad(v)) * dx
        - ph * ufl.div(v) * dx
        + forms.neumann,
        -q * ufl.div(uh) * dx,
    ]
    u0, p0 = uh.x.array.copy(), ph.x.array.copy()  # the Stokes solution: Newton's initial guess
    reason, newton_its, fnorm = _newton(F, uh, ph, bcs, opts, "digipat_flow_ns_")
    first = (reason, newton_its, fnorm)  # reported if the continuation fails too
    continuation = None
    if reason <= 0 or not math.isfinite(fnorm) or not _all_finite(comm, uh, ph):
        say(f"flow: Newton from the Stokes solution failed ({_reason_name(PETSc.SNES.ConvergedReason, reason)}); "
            "full Newton with line search, then continuation in the Reynolds number if needed")
        uh.x.array[:], ph.x.array[:] = u0, p0
        # full Newton (a fresh LU per step) with a backtracking line search, at the full Reynolds
        # number: converges where the lagged LU no longer preconditions (a severe stenosis' jet)
        reason, its, fnorm = _newton(F, uh, ph, bcs, {**_full_newton_options(problem, opts),
                                                      "snes_max_it": min(_FULL_NEWTON_MAX_IT, problem.newton_max_iterations)},
                                 "digipat_flow_nsf_")
        newton_its += its
        if reason > 0 and math.isfinite(fnorm) and _all_finite(comm, uh, ph):
            continuation = []
            say(f"flow: full Newton with line search converged ({newton_its} Newton iterations in all)")
        else:
            uh.x.array[:], ph.x.array[:] = u0, p0
            reason, its, fnorm, frac, continuation = _density_continuation(
                F, uh, ph, forms.rho, bcs, problem, opts, rho_val, comm, u0, p0)
            newton_its += its
    if reason <= 0 or not math.isfinite(fnorm):
        raise ConvergenceError(
            f"Newton (SNES) did not converge: reason {_reason_name(PETSc.SNES.ConvergedReason, first[0])} "
            f"after {first[1]} iterations, residual norm {first[2]:.3e}"
            + (f"; nor with continuation in the Reynolds number (it reached {100 * frac:.0f} % of it, "
               f"{newton_its} Newton iterations in all)" if continuation is not None else "")
            + f". Try a lower Reynolds number (here {reynolds:.3g}), a finer mesh, "
            f"more newton_max_iterations (now {problem.newton_max_iterations}), or model='stokes'"
        )
    if continuation:
        say(f"flow: continuation converged through density fractions {continuation}")
    _check_finite(comm, uh, ph, "Navier-Stokes")
    return newton_its


def _newton(F: list, uh, ph, bcs: list, options: dict, prefix: str) -> tuple[int, int, float]:
    """One Newton (PETSc SNES) solve of F = 0 from the current uh, ph; returns (reason, iterations, residual norm)."""
    try:
        ns = dolfinx.fem.petsc.NonlinearProblem(
            F, [uh, ph], bcs=bcs, kind="mpi", petsc_options=options, petsc_options_prefix=prefix,
        )
        ns.solve()
    except PETSc.Error as exc:
        raise ConvergenceError(
            f"Newton solve failed in PETSc ({exc}); try a lower Reynolds number, "
            "model='stokes', or more newton_max_iterations"
        ) from exc
    snes = ns.solver
    out = (snes.getConvergedReason(), snes.getIterationNumber(), snes.getFunctionNorm())
    del ns
    return out


#: Newton steps of the full-Newton attempt at the full Reynolds number (before continuation).
_FULL_NEWTON_MAX_IT = 12


def _full_newton_options(problem: FlowProblem, opts: dict) -> dict:
    """Newton with a fresh Jacobian (and, with the direct solver, a fresh LU) every step and a
    backtracking line search."""
    copts = {**opts, "snes_lag_preconditioner": 1, "snes_linesearch_type": "bt"}
    if problem.solver == "direct" and "ksp_type" not in (problem.petsc_options or {}):
        copts.update(ksp_type="preonly")
        for k in ("ksp_gmres_restart", "ksp_rtol", "ksp_atol", "ksp_max_it"):
            copts.pop(k, None)
    return copts


def _density_continuation(F: list, uh, ph, rho, bcs: list, problem: FlowProblem, opts: dict, rho_val: float,
                          comm, u0: np.ndarray, p0: np.ndarray) -> tuple[int, int, float, float, list[float]]:
    """Natural-parameter continuation in the density up to ``rho_val`` (kg/m³, the Reynolds number at fixed
    flow): full Newton with a fresh LU per step, each step starting from the previous solution.

    Returns (last SNES reason, -1 if the full density was not reached; Newton iterations; last residual
    norm; density fraction reached; fractions passed).
    """
    copts = _full_newton_options(problem, opts)
    continuation: list[float] = []
    last_u, last_p = u0, p0
    frac, step, tries = 0.0, 0.25, 0
    newton_its, reason, fnorm = 0, -1, math.nan
    while frac < 1.0 and step >= 1.0 / 32 and tries < 12:  # bounded effort
        tries += 1
        trial = min(1.0, frac + step)
        rho.value = rho_val * trial
        reason, its, fnorm = _newton(F, uh, ph, bcs, copts, "digipat_flow_nsc_")
        newton_its += its
        if reason > 0 and math.isfinite(fnorm) and _all_finite(comm, uh, ph):
            frac = trial
            last_u, last_p = uh.x.array.copy(), ph.x.array.copy()
            continuation.append(round(trial, 6))
            step = min(2 * step, 0.5)
        else:
            uh.x.array[:], ph.x.array[:] = last_u, last_p
            step /= 2
    rho.value = rho_val
    if frac < 1.0:
        reason = -1
    return reason, newton_its, fnorm, frac, continuation


def _boundary_results(mesh, disc: _Discretisation, uh, ph, tags: list[int], inlet: int,
                      outlets: tuple[int, ...]) -> _BoundaryResults:
    """Areas (m²), mean pressures (Pa) and fluxes (m³/s) on every tagged boundary, and the mass balance."""
    sums = _BoundaryIntegrals(mesh, disc.ds, [disc.one, ph, ufl.dot(uh, disc.n)], tags).values()
    areas = dict(zip(tags, sums[0]))
    p_mean = {t: sums[1][j] / sums[0][j] for j, t in enumerate(tags)}
    fluxes = {t: float(sums[2][j]) for j, t in enumerate(tags)}
    j_out = [tags.index(t) for t in outlets]
    p_in = float(p_mean[inlet])
    p_outlets = {t: float(p_mean[t]) for t in outlets}
    p_out_weighted = float(sums[1][j_out].sum() / sums[0][j_out].sum())
    dp = p_in - p_out_weighted
    inflow = -fluxes[inlet]
    outflow = {t: fluxes[t] for t in outlets}
    mass_err = abs(inflow - sum(outflow.values())) / inflow
    return _BoundaryResults(areas_m2=areas, p_in_Pa=p_in, p_outlets_Pa=p_outlets, dp_Pa=dp, fluxes_m3_s=fluxes,
                            inflow_m3_s=inflow, outflow_m3_s=outflow, mass_err=mass_err)


def _wall_shear_stress(mesh, disc: _Discretisation, forms: _Forms, walls: tuple[int, ...],
                       areas: dict) -> tuple[float, float, Any]:
    """Wall shear stress (Pa): its area mean, the maximum of its lumped P1 projection, and that projection."""
    comm, n = mesh.comm, disc.n
    uh = forms.uh
    tau = forms.mu * (ufl.grad(uh) + ufl.grad(uh).T) * n
    tau_t = tau - ufl.dot(tau, n) * n
    wall_ds = disc.ds(walls)
    wall_area = sum(areas[t] for t in walls)
    wss_int = comm.allreduce(fem.assemble_scalar(fem.form(ufl.sqrt(ufl.inner(tau_t, tau_t)) * wall_ds)), op=MPI.SUM)
    wss_mean = wss_int / wall_area
    wss = _lumped_wall_projection(mesh, tau_t, wall_ds)
    nloc = wss.function_space.dofmap.index_map.size_local
    wmag = np.linalg.norm(wss.x.array.reshape(-1, 3)[:nloc], axis=1)
    wss_max = comm.allreduce(float(wmag.max()) if wmag.size else 0.0, op=MPI.MAX)
    wss.name = "wss"
    return wss_mean, wss_max, wss


def _max_speed(V, uh, comm) -> float:
    """Largest nodal speed |u| (m/s) over all ranks."""
    nloc_v = V.dofmap.index_map.size_local
    umag = np.linalg.norm(uh.x.array.reshape(-1, 3)[:nloc_v], axis=1)
    return comm.allreduce(float(umag.max()) if umag.size else 0.0, op=MPI.MAX)


def _all_finite(comm, uh, ph) -> bool:
    """True when velocity and pressure are finite on every rank (collective)."""
    ok = bool(np.all(np.isfinite(uh.x.array)) and np.all(np.isfinite(ph.x.array)))
    return bool(comm.allreduce(ok, op=MPI.LAND))


def _check_finite(comm, uh, ph, stage: str) -> None:
    """Raise ConvergenceError when the ``stage`` solution is not finite on some rank (collective)."""
    if not _all_finite(comm, uh, ph):
        raise ConvergenceError(
            f"{stage} solution contains NaN/inf; try a lower Reynolds number, model='stokes', "
            "or solver='direct'"
        )


def _lumped_wall_projection(mesh, tau_t, wall_ds):
    """Lumped L² projection of a wall vector field onto P1: w_i = ∫τ_t·φ_i ds / ∫φ_i ds."""
    W = fem.functionspace(mesh, basix.ufl.element("Lagrange", mesh.basix_cell(), 1, shape=(3,)))
    phi = ufl.TestFunction(W)
    ones = fem.Constant(mesh, np.ones(3, dtype=PETSc.ScalarType))
    b = fem.assemble_vector(fem.form(ufl.inner(tau_t, phi) * wall_ds))
    m = fem.assemble_vector(fem.form(ufl.inner(ones, phi) * wall_ds))
    for vec in (b, m):
        vec.scatter_reverse(dolfinx.la.InsertMode.add)
        vec.scatter_forward()
    w = fem.Function(W)
    mask = m.array > 0
    w.x.array[mask] = b.array[mask] / m.array[mask]
    return w


def _set_near_nullspace(A, V) -> None:
    """Attach the six rigid-body modes of V as near-nullspace of A (helps GAMG)."""
    x = V.tabulate_dof_coordinates()
    nloc = V.dofmap.index_map.size_local
    x = x[:nloc]
    bs = V.dofmap.index_map_bs
    basis = []
    for k in range(6):
        vec = np.zeros((nloc, bs))
        if k < 3:
            vec[:, k] = 1.0
        else:
            i, j = [(0, 1), (1, 2), (2, 0)][k - 3]
            vec[:, i] = -x[:, j]
            vec[:, j] = x[:, i]
        pv = A.createVecRight()
        pv.array[:] = vec.ravel()
        basis.append(pv)
    ns = PETSc.NullSpace().create(vectors=_orthonormalise(basis), comm=V.mesh.comm)
    A.setNearNullSpace(ns)


def _orthonormalise(vectors):
    for i, vi in enumerate(vectors):
        for vj in vectors[:i]:
            vi.axpy(-vi.dot(vj), vj)
        vi.normalize()
    return vectors
