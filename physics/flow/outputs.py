"""Results of a steady flow solve: boundary-averaged numbers and the fields.

:class:`FlowResult` holds the numbers a clinician or a workflow needs (pressure
drop, FFR-like ratio Pd/Pa, flow split and the split imposed if any, wall shear
stress, mass balance) in SI units, identical on every MPI rank, and keeps the
finite-element fields so they can be written for ParaView with
:meth:`FlowResult.write_fields` (ADIOS2 VTX ``.bp`` folders, one per field).
:meth:`FlowResult.boundary_pressure` samples the pressure at the nodes of tagged
boundary facets (e.g. the wall, for a pressure map).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import dolfinx_solver  # noqa: F401  (orders MPI ahead of the dolfinx bindings)
import numpy as np

from ..atomic import to_jsonable as _jsonable

__all__ = ["FlowResult", "FIELD_FILES"]

#: File names written by :meth:`FlowResult.write_fields`.
FIELD_FILES = {"velocity": "velocity.bp", "pressure": "pressure.bp", "wss": "wss.bp"}


@dataclass
class FlowResult:
    """Numbers from one steady flow solve (SI units, the same on every rank).

    Attributes
    ----------
    pressure_inlet_Pa : float
        Mean pressure ∫p ds/∫ds over the inlet, in Pa.
    pressure_outlets_Pa : dict of int to float
        Mean pressure over each outlet, in Pa.
    pressure_drop_Pa : float
        Inlet mean minus the area-weighted mean over all outlets, in Pa.
    pressure_drops_Pa : dict of int to float
        Inlet mean minus each outlet's mean, in Pa.
    flow_rates_m3_s : dict of int to float
        Signed outward flux ∫u·n ds over every facet tag, in m³/s.
    inflow_m3_s : float
        Flow into the inlet (positive), in m³/s.
    outflow_m3_s : dict of int to float
        Flow out of each outlet (positive when leaving), in m³/s.
    mass_balance_rel_error : float
        |inflow − Σ outflow| / inflow.
    max_velocity_m_s : float
        Largest velocity magnitude at the velocity degrees of freedom, in m/s.
    wss_mean_Pa : float
        Area-averaged magnitude of the tangential wall traction, in Pa.
    wss_max_Pa : float
        Maximum of the lumped-projected wall shear stress field, in Pa.
    ffr_like : float
        (proximal_pressure − ΔP) / proximal_pressure, i.e. Pd/Pa.
    reynolds_inlet : float
        ρ U D / μ with U the mean inlet velocity and D = 2 sqrt(A/π).
    n_dofs, n_cells : int
        Global numbers of degrees of freedom (velocity + pressure) and cells.
    newton_iterations : int
        Newton iterations (0 for Stokes).
    solve_time_s : float
        Wall time of the linear/nonlinear solves (max over ranks), in s.
    model, solver : str
        Flow model and linear solver used.
    outlet_flow_fractions_imposed : dict of int to float or None
        With :attr:`FlowProblem.outlet_flow_fractions`: the prescribed fraction of the
        inflow per outlet (divided by their sum), to compare with
        ``outflow_m3_s[tag] / inflow_m3_s``; ``None`` without a prescribed split.
    traction_free_outlet_tag : int or None
        With a prescribed split: the one outlet left at zero traction (the largest
        by area; ties, within 1e-9 relative: lowest tag), which sets the pressure
        level and whose flow follows from mass conservation; the other outlets
        carry Poiseuille profiles. ``None`` without a prescribed split.
    """

    pressure_inlet_Pa: float
    pressure_outlets_Pa: dict[int, float]
    pressure_drop_Pa: float
    pressure_drops_Pa: dict[int, float]
    flow_rates_m3_s: dict[int, float]
    inflow_m3_s: float
    outflow_m3_s: dict[int, float]
    mass_balance_rel_error: float
    max_velocity_m_s: float
    wss_mean_Pa: float
    wss_max_Pa: float
    ffr_like: float
    reynolds_inlet: float
    n_dofs: int
    n_cells: int
    newton_iterations: int
    solve_time_s: float
    model: str
    solver: str = "direct"
    linear_iterations: int = 0
    total_time_s: float = 0.0
    inlet_area_m2: float = float("nan")
    inlet_radius_m: float = float("nan")
    inlet_centre_m: tuple[float, float, float] = (float("nan"),) * 3
    inlet_normal: tuple[float, float, float] = (float("nan"),) * 3
    areas_m2: dict[int, float] = field(default_factory=dict)
    mean_inlet_velocity_m_s: float = float("nan")
    n_ranks: int = 1
    outlet_flow_fractions_imposed: dict[int, float] | None = None
    traction_free_outlet_tag: int | None = None
    _fields: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        """Return a JSON-ready dict of the numbers (tag keys as strings, no fields)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if not f.name.startswith("_")}

    def write_fields(self, out_dir) -> list[Path]:
        """Write velocity (m/s), pressure (Pa) and WSS (Pa) for ParaView.

        Each field is interpolated into a continuous Lagrange space of the
        mesh geometry's degree and written as an ADIOS2 VTX folder
        (``velocity.bp``, ``pressure.bp``, ``wss.bp``). Collective: call on
        every rank.

        Parameters
        ----------
        out_dir : str or Path
            Output folder (created if missing).

        Returns
        -------
        list of Path
            The written ``.bp`` paths.
        """
        if not self._fields:
            raise RuntimeError("this FlowResult holds no fields (it was rebuilt from a dict)")
        import basix.ufl
        from dolfinx import fem
        from dolfinx.io import VTXWriter

        out_dir = Path(out_dir)
        msh = self._fields["velocity"].function_space.mesh
        if msh.comm.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        msh.comm.Barrier()
        degree = max(1, msh.geometry.cmaps[0].degree)
        cell = msh.basix_cell()
        paths = []
        for name, func in self._fields.items():
            shape = (msh.geometry.dim,) if len(func.ufl_shape) == 1 else None
            space = fem.functionspace(msh, basix.ufl.element("Lagrange", cell, degree, shape=shape))
            out = fem.Function(space, name=name)
            out.interpolate(func)
            path = out_dir / FIELD_FILES[name]
            with VTXWriter(msh.comm, path, [out], engine="BP4") as writer:
                writer.write(0.0)
            paths.append(path)
        return paths

    def boundary_pressure(self, facet_tags, tags) -> tuple[np.ndarray, np.ndarray]:
        """Pressure at the nodes of the facets carrying ``tags``, gathered on rank 0.

        The pressure is the continuous P1 field of the Taylor–Hood pair, so its nodes are
        the mesh vertices and the samples are exact nodal values (no interpolation). Each
        node is taken once, from the rank that owns it. Collective: call on every rank.

        Parameters
        ----------
        facet_tags : dolfinx.mesh.MeshTags
            The facet tags the problem was solved with.
        tags : int or sequence of int
            Boundary tags to sample (e.g. the wall, 1).

        Returns
        -------
        xyz_m : ndarray, shape (N, 3)
            Node coordinates in the mesh's unit (m for meshes from :func:`load_mesh`); on
            ranks other than 0, shape (0, 3).
        pressure_Pa : ndarray, shape (N,)
            Pressure at those nodes, Pa; empty on ranks other than 0.
        """
        if not self._fields:
            raise RuntimeError("this FlowResult holds no fields (it was rebuilt from a dict)")
        from dolfinx import fem

        ph = self._fields["pressure"]
        space = ph.function_space
        msh = space.mesh
        fdim = msh.topology.dim - 1
        tag_list = [int(tags)] if np.ndim(tags) == 0 else [int(t) for t in tags]
        facets = np.unique(np.concatenate([facet_tags.find(t) for t in tag_list])).astype(np.int32)
        msh.topology.create_connectivity(fdim, msh.topology.dim)
        dofs = fem.locate_dofs_topological(space, fdim, facets)
        dofs = dofs[dofs < space.dofmap.index_map.size_local]  # owned only: each node once
        xyz = space.tabulate_dof_coordinates()[dofs].reshape(-1, 3)
        p = np.asarray(ph.x.array[dofs], dtype=float)
        parts = msh.comm.gather((xyz, p), root=0)
        if msh.comm.rank != 0:
            return np.zeros((0, 3)), np.zeros(0)
        return (np.concatenate([x for x, _ in parts]).reshape(-1, 3),
                np.concatenate([v for _, v in parts]))
