"""A voxel phantom seen as a CT: CT numbers from its tissues' attenuation at a tube's spectrum.

An atlas (a labelled reference phantom) is registered to a patient's CT by its image, so it
needs one: each tissue's CT number is

    HU = 1000 (mu_tissue / mu_water - 1),

with mu the linear attenuation coefficient (total, with coherent scattering; xraydb's
Elam tables, as the transport engine uses) averaged over the tube spectrum as an
energy-integrating detector sees it (weights fluence x energy; SpekPy spectrum of the kVp and
filtration). Beam hardening, the bowtie and the reconstruction kernel are not modelled: the
numbers are those of a monoenergetic-equivalent image, close to a calibrated scanner's for
soft tissue and lower than a scanner's for dense bone.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import numpy as np

from phantoms.tissues import Tissue, tissue
from pipeline.image import Volume

__all__ = ["ct_number", "render_ct"]


@lru_cache(maxsize=8)
def _spectrum(kvp: float, filtration: tuple[tuple[str, float], ...]):
    from physics.transport import spekpy_spectrum

    s = spekpy_spectrum(kvp, filtration_mm=dict(filtration), bin_keV=1.0)
    e = np.asarray(s.energy_keV, float)
    w = np.asarray(s.relative_fluence, float) * e
    keep = e >= 10.0  # (below 10 keV nothing reaches the detector through a patient)
    return e[keep], w[keep] / w[keep].sum()


def _mu(t: Tissue, energies_keV: np.ndarray) -> np.ndarray:
    import xraydb

    mu_rho = np.zeros_like(energies_keV)
    for el, frac in t.mass_fractions.items():
        if frac > 0:
            mu_rho += frac * np.asarray(xraydb.mu_elam(el, energies_keV * 1e3, kind="total"))
    return mu_rho * t.density_g_cm3


def ct_number(t: Tissue, kvp: float = 120.0, filtration_mm: Mapping[str, float] | None = None) -> float:
    """CT number (HU) of a tissue at a tube potential (module docstring); air gives about -1000."""
    e, w = _spectrum(float(kvp), tuple(sorted((filtration_mm or {"Al": 6.0}).items())))
    water = tissue("water")
    return float(1000.0 * (np.sum(w * _mu(t, e)) / np.sum(w * _mu(water, e)) - 1.0))


def render_ct(labels: Volume, materials: Mapping[int, Tissue], kvp: float = 120.0,
              filtration_mm: Mapping[str, float] | None = None) -> Volume:
    """The phantom's CT (float32 HU on its grid); labels without a material are air (-1000 HU)."""
    lab = np.asarray(labels.array).astype(np.int64)
    lut = np.full(int(lab.max()) + 1, -1000.0, np.float32)
    for k, t in materials.items():
        if 0 <= k < lut.size:
            lut[k] = ct_number(t, kvp, filtration_mm)
    return labels.with_array(lut[lab])
