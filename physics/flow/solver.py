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
  the weak form as the Neumann term ∫ p_out n·v ds.

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
    if not isinstance(problem, FlowProblem):
        raise FlowError(f"problem must be a FlowProblem, got {type(problem).__name__}")
    if mesh.topology.dim != 3 or mesh.geometry.dim != 3:
        raise FlowError(f"mesh must be a 3-D volume mesh, got tdim={mesh.topology.dim}, gdim={mesh.geometry.dim}")
    if facet_tags is None or facet_tags.dim != 2:
        raise FlowError("facet_tags must be the mesh's facet MeshTags (dimension 2)")
    say = progress if progress is not None else (lambda msg: None)
    t_start = time.perf_counter()
    comm = mesh.comm
    present = _present_tags(facet_tags, comm)
    inlet, walls, outlets = _resolve_tags(problem, present)
    mu_val = problem.blood.viscosity_Pa_s
    rho_val = problem.blood.density_kg_m3

    # --- spaces ----------------------------------------------------------------
    cell = mesh.basix_cell()
    V = fem.functionspace(mesh, basix.ufl.element("Lagrange", cell, 2, shape=(3,)))
    Qs = fem.functionspace(mesh, basix.ufl.element("Lagrange", cell, 1))
    n_dofs = V.dofmap.index_map.size_global * V.dofmap.index_map_bs + Qs.dofmap.index_map.size_global
    n_cells = mesh.topology.index_map(3).size_global
    say(f"flow: {problem.model}, {n_cells} cells, {n_dofs} dofs, {comm.size} rank(s)")

    ds = ufl.Measure("ds", domain=mesh, subdomain_data=facet_tags)
    dx = ufl.Measure("dx", domain=mesh)
    x = ufl.SpatialCoordinate(mesh)
    n = ufl.FacetNormal(mesh)
    one = fem.Constant(mesh, PETSc.ScalarType(1.0))

    # --- inlet geometry from the mesh -----------------------------------------
    geo = _BoundaryIntegrals(mesh, ds, [one, x[0], x[1], x[2], n[0], n[1], n[2]], [inlet]).values()[:, 0]
    area = geo[0]
    if not area > 0:
        raise FlowError(f"inlet (tag {inlet}) has zero area")
    centre = geo[1:4] / area
    nsum = geo[4:7]
    planarity = np.linalg.norm(nsum) / area
    if planarity < 1 - _PLANARITY_TOL:
        raise FlowError(
            f"inlet (tag {inlet}) is not planar: |∫n ds|/A = {planarity:.4f} (needs >= {1 - _PLANARITY_TOL}); "
            "cut the vessel with a plane before meshing"
        )
    normal = nsum / np.linalg.norm(nsum)
    radius = math.sqrt(area / math.pi)
    if problem.flow_rate_m3_s is not None:
        Q = problem.flow_rate_m3_s
    else:
        Q = problem.mean_velocity_m_s * area
    U = Q / area

    # --- boundary conditions ----------------------------------------------------
    fdim = 2
    mesh.topology.create_connectivity(fdim, 3)
    wall_facets = np.concatenate([facet_tags.find(t) for t in walls]).astype(np.int32)
    wall_dofs = fem.locate_dofs_topological(V, fdim, wall_facets)
    inlet_dofs = fem.locate_dofs_topological(V, fdim, facet_tags.find(inlet))

    def profile(xp):
        d = xp - centre[:, None]
        axial = normal @ d
        r2 = np.maximum(np.einsum("ij,ij->j", d, d) - axial**2, 0.0)
        s = np.clip(1.0 - r2 / radius**2, 0.0, None)
        return -normal[:, None] * (2.0 * U * s)[None, :]

    u_in = fem.Function(V)
    u_in.interpolate(profile)
    u_in.x.array.reshape(-1, 3)[wall_dofs] = 0.0  # the rim belongs to the no-slip wall
    u_in.x.scatter_forward()
    flux = comm.allreduce(fem.assemble_scalar(fem.form(ufl.dot(u_in, n) * ds(inlet))), op=MPI.SUM)
    if not flux < 0:
        raise FlowError(f"inlet profile has no inward flux (flux {flux!r}); is the inlet mesh degenerate?")
    u_in.x.array[:] *= -Q / flux
    u_zero = fem.Function(V)
    bcs = [fem.dirichletbc(u_in, inlet_dofs), fem.dirichletbc(u_zero, wall_dofs)]

    # --- forms -------------------------------------------------------------------
    mu = fem.Constant(mesh, PETSc.ScalarType(mu_val))
    rho = fem.Constant(mesh, PETSc.ScalarType(rho_val))
    u, p = ufl.TrialFunction(V), ufl.TrialFunction(Qs)
    v, q = ufl.TestFunction(V), ufl.TestFunction(Qs)
    pressures = problem.outlet_pressures_Pa or {}
    p_out = {t: fem.Constant(mesh, PETSc.ScalarType(val)) for t, val in pressures.items()}
    neumann = sum((p_out[t] * ufl.dot(n, v) * ds(t) for t in p_out), ufl.inner(fem.Constant(mesh, np.zeros(3)), v) * dx)

    uh = fem.Function(V, name="u")
    ph = fem.Function(Qs, name="p")
    opts = default_petsc_options(problem)
    opts.update(problem.petsc_options or {})
    lin_opts = {k: v_ for k, v_ in opts.items() if not k.startswith("snes_")}
    if problem.solver == "direct" and "ksp_type" not in (problem.petsc_options or {}):
        lin_opts["ksp_type"] = "preonly"  # the Stokes solve is one LU solve
        for k in ("ksp_gmres_restart", "ksp_rtol", "ksp_atol", "ksp_max_it"):
            if k not in (problem.petsc_options or {}):
                lin_opts.pop(k, None)

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

    say("flow: Stokes solve")
    t0 = time.perf_counter()
    try:
        stokes = dolfinx.fem.petsc.LinearProblem(
            a, L, u=[uh, ph], bcs=bcs, P=P, kind=kind, petsc_options=lin_opts,
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
    _check_finite(comm, uh, ph, "Stokes")

    newton_its = 0
    if problem.model == "navier-stokes":
        say(f"flow: Newton (Navier-Stokes), Re = {rho_val * U * 2 * radius / mu_val:.3g}")
        F = [
            rho * ufl.inner(ufl.grad(uh) * uh, v) * dx
            + mu * ufl.inner(ufl.grad(uh), ufl.grad(v)) * dx
            - ph * ufl.div(v) * dx
            + neumann,
            -q * ufl.div(uh) * dx,
        ]
        u0, p0 = uh.x.array.copy(), ph.x.array.copy()  # the Stokes solution: Newton's initial guess

        def newton(options: dict, prefix: str) -> tuple[int, int, float]:
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

        def finite() -> bool:
            ok = bool(np.all(np.isfinite(uh.x.array)) and np.all(np.isfinite(ph.x.array)))
            return bool(comm.allreduce(ok, op=MPI.LAND))

        reason, newton_its, fnorm = newton(opts, "digipat_flow_ns_")
        first = (reason, newton_its, fnorm)  # reported if the continuation fails too
        continuation = None
        if reason <= 0 or not math.isfinite(fnorm) or not finite():
            # natural-parameter continuation in the density (the Reynolds number at fixed flow):
            # full Newton with a fresh LU per step, each step starting from the previous solution
            say(f"flow: Newton from the Stokes solution failed ({_reason_name(PETSc.SNES.ConvergedReason, reason)}); "
                "continuation in the Reynolds number")
            uh.x.array[:], ph.x.array[:] = u0, p0
            copts = {**opts, "snes_lag_preconditioner": 1, "snes_linesearch_type": "bt"}
            if problem.solver == "direct" and "ksp_type" not in (problem.petsc_options or {}):
                copts.update(ksp_type="preonly")
                for k in ("ksp_gmres_restart", "ksp_rtol", "ksp_atol", "ksp_max_it"):
                    copts.pop(k, None)
            continuation = []
            last_u, last_p = u0, p0
            frac, step, tries = 0.0, 0.25, 0
            while frac < 1.0 and step >= 1.0 / 32 and tries < 12:  # bounded effort
                tries += 1
                trial = min(1.0, frac + step)
                rho.value = rho_val * trial
                reason, its, fnorm = newton(copts, "digipat_flow_nsc_")
                newton_its += its
                if reason > 0 and math.isfinite(fnorm) and finite():
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
        if reason <= 0 or not math.isfinite(fnorm):
            raise ConvergenceError(
                f"Newton (SNES) did not converge: reason {_reason_name(PETSc.SNES.ConvergedReason, first[0])} "
                f"after {first[1]} iterations, residual norm {first[2]:.3e}"
                + (f"; nor with continuation in the Reynolds number (it reached {100 * frac:.0f} % of it, "
                   f"{newton_its} Newton iterations in all)" if continuation is not None else "")
                + f". Try a lower Reynolds number (here {rho_val * U * 2 * radius / mu_val:.3g}), a finer mesh, "
                f"more newton_max_iterations (now {problem.newton_max_iterations}), or model='stokes'"
            )
        if continuation:
            say(f"flow: continuation converged through density fractions {continuation}")
        _check_finite(comm, uh, ph, "Navier-Stokes")
    solve_time = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)

    # --- outputs -----------------------------------------------------------------
    say("flow: post-processing")
    tags = present
    sums = _BoundaryIntegrals(mesh, ds, [one, ph, ufl.dot(uh, n)], tags).values()
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

    tau = mu * (ufl.grad(uh) + ufl.grad(uh).T) * n
    tau_t = tau - ufl.dot(tau, n) * n
    wall_ds = ds(walls)
    wall_area = sum(areas[t] for t in walls)
    wss_int = comm.allreduce(fem.assemble_scalar(fem.form(ufl.sqrt(ufl.inner(tau_t, tau_t)) * wall_ds)), op=MPI.SUM)
    wss_mean = wss_int / wall_area
    wss = _lumped_wall_projection(mesh, tau_t, wall_ds)
    nloc = wss.function_space.dofmap.index_map.size_local
    wmag = np.linalg.norm(wss.x.array.reshape(-1, 3)[:nloc], axis=1)
    wss_max = comm.allreduce(float(wmag.max()) if wmag.size else 0.0, op=MPI.MAX)
    nloc_v = V.dofmap.index_map.size_local
    umag = np.linalg.norm(uh.x.array.reshape(-1, 3)[:nloc_v], axis=1)
    umax = comm.allreduce(float(umag.max()) if umag.size else 0.0, op=MPI.MAX)
    wss.name = "wss"

    total = comm.allreduce(time.perf_counter() - t_start, op=MPI.MAX)
    say(f"flow: dP = {dp:.4g} Pa, Q = {inflow:.4g} m3/s, {solve_time:.2f} s solve")
    return FlowResult(
        pressure_inlet_Pa=p_in,
        pressure_outlets_Pa=p_outlets,
        pressure_drop_Pa=float(dp),
        pressure_drops_Pa={t: p_in - p_outlets[t] for t in outlets},
        flow_rates_m3_s=fluxes,
        inflow_m3_s=float(inflow),
        outflow_m3_s=outflow,
        mass_balance_rel_error=float(mass_err),
        max_velocity_m_s=umax,
        wss_mean_Pa=float(wss_mean),
        wss_max_Pa=wss_max,
        ffr_like=float((problem.proximal_pressure_Pa - dp) / problem.proximal_pressure_Pa),
        reynolds_inlet=float(rho_val * U * 2.0 * radius / mu_val),
        n_dofs=int(n_dofs),
        n_cells=int(n_cells),
        newton_iterations=int(newton_its),
        solve_time_s=float(solve_time),
        model=problem.model,
        solver=problem.solver,
        linear_iterations=int(linear_its),
        total_time_s=float(total),
        inlet_area_m2=float(area),
        inlet_radius_m=float(radius),
        inlet_centre_m=tuple(float(c) for c in centre),
        inlet_normal=tuple(float(c) for c in normal),
        areas_m2={t: float(a_) for t, a_ in areas.items()},
        mean_inlet_velocity_m_s=float(U),
        n_ranks=comm.size,
        _fields={"velocity": uh, "pressure": ph, "wss": wss},
    )


def _check_finite(comm, uh, ph, stage: str) -> None:
    ok = bool(np.isfinite(uh.x.array).all() and np.isfinite(ph.x.array).all())
    if not comm.allreduce(ok, op=MPI.LAND):
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
