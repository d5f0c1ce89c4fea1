"""How much dose a CT's organ doses miss because the CT holds only part of the body.

A patient's CT ends where the scan ended; the body goes on. Photons scattered in the
anatomy beyond the CT's first and last slices reach the organs inside, and an organ cut by the
CT's ends loses its part outside. A phantom made from the CT has neither, so its organ doses
are too low, most for organs near the CT's ends.

:func:`truncation_effect` estimates by how much with the reference phantom of the patient's
age and sex: the patient's slices are placed along it (:func:`pipeline.segment.atlas.z_alignment`:
by the lung base, else by mutual information), the same protocol is run on the whole phantom
and on the phantom cut to the CT's extent (everything beyond is air), with the same photons
(common random numbers), each ICRP tissue scored over its voxels inside the CT's extent (the
same voxels in both runs), and the ratio is reported: ``underestimate = 1 - D_cut / D_whole``. It is an estimate for a reference body; the patient's
own anatomy beyond the CT is unknown.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["truncation_effect"]

#: Voxel size (mm) of the reference phantom for the estimate.
VOXEL_MM = 4.0


def truncation_effect(ct, protocol, age: str, sex: str, isocentre_xyz_mm, *, histories: int, batches: int,
                      seed: int, run_scan, threads: int | None = None, quiet: bool = True) -> dict:
    """Per ICRP tissue, the dose to its part inside the CT's extent on the reference phantom cut to
    that extent, over the same on the whole phantom, for the same scan (module docstring).
    ``ct`` is the patient's CT Volume (HU); ``run_scan`` is :func:`workflows.dose.patient.run_scan`
    (passed in: the patient dose run calls this module).

    Returns ``{"alignment", "atlas_z_range_mm", "reference", "tissues": {icrp tissue: {"ratio",
    "sigma", "underestimate", "mass_in_ct_g"}}, "note"}``.
    """
    from phantoms.render import render_ct
    from phantoms.stylized import build_reference_phantom
    from physics.transport import Material, VoxelPhantom
    from pipeline.segment.atlas import z_alignment
    from workflows.dose.effective_dose import icrp_tissue

    ref = build_reference_phantom(age, sex, VOXEL_MM)
    mats = {k: e.tissue for k, e in ref.organs.items()}
    za = z_alignment(ct, render_ct(ref.labels, mats))
    zc = sorted(ct.index_to_world([float(k), 0, 0])[2] for k in (0, ct.shape[0] - 1))
    dz = za["atlas_z_of_first_slice_mm"] - zc[0]  # patient z + dz = atlas z
    half = 0.5 * ct.spacing_mm[0]
    z_lo, z_hi = zc[0] + dz - half, zc[1] + dz + half
    lab = np.asarray(ref.labels.array)
    zs = np.array([ref.labels.index_to_world([float(k), 0, 0])[2] for k in range(lab.shape[0])])
    cut = lab.copy()
    cut[(zs < z_lo) | (zs > z_hi)] = 0
    engine_mats = {k: Material(t.name, t.density_g_cm3, dict(t.mass_fractions)) for k, t in ref.materials()}
    iso = (0.0, 0.0, float(isocentre_xyz_mm[2]) + dz)
    # each ICRP tissue's voxels inside the CT's extent, weighted by their mass: the same voxels in
    # both runs (the whole organ's mean would mix in its part outside the scan)
    inside = np.broadcast_to(((zs >= z_lo) & (zs <= z_hi))[:, None, None], lab.shape)
    rho = np.zeros(int(lab.max()) + 1)
    for k, m in engine_mats.items():
        rho[k] = m.density_g_cm3
    mass = rho[lab] * float(np.prod(ref.labels.spacing_mm)) / 1000.0
    groups: dict[str, list[int]] = {}
    for k, e in ref.organs.items():
        t = icrp_tissue(e.name)
        if t is not None:
            groups.setdefault(t, []).append(k)
    regions, region_mass = {}, {}
    for t, ks in groups.items():
        sel = np.isin(lab, ks) & inside
        if sel.any():
            idx = np.flatnonzero(sel)
            regions[t] = (idx, np.ones(idx.size))
            region_mass[t] = float(mass.ravel()[idx].sum())
    doses = {}
    for name, arr in (("whole", lab), ("cut", cut)):
        ph = VoxelPhantom(arr.astype(np.int32), ref.labels.spacing_mm, ref.labels.origin_xyz_mm,
                          ref.labels.direction_xyz, world_material_id=0)
        if not quiet:
            print(f"[coverage] the {age} {sex} reference phantom, {name}", flush=True)
        res = run_scan(ph, engine_mats, protocol, {}, histories, batches, seed, threads, isocentre_xyz_mm=iso,
                       regions=regions)
        doses[name] = {t: res.region(t) for t in regions}
    out = {}
    for t in regions:
        (ew, sw), (ec, sc) = doses["whole"][t], doses["cut"][t]
        if ew <= 0 or region_mass[t] <= 0:
            continue
        ratio = ec / ew
        # (an upper bound: the two runs share their photons, so their errors partly cancel)
        sigma = ratio * math.sqrt((sc / ec) ** 2 + (sw / ew) ** 2) if ec > 0 else math.inf
        out[t] = {"ratio": ratio, "sigma": sigma, "underestimate": 1.0 - ratio,
                  "mass_in_ct_g": region_mass[t]}
    return {"alignment": za, "atlas_z_range_mm": [z_lo, z_hi], "reference": f"{age} {sex}, {VOXEL_MM:g} mm",
            "tissues": out,
            "note": "dose to each tissue's part inside the CT's extent on the reference phantom cut to that extent, "
                    "over the same on the whole phantom (same scan and photons): the part of the dose the CT's "
                    "truncation takes away (an estimate for a reference body)"}
