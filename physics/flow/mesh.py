"""Load tagged gmsh meshes for the flow solver and convert them to SI units.

Meshes come from the meshing stage in millimetres as gmsh ``.msh`` files with
physical groups (cells: FLUID = 1; facets: WALL = 1, INLET = 2, outlets 3, 4,
...), first or second order. They are read in parallel with
:func:`dolfinx.io.gmsh.read_from_msh` (gmsh reads on rank 0, dolfinx
distributes) and the coordinates are multiplied by ``length_unit_m`` so the
solver works in metres.
"""

from __future__ import annotations

import math
from pathlib import Path

import dolfinx_solver  # noqa: F401  (orders MPI ahead of the dolfinx bindings)
from mpi4py import MPI

import dolfinx.io.gmsh

from .problem import FlowError

__all__ = ["load_mesh", "mesh_from_gmsh_model", "scale_mesh"]


def _check_unit(length_unit_m: float) -> None:
    if (
        isinstance(length_unit_m, bool)
        or not isinstance(length_unit_m, (int, float))
        or not math.isfinite(length_unit_m)
        or length_unit_m <= 0
    ):
        raise FlowError(f"length_unit_m must be a finite number > 0 (metres per mesh unit), got {length_unit_m!r}")


def scale_mesh(mesh, length_unit_m: float) -> None:
    """Multiply the mesh coordinates in place by ``length_unit_m`` (mesh unit → metres).

    Parameters
    ----------
    mesh : dolfinx.mesh.Mesh
        Mesh whose geometry is in mesh units (e.g. mm).
    length_unit_m : float
        Metres per mesh unit (1e-3 for millimetres, 1.0 for metres).
    """
    _check_unit(length_unit_m)
    if length_unit_m != 1.0:
        mesh.geometry.x[:] *= length_unit_m


def _unpack(data, what: str):
    if data.facet_tags is None:
        raise FlowError(f"{what} has no facet physical groups (WALL=1, INLET=2, outlets 3, 4, ...)")
    return data.mesh, data.cell_tags, data.facet_tags


def mesh_from_gmsh_model(model, comm=MPI.COMM_WORLD, *, rank: int = 0, length_unit_m: float = 1e-3):
    """Build a distributed mesh from an in-memory gmsh model and scale it to metres.

    Parameters
    ----------
    model : gmsh.model or None
        The gmsh model (only needed on ``rank``) with physical groups.
    comm : MPI.Comm
        Communicator of the mesh.
    rank : int
        Rank that holds the gmsh model.
    length_unit_m : float
        Metres per model unit (default 1e-3: the model is in millimetres).

    Returns
    -------
    mesh, cell_tags, facet_tags
        dolfinx mesh (coordinates in m) and its meshtags.
    """
    _check_unit(length_unit_m)
    data = dolfinx.io.gmsh.model_to_mesh(model, comm, rank, gdim=3)
    mesh, cell_tags, facet_tags = _unpack(data, "gmsh model")
    scale_mesh(mesh, length_unit_m)
    return mesh, cell_tags, facet_tags


def load_mesh(path, comm=MPI.COMM_WORLD, *, length_unit_m: float = 1e-3):
    """Read a tagged gmsh ``.msh`` file in parallel and scale it to metres.

    Parameters
    ----------
    path : str or Path
        gmsh ``.msh`` file with physical groups (first- or second-order tetrahedra).
    comm : MPI.Comm
        Communicator over which the mesh is distributed.
    length_unit_m : float
        Metres per file unit (default 1e-3: the file is in millimetres).

    Returns
    -------
    mesh, cell_tags, facet_tags
        dolfinx mesh (coordinates in m), cell tags (FLUID = 1) and facet tags
        (WALL = 1, INLET = 2, outlets 3, 4, ...).

    Raises
    ------
    FlowError
        If the file does not exist, is not ``.msh``, or has no facet tags.
    """
    _check_unit(length_unit_m)
    path = Path(path)
    if not path.is_file():
        raise FlowError(f"mesh file {str(path)!r} does not exist")
    if path.suffix.lower() != ".msh":
        raise FlowError(f"mesh file {str(path)!r} must be a gmsh .msh file")
    # as dolfinx.io.gmsh.read_from_msh, but with gmsh's terminal output off (it would
    # otherwise print to standard output, which `digipat ... --json` reserves for JSON)
    import gmsh

    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        try:
            gmsh.option.setNumber("General.Terminal", 0)
            gmsh.model.add("Mesh from file")
            gmsh.merge(str(path))
            data = dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=3)
        finally:
            gmsh.finalize()
    else:
        data = dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=3)
    mesh, cell_tags, facet_tags = _unpack(data, f"mesh file {str(path)!r}")
    scale_mesh(mesh, length_unit_m)
    return mesh, cell_tags, facet_tags
