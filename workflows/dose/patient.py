"""Organ doses of a CT scan in a digital patient: phantom + protocol → mGy, per CTDIvol, E.

This is what ``digipat dose`` runs when the scenario's ``[source]`` is a CT protocol::

    [phantom]
    builtin = "adult"          # newborn | 1y | 5y | 10y | 15y | adult (stylised ICRP 89 phantom)
    sex = "female"             # male | female (default male)
    voxel_mm = 4.0             # optional (default per age; 1-10 mm)
    # or, instead of builtin: labels = "labels.nii.gz", materials = "materials.csv",
    #                          organs = "organs.json" (optional: organ names for the report)
    [source]
    type = "protocol"
    protocol = "chest.toml"    # the CT protocol (workflows.dose.protocol)
    [physics]                  # optional, as for every scenario
    [run]
    histories = 2000000        # photons over the whole helical scan
    ctdi_histories = 2000000   # photons for the CTDI phantom run (default: histories)
    seed = 1
    batches = 10               # optional
    threads = 2                # optional

The phantom's world frame is the scanner's: the table axis is world +z through
x = y = 0, the isocentre is the origin, so the protocol's ``z_start_mm``/``z_end_mm`` are
phantom z coordinates (the stylised phantoms have z = 0 at the base of the trunk and the
trunk axis at x = y = 0). Everything outside the grid is air.

Normalisation. The engine gives energy per source photon of the scan. The CTDI run of
:func:`workflows.dose.ctdi.run_ctdi` (the protocol's 16 or 32 cm PMMA phantom, default
32 cm or the one its measured CTDIvol refers to) gives CTDIvol per photon of one axial
rotation and the photons per 100 mAs (from the measured CTDIvol if the protocol has one,
else SpekPy's tube output). Then

- organ dose (mGy) = D per photon × photons of the scan, photons of the scan =
  photons per 100 mAs × scan mAs / 100 (scan mAs = mAs per rotation × rotations ×
  mean relative tube current);
- CTDIvol (mGy) = CTDIvol per 100 mAs × mAs per rotation / 100 × mean relative mA;
- organ dose per CTDIvol = their ratio (independent of the tube-output calibration);
- effective dose with ICRP 103 weights (:mod:`workflows.dose.effective_dose`).

Outputs in ``OUT``: ``results.json`` (written last, atomically), ``organs.csv``,
``dose_mGy.nii.gz``, ``dose_sigma_mGy.nii.gz``, ``dose_map.png`` (three planes over the
anatomy), ``organ_doses.png`` (bars with 2σ), ``phantom/`` (labels, materials, organs)
and ``ctdi/ctdi.json``. Organs whose relative σ exceeds ``SIGMA_FLAG`` are flagged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from workflows.common import SCHEMA_VERSION, ResultCache, hash_params, provenance, write_text_atomic
from workflows.dose.scenario import ProtocolScenario, ScenarioError
from workflows.dose.ctdi import run_ctdi
from workflows.dose.effective_dose import effective_dose
from workflows.dose.effective_dose import icrp_tissue
from workflows.dose.figures import plot_dose_overlay, plot_organ_doses
from workflows.dose.protocol import read_protocol

__all__ = ["run_patient_dose", "run_scan", "normalisation", "organ_table", "SIGMA_FLAG"]

#: Organs with σ/dose above this are flagged in the table (``sigma_flag``).
SIGMA_FLAG = 0.10


def load_phantom(spec: dict, out: Path, quiet: bool):
    """Voxel phantom, materials, organ names per label, label masses (g)."""
    from physics.transport import VoxelPhantom, read_materials_csv
    from pipeline.image import read_image

    if "builtin" in spec:
        from phantoms.stylized import build_reference_phantom, write_phantom

        if not quiet:
            print(f"[phantom] building the stylised {spec['builtin']} {spec['sex']} phantom", flush=True)
        ref = build_reference_phantom(spec["builtin"], spec["sex"], spec["voxel_mm"])
        files = write_phantom(ref, out / "phantom")
        labels_path, materials_path, organs_path = files["labels"], files["materials"], files["organs"]
    else:
        labels_path, materials_path = spec["labels"], spec["materials"]
        organs_path = spec.get("organs")
    vol = read_image(labels_path, allow_singleton_axes=True)
    arr = np.asarray(vol.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(arr == np.round(arr)):
            raise ScenarioError(f"[phantom] labels {str(labels_path)!r} must hold integer labels")
        arr = arr.astype(np.int32)
    mats = read_materials_csv(materials_path)
    names = {lab: m.name for lab, m in mats.items()}
    if organs_path is not None:
        info = json.loads(Path(organs_path).read_text())
        organs = info.get("organs", info)
        if isinstance(organs, dict):
            for name, rec in organs.items():
                ids = rec.get("label_ids") or ([rec["label"]] if "label" in rec else [])
                for i in ids:
                    names[int(i)] = rec.get("name", name)
        elif isinstance(organs, list):
            for rec in organs:
                for i in rec.get("label_ids", [rec.get("label", rec.get("label_id"))]):
                    if i is not None:
                        names[int(i)] = rec.get("name", str(i))
    world = 0 if 0 in mats and mats[0].density_g_cm3 < 0.01 else None
    phantom = VoxelPhantom(arr, vol.spacing_mm, vol.origin_xyz_mm, vol.direction_xyz, world_material_id=world)
    return phantom, mats, names, vol


def _phantom_age(phantom: Mapping) -> str | None:
    """The age a phantom's organs.json records (phantom_from_ct writes it), else None."""
    path = phantom.get("organs")
    if "builtin" in phantom:
        return phantom["builtin"]
    try:
        return json.loads(Path(path).read_text()).get("age") if path else None
    except (OSError, ValueError):
        return None


def body_isocentre(phantom_labels, mats, density_threshold_g_cm3: float = 0.5) -> list[float]:
    """The body's centre in x, y (world mm) on the grid's middle slice, z = 0: where a patient lies on
    the rotation axis. ``phantom_labels`` is the labels Volume, ``mats`` its materials."""
    lab = np.asarray(phantom_labels.array)
    rho = np.zeros(int(lab.max()) + 1)
    for k, m in mats.items():
        if 0 <= k < rho.size:
            rho[k] = m.density_g_cm3
    mid = lab.shape[0] // 2
    body = rho[lab[mid]] > density_threshold_g_cm3
    if not body.any():
        raise ScenarioError("[phantom] isocentre_mm = \"body\": no tissue on the middle slice of the phantom")
    j, i = np.nonzero(body)
    xyz = phantom_labels.index_to_world([float(mid), float(j.mean()), float(i.mean())])
    return [float(xyz[0]), float(xyz[1]), 0.0]


def size_specific_dose(vol, mats, protocol, ctdivol_mGy, isocentre, organs_path=None) -> dict | None:
    """AAPM 204/220 SSDE over the scanned slices of the phantom (:mod:`workflows.dose.ssde`).

    CT numbers come from the CT the phantom was made from (``organs.json``'s ``ct_path``, when
    it exists on the same grid), else from the phantom's densities as ``1000 (rho - 1)`` HU
    (water-equivalent by mass density, which for tissues follows electron density within a
    few per cent). Slices whose centre lies in the scan range count. None if none does.
    """
    from pipeline.image import read_image
    from workflows.dose.ssde import ssde

    lab = np.asarray(vol.array)
    hu, source = None, "phantom densities (1000 (rho - 1) HU)"
    if organs_path is not None:
        meta = json.loads(Path(organs_path).read_text())
        ct = meta.get("ct_path")
        if ct and Path(ct).exists():
            img = read_image(ct)
            if img.shape == lab.shape and np.allclose(img.spacing_mm, vol.spacing_mm, rtol=1e-4):
                hu, source = np.asarray(img.array, np.float32), f"CT numbers of {ct}"
    if hu is None:
        rho = np.zeros(int(lab.max()) + 1)
        for k, m in mats.items():
            if 0 <= k < rho.size:
                rho[k] = m.density_g_cm3
        hu = (1000.0 * (rho[lab] - 1.0)).astype(np.float32)
    zc = np.array([vol.index_to_world([float(k), 0.0, 0.0])[2] for k in range(lab.shape[0])]) - isocentre[2]
    lo, hi = sorted((protocol.z_start_mm, protocol.z_end_mm))
    inside = (zc >= lo) & (zc <= hi)
    if not inside.any():
        return None
    diameter = protocol.ctdi_phantom_diameter_cm or 32
    out = ssde(hu[inside], vol.spacing_mm, ctdivol_mGy, phantom_cm=int(diameter))
    out.update(hu_source=source, slices=int(inside.sum()),
               slice_z_mm=[float(z) for z in zc[inside]])
    return out


def marrow_media(names: Mapping[int, str], age: str | None) -> dict:
    """``{label: Material}`` of red marrow (``age``'s composition) for every label named
    ``spongiosa_<site>`` (a bone and marrow mixture, as TotalSegmentator maps give bones): the
    labels whose red-marrow dose :func:`run_scan` scores with ``dose_to`` (μen ratio)."""
    from physics.transport import Material
    from phantoms.tissues import tissue

    ids = [k for k, n in names.items() if str(n).startswith("spongiosa_")]
    if not ids:
        return {}
    t = tissue("red_marrow", age or "adult")
    rm = Material(t.name, t.density_g_cm3, dict(t.mass_fractions))
    return {int(k): rm for k in ids}


def run_scan(phantom, mats, protocol, physics_opts: Mapping, histories: int, batches: int, seed: int,
              threads: int | None, state_dir=None, progress=None, spectrum=None, isocentre_xyz_mm=(0.0, 0.0, 0.0),
              regions=None, dose_to=None, tally: str = "voxels"):
    """Transport the protocol's helical scan through ``phantom``; returns the engine's TransportResult.

    ``physics_opts`` are :class:`physics.transport.Physics` keywords (``e_max_keV`` is set
    from the spectrum); ``spectrum`` (optional) replaces the protocol's SpekPy spectrum (a
    cached copy); ``dose_to`` (``{label: Material}``, e.g. :func:`marrow_media`) also scores the
    dose to that medium in those labels; ``tally="labels"`` scores organs only (no dose map).
    Raises TransportError / ProtocolError as the engine does.
    """
    from physics.transport import Physics, Settings, run

    source = protocol.source(isocentre_xyz_mm=tuple(isocentre_xyz_mm), phantom=phantom, spectrum=spectrum)
    e_max = max(150.0, source.max_energy_keV * 1.001)
    physics = Physics(**{**dict(physics_opts), "e_max_keV": e_max})
    settings = Settings(histories // batches, batches, seed, threads, state_dir=state_dir)
    return run(phantom, mats, source, physics, settings, progress=progress, regions=regions, dose_to=dose_to or None,
               tally=tally)


def normalisation(protocol, ctdi: Mapping) -> dict:
    """Photons of the scan and CTDIvol from a :func:`workflows.dose.ctdi.run_ctdi` result (module docstring)."""
    photons_100 = ctdi["tube_output"]["photons_per_100mAs"]
    scan_mAs = protocol.scan_mAs
    return {"photons_per_100mAs": photons_100, "scan_mAs": scan_mAs, "ctdivol_mGy": ctdi.get("ctdivol_mGy"),
            "photons_in_scan": photons_100 * scan_mAs / 100.0 if scan_mAs is not None else None}


def organ_table(res, mats, names: Mapping[int, str], n_scan: float | None, ctdivol_mGy: float | None):
    """Per-label rows (mass, dose per photon, mGy, per CTDIvol, σ, flags) of a scan result.

    Returns ``(rows, organ_dose, organ_mass_g)``: ``organ_dose`` maps organ name to
    (dose, σ) in mGy (Gy per photon when ``n_scan`` is None), for :func:`effective_dose`.
    A label scored as another medium (``run_scan(dose_to=...)``: red marrow in spongiosa)
    keeps the dose to its own material in ``dose_*`` and gets ``dose_to`` (the medium) and
    ``medium_dose_*``; ``organ_dose`` then holds the medium's dose (what the organ stands for).
    """

    media = {r["material_id"]: r for r in res.medium_dose_table()} if getattr(res, "medium_ids", ()) else {}
    rows = []
    organ_dose = {}
    organ_mass = {}
    for r in res.label_table():
        lab = r["label"]
        if lab == 0 or r.get("mass_g", 0) <= 0:
            continue
        d, s = r["dose_Gy_per_photon"], r["dose_sigma_Gy_per_photon"]
        name = names.get(lab, str(lab))
        row = {"label": lab, "organ": name, "tissue": mats[lab].name if lab in mats else "",
               "icrp103_tissue": icrp_tissue(name), "mass_g": r["mass_g"],
               "edep_eV_per_photon": r["edep_eV_per_photon"], "edep_sigma_eV_per_photon": r["edep_sigma_eV_per_photon"],
               "dose_Gy_per_photon": d, "dose_sigma_Gy_per_photon": s}
        if n_scan is not None:
            row["dose_mGy"] = d * n_scan * 1e3
            row["dose_sigma_mGy"] = s * n_scan * 1e3
            if ctdivol_mGy:
                row["dose_per_ctdivol"] = row["dose_mGy"] / ctdivol_mGy
                row["dose_per_ctdivol_sigma"] = row["dose_sigma_mGy"] / ctdivol_mGy
        if lab in media:  # the dose the organ stands for: its medium's (red marrow in spongiosa)
            md = media[lab]
            row["dose_to"] = md["medium"]
            row["medium_dose_Gy_per_photon"] = md["dose_Gy_per_photon"]
            row["medium_dose_sigma_Gy_per_photon"] = md["dose_sigma_Gy_per_photon"]
            d, s = md["dose_Gy_per_photon"], md["dose_sigma_Gy_per_photon"]
            if n_scan is not None:
                row["medium_dose_mGy"] = d * n_scan * 1e3
                row["medium_dose_sigma_mGy"] = s * n_scan * 1e3
                if ctdivol_mGy:
                    row["medium_dose_per_ctdivol"] = row["medium_dose_mGy"] / ctdivol_mGy
        rel = s / d if d > 0 and math.isfinite(s) else math.inf
        row["sigma_relative"] = rel if math.isfinite(rel) else None
        row["sigma_flag"] = bool(rel > SIGMA_FLAG)
        rows.append(row)
        organ_dose[name] = ((row.get("medium_dose_mGy", d), row.get("medium_dose_sigma_mGy", s)) if lab in media
                            else (row.get("dose_mGy", d), row.get("dose_sigma_mGy", s)))
        organ_mass[name] = r["mass_g"]
    return rows, organ_dose, organ_mass


def _truncation(spec: ProtocolScenario, protocol, iso, threads, quiet: bool) -> dict:
    """:func:`workflows.dose.coverage.truncation_effect` for a phantom made from a CT."""
    from pipeline.image import read_image
    from workflows.dose.coverage import truncation_effect

    meta = json.loads(Path(spec.phantom["organs"]).read_text())
    ct_path, age = meta.get("ct_path"), meta.get("age")
    if not ct_path or not Path(ct_path).exists() or not age:
        raise ScenarioError(f"[run] coverage_check: {spec.phantom['organs']} names no readable CT (ct_path) and age: "
                            "make the phantom with digipat phantom from-ct")
    return truncation_effect(read_image(ct_path), protocol, age, spec.phantom["sex"], iso, histories=spec.histories,
                             batches=spec.batches, seed=spec.seed, run_scan=run_scan, threads=threads, quiet=quiet)


def run_patient_dose(spec: ProtocolScenario, out_dir: str | Path, *,
                     threads: int | None = None, force: bool = False, quiet: bool = False) -> dict:
    """Run a protocol scenario (module docstring) and write its outputs; returns results."""
    from physics.transport import TransportError
    from pipeline.image import Volume, write_image

    out = Path(out_dir)
    key = hash_params({"scenario": json.loads(json.dumps(spec.data, default=str)),
                       "protocol": spec.protocol.read_text()})
    res_path = out / "results.json"
    cache = ResultCache(res_path, key, force=force)
    if (old := cache.load()) is not None:
        if not quiet:
            print(f"[dose] {res_path} is up to date (same inputs); --force reruns", flush=True)
        return old
    cache.invalidate()  # a failed run (e.g. a bad protocol) must not leave the old result in place
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    protocol = read_protocol(spec.protocol)
    phantom, mats, names, vol = load_phantom(spec.phantom, out, quiet)
    th = threads if threads is not None else spec.threads
    if not quiet:
        print(f"[dose] {spec.histories:.3g} photons, {protocol.n_rotations:.2f} rotations, "
              f"{protocol.kvp:g} kVp, pitch {protocol.pitch:g}", flush=True)
    iso = spec.phantom.get("isocentre_mm", [0.0, 0.0, 0.0])
    iso = body_isocentre(vol, mats) if iso == "body" else [float(v) for v in iso]
    media = marrow_media(names, _phantom_age(spec.phantom))
    try:
        res = run_scan(phantom, mats, protocol, spec.physics, spec.histories, spec.batches, spec.seed,
                        th, state_dir=out / ".batches", isocentre_xyz_mm=iso, dose_to=media,
                        progress=None if quiet else (lambda b, n: print(f"[dose] batch {b}/{n}", flush=True)))
    except TransportError as exc:
        raise ScenarioError(str(exc)) from None
    diameter = protocol.ctdi_phantom_diameter_cm or 32
    if not quiet:
        print(f"[ctdi] {diameter} cm PMMA phantom, {spec.ctdi_histories:.3g} photons", flush=True)
    ctdi = run_ctdi(protocol, diameter, spec.ctdi_histories, spec.seed, th, out / "ctdi")
    norm = normalisation(protocol, ctdi)
    photons_100, scan_mAs = norm["photons_per_100mAs"], norm["scan_mAs"]
    ctdivol_mGy, n_scan = norm["ctdivol_mGy"], norm["photons_in_scan"]
    rows, organ_dose_mGy, organ_mass = organ_table(res, mats, names, n_scan, ctdivol_mGy)
    eff = effective_dose(organ_dose_mGy, spec.phantom["sex"], organ_mass)
    organs_json = (out / "phantom" / "organs.json") if "builtin" in spec.phantom else spec.phantom.get("organs")
    size = size_specific_dose(vol, mats, protocol, ctdivol_mGy, iso, organs_json) if ctdivol_mGy else None
    truncation = None
    if spec.coverage_check:
        truncation = _truncation(spec, protocol, iso, th, quiet)
        for row in rows:
            t = truncation["tissues"].get(row["icrp103_tissue"] or "")
            if t is not None:
                row["truncation_underestimate"] = t["underestimate"]
    # maps: mGy per voxel for the whole scan (or Gy per photon when the tube output is unknown)
    dose_pp, sig_pp = res.dose_Gy_per_photon()
    scale = n_scan * 1e3 if n_scan is not None else 1.0
    unit = "mGy" if n_scan is not None else "Gy per photon"
    dmap = np.where(np.isfinite(dose_pp), dose_pp, 0.0) * scale
    smap = np.where(np.isfinite(sig_pp), sig_pp, 0.0) * scale
    for name, arr in (("dose_mGy.nii.gz", dmap), ("dose_sigma_mGy.nii.gz", smap)):
        write_image(Volume(arr.astype(np.float32), vol.spacing_mm, vol.origin_xyz_mm, vol.direction_xyz), out / name)
    labels_arr = np.asarray(vol.array)
    plot_dose_overlay(labels_arr, dmap, vol.spacing_mm, out / "dose_map.png", dose_unit=unit,
                      title=f"{protocol.kvp:g} kVp, pitch {protocol.pitch:g}: dose over the anatomy")
    key_v, key_s = ("dose_mGy", "dose_sigma_mGy") if n_scan is not None else ("dose_Gy_per_photon",
                                                                             "dose_sigma_Gy_per_photon")
    plot_organ_doses([r for r in rows if r["icrp103_tissue"] or r["mass_g"] > 0], out / "organ_doses.png",
                     value_key=key_v, sigma_key=key_s, unit=unit, title="organ doses")
    import csv
    import io

    buf = io.StringIO()
    cols = ["label", "organ", "tissue", "icrp103_tissue", "mass_g", "dose_mGy", "dose_sigma_mGy",
            "dose_per_ctdivol", "dose_per_ctdivol_sigma", "dose_Gy_per_photon", "dose_sigma_Gy_per_photon",
            "sigma_flag", "dose_to", "medium_dose_mGy", "medium_dose_sigma_mGy"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "organs.csv", buf.getvalue())
    results = {
        "schema_version": SCHEMA_VERSION, "stage": "patient_dose", "inputs_sha256": key,
        "units": {"dose": unit, "mass": "g", "energy": "eV per source photon"},
        "phantom": {k: (str(v) if isinstance(v, Path) else v) for k, v in spec.phantom.items()},
        "protocol": protocol.to_dict(),
        "histories": res.histories, "histories_per_second": res.histories_per_second,
        "energy_balance_relative_error": res.energy_balance_error,
        "ctdi": {k: ctdi.get(k) for k in ("ctdi100_centre_Gy_per_photon", "ctdi100_periphery_Gy_per_photon",
                                          "ctdiw_Gy_per_photon", "ctdivol_Gy_per_photon", "ctdivol_mGy_per_100mAs",
                                          "ctdivol_mGy")},
        "ctdi_phantom_diameter_cm": diameter,
        "ctdivol_mGy": ctdivol_mGy,
        "scan_mAs": scan_mAs, "photons_per_100mAs": photons_100, "photons_in_scan": n_scan,
        "tube_output_source": ctdi["tube_output"].get("source"),
        "organs": rows,
        "effective_dose_mSv": eff["effective_dose"] if n_scan is not None else None,
        "effective_dose_sigma_mSv": eff["effective_dose_sigma"] if n_scan is not None else None,
        "effective_dose_per_ctdivol_mSv_per_mGy": (eff["effective_dose"] / ctdivol_mGy
                                                   if n_scan is not None and ctdivol_mGy else None),
        "effective_dose_detail": eff,
        "flagged_organs": [r["organ"] for r in rows if r["sigma_flag"]],
        "isocentre_xyz_mm": iso,
        "ssde": size,
        "truncation": truncation,
        "wall_time_s": time.perf_counter() - t0,
        "provenance": provenance(seed=spec.seed, inputs_sha256=key),
    }
    cache.save(results)
    if not quiet:
        print(f"[dose] CTDIvol {ctdivol_mGy if ctdivol_mGy is not None else float('nan'):.3g} mGy; "
              f"effective dose {results['effective_dose_mSv'] or float('nan'):.3g} mSv; results: {res_path}",
              flush=True)
        if size:
            print(f"[dose] SSDE {size['ssde_mGy']:.3g} mGy (water-equivalent diameter {size['mean_dw_cm']:.1f} cm "
                  f"over {size['slices']} slices, f = {size['mean_conversion_factor']:.2f}; AAPM 204/220)", flush=True)
    return results
