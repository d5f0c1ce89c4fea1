"""Topology of binary masks and of the trees they hold (airways, vessels).

What it is for: say whether a segmented airway or vessel tree has the topology of a tree
(one piece, no loops, no cavities), describe its centreline graph, score a segmentation by
how well it keeps the tubes connected (clDice), and repair a tree mask that is broken into
pieces or closed into loops.

**Digital topology** (Kong & Rosenfeld, "Digital topology: introduction and survey", CVGIP
48:357, 1989). A mask is a set of voxels; its topology depends on which voxels count as
neighbours. The pair used here is **(26, 6)** by default: foreground voxels are connected
when they share a face, an edge or a corner (26-neighbours), the background only through
faces (6-neighbours). This is the topology of the union of the voxels as *closed* unit cubes.
The pair **(6, 26)** is the other consistent choice (``connectivity=6``): it is the topology
of the cubical complex whose vertices are the voxel centres, with an edge between
face-neighbours, a square for each full 2x2 block and a cube for each full 2x2x2 block.

**Betti numbers** (:func:`betti_numbers`): ``b0`` = connected components of the foreground,
``b2`` = cavities = components of the background (with the complementary connectivity) that
do not reach the outside (the array is padded with one layer of background, so the outside
is one component), and ``b1`` = tunnels (independent loops), from the Euler characteristic
``chi = b0 - b1 + b2`` (Euler-Poincaré). ``chi`` is counted exactly on the cubical complex
of the chosen connectivity, ``chi = V - E + F - C`` (vertices, edges, squares, cubes).
For (26, 6) these are the cells of the closed voxel cubes: a lattice vertex is counted once
if any of the 8 voxels around it is foreground, a lattice edge if any of its 4, a face if
either of its 2. ``skimage.measure.euler_number(mask, connectivity=3)`` (Ohser, Nagel &
Schladitz 2002, a look-up table over 2x2x2 configurations) computes the same number for
26-connected foreground (``connectivity=1`` for 6-connected) and is the tests' independent check.

**Skeleton graph** (:func:`skeleton_graph`): the mask is thinned to a one-voxel-wide
26-connected curve skeleton (Lee, Kashyap & Chu, "Building skeleton models via 3-D medial
surface/axis thinning algorithms", CVGIP: Graph. Models Image Process. 56:462, 1994), with
the simple-point test of Bertrand & Malandain (Pattern Recognit. Lett. 15:169, 1994), which
keeps the topology of the mask (:mod:`pipeline._topology_kernels`). Skeleton voxels
with one 26-neighbour are end points, those with three or more are branch voxels; adjacent
branch voxels (and a path voxel whose two neighbours lie in one such cluster) merge into one
branch point. Edges are the chains of two-neighbour voxels between nodes; their length is
the length in mm (voxel spacing applied per axis) of the chain through the voxel centres,
smoothed (three passes of a 1/4, 1/2, 1/4 filter, ends fixed) so that the staircase of a
digital oblique line does not add up to 8 %; their radius is the Euclidean
distance transform of the mask in mm at the skeleton voxels (distance from the voxel centre
to the nearest background voxel centre, the maximal inscribed sphere's radius, as in
:mod:`pipeline.centreline`). A closed chain with no node (the skeleton of a torus) gets one
``loop`` node and a self-loop edge. Terminal edges shorter than ``SPUR_RATIO`` radii of the
branch point they hang from are bumps of the wall and are pruned. The number of independent
cycles is the cycle rank of the multigraph, ``E - V + (connected components)``. Thinning
leaves the ends of a tube with round caps up to about half a radius short of the cap
centres, and a ball becomes a short segment through its centre.

**clDice** (:func:`cldice`; Shit et al., "clDice - a novel topology-preserving loss function
for tubular structure segmentation", CVPR 2021, eq. 1-3): with ``V_P``, ``V_L`` the predicted
and reference masks and ``S_P``, ``S_L`` their skeletons,
``Tprec = |S_P ∩ V_L| / |S_P|``, ``Tsens = |S_L ∩ V_P| / |S_L|`` and
``clDice = 2 Tprec Tsens / (Tprec + Tsens)``. The skeletons are :func:`skeletonize_mask`'s
(the paper used scikit-image's, which loses tubes of even thickness in 3-D).

**Tree repair** (:func:`repair_tree`): components are joined to the main one (the largest)
greedily, nearest first (Prim's order): the gap is the distance between the nearest voxel
centres of the component and of what is already joined; when it is at most ``max_gap_mm`` a
bridge is drawn, a capsule (cylinder with round caps) between the skeleton points nearest to
the two gap ends, of the smaller of their radii. Components farther away are dropped or kept
(``far_components``). Loops are cut at their weakest edge: the skeleton graph's maximum
spanning forest, with the edges' mean radii as weights, keeps the thickest edges; every edge
outside it is the thinnest edge of some cycle (the cycle property of minimum spanning trees),
and is cut at its narrowest skeleton voxel (the most central of those within 10 % of the
narrowest radius) by removing the mask voxels of a slab one voxel diagonal thick,
perpendicular to the edge, within the local radius plus a voxel diagonal (only the piece of
that disk through the edge's vessel, not another vessel it reaches), grown by a
diagonal at a time until the Betti numbers show one loop fewer and the same components and
cavities (a cut that never does is undone and reported as not severed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["TopologyError", "CONNECTIVITIES", "BettiNumbers", "betti_numbers", "euler_characteristic",
           "skeletonize_mask", "SkeletonGraph", "skeleton_graph", "cldice", "TreeRepair", "repair_tree"]

#: Foreground connectivity -> background connectivity of the consistent pairs supported.
CONNECTIVITIES = {26: 6, 6: 26}

#: A terminal skeleton edge shorter than this many radii of its branch point is a spur (as in
#: :mod:`pipeline.centreline`).
SPUR_RATIO = 1.5

#: Passes of (1/4, 1/2, 1/4) smoothing of a skeleton chain before its length is summed.
SMOOTHING_PASSES = 3

#: Cut radii tried at a loop's weakest edge: local radius + 1, 2, ... voxel diagonals.
CUT_ATTEMPTS = 4

#: Edges of a cycle tried, thinnest first, when the thinnest cannot be cut cleanly (another
#: vessel touches it there).
CUT_EDGES_TRIED = 3

#: Choices of ``repair_tree(far_components=...)``.
FAR_COMPONENT_CHOICES = ("drop", "keep")

_STRUCTURE = {26: np.ones((3, 3, 3), bool), 6: ndimage.generate_binary_structure(3, 1)}
_OFFSETS = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                     if (dz, dy, dx) != (0, 0, 0)])


class TopologyError(ValueError):
    """A mask or parameter the topology functions cannot use (the message names the bad one)."""


# ----------------------------------------------------------------------------- validation
def _as_mask(mask, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise TopologyError(f"{name} must be a 3-D array (z, y, x), got {arr.ndim}-D with shape {arr.shape}")
    if arr.size == 0:
        raise TopologyError(f"{name} is an empty array (shape {arr.shape})")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise TopologyError(f"{name} must be a boolean (or 0/1) mask, got dtype {arr.dtype} with other values")
        arr = arr.astype(bool)
    return arr


def _spacing(spacing_mm) -> np.ndarray:
    sp = np.asarray(spacing_mm, dtype=float).ravel()
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise TopologyError(f"spacing_mm must be 3 positive voxel sizes in mm (z, y, x), got {spacing_mm!r}")
    return sp


def _connectivity(connectivity) -> int:
    if connectivity not in CONNECTIVITIES:
        raise TopologyError(f"connectivity must be one of {sorted(CONNECTIVITIES)} (foreground neighbours), "
                            f"got {connectivity!r}")
    return int(connectivity)


def _crop(mask: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The mask's bounding box padded with ``margin`` background layers, and the box's origin index."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return np.pad(box, margin), lo - margin


def _window(arr: np.ndarray, lo, shape) -> tuple[np.ndarray, tuple, tuple]:
    """``arr[lo : lo + shape]``, background where the window leaves the array; and the slices
    ``src`` (into ``arr``) and ``dst`` (into the window) of the part inside, so ``arr[src] = win[dst]``."""
    src = tuple(slice(max(int(l_), 0), min(int(l_) + n, size)) for l_, n, size in zip(lo, shape, arr.shape))
    dst = tuple(slice(s_.start - int(l_), s_.stop - int(l_)) for s_, l_ in zip(src, lo))
    out = np.zeros(tuple(shape), arr.dtype)
    out[dst] = arr[src]
    return out, src, dst


# ----------------------------------------------------------------------------- Betti numbers
@dataclass(frozen=True)
class BettiNumbers:
    """Betti numbers of a 3-D mask and the connectivity pair they were counted with.

    Attributes
    ----------
    b0, b1, b2 : int
        Connected components, independent tunnels (loops), enclosed cavities.
    euler : int
        Euler characteristic ``b0 - b1 + b2``, counted on the cubical complex.
    connectivity : int
        Foreground connectivity (26 or 6); ``background_connectivity`` is its complement.
    """

    b0: int
    b1: int
    b2: int
    euler: int
    connectivity: int
    background_connectivity: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.b0, self.b1, self.b2)

    def as_dict(self) -> dict[str, int]:
        return {"b0": self.b0, "b1": self.b1, "b2": self.b2, "euler_characteristic": self.euler,
                "foreground_connectivity": self.connectivity,
                "background_connectivity": self.background_connectivity}


def _euler_closed_cubes(p: np.ndarray) -> int:
    """V - E + F - C of the union of closed unit cubes, one per True voxel; ``p`` padded with False."""
    c = int(p.sum())
    f = sum(int((p[(slice(None),) * a + (slice(1, None),)] | p[(slice(None),) * a + (slice(None, -1),)]).sum())
            for a in range(3))
    e = 0
    for a in range(3):  # edges along axis a: any of the 4 voxels around them (2x2 in the other two axes)
        b, d = [x for x in range(3) if x != a]
        s0 = [slice(None)] * 3
        acc = np.zeros(1, bool)
        for ob in (0, 1):
            for od in (0, 1):
                s = list(s0)
                s[b] = slice(ob, p.shape[b] - 1 + ob)
                s[d] = slice(od, p.shape[d] - 1 + od)
                acc = acc | p[tuple(s)]
        e += int(acc.sum())
    v = np.zeros(1, bool)
    for oz in (0, 1):
        for oy in (0, 1):
            for ox in (0, 1):
                v = v | p[oz:p.shape[0] - 1 + oz, oy:p.shape[1] - 1 + oy, ox:p.shape[2] - 1 + ox]
    return int(v.sum()) - e + f - c


def _euler_centre_complex(p: np.ndarray) -> int:
    """V - E + F - C of the complex on voxel centres (6-connectivity): face pairs, full 2x2, full 2x2x2."""
    v = int(p.sum())
    e = sum(int((p[(slice(None),) * a + (slice(1, None),)] & p[(slice(None),) * a + (slice(None, -1),)]).sum())
            for a in range(3))
    f = 0
    for a in range(3):  # squares normal to axis a
        b, d = [x for x in range(3) if x != a]
        acc = np.ones(1, bool)
        for ob in (0, 1):
            for od in (0, 1):
                s = [slice(None)] * 3
                s[b] = slice(ob, p.shape[b] - 1 + ob)
                s[d] = slice(od, p.shape[d] - 1 + od)
                acc = acc & p[tuple(s)]
        f += int(acc.sum())
    cube = np.ones(1, bool)
    for oz in (0, 1):
        for oy in (0, 1):
            for ox in (0, 1):
                cube = cube & p[oz:p.shape[0] - 1 + oz, oy:p.shape[1] - 1 + oy, ox:p.shape[2] - 1 + ox]
    return v - e + f - int(cube.sum())


def euler_characteristic(mask, *, connectivity: int = 26) -> int:
    """Euler characteristic of a 3-D mask, counted exactly on its cubical complex.

    Parameters
    ----------
    mask : array_like of bool, shape (nz, ny, nx)
        Foreground voxels (0/1 integers accepted).
    connectivity : {26, 6}
        Foreground connectivity; the background takes the complementary one (6, 26).
        26: the union of the voxels as closed unit cubes; 6: the complex on voxel centres.

    Returns
    -------
    int
        ``V - E + F - C`` = ``b0 - b1 + b2``.
    """
    m = _as_mask(mask)
    conn = _connectivity(connectivity)
    if not m.any():
        return 0
    p, _ = _crop(m, 1)
    return _euler_closed_cubes(p) if conn == 26 else _euler_centre_complex(p)


def betti_numbers(mask, *, connectivity: int = 26) -> BettiNumbers:
    """Betti numbers ``(b0, b1, b2)`` of a 3-D binary mask.

    Parameters
    ----------
    mask : array_like of bool, shape (nz, ny, nx)
        Foreground voxels (0/1 integers accepted). The outside of the array is background.
    connectivity : {26, 6}
        Foreground connectivity; the background uses the complementary one (26 -> 6, 6 -> 26),
        the pairs for which Euler-Poincaré holds on the voxel grid.

    Returns
    -------
    BettiNumbers
        ``b0`` components, ``b1`` tunnels, ``b2`` cavities, the Euler characteristic and the
        connectivity pair. Voxel spacing plays no part: topology does not depend on it.

    Examples
    --------
    >>> z, y, x = np.ogrid[-6:7, -6:7, -6:7]
    >>> betti_numbers(x**2 + y**2 + z**2 <= 25).as_tuple()
    (1, 0, 0)
    """
    m = _as_mask(mask)
    conn = _connectivity(connectivity)
    bg = CONNECTIVITIES[conn]
    if not m.any():
        return BettiNumbers(0, 0, 0, 0, conn, bg)
    p, _ = _crop(m, 1)
    b0 = int(ndimage.label(p, structure=_STRUCTURE[conn])[1])
    b2 = int(ndimage.label(~p, structure=_STRUCTURE[bg])[1]) - 1
    chi = _euler_closed_cubes(p) if conn == 26 else _euler_centre_complex(p)
    return BettiNumbers(b0, b0 + b2 - chi, b2, chi, conn, bg)


# ----------------------------------------------------------------------------- skeleton
def skeletonize_mask(mask) -> np.ndarray:
    """One-voxel-wide curve skeleton of a 3-D mask, with the mask's (26, 6) topology.

    Lee et al.'s (1994) directional thinning with Bertrand & Malandain's (1994) simple-point
    test (:mod:`pipeline._topology_kernels`; ``skimage.morphology.skeletonize`` loses branches
    of even thickness in 3-D, scikit-image issue #3757). The mask is cropped to its bounding
    box and padded with background first, so voxels on the array faces are thinned like any
    other. Returns a bool array of the mask's shape.
    """
    from pipeline._topology_kernels import ADJ6, ADJ26, DIRECTIONS, FACES, IN18, thin_curve

    m = _as_mask(mask)
    out = np.zeros(m.shape, bool)
    if not m.any():
        return out
    p, lo = _crop(m, 1)
    img = np.ascontiguousarray(p, dtype=np.uint8)
    thin_curve(img, DIRECTIONS, ADJ26, ADJ6, IN18, FACES)
    idx = np.argwhere(img) + lo
    out[tuple(idx.T)] = True
    return out


@dataclass
class SkeletonGraph:
    """Graph of a mask's curve skeleton: nodes (end, branch, isolated, loop points) and edges.

    Attributes
    ----------
    nodes : list of dict
        ``id``, ``kind`` (``end``: one edge; ``branch``: three or more; ``isolated``: a skeleton of
        one point, e.g. a ball's; ``loop``: the node put on a closed chain; ``path``: a cluster
        on a chain), ``degree`` (edges, a self-loop counting twice), ``index_zyx`` (mean voxel
        index of its voxels), ``voxels`` and ``radius_mm`` (largest distance-transform value).
    edges : list of dict
        ``id``, ``nodes`` (two node ids, equal for a self-loop), ``length_mm`` (of the smoothed
        chain through the voxel centres), ``mean_radius_mm``, ``min_radius_mm`` (over the chain's
        interior voxels, or all its voxels when it has none), ``voxels`` (path length in voxels).
    paths : list of ndarray, shape (n_i, 3)
        Voxel indices (z, y, x) of each edge's chain, node voxels at both ends.
    path_radii_mm : list of ndarray, shape (n_i,)
        The distance transform of the mask (mm) along each chain.
    n_components : int
        Connected components of the graph.
    skeleton : ndarray of bool
        The skeleton voxels (after spur pruning), shape of the mask.
    """

    nodes: list[dict]
    edges: list[dict]
    paths: list[np.ndarray] = field(repr=False)
    path_radii_mm: list[np.ndarray] = field(repr=False)
    n_components: int
    skeleton: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def n_end_points(self) -> int:
        return sum(n["kind"] == "end" for n in self.nodes)

    @property
    def n_branch_points(self) -> int:
        return sum(n["kind"] == "branch" for n in self.nodes)

    @property
    def n_cycles(self) -> int:
        """Independent cycles of the multigraph: ``E - V + components``."""
        return len(self.edges) - len(self.nodes) + self.n_components

    @property
    def total_length_mm(self) -> float:
        return float(sum(e["length_mm"] for e in self.edges))

    def summary(self) -> dict[str, Any]:
        return {"end_points": self.n_end_points, "branch_points": self.n_branch_points,
                "nodes": len(self.nodes), "edges": len(self.edges), "components": self.n_components,
                "cycles": self.n_cycles, "total_length_mm": self.total_length_mm,
                "skeleton_voxels": int(self.skeleton.sum())}

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "node_list": self.nodes, "edge_list": self.edges}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[rb] = ra
        return True


def _neighbours(idx: np.ndarray, shape) -> np.ndarray:
    """(N, 26) indices into ``idx`` of each voxel's 26-neighbours in the set, -1 where none."""
    dims = np.asarray(shape) + 2  # linear index in a grid padded by one, so no wrap-around
    lin = np.ravel_multi_index(tuple((idx + 1).T), dims)
    order = np.argsort(lin)
    lin_sorted = lin[order]
    nbr = np.full((len(idx), 26), -1, np.int64)
    for k, off in enumerate(_OFFSETS):
        q = lin + int(np.ravel_multi_index(tuple(off + 1), dims) - np.ravel_multi_index((1, 1, 1), dims))
        pos = np.clip(np.searchsorted(lin_sorted, q), 0, len(lin) - 1)
        hit = lin_sorted[pos] == q
        nbr[hit, k] = order[pos[hit]]
    return nbr


def skeleton_graph(mask, *, spacing_mm=(1.0, 1.0, 1.0), skeleton=None,
                   spur_ratio: float = SPUR_RATIO) -> SkeletonGraph:
    """The curve skeleton of a 3-D mask as a graph of end points, branch points and edges.

    Parameters
    ----------
    mask : array_like of bool, shape (nz, ny, nx)
        The tree (0/1 integers accepted).
    spacing_mm : 3 floats
        Voxel size (dz, dy, dx) in mm, for edge lengths and radii.
    skeleton : array_like of bool, optional
        A skeleton of ``mask`` already computed (default: :func:`skeletonize_mask`).
    spur_ratio : float
        A terminal edge shorter than ``spur_ratio`` times the radius of the branch point it
        hangs from is a bump of the wall, not a branch, and is pruned (the shortest one per
        branch point at a time, until none is left), as in :mod:`pipeline.centreline`.
        0 keeps every edge.

    Returns
    -------
    SkeletonGraph
        Nodes, edges (length in mm, mean radius in mm), the number of components and
        cycles (``E - V + components``), and the total skeleton length in mm.
    """
    m = _as_mask(mask)
    sp = _spacing(spacing_mm)
    if not (np.isfinite(spur_ratio) and spur_ratio >= 0):
        raise TopologyError(f"spur_ratio must be a finite number >= 0 (radii), got {spur_ratio!r}")
    skel = skeletonize_mask(m) if skeleton is None else _as_mask(skeleton, "skeleton").copy()
    if skel.shape != m.shape:
        raise TopologyError(f"skeleton has shape {skel.shape} but mask has shape {m.shape}: they must match")
    if not (m | skel).any():
        return SkeletonGraph([], [], [], [], 0, skel, tuple(float(v) for v in sp))
    box, lo = _crop(m | skel, 1)
    mb, src, dst = _window(m, lo, box.shape)
    skel_full, skel = skel, _window(skel, lo, box.shape)[0]
    radius = ndimage.distance_transform_edt(mb, sampling=sp)
    g = _graph(skel, radius, sp)
    while spur_ratio > 0:
        shortest: dict[int, tuple[float, int]] = {}
        for i, e in enumerate(g.edges):
            a, b = e["nodes"]
            kinds = (g.nodes[a]["kind"], g.nodes[b]["kind"])
            if sorted(kinds) != ["branch", "end"]:
                continue
            j = a if kinds[0] == "branch" else b
            if e["length_mm"] < spur_ratio * g.nodes[j]["radius_mm"] and e["length_mm"] < shortest.get(j, (np.inf,))[0]:
                shortest[j] = (e["length_mm"], i)
        if not shortest:
            break
        for j, (_, i) in shortest.items():
            path = g.paths[i]
            at_branch = 0 if g.edges[i]["nodes"][0] == j else len(path) - 1
            drop = np.delete(path, at_branch, axis=0)
            skel[tuple(drop.T)] = False
        g = _graph(skel, radius, sp)
    skel_full[src] = skel[dst]
    for nd in g.nodes:
        nd["index_zyx"] = [c + float(o) for c, o in zip(nd["index_zyx"], lo)]
    return SkeletonGraph(g.nodes, g.edges, [p_ + lo for p_ in g.paths], g.path_radii_mm, g.n_components,
                         skel_full, g.spacing_mm)


def _path_length(xyz: np.ndarray, passes: int = SMOOTHING_PASSES) -> float:
    """Length (mm) of a voxel chain after ``passes`` of (1/4, 1/2, 1/4) smoothing, end points fixed.

    The staircase of a digital line through voxel centres is longer than the line (up to 8 %
    for oblique directions); smoothing removes most of that and shortens a circle of radius
    ``R`` voxels by only about ``passes / (4 R)`` voxels per radian.
    """
    p = np.asarray(xyz, float)
    for _ in range(passes if len(p) > 2 else 0):
        p = np.concatenate([p[:1], 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:], p[-1:]])
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())


def _graph(skel: np.ndarray, radius: np.ndarray, sp: np.ndarray) -> SkeletonGraph:
    """The graph of a skeleton (see :func:`skeleton_graph`); ``radius`` is the mask's distance map in mm."""
    idx = np.argwhere(skel)
    n = len(idx)
    if n == 0:
        return SkeletonGraph([], [], [], [], 0, skel, tuple(float(s) for s in sp))
    nbr = _neighbours(idx, skel.shape)
    deg = (nbr >= 0).sum(axis=1)
    r_vox = radius[tuple(idx.T)]

    # node voxels: clusters of branch voxels (>= 3 neighbours), then ends and isolated voxels
    node_of = np.full(n, -1, np.int64)
    junction = np.flatnonzero(deg >= 3)
    uf = _UnionFind(n)
    for v in junction:
        for w in nbr[v]:
            if w >= 0 and deg[w] >= 3:
                uf.union(int(v), int(w))
    roots: dict[int, int] = {}
    for v in junction:
        node_of[v] = roots.setdefault(uf.find(int(v)), len(roots))
    changed = True
    while changed:  # a chain voxel whose two neighbours lie in one cluster belongs to it
        changed = False
        for v in np.flatnonzero((deg == 2) & (node_of < 0)):
            a, b = (int(w) for w in nbr[v] if w >= 0)
            if node_of[a] >= 0 and node_of[a] == node_of[b]:
                node_of[v] = node_of[a]
                changed = True
    n_nodes = len(roots)
    for v in np.flatnonzero((deg <= 1) & (node_of < 0)):
        node_of[v] = n_nodes
        n_nodes += 1

    # edges: walk from each node voxel along chains of two-neighbour voxels
    paths: list[list[int]] = []
    visited = np.zeros(n, bool)
    direct: set[tuple[int, int]] = set()
    for v in np.flatnonzero(node_of >= 0):
        for w in nbr[v]:
            if w < 0 or node_of[w] == node_of[v]:
                continue
            if node_of[w] >= 0:
                key = (int(min(v, w)), int(max(v, w)))
                if key not in direct:
                    direct.add(key)
                    paths.append([int(v), int(w)])
                continue
            if visited[w]:
                continue
            path, prev, cur = [int(v), int(w)], int(v), int(w)
            visited[cur] = True
            while True:
                nxt = next(int(u) for u in nbr[cur] if u >= 0 and u != prev)
                path.append(nxt)
                if node_of[nxt] >= 0:
                    break
                visited[nxt] = True
                prev, cur = cur, nxt
            paths.append(path)
    for s in np.flatnonzero((node_of < 0) & ~visited):  # closed chains without a node
        if visited[s]:
            continue
        node_of[s] = n_nodes
        n_nodes += 1
        prev, cur = int(s), int(next(u for u in nbr[s] if u >= 0))
        path = [int(s), cur]
        while cur != s:
            visited[cur] = True
            nxt = next(int(u) for u in nbr[cur] if u >= 0 and u != prev)
            path.append(nxt)
            prev, cur = cur, nxt
        paths.append(path)

    # a cluster on a chain (two edge ends) is not a node: join its two edges
    ends = [(node_of[p[0]], node_of[p[-1]]) for p in paths]
    node_deg = np.zeros(n_nodes, int)
    for a, b in ends:
        node_deg[a] += 1
        node_deg[b] += 1
    order = np.argsort(node_of, kind="stable")
    bounds = np.searchsorted(node_of[order], np.arange(n_nodes + 1))
    members = [order[bounds[k]:bounds[k + 1]] for k in range(n_nodes)]
    incident: list[set[int]] = [set() for _ in range(n_nodes)]
    for i, (a, b) in enumerate(ends):
        incident[a].add(i)
        incident[b].add(i)
    for k in range(n_nodes):
        if node_deg[k] != 2 or len(incident[k]) != 2 or deg[members[k]].max() < 3:
            continue
        i, j = sorted(incident[k])
        pi = paths[i] if ends[i][1] == k else paths[i][::-1]
        pj = paths[j] if ends[j][0] == k else paths[j][::-1]
        paths[i] = pi + pj[1:] if pi[-1] == pj[0] else pi + pj
        paths[j] = []
        other = ends[j][1] if ends[j][0] == k else ends[j][0]
        incident[other].discard(j)
        incident[other].add(i)
        ends[i] = (node_of[paths[i][0]], node_of[paths[i][-1]])
        ends[j] = (-1, -1)
        node_deg[k] = -1  # removed
    keep_nodes = [k for k in range(n_nodes) if node_deg[k] >= 0]
    new_id = {k: i for i, k in enumerate(keep_nodes)}

    xyz = idx * sp
    nodes = []
    for k in keep_nodes:
        vox = members[k]
        d = int(node_deg[k])
        kind = ("isolated" if d == 0 else "end" if d == 1 else "branch" if d >= 3
                else "loop" if any(a == b == k for a, b in ends) else "path")
        nodes.append({"id": new_id[k], "kind": kind, "degree": d,
                      "index_zyx": [float(c) for c in idx[vox].mean(axis=0)], "voxels": int(len(vox)),
                      "radius_mm": float(r_vox[vox].max())})
    edges, out_paths = [], []
    for p, (a, b) in zip(paths, ends):
        if not p:
            continue
        p = np.asarray(p)
        inner = p[1:-1] if len(p) > 2 else p
        rr = r_vox[inner]
        edges.append({"id": len(edges), "nodes": [new_id[int(a)], new_id[int(b)]],
                      "length_mm": _path_length(xyz[p]),
                      "mean_radius_mm": float(rr.mean()), "min_radius_mm": float(rr.min()),
                      "voxels": int(len(p))})
        out_paths.append(idx[p])
    uf = _UnionFind(len(nodes))
    for e in edges:
        uf.union(*e["nodes"])
    n_comp = len({uf.find(i) for i in range(len(nodes))})
    return SkeletonGraph(nodes, edges, out_paths, [radius[tuple(p_.T)] for p_ in out_paths], n_comp, skel,
                         tuple(float(s) for s in sp))


# ----------------------------------------------------------------------------- clDice
def cldice(pred, truth, *, pred_skeleton=None, truth_skeleton=None) -> dict[str, float]:
    """Centreline Dice of a predicted tubular mask against a reference (Shit et al., CVPR 2021).

    Parameters
    ----------
    pred, truth : array_like of bool, shape (nz, ny, nx)
        Predicted (``V_P``) and reference (``V_L``) masks on the same grid.
    pred_skeleton, truth_skeleton : array_like of bool, optional
        Their skeletons (default :func:`skeletonize_mask`).

    Returns
    -------
    dict
        ``topology_precision`` ``|S_P ∩ V_L| / |S_P|``, ``topology_sensitivity``
        ``|S_L ∩ V_P| / |S_L|`` and ``cldice`` (their harmonic mean). A ratio whose skeleton
        is empty is ``nan``; clDice is ``nan`` when either is, 0 when both are 0.
    """
    p = _as_mask(pred, "pred")
    t = _as_mask(truth, "truth")
    if p.shape != t.shape:
        raise TopologyError(f"pred has shape {p.shape} but truth has shape {t.shape}: they must match")
    sp_ = skeletonize_mask(p) if pred_skeleton is None else _as_mask(pred_skeleton, "pred_skeleton")
    st_ = skeletonize_mask(t) if truth_skeleton is None else _as_mask(truth_skeleton, "truth_skeleton")
    n_p, n_t = int(sp_.sum()), int(st_.sum())
    tprec = float((sp_ & t).sum()) / n_p if n_p else float("nan")
    tsens = float((st_ & p).sum()) / n_t if n_t else float("nan")
    if np.isnan(tprec) or np.isnan(tsens):
        cl = float("nan")
    else:
        cl = 2 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else 0.0
    return {"cldice": cl, "topology_precision": tprec, "topology_sensitivity": tsens,
            "pred_skeleton_voxels": n_p, "truth_skeleton_voxels": n_t}


# ----------------------------------------------------------------------------- repair
@dataclass
class TreeRepair:
    """A repaired tree mask and what was changed to get it.

    Attributes
    ----------
    mask : ndarray of bool
        The repaired mask (same shape as the input).
    betti_before, betti_after : BettiNumbers
        (26, 6) Betti numbers of the input and of the result.
    bridges : list of dict
        ``from_index_zyx``, ``to_index_zyx`` (the skeleton points joined), ``gap_mm`` (distance
        between the nearest voxel centres of the two pieces), ``length_mm`` (bridge axis),
        ``radius_mm``, ``voxels_added``, ``component_voxels``.
    cuts : list of dict
        ``index_zyx`` (narrowest skeleton voxel of the cut edge), ``radius_mm`` (its radius),
        ``edge_mean_radius_mm``, ``edge_length_mm``, ``cut_radius_mm`` (disk removed),
        ``voxels_removed``, ``severed`` (whether the vessel is severed locally).
    dropped : list of dict
        Components farther than ``max_gap_mm``: ``voxels``, ``centroid_index_zyx``, ``gap_mm``,
        ``action`` (``dropped`` or ``kept``).
    """

    mask: np.ndarray = field(repr=False)
    betti_before: BettiNumbers
    betti_after: BettiNumbers
    bridges: list[dict]
    cuts: list[dict]
    dropped: list[dict]
    voxels_added: int
    voxels_removed: int
    rounds: int
    max_gap_mm: float

    @property
    def is_tree(self) -> bool:
        """One component without loops (cavities allowed)."""
        return self.betti_after.b0 == 1 and self.betti_after.b1 == 0

    def as_dict(self) -> dict[str, Any]:
        return {"is_tree": self.is_tree,
                "components_before": self.betti_before.b0, "components_after": self.betti_after.b0,
                "loops_before": self.betti_before.b1, "loops_after": self.betti_after.b1,
                "cavities_before": self.betti_before.b2, "cavities_after": self.betti_after.b2,
                "betti_before": self.betti_before.as_dict(), "betti_after": self.betti_after.as_dict(),
                "max_gap_mm": self.max_gap_mm, "bridges": self.bridges, "cuts": self.cuts,
                "far_components": self.dropped, "voxels_added": self.voxels_added,
                "voxels_removed": self.voxels_removed, "rounds": self.rounds}


def _capsule(shape, a: np.ndarray, b: np.ndarray, radius_mm: float, sp: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Voxels within ``radius_mm`` of segment a-b (indices, mm spacing ``sp``) plus the voxels along
    it (so the set is 26-connected however thin); returns the boolean patch and its slices."""
    pad = np.ceil(radius_mm / sp).astype(int) + 1
    lo = np.maximum(np.minimum(a, b) - pad, 0).astype(int)
    hi = np.minimum(np.maximum(a, b) + pad + 1, shape).astype(int)
    sl = tuple(slice(int(l_), int(h)) for l_, h in zip(lo, hi))
    g = np.stack(np.meshgrid(*[np.arange(l_, h) for l_, h in zip(lo, hi)], indexing="ij"), axis=-1) * sp
    pa, pb = a * sp, b * sp
    d = pb - pa
    t = np.clip(((g - pa) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(g - (pa + t[..., None] * d), axis=-1)
    patch = dist <= radius_mm
    steps = int(np.ceil(np.abs(b - a).max())) * 2 + 1
    line = np.rint(a + np.linspace(0, 1, steps)[:, None] * (b - a)).astype(int) - lo
    patch[tuple(line.T)] = True
    return patch, sl


def _nearest_point(points: np.ndarray, target: np.ndarray, sp: np.ndarray) -> np.ndarray:
    return points[np.argmin((((points - target) * sp) ** 2).sum(axis=1))]


def _bridge(m: np.ndarray, sp: np.ndarray, max_gap_mm: float, far: str, bridges: list, dropped: list) -> None:
    """Join the components of ``m`` (in place) to its largest one.

    Candidate gaps: for each component but the largest, the nearest voxel of every other
    component within ``max_gap_mm`` (one distance transform over the component's box grown by
    the gap). Kruskal's algorithm over the candidates, shortest first, picks the bridges that
    join components (a minimum spanning forest of the gaps); those that end up joined to the
    largest component are drawn, the others are far components, dropped or kept.
    """
    lab, n = ndimage.label(m, structure=_STRUCTURE[26])
    if n < 2:
        return
    main = int(np.argmax(ndimage.sum(m, lab, index=np.arange(1, n + 1)))) + 1
    pad = np.ceil(max_gap_mm / sp).astype(int) + 1
    cands = []
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if k == main:
            continue
        lo = np.maximum([b.start for b in box] - pad, 0)
        hi = np.minimum([b.stop for b in box] + pad, m.shape)
        sub = lab[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
        other = (sub != 0) & (sub != k)
        if not other.any():
            continue
        dist, ind = ndimage.distance_transform_edt(~other, sampling=sp, return_indices=True)
        own = np.argwhere(sub == k)
        d = dist[tuple(own.T)]
        near = ind[(slice(None),) + tuple(own.T)].T
        near_lab = sub[tuple(near.T)]
        for other_k in np.unique(near_lab):
            sel = np.flatnonzero(near_lab == other_k)
            q = sel[np.argmin(d[sel])]
            if d[q] <= max_gap_mm:
                cands.append((float(d[q]), k, int(other_k), own[q] + lo, near[q] + lo))
    cands.sort(key=lambda c: c[0])
    uf = _UnionFind(n + 1)
    chosen = [c for c in cands if uf.union(c[1], c[2])]
    root = uf.find(main)
    chosen = [c for c in chosen if uf.find(c[1]) == root]
    if chosen:
        skel = np.argwhere(skeletonize_mask(m))
        skel_lab = lab[tuple(skel.T)]
        radius = ndimage.distance_transform_edt(m, sampling=sp)
    for gap, k, other_k, a, b in chosen:
        sk_a, sk_b = skel[skel_lab == k], skel[skel_lab == other_k]
        sa = _nearest_point(sk_a, a, sp) if len(sk_a) else a
        sb = _nearest_point(sk_b, b, sp) if len(sk_b) else b
        r = float(min(radius[tuple(sa)], radius[tuple(sb)]))
        patch, sl = _capsule(m.shape, sa.astype(float), sb.astype(float), r, sp)
        added = int((patch & ~m[sl]).sum())
        m[sl] |= patch
        bridges.append({"from_index_zyx": [int(c) for c in sa], "to_index_zyx": [int(c) for c in sb],
                        "gap_mm": gap, "length_mm": float(np.linalg.norm((sa - sb) * sp)), "radius_mm": r,
                        "voxels_added": added, "component_voxels": int((lab == k).sum())})
    far_labels = [k for k in range(1, n + 1) if uf.find(k) != root]
    if far_labels:
        joined = m & ~np.isin(lab, far_labels)
        dist = ndimage.distance_transform_edt(~joined, sampling=sp)
        gaps = ndimage.minimum(dist, lab, index=far_labels)
        for k, gap in sorted(zip(far_labels, gaps), key=lambda x: x[1]):
            comp = lab == k
            dropped.append({"voxels": int(comp.sum()),
                            "centroid_index_zyx": [float(c) for c in np.argwhere(comp).mean(axis=0)],
                            "gap_mm": float(gap), "action": "dropped" if far == "drop" else "kept"})
            if far == "drop":
                m[comp] = False


def _cycles(g: SkeletonGraph) -> list[list[int]]:
    """One list of edges per independent cycle, thinnest first.

    The maximum spanning forest by mean radius (Kruskal) keeps the thickest edges; each edge
    outside it closes one cycle with the forest path between its ends, and is that cycle's
    thinnest edge. Cycles come thinnest-closing-edge first.
    """
    uf = _UnionFind(len(g.nodes))
    order = sorted(range(len(g.edges)), key=lambda i: (-g.edges[i]["mean_radius_mm"], -g.edges[i]["length_mm"]))
    adj: dict[int, list[tuple[int, int]]] = {}
    closing = []
    for i in order:
        a, b = g.edges[i]["nodes"]
        if uf.union(a, b):
            adj.setdefault(a, []).append((b, i))
            adj.setdefault(b, []).append((a, i))
        else:
            closing.append(i)
    out = []
    for i in closing[::-1]:
        a, b = g.edges[i]["nodes"]
        prev = {a: (a, -1)}
        stack = [a]
        while stack and b not in prev:  # the forest path from a to b
            v = stack.pop()
            for w, e in adj.get(v, []):
                if w not in prev:
                    prev[w] = (v, e)
                    stack.append(w)
        path_edges, v = [], b
        while v != a and v in prev:
            v, e = prev[v]
            path_edges.append(e)
        out.append([i] + sorted(path_edges, key=lambda e: g.edges[e]["mean_radius_mm"]))
    return out


def _cut(m: np.ndarray, g: SkeletonGraph, i: int, sp: np.ndarray, now: BettiNumbers) -> tuple[dict, BettiNumbers]:
    """Remove the thinnest cross-section of edge ``i`` from ``m`` (in place).

    The cut is the slab ``|(x - p) . t| <= |spacing| / 2`` (thick enough that no two
    26-neighbours lie on opposite sides) within ``rho`` of the narrowest skeleton voxel ``p``
    of the edge, ``t`` the edge's direction there. ``rho`` starts at the local radius plus one
    voxel diagonal and grows by a diagonal (``CUT_ATTEMPTS`` tries) until the cut removes a
    loop and nothing else (``b1`` falls, ``b0`` and ``b2`` stay); a cut that never does is
    undone. Returns the cut's record and the Betti numbers after it.
    """
    path = g.paths[i]
    r_path = g.path_radii_mm[i]
    inner = np.arange(1, len(path) - 1) if len(path) > 2 else np.arange(len(path))
    # the narrowest voxel; among those within 10 % of the narrowest, the one farthest along
    # the chain from both of its ends (away from the junctions, where the branches merge)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path * sp, axis=0), axis=1))])
    near_min = inner[r_path[inner] <= 1.1 * r_path[inner].min() + 1e-9]
    j = int(near_min[np.argmax(np.minimum(arc[near_min], arc[-1] - arc[near_min]))])
    p = path[j].astype(float)
    r = float(r_path[j])
    k = max(1, int(round(r / sp.min())))
    t = (path[min(j + k, len(path) - 1)] - path[max(j - k, 0)]) * sp
    t = t / np.linalg.norm(t) if np.linalg.norm(t) > 0 else np.array([1.0, 0.0, 0.0])
    diag = float(np.linalg.norm(sp))
    e = g.edges[i]
    rec = {"index_zyx": [int(c) for c in path[j]], "radius_mm": r, "edge_mean_radius_mm": e["mean_radius_mm"],
           "edge_length_mm": e["length_mm"], "cut_radius_mm": None, "voxels_removed": 0, "severed": False}
    for attempt in range(CUT_ATTEMPTS):
        rho = r + (attempt + 1) * diag
        pad = np.ceil(rho / sp).astype(int) + 1
        lo = np.maximum(path[j] - pad, 0)
        hi = np.minimum(path[j] + pad + 1, m.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        d = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1) * sp - p * sp
        disk = m[sl] & (np.abs(d @ t) <= 0.5 * diag + 1e-9) & (np.linalg.norm(d, axis=-1) <= rho)
        at = tuple(path[j] - lo)
        if not disk[at]:
            break
        pieces, _ = ndimage.label(disk, structure=_STRUCTURE[26])
        cut = pieces == pieces[at]  # only the piece of the disk through this vessel
        m[sl] &= ~cut
        after = betti_numbers(m)
        if after.b0 == now.b0 and after.b2 == now.b2 and after.b1 < now.b1:
            rec.update(cut_radius_mm=float(rho), voxels_removed=int(cut.sum()), severed=True)
            return rec, after
        m[sl] |= cut
    return rec, now


def repair_tree(mask, *, spacing_mm=(1.0, 1.0, 1.0), max_gap_mm: float = 5.0, far_components: str = "drop",
                max_rounds: int = 3) -> TreeRepair:
    """Make a tree mask (airway, vessel) one component without loops.

    Parameters
    ----------
    mask : array_like of bool, shape (nz, ny, nx)
        The tree (0/1 integers accepted); needs at least one foreground voxel.
    spacing_mm : 3 floats
        Voxel size (dz, dy, dx) in mm.
    max_gap_mm : float
        Largest gap bridged: distance in mm between the nearest voxel centres of a component
        and of the tree joined so far.
    far_components : {"drop", "keep"}
        What to do with components farther than ``max_gap_mm``: remove them from the mask or
        leave them (then the result has more than one component). Either way they are reported.
    max_rounds : int
        Rounds of bridge-then-cut, repeated while the result is not a tree (a cut that did
        not sever, a bridge that closed a loop).

    Returns
    -------
    TreeRepair
        The repaired mask, Betti numbers before and after ((1, 0, b2) on success: cavities
        are left as they are), the bridges, cuts and far components, voxels added and removed.
    """
    m0 = _as_mask(mask)
    sp = _spacing(spacing_mm)
    if not m0.any():
        raise TopologyError("mask has no foreground voxel: there is no tree to repair")
    if not (np.isfinite(max_gap_mm) and max_gap_mm >= 0):
        raise TopologyError(f"max_gap_mm must be a finite distance >= 0 mm, got {max_gap_mm!r}")
    if far_components not in FAR_COMPONENT_CHOICES:
        raise TopologyError(f"far_components must be one of {FAR_COMPONENT_CHOICES}, got {far_components!r}")
    if int(max_rounds) < 1:
        raise TopologyError(f"max_rounds must be at least 1, got {max_rounds!r}")
    before = betti_numbers(m0)
    margin = 2
    box, lo = _crop(m0, margin)
    m = box.copy()
    bridges: list[dict] = []
    cuts: list[dict] = []
    dropped: list[dict] = []
    after = before
    rounds = 0
    for rounds in range(1, int(max_rounds) + 1):
        if after.b0 > 1 and not dropped:
            _bridge(m, sp, float(max_gap_mm), far_components, bridges, dropped)
            after = betti_numbers(m)
        if after.b1 > 0:
            g = skeleton_graph(m, spacing_mm=sp)
            for cycle in _cycles(g):
                for i in cycle[:CUT_EDGES_TRIED]:  # the thinnest edge first, the next ones if it will not cut
                    rec, after = _cut(m, g, i, sp, after)
                    if rec["severed"]:
                        break
                cuts.append(rec)
                if after.b1 == 0:
                    break
        if after.b1 == 0 and (after.b0 == 1 or dropped):
            break
    out = np.zeros(m0.shape, bool)
    _, src, dst = _window(m0, lo, m.shape)
    out[src] = m[dst]
    for rec in bridges:
        rec["from_index_zyx"] = [int(c + o) for c, o in zip(rec["from_index_zyx"], lo)]
        rec["to_index_zyx"] = [int(c + o) for c, o in zip(rec["to_index_zyx"], lo)]
    for rec in cuts:
        rec["index_zyx"] = [int(c + o) for c, o in zip(rec["index_zyx"], lo)]
    for rec in dropped:
        rec["centroid_index_zyx"] = [float(c + o) for c, o in zip(rec["centroid_index_zyx"], lo)]
    return TreeRepair(out, before, betti_numbers(out), bridges, cuts, dropped,
                      int((out & ~m0).sum()), int((m0 & ~out).sum()), rounds, float(max_gap_mm))
