"""Mass-preserving resampling of voxel phantoms, cropping to a scan range, and phantom export.

What it is for
--------------
A phantom built from a CT (:mod:`phantoms.from_ct`) has the CT's fine grid (often
0.7–1 mm in-plane); the photon-transport engine runs faster on a coarser grid, and a dose
calculation only needs the slices a scan covers. Coarsening must not change what the dose
is divided by: each organ's **mass**. This module resamples a label map and its density
map so that every label keeps exactly its fine-grid mass, crops volumes to a z range in
world millimetres, and writes a phantom in the engine's file set.

The resampling method
---------------------
Along each array axis ``a`` the coarse grid has spacing ``H_a`` and the fine grid ``h_a``;
``r_a = H_a / h_a`` is the (integer or general) factor. Coarse voxel ``c`` covers the fine
index interval ``[c r_a, (c+1) r_a)`` (both grids start at the same low edge), so the
coarse grid covers the fine one; where it sticks out at the high end it covers nothing
(no fine voxel, zero mass). ``w(c, i)`` is the length of the overlap of coarse voxel ``c``
with fine voxel ``i`` in units of a fine voxel; in 3-D the overlap volume fraction is the
product ``w = w_z w_y w_x`` (exact, separable, integers for integer factors).

1. **Label**: the fine label with the largest overlap volume in the coarse voxel (the
   majority / mode label for integer factors; weighted by overlap for general factors).
   Fine voxels outside the coarse voxel do not vote. Ties (frequent for even factors at
   flat boundaries: 4 against 4 of 8) go to the smallest tied label id on coarse voxels
   with an even index sum ``cz + cy + cx`` and to the largest on odd ones, so that tied
   boundary blocks are shared evenly between the two sides instead of always eroding the
   same organ.
2. **Block density**: the overlap-weighted mean ``ρ̄_c = Σ_i w ρ_i / (r_z r_y r_x)``,
   so ``ρ̄_c V_c`` is exactly the fine mass inside the coarse voxel and the total mass is
   preserved.
3. **Vanished labels**: a label that is nowhere the majority (a thin or small organ) would
   lose all its mass. It is given the coarse voxel where its overlap volume is largest,
   among voxels whose current label keeps at least one other voxel. If no such voxel
   exists a :class:`ResampleError` says so (choose a smaller factor).
4. **Per-label rescaling**: for every label ``L`` with fine mass ``m_L`` the coarse
   densities of its voxels are scaled by ``s_L = m_L / Σ_{c ∈ L} ρ̄_c V_c``, so the coarse
   mass of every label equals its fine mass (to floating-point rounding). Where
   ``Σ ρ̄_c V_c = 0`` but ``m_L > 0`` (the label's voxels lie in empty blocks) its voxels
   get the uniform density ``m_L / (n_L V_c)``.

Volumes are preserved only approximately (the label boundary moves by up to half a coarse
voxel); ``s_L`` is the ratio of fine to coarse volume-weighted density, reported per label
in :class:`ResampledPhantom` so a user can see how much a thin organ's density had to
change to keep its mass.

Geometry
--------
Conventions of :mod:`pipeline.image`: arrays ``[z, y, x]``, ``spacing_mm = (dz, dy, dx)``,
``origin_xyz_mm`` is the world position of the *centre* of voxel ``[0, 0, 0]``. The coarse
voxel 0 centre lies at fine fractional index ``(r - 1) / 2`` along each axis.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from physics.atomic import write_json
from phantoms.tissues import Tissue, read_materials_csv, write_materials_csv
from pipeline.image import Volume, write_image

__all__ = ["ResampleError", "ResampledPhantom", "resample_labels_mass_preserving", "crop_to_scan_range",
           "export_phantom", "PHANTOM_FILES", "ORGANS_SCHEMA_VERSION"]

#: File names written by :func:`export_phantom` (and :func:`phantoms.from_ct.phantom_from_ct`).
PHANTOM_FILES = {"labels": "labels.nii.gz", "density": "density.nii.gz", "materials": "materials.csv",
                 "organs": "organs.json"}
#: Schema version of ``organs.json``.
ORGANS_SCHEMA_VERSION = "1.0"

_SENTINEL = np.iinfo(np.int64).max
#: Relative tolerance under which a factor is taken as the nearest integer.
_INTEGER_FACTOR_TOL = 1e-6
#: Overlaps smaller than this (in fine voxels) are floating-point dust and dropped.
_DUST = 1e-9


class ResampleError(ValueError):
    """Invalid input to the resampling / cropping / export functions (the message says which and why)."""


@dataclass(frozen=True)
class ResampledPhantom:
    """The result of :func:`resample_labels_mass_preserving`.

    Attributes
    ----------
    labels : ndarray of int, shape (nz, ny, nx)
        Coarse label map.
    density_g_cm3 : ndarray of float64, shape (nz, ny, nx)
        Coarse mass density in g/cm³.
    spacing_mm : tuple of 3 floats
        Coarse voxel size ``(dz, dy, dx)`` in mm.
    origin_xyz_mm : tuple of 3 floats
        World (x, y, z) in mm of the centre of coarse voxel ``[0, 0, 0]``.
    direction_xyz : ndarray, shape (3, 3)
        Direction cosines (unchanged by resampling).
    factors : tuple of 3 floats
        ``new_spacing / spacing`` per array axis (exact integers where they were within 1e-6).
    mass_g : dict of int to float
        Mass per label in g: the fine-grid mass, which the coarse grid reproduces.
    volume_cm3_fine, volume_cm3 : dict of int to float
        Volume per label in cm³ on the fine and on the coarse grid.
    density_scale : dict of int to float
        The per-label factor ``s_L`` applied to the block-mean densities (1 where the label
        boundary did not move mass; NaN for a label whose density was set uniformly).
    rescued_labels : tuple of int
        Labels that were nowhere the majority and were given one coarse voxel (step 3).
    """

    labels: np.ndarray
    density_g_cm3: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction_xyz: np.ndarray
    factors: tuple[float, float, float]
    mass_g: dict[int, float] = field(default_factory=dict)
    volume_cm3_fine: dict[int, float] = field(default_factory=dict)
    volume_cm3: dict[int, float] = field(default_factory=dict)
    density_scale: dict[int, float] = field(default_factory=dict)
    rescued_labels: tuple[int, ...] = ()

    def labels_volume(self) -> Volume:
        """The coarse label map as a :class:`pipeline.image.Volume` (for :func:`export_phantom`)."""
        return Volume(self.labels, self.spacing_mm, self.origin_xyz_mm, self.direction_xyz.copy())

    def density_volume(self) -> Volume:
        """The coarse density (g/cm³) as a :class:`pipeline.image.Volume`."""
        return Volume(self.density_g_cm3, self.spacing_mm, self.origin_xyz_mm, self.direction_xyz.copy())


# ----------------------------------------------------------------------------- validation helpers
def _triplet(value, name: str, *, allow_scalar: bool = False) -> tuple[float, float, float]:
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ResampleError(f"{name} must be three positive numbers in mm (dz, dy, dx), got {value!r}") from None
    if allow_scalar and arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        what = "one or three" if allow_scalar else "three"
        raise ResampleError(f"{name} must be {what} finite positive numbers in mm (dz, dy, dx), got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _label_array(labels, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3 or arr.size == 0:
        raise ResampleError(f"{name} must be a non-empty 3-D array (z, y, x), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) \
                or not np.array_equal(arr, np.round(arr)):
            raise ResampleError(f"{name} must hold integer label ids, got dtype {arr.dtype} with non-integer values")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ResampleError(f"{name} must be >= 0 (label ids), found {int(arr.min())}")
    return arr


def _density_array(density, shape, name: str = "density") -> np.ndarray:
    try:
        arr = np.asarray(density, dtype=np.float64)
    except (TypeError, ValueError):
        raise ResampleError(f"{name} must be a numeric array of mass densities in g/cm3") from None
    if arr.shape != tuple(shape):
        raise ResampleError(f"{name} has shape {arr.shape}; it must match the label map's shape {tuple(shape)}")
    finite = np.isfinite(arr)
    if not np.all(finite) or arr.min() < 0:
        lowest = float(arr[finite].min()) if finite.any() else math.nan
        raise ResampleError(f"{name} must be finite and >= 0 g/cm3 everywhere (lowest finite value {lowest!r}, "
                            f"non-finite voxels {int(np.count_nonzero(~finite))})")
    return arr


def _per_label_sums(labels_flat: np.ndarray, weights: np.ndarray | None):
    """(ids, counts, sums) over the labels present; bincount when ids are small, else unique."""
    mx = int(labels_flat.max())
    if mx < (1 << 22):
        counts = np.bincount(labels_flat, minlength=mx + 1)
        ids = np.flatnonzero(counts)
        sums = np.bincount(labels_flat, weights=weights, minlength=mx + 1)[ids] if weights is not None else None
        return ids, counts[ids], sums
    ids, inv, counts = np.unique(labels_flat, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=weights, minlength=ids.size) if weights is not None else None
    return ids, counts, sums


# ----------------------------------------------------------------------------- overlap geometry
def _axis_overlap(n_fine: int, r: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Coarse count N, fine indices (N, K) and overlap lengths (N, K) in fine-voxel units along one axis."""
    n_coarse = max(1, int(math.ceil(n_fine / r - _DUST)))
    lo = np.arange(n_coarse, dtype=np.float64) * r
    hi = lo + r
    first = np.floor(lo + _DUST).astype(np.int64)
    k = int(math.ceil(r)) + 1
    idx = first[:, None] + np.arange(k, dtype=np.int64)[None, :]
    w = np.minimum(hi[:, None], idx + 1.0) - np.maximum(lo[:, None], idx.astype(np.float64))
    w[(w < _DUST) | (idx >= n_fine)] = 0.0
    used = np.flatnonzero(w.any(axis=0))
    k_eff = int(used[-1]) + 1 if used.size else 1
    idx = np.minimum(idx[:, :k_eff], n_fine - 1)
    return n_coarse, idx, w[:, :k_eff]


def _fine_to_coarse(idx: np.ndarray, w: np.ndarray, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """Per fine index the coarse indices it overlaps (padded with -1) and the overlap lengths."""
    c = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    i = idx.ravel()
    ww = w.ravel()
    keep = ww > 0
    c, i, ww = c[keep], i[keep], ww[keep]
    order = np.argsort(i, kind="stable")
    c, i, ww = c[order], i[order], ww[order]
    counts = np.bincount(i, minlength=n_fine)
    p = int(counts.max())
    pos = np.arange(i.size) - np.repeat(np.cumsum(counts) - counts, counts)
    tc = np.full((n_fine, p), -1, dtype=np.int64)
    tw = np.zeros((n_fine, p))
    tc[i, pos] = c
    tw[i, pos] = ww
    return tc, tw


def _weighted_mode(lab: np.ndarray, w: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """Per row of (M, K): the label with the largest summed weight.

    Ties go to the smallest tied label in rows where ``odd`` is False and to the largest
    where it is True (a checkerboard over the coarse grid, so a flat boundary with tied
    blocks is split evenly instead of always moving the same way).
    """
    m, k = lab.shape
    lab = np.where(w > 0, lab, _SENTINEL)
    order = np.argsort(lab, axis=1, kind="stable")
    sl = np.take_along_axis(lab, order, axis=1)
    sw = np.take_along_axis(w, order, axis=1)
    start = np.ones((m, k), dtype=bool)
    start[:, 1:] = sl[:, 1:] != sl[:, :-1]
    rid = np.cumsum(start, axis=1) - 1
    flat = (np.arange(m, dtype=np.int64)[:, None] * k + rid).ravel()
    run_w = np.bincount(flat, weights=sw.ravel(), minlength=m * k).reshape(m, k)
    run_lab = np.full(m * k, _SENTINEL, dtype=np.int64)
    run_lab[flat[start.ravel()]] = sl[start]
    run_lab = run_lab.reshape(m, k)
    run_w[run_lab == _SENTINEL] = -1.0
    first = np.argmax(run_w, axis=1)
    last = k - 1 - np.argmax(run_w[:, ::-1], axis=1)
    best = np.where(odd, last, first)
    return run_lab[np.arange(m), best]


# ----------------------------------------------------------------------------- resampling
def resample_labels_mass_preserving(labels, density, spacing_mm, new_spacing_mm, *,
                                    origin_xyz_mm=(0.0, 0.0, 0.0), direction_xyz=None,
                                    max_chunk_entries: int = 1 << 22) -> ResampledPhantom:
    """Resample a label map and its density so that every label keeps its mass exactly.

    Parameters
    ----------
    labels : int array, shape (nz, ny, nx)
        Fine label map (ids >= 0; integer-valued floats are accepted).
    density : float array, shape (nz, ny, nx)
        Fine mass density in g/cm³ (finite, >= 0).
    spacing_mm : 3 floats
        Fine voxel size ``(dz, dy, dx)`` in mm.
    new_spacing_mm : float or 3 floats
        Coarse voxel size in mm (one number: isotropic). Integer multiples of
        ``spacing_mm`` give exact majority blocks; other factors use overlap-weighted
        majority and means (see the module docstring). Factors < 1 (refinement) work the
        same way.
    origin_xyz_mm : 3 floats, optional
        World (x, y, z) of the centre of fine voxel ``[0, 0, 0]`` in mm (default 0).
    direction_xyz : (3, 3) array, optional
        Direction cosines (default identity).
    max_chunk_entries : int, optional
        Memory bound: (coarse voxels × fine voxels per coarse voxel) handled at a time.

    Returns
    -------
    ResampledPhantom
        Coarse labels and densities, the new grid, and per-label masses, volumes and
        density scale factors.

    Raises
    ------
    ResampleError
        Bad shapes, non-integer or negative labels, negative or non-finite densities,
        non-positive spacings, or a label that cannot keep any coarse voxel.
    """
    lab, rho, h, hn, origin, d = _check_resample_inputs(labels, density, spacing_mm, new_spacing_mm, origin_xyz_mm,
                                                        direction_xyz, max_chunk_entries)
    factors = _resampling_factors(h, hn)
    overlaps = [_axis_overlap(n, r) for n, r in zip(lab.shape, factors)]  # (N_coarse, fine idx, overlap) per axis

    # steps 1-2: overlap-weighted majority label and mean density of every coarse voxel
    coarse_lab, block_rho = _block_labels_and_densities(lab, rho, overlaps, factors, max_chunk_entries)
    v_fine_mm3 = h[0] * h[1] * h[2]
    v_coarse_mm3 = hn[0] * hn[1] * hn[2]
    ids_f, counts_f, mass_f = _per_label_sums(lab.ravel(), rho.ravel())
    mass_f = mass_f * v_fine_mm3 / 1000.0  # g/cm3 * mm3 -> g
    target = dict(zip(ids_f.tolist(), mass_f.tolist()))

    # step 3: give vanished labels the coarse voxel where they overlap most
    rescued = _rescue_vanished_labels(lab, coarse_lab, overlaps, ids_f, target, hn)
    # step 4: per-label rescaling to the fine masses
    out_rho, density_scale, ids_c, counts_c = _rescale_to_fine_masses(coarse_lab, block_rho, target, v_coarse_mm3)

    rz, ry, rx = factors
    out_dtype = np.int32 if int(coarse_lab.max()) < np.iinfo(np.int32).max else np.int64
    idx0_xyz = np.array([(rx - 1.0) / 2.0, (ry - 1.0) / 2.0, (rz - 1.0) / 2.0])
    new_origin = origin + d @ (np.array([h[2], h[1], h[0]]) * idx0_xyz)
    return ResampledPhantom(
        labels=coarse_lab.astype(out_dtype), density_g_cm3=out_rho, spacing_mm=hn,
        origin_xyz_mm=tuple(float(v) for v in new_origin), direction_xyz=d.copy(),
        factors=(rz, ry, rx), mass_g=target,
        volume_cm3_fine={int(L): float(n) * v_fine_mm3 / 1000.0 for L, n in zip(ids_f, counts_f)},
        volume_cm3={int(L): float(n) * v_coarse_mm3 / 1000.0 for L, n in zip(ids_c, counts_c)},
        density_scale=density_scale, rescued_labels=tuple(rescued))


# ----------------------------------------------------------------------------- stages of the resampling
def _check_resample_inputs(labels, density, spacing_mm, new_spacing_mm, origin_xyz_mm, direction_xyz,
                           max_chunk_entries):
    """Validate the arguments of ``resample_labels_mass_preserving``.

    Returns labels (int64), density (g/cm³), fine and coarse spacing (mm), origin (x, y, z mm)
    and the direction matrix.
    """
    lab = _label_array(labels)
    rho = _density_array(density, lab.shape)
    h = _triplet(spacing_mm, "spacing_mm")
    hn = _triplet(new_spacing_mm, "new_spacing_mm", allow_scalar=True)
    origin = np.asarray(_triplet_any(origin_xyz_mm, "origin_xyz_mm"))
    d = np.eye(3) if direction_xyz is None else np.asarray(direction_xyz, dtype=float)
    if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise ResampleError("direction_xyz must be an orthonormal 3x3 matrix, got "
                            f"{np.asarray(direction_xyz).tolist()}")
    if isinstance(max_chunk_entries, bool) or not isinstance(max_chunk_entries, (int, np.integer)) \
            or max_chunk_entries < 1:
        raise ResampleError(f"max_chunk_entries must be a positive integer, got {max_chunk_entries!r}")
    return lab, rho, h, hn, origin, d


def _resampling_factors(h, hn) -> list[float]:
    """Coarse / fine spacing per array axis, snapped to the nearest integer within 1e-6 (relative)."""
    factors = []
    for a in range(3):
        r = hn[a] / h[a]
        if abs(r - round(r)) <= _INTEGER_FACTOR_TOL * max(1.0, r) and round(r) >= 1:
            r = float(round(r))
        factors.append(r)
    return factors


def _block_labels_and_densities(lab: np.ndarray, rho: np.ndarray, overlaps, factors,
                                max_chunk_entries: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2: coarse majority labels and block-mean densities (g/cm³), a few z planes at a time."""
    rz, ry, rx = factors
    (nzc, iz, wz), (nyc, iy, wy), (nxc, ix, wx) = overlaps
    kz, ky, kx = iz.shape[1], iy.shape[1], ix.shape[1]
    k = kz * ky * kx
    coarse_lab = np.empty((nzc, nyc, nxc), dtype=np.int64)
    block_rho = np.empty((nzc, nyc, nxc), dtype=np.float64)
    wyx = wy[:, None, :, None] * wx[None, :, None, :]  # (nyc, nxc, ky, kx)
    planes = max(1, int(max_chunk_entries // max(1, nyc * nxc * k)))
    for z0 in range(0, nzc, planes):
        z1 = min(nzc, z0 + planes)
        sel = (iz[z0:z1, None, None, :, None, None], iy[None, :, None, None, :, None],
               ix[None, None, :, None, None, :])
        w = wz[z0:z1, None, None, :, None, None] * wyx[None, :, :, None, :, :]
        m = (z1 - z0) * nyc * nxc
        w = w.reshape(m, k)
        odd = ((np.arange(z0, z1)[:, None, None] + np.arange(nyc)[None, :, None]
                + np.arange(nxc)[None, None, :]) % 2 == 1).ravel()
        coarse_lab[z0:z1] = _weighted_mode(lab[sel].reshape(m, k), w, odd).reshape(z1 - z0, nyc, nxc)
        block_rho[z0:z1] = ((w * rho[sel].reshape(m, k)).sum(axis=1) / (rz * ry * rx)).reshape(z1 - z0, nyc, nxc)
    return coarse_lab, block_rho


def _rescue_vanished_labels(lab: np.ndarray, coarse_lab: np.ndarray, overlaps, ids_f: np.ndarray,
                            target: dict[int, float], hn) -> list[int]:
    """Step 3: give every label that is nowhere the majority the coarse voxel where it overlaps most.

    Edits ``coarse_lab`` in place and returns the rescued labels; ``target`` (fine mass in g)
    and ``hn`` (coarse spacing, mm) only word the error.
    """
    (nzc, iz, wz), (nyc, iy, wy), (nxc, ix, wx) = overlaps
    ids_c, counts_c, _ = _per_label_sums(coarse_lab.ravel(), None)
    count_c = dict(zip(ids_c.tolist(), counts_c.tolist()))
    vanished = [int(L) for L in ids_f if int(L) not in count_c]
    rescued: list[int] = []
    if not vanished:
        return rescued
    tables = [_fine_to_coarse(i_, w_, n) for i_, w_, n in zip((iz, iy, ix), (wz, wy, wx), lab.shape)]
    mask = np.isin(lab, vanished)
    where = np.nonzero(mask)
    vals = lab[where]
    for L in vanished:
        sel_l = vals == L
        cz, cwz = tables[0][0][where[0][sel_l]], tables[0][1][where[0][sel_l]]
        cy, cwy = tables[1][0][where[1][sel_l]], tables[1][1][where[1][sel_l]]
        cx, cwx = tables[2][0][where[2][sel_l]], tables[2][1][where[2][sel_l]]
        flat = ((cz[:, :, None, None] * nyc + cy[:, None, :, None]) * nxc + cx[:, None, None, :])
        ww = cwz[:, :, None, None] * cwy[:, None, :, None] * cwx[:, None, None, :]
        ok = (ww > 0) & (cz[:, :, None, None] >= 0) & (cy[:, None, :, None] >= 0) & (cx[:, None, None, :] >= 0)
        cand, inv = np.unique(flat[ok], return_inverse=True)
        overlap = np.bincount(inv, weights=ww[ok], minlength=cand.size)
        owners = coarse_lab.ravel()[cand]
        eligible = np.array([count_c[int(o)] >= 2 and int(o) not in rescued for o in owners], dtype=bool)
        if not eligible.any():
            raise ResampleError(
                f"label {L} (fine mass {target[L]:.6g} g, {int(sel_l.sum())} fine voxels) cannot keep any "
                f"voxel at new_spacing_mm={hn}: every coarse voxel it touches is the only voxel of another "
                f"label. Use a smaller new_spacing_mm.")
        overlap = np.where(eligible, overlap, -1.0)
        best = int(cand[int(np.argmax(overlap))])
        owner = int(coarse_lab.ravel()[best])
        coarse_lab.ravel()[best] = L
        count_c[owner] -= 1
        count_c[L] = 1
        rescued.append(L)
    return rescued


def _rescale_to_fine_masses(coarse_lab: np.ndarray, block_rho: np.ndarray, target: dict[int, float],
                            v_coarse_mm3: float):
    """Step 4: scale each label's block densities (g/cm³) so its coarse mass equals its fine mass (g).

    Returns the coarse density, the per-label scale factors and the coarse label ids and counts.
    """
    ids_c, counts_c, sums_c = _per_label_sums(coarse_lab.ravel(), block_rho.ravel())
    mass_c = sums_c * v_coarse_mm3 / 1000.0
    scale_lut = np.zeros(int(ids_c.max()) + 1 if ids_c.max() < (1 << 22) else 0)
    density_scale: dict[int, float] = {}
    uniform: dict[int, float] = {}
    for L, n_c, m_c in zip(ids_c.tolist(), counts_c.tolist(), mass_c.tolist()):
        m_t = target[L]
        if m_c > 0:
            s = m_t / m_c
        elif m_t > 0:
            s = math.nan
            uniform[L] = m_t * 1000.0 / (n_c * v_coarse_mm3)
        else:
            s = 1.0
        density_scale[L] = s
    if scale_lut.size:
        for L, s in density_scale.items():
            scale_lut[L] = 0.0 if math.isnan(s) else s
        out_rho = block_rho * scale_lut[coarse_lab]
    else:
        ids_arr = np.array(sorted(density_scale))
        s_arr = np.array([0.0 if math.isnan(density_scale[L]) else density_scale[L] for L in ids_arr])
        out_rho = block_rho * s_arr[np.searchsorted(ids_arr, coarse_lab)]
    for L, rho_u in uniform.items():
        out_rho[coarse_lab == L] = rho_u
    return out_rho, density_scale, ids_c, counts_c


def _triplet_any(value, name: str) -> tuple[float, float, float]:
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ResampleError(f"{name} must be three finite numbers (x, y, z) in mm, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


# ----------------------------------------------------------------------------- cropping
def crop_to_scan_range(volume: Volume, z_min_mm: float, z_max_mm: float) -> Volume:
    """Keep the slices of a volume that a scan range along world z touches.

    Parameters
    ----------
    volume : pipeline.image.Volume
        Any volume (CT, labels, density) whose slices (array axis 0) are perpendicular to
        world z (direction column k = ±z, columns i and j without a z component).
    z_min_mm, z_max_mm : float
        Scan range in world z (mm), ``z_min_mm < z_max_mm``.

    Returns
    -------
    Volume
        The slices whose extent ``[z_k - dz/2, z_k + dz/2]`` overlaps ``(z_min_mm, z_max_mm)``
        (a copy), with the same spacing and direction and the origin moved to the first kept
        slice, so every kept voxel keeps its world position.

    Raises
    ------
    ResampleError
        Not a Volume, a non-finite or empty range, oblique slices, or a range that misses
        the volume (the message gives the volume's z extent).
    """
    if not isinstance(volume, Volume):
        raise ResampleError(f"volume must be a pipeline.image.Volume, got {type(volume).__name__}")
    try:
        z0, z1 = float(z_min_mm), float(z_max_mm)
    except (TypeError, ValueError):
        raise ResampleError(f"z_min_mm and z_max_mm must be numbers (mm), got {z_min_mm!r}, {z_max_mm!r}") from None
    if not (math.isfinite(z0) and math.isfinite(z1)) or not z0 < z1:
        raise ResampleError(f"the scan range needs finite z_min_mm < z_max_mm, got z_min_mm={z_min_mm!r}, "
                            f"z_max_mm={z_max_mm!r}")
    d = volume.direction_xyz
    if not (abs(abs(d[2, 2]) - 1.0) < 1e-6 and abs(d[2, 0]) < 1e-6 and abs(d[2, 1]) < 1e-6):
        raise ResampleError("crop_to_scan_range needs axial slices (array axis 0 along world ±z and the in-slice "
                            f"axes without a z component); this volume's direction is {d.tolist()}")
    dz = volume.spacing_mm[0]
    zc = volume.origin_xyz_mm[2] + d[2, 2] * dz * np.arange(volume.shape[0])
    keep = np.flatnonzero((zc + dz / 2.0 > z0) & (zc - dz / 2.0 < z1))
    if keep.size == 0:
        lo, hi = float(zc.min() - dz / 2.0), float(zc.max() + dz / 2.0)
        raise ResampleError(f"scan range [{z0:g}, {z1:g}] mm misses the volume, which spans z = [{lo:g}, {hi:g}] mm")
    k0, k1 = int(keep[0]), int(keep[-1]) + 1
    origin = volume.index_to_world((k0, 0, 0))
    return Volume(np.array(volume.array[k0:k1], copy=True), volume.spacing_mm, tuple(float(v) for v in origin),
                  volume.direction_xyz.copy())


# ----------------------------------------------------------------------------- export
def _materials_mapping(materials) -> dict[int, Tissue]:
    if isinstance(materials, (str, os.PathLike)):
        return dict(read_materials_csv(materials))
    if isinstance(materials, Mapping):
        items = list(materials.items())
    else:
        try:
            items = list(materials)
        except TypeError:
            raise ResampleError("materials must be a {label_id: Tissue} mapping, (label_id, Tissue) pairs or a "
                                f"materials CSV path, got {type(materials).__name__}") from None
    out: dict[int, Tissue] = {}
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ResampleError(f"materials must hold (label_id, Tissue) pairs, got {item!r}")
        label, t = item
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ResampleError(f"materials: label_id must be an integer >= 0, got {label!r}")
        if not isinstance(t, Tissue):
            raise ResampleError(f"materials: label {label} must map to a phantoms.tissues.Tissue, "
                                f"got {type(t).__name__}")
        out[int(label)] = t
    return out


def _organ_records(ids: np.ndarray, counts: np.ndarray, sums: np.ndarray, mats: dict[int, Tissue],
                   label_info, v_mm3: float) -> tuple[list[tuple[int, Tissue]], list[dict]]:
    """Materials rows (density set to the label's mean, g/cm³) and organs.json records (cm³, g) per label."""
    info = {int(k): dict(v) for k, v in (label_info or {}).items()}
    rows: list[tuple[int, Tissue]] = []
    organs: list[dict] = []
    for L, n, s in zip(ids.tolist(), counts.tolist(), sums.tolist()):
        t = mats[L]
        mass_g = s * v_mm3 / 1000.0
        vol_cm3 = n * v_mm3 / 1000.0
        mean_rho = mass_g / vol_cm3
        if mean_rho > 0 and not math.isclose(mean_rho, t.density_g_cm3, rel_tol=1e-6):
            note = f"density_g_cm3 = mean voxel density of label {L} (mass/volume); nominal {t.density_g_cm3:g}"
            t = dataclasses.replace(t, density_g_cm3=mean_rho, note=f"{t.note}; {note}" if t.note else note)
        rows.append((L, t))
        rec = {"label_id": L, "name": info.get(L, {}).get("name", mats[L].name), "tissue": mats[L].name,
               "n_voxels": int(n), "volume_cm3": vol_cm3, "mass_g": mass_g, "mean_density_g_cm3": mean_rho}
        rec.update({k: v for k, v in info.get(L, {}).items() if k != "name"})
        organs.append(rec)
    return rows, organs


def export_phantom(labels_volume: Volume, density, materials, out_dir, *,
                   label_info: Mapping[int, Mapping[str, Any]] | None = None,
                   metadata: Mapping[str, Any] | None = None) -> dict:
    """Write a voxel phantom in the engine's file set.

    Parameters
    ----------
    labels_volume : pipeline.image.Volume
        Integer label map (ids >= 0) and its grid.
    density : pipeline.image.Volume or ndarray
        Mass density in g/cm³ per voxel on the same grid (finite, >= 0). Written as float32
        (relative rounding <= 6e-8); masses and mean densities are computed from the values given.
    materials : mapping of int to Tissue, iterable of (int, Tissue), or path
        The material of every label present in ``labels_volume`` (extra labels are ignored),
        or a materials CSV (:func:`phantoms.tissues.read_materials_csv`).
    out_dir : str or path-like
        Output folder (created).
    label_info : mapping of int to dict, optional
        Extra fields per label for ``organs.json``; a ``"name"`` field names the organ
        (default: the tissue name).
    metadata : mapping, optional
        Extra top-level fields for ``organs.json`` (e.g. provenance).

    Returns
    -------
    dict
        ``files`` (name → path), ``organs`` (the per-label records below), ``total_mass_g``,
        ``shape_zyx``, ``spacing_mm``, ``origin_xyz_mm``.

    Notes
    -----
    Files (:data:`PHANTOM_FILES`), each written atomically (temporary file, then rename):

    * ``labels.nii.gz``: int32 label map.
    * ``density.nii.gz``: float32 density in g/cm³.
    * ``materials.csv``: one row per label present (engine format,
      :func:`phantoms.tissues.write_materials_csv`), with ``density_g_cm3`` set to the
      label's mean voxel density (mass / volume), so an engine that uses only the label
      map and this table still gets every label's mass right; the row's ``note`` says so
      where that differs from the tissue's nominal density.
    * ``organs.json``: per label ``label_id, name, tissue, n_voxels, volume_cm3, mass_g,
      mean_density_g_cm3`` (+ ``label_info`` fields), the grid, ``total_mass_g`` and
      ``schema_version``.

    Raises
    ------
    ResampleError
        Not a Volume, bad labels or densities, a shape mismatch, or a label without a material.
    """
    if not isinstance(labels_volume, Volume):
        raise ResampleError(f"labels_volume must be a pipeline.image.Volume, got {type(labels_volume).__name__}")
    lab = _label_array(labels_volume.array, "labels_volume")
    if isinstance(density, Volume):
        if density.shape != labels_volume.shape or not np.allclose(density.spacing_mm, labels_volume.spacing_mm) \
                or not np.allclose(density.origin_xyz_mm, labels_volume.origin_xyz_mm, atol=1e-3):
            raise ResampleError(f"density volume grid (shape {density.shape}, spacing {density.spacing_mm}, origin "
                                f"{density.origin_xyz_mm}) differs from the label grid (shape {labels_volume.shape}, "
                                f"spacing {labels_volume.spacing_mm}, origin {labels_volume.origin_xyz_mm})")
        density = density.array
    rho = _density_array(density, lab.shape)
    mats = _materials_mapping(materials)
    v_mm3 = labels_volume.voxel_volume_mm3
    ids, counts, sums = _per_label_sums(lab.ravel(), rho.ravel())
    missing = [int(L) for L in ids if int(L) not in mats]
    if missing:
        raise ResampleError(f"labels {missing[:20]} of the label map have no material (materials has label ids "
                            f"{sorted(mats)[:30]})")
    rows, organs = _organ_records(ids, counts, sums, mats, label_info, v_mm3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = dict(spacing_mm=labels_volume.spacing_mm, origin_xyz_mm=labels_volume.origin_xyz_mm,
                direction_xyz=labels_volume.direction_xyz.copy())
    files = {k: out / v for k, v in PHANTOM_FILES.items()}
    write_image(Volume(lab.astype(np.int32), **grid), files["labels"])
    write_image(Volume(rho.astype(np.float32), **grid), files["density"])
    write_materials_csv(rows, files["materials"])
    total = float(sum(r["mass_g"] for r in organs))
    doc = {"schema_version": ORGANS_SCHEMA_VERSION,
           "grid": {"shape_zyx": list(labels_volume.shape), "spacing_mm": list(labels_volume.spacing_mm),
                    "origin_xyz_mm": list(labels_volume.origin_xyz_mm)},
           "total_mass_g": total, "organs": organs}
    if metadata:
        doc.update({k: v for k, v in metadata.items() if k not in doc})
    write_json(files["organs"], doc)
    return {"files": {k: str(v) for k, v in files.items()}, "organs": organs, "total_mass_g": total,
            "shape_zyx": list(labels_volume.shape), "spacing_mm": list(labels_volume.spacing_mm),
            "origin_xyz_mm": list(labels_volume.origin_xyz_mm)}
