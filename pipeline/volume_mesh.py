"""Tagged watertight surface -> tagged tetrahedral mesh (gmsh) for the flow solver.

The triangles of a :class:`pipeline.surface.TaggedSurface` are loaded into gmsh as a
discrete surface, the edges between differently tagged faces (the cap rims) are added as
feature lines, and the surface is classified and re-parametrised
(``classifySurfaces`` + ``createGeometry``, as in gmsh tutorial t13; Geuzaine & Remacle
2009, "Gmsh: a 3-D finite element mesh generator", IJNME 79:1309). The wall and the flat
caps are then remeshed and the fluid volume filled with tetrahedra (Delaunay + the default
optimiser) whose size is ``local radius / cells_per_radius``; the local radius comes from
the nearest centreline point of the surface's skeleton. Each classified surface keeps the
tag of the input faces it was made from, so every boundary triangle is in exactly one
physical group:

* volume ``"fluid"`` (cell tag ``FLUID = 1``),
* surfaces ``"wall"`` (1), ``"inlet"`` (2), ``"outlet1"`` (3), ``"outlet2"`` (4), ...

Outputs, in ``out_dir`` under fixed names (written atomically):

* ``mesh.msh`` - gmsh 4.1 with physical groups; read by ``dolfinx.io.gmsh.read_from_msh``,
* ``mesh.xdmf`` (+ ``mesh.h5``) - tetrahedra with ``cell_tags``,
* ``facets.xdmf`` (+ ``facets.h5``) - boundary triangles with ``facet_tags``,
* ``mesh.vtu`` - for ParaView,
* ``mesh_info.json`` - boundaries, caps and mesh statistics.

Element quality is gmsh's ``gamma`` (inscribed / circumscribed radius ratio, scaled to 1
for the regular tetrahedron) and ``minSICN`` (signed inverse condition number).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physics.atomic import atomic_files
from physics.atomic import to_jsonable as _jsonable
from pipeline.surface import FLUID, INLET, OUTLET_FIRST, WALL, TaggedSurface

__all__ = ["MeshingError", "VolumeMesh", "mesh_volume", "jet_sizing_radius", "FLUID", "MESH_FILES", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
MESH_FILES = ("mesh.msh", "mesh.xdmf", "mesh.h5", "facets.xdmf", "facets.h5", "mesh.vtu", "mesh_info.json")

# gmsh element type ids
_TRI = {1: 2, 2: 9}
_TET = {1: 4, 2: 11}


class MeshingError(ValueError):
    """Invalid meshing parameters or a gmsh failure (the message names the likely cause)."""


class _Retry(MeshingError):
    """A meshing failure that finer elements resolve; ``boxes`` (lo, hi world mm) say where, if known."""

    def __init__(self, message: str, boxes=None):
        super().__init__(message)
        self.boxes = list(boxes or [])


class _SelfIntersection(_Retry):
    """gmsh found the re-meshed wall crossing itself ("PLC Error: ... intersect", "overlapping facets")."""


class _FlatTetrahedra(_Retry):
    """Inverted tetrahedra, or ones so flat (gamma below ``_GAMMA_FLAT``) that they carry no volume."""


#: Tetrahedra of lower quality (gamma: inscribed over circumscribed radius, times 3) are flat.
_GAMMA_FLAT = 1e-6


class _LockedTetrahedra(_Retry):
    """Tetrahedra whose every edge lies on the no-slip wall or the inlet (a gap one element thick).

    Every velocity unknown of a Taylor-Hood element there is fixed, so the pressure at its
    vertices is undetermined: the Stokes matrix is singular (MUMPS: INFOG(1) = -10).
    """


@dataclass
class VolumeMesh:
    """Paths and statistics of a tagged tetrahedral mesh.

    Attributes
    ----------
    msh_path, xdmf_path, facets_xdmf_path, vtu_path, info_path : Path
        The written files (see module docstring).
    stats : dict
        ``n_nodes``, ``n_tetrahedra``, ``n_facets`` (per boundary name), ``quality_gamma``
        and ``quality_sicn`` (min / mean / p5), ``volume_mm3``, ``surface_volume_mm3``,
        ``facet_area_mm2`` per boundary, ``edge_length_mm`` (min / mean / max), ``order``.
    boundaries : dict
        Boundary name -> facet tag (``"wall"``, ``"inlet"``, ``"outlet1"``, ...), plus
        ``"caps"`` (cap geometry list) and ``"cell_tags"`` (``{"fluid": 1}``).
    """

    msh_path: Path
    xdmf_path: Path
    facets_xdmf_path: Path
    vtu_path: Path
    info_path: Path
    stats: dict = field(default_factory=dict)
    boundaries: dict = field(default_factory=dict)


def _check_positive(value, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise MeshingError(f"{name} must be a positive number{' or None' if allow_none else ''}, got {value!r}")


def _tet_volumes(x: np.ndarray, tets: np.ndarray) -> np.ndarray:
    a, b, c, d = (x[tets[:, i]] for i in range(4))
    return np.einsum("ij,ij->i", b - a, np.cross(c - a, d - a)) / 6.0


def _tri_areas(x: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = (x[tris[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def _three(v: np.ndarray) -> dict:
    return {"min": float(np.min(v)), "mean": float(np.mean(v)), "p5": float(np.percentile(v, 5)),
            "max": float(np.max(v))}


#: When gmsh reports a self-intersecting re-meshed wall, retry this many times with elements
#: this factor finer (cells per radius up, largest size down).
_PLC_RETRIES = 2
_PLC_REFINE = 1.5


def mesh_volume(
    surface: TaggedSurface,
    out_dir: str | os.PathLike,
    *,
    cells_per_radius: float = 4.0,
    min_size_mm: float | None = None,
    max_size_mm: float | None = None,
    order: int = 1,
    optimize: bool = True,
    verbose: bool = False,
    jet_spread: float | None = None,
) -> VolumeMesh:
    """Fill a tagged watertight surface with tagged tetrahedra and write the mesh files.

    Parameters
    ----------
    surface : TaggedSurface
        Closed surface with ``WALL``/``INLET``/outlet face tags and a sizing centreline.
    out_dir : path
        Folder for ``mesh.msh``, ``mesh.xdmf``, ``facets.xdmf``, ``mesh.vtu`` and
        ``mesh_info.json`` (created if missing; files replaced atomically).
    cells_per_radius : float
        Target element size is ``local radius / cells_per_radius`` (mm). Must be in (0, 50].
    min_size_mm, max_size_mm : float, optional
        Clamp the element size (mm). Defaults: ``min radius / (2 cells_per_radius)`` and
        ``max radius / cells_per_radius * 2`` over the centreline.
    order : {1, 2}
        Geometric order; 2 gives 10-node tetrahedra with mid-edge nodes on the curved wall.
    optimize : bool
        Run gmsh's tetrahedron optimiser (and, for order 2, the high-order optimiser).
    verbose : bool
        Let gmsh print to the terminal.
    jet_spread : float, optional
        Size the jet downstream of every narrowing: the sizing radius of a centreline point is
        the least of its own radius and, over the points upstream of it (along the skeleton
        from the inlet), their radius plus ``jet_spread`` times the distance between them, so
        the elements stay at the throat's scale where its jet and shear layer run and widen
        back at that rate (see :func:`jet_sizing_radius`). None: the local radius only.

    Returns
    -------
    VolumeMesh

    Raises
    ------
    MeshingError
        Bad parameters, or gmsh failed (usually a self-intersecting or non-manifold
        surface, or a size too coarse for a narrow vessel). A re-meshed wall that crosses
        itself, or tetrahedra whose every edge lies on the wall or the inlet (the pressure there
        would be undetermined), are first retried with 1.5x and 2.25x finer elements
        (``stats["meshing_refinements"]``); the error names where they are.
    """
    if not isinstance(surface, TaggedSurface):
        raise MeshingError(f"surface must be a pipeline.surface.TaggedSurface, got {type(surface).__name__}")
    _check_positive(cells_per_radius, "cells_per_radius", allow_none=False)
    if cells_per_radius > 50:
        raise MeshingError(f"cells_per_radius={cells_per_radius} is too fine (valid: (0, 50])")
    _check_positive(min_size_mm, "min_size_mm")
    _check_positive(max_size_mm, "max_size_mm")
    if min_size_mm is not None and max_size_mm is not None and min_size_mm > max_size_mm:
        raise MeshingError(f"min_size_mm={min_size_mm} exceeds max_size_mm={max_size_mm}")
    if order not in (1, 2) or isinstance(order, bool):
        raise MeshingError(f"order must be 1 or 2, got {order!r}")
    present = {int(t) for t in np.unique(surface.face_tags)}
    if WALL not in present or INLET not in present or not any(t >= OUTLET_FIRST for t in present):
        raise MeshingError(
            f"surface face tags {sorted(present)} lack a wall ({WALL}), an inlet ({INLET}) or an "
            f"outlet (>= {OUTLET_FIRST}); build the surface with pipeline.surface.make_tagged_surface"
        )
    if len(surface.centreline_radius_mm) == 0 or not np.all(surface.centreline_radius_mm > 0):
        raise MeshingError("the surface has no centreline with positive radii, needed for mesh sizing")

    radius = np.asarray(surface.centreline_radius_mm, float)
    sizing_radius = None
    if jet_spread is not None:
        _check_positive(jet_spread, "jet_spread", allow_none=False)
        sizing_radius = jet_sizing_radius(surface, float(jet_spread))
    if min_size_mm is None:
        min_size_mm = float(radius.min()) / (2.0 * cells_per_radius)
    if max_size_mm is None:
        max_size_mm = 2.0 * float(radius.max()) / cells_per_radius
    if min_size_mm > max_size_mm:
        raise MeshingError(f"min_size_mm={min_size_mm} exceeds max_size_mm={max_size_mm}")

    out = Path(out_dir)
    with atomic_files(out, last="mesh_info.json") as tmp_dir:
        requested = float(cells_per_radius)
        fine: list[tuple[np.ndarray, np.ndarray]] = []  # where elements are made finer (boxes, mm)
        for refinement in range(_PLC_RETRIES + 1):
            try:
                stats, name_of_tag = _run_gmsh(surface, tmp_dir / "mesh.msh", cells_per_radius, float(min_size_mm),
                                               float(max_size_mm), int(order), bool(optimize), bool(verbose), fine,
                                               sizing_radius)
                break
            except _Retry as exc:
                # gmsh's re-meshed wall crosses itself, or elements span a gap from wall to wall,
                # where two walls come closer than an element (a deep notch at a branch): finer
                # elements there resolve it (everywhere when gmsh does not say where)
                if refinement == _PLC_RETRIES:
                    raise
                if exc.boxes:
                    fine.extend((lo - 2.0 * max_size_mm, hi + 2.0 * max_size_mm) for lo, hi in exc.boxes)
                else:
                    cells_per_radius *= _PLC_REFINE
                    max_size_mm /= _PLC_REFINE
        stats["refined_boxes_mm"] = [[np.round(lo, 1).tolist(), np.round(hi, 1).tolist()] for lo, hi in fine]
        stats["meshing_refinements"] = refinement
        stats["cells_per_radius_requested"] = requested
        _export_meshio(tmp_dir, stats, name_of_tag)
        boundaries: dict[str, Any] = {"wall": WALL}
        for c in surface.caps:
            boundaries[c.name] = int(c.tag)
        boundaries["caps"] = [asdict(c) for c in surface.caps]
        boundaries["cell_tags"] = {"fluid": FLUID}
        stats["surface_volume_mm3"] = float(surface.volume_mm3)
        stats["cells_per_radius"] = float(cells_per_radius)
        stats["jet_spread"] = None if jet_spread is None else float(jet_spread)
        stats["min_size_mm"] = float(min_size_mm)
        stats["max_size_mm"] = float(max_size_mm)
        info = {"schema_version": SCHEMA_VERSION, "boundaries": boundaries, "stats": stats,
                "files": {k: k for k in MESH_FILES}, "units": "mm"}
        (tmp_dir / "mesh_info.json").write_text(json.dumps(_jsonable(info), indent=2))
        for f in tmp_dir.iterdir():  # only the declared files are published
            if f.name not in MESH_FILES:
                f.unlink()
    return VolumeMesh(
        msh_path=out / "mesh.msh", xdmf_path=out / "mesh.xdmf", facets_xdmf_path=out / "facets.xdmf",
        vtu_path=out / "mesh.vtu", info_path=out / "mesh_info.json",
        stats=_jsonable(stats), boundaries=_jsonable(boundaries),
    )


#: Nearest skeleton neighbours joined in the graph along which a jet's sizing radius is carried.
_JET_NEIGHBOURS = 4


def jet_sizing_radius(surface: TaggedSurface, spread: float) -> np.ndarray:
    """Sizing radius (mm) per centreline point that keeps a narrowing's scale along its jet.

    Each point p takes min(r(p), min over points q upstream of it of r(q) + ``spread`` |p − q|),
    where upstream means nearer the inlet along the skeleton: the skeleton points (sparse,
    with gaps) are joined to their ``_JET_NEIGHBOURS`` nearest neighbours and their distance
    from the point nearest the inlet cap is found by Dijkstra (unreached points use the
    straight distance). Only points narrower than the widest can shape the field, and each
    reaches at most (r_max − r(q)) / spread.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    pts = np.asarray(surface.centreline_xyz_mm, float)
    r = np.asarray(surface.centreline_radius_mm, float)
    env = r.copy()
    if len(pts) < 2:
        return env
    tree = cKDTree(pts)
    k = min(_JET_NEIGHBOURS + 1, len(pts))
    d, nb = tree.query(pts, k=k)
    rows = np.repeat(np.arange(len(pts)), k - 1)
    graph = coo_matrix((d[:, 1:].ravel(), (rows, nb[:, 1:].ravel())), shape=(len(pts), len(pts))).tocsr()
    graph = graph.maximum(graph.T)  # symmetric: each point's nearest neighbours, both ways
    inlet = next((c for c in surface.caps if c.tag == INLET), surface.caps[0])
    inlet_xyz = np.asarray(inlet.centre_xyz_mm, float)
    g = dijkstra(graph, indices=int(tree.query(inlet_xyz)[1]))
    lost = ~np.isfinite(g)
    g[lost] = np.linalg.norm(pts[lost] - inlet_xyz, axis=1)
    r_max = float(r.max())
    for q in np.flatnonzero(r < r_max):
        near = np.asarray(tree.query_ball_point(pts[q], (r_max - r[q]) / spread), dtype=np.int64)
        near = near[g[near] >= g[q]]
        if len(near):
            env[near] = np.minimum(env[near], r[q] + spread * np.linalg.norm(pts[near] - pts[q], axis=1))
    return env


def _run_gmsh(surface: TaggedSurface, msh_path: Path, cells_per_radius: float, min_size: float,
              max_size: float, order: int, optimize: bool, verbose: bool, fine=(),
              sizing_radius: np.ndarray | None = None) -> tuple[dict, dict]:
    """Mesh the surface with gmsh and write ``msh_path``; returns (statistics in mm, boundary name by tag)."""
    import gmsh

    owns = not gmsh.isInitialized()
    if owns:
        gmsh.initialize(interruptible=False)
    model_name = f"digipat-{os.getpid()}-{id(surface)}"
    try:
        gmsh.option.setNumber("General.Terminal", 1 if verbose else 0)
        gmsh.model.add(model_name)
        V = np.asarray(surface.vertices_xyz_mm, float)
        F = np.asarray(surface.faces, np.int64)
        tags = np.asarray(surface.face_tags, np.int64)
        _add_tagged_triangles(gmsh, V, F, tags)
        _classify_surfaces(gmsh)
        by_tag = _classified_surfaces_by_tag(gmsh, V, F, tags)
        vol, name_of_tag = _add_fluid_volume(gmsh, surface, by_tag)
        _set_mesh_size(gmsh, surface, cells_per_radius, min_size, max_size, optimize, fine, sizing_radius)
        _generate(gmsh, optimize)
        n_flat = _remove_flat_slivers(gmsh, vol)
        n_split = _split_boundary_tetrahedra(gmsh, vol, by_tag)
        if order == 2:
            # (no "HighOrder" optimisation: on some surfaces gmsh aborts the whole process in it)
            gmsh.model.mesh.setOrder(2)
        stats = _mesh_statistics(gmsh, vol, by_tag, name_of_tag, order)
        stats["split_boundary_tetrahedra"] = n_split
        stats["removed_flat_slivers"] = n_flat
        gmsh.write(str(msh_path))
        return stats, name_of_tag
    finally:
        try:
            gmsh.model.mesh.setSizeCallback(None)  # drop the reference to the Python callback
        except Exception:  # noqa: BLE001
            pass
        if owns:
            gmsh.finalize()
        else:
            try:
                gmsh.model.setCurrent(model_name)
                gmsh.model.remove()
            except Exception:  # noqa: BLE001
                pass


def _add_tagged_triangles(gmsh, V: np.ndarray, F: np.ndarray, tags: np.ndarray) -> None:
    """Load the triangles (vertices in mm) as one discrete surface, with the tag boundaries as feature lines."""
    import trimesh

    gmsh.model.addDiscreteEntity(2, 1)
    gmsh.model.mesh.addNodes(2, 1, np.arange(1, len(V) + 1).tolist(), V.ravel().tolist())
    gmsh.model.mesh.addElementsByType(1, 2, [], (F + 1).ravel().tolist())
    tm = trimesh.Trimesh(V, F, process=False)
    adj, adj_edges = tm.face_adjacency, tm.face_adjacency_edges
    rim = tags[adj[:, 0]] != tags[adj[:, 1]]
    gmsh.model.addDiscreteEntity(1, 1)
    gmsh.model.mesh.addElementsByType(1, 1, [], (adj_edges[rim] + 1).ravel().tolist())


def _classify_surfaces(gmsh) -> None:
    """Split the discrete surface along the feature lines and re-parametrise the pieces (gmsh tutorial t13)."""
    try:
        gmsh.model.mesh.classifySurfaces(np.pi, True, True, np.pi)
        gmsh.model.mesh.createGeometry()
    except Exception as exc:  # gmsh raises plain Exception
        raise MeshingError(
            f"gmsh could not classify/re-parametrise the surface ({exc}). Likely cause: a "
            "non-manifold or self-intersecting surface; try more smoothing, a coarser "
            "target_edge_mm, or check the segmentation for touching vessels"
        ) from None


def _node_positions(gmsh) -> np.ndarray:
    """Coordinates (mm) of all gmsh nodes, indexed by node tag."""
    node_tags, node_xyz, _ = gmsh.model.mesh.getNodes()
    pos = np.zeros((int(node_tags.max()) + 1, 3))
    pos[node_tags.astype(np.int64)] = node_xyz.reshape(-1, 3)
    return pos


def _classified_surfaces_by_tag(gmsh, V: np.ndarray, F: np.ndarray, tags: np.ndarray) -> dict[int, list[int]]:
    """Input face tag -> classified gmsh surfaces, matched by their triangles' centroids (mm)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(V[F].mean(axis=1))
    pos = _node_positions(gmsh)
    by_tag: dict[int, list[int]] = {}
    for _, s in gmsh.model.getEntities(2):
        _, _, enodes = gmsh.model.mesh.getElements(2, s)
        if not enodes or len(enodes[0]) == 0:
            continue
        tri = np.asarray(enodes[0], np.int64).reshape(-1, 3)
        _, idx = tree.query(pos[tri].mean(axis=1))
        t_in = tags[idx]
        vals, counts = np.unique(t_in, return_counts=True)
        if len(vals) > 1:
            raise MeshingError(
                f"classified gmsh surface {s} mixes face tags {vals.tolist()}: the cap rims "
                "were not kept as feature edges (non-manifold surface?)"
            )
        by_tag.setdefault(int(vals[0]), []).append(s)
    if set(by_tag) != {int(t) for t in np.unique(tags)}:
        raise MeshingError(f"tags {sorted(set(np.unique(tags)) - set(by_tag))} were lost in gmsh classification")
    return by_tag


def _add_fluid_volume(gmsh, surface: TaggedSurface, by_tag: dict[int, list[int]]) -> tuple[int, dict[int, str]]:
    """The volume inside the classified surfaces and the physical groups; returns (volume tag, name by tag)."""
    surfaces = [s for _, s in gmsh.model.getEntities(2)]
    loop = gmsh.model.geo.addSurfaceLoop(surfaces)
    vol = gmsh.model.geo.addVolume([loop])
    gmsh.model.geo.synchronize()

    name_of_tag = {WALL: "wall"}
    for c in surface.caps:
        name_of_tag[int(c.tag)] = c.name
    for t, ents in sorted(by_tag.items()):
        gmsh.model.addPhysicalGroup(2, ents, t, name=name_of_tag.get(t, f"tag{t}"))
    gmsh.model.addPhysicalGroup(3, [vol], FLUID, name="fluid")
    return vol, name_of_tag


def _set_mesh_size(gmsh, surface: TaggedSurface, cells_per_radius: float, min_size: float, max_size: float,
                   optimize: bool, fine=(), sizing_radius: np.ndarray | None = None) -> None:
    """Size field local radius / cells_per_radius (mm, nearest centreline point, clamped) and mesher options.

    Inside each box of ``fine`` (lo, hi world mm; a place an earlier try failed) the size is
    ``_PLC_REFINE`` times smaller per box holding the point.
    """
    from scipy.spatial import cKDTree

    cl_tree = cKDTree(np.asarray(surface.centreline_xyz_mm, float))
    cl_r = np.asarray(surface.centreline_radius_mm if sizing_radius is None else sizing_radius, float)
    boxes = [(np.asarray(lo, float), np.asarray(hi, float)) for lo, hi in fine]

    def size_cb(dim, tag, x, y, z, lc):  # noqa: ARG001 - gmsh callback signature
        _, i = cl_tree.query((x, y, z))
        size = cl_r[i] / cells_per_radius
        if boxes:
            p = np.array((x, y, z))
            size /= _PLC_REFINE ** sum(bool(np.all(p >= lo) and np.all(p <= hi)) for lo, hi in boxes)
        return float(min(max(size, min_size), max_size))

    gmsh.model.mesh.setSizeCallback(size_cb)  # gmsh keeps a reference until it is reset to None
    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    gmsh.option.setNumber("Mesh.MeshSizeMin", min_size)
    gmsh.option.setNumber("Mesh.MeshSizeMax", max_size)
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay for the surfaces
    gmsh.option.setNumber("Mesh.Algorithm3D", 1)  # Delaunay
    gmsh.option.setNumber("Mesh.Optimize", 1 if optimize else 0)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.option.setNumber("Mesh.SaveAll", 0)


#: Netgen's optimiser is skipped when gmsh's own left a tetrahedron flatter than this (SICN): on
#: such "illegal" tetrahedra it can end the process with a segmentation fault (seen on the real
#: pulmonary CTA at 6 cells per radius); the flat slivers are removed afterwards either way.
_NETGEN_MIN_QUALITY = 1e-6


def _worst_tet_quality(gmsh) -> float:
    """Smallest signed inverse condition number (SICN) over the volume's tetrahedra."""
    types, tags, _ = gmsh.model.mesh.getElements(3)
    tet = [t for ty, t in zip(types, tags) if ty in (4, 11)]
    if not tet or len(tet[0]) == 0:
        return 1.0
    return float(np.min(gmsh.model.mesh.getElementQualities(tet[0], "minSICN")))


def _generate(gmsh, optimize: bool) -> None:
    """Generate the surface and volume mesh and optimise it (Netgen), still linear."""
    try:
        gmsh.model.mesh.generate(3)
        if optimize and _worst_tet_quality(gmsh) > _NETGEN_MIN_QUALITY:
            gmsh.model.mesh.optimize("Netgen")
    except MeshingError:
        raise
    except Exception as exc:
        text = str(exc).lower()
        if "intersect" in text or "overlapping facets" in text:
            raise _SelfIntersection(
                f"gmsh volume meshing failed ({exc}). Likely cause: two parts of the wall closer than an "
                "element (a notch at a branch, vessels side by side); try a larger cells_per_radius or more "
                "surface smoothing", _surface_overlap_boxes(gmsh, str(exc))) from None
        raise MeshingError(
            f"gmsh volume meshing failed ({exc}). Likely cause: a self-intersecting or "
            "non-manifold surface, or an element size too coarse for a narrow vessel; try "
            "a larger cells_per_radius, a smaller max_size_mm, or more surface smoothing"
        ) from None


def _surface_overlap_boxes(gmsh, message: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where gmsh's "overlapping facets on surface A surface B" lies: the overlap of the two
    surfaces' bounding boxes (world mm); none if the message names no surfaces or they do not overlap."""
    tags = sorted({int(t) for t in re.findall(r"surface (\d+)", message)})
    if not tags:
        return []
    try:
        bb = [np.asarray(gmsh.model.getBoundingBox(2, t), float) for t in tags]
    except Exception:  # noqa: BLE001 - gmsh raises plain Exception
        return []
    lo = np.max([b[:3] for b in bb], axis=0)
    hi = np.min([b[3:] for b in bb], axis=0)
    return [(lo, hi)] if np.all(lo <= hi) else []


def _mesh_statistics(gmsh, vol: int, by_tag: dict[int, list[int]], name_of_tag: dict[int, str],
                     order: int) -> dict:
    """Counts, element quality, volume (mm^3), facet areas (mm^2) and edge lengths (mm); rejects inverted tets."""
    et, etags, enodes = gmsh.model.mesh.getElements(3, vol)
    if len(et) == 0 or len(etags[0]) == 0:
        raise MeshingError("gmsh produced no tetrahedra (is the surface closed and outward oriented?)")
    tet_tags = np.asarray(etags[0], np.int64)
    npe = 4 if order == 1 else 10
    tets = np.asarray(enodes[0], np.int64).reshape(-1, npe)
    pos = _node_positions(gmsh)
    gamma = np.asarray(gmsh.model.mesh.getElementQualities(tet_tags.tolist(), "gamma"))
    sicn = np.asarray(gmsh.model.mesh.getElementQualities(tet_tags.tolist(), "minSICN"))
    vols = _tet_volumes(pos, tets[:, :4])
    e = np.concatenate([np.linalg.norm(pos[tets[:, a]] - pos[tets[:, b]], axis=1)
                        for a, b in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))])
    n_facets, facet_area, fixed = {}, {}, []
    for t, ents in sorted(by_tag.items()):
        tri_all = []
        for s in ents:
            _, _, tn = gmsh.model.mesh.getElements(2, s)
            tri_all.append(np.asarray(tn[0], np.int64).reshape(-1, 3 if order == 1 else 6))
        tri = np.vstack(tri_all)
        name = name_of_tag.get(t, f"tag{t}")
        n_facets[name] = int(len(tri))
        facet_area[name] = float(_tri_areas(pos, tri[:, :3]).sum())
        if t in (WALL, INLET):
            fixed.append(tri[:, :3])
    locked = _locked_tetrahedra(tets[:, :4], np.vstack(fixed), len(pos))
    if len(locked):
        where = np.round(pos[tets[locked, :4]].mean(axis=1), 1)
        raise _LockedTetrahedra(
            f"{len(locked)} tetrahedra have every edge on the wall or the inlet (a gap one element thick), so "
            f"the flow pressure there is undetermined; they lie at {where[:3].tolist()} mm (world): raise "
            "cells_per_radius (--cells-per-radius) or smooth the surface more, or move a clip away from there",
            _point_boxes(pos[tets[locked, :4]].mean(axis=1)))
    used = np.unique(tets)
    stats = {
        "n_nodes": int(len(used)),
        "n_tetrahedra": int(len(tets)),
        "n_facets": n_facets,
        "facet_area_mm2": facet_area,
        "quality_gamma": _three(gamma),
        "quality_sicn": _three(sicn),
        "n_inverted": int(np.count_nonzero(vols <= 0)),
        "volume_mm3": float(vols.sum()),
        "edge_length_mm": {"min": float(e.min()), "mean": float(e.mean()), "max": float(e.max())},
        "order": int(order),
    }
    if stats["n_inverted"] > 0 or gamma.min() < _GAMMA_FLAT:
        bad = np.flatnonzero((vols <= 0) | (gamma < _GAMMA_FLAT))
        where = np.round(pos[tets[bad[:3], :4]].mean(axis=1), 1)
        raise _FlatTetrahedra(
            f"gmsh produced {stats['n_inverted']} inverted and {int(np.count_nonzero(gamma < _GAMMA_FLAT))} flat "
            f"tetrahedra (min gamma {gamma.min():.3g}) at {where.tolist()} mm (world); likely a self-intersecting "
            "or folded surface there: try more smoothing or a larger cells_per_radius, or move a clip away from there",
            _point_boxes(pos[tets[bad, :4]].mean(axis=1)))
    return stats


def _remove_flat_slivers(gmsh, vol: int) -> int:
    """Remove flat tetrahedra lying on the wall (two faces on the boundary); return how many.

    Such a sliver (volume ~0, all four vertices on the surface, two of its faces boundary
    triangles) is an edge of the surface that the volume mesher bridged: dropping it and making
    its two inner faces the boundary instead is an edge flip on the surface that changes the
    volume by nothing, and no refinement removes it (it comes back at every mesh size).
    """
    _, etags, enodes = gmsh.model.mesh.getElements(3, vol)
    if len(etags) == 0 or len(etags[0]) == 0:
        return 0
    tet_tags = np.asarray(etags[0], np.int64)
    tets = np.asarray(enodes[0], np.int64).reshape(-1, 4)
    pos = _node_positions(gmsh)
    e = np.max([np.linalg.norm(pos[tets[:, a]] - pos[tets[:, b]], axis=1)
                for a, b in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))], axis=0)
    flat = np.flatnonzero(np.abs(_tet_volumes(pos, tets)) < 1e-6 * e ** 3)
    if len(flat) == 0:
        return 0
    surf = {}  # surface entity -> its triangles (n, 3), edited in memory and written back at the end
    owner = {}  # sorted node triple -> surface entity
    for _, ent in gmsh.model.getEntities(2):
        _, _, tn = gmsh.model.mesh.getElements(2, ent)
        if len(tn):
            surf[ent] = [tuple(int(v) for v in t) for t in np.asarray(tn[0], np.int64).reshape(-1, 3)]
            for t in surf[ent]:
                owner[tuple(sorted(t))] = ent
    gone_tets, changed = [], set()
    for k in flat:
        t = tets[k]
        faces = [t[[0, 1, 2]], t[[0, 1, 3]], t[[0, 2, 3]], t[[1, 2, 3]]]
        keys = [tuple(sorted(int(v) for v in f)) for f in faces]
        on = [owner.get(key) for key in keys]
        b = [i for i, o in enumerate(on) if o is not None]
        if len(b) != 2 or (on[b[0]] != on[b[1]] and list(gmsh.model.getPhysicalGroupsForEntity(2, on[b[0]]))
                           != list(gmsh.model.getPhysicalGroupsForEntity(2, on[b[1]]))):
            continue  # (two patches of one boundary, such as the wall, may share it)
        found = [next((x for x in surf[on[i]] if tuple(sorted(x)) == keys[i]), None) for i in b]
        if any(x is None for x in found):
            continue  # (a triangle gmsh holds twice: leave this sliver to the quality check)
        if found[0] == found[1] or (on[b[0]] == on[b[1]] and surf[on[b[0]]].count(found[0]) != 1):
            continue
        n = 0.0
        for i, tri in zip(b, found):
            n = n + np.cross(pos[tri[1]] - pos[tri[0]], pos[tri[2]] - pos[tri[0]])
            surf[on[i]].remove(tri)
            del owner[keys[i]]
            changed.add(on[i])
        ent = on[b[0]]
        for i, f in enumerate(faces):
            if on[i] is None:
                if np.cross(pos[f[1]] - pos[f[0]], pos[f[2]] - pos[f[0]]) @ n < 0:
                    f = f[[0, 2, 1]]
                surf[ent].append(tuple(int(v) for v in f))
                owner[keys[i]] = ent
        changed.add(ent)
        gone_tets.append(int(tet_tags[k]))
    if not gone_tets:
        return 0
    gmsh.model.mesh.removeElements(3, vol, gone_tets)
    for ent in changed:  # (rewrite the edited surfaces whole: gmsh does not remove single triangles reliably)
        gmsh.model.mesh.removeElements(2, ent)
        gmsh.model.mesh.addElementsByType(ent, 2, [], np.asarray(surf[ent], np.int64).ravel().tolist())
    gmsh.model.mesh.renumberElements()
    return len(gone_tets)


def _split_boundary_tetrahedra(gmsh, vol: int, by_tag: dict[int, list[int]]) -> int:
    """Split every tetrahedron whose four vertices lie on the no-slip wall or the inlet; return how many.

    Taylor-Hood (P2-P1) is stable in 3-D when every tetrahedron has a vertex inside the domain
    (Boffi 1997, SIAM J. Numer. Anal. 34: 664-670). A tetrahedron with all its vertices on the
    Dirichlet boundary (a thin gap between two walls, a sharp rim where a cap meets the wall)
    breaks that, and where all its edges lie on it too the Stokes matrix is singular. Each is
    split into four at its centroid (a new inside vertex); the boundary triangles are untouched.
    """
    _, etags, enodes = gmsh.model.mesh.getElements(3, vol)
    if len(etags) == 0 or len(etags[0]) == 0:
        return 0
    tet_tags = np.asarray(etags[0], np.int64)
    tets = np.asarray(enodes[0], np.int64).reshape(-1, 4)
    fixed = []
    for t in (WALL, INLET):
        for ent in by_tag.get(t, []):
            _, _, tn = gmsh.model.mesh.getElements(2, ent)
            if len(tn):
                fixed.append(np.asarray(tn[0], np.int64))
    on = np.isin(tets, np.unique(np.concatenate(fixed))).all(axis=1) if fixed else np.zeros(len(tets), bool)
    if not on.any():
        return 0
    node_tags, coord, _ = gmsh.model.mesh.getNodes()
    pos = np.zeros((int(node_tags.max()) + 1, 3))
    pos[np.asarray(node_tags, np.int64)] = np.asarray(coord).reshape(-1, 3)
    # (a flat one stays: its children would be as flat, and the quality check reports it)
    edge = np.linalg.norm(pos[tets[:, 1]] - pos[tets[:, 0]], axis=1)
    on &= _tet_volumes(pos, tets) > 1e-6 * edge ** 3
    k = np.flatnonzero(on)
    if len(k) == 0:
        return 0
    sel = tets[k]
    new = int(gmsh.model.mesh.getMaxNodeTag()) + 1 + np.arange(len(k))
    gmsh.model.mesh.addNodes(3, vol, new.tolist(), pos[sel].mean(axis=1).ravel().tolist())
    gmsh.model.mesh.removeElements(3, vol, tet_tags[k].tolist())
    parts = []
    for j in range(4):  # replace one vertex at a time by the centroid: orientation is kept
        t = sel.copy()
        t[:, j] = new
        parts.append(t)
    gmsh.model.mesh.addElementsByType(vol, 4, [], np.vstack(parts).ravel().tolist())
    gmsh.model.mesh.renumberNodes()  # contiguous tags 1..N, as dolfinx's reader needs
    gmsh.model.mesh.renumberElements()
    return int(len(k))


def _point_boxes(points) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(p, float), np.asarray(p, float)) for p in np.asarray(points, float).reshape(-1, 3)]


def _locked_tetrahedra(tets: np.ndarray, fixed_tris: np.ndarray, n_nodes: int) -> np.ndarray:
    """Indices of the tetrahedra all six of whose edges are edges of the given (no-slip) triangles."""
    def keys(a, b):
        return np.minimum(a, b).astype(np.int64) * (n_nodes + 1) + np.maximum(a, b)

    edge = np.unique(np.concatenate([keys(fixed_tris[:, i], fixed_tris[:, j]) for i, j in ((0, 1), (1, 2), (0, 2))]))
    on = np.ones(len(tets), bool)
    for i, j in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)):
        on &= np.isin(keys(tets[:, i], tets[:, j]), edge)
    return np.flatnonzero(on)


def _export_meshio(tmp_dir: Path, stats: dict, name_of_tag: dict) -> None:
    """Write mesh.xdmf (tets + cell_tags), facets.xdmf (triangles + facet_tags) and mesh.vtu."""
    import meshio

    m = meshio.read(tmp_dir / "mesh.msh", file_format="gmsh")
    phys = m.cell_data.get("gmsh:physical")
    if phys is None:
        raise MeshingError("mesh.msh has no physical groups (internal error)")
    vol_blocks, vol_tags, fac_blocks, fac_tags = [], [], [], []
    for block, tag in zip(m.cells, phys):
        if block.type.startswith("tetra"):
            vol_blocks.append(block.data)
            vol_tags.append(np.asarray(tag, np.int32))
            vtype = block.type
        elif block.type.startswith("triangle"):
            fac_blocks.append(block.data)
            fac_tags.append(np.asarray(tag, np.int32))
            ftype = block.type
    tets = np.vstack(vol_blocks)
    tris = np.vstack(fac_blocks)
    ct = np.concatenate(vol_tags)
    ft = np.concatenate(fac_tags)
    vmesh = meshio.Mesh(m.points, [(vtype, tets)], cell_data={"cell_tags": [ct]})
    fmesh = meshio.Mesh(m.points, [(ftype, tris)], cell_data={"facet_tags": [ft]})
    meshio.write(tmp_dir / "mesh.xdmf", vmesh)
    meshio.write(tmp_dir / "facets.xdmf", fmesh)
    meshio.write(tmp_dir / "mesh.vtu", meshio.Mesh(m.points, [(vtype, tets)], cell_data={"cell_tags": [ct]}))
