"""Steady blood flow in vessel meshes with FEniCSx (Taylor–Hood Stokes / Navier–Stokes).

Typical use::

    from physics.flow import FlowProblem, load_mesh, murray_fractions, solve_flow
    mesh, cell_tags, facet_tags = load_mesh("vessel.msh")        # mm -> m
    result = solve_flow(mesh, facet_tags, FlowProblem(flow_rate_m3_s=1e-6))
    result.pressure_drop_Pa, result.ffr_like, result.wss_mean_Pa

    # a prescribed outlet split, here Murray's law from the outlet radii (mm)
    split = FlowProblem(flow_rate_m3_s=1e-6, outlet_flow_fractions=murray_fractions({3: 1.6, 4: 1.2}))

Equations and references: :mod:`physics.flow.solver`.
"""

# h5py must be loaded before dolfinx: the dolfinx wheel's HDF5 symbols, loaded first, make a
# later `import h5py` (used by meshio's XDMF writer) fail with "Not a datatype".
import h5py  # noqa: F401,E402


from .mesh import load_mesh, mesh_from_gmsh_model, scale_mesh
from .outputs import FIELD_FILES, FlowResult
from .problem import (
    FIRST_OUTLET,
    FLUID,
    INLET,
    MODELS,
    SOLVERS,
    WALL,
    Blood,
    ConvergenceError,
    FlowError,
    FlowProblem,
    murray_fractions,
)
from .solver import default_petsc_options, solve_flow

__all__ = [
    "FIELD_FILES",
    "FIRST_OUTLET",
    "FLUID",
    "INLET",
    "MODELS",
    "SOLVERS",
    "WALL",
    "Blood",
    "ConvergenceError",
    "FlowError",
    "FlowProblem",
    "FlowResult",
    "default_petsc_options",
    "load_mesh",
    "mesh_from_gmsh_model",
    "murray_fractions",
    "scale_mesh",
    "solve_flow",
]
