"""The dose path of a geometric sensitivity study: one case = age phantom + CT protocol + perturbation → organ doses.

A study (:mod:`workflows.study.runner`) asks how much the organ doses of a CT scan move when the
digital patient is a little wrong. This module evaluates one case of such a study::

    [base]                      # the study file's base case for path = "dose"
    age = "5y"                  # newborn | 1y | 5y | 10y | 15y | adult (stylised ICRP 89 phantom)
    sex = "male"
    voxel_mm = 4.0              # phantom voxel size (mm), the nominal of the voxel_mm parameter
    protocol = "chest.toml"     # CT protocol (workflows.dose.protocol); default: the packaged example
    z_start_mm = 0.0            # optional scan-range override (focal-spot z, phantom frame);
    z_end_mm = 400.0            #   default: the phantom's trunk, z = 0 to the trunk height
    histories = 3000000         # photons of the scan (per case)
    ctdi_histories = 1000000    # photons of the CTDI normalisation run (once per study)
    batches = 10                # batches for the Monte Carlo σ
    seed = 1                    # the same seed in every case (common random numbers)
    threads = 1                 # Numba threads per case (default: Numba's setting)
    organs = ["liver", "lungs"] # QoI organs (label names); default DEFAULT_ORGANS
    perturbed_organs = ["liver"]# organs moved by organ_offset_mm; default: the QoI organs that can move

A ``[base]`` that names a CT (``ct = "scan.nii.gz"``) studies a real patient instead: its
parameters are the organ segmentation method (``organ_labels``) and contour offsets
(:mod:`workflows.study.ct_cases`).

The perturbations (:data:`DOSE_PARAMETERS`), applied in this order to the label map of
:func:`phantoms.stylized.build_reference_phantom` built at ``voxel_mm``:

``voxel_mm``
    The phantom is built (and its organ masses fitted to ICRP 89) on this grid: the
    segmentation / resampling resolution. Organ masses stay close to the reference; shapes,
    the skin layer and thin structures change with the grid.
``organ_offset_mm``
    The outer contour of every organ in ``perturbed_organs`` moves along its normal
    (:func:`phantoms.perturb_labels.offset_organs`): a contouring error. Gained voxels come
    only from the residual soft tissue around the organ (never bone, lung, skin or another
    organ), lost voxels become soft tissue; walled organs (stomach, colon, heart, ...) move
    as one contour and keep a closed wall.
``body_offset_mm``
    The body outline moves along its normal (:func:`phantoms.perturb_labels.offset_body`):
    grown voxels get soft tissue; a narrowing outline turns only soft tissue and skin into air
    (bones, organs and breast under it stay: a contour error misplaces the skin, not the
    skeleton), and the one-voxel skin is rebuilt over soft tissue.

Every case's grid gets the same air margin (:data:`GRID_PAD_MM`), so the grids of the
nominal and the offset cases coincide and, with the same seed, the photon histories
(:mod:`physics.transport`: history ``h`` of batch ``b`` draws from ``(seed, b, h)``) are
common random numbers: the dose *differences* between cases are much less noisy than the
doses themselves.

Normalisation (:mod:`workflows.dose.patient`): organ dose (mGy) = dose per photon ×
photons per 100 mAs × scan mAs / 100, the photons per 100 mAs from one CTDI run of the
protocol (:func:`workflows.dose.ctdi.run_ctdi`), which does not depend on the phantom: it runs
once per study in :func:`prepare_dose_base` and is cached on disk. Effective dose with
ICRP 103 weights (:mod:`workflows.dose.effective_dose`).

Uncertainty. ``qoi_sigma`` is the 1σ Monte Carlo uncertainty of each case's own scan run
(batch spread); it is the numerical noise that differs between cases. The CTDI run's
relative σ is a common factor of every case's absolute doses (it cancels in ratios
between cases) and is reported apart, as ``normalisation.relative_sigma``.

Outputs in the case folder: ``labels.nii.gz`` (the perturbed label map), ``dose_map.png``
(with ``figures=True``) and ``results.json`` (written last and atomically; a rerun with the
same inputs returns it without computing).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from workflows.common import SCHEMA_VERSION, ResultCache, hash_file, hash_params, provenance
from workflows.dose.effective_dose import icrp_tissue
from workflows.dose.figures import plot_dose_overlay
from workflows.dose.protocol import ProtocolError, read_protocol
from workflows.study.dose_common import ctdi_normalisation, protocol_over, scan_case, spectrum_json
from workflows.toml_checks import Checks

__all__ = ["DOSE_PARAMETERS", "dose_parameters", "DEFAULT_BASE", "DEFAULT_ORGANS", "GRID_PAD_MM", "DoseCaseError", "parse_dose_base",
           "prepare_dose_base", "run_dose_case", "valid_organs", "perturbable_organs"]


#: The perturbation parameters of the dose path (the study runner's contract).
DOSE_PARAMETERS: dict[str, dict] = {
    "organ_offset_mm": {
        "unit": "mm", "nominal": 0.0,
        "description": "normal offset of the outer contour of each organ in [base] perturbed_organs (+ grows): "
                       "an organ contouring error; gained voxels come only from the surrounding soft tissue, "
                       "lost voxels become soft tissue"},
    "body_offset_mm": {
        "unit": "mm", "nominal": 0.0,
        "description": "normal offset of the body outline (+ widens): a body-contour error; grown voxels get "
                       "soft tissue, lost voxels become air, the one-voxel skin is rebuilt"},
    "voxel_mm": {
        "unit": "mm", "nominal": None, "minimum": 1.0, "maximum": 10.0,  # phantoms.stylized.VOXEL_MM_RANGE
        "description": "voxel size the phantom is built (segmented) on; nominal: [base] voxel_mm"},
}

#: Defaults of the [base] table, chosen so that one case takes seconds on one thread (5-year-old
#: phantom at 4 mm, the trunk scanned, 3e6 photons: measured 6-12 s per case on one core of a
#: shared 2-core machine, 4.5-11 s of it transport) with the default QoI organs' relative Monte
#: Carlo σ at most 1.7 % in the nominal case (pancreas; liver 0.5 %, effective dose 0.8 %) and
#: 2.3 % with organ_offset_mm = -4 mm. The CTDI run (1e6 photons, once per study) has 1.7 %.
DEFAULT_BASE: dict[str, Any] = {"age": "5y", "sex": "male", "voxel_mm": 4.0, "histories": 3_000_000,
                                "ctdi_histories": 1_000_000, "batches": 10, "seed": 1, "threads": None}
#: Default QoI organs: ICRP 103 tissues (w_T and remainder) inside the trunk, present at every
#: age and for both sexes, large enough for a σ of a few per cent at the default histories.
DEFAULT_ORGANS: tuple[str, ...] = ("liver", "lungs", "stomach_wall", "colon_wall", "red_marrow", "kidneys", "spleen",
                                   "pancreas", "heart_wall", "small_intestine_wall")
#: Air margin (mm) added around every case's grid so that body offsets up to about this size
#: keep the same grid as the nominal case (common random numbers, see the module docstring).
GRID_PAD_MM = 24.0

_BASE_KEYS = ("age", "sex", "voxel_mm", "protocol", "z_start_mm", "z_end_mm", "histories", "ctdi_histories",
              "batches", "seed", "threads", "organs", "perturbed_organs")
#: Labels that organ_offset_mm cannot move: the filler and skin (moved by body_offset_mm) and
#: the skeleton (cortical shell around marrow; not an organ contour).
_NOT_PERTURBABLE = ("air", "soft_tissue", "skin", "cortical_bone", "red_marrow", "yellow_marrow")
_SEX_ONLY = {"male": ("testes", "prostate"), "female": ("ovaries", "uterus")}
_DEFAULT_PROTOCOL = Path(__file__).resolve().parents[1] / "data" / "protocol_example.toml"


class DoseCaseError(ValueError):
    """A case parameter the dose path cannot use (the message names the parameter and what to do)."""


# ----------------------------------------------------------------------------- organs
def dose_parameters(base: Mapping) -> dict[str, dict]:
    """The perturbation parameters a dose study's base allows: :data:`DOSE_PARAMETERS` for a
    stylised phantom, :data:`workflows.study.ct_cases.CT_PARAMETERS` for a patient's CT."""
    if base.get("kind") == "ct":
        from workflows.study.ct_cases import CT_PARAMETERS

        return {k: ({**v, "nominal": base["nominal_labels"]} if k == "organ_labels" else v)
                for k, v in CT_PARAMETERS.items()}
    return DOSE_PARAMETERS


def valid_organs(sex: str) -> list[str]:
    """Organ (label) names of the stylised phantom of ``sex`` that can be QoI organs."""
    from phantoms.stylized import LABELS

    other = _SEX_ONLY["female" if sex == "male" else "male"]
    return [d.name for k, d in sorted(LABELS.items()) if d.name != "air" and d.name not in other]


def perturbable_organs(sex: str) -> list[str]:
    """Organ names whose contour ``organ_offset_mm`` can move (walls carry their contents)."""
    return [n for n in valid_organs(sex) if n not in _NOT_PERTURBABLE and not n.endswith("_contents")]


# ----------------------------------------------------------------------------- [base]
def parse_dose_base(table: Mapping, base_dir: Path, error_cls: type[Exception]) -> dict:
    """Validate the study file's ``[base]`` table for ``path = "dose"`` (keys: module docstring).

    Parameters
    ----------
    table : mapping
        The ``[base]`` table.
    base_dir : Path
        Folder a relative ``protocol`` path is resolved against (the study file's).
    error_cls : type
        The error to raise (a ``ValueError`` subclass, e.g. the study's ``StudyError``).

    Returns
    -------
    dict
        JSON-able: ``age, sex, voxel_mm, protocol`` (absolute path), ``z_start_mm,
        z_end_mm`` (None: the phantom's trunk), ``histories, ctdi_histories, batches, seed,
        threads, organs, perturbed_organs``.

    Raises
    ------
    error_cls
        An unknown key, a bad value, a missing or invalid protocol, an unknown organ; the
        message names ``[base] key`` and lists the valid choices.
    """
    from phantoms.stylized import SUPPORTED_AGES, VOXEL_MM_RANGE

    c = Checks(error_cls)
    if not isinstance(table, Mapping):
        raise error_cls(f"[base] must be a table (section), got {table!r}")
    if "ct" in table:  # a real patient's CT (workflows.study.ct_cases)
        from workflows.study.ct_cases import parse_ct_base

        return parse_ct_base(table, base_dir, error_cls, _DEFAULT_PROTOCOL)
    c.no_unknown("base", table, _BASE_KEYS)
    t = {**DEFAULT_BASE, **table}
    if t["age"] not in SUPPORTED_AGES:
        raise error_cls(f"[base] age must be one of {list(SUPPORTED_AGES)}, got {t['age']!r}")
    if t["sex"] not in ("male", "female"):
        raise error_cls(f"[base] sex must be one of ['male', 'female'], got {t['sex']!r}")
    vox = c.positive("base", "voxel_mm", t["voxel_mm"])
    lo, hi = VOXEL_MM_RANGE
    if not lo <= vox <= hi:
        raise error_cls(f"[base] voxel_mm must be in [{lo:g}, {hi:g}] mm, got {t['voxel_mm']!r}")
    proto = Path(table["protocol"]) if "protocol" in table else _DEFAULT_PROTOCOL
    if "protocol" in table and not isinstance(table["protocol"], str):
        raise error_cls(f"[base] protocol must be a path (string) to a CT protocol TOML, got {table['protocol']!r}")
    proto = (proto if proto.is_absolute() else Path(base_dir) / proto).resolve()
    if not proto.is_file():
        raise error_cls(f"[base] protocol {str(proto)!r} does not exist (give a CT protocol TOML, e.g. "
                        f"{str(_DEFAULT_PROTOCOL)!r})")
    try:
        prot = read_protocol(proto)
    except ProtocolError as exc:
        raise error_cls(f"[base] protocol: {exc}") from None
    if prot.mAs_per_rotation is None:
        raise error_cls(f"[base] protocol {proto.name} gives no tube load: add [tube] mAs_per_rotation (or "
                        f"tube_current_mA with [scan] rotation_time_s) so that organ doses are in mGy")
    z = {}
    for k in ("z_start_mm", "z_end_mm"):
        z[k] = c.number("base", k, t[k]) if t.get(k) is not None else None
    if z["z_start_mm"] is not None and z["z_end_mm"] is not None and z["z_end_mm"] <= z["z_start_mm"]:
        raise error_cls(f"[base] z_end_mm must be > z_start_mm = {z['z_start_mm']:g} mm, got {z['z_end_mm']:g}")
    batches = c.integer("base", "batches", t["batches"], 2)
    hist = c.integer("base", "histories", t["histories"], batches)
    if hist % batches:
        raise error_cls(f"[base] histories ({hist}) must be a multiple of batches ({batches})")
    ctdi_h = c.integer("base", "ctdi_histories", t["ctdi_histories"], batches)
    seed = c.integer("base", "seed", t["seed"], 0)
    threads = c.integer("base", "threads", t["threads"], 1) if t.get("threads") is not None else None
    valid = valid_organs(t["sex"])
    organs = _organ_list(error_cls, "organs", t.get("organs", list(DEFAULT_ORGANS)), valid)
    movable = perturbable_organs(t["sex"])
    if "perturbed_organs" in t:
        perturbed = _organ_list(error_cls, "perturbed_organs", t["perturbed_organs"], movable)
    else:
        perturbed = [o for o in organs if o in movable]
    return {"age": t["age"], "sex": t["sex"], "voxel_mm": vox, "protocol": str(proto), **z, "histories": hist,
            "ctdi_histories": ctdi_h, "batches": batches, "seed": seed, "threads": threads, "organs": organs,
            "perturbed_organs": perturbed}


def _organ_list(error_cls, key: str, v, valid: list[str]) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(o, str) for o in v):
        raise error_cls(f"[base] {key} must be a non-empty list of organ names, got {v!r} (valid: "
                        f"{', '.join(valid)})")
    for o in v:
        if o not in valid:
            raise error_cls(f"[base] {key}: unknown organ {o!r} (valid: {', '.join(valid)})")
    if len(set(v)) != len(v):
        dup = sorted({o for o in v if v.count(o) > 1})
        raise error_cls(f"[base] {key}: {dup[0]!r} is listed twice")
    return list(v)


# ----------------------------------------------------------------------------- once per study
def _scan_range(base: Mapping, ph) -> dict:
    """The scan range: the base's override, else the trunk of the phantom (z = 0 to its height)."""
    trunk = (0.0, round(float(ph.body["trunk_height_cm"]) * 10.0, 1))
    z0 = base.get("z_start_mm")
    z1 = base.get("z_end_mm")
    src = "base" if z0 is not None and z1 is not None else "trunk of the phantom" if z0 is None and z1 is None \
        else "base and trunk of the phantom"
    z0 = trunk[0] if z0 is None else float(z0)
    z1 = trunk[1] if z1 is None else float(z1)
    if z1 <= z0:
        raise DoseCaseError(f"scan range z_start_mm = {z0:g} to z_end_mm = {z1:g} mm is empty (the trunk spans "
                            f"z = {trunk[0]:g} to {trunk[1]:g} mm); give both [base] z_start_mm and z_end_mm")
    return {"z_start_mm": z0, "z_end_mm": z1, "source": src, "trunk_mm": list(trunk)}


def _base_key(base: Mapping) -> str:
    keep = {k: v for k, v in base.items() if k != "threads"}
    return hash_params(keep, hash_file(base["protocol"]))


def prepare_dose_base(base: dict, work_dir: Path, *, quiet: bool = True) -> dict:
    """Once per study: the scan range, the tube spectrum and the CTDI normalisation, cached on disk.

    Parameters
    ----------
    base : dict
        From :func:`parse_dose_base`.
    work_dir : Path
        Folder for ``prepared.json`` and ``ctdi/ctdi.json``; a rerun with the same base
        returns the cached ``prepared.json`` without building or simulating anything.
    quiet : bool
        No progress lines.

    Returns
    -------
    dict
        JSON-able, for :func:`run_dose_case`: ``inputs_sha256``, ``scan`` (z range and
        where it comes from), ``spectrum`` (the protocol's SpekPy spectrum), ``ctdi`` (the
        indices per photon and per 100 mAs), ``normalisation`` (``photons_per_100mAs``,
        ``scan_mAs``, ``photons_in_scan``, ``ctdivol_mGy`` and ``ctdivol_sigma_mGy``,
        ``relative_sigma``), ``nominal_phantom`` (organ masses, body mass).
    """
    from phantoms.stylized import build_reference_phantom

    if base.get("kind") == "ct":
        from workflows.study.ct_cases import prepare_ct_base

        return prepare_ct_base(base, work_dir, quiet=quiet)
    work = Path(work_dir)
    key = _base_key(base)
    path = work / "prepared.json"
    cache = ResultCache(path, key)
    if (old := cache.load()) is not None:
        return old
    cache.invalidate()
    t0 = time.perf_counter()
    ph = build_reference_phantom(base["age"], base["sex"], base["voxel_mm"])
    scan = _scan_range(base, ph)
    protocol = protocol_over(base, scan)
    ctdi, norm, diameter = ctdi_normalisation(protocol, base, work, quiet)
    prepared = {
        "schema_version": SCHEMA_VERSION, "inputs_sha256": key, "scan": scan,
        "spectrum": spectrum_json(protocol.spectrum()),
        "ctdi": {k: ctdi.get(k) for k in ("ctdivol_Gy_per_photon", "ctdivol_sigma_Gy_per_photon",
                                          "ctdivol_mGy_per_100mAs", "ctdivol_sigma_mGy_per_100mAs", "ctdivol_mGy",
                                          "ctdiw_Gy_per_photon", "centre_to_periphery_ratio")},
        "ctdi_phantom_diameter_cm": diameter, "ctdi_json": str(work / "ctdi" / "ctdi.json"),
        "tube_output_source": ctdi["tube_output"].get("source"),
        "normalisation": norm,
        "nominal_phantom": _phantom_summary(ph, np.asarray(ph.labels.array)),
        "wall_time_s": time.perf_counter() - t0,
    }
    cache.save(prepared)
    return prepared


# ----------------------------------------------------------------------------- one case
def _phantom_summary(ph, labels: np.ndarray) -> dict:
    """Organ masses (g) of a label map with the phantom's tissues (its densities), and the body mass."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(ph.organs) + 1)
    v3 = (ph.voxel_mm / 10.0) ** 3
    masses = {e.name: float(counts[k] * v3 * e.tissue.density_g_cm3) for k, e in sorted(ph.organs.items())}
    return {"organ_masses_g": masses, "body_mass_g": float(sum(masses.values()))}


def _params(params: Mapping | None, base: Mapping) -> dict:
    from phantoms.stylized import VOXEL_MM_RANGE

    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise DoseCaseError(f"params must be a mapping {{parameter: value}}, got {type(params).__name__}")
    out = {"organ_offset_mm": 0.0, "body_offset_mm": 0.0, "voxel_mm": float(base["voxel_mm"])}
    for k, v in params.items():
        if k not in DOSE_PARAMETERS:
            raise DoseCaseError(f"unknown dose parameter {k!r} (valid: {', '.join(DOSE_PARAMETERS)})")
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise DoseCaseError(f"{k} must be a finite number of mm, got {v!r}")
        out[k] = float(v)
    lo, hi = VOXEL_MM_RANGE
    if not lo <= out["voxel_mm"] <= hi:
        raise DoseCaseError(f"voxel_mm = {out['voxel_mm']:g} mm is outside [{lo:g}, {hi:g}] mm (the phantom "
                            f"builder's range); choose a voxel size in that range")
    return out


def _perturbed_phantom(base: Mapping, p: Mapping):
    """Build the phantom at p['voxel_mm'], pad it, offset organs then body; returns (ph, labels, origin, reports)."""
    from phantoms.perturb_labels import LabelPerturbationError, offset_body, offset_organs, organ_groups
    from phantoms.stylized import AIR, LABELS, SKIN, SOFT, PhantomError, build_reference_phantom

    try:
        ph = build_reference_phantom(base["age"], base["sex"], p["voxel_mm"])
    except PhantomError as exc:
        raise DoseCaseError(f"voxel_mm: {exc}") from None
    vol = ph.labels
    sp = tuple(float(s) for s in vol.spacing_mm)
    names = {k: d.name for k, d in LABELS.items()}
    present = {e.name for e in ph.organs.values()}
    missing = [o for o in base["organs"] if o not in present]
    if missing:
        raise DoseCaseError(f"voxel_mm = {p['voxel_mm']:g} mm: QoI organ(s) {missing} have no voxel at this "
                            f"voxel size; use a smaller voxel_mm or drop them from [base] organs")
    pad = tuple(int(math.ceil(GRID_PAD_MM / h)) for h in sp)
    lab = np.pad(np.asarray(vol.array), [(q, q) for q in pad], mode="constant", constant_values=AIR)
    shift = np.array(pad, float)  # voxels added before index 0 along (z, y, x)
    reports: dict[str, Any] = {}
    if base["perturbed_organs"]:
        try:
            r = offset_organs(lab, organ_groups(names, base["perturbed_organs"]), p["organ_offset_mm"],
                              spacing_mm=sp, fill_label=SOFT, names=names)
        except LabelPerturbationError as exc:
            msg = str(exc).replace("delta_mm", "organ_offset_mm")
            raise DoseCaseError(f"organ_offset_mm = {p['organ_offset_mm']:g} mm: {msg}") from None
        lab = r.labels
        reports["organ_offset_mm"] = r.report
    try:
        # a body-contour error misplaces skin and subcutaneous tissue, not bones or organs
        r = offset_body(lab, p["body_offset_mm"], spacing_mm=sp, air_label=AIR, fill_label=SOFT, skin_label=SKIN,
                        names=names, removable=(SOFT, SKIN))
    except LabelPerturbationError as exc:
        msg = str(exc).replace("delta_mm", "body_offset_mm")
        raise DoseCaseError(f"body_offset_mm = {p['body_offset_mm']:g} mm: {msg}") from None
    lab = r.labels
    shift += np.array(r.pad_voxels, float)
    reports["body_offset_mm"] = r.report
    counts = np.bincount(lab.ravel().astype(np.int64), minlength=max(LABELS) + 1)
    for o in base["organs"]:
        if counts[next(k for k, n in names.items() if n == o)] == 0:
            who = "body_offset_mm" if o in r.report.get("emptied_labels", []) else "organ_offset_mm"
            raise DoseCaseError(f"{who} = {p[who]:g} mm removes the QoI organ {o!r} completely; use a smaller "
                                f"|{who}| or drop {o!r} from [base] organs")
    # origin of the padded grid: voxel [0,0,0] moved by -shift voxels along the array axes
    dz, dy, dx = sp
    off_ijk = np.array([shift[2] * dx, shift[1] * dy, shift[0] * dz])  # along the x, y, z array axes
    origin = tuple(float(v) for v in np.asarray(vol.origin_xyz_mm) - np.asarray(vol.direction_xyz) @ off_ijk)
    return ph, lab, origin, reports


def _case_key(base: Mapping, p: Mapping, prepared: Mapping) -> str:
    return hash_params({k: v for k, v in base.items() if k != "threads"}, p, prepared["inputs_sha256"],
                       SCHEMA_VERSION)


def _qoi(base: Mapping, rows: list[dict], eff: dict, norm: Mapping, absolute: bool) -> tuple[dict, dict, dict]:
    """The study's outputs of one case: QoI organ doses, effective dose, CTDIvol; their 1σ and relative σ."""
    by_name = {r["organ"]: r for r in rows}
    vkey, skey = ("dose_mGy", "dose_sigma_mGy") if absolute else ("dose_Gy_per_photon", "dose_sigma_Gy_per_photon")
    qoi, sig = {}, {}
    for o in base["organs"]:
        qoi[f"organ_dose_mGy.{o}"] = by_name[o][vkey]
        sig[f"organ_dose_mGy.{o}"] = by_name[o][skey]
    qoi["effective_dose_mSv"], sig["effective_dose_mSv"] = eff["effective_dose"], eff["effective_dose_sigma"]
    qoi["ctdivol_mGy"], sig["ctdivol_mGy"] = norm["ctdivol_mGy"], norm.get("ctdivol_sigma_mGy")
    rel = {k: (sig[k] / v if v and sig[k] is not None else None) for k, v in qoi.items()}
    return qoi, sig, rel


def _summarise_changes(base: Mapping, p: Mapping, nominal: Mapping, summ: Mapping, reports: dict,
                       eff: dict) -> list[str]:
    """Add the voxel-size note and the organ/body mass changes against the nominal phantom to
    ``reports``; return warnings about labels the perturbation removed."""
    change = {}
    for o in dict.fromkeys(list(base["organs"]) + list(base["perturbed_organs"])):
        m0, m1 = nominal["organ_masses_g"].get(o), summ["organ_masses_g"].get(o, 0.0)
        change[o] = {"mass_g": m1, "nominal_mass_g": m0,
                     "mass_change_percent": 100.0 * (m1 - m0) / m0 if m0 else None}
    reports["voxel_mm"] = {"voxel_mm": p["voxel_mm"], "nominal_voxel_mm": base["voxel_mm"],
                           "note": "phantom built and its organ masses fitted to ICRP 89 on this grid"}
    reports["summary"] = {
        "organs": change, "body_mass_g": summ["body_mass_g"], "nominal_body_mass_g": nominal["body_mass_g"],
        "body_mass_change_percent": 100.0 * (summ["body_mass_g"] - nominal["body_mass_g"]) / nominal["body_mass_g"],
        "note": "changes against the nominal phantom (base voxel_mm, no offsets), all parameters together"}

    warnings = []
    gone = [o for o, m in nominal["organ_masses_g"].items() if m > 0 and summ["organ_masses_g"].get(o, 0.0) == 0.0]
    if gone:

        tissues = sorted({icrp_tissue(o) for o in gone if icrp_tissue(o)})
        warnings.append(f"labels of the nominal phantom absent in this case: {', '.join(gone)}"
                        + (f"; ICRP 103 tissues lost: {', '.join(tissues)} -- the effective dose covers "
                           f"Σw_T = {eff['weight_covered']:.3g} (see effective_dose_detail)" if tissues else ""))
    return warnings


def run_dose_case(base: dict, params: dict, case_dir: Path, *, prepared: dict | None = None,
                  quiet: bool = True, figures: bool = False) -> dict:
    """Evaluate one study case: build and perturb the phantom, scan it, normalise, write ``results.json``.

    Parameters
    ----------
    base : dict
        From :func:`parse_dose_base`.
    params : dict
        ``{parameter: value}`` for any subset of :data:`DOSE_PARAMETERS`; a missing one is
        nominal (offsets 0 mm, ``voxel_mm`` of the base).
    case_dir : Path
        Output folder of the case (created).
    prepared : dict, optional
        From :func:`prepare_dose_base` (shared by every case of a study). Without it, it is
        computed in ``case_dir / "prepared"`` (the CTDI run then happens for this case).
    quiet : bool
        No progress lines.
    figures : bool
        Also write ``dose_map.png`` (dose over the anatomy, three planes).

    Returns
    -------
    dict
        The content of ``results.json``: ``qoi`` (``organ_dose_mGy.<organ>`` for each QoI
        organ, ``effective_dose_mSv``, ``ctdivol_mGy``), ``qoi_sigma`` (1σ Monte Carlo of
        this case's run, same keys), ``qoi_relative_sigma``, ``perturbation`` (per
        parameter: what changed, with ``summary`` of the QoI organs' mass changes against
        the nominal phantom), ``phantom`` (age, sex, voxel_mm, organ masses, body mass),
        ``organs`` (every label: mass, dose, σ), ``warnings`` (e.g. labels a body offset
        removed, such as a child's breast, and the ICRP 103 weight the effective dose then
        covers), ``scan``, ``normalisation``, ``params``, ``timings_s``, ``provenance``.

    Raises
    ------
    DoseCaseError
        An unknown parameter, a non-numeric value, ``voxel_mm`` outside [1, 10] mm, an
        offset that empties a QoI or perturbed organ (the message names the parameter).
    """
    from physics.transport import Material, VoxelPhantom
    from phantoms.stylized import LABELS
    from pipeline.image import Volume, write_image

    if base.get("kind") == "ct":
        from workflows.study.ct_cases import run_ct_case

        return run_ct_case(base, params, case_dir, prepared=prepared, quiet=quiet, figures=figures)
    p = _params(params, base)
    case = Path(case_dir)
    if prepared is None:
        prepared = prepare_dose_base(base, case / "prepared", quiet=quiet)
    key = _case_key(base, p, prepared)
    res_path = case / "results.json"
    cache = ResultCache(res_path, key, artifacts=[case / "dose_map.png"] if figures else [])
    if (old := cache.load()) is not None:
        return old
    cache.invalidate()  # never a stale result beside new outputs
    case.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    ph, lab, origin, reports = _perturbed_phantom(base, p)
    sp = tuple(float(s) for s in ph.labels.spacing_mm)
    names = {k: d.name for k, d in LABELS.items()}
    times["phantom"] = time.perf_counter() - t0

    mats = {k: Material(t.name, t.density_g_cm3, dict(t.mass_fractions)) for k, t in ph.materials()}
    phantom = VoxelPhantom(lab, sp, origin, ph.labels.direction_xyz, world_material_id=0)
    protocol = protocol_over(base, prepared["scan"])
    t1 = time.perf_counter()
    if not quiet:
        print(f"[dose case] {case.name}: {base['histories']:.3g} photons, grid {lab.shape}, params {p}", flush=True)
    res, rows, organ_dose, organ_mass, eff = scan_case(phantom, mats, names, protocol, base, prepared, DoseCaseError,
                                                       tally="voxels" if figures else "labels")
    times["transport"] = time.perf_counter() - t1

    norm = prepared["normalisation"]
    n_scan = norm["photons_in_scan"]
    unit = "mGy" if n_scan is not None else "Gy per photon"
    qoi, sig, rel = _qoi(base, rows, eff, norm, n_scan is not None)
    summ = _phantom_summary(ph, lab)
    warnings = _summarise_changes(base, p, prepared["nominal_phantom"], summ, reports, eff)

    t2 = time.perf_counter()
    write_image(Volume(lab.astype(np.uint8), sp, origin, ph.labels.direction_xyz), case / "labels.nii.gz")
    if figures:

        dose_pp, _ = res.dose_Gy_per_photon()
        scale = n_scan * 1e3 if n_scan is not None else 1.0
        dmap = np.where(np.isfinite(dose_pp), dose_pp, 0.0) * scale
        desc = ", ".join(f"{k} = {v:g}" for k, v in p.items())
        plot_dose_overlay(lab, dmap, sp, case / "dose_map.png", dose_unit=unit,
                          title=f"{base['age']} {base['sex']}, {protocol.kvp:g} kVp: {desc}")
    times["outputs"] = time.perf_counter() - t2
    times["total"] = time.perf_counter() - t0
    results = {
        "schema_version": SCHEMA_VERSION, "stage": "dose_case", "inputs_sha256": key,
        "params": p, "qoi": qoi, "qoi_sigma": sig, "qoi_relative_sigma": rel,
        "qoi_sigma_note": "1σ Monte Carlo of this case's scan (batch spread); the CTDI normalisation's relative "
                          "σ (normalisation.relative_sigma) is common to every case and not included",
        "units": {"dose": unit, "effective_dose": "mSv" if n_scan is not None else "Gy per photon",
                  "mass": "g", "length": "mm"},
        "perturbation": reports,
        "phantom": {"age": base["age"], "sex": base["sex"], "voxel_mm": p["voxel_mm"], "shape_zyx": list(lab.shape),
                    "origin_xyz_mm": list(origin), **summ},
        "warnings": warnings,
        "organs": rows,
        "effective_dose_weight_covered": eff["weight_covered"],
        "effective_dose_detail": eff,
        "scan": {**prepared["scan"], "kvp": protocol.kvp, "pitch": protocol.pitch,
                 "collimation_mm": protocol.collimation_mm, "n_rotations": protocol.n_rotations,
                 "scan_mAs": protocol.scan_mAs, "protocol": base["protocol"]},
        "normalisation": {**norm, "ctdi_json": prepared.get("ctdi_json"),
                          "tube_output_source": prepared.get("tube_output_source")},
        "histories": res.histories, "batches": base["batches"], "seed": base["seed"],
        "histories_per_second": res.histories_per_second,
        "energy_balance_relative_error": res.energy_balance_error,
        "files": {"labels": str(case / "labels.nii.gz"),
                  **({"dose_map": str(case / "dose_map.png")} if figures else {})},
        "timings_s": times,
        "provenance": provenance(seed=base["seed"], inputs_sha256=key),
    }
    cache.save(results)
    if not quiet:
        print(f"[dose case] {case.name}: done in {times['total']:.1f} s; effective dose "
              f"{qoi['effective_dose_mSv']:.3g} {results['units']['effective_dose']}", flush=True)
    return results
