"""Effective dose from organ doses with the ICRP Publication 103 tissue weighting factors.

For photons the radiation weighting factor is 1, so an organ's equivalent dose equals its
absorbed dose. ICRP 103 (§B.3.4, Eq. B.3.13) defines

    E = Σ_T w_T (H_T^M + H_T^F) / 2,

the average over the reference male and female; with one phantom (one sex) digipat
reports ``E = Σ_T w_T H_T`` for that phantom and says so. The remainder dose is the
arithmetic mean over the remainder tissues the phantom has (13 per sex in ICRP 103; the
list is in ``phantoms/data/icrp103_remainder_tissues.csv``). Gonads are testes or ovaries.
Tissues the phantom lacks are listed with their w_T, and ``weight_covered`` tells how much
of Σ w_T = 1 the estimate covers; nothing is silently renormalised. Where the phantom has
no endosteum (bone surface), the mean dose of its skeletal tissues is used as the
surrogate and the result says so.

Phantom organ names are matched to ICRP tissues after normalisation (lower case, spaces
and hyphens to underscores) through :data:`SYNONYMS` (``esophagus`` → oesophagus,
``large_intestine``/``colon_wall`` → colon, ``testes``/``ovaries`` → gonads, …).
"""

from __future__ import annotations

import math
import re
from typing import Mapping

from phantoms.tissues import remainder_tissues, tissue_weighting_factors

__all__ = ["SYNONYMS", "icrp_tissue", "effective_dose"]

#: Phantom organ name (normalised) → ICRP 103 tissue (w_T table or remainder list).
SYNONYMS = {
    "red_marrow": "red_marrow", "red_bone_marrow": "red_marrow", "active_marrow": "red_marrow",
    "spongiosa": "red_marrow", "bone_marrow": "red_marrow",
    "colon": "colon", "colon_wall": "colon", "large_intestine": "colon", "large_intestine_wall": "colon",
    "lung": "lung", "lungs": "lung",
    "stomach": "stomach", "stomach_wall": "stomach",
    "breast": "breast", "breasts": "breast", "breast_glandular": "breast",
    "gonads": "gonads", "testes": "gonads", "testis": "gonads", "ovaries": "gonads", "ovary": "gonads",
    "bladder": "bladder", "urinary_bladder": "bladder", "bladder_wall": "bladder", "urinary_bladder_wall": "bladder",
    "oesophagus": "oesophagus", "esophagus": "oesophagus",
    "liver": "liver", "thyroid": "thyroid", "brain": "brain",
    "bone_surface": "bone_surface", "endosteum": "bone_surface",
    "salivary_glands": "salivary_glands", "salivary_gland": "salivary_glands",
    "skin": "skin",
    # remainder tissues
    "adrenals": "adrenals", "adrenal": "adrenals", "adrenal_glands": "adrenals",
    "extrathoracic_region": "extrathoracic_region", "extrathoracic_airways": "extrathoracic_region",
    "gallbladder": "gallbladder", "gallbladder_wall": "gallbladder",
    "heart": "heart", "heart_wall": "heart",
    "kidneys": "kidneys", "kidney": "kidneys",
    "lymphatic_nodes": "lymphatic_nodes", "lymph_nodes": "lymphatic_nodes",
    "muscle": "muscle", "oral_mucosa": "oral_mucosa", "pancreas": "pancreas", "prostate": "prostate",
    "small_intestine": "small_intestine", "small_intestine_wall": "small_intestine",
    "spleen": "spleen", "thymus": "thymus", "uterus": "uterus_cervix", "uterus_cervix": "uterus_cervix",
}

#: Skeletal tissues whose mean dose stands in for bone surface when the phantom has none.
_SKELETAL = ("cortical_bone", "bone", "skeleton", "spongiosa", "red_marrow", "cartilage")


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def icrp_tissue(organ_name: str) -> str | None:
    """ICRP 103 tissue of a phantom organ name, or None (e.g. soft tissue, air).

    ``spongiosa_<site>`` (the marrow-bone mixture of one skeletal site, as a TotalSegmentator
    map gives it) stands for red marrow: several sites combine mass-weighted."""
    n = _norm(organ_name)
    return "red_marrow" if n.startswith("spongiosa_") else SYNONYMS.get(n)


def effective_dose(organ_dose: Mapping[str, tuple[float, float]], sex: str = "male",
                   organ_mass_g: Mapping[str, float] | None = None) -> dict:
    """Effective dose of one phantom (ICRP 103 w_T, photons: H_T = D_T).

    Parameters
    ----------
    organ_dose : mapping of organ name to (dose, σ)
        Organ absorbed doses in any one unit (mGy, Gy per photon, ...) and their 1σ.
        Several organs mapping to one tissue (e.g. left and right lung, or colon parts)
        are combined mass-weighted when ``organ_mass_g`` is given, else averaged.
    sex : {'male', 'female'}
        Selects the remainder list (prostate / uterus) and how the result is labelled.
    organ_mass_g : mapping of organ name to mass (g), optional

    Returns
    -------
    dict
        ``effective_dose`` and ``effective_dose_sigma`` (the organ doses' unit; σ from
        independent organ σ), ``tissues`` (per ICRP tissue: w_T, dose, σ, organs),
        ``tissue_doses`` (every ICRP tissue present, remainder tissues included, each alone:
        dose, σ, organs),
        ``remainder`` (tissues used), ``missing`` (tissue → w_T), ``weight_covered``,
        ``notes``.
    """
    if sex not in ("male", "female"):
        raise ValueError(f"sex must be 'male' or 'female', got {sex!r}")
    w_t = tissue_weighting_factors()
    rem_list = remainder_tissues(sex)
    groups: dict[str, list[tuple[str, float, float, float]]] = {}
    for organ, (d, s) in organ_dose.items():
        t = icrp_tissue(organ)
        if t is None or d is None or not math.isfinite(d):
            continue
        m = float(organ_mass_g[organ]) if organ_mass_g and organ in organ_mass_g else 1.0
        groups.setdefault(t, []).append((organ, float(d), float(s) if s is not None and math.isfinite(s) else 0.0, m))
    notes = []

    def combine(items):
        tot = sum(m for _, _, _, m in items)
        dose = sum(d * m for _, d, _, m in items) / tot
        sig = math.sqrt(sum((s * m) ** 2 for _, _, s, m in items)) / tot
        return dose, sig

    tissues: dict[str, dict] = {}
    for t, items in groups.items():
        d, s = combine(items)
        tissues[t] = {"dose": d, "sigma": s, "organs": [o for o, *_ in items]}
    if "bone_surface" not in tissues:
        skel = [(o, float(d), float(s) if s is not None and math.isfinite(s) else 0.0,
                 float(organ_mass_g[o]) if organ_mass_g and o in organ_mass_g else 1.0)
                for o, (d, s) in organ_dose.items()
                if (_norm(o) in _SKELETAL or _norm(o).startswith("spongiosa_")) and d is not None and math.isfinite(d)]
        if skel:
            d, s = combine(skel)
            tissues["bone_surface"] = {"dose": d, "sigma": s, "organs": [o for o, *_ in skel]}
            notes.append("bone surface: no endosteum in the phantom; mean dose of the skeletal tissues "
                         f"({', '.join(o for o, *_ in skel)}) used as surrogate")
    rem_present = [t for t in rem_list if t in tissues]
    total, var, covered = 0.0, 0.0, 0.0
    missing = {}
    table = {}
    for t, w in w_t.items():
        if t == "remainder":
            if not rem_present:
                missing[t] = w
                continue
            d = sum(tissues[r]["dose"] for r in rem_present) / len(rem_present)
            s = math.sqrt(sum(tissues[r]["sigma"] ** 2 for r in rem_present)) / len(rem_present)
            table[t] = {"w_T": w, "dose": d, "sigma": s, "organs": rem_present}
            if len(rem_present) < len(rem_list):
                notes.append(f"remainder: {len(rem_present)} of the {len(rem_list)} ICRP 103 remainder tissues "
                             f"present ({', '.join(rem_present)})")
        elif t in tissues:
            d, s = tissues[t]["dose"], tissues[t]["sigma"]
            table[t] = {"w_T": w, "dose": d, "sigma": s, "organs": tissues[t]["organs"]}
        else:
            missing[t] = w
            continue
        total += w * d
        var += (w * s) ** 2
        covered += w
    if missing:
        notes.append("missing tissues (not in the phantom or not irradiated): "
                     + ", ".join(f"{t} (w_T {w})" for t, w in missing.items()))
    notes.append(f"single-phantom estimate for the reference {sex} (ICRP 103 averages male and female)")
    return {"effective_dose": total, "effective_dose_sigma": math.sqrt(var), "tissues": table,
            "tissue_doses": {t: {"dose": v["dose"], "sigma": v["sigma"], "organs": v["organs"]}
                             for t, v in tissues.items()},
            "remainder": rem_present, "missing": missing, "weight_covered": covered, "sex": sex, "notes": notes}
