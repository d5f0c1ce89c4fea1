"""Numba kernels of :mod:`pipeline.topology` (private; callers validate).

Curve thinning of a 3-D binary image that keeps its (26, 6) topology: the directional scheme
of Lee, Kashyap & Chu (CVGIP: Graph. Models Image Process. 56:462, 1994) — six
sub-iterations, one per face direction; in each, the border points of that direction that
are simple and not end points are collected, then re-checked and deleted one at a time — with
the simple-point test of Bertrand & Malandain ("A new characterization of three-dimensional
simple points", Pattern Recognit. Lett. 15:169, 1994): a foreground point ``x`` is simple for
(26, 6) iff the foreground of its 26-neighbourhood (without ``x``) is one 26-connected
component, and the background of its 18-neighbourhood holds exactly one 6-connected component
that is 6-adjacent to ``x``. Deleting a simple point does not change the topology, so the
sequential re-check keeps every component, tunnel and cavity. An end point (one
26-neighbour) is never deleted, so branches keep their length.

(``skimage.morphology.skeletonize`` in 3-D implements the same scheme with a different
simple-point test and loses whole branches of even thickness, scikit-image issue #3757.)

The 3x3x3 neighbourhood is numbered ``9 (dz + 1) + 3 (dy + 1) + (dx + 1)``; 13 is the centre.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Flags shared by every kernel (compiled on first call, cached on disk).
NJIT_FLAGS = {"cache": True, "nogil": True}


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pos = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    cheb = np.abs(pos[:, None] - pos[None]).max(axis=2)
    manh = np.abs(pos[:, None] - pos[None]).sum(axis=2)
    in18 = (np.abs(pos).sum(axis=1) <= 2) & (np.arange(27) != 13)
    adj26 = np.full((27, 26), -1, np.int64)
    adj6 = np.full((27, 6), -1, np.int64)
    for i in range(27):
        j26 = [j for j in range(27) if j != 13 and j != i and cheb[i, j] == 1]
        adj26[i, :len(j26)] = j26
        j6 = [j for j in range(27) if in18[j] and j != i and manh[i, j] == 1]
        adj6[i, :len(j6)] = j6
    faces = np.array([4, 10, 12, 14, 16, 22], np.int64)
    return adj26, adj6, in18.astype(np.uint8), faces


ADJ26, ADJ6, IN18, FACES = _tables()
#: Every point of the neighbourhood may hold foreground; every point seeds a foreground component.
ALL27 = np.ones(27, np.uint8)
ALL_POINTS = np.arange(27, dtype=np.int64)
#: Face directions in the order of the sub-iterations (z, y, x offsets of the neighbour that must be background).
DIRECTIONS = np.array([[0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0]], np.int64)


@njit(**NJIT_FLAGS)
def neighbourhood(img, z, y, x, nb):
    """Fill ``nb`` (27 uint8) with the 3x3x3 block around (z, y, x); returns the foreground neighbours."""
    k = 0
    s = 0
    for dz in range(-1, 2):
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                v = img[z + dz, y + dy, x + dx]
                nb[k] = v
                s += v
                k += 1
    return s - nb[13]


@njit(**NJIT_FLAGS)
def _one_component(nb, foreground, allowed, seeds, adj):
    """Whether the points ``s`` of the neighbourhood with ``(nb[s] != 0) == foreground`` and
    ``allowed[s]`` that are reachable from ``seeds`` form exactly one component under ``adj``
    (the centre, 13, is never one of them)."""
    seen = np.zeros(27, np.uint8)
    stack = np.empty(27, np.int64)
    comps = 0
    for s in seeds:
        if s == 13 or (nb[s] != 0) != foreground or allowed[s] == 0 or seen[s] == 1:
            continue
        comps += 1
        if comps > 1:
            return False
        seen[s] = 1
        stack[0] = s
        top = 1
        while top > 0:
            top -= 1
            v = stack[top]
            for k in range(adj.shape[1]):
                w = adj[v, k]
                if w < 0:
                    break
                if w != 13 and (nb[w] != 0) == foreground and allowed[w] == 1 and seen[w] == 0:
                    seen[w] = 1
                    stack[top] = w
                    top += 1
    return comps == 1


@njit(**NJIT_FLAGS)
def is_simple(nb, adj26, adj6, in18, faces):
    """Bertrand & Malandain's (26, 6) simple-point test on a 27-neighbourhood: the foreground
    26-neighbours are one 26-component, and the background 18-neighbours hold exactly one
    6-component 6-adjacent to the centre (seeded from the six face neighbours)."""
    return (_one_component(nb, True, ALL27, ALL_POINTS, adj26)
            and _one_component(nb, False, in18, faces, adj6))


@njit(**NJIT_FLAGS)
def thin_curve(img, directions, adj26, adj6, in18, faces):
    """Thin ``img`` (uint8 0/1, a zero layer on every face) to a curve skeleton, in place.

    Returns the number of full six-direction passes made.
    """
    n = 0
    for z in range(img.shape[0]):
        for y in range(img.shape[1]):
            for x in range(img.shape[2]):
                if img[z, y, x] != 0:
                    n += 1
    coords = np.empty((n, 3), np.int64)
    n = 0
    for z in range(img.shape[0]):
        for y in range(img.shape[1]):
            for x in range(img.shape[2]):
                if img[z, y, x] != 0:
                    coords[n, 0] = z
                    coords[n, 1] = y
                    coords[n, 2] = x
                    n += 1
    nb = np.empty(27, np.uint8)
    cand = np.empty(n, np.int64)
    passes = 0
    while True:
        passes += 1
        unchanged = 0
        for d in range(directions.shape[0]):
            dz, dy, dx = directions[d, 0], directions[d, 1], directions[d, 2]
            nc = 0
            for i in range(n):
                z, y, x = coords[i, 0], coords[i, 1], coords[i, 2]
                if img[z, y, x] == 0 or img[z + dz, y + dy, x + dx] != 0:
                    continue
                if neighbourhood(img, z, y, x, nb) == 1:
                    continue
                if is_simple(nb, adj26, adj6, in18, faces):
                    cand[nc] = i
                    nc += 1
            deleted = 0
            for c in range(nc):
                i = cand[c]
                z, y, x = coords[i, 0], coords[i, 1], coords[i, 2]
                if neighbourhood(img, z, y, x, nb) == 1:
                    continue
                if is_simple(nb, adj26, adj6, in18, faces):
                    img[z, y, x] = 0
                    deleted += 1
            if deleted == 0:
                unchanged += 1
        m = 0
        for i in range(n):
            if img[coords[i, 0], coords[i, 1], coords[i, 2]] != 0:
                coords[m] = coords[i]
                m += 1
        n = m
        if unchanged == directions.shape[0]:
            return passes
    return passes
