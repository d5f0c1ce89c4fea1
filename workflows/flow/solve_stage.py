"""The flow-solve stage, runnable in-process or under ``mpiexec -n N``.

``python -m workflows.flow.solve_stage MESH.msh PROBLEM_JSON OUT.json [FIELDS_DIR]`` loads the
mesh (distributed over the ranks), solves, and rank 0 writes ``OUT.json`` atomically. With
``FIELDS_DIR`` the fields are written for ParaView and the wall pressure is sampled into
``FIELDS_DIR/wall_pressure.npz`` (gathered on rank 0, see :func:`write_wall_pressure`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from physics.atomic import write_json, write_npz

#: File (in the fields folder) holding the pressure at the wall nodes, for pressure maps.
WALL_PRESSURE_FILE = "wall_pressure.npz"


def write_wall_pressure(result, facet_tags, wall_tags, path: str | Path, *, length_unit_m: float = 1e-3) -> Path | None:
    """Write the pressure at the wall nodes as ``.npz``: ``xyz_mm`` (N, 3) and ``pressure_Pa`` (N,).

    Collective (call on every rank); the samples are gathered and rank 0 writes the file
    atomically. ``xyz_mm`` are world coordinates in mm (the mesh's metres divided by
    ``length_unit_m``), the same frame as the image and ``surface.stl``; each wall node of the
    P1 pressure field appears once.

    Returns
    -------
    Path or None
        The written path on rank 0, ``None`` on the other ranks.
    """
    import numpy as np

    xyz_m, p = result.boundary_pressure(facet_tags, wall_tags)
    comm = result._fields["pressure"].function_space.mesh.comm
    if comm.rank != 0:
        return None
    return write_npz(path, xyz_mm=np.asarray(xyz_m, float) / length_unit_m, pressure_Pa=np.asarray(p, float))


def solve_to_json(msh: str | Path, problem: dict, out_json: str | Path, fields_dir: str | Path | None) -> dict:
    from mpi4py import MPI

    from physics.flow import FlowProblem, load_mesh, solve_flow

    comm = MPI.COMM_WORLD
    mesh, _cell_tags, facet_tags = load_mesh(str(msh), comm, length_unit_m=1e-3)
    fp = FlowProblem.from_dict(problem)
    result = solve_flow(mesh, facet_tags, fp)
    data = result.to_dict()
    data["n_ranks"] = comm.size
    if fields_dir is not None:
        files = result.write_fields(fields_dir)
        wall_file = Path(fields_dir) / WALL_PRESSURE_FILE
        write_wall_pressure(result, facet_tags, list(fp.wall_tags), wall_file)
        data["field_files"] = [str(f) for f in files] + [str(wall_file)]
    if comm.rank == 0:
        write_json(out_json, data)
    comm.barrier()
    return data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print("usage: python -m workflows.flow.solve_stage MESH PROBLEM_JSON OUT_JSON [FIELDS_DIR]", file=sys.stderr)
        return 2
    msh, problem, out_json = args[:3]
    fields = args[3] if len(args) == 4 else None
    try:
        solve_to_json(msh, json.loads(problem), out_json, fields)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
