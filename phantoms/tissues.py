"""Age-aware tissue library: elemental compositions, densities and ICRP reference data.

What it is for
--------------
A voxel phantom for the photon-transport engine needs, for every label, a material:
elemental mass fractions ``{symbol: w}`` and a mass density in g/cm³. This module gives
those for the tissues a CT phantom needs, at the ICRP reference ages (newborn, 1, 5, 10,
15 years, adult), plus the ICRP Publication 89 reference organ masses used to check
phantoms and the ICRP Publication 103 tissue weighting factors used for effective dose.

Where the numbers come from
---------------------------
All numbers live in data files under ``phantoms/data/``; each row names its source and
``phantoms/data/SOURCES.md`` describes every table:

* ``tissue_compositions.csv``: ICRU Reports 44/46 compositions and densities (as shipped
  in SpekPy's PEGS4 material files), ICRU-46 average soft tissue (as in AAPM TG-195
  Case 5). No age-specific values were available, so every non-adult row repeats the adult
  row and says so in its ``fallback_note``; :attr:`Tissue.note` carries that note.
* ``icrp89_organ_masses.csv``: ICRP Publication 89 (2002) reference masses in grams.
* ``icrp103_tissue_weighting_factors.csv`` / ``icrp103_remainder_tissues.csv``: ICRP
  Publication 103 (2007), Table 3.

Iodinated blood
---------------
Blood with an iodine concentration ``c`` (mg I per ml of mixture) is modelled as blood to
which elemental iodine is added without changing its volume:

.. math::  \\rho = \\rho_b + c/1000, \\qquad
           w_I = \\frac{c/1000}{\\rho}, \\qquad
           w_k = (1 - w_I)\\, w_{k,b} \\;(k \\neq I),

with densities in g/cm³ (1 mg/ml = 1e-3 g/cm³). The organic carrier of the contrast agent
(and the small volume it displaces) is neglected; it changes the low-Z fractions by well
under 1 % at clinical concentrations (≤ 20 mg/ml), while iodine dominates attenuation.

The materials CSV written by :func:`write_materials_csv` is the dose engine's format
(``label_id, tissue_name, density_g_cm3, <element symbols...>``, as in TG-195
``case5_materials.csv``), with extra trailing columns ``age, source, note`` that readers
of that format ignore.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from physics.atomic import atomic_path

__all__ = [
    "AGES", "SEXES", "TissueError", "Tissue", "tissue", "tissue_names", "iodinated_blood",
    "organ_masses", "organ_mass_sources", "tissue_weighting_factors", "remainder_tissues",
    "write_materials_csv", "read_materials_csv", "DATA_DIR",
]

#: ICRP reference ages, youngest first.
AGES: tuple[str, ...] = ("newborn", "1y", "5y", "10y", "15y", "adult")
#: Sexes of the ICRP reference individuals.
SEXES: tuple[str, ...] = ("male", "female")
#: Folder of the data tables (see ``SOURCES.md`` there).
DATA_DIR = Path(__file__).resolve().parent / "data"

#: Tolerance on the sum of mass fractions.
FRACTION_SUM_TOL = 1e-4

#: Chemical symbols by atomic number (index 0 is a placeholder), Z = 1..100.
_SYMBOLS: tuple[str, ...] = (
    "", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P",
    "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm",
)
_Z_OF = {s: z for z, s in enumerate(_SYMBOLS) if s}


class TissueError(ValueError):
    """Invalid input to the tissue library (the message names the parameter and the valid choices)."""


@dataclass(frozen=True)
class Tissue:
    """A tissue (or phantom material) at one reference age.

    Parameters
    ----------
    name : str
        Tissue name, e.g. ``"liver"``.
    density_g_cm3 : float
        Mass density in g/cm³ (finite, > 0).
    mass_fractions : dict of str to float
        Elemental mass fractions ``{symbol: w}``; every ``w >= 0`` and the sum is 1 within
        1e-4. Zero entries are dropped.
    age : str
        Reference age the values stand for, one of :data:`AGES`.
    source : str
        Where the numbers come from (report, table, file).
    note : str, optional
        Caveats, in particular the fallback note when an adult value stands in for an
        age-specific one.

    Raises
    ------
    TissueError
        On any invalid field (the message names it).
    """

    name: str
    density_g_cm3: float
    mass_fractions: dict[str, float] = field(hash=False)
    age: str
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TissueError(f"Tissue name must be a non-empty string, got {self.name!r}")
        try:
            d = float(self.density_g_cm3)
        except (TypeError, ValueError):
            d = math.nan
        if not (math.isfinite(d) and d > 0):
            raise TissueError(
                f"Tissue {self.name!r}: density_g_cm3 must be a finite number > 0, got {self.density_g_cm3!r}")
        object.__setattr__(self, "density_g_cm3", d)
        if self.age not in AGES:
            raise TissueError(f"Tissue {self.name!r}: age must be one of {list(AGES)}, got {self.age!r}")
        if not isinstance(self.mass_fractions, dict) or not self.mass_fractions:
            raise TissueError(
                f"Tissue {self.name!r}: mass_fractions must be a non-empty dict {{symbol: fraction}}, "
                f"got {self.mass_fractions!r}")
        fr: dict[str, float] = {}
        for sym, w in self.mass_fractions.items():
            if sym not in _Z_OF:
                raise TissueError(f"Tissue {self.name!r}: {sym!r} in mass_fractions is not a chemical symbol "
                                  f"(valid: 'H', 'C', ..., case-sensitive)")
            try:
                wf = float(w)
            except (TypeError, ValueError):
                wf = math.nan
            if not (math.isfinite(wf) and wf >= 0):
                raise TissueError(f"Tissue {self.name!r}: mass fraction of {sym} must be finite and >= 0, got {w!r}")
            if wf > 0:
                fr[sym] = wf
        total = sum(fr.values())
        if abs(total - 1.0) > FRACTION_SUM_TOL:
            raise TissueError(f"Tissue {self.name!r}: mass fractions sum to {total!r}; "
                              f"they must sum to 1 within {FRACTION_SUM_TOL}")
        object.__setattr__(self, "mass_fractions", dict(sorted(fr.items(), key=lambda kv: _Z_OF[kv[0]])))


# --------------------------------------------------------------------------- data access
def _read_table(name: str) -> list[dict[str, str]]:
    """Rows of a CSV data table in :data:`DATA_DIR`, skipping ``#`` comment lines."""
    with (DATA_DIR / name).open(newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


@lru_cache(maxsize=1)
def _compositions() -> dict[tuple[str, str], Tissue]:
    out: dict[tuple[str, str], Tissue] = {}
    for row in _read_table("tissue_compositions.csv"):
        fr = {k: float(v) for k, v in row.items() if k in _Z_OF and v not in ("", None) and float(v) > 0}
        out[(row["tissue"], row["age"])] = Tissue(
            name=row["tissue"], density_g_cm3=float(row["density_g_cm3"]), mass_fractions=fr,
            age=row["age"], source=row["source"], note=row["fallback_note"])
    return out


def _check_age(age: object, parameter: str = "age") -> str:
    if age not in AGES:
        raise TissueError(f"{parameter} must be one of {list(AGES)}, got {age!r}")
    return age  # type: ignore[return-value]


def tissue_names() -> list[str]:
    """Names of the tissues in the library, in table order.

    Returns
    -------
    list of str
        E.g. ``["soft_tissue", "muscle", ..., "pmma"]``; iodinated blood is made by
        :func:`iodinated_blood`.
    """
    return list(dict.fromkeys(name for name, _ in _compositions()))


def tissue(name: str, age: str = "adult") -> Tissue:
    """The composition and density of a tissue at a reference age.

    Parameters
    ----------
    name : str
        One of :func:`tissue_names` (e.g. ``"liver"``, ``"lung_inflated"``).
    age : str, optional
        One of :data:`AGES` (default ``"adult"``).

    Returns
    -------
    Tissue
        Density in g/cm³ and elemental mass fractions. Where no age-specific value exists
        the adult value is returned and :attr:`Tissue.note` says so.

    Raises
    ------
    TissueError
        Unknown tissue name (the message lists the valid names) or unknown age (lists
        :data:`AGES`).
    """
    _check_age(age)
    table = _compositions()
    if (name, age) not in table:
        raise TissueError(f"unknown tissue name {name!r}; valid names: {tissue_names()}")
    return table[(name, age)]


def iodinated_blood(mg_iodine_per_ml: float, age: str = "adult") -> Tissue:
    """Blood mixed with iodinated contrast (iodine added at constant volume).

    Parameters
    ----------
    mg_iodine_per_ml : float
        Iodine concentration in mg of iodine per ml of blood–contrast mixture, in
        ``[0, 400]`` (400 mg/ml is the most concentrated agent on the market, undiluted).
    age : str, optional
        One of :data:`AGES`; selects the blood composition (default ``"adult"``).

    Returns
    -------
    Tissue
        ``density_g_cm3 = ρ_blood + c/1000`` and ``w_I = (c/1000)/density``; the blood
        elements are scaled by ``1 - w_I`` (see the module docstring).

    Raises
    ------
    TissueError
        Concentration not a finite number in ``[0, 400]`` or unknown age.
    """
    try:
        c = float(mg_iodine_per_ml)
    except (TypeError, ValueError):
        c = math.nan
    if not (math.isfinite(c) and 0.0 <= c <= 400.0):
        raise TissueError(f"mg_iodine_per_ml must be a finite number in [0, 400] mg/ml, got {mg_iodine_per_ml!r}")
    blood = tissue("blood", age)
    iodine_g_cm3 = c / 1000.0
    rho = blood.density_g_cm3 + iodine_g_cm3
    w_i = iodine_g_cm3 / rho
    fr = {s: w * (1.0 - w_i) for s, w in blood.mass_fractions.items()}
    fr["I"] = fr.get("I", 0.0) + w_i
    note = f"blood + {c:g} mg/ml iodine added at constant volume (carrier molecule neglected)"
    if blood.note:
        note += f"; blood: {blood.note}"
    return Tissue(name=f"iodinated_blood_{c:g}mgI_ml", density_g_cm3=rho, mass_fractions=fr, age=age,
                  source=f"mixture of {blood.source} and elemental iodine", note=note)


@lru_cache(maxsize=1)
def _organ_mass_table() -> dict[tuple[str, str], dict[str, tuple[float, str]]]:
    out: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
    for row in _read_table("icrp89_organ_masses.csv"):
        out.setdefault((row["age"], row["sex"]), {})[row["organ"]] = (float(row["mass_g"]), row["source"])
    return out


def _check_age_sex(age: object, sex: object) -> None:
    _check_age(age)
    if sex not in SEXES:
        raise TissueError(f"sex must be one of {list(SEXES)}, got {sex!r}")


def organ_masses(age: str, sex: str = "male") -> dict[str, float]:
    """ICRP Publication 89 reference organ and tissue masses.

    Parameters
    ----------
    age : str
        One of :data:`AGES`.
    sex : str, optional
        ``"male"`` (default) or ``"female"``. Up to 10 years ICRP 89 gives one value for
        both sexes; sex-specific organs (testes, ovaries, uterus) appear only for their sex.

    Returns
    -------
    dict of str to float
        Organ name → mass in grams (e.g. ``"liver"``, ``"lungs"`` with blood,
        ``"kidneys"`` both). Only organs with a value in the cited tables are present; the
        adult set is larger than the paediatric one (see ``data/SOURCES.md``).

    Raises
    ------
    TissueError
        Unknown age (lists :data:`AGES`) or sex (lists :data:`SEXES`).
    """
    _check_age_sex(age, sex)
    return {k: m for k, (m, _) in _organ_mass_table()[(age, sex)].items()}


def organ_mass_sources(age: str, sex: str = "male") -> dict[str, str]:
    """The source of every value returned by :func:`organ_masses` (same arguments)."""
    _check_age_sex(age, sex)
    return {k: s for k, (_, s) in _organ_mass_table()[(age, sex)].items()}


def tissue_weighting_factors() -> dict[str, float]:
    """ICRP Publication 103 (Table 3) tissue weighting factors.

    Returns
    -------
    dict of str to float
        Tissue → ``w_T`` (dimensionless, sum 1). ``"remainder"`` applies to the mean dose
        of the tissues in :func:`remainder_tissues`.
    """
    return {row["tissue"]: float(row["w_T"]) for row in _read_table("icrp103_tissue_weighting_factors.csv")}


def remainder_tissues(sex: str = "male") -> list[str]:
    """The 13 ICRP Publication 103 remainder tissues of one sex.

    Parameters
    ----------
    sex : str, optional
        ``"male"`` (includes prostate) or ``"female"`` (includes uterus/cervix).

    Raises
    ------
    TissueError
        Unknown sex (lists :data:`SEXES`).
    """
    if sex not in SEXES:
        raise TissueError(f"sex must be one of {list(SEXES)}, got {sex!r}")
    return [row["tissue"] for row in _read_table("icrp103_remainder_tissues.csv") if row["sex"] in ("both", sex)]


# --------------------------------------------------------------------------- materials CSV
_EXTRA_COLUMNS = ("age", "source", "note")


def write_materials_csv(rows: Iterable[tuple[int, Tissue]], path: str | os.PathLike) -> Path:
    """Write a label → material table in the dose engine's format.

    Parameters
    ----------
    rows : iterable of (int, Tissue)
        Label id (integer ≥ 0, unique) and the tissue assigned to it.
    path : str or path-like
        Output CSV. Written atomically (temporary file, then rename).

    Returns
    -------
    Path
        The written file. Columns: ``label_id, tissue_name, density_g_cm3``, one column
        per element present in any row (ordered by Z), then ``age, source, note``. Floats
        are written with ``repr`` so a read gives back the same numbers.

    Raises
    ------
    TissueError
        Empty ``rows``, a label that is not a non-negative integer or repeats, or an item
        that is not a :class:`Tissue`.
    """
    rows = list(rows)
    if not rows:
        raise TissueError("rows must contain at least one (label_id, Tissue) pair, got none")
    seen: set[int] = set()
    for item in rows:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TissueError(f"rows must hold (label_id, Tissue) pairs, got {item!r}")
        label, t = item
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise TissueError(f"label_id must be an integer >= 0, got {label!r}")
        if label in seen:
            raise TissueError(f"label_id {label} appears more than once in rows")
        if not isinstance(t, Tissue):
            raise TissueError(f"label {label}: expected a Tissue, got {type(t).__name__}")
        seen.add(label)
    elements = sorted({s for _, t in rows for s in t.mass_fractions}, key=_Z_OF.__getitem__)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["label_id", "tissue_name", "density_g_cm3", *elements, *_EXTRA_COLUMNS])
        for label, t in sorted(rows, key=lambda r: r[0]):
            w.writerow([label, t.name, repr(t.density_g_cm3),
                        *[repr(t.mass_fractions.get(s, 0.0)) for s in elements], t.age, t.source, t.note])
    return path


def read_materials_csv(path: str | os.PathLike) -> list[tuple[int, Tissue]]:
    """Read a label → material table (this module's output or TG-195 ``case5_materials.csv``).

    Parameters
    ----------
    path : str or path-like
        CSV with columns ``label_id, tissue_name, density_g_cm3`` and element-symbol
        columns; optional ``age, source, note`` columns. Other columns are ignored.

    Returns
    -------
    list of (int, Tissue)
        Sorted by label. Without an ``age`` column the age is ``"adult"``; without a
        ``source`` column the source is the file path.

    Raises
    ------
    TissueError
        Missing file or column, a non-numeric value, a repeated label or an invalid tissue
        (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise TissueError(f"materials file {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        for req in ("label_id", "tissue_name", "density_g_cm3"):
            if req not in header:
                raise TissueError(f"materials file {str(path)!r}: missing column {req!r} (have {header})")
        elements = [h for h in header if h in _Z_OF]
        if not elements:
            raise TissueError(f"materials file {str(path)!r}: no element-symbol columns")
        out: dict[int, Tissue] = {}
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k}
            try:
                label = int(row["label_id"])
                fr = {s: float(row[s]) for s in elements if row.get(s) not in (None, "")}
                t = Tissue(name=row["tissue_name"], density_g_cm3=float(row["density_g_cm3"]),
                           mass_fractions=fr, age=row.get("age") or "adult",
                           source=row.get("source") or str(path), note=row.get("note") or "")
            except (TypeError, ValueError) as exc:  # TissueError is a ValueError
                raise TissueError(f"materials file {str(path)!r} line {line}: {exc}") from None
            if label < 0 or label in out:
                what = "negative" if label < 0 else "duplicate"
                raise TissueError(f"materials file {str(path)!r} line {line}: {what} label_id {label}")
            out[label] = t
    if not out:
        raise TissueError(f"materials file {str(path)!r} has no rows")
    return sorted(out.items())
