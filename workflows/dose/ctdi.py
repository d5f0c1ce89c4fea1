"""``digipat ctdi``: the CT dose indices of a scan protocol, simulated in the standard phantoms.

Definitions (IEC 60601-2-44; AAPM Report 96 (2008); McCollough et al., *Radiology* 259
(2011) 311): for a **single axial rotation** with total nominal collimation N·T,

.. math:: \\mathrm{CTDI}_{100} = \\frac{1}{N T} \\int_{-50\\,\\mathrm{mm}}^{50\\,\\mathrm{mm}} K(z)\\, dz,

with K the air kerma along a line parallel to the axis in a hole of the 16-cm (head) or
32-cm (body) PMMA phantom (:mod:`phantoms.ctdi`), measured by a 100-mm pencil chamber;
:math:`\\mathrm{CTDI_w} = \\tfrac13 \\mathrm{CTDI}_{100,c} + \\tfrac23 \\mathrm{CTDI}_{100,p}`
(c: centre hole, p: mean of the four peripheral holes) and
:math:`\\mathrm{CTDI_{vol}} = \\mathrm{CTDI_w} / \\text{pitch}`.

How it is simulated (:func:`run_ctdi`):

1. The protocol's beam (:meth:`workflows.dose.protocol.Protocol.axial_source`: SpekPy
   spectrum, bowtie, collimation, source-to-isocentre distance) makes one full axial
   rotation (pitch 0, no tube-current modulation) centred on the phantom; the Monte
   Carlo engine (:func:`physics.transport.run`) scores the energy in the five chambers
   (air composition at the PMMA density, so energy per mass = air kerma; see
   :mod:`phantoms.ctdi`). The chamber dose D is the mean air kerma over its 100 mm,
   so :math:`\\int K\\,dz = 100\\,\\mathrm{mm} \\cdot D` and CTDI100 = D · 100 mm / (N T).
2. **Variance reduction: only the part of the fan that can reach the phantom is
   simulated.** A ray at fan coordinate x (isocentre plane) passes the axis at
   s = R x / sqrt(R² + x²), so rays with |x| > ρ R / sqrt(R² − ρ²) miss a phantom of
   radius ρ; the fan is trimmed to that half-width plus 10 mm (when narrower than the
   protocol's), and the results are scaled by the fraction of the protocol's photons
   inside the trimmed fan, Ω_trimmed / Ω_full (exact: emission is isotropic inside the
   collimated pyramid; :attr:`physics.transport.CTFanBeam.solid_angle_sr`). What is
   neglected is air scatter from the discarded rays into the phantom, of order
   μ_air,scatter · H / 2 · ln(r_max / r_min) ≈ 0.1 % of the free-in-air kerma and less in
   a phantom. ``trim_fan=False`` simulates the whole fan.
3. Everything is per photon emitted by the focal spot into the protocol's collimated
   beam (before the bowtie). The **tube output** converts to per mAs:

   - if the protocol gives a measured ``ctdivol_mGy_per_100mAs`` for the simulated
     phantom, photons per 100 mAs = measured CTDIvol / simulated CTDIvol per photon
     (then the simulated CTDIvol per 100 mAs equals the measurement by construction,
     and the other indices follow from the simulated ratios);
   - otherwise photons per mAs = SpekPy's fluence per mAs at 1 m on the central axis
     (photons/cm²/mAs, :func:`workflows.dose.protocol.tube_fluence_per_mAs_cm2`) × (100 cm)²
     × the beam's solid angle Ω (sr). This assumes isotropic emission (no heel effect)
     and no off-focal radiation, and SpekPy's tube model; clinical scanners' CTDIvol at
     the same kV and mAs differ by about a factor 2 (Huda et al., below), so this is an
     estimate for a generic tube, not a substitute for a measurement.

``ctdi.json`` (written atomically in ``out_dir``) holds every index per source photon
(Gy, with its 1σ from 10 batches) and per 100 mAs (mGy), the tube output, the
simulated fan, the protocol and provenance; a rerun with the same inputs returns it
without simulating again (``force=True`` to recompute).

References for the checks in ``tests/workflows/test_ctdi.py``: Huda W. et al.,
"Relationship between radiographic techniques (kilovolt and milliampere-second) and
CTDIvol", *Radiat. Prot. Dosimetry* (2010): mean CTDIvol of 43 scanners at 120 kV,
pitch 1: 167 ± 44 µGy/mAs (head phantom), 78 ± 22 µGy/mAs (body phantom).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from workflows.common import SCHEMA_VERSION, ResultCache, hash_params, provenance
from workflows.dose.protocol import Protocol, read_protocol, tube_fluence_per_mAs_cm2

__all__ = ["CTDIError", "run_ctdi", "summary_text", "CTDI_NAME", "DEFAULT_HISTORIES",
           "DEFAULT_BATCHES", "FAN_MARGIN_MM"]

CTDI_NAME = "ctdi.json"
DEFAULT_HISTORIES = 2_000_000
DEFAULT_BATCHES = 10
#: Margin (mm, on the isocentre plane) added to the fan half-width that reaches the phantom.
FAN_MARGIN_MM = 10.0
_PERIPHERAL = ("periphery_0", "periphery_90", "periphery_180", "periphery_270")


class CTDIError(ValueError):
    """Invalid input to the CTDI workflow (the message names the parameter)."""


def _load_protocol(protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, (str, Path)):
        return read_protocol(protocol)
    raise CTDIError(f"protocol must be a Protocol or a protocol file path, got {type(protocol).__name__}")


def _int_param(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise CTDIError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _trimmed_half_fan_mm(radius_mm: float, R: float) -> float:
    """Half-width on the isocentre plane of the rays that pass within ``radius_mm`` of the axis."""
    return radius_mm * R / math.sqrt(R * R - radius_mm * radius_mm) + FAN_MARGIN_MM


def _geometry(diameter_cm, geometry):
    """The CTDI phantom: the standard 16 / 32 cm PMMA one, free in air (None), or ``geometry``."""
    from phantoms.ctdi import ctdi_phantom, free_in_air_phantom

    if geometry is None:
        if diameter_cm is not None and (isinstance(diameter_cm, bool) or diameter_cm not in (16, 32)):
            raise CTDIError(f"diameter_cm must be 16 (head), 32 (body) or None (free in air), got {diameter_cm!r}")
        return free_in_air_phantom() if diameter_cm is None else ctdi_phantom(int(diameter_cm))
    if geometry.diameter_cm != diameter_cm:
        raise CTDIError(f"geometry is the {geometry.diameter_cm or 'free-in-air'} phantom but diameter_cm is "
                        f"{diameter_cm!r}")
    return geometry


def _sources(p: Protocol, geometry, trim_fan: bool):
    """The protocol's full axial beam, the simulated (fan-trimmed) one, its fan width (mm), photon fraction."""
    spectrum = p.spectrum()
    full = p.axial_source(spectrum=spectrum)
    R = p.source_to_isocentre_mm
    reach_mm = geometry.radius_mm if geometry.diameter_cm else geometry.chamber_radius_mm + 2.0
    fan = full.fan_width_mm
    if trim_fan:
        fan = min(fan, 2.0 * _trimmed_half_fan_mm(reach_mm, R))
    src = full if fan == full.fan_width_mm else p.axial_source(fan, spectrum=spectrum)
    return full, src, fan, src.solid_angle_sr / full.solid_angle_sr


def _indices(r: dict, geometry, res, to_ctdi: float, pitch: float) -> tuple[dict, dict]:
    """CTDI100 / CTDIw / CTDIvol per photon (Gy) and their σ into ``r``; returns (values, σ) by index name."""
    def index(region):
        d, s = geometry.dose_Gy_per_photon(res, region)
        return d * to_ctdi, s * to_ctdi

    if geometry.diameter_cm is None:
        r["ctdi100_air_Gy_per_photon"], r["ctdi100_air_sigma_Gy_per_photon"] = index("centre")
        per_photon = {"ctdi100_air": r["ctdi100_air_Gy_per_photon"]}
        sig = {"ctdi100_air": r["ctdi100_air_sigma_Gy_per_photon"]}
    else:
        c, sc = index("centre")
        pm, sp = index("periphery")
        w = c / 3.0 + 2.0 * pm / 3.0
        sw = math.sqrt((sc / 3.0) ** 2 + (2.0 * sp / 3.0) ** 2)
        r.update({
            "ctdi100_centre_Gy_per_photon": c, "ctdi100_centre_sigma_Gy_per_photon": sc,
            "ctdi100_periphery_Gy_per_photon": pm, "ctdi100_periphery_sigma_Gy_per_photon": sp,
            "ctdiw_Gy_per_photon": w, "ctdiw_sigma_Gy_per_photon": sw,
            "ctdivol_Gy_per_photon": w / pitch, "ctdivol_sigma_Gy_per_photon": sw / pitch,
            "centre_to_periphery_ratio": c / pm,
            "centre_to_periphery_ratio_sigma": (c / pm) * math.hypot(sc / c, sp / pm) if c > 0 and pm > 0 else None,
            "ctdi100_peripheral_positions": {
                name.split("_")[1] + "_deg": dict(zip(("Gy_per_photon", "sigma_Gy_per_photon"), index(name)),
                                                  xy_mm=list(geometry.chamber_centres_mm[name]))
                for name in _PERIPHERAL},
        })
        per_photon = {"ctdi100_centre": c, "ctdi100_periphery": pm, "ctdiw": w, "ctdivol": w / pitch}
        sig = {"ctdi100_centre": sc, "ctdi100_periphery": sp, "ctdiw": sw, "ctdivol": sw / pitch}
    return per_photon, sig


def _per_100mAs(r: dict, p: Protocol, geometry, full, per_photon: dict, sig: dict) -> None:
    """Tube output (photons per 100 mAs) and the indices in mGy per 100 mAs (and for the protocol) into ``r``."""
    # tube output: photons (into the protocol's full collimated beam) per 100 mAs
    out_info: dict = {"beam_solid_angle_sr": full.solid_angle_sr}
    measured = (p.ctdivol_mGy_per_100mAs is not None and geometry.diameter_cm is not None
                and p.ctdi_phantom_diameter_cm == geometry.diameter_cm)
    if measured:
        photons_100 = p.ctdivol_mGy_per_100mAs * 1e-3 / per_photon["ctdivol"]
        out_info.update(source="measured ctdivol_mGy_per_100mAs",
                        measured_ctdivol_mGy_per_100mAs=p.ctdivol_mGy_per_100mAs)
    else:
        flu = tube_fluence_per_mAs_cm2(p)
        photons_100 = 100.0 * flu * 1.0e4 * full.solid_angle_sr
        out_info.update(source="spekpy", fluence_per_mAs_cm2_at_1m=flu,
                        note="SpekPy fluence per mAs at 1 m x (100 cm)^2 x beam solid angle; isotropic "
                             "emission, no heel effect, no off-focal radiation")
    out_info["photons_per_100mAs"] = photons_100
    r["tube_output"] = out_info
    for k, v in per_photon.items():
        r[f"{k}_mGy_per_100mAs"] = v * photons_100 * 1e3
        r[f"{k}_sigma_mGy_per_100mAs"] = sig[k] * photons_100 * 1e3
    if "ctdivol" in per_photon and p.mAs_per_rotation is not None:
        r["ctdivol_mGy"] = r["ctdivol_mGy_per_100mAs"] * p.mAs_per_rotation / 100.0 * p.mean_relative_mA
        r["ctdivol_mGy_note"] = "protocol CTDIvol: per 100 mAs x mAs_per_rotation / 100 x mean relative mA"


def run_ctdi(protocol, diameter_cm: int | None, histories: int = DEFAULT_HISTORIES, seed: int = 1,
             threads: int | None = None, out_dir=None, *, batches: int = DEFAULT_BATCHES, trim_fan: bool = True,
             geometry=None, force: bool = False) -> dict:
    """Simulate CTDI100 (centre, periphery), CTDIw and CTDIvol of a protocol.

    Parameters
    ----------
    protocol : Protocol or path
        The scan protocol (:mod:`workflows.dose.protocol`).
    diameter_cm : {16, 32} or None
        The PMMA phantom (head 16 cm, body 32 cm); None for the free-in-air CTDI (a
        chamber on the axis in air, :func:`phantoms.ctdi.free_in_air_phantom`).
    histories : int
        Source photons simulated (>= ``batches``), split into ``batches`` batches for σ.
    seed : int
        Random seed (same seed, same answer).
    threads : int, optional
        Numba threads (default: all).
    out_dir : path, optional
        Folder for ``ctdi.json`` (written atomically); none written if None.
    batches : int
        Number of batches (>= 2 for σ). Default 10.
    trim_fan : bool
        Simulate only the rays that can reach the phantom (module docstring). Default True.
    geometry : phantoms.ctdi.CTDIPhantom, optional
        Use this phantom instead of the standard one (e.g. other chamber sizes).
    force : bool
        Recompute even if ``out_dir`` holds a result for the same inputs.

    Returns
    -------
    dict
        The content of ``ctdi.json``: ``ctdi100_centre_Gy_per_photon``,
        ``ctdi100_periphery_Gy_per_photon``, ``ctdiw_Gy_per_photon``,
        ``ctdivol_Gy_per_photon`` (each with ``*_sigma_*``), the same in
        ``*_mGy_per_100mAs``, ``ctdi100_peripheral_positions`` (per hole),
        ``tube_output``, ``ctdivol_mGy`` (when the protocol gives the tube load),
        ``simulation``, ``phantom``, ``protocol``, ``provenance``. Free in air:
        ``ctdi100_air_*`` instead.

    Raises
    ------
    CTDIError
        Bad ``diameter_cm``, ``histories``, ``batches`` or ``seed``.
    ProtocolError
        An invalid protocol (file).
    """
    from physics.transport import Settings, run

    p = _load_protocol(protocol)
    geometry = _geometry(diameter_cm, geometry)
    batches = _int_param("batches", batches, 1)
    histories = _int_param("histories", histories, batches)
    seed = _int_param("seed", seed, 0)
    if not isinstance(trim_fan, bool):
        raise CTDIError(f"trim_fan must be True or False, got {trim_fan!r}")
    per_batch = histories // batches
    full, src, fan, fraction = _sources(p, geometry, trim_fan)

    key = hash_params(p.to_dict(), geometry.diameter_cm, geometry.chamber_radius_mm, geometry.chamber_fill,
                      geometry.region_mass_g, [float(s) for s in geometry.phantom.spacing_mm], histories, batches,
                      seed, fan)
    out = Path(out_dir) if out_dir is not None else None
    cache = ResultCache(out / CTDI_NAME, key, force=force) if out is not None else None
    if cache is not None:
        if (old := cache.load()) is not None:
            return old
        cache.invalidate()

    settings = Settings(histories_per_batch=per_batch, n_batches=batches, seed=seed, threads=threads)
    res = run(geometry.phantom, geometry.materials, src, settings=settings, regions=geometry.regions)
    to_ctdi = geometry.chamber_length_mm / p.collimation_mm * fraction

    r: dict = {"schema_version": SCHEMA_VERSION, "inputs_sha256": key}
    per_photon, sig = _indices(r, geometry, res, to_ctdi, p.pitch)
    _per_100mAs(r, p, geometry, full, per_photon, sig)
    r["simulation"] = {
        "histories": per_batch * batches, "batches": batches, "seed": seed, "rotation": "axial, 360 deg",
        "fan_width_protocol_mm": full.fan_width_mm, "fan_width_simulated_mm": fan,
        "fan_photon_fraction": fraction, "collimation_mm": p.collimation_mm,
        "histories_per_second": res.histories_per_second, "energy_balance_error": res.energy_balance_error,
        "engine": "physics.transport (kerma approximation, binding-corrected Compton, Rayleigh, K fluorescence)",
    }
    r["phantom"] = {
        "diameter_cm": geometry.diameter_cm, "length_mm": None if geometry.diameter_cm is None else 150.0,
        "chamber_radius_mm": geometry.chamber_radius_mm, "chamber_length_mm": geometry.chamber_length_mm,
        "chamber_fill": geometry.chamber_fill, "chamber_mass_g": geometry.region_mass_g,
        "voxel_mm": list(geometry.phantom.spacing_mm),
    }
    r["protocol"] = p.to_dict()
    r["provenance"] = provenance(seed=seed, inputs_sha256=key)
    if out is not None:
        cache.save(r)
    return r


# ----------------------------------------------------------------------------- command line
def _num(v, fmt: str) -> str:
    """Format a number; None / NaN (σ from a single batch) as 'n/a'."""
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


def _fmt(r: dict, key: str, label: str) -> str:
    g, gs = r[f"{key}_Gy_per_photon"], r[f"{key}_sigma_Gy_per_photon"]
    m, ms = r[f"{key}_mGy_per_100mAs"], r[f"{key}_sigma_mGy_per_100mAs"]
    return (f"  {label:<20} {_num(g, '.4e')} ± {_num(gs, '.1e')} Gy/photon   {_num(m, '7.3f')} ± "
            f"{_num(ms, '.3f')} mGy/100 mAs")


def summary_text(r: dict) -> str:
    """A few lines for the terminal."""
    sim, ph, pr = r["simulation"], r["phantom"], r["protocol"]
    where = f"{ph['diameter_cm']} cm PMMA phantom" if ph["diameter_cm"] else "free in air"
    lines = [f"CTDI, {where}: {pr['tube']['kvp']:g} kVp, {pr['scan']['collimation_mm']:g} mm collimation, "
             f"pitch {pr['scan']['pitch']:g} ({sim['histories']} histories, seed {sim['seed']}, "
             f"fan {sim['fan_width_simulated_mm']:.0f} of {sim['fan_width_protocol_mm']:.0f} mm simulated)"]
    if ph["diameter_cm"]:
        lines += [_fmt(r, "ctdi100_centre", "CTDI100 centre"), _fmt(r, "ctdi100_periphery", "CTDI100 periphery"),
                  _fmt(r, "ctdiw", "CTDIw"), _fmt(r, "ctdivol", "CTDIvol"),
                  f"  centre / periphery   {_num(r['centre_to_periphery_ratio'], '.3f')} ± "
                  f"{_num(r['centre_to_periphery_ratio_sigma'], '.3f')}"]
    else:
        lines.append(_fmt(r, "ctdi100_air", "CTDI100 free in air"))
    t = r["tube_output"]
    lines.append(f"tube output: {t['photons_per_100mAs']:.4e} photons / 100 mAs ({t['source']})")
    if "ctdivol_mGy" in r:
        lines.append(f"CTDIvol of the protocol: {r['ctdivol_mGy']:.3f} mGy ({pr['tube']['mAs_per_rotation']:g} mAs "
                     f"per rotation, mean relative mA {pr['scan']['mean_relative_mA']:.3f})")
    return "\n".join(lines) + "\n"
