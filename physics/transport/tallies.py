"""Batch statistics of a transport run (OpenMC-style sum / sum of squares).

Each batch ``b`` of ``N`` histories gives an estimate per source photon
``x_b = T_b / N`` of every tallied quantity (``T_b`` = energy deposited in a voxel or
label, or escaping through a face, in the batch). Over ``B`` batches the result keeps
``Σ x_b`` and ``Σ x_b²`` and reports

    mean = Σ x_b / B,   σ_mean = sqrt((Σ x_b² / B − mean²) / (B − 1))

(NaN for B = 1). Exact totals (energy in eV, not per photon) are kept too, for the
energy-balance check ``deposited + world + escaped + filtered = incident``. A batch is stored as a
:class:`BatchRecord`; adding the same records in the same order gives bit-identical
results whether they come from one process or from merged batch files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_npz
from .materials import TransportError

__all__ = ["ESCAPE_CATEGORIES", "BatchRecord", "TransportResult"]

#: Escape categories (grid-frame faces, then photons that never entered the grid).
ESCAPE_CATEGORIES = ("-x", "+x", "-y", "+y", "-z", "+z", "missed")
_ESC_Q = ("energy_eV", "count", "uncollided_energy_eV", "uncollided_count")




@dataclass
class BatchRecord:
    """Raw totals of one batch.

    Attributes
    ----------
    batch : int
    histories : int
    fingerprint : str
        Hash of the run inputs; records of different runs cannot be merged.
    voxel_eV : float64 (n_vox,)
        Energy deposited per voxel (eV, total over the batch).
    label_eV : float64 (n_labels,)
        Energy deposited per label (eV), in the order of ``label_ids``.
    escape : float64 (7, 4)
        Per category of :data:`ESCAPE_CATEGORIES`: energy (eV), count, uncollided
        energy (eV), uncollided count.
    incident_eV : float
        Energy of all source photons of the batch (eV).
    world_eV : float
        Energy deposited in the world medium around the grid (eV; 0 in vacuum).
    filtered_eV : float
        Energy removed at the source by filtration weights, ``Σ (1 − w) E`` (eV).
    medium_eV : float64 (n_media,) or None
        Dose-to-medium tallies (``run(dose_to=...)``): converted energy (eV) per material id.
    """

    batch: int
    histories: int
    fingerprint: str
    voxel_eV: np.ndarray
    label_eV: np.ndarray
    escape: np.ndarray
    incident_eV: float
    world_eV: float = 0.0
    filtered_eV: float = 0.0
    medium_eV: np.ndarray | None = None

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, then rename)."""
        write_npz(Path(path), batch=self.batch, histories=self.histories,
                      fingerprint=np.array(self.fingerprint), voxel_eV=self.voxel_eV,
                      label_eV=self.label_eV, escape=self.escape, incident_eV=self.incident_eV,
                      world_eV=self.world_eV, filtered_eV=self.filtered_eV,
                      **({"medium_eV": self.medium_eV} if self.medium_eV is not None else {}))

    @classmethod
    def load(cls, path: str | Path) -> "BatchRecord":
        with np.load(path) as z:
            return cls(int(z["batch"]), int(z["histories"]), str(z["fingerprint"]), z["voxel_eV"].copy(),
                       z["label_eV"].copy(), z["escape"].copy(), float(z["incident_eV"]),
                       float(z["world_eV"]) if "world_eV" in z else 0.0,
                       float(z["filtered_eV"]) if "filtered_eV" in z else 0.0,
                       z["medium_eV"].copy() if "medium_eV" in z else None)


def _mean_sigma(s: np.ndarray, s2: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if n == 0:
        nan = np.full(np.shape(s), np.nan)
        return nan, nan
    mean = s / n
    if n < 2:
        return mean, np.full(np.shape(s), np.nan)
    var = np.maximum(s2 / n - mean * mean, 0.0) / (n - 1)
    return mean, np.sqrt(var)


@dataclass
class TransportResult:
    """Accumulated tallies of a run.

    Attributes
    ----------
    shape : tuple of int
        Voxel grid shape ``(nz, ny, nx)``.
    label_ids : int64 (n_labels,)
        Labels tallied (sorted).
    voxel_mass_g, label_mass_g : float64 arrays or None
        Masses, for dose (Gy = J/kg).
    n_batches, histories : int
        Batches and total histories accumulated.
    fingerprint : str
    """

    shape: tuple[int, int, int]
    label_ids: np.ndarray
    fingerprint: str = ""
    voxel_mass_g: np.ndarray | None = None
    label_mass_g: np.ndarray | None = None
    n_batches: int = 0
    histories: int = 0
    histories_per_second: float = float("nan")
    voxel_sum: np.ndarray = field(default=None)
    voxel_sum_sq: np.ndarray = field(default=None)
    label_sum: np.ndarray = field(default=None)
    label_sum_sq: np.ndarray = field(default=None)
    escape_sum: np.ndarray = field(default=None)
    escape_sum_sq: np.ndarray = field(default=None)
    deposited_total_eV: float = 0.0
    escaped_total_eV: float = 0.0
    incident_total_eV: float = 0.0
    world_total_eV: float = 0.0
    filtered_total_eV: float = 0.0
    world_sum: float = 0.0
    world_sum_sq: float = 0.0
    filtered_sum: float = 0.0
    filtered_sum_sq: float = 0.0
    batches_done: list = field(default_factory=list)
    region_names: tuple = ()
    region_sum: np.ndarray = field(default=None)
    region_sum_sq: np.ndarray = field(default=None)
    medium_ids: tuple = ()
    medium_names: tuple = ()
    medium_mass_g: np.ndarray | None = None
    medium_sum: np.ndarray = field(default=None)
    medium_sum_sq: np.ndarray = field(default=None)
    per_voxel: bool = True

    def __post_init__(self):
        nvox = int(np.prod(self.shape)) if self.per_voxel else 0
        nl = len(self.label_ids)
        for name, size in (("voxel_sum", nvox), ("voxel_sum_sq", nvox), ("label_sum", nl), ("label_sum_sq", nl)):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(size))
        for name in ("escape_sum", "escape_sum_sq"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros((len(ESCAPE_CATEGORIES), len(_ESC_Q))))
        self.region_names = tuple(self.region_names)
        for name in ("region_sum", "region_sum_sq"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(len(self.region_names)))
        self.medium_ids = tuple(int(i) for i in self.medium_ids)
        for name in ("medium_sum", "medium_sum_sq"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(len(self.medium_ids)))

    # ------------------------------------------------------------------ accumulate
    def add_batch(self, rec: BatchRecord, region_eV: np.ndarray | None = None) -> None:
        """Add one batch (raises if it belongs to another run or was already added).

        ``region_eV``: the batch's energy (eV, total) in each of :attr:`region_names`
        (weighted voxel sums computed by the engine), required when regions are defined.
        """
        if self.fingerprint and rec.fingerprint != self.fingerprint:
            raise TransportError(f"batch {rec.batch} belongs to another run (fingerprint "
                                 f"{rec.fingerprint} != {self.fingerprint})")
        if rec.batch in self.batches_done:
            raise TransportError(f"batch {rec.batch} was already added")
        if rec.voxel_eV.size != self.voxel_sum.size or rec.label_eV.size != self.label_sum.size:
            raise TransportError(f"batch {rec.batch} has tallies of another size")
        if len(self.region_names):
            if region_eV is None or np.shape(region_eV) != (len(self.region_names),):
                raise TransportError(f"batch {rec.batch}: region tallies for {self.region_names} are missing")
            xr = np.asarray(region_eV, float) / float(rec.histories)
            self.region_sum += xr
            self.region_sum_sq += xr * xr
        if self.medium_ids:
            if rec.medium_eV is None or np.shape(rec.medium_eV) != (len(self.medium_ids),):
                raise TransportError(f"batch {rec.batch}: dose-to-medium tallies for material ids "
                                     f"{list(self.medium_ids)} are missing")
            xm = np.asarray(rec.medium_eV, float) / float(rec.histories)
            self.medium_sum += xm
            self.medium_sum_sq += xm * xm
        n = float(rec.histories)
        xv = rec.voxel_eV / n
        xl = rec.label_eV / n
        xe = rec.escape / n
        self.voxel_sum += xv
        self.voxel_sum_sq += xv * xv
        self.label_sum += xl
        self.label_sum_sq += xl * xl
        self.escape_sum += xe
        self.escape_sum_sq += xe * xe
        xw = rec.world_eV / n
        xf = rec.filtered_eV / n
        self.world_sum += xw
        self.world_sum_sq += xw * xw
        self.filtered_sum += xf
        self.filtered_sum_sq += xf * xf
        self.world_total_eV += rec.world_eV
        self.filtered_total_eV += rec.filtered_eV
        self.deposited_total_eV += float(rec.label_eV.sum())
        self.escaped_total_eV += float(rec.escape[:, 0].sum())
        self.incident_total_eV += rec.incident_eV
        self.n_batches += 1
        self.histories += rec.histories
        self.batches_done.append(rec.batch)

    @classmethod
    def merge(cls, paths, shape, label_ids, voxel_mass_g=None, label_mass_g=None) -> "TransportResult":
        """Merge batch files (in batch order) into a result; batches must share a fingerprint."""
        recs = sorted((BatchRecord.load(p) for p in paths), key=lambda r: r.batch)
        if not recs:
            raise TransportError("merge: no batch files given")
        res = cls(tuple(shape), np.asarray(label_ids), recs[0].fingerprint, voxel_mass_g, label_mass_g,
                  per_voxel=recs[0].voxel_eV.size > 0)
        for r in recs:
            res.add_batch(r)
        return res

    # ------------------------------------------------------------------ derived
    def _need_voxels(self) -> None:
        if not self.per_voxel:
            raise TransportError("this run tallied labels only (run(..., tally='labels')): voxel maps need "
                                 "tally='voxels'")

    @property
    def edep_eV_per_photon(self) -> np.ndarray:
        """Mean energy deposited per voxel per source photon (eV), shape :attr:`shape`."""
        self._need_voxels()
        return _mean_sigma(self.voxel_sum, self.voxel_sum_sq, self.n_batches)[0].reshape(self.shape)

    @property
    def edep_sigma_eV_per_photon(self) -> np.ndarray:
        """1σ of :attr:`edep_eV_per_photon` (eV; NaN with fewer than 2 batches)."""
        self._need_voxels()
        return _mean_sigma(self.voxel_sum, self.voxel_sum_sq, self.n_batches)[1].reshape(self.shape)

    @property
    def label_edep_eV_per_photon(self) -> np.ndarray:
        return _mean_sigma(self.label_sum, self.label_sum_sq, self.n_batches)[0]

    @property
    def label_edep_sigma_eV_per_photon(self) -> np.ndarray:
        return _mean_sigma(self.label_sum, self.label_sum_sq, self.n_batches)[1]

    def escape(self, category: str, quantity: str = "energy_eV") -> tuple[float, float]:
        """Mean and σ per source photon of an escape tally.

        Parameters
        ----------
        category : one of :data:`ESCAPE_CATEGORIES` or ``'all'``
        quantity : {'energy_eV', 'count', 'uncollided_energy_eV', 'uncollided_count'}
        """
        if quantity not in _ESC_Q:
            raise TransportError(f"quantity must be one of {_ESC_Q}, got {quantity!r}")
        q = _ESC_Q.index(quantity)
        if category == "all":
            return self._escape_all(q)
        if category not in ESCAPE_CATEGORIES:
            raise TransportError(f"category must be one of {ESCAPE_CATEGORIES} or 'all', got {category!r}")
        c = ESCAPE_CATEGORIES.index(category)
        m, s = _mean_sigma(self.escape_sum[c, q], self.escape_sum_sq[c, q], self.n_batches)
        return float(m), float(s)

    def _escape_all(self, q):
        m = self.escape_sum[:, q].sum() / max(self.n_batches, 1)
        return float(m), float("nan")

    @property
    def escaped_eV_per_photon(self) -> float:
        return self._escape_all(0)[0]

    @property
    def world_eV_per_photon(self) -> tuple[float, float]:
        """Mean and σ of the energy deposited in the world medium per source photon (eV)."""
        m, s = _mean_sigma(np.asarray(self.world_sum), np.asarray(self.world_sum_sq), self.n_batches)
        return float(m), float(s)

    @property
    def filtered_eV_per_photon(self) -> tuple[float, float]:
        """Mean and σ of the energy removed by source filtration per source photon (eV)."""
        m, s = _mean_sigma(np.asarray(self.filtered_sum), np.asarray(self.filtered_sum_sq), self.n_batches)
        return float(m), float(s)

    @property
    def energy_balance_error(self) -> float:
        """``(deposited + world + escaped + filtered − incident) / incident`` over all histories."""
        return (self.deposited_total_eV + self.world_total_eV + self.escaped_total_eV
                + self.filtered_total_eV - self.incident_total_eV) / self.incident_total_eV

    def dose_Gy_per_photon(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean dose per voxel per source photon and its σ (Gy); needs ``voxel_mass_g``."""
        self._need_voxels()
        if self.voxel_mass_g is None:
            raise TransportError("dose needs voxel_mass_g")
        ev_to_j = 1.602176634e-19
        with np.errstate(divide="ignore", invalid="ignore"):
            k = ev_to_j / (self.voxel_mass_g.reshape(self.shape) * 1e-3)
        return self.edep_eV_per_photon * k, self.edep_sigma_eV_per_photon * k

    def region(self, name: str) -> tuple[float, float]:
        """Mean and σ of the energy deposited in a scoring region per source photon (eV).

        Regions are weighted voxel sums given to :func:`~.engine.run` (``regions=``), e.g.
        a cylindrical chamber with partial-volume weights; σ comes from the batch spread of
        the region total (not from per-voxel σ, which would ignore their correlation).
        """
        if name not in self.region_names:
            raise TransportError(f"no region {name!r}; regions are {list(self.region_names)}")
        i = self.region_names.index(name)
        m, s = _mean_sigma(self.region_sum[i], self.region_sum_sq[i], self.n_batches)
        return float(m), float(s)

    def medium_dose_table(self) -> list[dict]:
        """Per material id of ``run(dose_to=...)``: ``material_id``, ``medium``, ``mass_g`` (of
        the voxels of that material), ``edep_eV_per_photon`` and σ (converted to the medium),
        ``dose_Gy_per_photon`` and ``dose_sigma_Gy_per_photon`` (dose to the medium)."""
        m, s = _mean_sigma(self.medium_sum, self.medium_sum_sq, self.n_batches)
        rows = []
        for i, k in enumerate(self.medium_ids):
            mass = float(self.medium_mass_g[i]) if self.medium_mass_g is not None else float("nan")
            f = 1.602176634e-19 / (mass * 1e-3) if mass > 0 else float("nan")
            rows.append({"material_id": k, "medium": self.medium_names[i] if i < len(self.medium_names) else "",
                         "mass_g": mass, "edep_eV_per_photon": float(m[i]), "edep_sigma_eV_per_photon": float(s[i]),
                         "dose_Gy_per_photon": float(m[i]) * f, "dose_sigma_Gy_per_photon": float(s[i]) * f})
        return rows

    def label_table(self) -> list[dict]:
        """Per label: ``label``, ``edep_eV_per_photon``, ``edep_sigma_eV_per_photon``,
        ``mass_g`` and ``dose_Gy_per_photon`` / ``dose_sigma_Gy_per_photon`` when masses are known."""
        m, s = self.label_edep_eV_per_photon, self.label_edep_sigma_eV_per_photon
        rows = []
        for i, lab in enumerate(self.label_ids):
            r = {"label": int(lab), "edep_eV_per_photon": float(m[i]), "edep_sigma_eV_per_photon": float(s[i])}
            if self.label_mass_g is not None:
                mass = float(self.label_mass_g[i])
                r["mass_g"] = mass
                k = 1.602176634e-19 / (mass * 1e-3) if mass > 0 else float("nan")
                r["dose_Gy_per_photon"] = float(m[i]) * k
                r["dose_sigma_Gy_per_photon"] = float(s[i]) * k
            rows.append(r)
        return rows
