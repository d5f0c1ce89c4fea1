"""What the two dose paths of a study share: the protocol over the scan range, the cached
spectrum, the CTDI normalisation and the scoring of one case's scan
(:mod:`workflows.study.dose_cases` for stylised phantoms, :mod:`workflows.study.ct_cases` for a
patient's CT)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from workflows.dose.ctdi import run_ctdi
from workflows.dose.effective_dose import effective_dose
from workflows.dose.patient import normalisation, organ_table, run_scan
from workflows.dose.protocol import read_protocol

__all__ = ["protocol_over", "spectrum_from_json", "spectrum_json", "ctdi_normalisation", "scan_case"]


def protocol_over(base: Mapping, scan: Mapping):
    """The base's CT protocol with its z range replaced by ``scan``'s (focal-spot z, mm)."""
    p = read_protocol(base["protocol"])
    return dataclasses.replace(p, z_start_mm=float(scan["z_start_mm"]), z_end_mm=float(scan["z_end_mm"]))


def spectrum_from_json(d: Mapping):
    """The spectrum :func:`spectrum_json` wrote."""
    from physics.transport import Spectrum

    return Spectrum(d["energy_keV"], d["relative_fluence"], d.get("bin_low_keV"), d.get("bin_high_keV"))


def spectrum_json(spec) -> dict:
    """A :class:`physics.transport.Spectrum` as JSON (read back by :func:`spectrum_from_json`)."""
    return {"energy_keV": spec.energy_keV.tolist(), "relative_fluence": spec.relative_fluence.tolist(),
            "bin_low_keV": None if spec.bin_low_keV is None else spec.bin_low_keV.tolist(),
            "bin_high_keV": None if spec.bin_high_keV is None else spec.bin_high_keV.tolist()}


def ctdi_normalisation(protocol, base: Mapping, work: Path, quiet: bool) -> tuple[dict, dict, int]:
    """The protocol's CTDI run (cached in ``work/ctdi``) and the normalisation every case shares:
    ``(ctdi, normalisation, phantom diameter cm)``; the normalisation adds ``relative_sigma``
    (of CTDIvol, common to every case) and ``ctdivol_sigma_mGy``."""
    diameter = protocol.ctdi_phantom_diameter_cm or 32
    if not quiet:
        print(f"[dose study] CTDI of the protocol in the {diameter} cm phantom, {base['ctdi_histories']:.3g} photons",
              flush=True)
    ctdi = run_ctdi(protocol, diameter, base["ctdi_histories"], base["seed"], base["threads"], Path(work) / "ctdi")
    norm = normalisation(protocol, ctdi)
    rel = (ctdi["ctdivol_sigma_Gy_per_photon"] / ctdi["ctdivol_Gy_per_photon"]
           if ctdi.get("ctdivol_Gy_per_photon") else None)
    norm["relative_sigma"] = rel
    if ctdi["tube_output"].get("source", "").startswith("measured"):
        norm["ctdivol_sigma_mGy"] = 0.0  # CTDIvol is the measurement; the MC σ sits in the photons per mAs
    else:
        norm["ctdivol_sigma_mGy"] = norm["ctdivol_mGy"] * rel if norm["ctdivol_mGy"] is not None and rel else None
    return ctdi, norm, diameter


def scan_case(phantom, mats, names, protocol, base: Mapping, prepared: Mapping, error_cls, **kw) -> tuple:
    """One case's scan (``run_scan`` keywords ``kw``), scored: ``(result, organ rows, organ doses,
    organ masses, effective dose)`` in the study's normalisation; a transport error becomes ``error_cls``."""
    from physics.transport import TransportError

    try:
        res = run_scan(phantom, mats, protocol, {}, base["histories"], base["batches"], base["seed"],
                       base["threads"], spectrum=spectrum_from_json(prepared["spectrum"]), **kw)
    except TransportError as exc:
        raise error_cls(f"transport: {exc}") from None
    norm = prepared["normalisation"]
    rows, organ_dose, organ_mass = organ_table(res, mats, names, norm["photons_in_scan"], norm["ctdivol_mGy"])
    return res, rows, organ_dose, organ_mass, effective_dose(organ_dose, base["sex"], organ_mass)
