"""Mesh a finished run's lumen surface again, in a process of its own.

``python -m workflows.flow.mesh_stage RUN_DIR OUT_DIR CELLS_PER_RADIUS ORDER JET_SPREAD``
reads ``RUN_DIR/surface.vtp`` (tagged wall and caps) and the centreline in
``RUN_DIR/surface.json``, meshes it with :func:`pipeline.volume_mesh.mesh_volume` at
``CELLS_PER_RADIUS`` (``JET_SPREAD``: a number, or ``none``) and writes the mesh files to
``OUT_DIR`` (``mesh.msh``, ``mesh_info.json`` with the statistics, ...).

Why a process of its own: gmsh can end the whole process with a segmentation fault on some
surfaces at some element sizes (seen on the real pulmonary CTA's surface at exactly 6 cells
per radius, but not at 5.9 or 6.1). The numerical error estimate's second mesh is made here, so
such a crash costs the estimate, not the run. Exit status 0 when the mesh is written; 1 with
one line on standard error for a meshing error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def load_run_surface(run_dir: Path):
    """The tagged surface of a finished run (``surface.vtp``) with its centreline radii."""
    from pipeline.surface import read_surface_json, surface_from_mesh_file

    sj = read_surface_json(run_dir / "surface.json")
    cl = sj.get("centreline") or {}
    return surface_from_mesh_file(run_dir / "surface.vtp",
                                  centreline_xyz_mm=np.asarray(cl["xyz_mm"], float) if cl.get("xyz_mm") else None,
                                  centreline_radius_mm=np.asarray(cl["radius_mm"], float) if cl.get("radius_mm")
                                  else None)


def main(argv: list[str] | None = None) -> int:
    from pipeline.volume_mesh import mesh_volume

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    run_dir, out_dir, cpr, order, jet = args
    try:
        mesh_volume(load_run_surface(Path(run_dir)), Path(out_dir), cells_per_radius=float(cpr), order=int(order),
                    jet_spread=None if jet == "none" else float(jet))
    except ValueError as exc:  # (MeshingError and bad surfaces)
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
