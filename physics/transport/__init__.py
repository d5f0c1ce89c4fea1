"""Monte Carlo photon transport (diagnostic x-ray energies) in voxel phantoms.

Public API: :class:`Material`, :func:`read_materials_csv`, :func:`build_tables`,
sources (:class:`PencilBeam`, :class:`ParallelBeam`, :class:`PointSource`,
:class:`CTFanBeam` with its :class:`Bowtie`, :class:`Spectrum`, :func:`read_spectrum_csv`,
:func:`spekpy_spectrum`), :class:`VoxelPhantom`, :class:`Physics`, :class:`Settings`,
:func:`run` → :class:`TransportResult`. Numba kernels compile on first use.
"""

from .ct import Bowtie, CTFanBeam
from .engine import COMPTON_MODELS, Physics, Settings, VoxelPhantom, run
from .materials import Material, TransportError, read_materials_csv
from .sources import (ParallelBeam, PencilBeam, PhotonBatch, PointSource, Source, Spectrum, read_spectrum_csv,
                      spekpy_spectrum)
from .tallies import ESCAPE_CATEGORIES, BatchRecord, TransportResult
from .xsection import CrossSectionTables, build_tables, interp_mu_rho

__all__ = [
    "CTFanBeam", "Bowtie", "spekpy_spectrum",
    "COMPTON_MODELS", "Physics", "Settings", "VoxelPhantom", "run", "Material", "TransportError",
    "read_materials_csv", "ParallelBeam", "PencilBeam", "PhotonBatch", "PointSource", "Source",
    "Spectrum", "read_spectrum_csv", "ESCAPE_CATEGORIES", "BatchRecord", "TransportResult",
    "CrossSectionTables", "build_tables", "interp_mu_rho",
]
