"""Centreline tree of a lumen mask, and where a vessel model is clipped (the VMTK recipe on voxels).

A real angiogram's lumen is a tree: it branches, ends inside the image, continues into the
heart or leaves through an image face. This module finds the tree and decides where the
model's inlet and outlets are cut, in the manner of VMTK's centreline-based clipping
(Antiga et al. 2008, "An image-based modeling framework for patient-specific computational
hemodynamics", Med Biol Eng Comput 46:1097), computed on the voxel grid instead of on a
Voronoi diagram of the surface:

1. **Skeleton** of the mask by thinning (Lee et al. 1994, ``skimage.morphology.skeletonize``),
   with the mask extended by edge replication beyond the image faces it touches, so that a
   vessel leaving the image keeps its centreline up to the face.
2. **Radius** of the maximum inscribed sphere at each skeleton voxel: the Euclidean distance
   transform in mm (anisotropic spacing honoured).
3. **Graph**: skeleton voxels joined to their 26-neighbours (edge length in mm), reduced to
   its minimum spanning tree, which removes the voxel-scale triangles of thinning at
   junctions (and breaks any larger loop: those cuts are not vessel ends, see ``loop_cuts``).
   Spurs (a terminal branch shorter than ``spur_ratio`` times the radius where it joins the
   tree) are pruned: they are bumps of the wall, not vessels.
4. **Clip plan**: the inlet is the widest end (radius where the end's radius is steady) or
   the centreline point nearest ``inlet_xyz``; the side of the tree away from the widest end
   (or holding the named outlets) is kept. Outlets are the other ends, or the points named
   in ``outlets_xyz``. An end is clipped where the radius has become steady, past the rounded
   tip of an end inside the image or at least one radius and a voxel inside an image face.
   A branch whose radius is below ``min_branch_radius_mm`` is cut off next to its junction
   and closed (its cap is wall). Each clip plane is perpendicular to the local centreline
   (principal direction of the points within 1.5 radii, at least three voxels, of the clip
   point; on the branch side only at a closed branch).

When the inlet and the outlets are named, VMTK's own recipe is followed instead: the
centrelines are minimal paths through the lumen with step cost 1 / radius
(:func:`minimal_paths`), and the clips sit at the named points (:func:`plan_from_paths`).
Either way the lumen is first reduced to the vessels along the paths (:func:`tube_region`:
a watershed of the distance map separates what only touches them, such as the heart or a
neighbouring vessel); :func:`model_region` does all of it on the lumen's bounding box.

Everything is in world ``(x, y, z)`` mm (LPS, see :mod:`pipeline.image`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.image import Volume

__all__ = ["CentrelineError", "CentrelineTree", "Clip", "ClipPlan", "centreline_tree", "plan_clips",
           "minimal_paths", "tube_region", "plan_from_paths", "model_region", "modelled_voxels",
           "write_centreline_vtp", "track_vessel_ends", "main_vessel_seed"]

#: A terminal branch shorter than this many radii of its junction is a spur of the wall.
SPUR_RATIO = 1.5
#: The radius is "steady" where it changes by less than this fraction over one radius of arc.
STEADY_RADIUS_TOLERANCE = 0.2
#: The clip normal is fitted to the centreline over this many radii of arc.
TANGENT_WINDOW_RADII = 1.5
#: Default smallest kept branch: this many of the finest voxel sizes (radius, mm) ...
MIN_BRANCH_RADIUS_VOXELS = 2.0
#: ... or this fraction of the inlet radius, whichever is larger.
MIN_BRANCH_RADIUS_INLET_FRACTION = 0.25


class CentrelineError(ValueError):
    """A mask or a point that gives no usable centreline model (the message says why and what to do)."""


@dataclass
class CentrelineTree:
    """Skeleton tree of a lumen mask.

    Attributes
    ----------
    points_xyz_mm : ndarray, shape (N, 3)
        Skeleton voxel centres, world mm.
    radius_mm : ndarray, shape (N,)
        Radius of the maximum inscribed sphere at each point (distance to the wall), mm.
    edges : ndarray, shape (E, 2)
        The tree's edges (point ids).
    face_of_point : ndarray, shape (N,)
        For points within two voxels of an image face the mask touches: the face as
        ``2 * axis + side`` (axis 0..2 of the array, side 0 = low index), else -1.
    loop_cuts : int
        Loops of the skeleton broken to make a tree (vessels that touch each other).
    loop_ends : ndarray of int
        Points left with one neighbour by a broken loop: the vessel goes on there, so they
        are not vessel ends (never clipped).
    pruned_spurs : int
        Terminal branches removed as wall bumps.
    """

    points_xyz_mm: np.ndarray
    radius_mm: np.ndarray
    edges: np.ndarray
    face_of_point: np.ndarray
    loop_cuts: int = 0
    pruned_spurs: int = 0
    loop_ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _graph: Any = field(default=None, repr=False)

    @property
    def graph(self):
        """The tree as a ``networkx.Graph`` (nodes = point ids, edge attribute ``w`` = length in mm)."""
        if self._graph is None:
            import networkx as nx

            g = nx.Graph()
            g.add_nodes_from(range(len(self.radius_mm)))
            d = np.linalg.norm(self.points_xyz_mm[self.edges[:, 0]] - self.points_xyz_mm[self.edges[:, 1]], axis=1)
            g.add_weighted_edges_from(((int(a), int(b), float(w)) for (a, b), w in zip(self.edges, d)), weight="w")
            self._graph = g
        return self._graph

    def ends(self) -> list[int]:
        """Point ids of degree 1 that end a vessel (not those left by a broken loop)."""
        loop = set(self.loop_ends.tolist())
        return [int(n) for n, k in self.graph.degree() if k == 1 and int(n) not in loop]

    def junctions(self) -> list[int]:
        """Point ids of degree >= 3 (branch points)."""
        return [int(n) for n, k in self.graph.degree() if k >= 3]

    def nearest(self, xyz_mm) -> tuple[int, float]:
        """The point id nearest a world point, and its distance (mm)."""
        d = np.linalg.norm(self.points_xyz_mm - np.asarray(xyz_mm, float), axis=1)
        i = int(np.argmin(d))
        return i, float(d[i])

    def polylines(self) -> list[np.ndarray]:
        """The branches as lists of point ids, each from one key point (end or junction) to the next."""
        g = self.graph
        key = {n for n, k in g.degree() if k != 2}
        seen_edges: set[tuple[int, int]] = set()
        lines = []
        for s in sorted(key):
            for nb in g.neighbors(s):
                if (s, nb) in seen_edges:
                    continue
                path, prev, cur = [s], s, nb
                while True:
                    seen_edges.add((prev, cur))
                    seen_edges.add((cur, prev))
                    path.append(cur)
                    if cur in key:
                        break
                    nxt = [n for n in g.neighbors(cur) if n != prev]
                    prev, cur = cur, nxt[0]
                lines.append(np.asarray(path, dtype=np.int64))
        return lines


def _touched(binary: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for axis in range(3):
        for side, sl in ((0, 0), (1, -1)):
            if np.take(binary, sl, axis=axis).any():
                out.append((axis, side))
    return out


def centreline_tree(mask: Volume, *, spur_ratio: float = SPUR_RATIO) -> CentrelineTree:
    """Skeleton tree of the mask's largest 26-connected component (see the module docstring).

    Raises
    ------
    CentrelineError
        An empty mask, or a mask whose skeleton has fewer than two points.
    """
    import networkx as nx
    from scipy import ndimage

    if not np.any(np.asarray(mask.array)):
        raise CentrelineError("the mask is empty: there is no lumen to take a centreline of")
    mask = mask.crop(*mask.mask_box(1))  # (the faces the lumen touches stay faces of the crop)
    binary = np.asarray(mask.array) > 0
    lab, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    if n > 1:
        binary = lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    spacing = np.asarray(mask.spacing_mm, float)
    edt0 = ndimage.distance_transform_edt(binary, sampling=spacing)
    pad = int(np.clip(np.ceil(2 * edt0.max() / spacing.min()) + 2, 4, 40))
    padded = np.pad(binary, pad, mode="edge")
    edt = ndimage.distance_transform_edt(padded, sampling=spacing)
    skel = _thin(padded, binary)[pad:-pad, pad:-pad, pad:-pad]
    edt = edt[pad:-pad, pad:-pad, pad:-pad]
    outside = skel & ~binary  # (a thinning of the shifted mask may sit half a voxel off the lumen)
    if outside.any():
        edt = np.where(outside, ndimage.maximum_filter(edt, size=3), edt)
    idx = np.argwhere(skel)
    if len(idx) < 2:
        raise CentrelineError(
            f"the lumen's skeleton has {len(idx)} point(s): the mask is too small or too thin for a "
            "centreline model (check the segmentation, or give a finer image)")
    ids = -np.ones(binary.shape, np.int64)
    ids[tuple(idx.T)] = np.arange(len(idx))
    edges = []
    for off in [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)]:
        q = idx + off
        ok = np.all((q >= 0) & (q < binary.shape), axis=1)
        j = np.full(len(idx), -1)
        j[ok] = ids[tuple(q[ok].T)]
        sel = j >= 0
        edges.append(np.column_stack([np.flatnonzero(sel), j[sel]]))
    edges = np.vstack(edges)
    xyz = mask.index_to_world(idx.astype(float))
    g = nx.Graph()
    g.add_nodes_from(range(len(idx)))
    w = np.linalg.norm(xyz[edges[:, 0]] - xyz[edges[:, 1]], axis=1)
    g.add_weighted_edges_from(((int(a), int(b), float(x)) for (a, b), x in zip(edges, w)), weight="w")
    big = max(nx.connected_components(g), key=len)
    g = g.subgraph(big).copy()
    t = nx.minimum_spanning_tree(g, weight="w")
    cut_edges = [(a, b) for a, b in g.edges() if not t.has_edge(a, b)]
    # a broken loop is a vessel touching another, not the voxel triangles of thinning
    loop_cuts = sum(1 for a, b in cut_edges if nx.shortest_path_length(t, a, b) > 3)
    radius = edt[tuple(idx.T)]
    pruned = _prune_spurs(t, radius, xyz, spur_ratio)
    keep = np.asarray(sorted(t.nodes()), dtype=np.int64)
    remap = -np.ones(len(idx), np.int64)
    remap[keep] = np.arange(len(keep))
    tree_edges = np.asarray([(remap[a], remap[b]) for a, b in t.edges()], dtype=np.int64).reshape(-1, 2)
    face = -np.ones(len(keep), np.int64)
    for axis, side in _touched(binary):
        pos = idx[keep, axis]
        on = pos <= 2 if side == 0 else pos >= binary.shape[axis] - 3
        face[on] = 2 * axis + side
    loop_ends = sorted({int(remap[n]) for e in cut_edges for n in e if remap[n] >= 0 and t.degree(n) == 1})
    return CentrelineTree(points_xyz_mm=xyz[keep], radius_mm=radius[keep].astype(float),
                          edges=tree_edges, face_of_point=face, loop_cuts=int(loop_cuts), pruned_spurs=pruned,
                          loop_ends=np.asarray(loop_ends, dtype=np.int64))


def _thin(padded: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """Lee thinning, robust to skimage's loss of straight tubes of even width (they thin to nothing).

    scikit-image 0.26's 3-D ``skeletonize`` deletes a straight cylinder whose cross-section is
    an even number of voxels wide. When the thinning keeps fewer points than a quarter of the
    mask's longest extent, it is repeated on the mask united with a one-voxel shift of itself
    (which changes the width's parity) along x, then y, then both, then z.
    """
    from skimage.morphology import skeletonize

    need = 0.25 * max(np.ptp(np.argwhere(binary), axis=0)) if binary.any() else 0
    best = skeletonize(padded)
    for axes in ((2,), (1,), (1, 2), (0,)):
        if best.sum() >= need:
            break
        shifted = padded.copy()
        for ax in axes:
            shifted |= np.roll(shifted, 1, axis=ax)
        cand = skeletonize(shifted)
        if cand.sum() > best.sum():
            best = cand
    return best


def _prune_spurs(t, radius: np.ndarray, xyz: np.ndarray, spur_ratio: float) -> int:
    """Remove terminal branches shorter than spur_ratio x the junction radius, repeatedly (in place)."""
    pruned = 0
    for _ in range(20):
        removed = 0
        for end in [n for n, k in t.degree() if k == 1]:
            if end not in t or t.degree(end) != 1:
                continue
            path, length, prev, cur = [end], 0.0, None, end
            while True:
                nxt = [n for n in t.neighbors(cur) if n != prev]
                if len(nxt) != 1:
                    break
                length += float(np.linalg.norm(xyz[nxt[0]] - xyz[cur]))
                prev, cur = cur, nxt[0]
                if t.degree(cur) != 2:
                    break
                path.append(cur)
            if t.degree(cur) >= 3 and length < spur_ratio * radius[cur]:
                t.remove_nodes_from(path)
                removed += 1
        pruned += removed
        if not removed:
            break
    return pruned


# ----------------------------------------------------------------------------- clipping plan
@dataclass
class Clip:
    """One cut of the model: a plane perpendicular to the centreline.

    ``role`` is ``"inlet"``, ``"outlet"`` or ``"closed"`` (a dropped branch: its cap is wall).
    ``keep_normal_xyz`` points from the plane into the kept part of the vessel;
    ``beyond_xyz_mm`` is a centreline point on the removed side (it marks which piece goes).
    ``point`` is the id of the clip point in the tree (or paths) it was planned on, and
    ``face`` the image face (``2 * axis + side``) its end reaches, or -1.
    """

    role: str
    origin_xyz_mm: np.ndarray
    keep_normal_xyz: np.ndarray
    radius_mm: float
    beyond_xyz_mm: np.ndarray
    point: int
    face: int = -1

    def to_json_dict(self) -> dict:
        return {"role": self.role, "origin_xyz_mm": [float(v) for v in self.origin_xyz_mm],
                "keep_normal_xyz": [float(v) for v in self.keep_normal_xyz], "radius_mm": float(self.radius_mm),
                "image_face": None if self.face < 0 else f"{'kji'[self.face // 2]}{'-+'[self.face % 2]}"}


@dataclass
class ClipPlan:
    """Where the model is cut, and the kept centreline (paths from the inlet to each outlet)."""

    clips: list[Clip]
    paths: list[np.ndarray]  # from the inlet clip point to each outlet clip point
    summary: dict
    path_points_xyz_mm: list[np.ndarray] = field(default_factory=list)  # the paths' points, world mm
    path_radius_mm: list[np.ndarray] = field(default_factory=list)  # their inscribed radii, mm


def _path_arclength(xyz: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])


def _tangent(tree: CentrelineTree, path: np.ndarray, i: int, radius_mm: float, sp_min: float,
             side: int = 0) -> np.ndarray:
    """Unit direction of ``path`` at position i, pointing along the path.

    The principal axis of the path's points within ``TANGENT_WINDOW_RADII`` radii (at least
    three voxels, five on one side) of arc: on both sides of i (``side=0``), or only ahead (+1) or behind (-1),
    so that a window next to a junction stays on its own branch.
    """
    xyz = tree.points_xyz_mm[path]
    s = _path_arclength(xyz)
    half_mm = max(TANGENT_WINDOW_RADII * float(radius_mm), (3.0 if side == 0 else 5.0) * sp_min)
    ds = s - s[i]
    sel = (np.abs(ds) <= half_mm) & (ds * side >= 0)
    if sel.sum() < 3:
        lo, hi = max(i - 2, 0), min(i + 3, len(path))
        sel = np.zeros(len(path), bool)
        sel[lo:hi] = True
    p = xyz[sel]
    if len(p) < 2:
        raise CentrelineError("a centreline branch is too short (fewer than two points) to clip perpendicular to")
    _, _, vt = np.linalg.svd(p - p.mean(axis=0))
    d = vt[0]
    along = xyz[np.flatnonzero(sel)[-1]] - xyz[np.flatnonzero(sel)[0]]
    return d if d @ along >= 0 else -d


def _steady_position(tree: CentrelineTree, path: np.ndarray, at_face: bool, spacing_min: float) -> int:
    """Index along ``path`` (which starts at an end) where an end is clipped.

    Past the rounded tip (one radius and a voxel of arc; at an image face, one radius and 1.5
    voxels inside it) and where the radius changes by less than STEADY_RADIUS_TOLERANCE
    over one radius of arc on either side. At most halfway.
    """
    xyz = tree.points_xyz_mm[path]
    r = tree.radius_mm[path]
    s = _path_arclength(xyz)
    half = max(int(np.searchsorted(s, 0.5 * s[-1])), 1)
    for i in range(len(path)):
        if s[i] > 0.5 * s[-1]:
            break
        need = r[i] + (1.5 if at_face else 1.0) * spacing_min
        if s[i] < need:
            continue
        win = np.abs(s - s[i]) <= max(r[i], 2 * spacing_min)
        rw = r[win]
        if (rw.max() - rw.min()) <= STEADY_RADIUS_TOLERANCE * r[i]:
            return i
    return min(half, len(path) - 1)


def plan_clips(tree: CentrelineTree, mask: Volume, *, inlet_xyz=None, outlets_xyz=None,
               min_branch_radius_mm: float | None = None) -> ClipPlan:
    """Choose the inlet, the outlets and the closed branches, and where each is cut (see the module docstring).

    Parameters
    ----------
    tree : CentrelineTree
    mask : Volume
        The lumen mask the tree was taken from (for its spacing).
    inlet_xyz : (x, y, z) mm, optional
        The inlet clip point (nearest centreline point). Default: the widest end.
    outlets_xyz : sequence of (x, y, z) mm, optional
        Outlet clip points. Default: every other end of the kept tree.
    min_branch_radius_mm : float, optional
        Branches thinner than this are closed. Default: the larger of two finest voxel sizes
        and a quarter of the inlet radius.
    """
    import networkx as nx

    g = tree.graph
    sp_min = float(min(mask.spacing_mm))
    ends = tree.ends()
    if len(ends) < 2:
        raise CentrelineError(
            f"the lumen's centreline has {len(ends)} end(s): a flow model needs an inlet and an outlet "
            "(a closed loop or a blob is not a vessel; check the segmentation or give --seed-mm)")
    end_info = {e: _end_clip_position(tree, e, sp_min) for e in ends}
    widest = max(ends, key=lambda e: end_info[e][2])
    r_tol = 2.0 * sp_min

    # the inlet and the kept side of the tree
    if inlet_xyz is None:
        path, i, r_in = end_info[widest]
        p_in = int(path[i])
        kept = set(nx.node_connected_component(_without(g, path[:i]), p_in))
        inlet_face = int(tree.face_of_point[path[0]])
        in_beyond = path[max(i - 1, 0)]
    else:
        p_in, dist = tree.nearest(inlet_xyz)
        if dist > tree.radius_mm[p_in] + r_tol + 5.0:
            raise CentrelineError(
                f"--inlet-mm {tuple(round(float(v), 1) for v in inlet_xyz)} is {dist:.1f} mm from the vessel's "
                f"centreline (nearest centreline point {np.round(tree.points_xyz_mm[p_in], 1).tolist()} mm): "
                "give a point inside the lumen of the modelled vessel")
        r_in = float(tree.radius_mm[p_in])
        kept, in_beyond = _kept_side(g, p_in, tree, outlets_xyz, widest)
        inlet_face = -1
    kept_graph = g.subgraph(kept)
    parent = {t: s for s, t in nx.bfs_edges(kept_graph, p_in)}

    def to_root(n):
        out = [n]
        while out[-1] != p_in:
            out.append(parent[out[-1]])
        return np.asarray(out, dtype=np.int64)

    inlet_dir = _inlet_direction(tree, p_in, kept_graph, r_in, sp_min)
    clips = [Clip("inlet", tree.points_xyz_mm[p_in], inlet_dir, r_in, tree.points_xyz_mm[in_beyond], p_in,
                  inlet_face)]
    if min_branch_radius_mm is None:
        min_branch_radius_mm = max(MIN_BRANCH_RADIUS_VOXELS * sp_min, MIN_BRANCH_RADIUS_INLET_FRACTION * r_in)
    loop = set(tree.loop_ends.tolist())
    leaves = [n for n in kept if kept_graph.degree(n) == 1 and n != p_in and n not in loop]

    if outlets_xyz:
        outlet_pts = []
        for q in outlets_xyz:
            o, dist = tree.nearest(q)
            if o not in kept or dist > tree.radius_mm[o] + r_tol + 5.0:
                raise CentrelineError(
                    f"--outlet-mm {tuple(round(float(v), 1) for v in q)} is not on the kept vessel downstream of "
                    f"the inlet (nearest centreline point {np.round(tree.points_xyz_mm[o], 1).tolist()} mm, "
                    f"{dist:.1f} mm away): give a point inside a branch downstream of the inlet")
            outlet_pts.append(o)
        outlet_clips = []
        for o in outlet_pts:
            path = to_root(o)  # outlet -> inlet
            beyond = [n for n in kept_graph.neighbors(o) if n not in set(path.tolist())]
            d = _tangent(tree, path, 0, tree.radius_mm[o], sp_min, side=1)
            outlet_clips.append(Clip("outlet", tree.points_xyz_mm[o], d, float(tree.radius_mm[o]),
                                     tree.points_xyz_mm[beyond[0]] if beyond else tree.points_xyz_mm[o] - d, o))
        keep_leaf_paths = [to_root(o) for o in outlet_pts]
    else:
        outlet_clips, keep_leaf_paths = [], []
        for leaf in leaves:
            path = to_root(leaf)
            i = _steady_position(tree, path, bool(tree.face_of_point[leaf] >= 0), sp_min)
            r_leaf = float(np.median(tree.radius_mm[path[max(i - 2, 0):i + 3]]))
            if r_leaf < min_branch_radius_mm:
                continue
            d = _tangent(tree, path, i, r_leaf, sp_min)
            outlet_clips.append(Clip("outlet", tree.points_xyz_mm[path[i]], d, r_leaf,
                                     tree.points_xyz_mm[path[max(i - 1, 0)]], int(path[i]),
                                     int(tree.face_of_point[leaf])))
            keep_leaf_paths.append(path[i:])
    if not outlet_clips:
        raise CentrelineError(
            f"no outlet: every branch downstream of the inlet is thinner than min_branch_radius_mm="
            f"{min_branch_radius_mm:.2f} mm (inlet radius {r_in:.2f} mm); lower --min-branch-radius-mm or "
            "name the outlets with --outlet-mm")

    # branches leading to no kept outlet are cut next to their junction and closed
    on_kept = set()
    for p in keep_leaf_paths:
        on_kept.update(int(n) for n in p)
    closed = []
    done = set()
    for leaf in leaves:
        if leaf in on_kept:
            continue
        path = to_root(leaf)
        j = next(k for k, n in enumerate(path) if int(n) in on_kept)
        junction, child = int(path[j]), int(path[j - 1])
        if (junction, child) in done or junction in {c.point for c in outlet_clips}:
            continue  # (a branch beyond an outlet clip goes with it)
        done.add((junction, child))
        branch = path[:j + 1][::-1]  # junction -> leaf
        s = _path_arclength(tree.points_xyz_mm[branch])
        # past the parent's wall by a branch diameter, so the clip disc stays clear of the parent
        want = tree.radius_mm[junction] + 2.0 * max(float(np.median(tree.radius_mm[branch])), sp_min)
        k = int(np.searchsorted(s, want))
        if k >= len(branch) - 1:
            if tree.face_of_point[leaf] < 0:
                continue  # a short stub closed by its own rounded end: nothing to cut
            k = len(branch) - 2
        d = _tangent(tree, branch[::-1], len(branch) - 1 - k, tree.radius_mm[branch[k]], sp_min, side=-1)
        closed.append(Clip("closed", tree.points_xyz_mm[branch[k]], d, float(tree.radius_mm[branch[k]]),
                           tree.points_xyz_mm[branch[k + 1]], int(branch[k]), int(tree.face_of_point[leaf])))
    clips += outlet_clips + closed
    paths = [p[::-1] for p in keep_leaf_paths]
    summary = _plan_summary(tree, clips, paths, min_branch_radius_mm, len(leaves))
    return ClipPlan(clips=clips, paths=paths,
                    summary=summary, path_points_xyz_mm=[tree.points_xyz_mm[p] for p in paths],
                    path_radius_mm=[tree.radius_mm[p] for p in paths])


def _without(g, nodes):
    h = g.copy()
    h.remove_nodes_from(int(n) for n in nodes)
    return h


def _end_clip_position(tree: CentrelineTree, end: int, sp_min: float) -> tuple[np.ndarray, int, float]:
    """(path from the end inwards to the first junction or the far end, clip index, radius there in mm)."""
    g = tree.graph
    path, prev, cur = [end], None, end
    while True:
        nxt = [n for n in g.neighbors(cur) if n != prev]
        if len(nxt) != 1:
            break
        prev, cur = cur, nxt[0]
        path.append(cur)
        if g.degree(cur) != 2:
            break
    path = np.asarray(path, dtype=np.int64)
    i = _steady_position(tree, path, bool(tree.face_of_point[end] >= 0), sp_min)
    r = float(np.median(tree.radius_mm[path[max(i - 2, 0):i + 3]]))
    return path, i, r


def _kept_side(g, p_in: int, tree: CentrelineTree, outlets_xyz, widest: int):
    """The part of the tree kept downstream of an inlet point, and a point on the removed side."""
    import networkx as nx

    h = _without(g, [p_in])
    parts = [set(c) for c in nx.connected_components(h) if any(g.has_edge(p_in, n) for n in c)]
    if len(parts) == 1:  # the inlet point is an end
        return parts[0] | {p_in}, p_in
    if outlets_xyz:
        targets = [tree.nearest(q)[0] for q in outlets_xyz]
        kept = max(parts, key=lambda c: sum(t in c for t in targets))
    else:
        kept = next((c for c in parts if widest not in c), parts[0])
        if widest == p_in:
            kept = max(parts, key=len)
    removed = [c for c in parts if c is not kept]
    beyond = next(n for n in g.neighbors(p_in) if any(n in c for c in removed))
    return kept | {p_in}, beyond


def _inlet_direction(tree: CentrelineTree, p_in: int, kept_graph, radius_mm: float, sp_min: float) -> np.ndarray:
    """Unit direction from the inlet point into the kept tree (along its longest path)."""
    import networkx as nx

    paths = nx.single_source_dijkstra_path(kept_graph, p_in, weight="w")
    far = max(paths, key=lambda n: len(paths[n]))
    return _tangent(tree, np.asarray(paths[far], dtype=np.int64), 0, radius_mm, sp_min, side=1)


def _plan_summary(tree: CentrelineTree, clips: list[Clip], paths: list[np.ndarray], min_r: float,
                  n_leaves: int) -> dict:
    kept_nodes = set()
    for p in paths:
        kept_nodes.update(int(n) for n in p)
    sub = tree.graph.subgraph(kept_nodes)
    length = float(sum(d["w"] for _, _, d in sub.edges(data=True)))
    branch_points = sum(1 for _, k in sub.degree() if k >= 3)
    inlet = clips[0]
    outs = [c for c in clips if c.role == "outlet"]
    return {
        "length_mm": length,
        "branch_points": int(branch_points),
        "n_outlets": len(outs),
        "n_closed_branches": sum(c.role == "closed" for c in clips),
        "inlet_radius_mm": float(inlet.radius_mm),
        "outlet_radii_mm": [float(c.radius_mm) for c in outs],
        "min_branch_radius_mm": float(min_r),
        "tree_points": int(len(tree.radius_mm)),
        "tree_ends": int(n_leaves) + 1,
        "loop_cuts": int(tree.loop_cuts),
        "pruned_spurs": int(tree.pruned_spurs),
    }


def write_centreline_vtp(path, lines: list[np.ndarray], radii: list[np.ndarray]) -> Path:
    """Write polylines (world mm) as VTK XML PolyData lines with ``Radius`` (mm) point data (ParaView)."""
    from physics.atomic import write_text

    pts = np.vstack(lines) if lines else np.zeros((0, 3))
    rad = np.concatenate(radii) if radii else np.zeros(0)
    offsets = np.cumsum([len(x) for x in lines]).astype(np.int64)

    def arr(a, fmt="{:.6g}"):
        return " ".join(fmt.format(v) for v in np.ravel(a).tolist())

    text = (
        '<?xml version="1.0"?>\n<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="{len(lines)}" '
        'NumberOfStrips="0" NumberOfPolys="0">\n'
        f'<PointData Scalars="Radius"><DataArray type="Float64" Name="Radius" format="ascii">{arr(rad)}'
        '</DataArray></PointData>\n'
        f'<Points><DataArray type="Float64" NumberOfComponents="3" format="ascii">{arr(pts)}</DataArray></Points>\n'
        '<Lines><DataArray type="Int64" Name="connectivity" format="ascii">'
        f'{arr(np.arange(len(pts)), "{:d}")}</DataArray>\n'
        f'<DataArray type="Int64" Name="offsets" format="ascii">{arr(offsets, "{:d}")}</DataArray></Lines>\n'
        '</Piece>\n</PolyData>\n</VTKFile>\n')
    return write_text(path, text)


class _LumenGraph:
    """The lumen's voxels as a graph of 26-neighbours, step cost = length / distance to the wall (mm)."""

    def __init__(self, mask: Volume):
        from scipy import ndimage
        from scipy.sparse import coo_matrix

        self.mask = mask
        self.binary = np.asarray(mask.array) > 0
        self.spacing = np.asarray(mask.spacing_mm, float)
        self.edt = ndimage.distance_transform_edt(self.binary, sampling=self.spacing)
        idx = np.argwhere(self.binary)
        ids = -np.ones(self.binary.shape, np.int64)
        ids[tuple(idx.T)] = np.arange(len(idx))
        r = np.maximum(self.edt[tuple(idx.T)], 0.5 * self.spacing.min())
        rows, cols, w = [], [], []
        for off in [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)]:
            q = idx + off
            ok = np.all((q >= 0) & (q < self.binary.shape), axis=1)
            j = np.full(len(idx), -1)
            j[ok] = ids[tuple(q[ok].T)]
            sel = np.flatnonzero(j >= 0)
            step = float(np.linalg.norm(np.asarray(off) * self.spacing))
            rows.append(sel)
            cols.append(j[sel])
            w.append(step * 0.5 * (1.0 / r[sel] + 1.0 / r[j[sel]]))
        rows, cols, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(w)
        self.graph = coo_matrix((w, (rows, cols)), shape=(len(idx), len(idx))).tocsr()
        self.idx, self.ids, self.radius = idx, ids, r
        self.xyz = mask.index_to_world(idx.astype(float))

    def node(self, p, what: str) -> int:
        """The lumen voxel at a world point (or the nearest within 3 voxels)."""
        k = np.rint(self.mask.world_to_index(np.asarray(p, float))).astype(int)
        if np.any(k < 0) or np.any(k >= self.binary.shape):
            raise CentrelineError(f"the {what} point {tuple(round(float(v), 1) for v in p)} mm is outside the image")
        if not self.binary[tuple(k)]:
            lo = np.maximum(k - 3, 0)
            near = np.argwhere(self.binary[tuple(slice(a, b + 4) for a, b in zip(lo, k))]) + lo
            if len(near) == 0:
                raise CentrelineError(f"the {what} point {tuple(round(float(v), 1) for v in p)} mm is not in the "
                                      "lumen: give a point inside the vessel")
            k = near[np.argmin(np.linalg.norm((near - k) * self.spacing, axis=1))]
        return int(self.ids[tuple(k)])

    def tree_from(self, start: int):
        """Costs and predecessors of the cheapest paths from ``start`` to every lumen voxel."""
        from scipy.sparse.csgraph import dijkstra

        return dijkstra(self.graph, directed=False, indices=start, return_predecessors=True)

    @staticmethod
    def chain(pred: np.ndarray, start: int, end: int) -> list[int]:
        out = [end]
        while out[-1] != start:
            out.append(int(pred[out[-1]]))
        return out[::-1]


def minimal_paths(mask: Volume, start_xyz, ends_xyz) -> list[np.ndarray]:
    """Centrelines from one point to others as minimal paths through the lumen (world mm, one array per end).

    The cost of a step between 26-neighbour voxels is its length divided by the radius of the
    maximum inscribed sphere there (the distance to the wall), as in VMTK's centrelines
    (Antiga et al. 2008): paths keep to the middle of the lumen and do not squeeze through
    the narrow necks where other vessels or chambers touch.

    Raises
    ------
    CentrelineError
        A point outside the lumen, or an end that no path reaches.
    """
    lg = _LumenGraph(mask)
    start = lg.node(start_xyz, "inlet")
    _, pred = lg.tree_from(start)
    paths = []
    for p in ends_xyz:
        n = lg.node(p, "outlet")
        if pred[n] < 0 and n != start:
            raise CentrelineError(f"no path through the lumen joins the inlet to the outlet point "
                                  f"{tuple(round(float(v), 1) for v in p)} mm: they are in different pieces")
        paths.append(lg.xyz[lg.chain(pred, start, n)])
    return paths


def tube_region(mask: Volume, paths: list[np.ndarray], *, radius_factor: float = 1.5) -> tuple[Volume, dict]:
    """The part of the mask that belongs to the vessels along the paths.

    A marker-based watershed of the distance to the wall, flooded from the paths and from
    everything further than ``radius_factor + 1`` radii from them, splits the lumen at the
    necks where other vessels, chambers or bone touch it; of the paths' share, what lies
    within ``radius_factor`` inscribed radii (plus two voxels) of a path is kept, so side
    branches keep only a short closed stub.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    binary = np.asarray(mask.array) > 0
    spacing = np.asarray(mask.spacing_mm, float)
    edt = ndimage.distance_transform_edt(binary, sampling=spacing)
    # distance (mm) from every voxel to the nearest path voxel, and the radius there
    seeds = np.zeros(binary.shape, bool)
    pidx = np.clip(np.rint(mask.world_to_index(np.vstack(paths))).astype(int), 0, np.asarray(binary.shape) - 1)
    seeds[tuple(pidx.T)] = True
    dist, nearest = ndimage.distance_transform_edt(~seeds, sampling=spacing, return_indices=True)
    r_near = edt[tuple(nearest)]
    h = float(spacing.max())
    # touching structures: split the lumen at its necks by a watershed of the distance map
    # (Beucher & Meyer 1993) flooded from the paths and from all that lies well away from them
    markers = np.zeros(binary.shape, np.int32)
    far = binary & (dist > (radius_factor + 1.0) * r_near + 3.0 * h)
    # ... but not what continues beyond the paths' ends: the clips remove that, and flooding
    # from it would claim the vessel's own end, where no neck separates the two
    ends = np.zeros(binary.shape, bool)
    end_idx = np.clip(np.rint(mask.world_to_index(np.vstack([p[[0, -1]] for p in paths]))).astype(int), 0,
                      np.asarray(binary.shape) - 1)
    ends[tuple(end_idx.T)] = True
    r_end = float(edt[tuple(end_idx.T)].max())
    far &= ndimage.distance_transform_edt(~ends, sampling=spacing) > 4.0 * r_end + 3.0 * h
    markers[far] = 2
    markers[binary & (dist <= 0.8 * r_near)] = 1  # the vessels' cores along the paths
    keep = (watershed(-edt, markers, mask=binary) == 1) & (dist <= radius_factor * r_near + 2.0 * h)
    lab, _ = ndimage.label(keep, structure=np.ones((3, 3, 3), bool))
    hit = np.unique(lab[tuple(pidx.T)])
    keep = np.isin(lab, hit[hit > 0])
    report = {"voxels_before": int(binary.sum()), "voxels_after": int(keep.sum()),
              "radius_factor": float(radius_factor)}
    return mask.with_array(keep.astype(np.asarray(mask.array).dtype)), report


def plan_from_paths(mask: Volume, paths: list[np.ndarray]) -> ClipPlan:
    """Clip plan from centrelines that run from the inlet point to each outlet point (:func:`minimal_paths`).

    The inlet is cut at the paths' common start and each outlet at its path's end,
    perpendicular to the path; the radius is the median distance to the wall over one
    radius of path. Side branches of ``mask`` (made by :func:`tube_region`) are short closed
    stubs and need no cut.
    """
    from scipy import ndimage

    if not paths or any(len(p) < 3 for p in paths):
        raise CentrelineError("a centreline path from the inlet to an outlet is shorter than three voxels: "
                              "put the inlet and outlet points further apart")
    spacing = np.asarray(mask.spacing_mm, float)
    sp_min = float(spacing.min())
    edt = ndimage.distance_transform_edt(np.asarray(mask.array) > 0, sampling=spacing)
    shape = np.asarray(mask.shape)
    radii = [edt[tuple(np.clip(np.rint(mask.world_to_index(p)).astype(int), 0, shape - 1).T)] for p in paths]
    pts = np.vstack(paths)
    # a stand-in tree holding the paths' points, so the tangent and clip helpers apply unchanged
    tree = CentrelineTree(points_xyz_mm=pts, radius_mm=np.concatenate(radii),
                          edges=np.zeros((0, 2), np.int64), face_of_point=-np.ones(len(pts), np.int64))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in paths])])

    def end_clip(k: int, at_start: bool, role: str) -> Clip:
        ids = np.arange(offsets[k], offsets[k + 1])
        path = ids if at_start else ids[::-1]  # from the cut into the model
        s = _path_arclength(pts[path])
        r0 = float(tree.radius_mm[path[0]])
        r = float(np.median(tree.radius_mm[path[s <= max(r0, 2 * sp_min)]]))
        d = _tangent(tree, path, 0, r, sp_min, side=1)
        o = pts[path[0]]
        return Clip(role, o, d, r, o - max(0.5 * r, sp_min) * d, int(path[0]))

    clips = [end_clip(0, True, "inlet")] + [end_clip(k, False, "outlet") for k in range(len(paths))]
    summary = _paths_summary(paths, clips, sp_min)
    return ClipPlan(clips=clips, paths=[np.arange(offsets[k], offsets[k + 1])
                                                                         for k in range(len(paths))],
                    summary=summary, path_points_xyz_mm=list(paths), path_radius_mm=radii)


def _paths_summary(paths: list[np.ndarray], clips: list[Clip], sp_min: float) -> dict:
    """Length of the union of the paths (mm), branch points, and the clip radii (mm)."""
    seen: dict[tuple, None] = {}
    length = 0.0
    branch_points = 0
    for p in paths:
        keys = [tuple(np.round(q / (0.5 * sp_min)).astype(int)) for q in p]
        shared = [k in seen for k in keys]
        if any(shared) and not all(shared):
            branch_points += 1
        new = np.flatnonzero(~np.asarray(shared))
        if len(new):
            seg = p[max(new[0] - 1, 0):new[-1] + 1]
            length += float(np.sum(np.linalg.norm(np.diff(seg, axis=0), axis=1)))
        seen.update(dict.fromkeys(keys))
    outs = [c for c in clips if c.role == "outlet"]
    return {"length_mm": length, "branch_points": int(branch_points), "n_outlets": len(outs),
            "n_closed_branches": 0, "inlet_radius_mm": float(clips[0].radius_mm),
            "outlet_radii_mm": [float(c.radius_mm) for c in outs], "centreline": "minimal paths (cost 1/radius)"}


def modelled_voxels(binary: np.ndarray, mask: Volume, plan: ClipPlan) -> np.ndarray:
    """The voxels of ``binary`` (on the grid of ``mask``) that the clipped model covers.

    Voxels beyond each clip disc (within twice its radius plus two voxels of the clip's
    centre) are removed; of the rest, the parts holding the plan's centreline are kept. Apply
    it to a peer's mask too, to compare the two over the modelled part only.
    """
    from scipy import ndimage

    out = np.asarray(binary, bool).copy()
    h = float(max(mask.spacing_mm))
    for c in plan.clips:
        n = np.asarray(c.keep_normal_xyz, float)
        n = n / np.linalg.norm(n)
        o = np.asarray(c.origin_xyz_mm, float)
        rho = 2.0 * float(c.radius_mm) + 2.0 * h
        idx = np.argwhere(out)
        xyz = mask.index_to_world(idx.astype(float))
        beyond = ((xyz - o) @ n < 0) & (np.linalg.norm(xyz - o, axis=1) < rho)
        out[tuple(idx[beyond].T)] = False
    lab, _ = ndimage.label(out, structure=np.ones((3, 3, 3), bool))
    pidx = np.clip(np.rint(mask.world_to_index(np.vstack(plan.path_points_xyz_mm))).astype(int), 0,
                   np.asarray(out.shape) - 1)
    hit = np.unique(lab[tuple(pidx.T)])
    return np.isin(lab, hit[hit > 0])


#: Background margin (voxels) kept around the lumen's bounding box while modelling.
_BOX_MARGIN_VOXELS = 6


def model_region(mask: Volume, *, inlet_xyz=None, outlets_xyz=None,
                 min_branch_radius_mm: float | None = None, track: bool = False,
                 seed_xyz=None, image: Volume | None = None) -> tuple[Volume, ClipPlan, dict]:
    """The modelled part of a lumen mask and where it is clipped (centreline clipping).

    With an inlet and outlets named, the centrelines are the minimal paths between them
    (:func:`minimal_paths`, VMTK's recipe) and the clips sit at the named points
    (:func:`plan_from_paths`); ``min_branch_radius_mm`` is then not used. Otherwise the
    skeleton tree gives the paths (:func:`plan_clips`: inlet at the widest end or the named
    point, outlets at the other ends). Either way the mask is reduced to the vessels along
    the paths (:func:`tube_region`), and the tree plan is made again on that. With ``track``
    (and no named ends) the ends are found by following the vessel through ``seed_xyz``
    (default: :func:`main_vessel_seed`) with :func:`track_vessel_ends`, then modelled as named
    ends; the report's ``"ends"`` says how they were found (``image``, a CT angiogram on the
    mask's grid, lets the automatic seed weigh contrast: :func:`main_vessel_seed`). The work is done on the lumen's
    bounding box (plus a margin), so a whole-body CT costs what its vessel costs.

    Returns (region on the grid of ``mask``, plan, report of the region).
    """
    lo, hi = mask.mask_box(_BOX_MARGIN_VOXELS)
    sub = mask.crop(lo, hi)
    tracked = None
    if track and inlet_xyz is None and not outlets_xyz:
        inlet_xyz, outlets_xyz, tracked = track_vessel_ends(
            sub, seed_xyz, min_branch_radius_mm=min_branch_radius_mm,
            image=None if image is None else image.crop(lo, hi))
    if inlet_xyz is not None and outlets_xyz:
        paths = minimal_paths(sub, inlet_xyz, outlets_xyz)
        region, report = tube_region(sub, paths)
        plan = plan_from_paths(region, paths)
    else:
        tree = centreline_tree(sub)
        plan = plan_clips(tree, sub, inlet_xyz=inlet_xyz, outlets_xyz=outlets_xyz,
                          min_branch_radius_mm=min_branch_radius_mm)
        region, report = tube_region(sub, plan.path_points_xyz_mm)
        tree = centreline_tree(region)
        plan = plan_clips(tree, region, inlet_xyz=inlet_xyz, outlets_xyz=outlets_xyz,
                          min_branch_radius_mm=min_branch_radius_mm)
    if tracked is not None:
        report["ends"] = tracked
    full = np.zeros_like(np.asarray(mask.array))
    full[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = np.asarray(region.array)
    return mask.with_array(full), plan, report


# --- the ends of a vessel found from one point inside it ------------------------------------

#: A daughter of a split is a branch of the model when its radius is at least this fraction
#: of the parent's (thinner ones are side branches: closed stubs).
TRACK_BRANCH_RATIO = 0.5
#: Upstream, the vessel ends where its radius grows by this factor over its own (a chamber or a
#: wider vessel it comes from); a single step growing by ``TRACK_JUMP`` ends it at once.
TRACK_WIDENING = 1.1
TRACK_JUMP = 1.6
#: Exits of the vessel's core are looked for on a sphere of this many radii around the point.
TRACK_SHELL_RADII = 2.0
#: Otsu's separability (between-class over total variance) from which the candidates' levels
#: form two classes (one normal class gives 2/pi = 0.64; the shared chest CTA's give 0.86).
BOLUS_SEPARABILITY = 0.8
#: The automatic seed counts a candidate's tubularity up to this much (past it, a tube is a tube
#: and its radius decides).
TUBE_ENOUGH = 5.0
#: A track stops after this many radii of length (a guard, far beyond any modelled vessel).
TRACK_MAX_LENGTH_RADII = 60.0


@dataclass
class _Track:
    points: list  # array indices (float, k j i) along the centreline
    radii: list  # mm
    why: str  # face | widens | split | lost | stalls | length
    exits: list  # at a split: (index, radius mm) of each daughter's start


class _Tracker:
    """Follow a vessel along the ridge of its distance map (Aylward & Bullitt 2002, ridge traversal).

    Each step moves half a radius along the local axis (the principal direction of the
    lumen's core, the voxels deeper than half the radius within 2.5 radii that are joined to
    the point), re-centres on the deepest voxel nearby, and looks for exits of the core on a
    sphere of two radii ahead: two or more exits at least ``TRACK_BRANCH_RATIO`` of the radius
    wide are a split (Wink et al. 2000 find branches the same way). Necks where other
    structures only touch the vessel are shallower than half its radius, so they are no exits.
    """

    def __init__(self, mask: Volume, branch_ratio: float = TRACK_BRANCH_RATIO, min_branch_radius_mm: float = 0.0):
        from scipy import ndimage

        self.branch_ratio, self.min_branch_radius_mm = float(branch_ratio), float(min_branch_radius_mm)
        self.binary = np.asarray(mask.array) > 0
        self.sp = np.asarray(mask.spacing_mm, float)
        self.edt = ndimage.distance_transform_edt(self.binary, sampling=self.sp)
        self.shape = np.asarray(self.binary.shape)

    def _box(self, c, radius_mm):
        lo = np.maximum(np.floor(c - radius_mm / self.sp).astype(int), 0)
        hi = np.minimum(np.ceil(c + radius_mm / self.sp).astype(int) + 1, self.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), lo

    def _dist(self, sl, lo, c):
        g = np.indices(tuple(s.stop - s.start for s in sl)).reshape(3, -1).T + lo
        return np.linalg.norm((g - c) * self.sp, axis=1), g

    def centre(self, c, radius_mm):
        """The deepest lumen voxel within ``radius_mm`` of ``c`` (index), and its depth (mm)."""
        radius_mm = max(radius_mm, float(self.sp.max()))
        sl, lo = self._box(c, radius_mm)
        d, g = self._dist(sl, lo, c)
        e = self.edt[sl].ravel()
        e = np.where(d <= radius_mm, e, -1.0)
        j = int(np.argmax(e))
        return g[j].astype(float), float(max(e[j], 0.0))

    def core(self, c, radius_mm, r):
        """Core voxels (deeper than r / 2) within ``radius_mm`` of ``c`` joined to it: (indices, distances)."""
        from scipy import ndimage

        sl, lo = self._box(c, radius_mm)
        d, g = self._dist(sl, lo, c)
        sub = self.edt[sl]
        core = (sub >= 0.5 * r) & (d.reshape(sub.shape) <= radius_mm)
        lab, _ = ndimage.label(core, structure=np.ones((3, 3, 3), bool))
        k = lab[tuple(np.rint(c).astype(int) - lo)]
        if k == 0:
            return None, None
        sel = (lab == k).ravel()
        return g[sel], d[sel]

    def axis(self, c, r, previous=None):
        """Unit direction (mm-scaled index space) of the vessel at ``c``, or ``previous`` when unclear."""
        idx, _ = self.core(c, 2.5 * r, r)
        if idx is None or len(idx) < 10:
            return previous
        x = (idx - c) * self.sp
        w, v = np.linalg.eigh(x.T @ x / len(x))
        a = v[:, -1]
        if previous is not None and a @ previous < 0:
            a = -a
        return a

    def tubularity(self, c, r) -> float:
        """Largest over second principal spread of the core around ``c``: about 1 for a blob, large for a tube."""
        idx, _ = self.core(c, 2.5 * r, r)
        if idx is None or len(idx) < 10:
            return 0.0
        x = (idx - c) * self.sp
        w = np.linalg.eigvalsh(x.T @ x / len(x))
        return float(w[-1] / max(w[-2], 1e-9))

    def exits(self, c, r, d):
        """Daughters ahead (direction ``d``): the core's pieces on the sphere of two radii, as (index, radius)."""
        from scipy import ndimage

        radius_mm = TRACK_SHELL_RADII * r
        idx, dist = self.core(c, radius_mm, r)
        if idx is None:
            return []
        shell = idx[dist >= radius_mm - 1.5 * self.sp.max()]
        if len(shell) == 0:
            return []
        lo = shell.min(0)
        img = np.zeros(tuple(shell.max(0) - lo + 1), bool)
        img[tuple((shell - lo).T)] = True
        lab, n = ndimage.label(img, structure=np.ones((3, 3, 3), bool))
        out = []
        for k in range(1, n + 1):
            pts = np.argwhere(lab == k) + lo
            e = self.edt[tuple(pts.T)]
            j = int(np.argmax(e))
            if ((pts[j] - c) * self.sp) @ d > 0.3 * radius_mm:
                out.append((pts[j].astype(float), float(e[j])))
        return out

    def track(self, start, d, r0) -> _Track:
        pts, radii = [np.asarray(start, float)], [float(r0)]
        p, length = pts[0], 0.0
        for _ in range(1000):
            r = float(np.median(radii[-5:]))
            step = max(0.5 * r, float(self.sp.min()))
            q = p + step * d / self.sp
            if np.any(q < 1) or np.any(q > self.shape - 2):
                return _Track(pts, radii, "face", [])
            q, rq = self.centre(q, 0.35 * r)
            moved = (q - p) * self.sp
            if rq < 0.5 * float(self.sp.min()):
                return _Track(pts, radii, "lost", [])
            if moved @ d < 0.25 * step:
                return _Track(pts, radii, "stalls", [])
            if rq > TRACK_JUMP * r and length > r:
                return _Track(pts, radii, "widens", [])
            d = self.axis(q, rq, d)
            length += float(np.linalg.norm(moved))
            p = q
            pts.append(p)
            radii.append(rq)
            big = [e for e in self.exits(q, rq, d)
                   if e[1] >= max(self.branch_ratio * rq, self.min_branch_radius_mm)]
            if len(big) >= 2:
                return _Track(pts, radii, "split", big)
            if length > TRACK_MAX_LENGTH_RADII * r:
                return _Track(pts, radii, "length", [])
        return _Track(pts, radii, "length", [])


def _snap_seed(tr: _Tracker, mask: Volume, seed_xyz) -> np.ndarray:
    k = np.rint(mask.world_to_index(np.asarray(seed_xyz, float))).astype(int)
    where = tuple(round(float(v), 1) for v in seed_xyz)
    if np.any(k < 0) or np.any(k >= tr.shape):
        raise CentrelineError(f"the seed point {where} mm is outside the image")
    if not tr.binary[tuple(k)]:
        c, r = tr.centre(k.astype(float), 3.0 * float(tr.sp.max()))
        if r <= 0:
            raise CentrelineError(f"the seed point {where} mm is not in the lumen: give a point inside the vessel")
        k = c.astype(int)
    r = float(tr.edt[tuple(k)])
    c, _ = tr.centre(k.astype(float), max(r, 2.0 * float(tr.sp.max())))
    return c


def main_vessel_seed(mask: Volume, *, image: Volume | None = None, candidates: int = 40) -> tuple[np.ndarray, dict]:
    """A point inside the main vessel of a lumen mask that also holds chambers and other vessels (world mm).

    The candidates are the deepest points of the lumen (local maxima of the distance map,
    at least three voxels deep, each more than its radius from a deeper one); each is scored
    by its radius times its tubularity (the core's largest over second principal spread, at least 3 for a tube, counted up to
    ``TUBE_ENOUGH``), and weighed by its closeness to the image centre (a cropped angiogram is
    centred on the vessel of interest): ``r * min(t, TUBE_ENOUGH) / (1 + d / L)``, ``d`` the
    distance to the centre and ``L`` half the image's smallest extent.

    With ``image`` (a CT angiogram on the mask's grid) the contrast comes first: the bolus is
    timed for the vessel of interest. The tube-like candidates' core levels (median of the ball
    of half their radius) are split in two classes (Otsu); when they form two classes
    (:func:`_bolus_class`: separable, and apart by more than the noise in the lumen's core,
    :func:`pipeline.segment.classical.robust_noise_sigma`), only the brighter class is scored.
    A chest CT angiogram's pulmonary trunk (and its branches) and its aorta are then told apart
    by their enhancement. Not for MR signal, whose level drifts along
    one vessel with inflow and coil sensitivity.
    """
    from scipy import ndimage

    from pipeline.segment.classical import robust_noise_sigma

    tr = _Tracker(mask)
    sp_min = float(tr.sp.min())
    peaks = (tr.edt == ndimage.maximum_filter(tr.edt, size=5)) & (tr.edt >= 3.0 * sp_min)
    idx = np.argwhere(peaks)
    if len(idx) == 0:
        raise CentrelineError("the lumen is nowhere three voxels deep: no vessel to model; give --seed-mm "
                              "(a point inside the vessel) or check the segmentation")
    idx = _spread(idx[np.argsort(-tr.edt[tuple(idx.T)])], tr, candidates)
    centre = 0.5 * (tr.shape - 1)
    half = 0.5 * float(np.min((tr.shape - 1) * tr.sp))
    rows = []
    for c in idx.astype(float):
        r = float(tr.edt[tuple(c.astype(int))])
        t = tr.tubularity(c, r)
        d = float(np.linalg.norm((c - centre) * tr.sp))
        score = r * min(t, TUBE_ENOUGH) / (1.0 + d / half) if t >= 3.0 else 0.0
        rows.append([score, c, r, t, None])
    tubes = [row for row in rows if row[0] > 0]
    if not tubes:
        raise CentrelineError(
            f"no tube-like vessel among the lumen's {len(idx)} deepest points (all are blobs, such as heart "
            "chambers): give --seed-mm (a point inside the vessel) or name the ends with --inlet-mm / --outlet-mm")
    contrast = None
    if image is not None:
        a = np.asarray(image.array)
        core = tr.edt >= 2.0 * sp_min
        noise, _ = robust_noise_sigma(a, core, core)
        for row in tubes:
            row[4] = float(np.median(a[_ball(tr, row[1], 0.5 * row[2])]))
        contrast = {"noise_sd": round(float(noise), 1), **_bolus_class(tubes, noise)}
        tubes = [row for row in tubes if row[4] > contrast["split_level"]] if contrast["split"] else tubes
    best = max(tubes, key=lambda row: row[0])
    best = max(tubes, key=lambda row: row[0])
    xyz = mask.index_to_world(best[1][None])[0]
    out = {"seed_xyz_mm": [round(float(v), 2) for v in xyz], "radius_mm": round(best[2], 2),
           "tubularity": round(best[3], 2), "candidates": len(rows),
           "tube_like_candidates": int(sum(1 for row in rows if row[0] > 0))}
    if contrast is not None:
        out["contrast"] = {**contrast, "seed_core": round(best[4], 1)}
    return xyz, out


def _bolus_class(tubes: list, noise: float) -> dict:
    """Split the tube-like candidates' core levels in two (Otsu) when they form two classes.

    They do when Otsu's separability (between-class over total variance) is at least
    ``BOLUS_SEPARABILITY`` (2/pi = 0.64 for one normal class, 1 for two distinct levels) and the
    classes' means differ by more than the noise: the bolus lit one set of vessels more.
    """
    from skimage.filters import threshold_otsu

    levels = np.array([row[4] for row in tubes], float)
    out = {"split": False, "split_level": float(levels.min()) - 1.0}
    if len(levels) < 2 or np.ptp(levels) == 0:
        return out
    thr = float(threshold_otsu(levels))
    hi, lo = levels[levels > thr], levels[levels <= thr]
    if len(hi) and len(lo):
        eta = len(hi) * len(lo) / len(levels) ** 2 * (hi.mean() - lo.mean()) ** 2 / float(levels.var())
        out.update({"bright_mean": round(float(hi.mean()), 1), "dim_mean": round(float(lo.mean()), 1),
                    "split_level": round(thr, 1), "separability": round(float(eta), 3),
                    "split": bool(eta >= BOLUS_SEPARABILITY and hi.mean() - lo.mean() > noise),
                    "bright_candidates": int(len(hi))})
    return out


def _spread(idx: np.ndarray, tr: "_Tracker", n: int) -> np.ndarray:
    """The first ``n`` of the points ``idx`` (deepest first) lying more than their own radius
    from every point taken before them: one candidate per stretch of vessel, so a long wide
    vessel does not crowd out a narrower one."""
    taken: list[np.ndarray] = []
    for c in idx:
        r = float(tr.edt[tuple(c)])
        if all(np.linalg.norm((c - t) * tr.sp) > r for t in taken):
            taken.append(c)
            if len(taken) == n:
                break
    return np.asarray(taken)


def _ball(tr: "_Tracker", c: np.ndarray, radius_mm: float) -> tuple[np.ndarray, ...]:
    """Array indices of the voxels within ``radius_mm`` of the point ``c`` (array index units)."""
    h = np.ceil(radius_mm / tr.sp).astype(int)
    lo = np.maximum(np.rint(c).astype(int) - h, 0)
    hi = np.minimum(np.rint(c).astype(int) + h + 1, tr.shape)
    g = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1).reshape(-1, 3)
    near = np.linalg.norm((g - c) * tr.sp, axis=1) <= max(radius_mm, float(tr.sp.min()))
    return tuple(g[near].T)


def _widening(radii, quantum_mm: float) -> int:
    """Index of the first point upstream where the vessel has widened (``len(radii)`` if nowhere).

    Widened: the radius exceeds ``TRACK_WIDENING`` times, and by more than ``quantum_mm`` (the
    distance map's own step), the narrowest the vessel has been so far (radii smoothed by a
    running median of three, so one voxel's wobble is no narrowest). Measured from the
    narrowest point, not from a running mean, so a slow widening (a valve's sinus opening into a
    ventricle's outflow tract) is caught where it starts, wherever the seed was put.
    """
    r = np.asarray(radii, float)
    if len(r) < 3:
        return len(r)
    smooth = np.array([np.median(r[max(i - 1, 0):i + 2]) for i in range(len(r))])
    for i in range(2, len(r)):
        ref = float(smooth[:i].min())
        if r[i] > max(TRACK_WIDENING * ref, ref + quantum_mm):
            return i
    return len(r)


def _steady_before(tr: "_Tracker", t: _Track, i_edge: int) -> int:
    """The last track point at least one vessel radius (arc length) before point ``i_edge``.

    Where the vessel starts to widen the flow is no longer the vessel's own; the inlet goes a
    radius back into the steady part (VMTK clips where the radius is steady), or at the seed.
    """
    p = np.asarray(t.points, float)[: i_edge + 1] * tr.sp
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    ok = [i for i in range(i_edge + 1) if s[i_edge] - s[i] >= float(t.radii[i])]
    return ok[-1] if ok else 0


def _trim(t: _Track) -> int:
    """Index on a daughter's or the downstream track where its outlet goes (before a split, face or taper)."""
    n = len(t.points)
    if t.why == "lost":
        r_ref = float(np.median(t.radii[:3]))
        ok = [i for i, r in enumerate(t.radii) if r >= 0.6 * r_ref]
        return max(ok[-1] - 1, 0) if ok else 0
    return max(n - 2, 0)


def track_vessel_ends(mask: Volume, seed_xyz=None, *, min_branch_radius_mm: float | None = None,
                      image: Volume | None = None) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """The inlet and outlet points of the vessel through a seed point, found by tracking it (world mm).

    From the seed (default :func:`main_vessel_seed`) the vessel is followed both ways along
    its centreline (:class:`_Tracker`). The way that reaches the wider vessel is upstream: the
    inlet goes one radius before it grows by ``TRACK_WIDENING`` over its narrowest (a chamber
    or the vessel it comes from, :func:`_widening`, :func:`_steady_before`) or, at an image
    face, one step inside it. Downstream, a split into daughters at least ``TRACK_BRANCH_RATIO`` of the
    parent's radius (and ``min_branch_radius_mm``) is followed into each daughter, and each daughter's outlet goes before its own
    next split, its image face or where it tapers below 0.6 of its radius; without a split
    the single outlet goes at the end of the vessel the same way. Thinner side branches stay
    closed stubs (:func:`tube_region`).

    ``image`` (a CT angiogram on the mask's grid) lets the automatic seed weigh contrast.
    Returns (inlet, [outlets], report); the points go to :func:`minimal_paths` as named ends.
    """
    tr = _Tracker(mask, min_branch_radius_mm=min_branch_radius_mm or 0.0)
    sp_min = float(tr.sp.min())
    report: dict[str, Any] = {"method": "tracked from a seed point"}
    if seed_xyz is None:
        seed_xyz, report["automatic_seed"] = main_vessel_seed(mask, image=image)
    c = _snap_seed(tr, mask, seed_xyz)
    r0 = float(tr.edt[tuple(c.astype(int))])
    d0 = tr.axis(c, r0)
    if d0 is None:
        raise CentrelineError(f"the lumen around the seed {tuple(round(float(v), 1) for v in seed_xyz)} mm is too "
                              "small to follow: give a point inside the vessel, or name its ends with --inlet-mm / "
                              "--outlet-mm")
    ways = [tr.track(c, d0, r0), tr.track(c, -d0, r0)]
    widest = [max(t.radii[1:]) if len(t.radii) > 1 else t.radii[0] for t in ways]
    up, down = (ways[0], ways[1]) if widest[0] >= widest[1] else (ways[1], ways[0])
    # upstream: the inlet before the vessel widens
    radii = up.radii
    i_w = _widening(radii, 0.5 * sp_min)
    if i_w < len(radii) or up.why in ("widens", "split"):
        i_in = _steady_before(tr, up, min(i_w, len(radii)) - 1)
    else:
        i_in = max(len(radii) - 2, 0) if up.why == "face" else len(radii) - 1
    inlet = up.points[i_in]
    # downstream: the daughters of a split, or the vessel's own end
    outlets, branches = [], []
    if down.why == "split":
        for e_idx, e_r in down.exits:
            dd = (e_idx - down.points[-1]) * tr.sp
            dd /= np.linalg.norm(dd)
            t = tr.track(e_idx, dd, e_r)
            j = _trim(t)
            length = float(np.linalg.norm((t.points[j] - down.points[-1]) * tr.sp))
            branches.append({"radius_mm": round(e_r, 2), "ends_by": t.why, "length_mm": round(length, 1)})
            if length >= 2.0 * e_r:
                outlets.append(t.points[j])
    if not outlets:
        outlets = [down.points[_trim(down)]]
    world = [mask.index_to_world(np.asarray(p, float)[None])[0] for p in [inlet] + outlets]
    if min(float(np.linalg.norm(w - world[0])) for w in world[1:]) < 3.0 * float(tr.sp.max()):
        raise CentrelineError(
            f"the vessel through the seed {tuple(round(float(v), 1) for v in seed_xyz)} mm is too short to model "
            f"(it ends by '{up.why}' upstream and '{down.why}' downstream within a few voxels): name its ends "
            "with --inlet-mm X Y Z and --outlet-mm X Y Z")
    report.update({
        "seed_centre_xyz_mm": [round(float(v), 2) for v in mask.index_to_world(c[None])[0]],
        "seed_radius_mm": round(r0, 2),
        "upstream": {"ends_by": up.why, "steps": len(up.points) - 1, "inlet_radius_mm": round(radii[i_in], 2)},
        "downstream": {"ends_by": down.why, "steps": len(down.points) - 1, "daughters": branches},
        "inlet_xyz_mm": [round(float(v), 2) for v in world[0]],
        "outlets_xyz_mm": [[round(float(v), 2) for v in w] for w in world[1:]],
    })
    return world[0], world[1:], report
