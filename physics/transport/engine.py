"""Monte Carlo photon transport in a voxel phantom: model objects and the run loop.

The model follows OpenMC's split: a :class:`VoxelPhantom` (geometry, material and
density per voxel, tally labels), materials (:class:`~.materials.Material` keyed by
the phantom's material ids), a source (:mod:`.sources`), :class:`Physics` switches and
:class:`Settings`; :func:`run` returns a :class:`~.tallies.TransportResult`.

Each batch is split into chunks; chunk ``c`` of batch ``b`` draws its source photons
from ``numpy.random.default_rng([seed, b, c])`` and the kernel gives history ``h`` the
random stream ``(seed, b, h)``, so a run is reproducible and independent of the number
of threads. With ``Settings.state_dir`` every finished batch is written atomically to
``batch_NNNNNN.npz``; a rerun loads the batches already there (same input fingerprint)
and computes only the missing ones, so an interrupted run resumes without losing or
double-counting histories, and batches computed by separate jobs merge exactly.

Physics (see :mod:`._kernels`): photoelectric absorption with optional K fluorescence,
bound or free Compton, Rayleigh; electrons and sub-cutoff photons deposit locally (kerma approximation, as in
TG-195 and MC-GPU). Outside the grid is vacuum unless the phantom names a world material
(``VoxelPhantom.world_material_id``, e.g. air): then the grid box grown by
``world_margin_mm`` on every side is filled with it (photons are transported and scatter
there; the energy they deposit there is tallied as ``world``) and beyond is vacuum.
Photons may carry a statistical weight from source-side filtration (a bowtie filter);
the filtered energy is tallied too, so that ``deposited + world + escaped + filtered =
incident`` holds to round-off in every run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numba
import numpy as np

from . import _kernels
from .materials import Material, TransportError
from .sources import Source, Spectrum
from .tallies import BatchRecord, TransportResult
from .xsection import build_tables, fluorescence_tables, mu_en_rho

__all__ = ["VoxelPhantom", "Physics", "Settings", "run", "COMPTON_MODELS"]

COMPTON_MODELS = ("binding", "klein-nishina")
TALLIES = ("voxels", "labels")
_EMPTY_INT32 = np.zeros(0, dtype=np.int32)


def _triplet(value, name):
    try:
        t = tuple(float(v) for v in value)
    except TypeError:
        raise TransportError(f"{name} must be 3 numbers, got {value!r}") from None
    if len(t) != 3 or not all(math.isfinite(v) for v in t):
        raise TransportError(f"{name} must be 3 finite numbers, got {value!r}")
    return t


@dataclass
class VoxelPhantom:
    """A voxel phantom on an image grid (conventions of :mod:`pipeline.image`).

    Parameters
    ----------
    material_id : int array (nz, ny, nx)
        Material id per voxel: keys of the ``materials`` mapping given to :func:`run`.
    spacing_mm : 3 floats
        Voxel size ``(dz, dy, dx)`` in mm, array-axis order.
    origin_xyz_mm : 3 floats
        World position (x, y, z) of the centre of voxel (0, 0, 0), mm.
    direction_xyz : 3x3 array
        Columns are the world directions of array axes i, j, k (orthonormal).
    density_g_cm3 : float array (nz, ny, nx), optional
        Mass density per voxel (>= 0); default: nominal density of each material.
    labels : int array (nz, ny, nx), optional
        Tally labels (organs); default ``material_id``.
    world_material_id : int, optional
        Material id (a key of the ``materials`` mapping) filling the space around the grid,
        e.g. air; default None (vacuum). Its nominal density is used.
    world_margin_mm : float
        The world is the grid box grown by this margin on every side (default 1000 mm);
        beyond it is vacuum. Sources outside it fly in vacuum to its boundary.
    """

    material_id: np.ndarray
    spacing_mm: tuple = (1.0, 1.0, 1.0)
    origin_xyz_mm: tuple = (0.0, 0.0, 0.0)
    direction_xyz: np.ndarray = field(default_factory=lambda: np.eye(3))
    density_g_cm3: np.ndarray | None = None
    labels: np.ndarray | None = None
    world_material_id: int | None = None
    world_margin_mm: float = 1000.0

    def __post_init__(self):
        mid = np.asarray(self.material_id)
        if mid.ndim != 3 or mid.size == 0 or not np.issubdtype(mid.dtype, np.integer):
            raise TransportError(f"material_id must be a non-empty 3-D integer array, got shape "
                                 f"{mid.shape} dtype {mid.dtype}")
        self.material_id = mid
        self.spacing_mm = _triplet(self.spacing_mm, "spacing_mm")
        if min(self.spacing_mm) <= 0:
            raise TransportError(f"spacing_mm must be > 0, got {self.spacing_mm}")
        self.origin_xyz_mm = _triplet(self.origin_xyz_mm, "origin_xyz_mm")
        d = np.asarray(self.direction_xyz, dtype=float)
        if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
            raise TransportError(f"direction_xyz must be an orthonormal 3x3 matrix, got {d.tolist()}")
        self.direction_xyz = d
        if self.density_g_cm3 is not None:
            rho = np.asarray(self.density_g_cm3, dtype=np.float32)
            if rho.shape != mid.shape:
                raise TransportError(f"density_g_cm3 shape {rho.shape} != material_id shape {mid.shape}")
            if not np.all(np.isfinite(rho)) or rho.min() < 0:
                raise TransportError(f"density_g_cm3 must be finite and >= 0 (min {rho.min()!r})")
            self.density_g_cm3 = rho
        if self.labels is not None:
            lab = np.asarray(self.labels)
            if lab.shape != mid.shape or not np.issubdtype(lab.dtype, np.integer):
                raise TransportError(f"labels must be an integer array of shape {mid.shape}")
            if lab.min() < 0:
                raise TransportError(f"labels must be >= 0, got {lab.min()}")
            self.labels = lab
        if self.world_material_id is not None and (
                isinstance(self.world_material_id, bool)
                or not isinstance(self.world_material_id, (int, np.integer)) or self.world_material_id < 0):
            raise TransportError(f"world_material_id must be a material id (int >= 0) or None, "
                                 f"got {self.world_material_id!r}")
        wm = self.world_margin_mm
        if isinstance(wm, bool) or not isinstance(wm, (int, float, np.integer, np.floating)) \
                or not math.isfinite(wm) or wm <= 0:
            raise TransportError(f"world_margin_mm must be a finite number > 0, got {wm!r}")
        self.world_margin_mm = float(wm)

    @classmethod
    def from_volume(cls, volume, density_g_cm3=None, labels=None) -> "VoxelPhantom":
        """From an image ``Volume`` (array = material ids, plus its grid)."""
        return cls(np.asarray(volume.array), volume.spacing_mm, volume.origin_xyz_mm,
                   volume.direction_xyz, density_g_cm3, labels)

    @property
    def shape(self):
        return self.material_id.shape

    def world_to_grid_cm(self, xyz_mm: np.ndarray) -> np.ndarray:
        """World points (x, y, z) mm → grid frame (x along i, ...), cm, box from 0."""
        dz, dy, dx = self.spacing_mm
        local = (np.asarray(xyz_mm, float) - np.asarray(self.origin_xyz_mm)) @ self.direction_xyz
        return (local + 0.5 * np.array([dx, dy, dz])) / 10.0

    def world_to_grid_dir(self, d: np.ndarray) -> np.ndarray:
        return np.asarray(d, float) @ self.direction_xyz

    @property
    def box_cm(self) -> np.ndarray:
        dz, dy, dx = self.spacing_mm
        nz, ny, nx = self.shape
        return np.array([nx * dx, ny * dy, nz * dz]) / 10.0


@dataclass(frozen=True)
class Physics:
    """Interaction models.

    Parameters
    ----------
    compton : {'binding', 'klein-nishina'}
        Bound-electron (S(x, Z)) or free-electron Klein–Nishina incoherent scattering.
    rayleigh : bool
        Coherent scattering on/off.
    cutoff_keV : float
        Photons below this energy deposit locally (>= table minimum, default 1 keV).
    fluorescence : bool
        Emit and transport K-fluorescence photons (lines >= 5 keV, e.g. iodine's
        28–33 keV) after photoabsorption; otherwise all the energy deposits locally.
    e_max_keV : float
        Top of the cross-section tables (keV).
    n_energy : int
        Energy nodes of the tables.
    majorant_block_mm : float
        Edge of the blocks of the tracking's macro grid (mm; rounded to whole voxels): each
        block has its own majorant (:mod:`._kernels`). 0: one majorant for the whole grid.
        Smaller blocks follow the anatomy more closely but cost a boundary crossing each.
    """

    compton: str = "binding"
    rayleigh: bool = True
    cutoff_keV: float = 1.0
    fluorescence: bool = True
    e_min_keV: float = 1.0
    e_max_keV: float = 150.0
    n_energy: int = 2000
    majorant_block_mm: float = 20.0

    def __post_init__(self):
        if (isinstance(self.majorant_block_mm, bool) or not isinstance(self.majorant_block_mm, (int, float))
                or not math.isfinite(self.majorant_block_mm) or self.majorant_block_mm < 0):
            raise TransportError(f"majorant_block_mm must be a number >= 0 (mm), got {self.majorant_block_mm!r}")
        if self.compton not in COMPTON_MODELS:
            raise TransportError(f"compton must be one of {COMPTON_MODELS}, got {self.compton!r}")
        if not isinstance(self.rayleigh, bool):
            raise TransportError(f"rayleigh must be True or False, got {self.rayleigh!r}")
        if not isinstance(self.fluorescence, bool):
            raise TransportError(f"fluorescence must be True or False, got {self.fluorescence!r}")
        if not (0 < self.e_min_keV < self.e_max_keV):
            raise TransportError(f"need 0 < e_min_keV < e_max_keV, got {self.e_min_keV}, {self.e_max_keV}")
        if not (self.e_min_keV <= self.cutoff_keV < self.e_max_keV):
            raise TransportError(f"cutoff_keV must lie in [{self.e_min_keV}, {self.e_max_keV}) keV, "
                                 f"got {self.cutoff_keV!r}")


@dataclass(frozen=True)
class Settings:
    """Run settings.

    Parameters
    ----------
    histories_per_batch : int
        Source photons per batch (> 0). Statistics need >= 2 batches.
    n_batches : int
        Number of batches (> 0).
    seed : int
        Random seed (0 <= seed < 2**63).
    threads : int, optional
        Numba threads (default: Numba's current setting).
    state_dir : str or Path, optional
        Folder for per-batch state files (resume / merge).
    chunk_size : int
        Histories per kernel call (memory bound); part of the reproducibility contract.
    """

    histories_per_batch: int = 100_000
    n_batches: int = 10
    seed: int = 1
    threads: int | None = None
    state_dir: str | Path | None = None
    chunk_size: int = 1 << 20

    def __post_init__(self):
        for name in ("histories_per_batch", "n_batches", "chunk_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise TransportError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise TransportError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or not
                                         1 <= self.threads <= numba.config.NUMBA_NUM_THREADS):
            raise TransportError(f"threads must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {self.threads!r}")


def _describe(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Spectrum) or callable(getattr(obj, "to_dict", None)):
        return obj.to_dict()
    if isinstance(obj, (list, tuple)):
        return [_describe(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v) for k, v in obj.items()}
    if hasattr(obj, "__dict__"):
        return {"type": type(obj).__name__, **{k: _describe(v) for k, v in vars(obj).items()
                                               if not k.startswith("_")}}
    return obj


def _hash_arrays(phantom) -> "hashlib._Hash":
    """A sha256 fed with the phantom's material, density and label arrays (bytes, dtype, shape)."""
    h = hashlib.sha256()
    for a in (phantom.material_id, phantom.density_g_cm3, phantom.labels):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(f"{a.dtype}{a.shape}".encode())
    return h


def _fingerprint(phantom, materials, source, physics, settings, dose_to=None, tally="voxels") -> str:
    h = _hash_arrays(phantom)
    meta = {
        "grid": [phantom.shape, phantom.spacing_mm, phantom.origin_xyz_mm, phantom.direction_xyz.tolist()],
        "materials": {str(k): m.to_dict() for k, m in sorted(materials.items())},
        "source": _describe(source),
        "physics": vars(physics) if not hasattr(physics, "__dataclass_fields__") else
        {k: getattr(physics, k) for k in physics.__dataclass_fields__},
        "run": [settings.histories_per_batch, settings.seed, settings.chunk_size],
        "world": [phantom.world_material_id, phantom.world_margin_mm],
        "kernel": 2,
    }
    if tally != "voxels":  # (absent otherwise: earlier batch files keep their fingerprint)
        meta["tally"] = tally
    if dose_to:
        meta["dose_to"] = {str(k): m.to_dict() for k, m in sorted(dose_to.items())}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


@dataclass
class _Prepared:
    mat: np.ndarray
    dens: np.ndarray
    tables: object
    blocks: tuple  # (ref, scale, bnx, bny, bnz, bsx, bsy, bsz, kx, ky, kz): the macro grid's majorants
    labels_flat: np.ndarray
    label_ids: np.ndarray
    voxel_mass_g: np.ndarray
    label_mass_g: np.ndarray
    world_row: int = -1
    world_rho: float = 0.0
    fl_cum: np.ndarray = None
    fl_e: np.ndarray = None
    conv_tab: np.ndarray = None
    medium_ids: tuple = ()
    medium_rows: np.ndarray = None
    medium_mass_g: np.ndarray = None
    row_label: np.ndarray = None  # label index of each material row when labels follow materials, else None
    row_rho: np.ndarray = None  # density of each row (nominal)
    row_rho_only: bool = False  # no density map: every voxel has its row's density


def _unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True)``; by counting for small non-negative integers (no sort:
    seconds saved on grids of tens of millions of voxels)."""
    if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() < 1 << 20:
        present = np.bincount(a) > 0
        ids = np.flatnonzero(present)
        lut = np.cumsum(present) - 1
        return ids.astype(a.dtype), lut[a]
    return np.unique(a, return_inverse=True)


def _block_majorants(phantom: VoxelPhantom, mat: np.ndarray, dens: np.ndarray, tables, n_rows: int,
                     physics: Physics) -> tuple:
    """The macro grid of the tracking: blocks of about ``physics.majorant_block_mm``, each with the
    cheapest majorant ``s (μ/ρ)_r`` that bounds all its voxels at every tabulated energy."""
    nz, ny, nx = phantom.shape
    dz, dy, dx = phantom.spacing_mm
    if physics.majorant_block_mm > 0:
        k = [max(1, int(round(physics.majorant_block_mm / h))) for h in (dx, dy, dz)]
    else:
        k = [nx, ny, nz]
    mu = tables.mu_rho_cm2_g[:n_rows, :, 0]
    ratio = np.empty((n_rows, n_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        for m in range(n_rows):  # ratio[m, r] = max_E mu_m / mu_r (row by row: n_rows may be ~100)
            ratio[m] = np.max(np.where(mu > 0, mu[m][None, :] / mu, np.inf), axis=1)
    ratio = np.ascontiguousarray(np.where(np.isfinite(ratio), ratio, 1e300))
    e = tables.energy_keV
    typical = [np.argmin(np.abs(e - t)) for t in (30.0, 60.0, 90.0) if e[0] <= t <= e[-1]] or [e.size // 2]
    cost = np.ascontiguousarray(mu[:, typical].mean(axis=1))
    ref, scale, bnx, bny, bnz = _kernels.block_majorants(mat, dens, nx, ny, nz, k[0], k[1], k[2], n_rows, ratio,
                                                         cost)
    return (ref, scale, int(bnx), int(bny), int(bnz), k[0] * dx / 10.0, k[1] * dy / 10.0, k[2] * dz / 10.0,
            k[0], k[1], k[2])


def _check_dose_to(dose_to, materials) -> dict[int, Material]:
    if dose_to is None:
        return {}
    if not isinstance(dose_to, Mapping):
        raise TransportError("dose_to must be a mapping {material_id: Material of the medium to score}")
    out = {}
    for k, m in dose_to.items():
        if not isinstance(m, Material):
            raise TransportError(f"dose_to[{k!r}] must be a Material, got {type(m).__name__}")
        if int(k) not in materials:
            raise TransportError(f"dose_to names material id {k!r}, which materials does not have")
        out[int(k)] = m
    return out


def _prepare(phantom: VoxelPhantom, materials: Mapping[int, Material], source: Source,
             physics: Physics, dose_to: Mapping[int, Material] | None = None) -> _Prepared:
    if not isinstance(phantom, VoxelPhantom):
        raise TransportError(f"phantom must be a VoxelPhantom, got {type(phantom).__name__}")
    if not isinstance(materials, Mapping) or not materials:
        raise TransportError("materials must be a non-empty mapping {material_id: Material}")
    for k, m in materials.items():
        if not isinstance(m, Material):
            raise TransportError(f"materials[{k!r}] must be a Material, got {type(m).__name__}")
    if not isinstance(source, Source):
        raise TransportError(f"source must be a Source, got {type(source).__name__}")
    if not isinstance(physics, Physics):
        raise TransportError(f"physics must be a Physics, got {type(physics).__name__}")
    key = _geometry_key(phantom, materials, physics, dose_to)
    hit = _GEOMETRY_CACHE.get(key)
    ids = hit[0] if hit is not None else _unique_inverse(phantom.material_id.ravel())[0]
    missing = [int(i) for i in ids if int(i) not in materials]
    if missing:
        raise TransportError(f"material ids {missing[:10]} of the phantom have no material "
                             f"(materials has ids {sorted(materials)[:20]})")
    wid = phantom.world_material_id
    if wid is not None and int(wid) not in materials:
        raise TransportError(f"world_material_id {wid} has no material (materials has ids "
                             f"{sorted(materials)[:20]})")
    if source.max_energy_keV > physics.e_max_keV:
        raise TransportError(f"source energy up to {source.max_energy_keV:g} keV exceeds the tables' "
                             f"e_max_keV = {physics.e_max_keV:g}; raise Physics.e_max_keV")
    if source.min_energy_keV <= physics.e_min_keV:
        raise TransportError(f"source energies must exceed e_min_keV = {physics.e_min_keV:g} keV, "
                             f"got {source.min_energy_keV:g}")
    ray = source.central_ray()
    if ray is not None:
        p = phantom.world_to_grid_cm(ray[0])
        d = phantom.world_to_grid_dir(ray[1])
        box = phantom.box_cm
        if _kernels._entry_distance(p[0], p[1], p[2], d[0], d[1], d[2], box[0], box[1], box[2]) < 0:
            raise TransportError(f"the source's central ray from {ray[0].tolist()} mm along "
                                 f"{ray[1].tolist()} misses the phantom grid")
    if hit is None:
        hit = (ids, _geometry(phantom, materials, physics, dose_to, ids))
        _GEOMETRY_CACHE.clear()  # one grid kept: a run of several sources (projections) reuses it
        _GEOMETRY_CACHE[key] = hit
    return hit[1]


#: The source-independent part of :func:`_prepare` of the last grid run (key: its arrays, materials, physics).
_GEOMETRY_CACHE: dict = {}


def _geometry_key(phantom, materials, physics, dose_to) -> str:
    h = _hash_arrays(phantom)
    meta = {"grid": [phantom.shape, phantom.spacing_mm, phantom.world_material_id],
            "materials": {str(k): m.to_dict() for k, m in sorted(materials.items())},
            "physics": {k: getattr(physics, k) for k in physics.__dataclass_fields__},
            "dose_to": {str(k): m.to_dict() for k, m in sorted((dose_to or {}).items())}}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _geometry(phantom, materials, physics, dose_to, ids) -> _Prepared:
    wid = phantom.world_material_id
    used = [int(i) for i in ids]
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    lut[ids] = np.arange(len(used))
    mat = lut[phantom.material_id].ravel()
    mat = mat.astype(np.uint8 if len(used) <= 256 else np.int16)
    mats = [materials[i] for i in used]
    world_row = -1
    if wid is not None:
        if int(wid) in used:
            world_row = used.index(int(wid))
        else:
            world_row = len(mats)
            mats.append(materials[int(wid)])
    media = [(k, m) for k, m in (dose_to or {}).items() if k in used]  # ids with no voxel score nothing
    n_grid_rows = len(mats)
    mats += [m for _, m in media]  # rows after the grid's: tables only, no voxel uses them
    tables = build_tables(mats, physics.compton, physics.rayleigh, physics.e_min_keV, physics.e_max_keV,
                          physics.n_energy)
    nominal = tables.densities_g_cm3.astype(np.float32)
    dens = (phantom.density_g_cm3.ravel() if phantom.density_g_cm3 is not None else nominal[mat])
    dens = np.ascontiguousarray(dens, dtype=np.float32)
    if not np.any(dens > 0):
        raise TransportError("the phantom has zero density everywhere")
    blocks = _block_majorants(phantom, mat, dens, tables, len(mats), physics)
    labels = phantom.labels if phantom.labels is not None else phantom.material_id
    label_ids, labels_flat = _unique_inverse(labels.ravel())
    labels_flat = labels_flat.astype(np.int32)
    dz, dy, dx = phantom.spacing_mm
    voxel_mass = dens.astype(np.float64) * (dx * dy * dz * 1e-3)
    label_mass = np.bincount(labels_flat, weights=voxel_mass, minlength=len(label_ids))
    world_rho = float(tables.densities_g_cm3[world_row]) if world_row >= 0 else 0.0
    if world_row >= 0 and world_rho <= 0:
        raise TransportError(f"world material {wid} has density {world_rho}; it must be > 0")
    if physics.fluorescence:
        fl_cum, fl_e = fluorescence_tables(mats, tables.energy_keV, tables.mu_rho_cm2_g[:, :, 1])
    else:
        fl_cum, fl_e = np.zeros((len(mats), tables.energy_keV.size, 1)), np.zeros((len(mats), 1))
    conv = np.zeros((len(mats) if media else 0, tables.energy_keV.size))
    rows = np.array([used.index(k) for k, _ in media], dtype=np.int64)
    for j, (k, _) in enumerate(media):
        conv[rows[j]] = mu_en_rho(tables, n_grid_rows + j) / mu_en_rho(tables, rows[j])
    row_mass = np.bincount(mat.astype(np.int64), weights=voxel_mass, minlength=len(mats))
    # labels that are a function of the material row are scored through the row (no voxel lookup)
    first = np.full(len(mats), -1, np.int64)
    first[mat[::-1]] = np.arange(mat.size - 1, -1, -1)  # (any voxel of each row)
    row_label = np.where(first >= 0, labels_flat[np.maximum(first, 0)], 0).astype(np.int32)
    if not np.array_equal(row_label[mat], labels_flat):
        row_label = None
    return _Prepared(np.ascontiguousarray(mat), dens, tables, blocks,
                     labels_flat, label_ids, voxel_mass, label_mass, world_row, world_rho,
                     np.ascontiguousarray(fl_cum), np.ascontiguousarray(fl_e), np.ascontiguousarray(conv),
                     tuple(k for k, _ in media), rows,
                     row_mass[rows] if media else np.zeros(0), row_label,
                     np.ascontiguousarray(tables.densities_g_cm3, float), phantom.density_g_cm3 is None)


def _run_batch(prep: _Prepared, phantom: VoxelPhantom, source: Source, physics: Physics,
               settings: Settings, batch: int, fingerprint: str, per_voxel: bool = True) -> BatchRecord:
    nz, ny, nx = phantom.shape
    dz, dy, dx = (s / 10.0 for s in phantom.spacing_mm)
    t = prep.tables
    nvox = nx * ny * nz
    if per_voxel:
        score_idx, mode = _EMPTY_INT32, 0
    elif prep.row_label is not None:
        score_idx, mode = prep.row_label, 2
    else:
        score_idx, mode = prep.labels_flat, 1
    voxel = np.zeros(nvox if per_voxel else len(prep.label_ids))
    escape = np.zeros((_kernels.N_ESCAPE_CATEGORIES, _kernels.N_ESCAPE_QUANTITIES))
    incident = 0.0
    world = 0.0
    filtered = 0.0
    conv = np.zeros(prep.conv_tab.shape[0])
    n = settings.histories_per_batch
    hx = float(t.x_per_angstrom[1] - t.x_per_angstrom[0])
    for c, start in enumerate(range(0, n, settings.chunk_size)):
        m = min(settings.chunk_size, n - start)
        rng = np.random.default_rng([settings.seed, batch, c])
        ph = source.sample(m, rng)
        pos = np.ascontiguousarray(phantom.world_to_grid_cm(ph.position_mm))
        dirs = phantom.world_to_grid_dir(ph.direction)
        dirs = np.ascontiguousarray(dirs / np.linalg.norm(dirs, axis=1)[:, None])
        e = np.ascontiguousarray(ph.energy_keV, dtype=np.float64)
        if ph.weight is None:
            wgt = np.ones(m)
        else:
            wgt = np.ascontiguousarray(ph.weight, dtype=np.float64)
            if wgt.shape != (m,) or not np.all((wgt > 0) & (wgt <= 1)):
                raise TransportError(f"{type(source).__name__} returned photon weights outside (0, 1]")
            filtered += float(np.sum((1.0 - wgt) * e))
        with np.errstate(over="ignore"):
            v, esc, wk, cv = _kernels.transport(
                pos, dirs, e, wgt, prep.mat, prep.dens, nx, ny, nz, dx, dy, dz,
                t.mu_rho_cm2_g, *prep.blocks, t.ln_e0, 1.0 / t.dln_e, t.compton_s_over_z,
                t.rayleigh_cum, hx, float(physics.cutoff_keV), int(settings.seed), int(batch), int(start),
                numba.get_num_threads(), prep.world_row, prep.world_rho,
                float(phantom.world_margin_mm) / 10.0, prep.fl_cum, prep.fl_e, prep.conv_tab, score_idx,
                len(prep.label_ids), mode, prep.row_rho, prep.row_rho_only)
        voxel += v
        conv += cv
        escape += esc
        world += wk
        incident += float(e.sum())
    voxel *= 1000.0
    escape[:, 0] *= 1000.0
    escape[:, 2] *= 1000.0
    if per_voxel:
        label = np.bincount(prep.labels_flat, weights=voxel, minlength=len(prep.label_ids))
    else:
        label, voxel = voxel, np.zeros(0)
    return BatchRecord(batch, n, fingerprint, voxel, label, escape, incident * 1000.0,
                       world * 1000.0, filtered * 1000.0,
                       conv[prep.medium_rows] * 1000.0 if len(prep.medium_ids) else None)


def _check_regions(regions, nvox: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if regions is None:
        return {}
    if not isinstance(regions, Mapping):
        raise TransportError("regions must be a mapping {name: (flat_voxel_indices, weights)}")
    out = {}
    for name, spec in regions.items():
        try:
            idx, w = spec
            idx = np.asarray(idx).ravel()
            w = np.asarray(w, dtype=float).ravel()
        except (TypeError, ValueError):
            raise TransportError(f"region {name!r} must be (flat_voxel_indices, weights)") from None
        if not np.issubdtype(idx.dtype, np.integer) or idx.shape != w.shape:
            raise TransportError(f"region {name!r}: indices must be integers and match the weights' length")
        if idx.size and (idx.min() < 0 or idx.max() >= nvox):
            raise TransportError(f"region {name!r}: voxel indices must lie in [0, {nvox})")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise TransportError(f"region {name!r}: weights must be finite and >= 0")
        out[str(name)] = (idx.astype(np.int64), w)
    return out


def run(phantom: VoxelPhantom, materials: Mapping[int, Material], source: Source,
        physics: Physics | None = None, settings: Settings | None = None,
        progress: Callable[[int, int], None] | None = None,
        regions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        batches: Sequence[int] | None = None,
        dose_to: Mapping[int, Material] | None = None, tally: str = "voxels") -> TransportResult:
    """Transport ``settings.n_batches × settings.histories_per_batch`` photons.

    Parameters
    ----------
    phantom : VoxelPhantom
    materials : mapping of int to Material
        One material per id used in ``phantom.material_id``.
    source : Source
        E.g. :class:`~.sources.PencilBeam`; energies in (e_min_keV, e_max_keV].
    physics : Physics, optional
    settings : Settings, optional
    progress : callable, optional
        Called as ``progress(batches_done, n_batches)`` after every batch.
    regions : mapping of str to (int array, float array), optional
        Scoring regions: flat voxel indices (C order of the ``(nz, ny, nx)`` grid) and
        weights (e.g. the fraction of each voxel inside a cylindrical chamber). Each
        region's energy is tallied per batch, so :meth:`TransportResult.region` has an
        honest σ.
    batches : sequence of int, optional
        Only these batches (of ``range(settings.n_batches)``): one share of a run split
        across batch-system tasks, each writing its batches to ``settings.state_dir``; a
        full run over the same ``state_dir`` then loads them all, and equals the run made in
        one go (batch b is the random stream ``(seed, b, h)`` wherever it runs).
    dose_to : mapping of int to Material, optional
        Dose to another medium in the voxels of these material ids, e.g. red marrow in a
        spongiosa (bone and marrow mixture) that the phantom does not resolve: every
        collision deposit there is also tallied weighted by μen/ρ of the medium over μen/ρ
        of the voxel's material at the photon's energy (:func:`.xsection.mu_en_rho`), which
        estimates, without bias in the kerma approximation, the dose the medium would receive
        in the same photon fluence. Results: :meth:`TransportResult.medium_dose_table`.
        (Below about 100 keV the secondary electrons of bone trabeculae raise the dose to the
        marrow between them above this estimate: ICRP Publication 116's dose-response
        functions; not modelled.)
    tally : {'voxels', 'labels'}
        ``'voxels'`` (default): energy per voxel and batch (dose maps, regions; every batch
        reduces and stores a value per voxel). ``'labels'``: energy per label only, summed
        by the threads directly: for organ doses of large grids this saves the memory and
        the per-batch work of the voxel map. Voxel maps and regions then raise an error.

    Returns
    -------
    TransportResult
        Energy deposited per voxel and label (eV per source photon) with σ, escapes,
        exact totals for the energy balance, histories per second (computed batches only).

    Raises
    ------
    TransportError
        Invalid inputs: material id without material, source energy outside the tables,
        a beam whose central ray misses the grid, bad settings.
    """
    physics = physics if physics is not None else Physics()
    settings = settings if settings is not None else Settings()
    if not isinstance(settings, Settings):
        raise TransportError(f"settings must be a Settings, got {type(settings).__name__}")
    if tally not in TALLIES:
        raise TransportError(f"tally must be one of {TALLIES}, got {tally!r}")
    if tally == "labels" and regions:
        raise TransportError("regions are weighted voxel sums: they need tally='voxels'")
    media = _check_dose_to(dose_to, materials)
    prep = _prepare(phantom, materials, source, physics, media)
    fp = _fingerprint(phantom, materials, source, physics, settings, media, tally)
    regs = _check_regions(regions, int(np.prod(phantom.shape)))
    result = TransportResult(tuple(phantom.shape), prep.label_ids, fp, prep.voxel_mass_g, prep.label_mass_g,
                             region_names=tuple(regs), medium_ids=prep.medium_ids,
                             medium_names=tuple(media[k].name for k in prep.medium_ids),
                             medium_mass_g=prep.medium_mass_g, per_voxel=tally == "voxels")
    state = Path(settings.state_dir) if settings.state_dir is not None else None
    old_threads = numba.get_num_threads()
    if settings.threads is not None:
        numba.set_num_threads(settings.threads)
    t_compute = 0.0
    n_computed = 0
    try:
        todo = range(settings.n_batches) if batches is None else sorted({int(b) for b in batches})
        if batches is not None and any(not 0 <= b < settings.n_batches for b in todo):
            raise TransportError(f"batches must lie in 0..{settings.n_batches - 1}, got {list(batches)}")
        for b in todo:
            rec = None
            path = state / f"batch_{b:06d}.npz" if state is not None else None
            if path is not None and path.is_file():
                try:
                    cand = BatchRecord.load(path)
                    if cand.fingerprint == fp and cand.batch == b:
                        rec = cand
                except (OSError, ValueError, KeyError):
                    rec = None
            if rec is None:
                t0 = time.perf_counter()
                rec = _run_batch(prep, phantom, source, physics, settings, b, fp, tally == "voxels")
                t_compute += time.perf_counter() - t0
                n_computed += rec.histories
                if path is not None:
                    rec.save(path)
            region_eV = np.array([float(np.dot(rec.voxel_eV[i], w)) for i, w in regs.values()])
            result.add_batch(rec, region_eV if regs else None)
            if progress is not None:
                progress(b + 1, settings.n_batches)
    finally:
        numba.set_num_threads(old_threads)
    if n_computed:
        result.histories_per_second = n_computed / t_compute
    return result
