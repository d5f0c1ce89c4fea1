"""The flow-solve stage, runnable in-process or under ``mpiexec -n N``.

``python -m workflows._solve_stage MESH.msh PROBLEM_JSON OUT.json [FIELDS_DIR]`` loads the
mesh (distributed over the ranks), solves, and rank 0 writes ``OUT.json`` atomically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def solve_to_json(msh: str | Path, problem: dict, out_json: str | Path, fields_dir: str | Path | None) -> dict:
    from mpi4py import MPI

    from physics.flow import FlowProblem, load_mesh, solve_flow
    from workflows._io import write_json_atomic

    comm = MPI.COMM_WORLD
    mesh, _cell_tags, facet_tags = load_mesh(str(msh), comm, length_unit_m=1e-3)
    result = solve_flow(mesh, facet_tags, FlowProblem.from_dict(problem))
    data = result.to_dict()
    data["n_ranks"] = comm.size
    if fields_dir is not None:
        files = result.write_fields(fields_dir)
        data["field_files"] = [str(f) for f in files]
    if comm.rank == 0:
        write_json_atomic(out_json, data)
    comm.barrier()
    return data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print("usage: python -m workflows._solve_stage MESH PROBLEM_JSON OUT_JSON [FIELDS_DIR]", file=sys.stderr)
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
