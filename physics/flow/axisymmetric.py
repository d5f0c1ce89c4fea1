"""Axisymmetric steady flow through a stenosed tube: the reference solver for severe stenoses.

A straight tube of radius R0 with a concentric cosine stenosis (the shape
:mod:`phantoms.vessels` draws, eccentricity 0),

    A(z) = π R0² (1 − a·½(1 + cos 2πu)),  u = (z − z_c)/L,  |u| < ½,

is solved on its meridional half-plane (z, r), r ≥ 0, with the same equations, elements and
boundary conditions as the 3-D solver (:mod:`physics.flow.solver`), so that a 3-D run on an
image of that tube converges to this solution:

* Taylor–Hood P2–P1 for (u_z, u_r) and p, every form weighted by r (the 2π cancels);
* the viscous term is the cylindrical reduction of μ ∇u:∇v: μ (∇u:∇v + u_r v_r / r²);
* continuity ∂u_z/∂z + ∂u_r/∂r + u_r/r = 0; no swirl, so (u·∇)u has no extra terms;
* inlet: Poiseuille profile 2U(1 − (r/R0)²) with U = Q/(πR0²); wall: no slip; axis: u_r = 0;
  outlet: μ ∂u/∂n − p n = 0 (the 3-D do-nothing condition of the same weak form);
* ΔP = mean inlet pressure − mean outlet pressure, means over the sections (∫ p r dr / ∫ r dr).

The mesh maps a structured triangle grid of the unit square to the tube: r = η R(z), and z(ξ)
spaced by a target size that follows the lumen radius upstream and stays at the throat's
scale along the jet downstream (it widens by ``jet_spread`` per unit length). Newton's method
(SNES, MUMPS LU) starts from the Stokes solution and, when that fails, continues in the
Reynolds number through the density. :func:`converged_pressure_drop` refines three times by a
factor 2 and extrapolates (Richardson, observed order): that is the converged reference of
``tests/physics/test_flow_axisymmetric.py`` and ``benchmarks/stenosis_accuracy.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

import dolfinx_solver  # noqa: F401  (orders MPI ahead of the dolfinx bindings)
from mpi4py import MPI
from petsc4py import PETSc

import basix.ufl
import dolfinx.fem.petsc
import dolfinx.mesh
import ufl
from dolfinx import fem

from .problem import Blood, ConvergenceError, FlowError

__all__ = ["StenosedTube", "solve_axisymmetric", "converged_pressure_drop", "reynolds_inlet",
           "flow_rate_for_reynolds"]


@dataclass(frozen=True)
class StenosedTube:
    """A straight tube with a concentric cosine stenosis, lengths in mm.

    Parameters
    ----------
    radius_mm : float
        Radius R0 away from the stenosis.
    area_reduction : float
        a in [0, 0.99): the throat's area is (1 − a) π R0².
    length_mm : float
        Axial length L of the stenosis (the cosine bump), > 0.
    centre_mm : float
        Axial position z_c of the throat.
    z_inlet_mm, z_outlet_mm : float
        The inlet and outlet sections (z_inlet < z_outlet).
    """

    radius_mm: float = 2.0
    area_reduction: float = 0.75
    length_mm: float = 6.0
    centre_mm: float = 0.0
    z_inlet_mm: float = -10.0
    z_outlet_mm: float = 30.0

    def __post_init__(self) -> None:
        for name in ("radius_mm", "length_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise FlowError(f"StenosedTube.{name} must be a positive number of mm, got {v!r}")
        if not 0.0 <= self.area_reduction < 0.99:
            raise FlowError(f"StenosedTube.area_reduction must be in [0, 0.99), got {self.area_reduction!r}")
        if not self.z_inlet_mm < self.z_outlet_mm:
            raise FlowError(f"StenosedTube: z_inlet_mm ({self.z_inlet_mm}) must be below z_outlet_mm "
                            f"({self.z_outlet_mm})")

    @property
    def throat_radius_mm(self) -> float:
        return self.radius_mm * math.sqrt(1.0 - self.area_reduction)

    def radius(self, z_mm):
        """Lumen radius (mm) at axial positions ``z_mm`` (the generator's law, eccentricity 0)."""
        u = (np.asarray(z_mm, dtype=float) - self.centre_mm) / self.length_mm
        bump = np.where(np.abs(u) < 0.5, 0.5 * (1.0 + np.cos(2.0 * np.pi * u)), 0.0)
        return self.radius_mm * np.sqrt(1.0 - self.area_reduction * bump)


def reynolds_inlet(flow_rate_m3_s: float, radius_mm: float, blood: Blood) -> float:
    """Re = ρ U D / μ with the mean inlet velocity U = Q/(πR²) and D = 2R."""
    r = radius_mm * 1e-3
    return blood.density_kg_m3 * (flow_rate_m3_s / (math.pi * r * r)) * 2 * r / blood.viscosity_Pa_s


def flow_rate_for_reynolds(reynolds: float, radius_mm: float, blood: Blood) -> float:
    """The flow rate (m³/s) of inlet Reynolds number ``reynolds`` (see :func:`reynolds_inlet`)."""
    r = radius_mm * 1e-3
    return reynolds * blood.viscosity_Pa_s * math.pi * r / (2.0 * blood.density_kg_m3)


def _size_envelope(tube: StenosedTube, z: np.ndarray, jet_spread: float) -> np.ndarray:
    """Target length scale (mm) along the axis: the lumen radius upstream of the throat, the jet's
    radius (throat radius growing by ``jet_spread`` per unit length, at most R0) downstream."""
    env = tube.radius(z)
    down = z > tube.centre_mm
    env[down] = np.minimum(tube.radius_mm, tube.throat_radius_mm + jet_spread * (z[down] - tube.centre_mm))
    return env


def _axial_nodes(tube: StenosedTube, cells_per_unit: float, jet_spread: float) -> np.ndarray:
    """Axial node positions z (mm): spacing = envelope / ``cells_per_unit``."""
    z = np.linspace(tube.z_inlet_mm, tube.z_outlet_mm, 40001)
    density = 1.0 / _size_envelope(tube, z, jet_spread)
    xi = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(z))])
    n_axial = int(math.ceil(cells_per_unit * xi[-1]))
    return np.interp(np.linspace(0.0, 1.0, n_axial + 1), xi / xi[-1], z)


def _tube_mesh(tube: StenosedTube, cells_per_radius: int, axial_factor: float, jet_spread: float, comm):
    """Triangles of the meridional half-plane (metres): r = η R(z) on a mapped unit square."""
    zn = _axial_nodes(tube, axial_factor * cells_per_radius, jet_spread)
    n_axial = len(zn) - 1
    n_r = int(cells_per_radius)
    msh = dolfinx.mesh.create_rectangle(comm, [np.array([0.0, 0.0]), np.array([1.0, 1.0])], [n_axial, n_r],
                                        dolfinx.mesh.CellType.triangle, diagonal=dolfinx.mesh.DiagonalType.crossed)
    x = msh.geometry.x
    xi, eta = x[:, 0].copy(), x[:, 1].copy()
    zz = np.interp(xi, np.linspace(0.0, 1.0, n_axial + 1), zn)
    x[:, 0] = zz * 1e-3
    x[:, 1] = eta * tube.radius(zz) * 1e-3
    return msh, n_axial, n_r


def solve_axisymmetric(tube: StenosedTube, flow_rate_m3_s: float, blood: Blood | None = None, *,
                       model: str = "navier-stokes", cells_per_radius: int = 16, axial_factor: float = 1.0,
                       jet_spread: float = 0.15, progress: Callable[[str], None] | None = None,
                       comm=MPI.COMM_SELF) -> dict:
    """Solve steady flow through ``tube`` and return its pressure drop.

    Parameters
    ----------
    tube : StenosedTube
        The geometry (mm).
    flow_rate_m3_s : float
        Inflow Q (m³/s), > 0.
    blood : Blood, optional
        Density and viscosity (default: 1060 kg/m³, 3.5 mPa s).
    model : {"navier-stokes", "stokes"}
    cells_per_radius : int
        Radial cells (the structured grid's η direction); the axial spacing is the local
        target size (lumen radius, or the jet's) divided by ``cells_per_radius × axial_factor``.
    jet_spread : float
        Growth of the target size per unit length downstream of the throat.

    Returns
    -------
    dict
        ``pressure_drop_Pa``, ``pressure_inlet_Pa``, ``pressure_outlet_Pa``, ``flow_rate_m3_s``,
        ``outflow_m3_s``, ``outlet_backflow_m3_s`` (the flow entering through the outlet: the
        recirculation reaches it), ``reynolds_inlet``, ``n_dofs``, ``n_cells``, ``newton_iterations``,
        ``continuation`` (density fractions passed, empty if none was needed), ``seconds``,
        ``tube`` and the mesh settings.

    Raises
    ------
    FlowError
        For a non-positive flow rate or an unknown model.
    ConvergenceError
        When Newton fails even with continuation in the Reynolds number.
    """
    t0 = time.perf_counter()
    blood = blood or Blood()
    say = progress or (lambda _m: None)
    if not (isinstance(flow_rate_m3_s, (int, float)) and math.isfinite(flow_rate_m3_s) and flow_rate_m3_s > 0):
        raise FlowError(f"flow_rate_m3_s must be a positive number, got {flow_rate_m3_s!r}")
    if model not in ("navier-stokes", "stokes"):
        raise FlowError(f"model must be 'navier-stokes' or 'stokes', got {model!r}")
    msh, n_axial, n_r = _tube_mesh(tube, cells_per_radius, axial_factor, jet_spread, comm)
    cell = msh.basix_cell()
    V = fem.functionspace(msh, basix.ufl.element("Lagrange", cell, 2, shape=(2,)))
    Qs = fem.functionspace(msh, basix.ufl.element("Lagrange", cell, 1))
    z_in, z_out, R0 = tube.z_inlet_mm * 1e-3, tube.z_outlet_mm * 1e-3, tube.radius_mm * 1e-3

    fdim = 1
    msh.topology.create_connectivity(fdim, 2)
    eps = 1e-9 * R0

    def facets(marker):
        return dolfinx.mesh.locate_entities_boundary(msh, fdim, marker)

    inlet_f = facets(lambda x: np.abs(x[0] - z_in) < eps)
    outlet_f = facets(lambda x: np.abs(x[0] - z_out) < eps)
    axis_f = facets(lambda x: np.abs(x[1]) < eps)
    all_f = dolfinx.mesh.exterior_facet_indices(msh.topology)
    wall_f = np.setdiff1d(all_f, np.concatenate([inlet_f, outlet_f, axis_f]))
    tags = np.concatenate([inlet_f, outlet_f, wall_f]).astype(np.int32)
    vals = np.concatenate([np.full(len(inlet_f), 1), np.full(len(outlet_f), 2), np.full(len(wall_f), 3)]).astype(np.int32)
    order = np.argsort(tags)
    ft = dolfinx.mesh.meshtags(msh, fdim, tags[order], vals[order])
    ds = ufl.Measure("ds", domain=msh, subdomain_data=ft)
    dx = ufl.Measure("dx", domain=msh)

    U = flow_rate_m3_s / (math.pi * R0 * R0)
    u_in = fem.Function(V)
    u_in.interpolate(lambda x: np.vstack([2.0 * U * (1.0 - (x[1] / R0) ** 2), np.zeros(x.shape[1])]))
    V0, _ = V.sub(0).collapse()
    V1, _ = V.sub(1).collapse()
    bcs = [
        fem.dirichletbc(u_in, fem.locate_dofs_topological(V, fdim, inlet_f)),
        fem.dirichletbc(fem.Function(V), fem.locate_dofs_topological(V, fdim, wall_f)),
        fem.dirichletbc(PETSc.ScalarType(0.0), fem.locate_dofs_topological(V.sub(1), fdim, axis_f), V.sub(1)),
    ]

    x = ufl.SpatialCoordinate(msh)
    r = x[1]
    mu = fem.Constant(msh, PETSc.ScalarType(blood.viscosity_Pa_s))
    rho = fem.Constant(msh, PETSc.ScalarType(blood.density_kg_m3))

    def div(w):
        return w[0].dx(0) + w[1].dx(1) + w[1] / r

    def visc(w, v):
        return mu * (ufl.inner(ufl.grad(w), ufl.grad(v)) + w[1] * v[1] / (r * r))

    uh, ph = fem.Function(V, name="u"), fem.Function(Qs, name="p")
    u, p = ufl.TrialFunction(V), ufl.TrialFunction(Qs)
    v, q = ufl.TestFunction(V), ufl.TestFunction(Qs)
    a = [[visc(u, v) * r * dx, -p * div(v) * r * dx], [-q * div(u) * r * dx, None]]
    zero_v = fem.Constant(msh, np.zeros(2, dtype=PETSc.ScalarType))
    L = [ufl.inner(zero_v, v) * r * dx, fem.Constant(msh, PETSc.ScalarType(0.0)) * q * r * dx]
    lu = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
    stokes = dolfinx.fem.petsc.LinearProblem(a, L, u=[uh, ph], bcs=bcs, kind="mpi", petsc_options=lu,
                                             petsc_options_prefix="digipat_axi_stokes_")
    stokes.solve()
    del stokes
    n_dofs = V.dofmap.index_map.size_global * 2 + Qs.dofmap.index_map.size_global
    say(f"axisymmetric: {n_axial} x {n_r} cells, {n_dofs} DOFs, Stokes solved")

    newton_its, continuation = 0, []
    if model == "navier-stokes":
        F = [
            (rho * ufl.inner(ufl.grad(uh) * uh, v) + visc(uh, v) - ph * div(v)) * r * dx,
            -q * div(uh) * r * dx,
        ]
        opts = {**lu, "snes_type": "newtonls", "snes_linesearch_type": "bt", "snes_rtol": 1e-10,
                "snes_atol": 1e-14, "snes_stol": 0.0, "snes_max_it": 30}

        def newton():
            ns = dolfinx.fem.petsc.NonlinearProblem(F, [uh, ph], bcs=bcs, kind="mpi", petsc_options=opts,
                                                    petsc_options_prefix="digipat_axi_ns_")
            ns.solve()
            s = ns.solver
            out = (s.getConvergedReason(), s.getIterationNumber(), s.getFunctionNorm())
            del ns
            return out

        def finite():
            return bool(np.all(np.isfinite(uh.x.array)) and np.all(np.isfinite(ph.x.array)))

        last = (uh.x.array.copy(), ph.x.array.copy())
        frac, step, tries = 0.0, 1.0, 0
        while frac < 1.0 and tries < 24 and step >= 1.0 / 64:
            tries += 1
            trial = min(1.0, frac + step)
            rho.value = blood.density_kg_m3 * trial
            reason, its, fnorm = newton()
            newton_its += its
            if reason > 0 and math.isfinite(fnorm) and finite():
                frac = trial
                last = (uh.x.array.copy(), ph.x.array.copy())
                continuation.append(round(trial, 6))
                step = min(2.0 * step, 0.5)
            else:
                uh.x.array[:], ph.x.array[:] = last
                step = (trial - frac) / 2.0
        if frac < 1.0:
            raise ConvergenceError(
                f"axisymmetric Newton did not reach the full Reynolds number (reached {100 * frac:.0f} % of "
                f"Re {reynolds_inlet(flow_rate_m3_s, tube.radius_mm, blood):.0f}); try a finer mesh or a "
                "longer outlet")
        if continuation == [1.0]:
            continuation = []
        say(f"axisymmetric: Newton converged in {newton_its} iterations")

    def mean_p(tag):
        num = fem.assemble_scalar(fem.form(ph * r * ds(tag)))
        den = fem.assemble_scalar(fem.form(r * ds(tag)))
        return float(num / den)

    n = ufl.FacetNormal(msh)
    q_out = 2 * math.pi * float(fem.assemble_scalar(fem.form(ufl.dot(uh, n) * r * ds(2))))
    un = ufl.dot(uh, n)
    backflow = -2 * math.pi * float(fem.assemble_scalar(fem.form(0.5 * (un - abs(un)) * r * ds(2))))
    p_in, p_out = mean_p(1), mean_p(2)
    return {
        "pressure_drop_Pa": p_in - p_out,
        "pressure_inlet_Pa": p_in,
        "pressure_outlet_Pa": p_out,
        "flow_rate_m3_s": float(flow_rate_m3_s),
        "outflow_m3_s": q_out,
        "outlet_backflow_m3_s": backflow,
        "reynolds_inlet": reynolds_inlet(flow_rate_m3_s, tube.radius_mm, blood),
        "model": model,
        "n_dofs": int(n_dofs),
        "n_cells": int(msh.topology.index_map(2).size_global),
        "cells_per_radius": int(n_r),
        "n_axial": int(n_axial),
        "axial_factor": float(axial_factor),
        "jet_spread": float(jet_spread),
        "newton_iterations": int(newton_its),
        "continuation": continuation,
        "seconds": time.perf_counter() - t0,
        "tube": asdict(tube),
    }


def converged_pressure_drop(tube: StenosedTube, flow_rate_m3_s: float, blood: Blood | None = None, *,
                            model: str = "navier-stokes", cells_per_radius=(12, 24, 48), **kwargs) -> dict:
    """ΔP on three meshes refined by a constant factor, extrapolated to zero mesh size.

    Richardson with the observed order p = ln((f1 − f2)/(f2 − f3)) / ln(ratio) (f3 finest), and
    the grid convergence index of the finest solve, 1.25 |f3 − f2| / (ratioᵖ − 1) / |f3| (Roache
    1994). Returns the three solves, ``extrapolated_Pa``, ``observed_order``, ``gci``.
    """
    n = [int(c) for c in cells_per_radius]
    if len(n) != 3 or not (n[0] < n[1] < n[2]):
        raise FlowError(f"cells_per_radius must be three increasing counts, got {cells_per_radius!r}")
    ratio = n[1] / n[0]
    if abs(n[2] / n[1] - ratio) > 1e-9:
        raise FlowError(f"cells_per_radius must grow by a constant factor, got {cells_per_radius!r}")
    solves = [solve_axisymmetric(tube, flow_rate_m3_s, blood, model=model, cells_per_radius=c, **kwargs) for c in n]
    f1, f2, f3 = (s["pressure_drop_Pa"] for s in solves)
    if (f1 - f2) * (f2 - f3) <= 0:  # not monotone: no order; report the spread
        order, extrap = float("nan"), f3
        gci = 1.25 * max(abs(f3 - f2), abs(f2 - f1)) / abs(f3)
    else:
        order = math.log(abs(f1 - f2) / abs(f2 - f3)) / math.log(ratio)
        extrap = f3 + (f3 - f2) / (ratio ** order - 1.0)
        gci = 1.25 * abs(f3 - f2) / (ratio ** order - 1.0) / abs(f3)
    return {"solves": solves, "pressure_drops_Pa": [f1, f2, f3], "extrapolated_Pa": extrap,
            "observed_order": order, "gci": gci, "refinement_ratio": ratio}
