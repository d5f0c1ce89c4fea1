"""Materials for photon transport: elemental mass fractions and mass density.

A :class:`Material` is a homogeneous mixture described, as in ICRU Report 46 and
AAPM TG-195, by the mass fraction of each element and a mass density in g/cm³.
Cross sections of a mixture follow the mixture rule
``(μ/ρ)_mix = Σ_i w_i (μ/ρ)_i`` (Hubbell, *Int. J. Appl. Radiat. Isot.* 33, 1982),
which :mod:`physics.transport.xsection` applies.

:func:`read_materials_csv` reads the label table format of
``reference/tg195/case5_materials.csv``: ``label_id, tissue_name, density_g_cm3``
followed by one column per element symbol; other columns are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

__all__ = ["TransportError", "ELEMENT_SYMBOLS", "Material", "read_materials_csv"]


class TransportError(ValueError):
    """Invalid input to the photon-transport engine (the message names the parameter)."""


#: Chemical symbols by atomic number (index 0 is a placeholder), Z = 1..100.
ELEMENT_SYMBOLS: tuple[str, ...] = (
    "", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P",
    "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm",
)
_Z_OF = {s: z for z, s in enumerate(ELEMENT_SYMBOLS) if s}

#: Tolerance on the sum of mass fractions.
FRACTION_SUM_TOL = 1e-3


@dataclass(frozen=True)
class Material:
    """A homogeneous material.

    Parameters
    ----------
    name : str
        Human-readable name (not used by the physics).
    density_g_cm3 : float
        Nominal mass density in g/cm³ (> 0). A phantom may scale it per voxel.
    mass_fractions : mapping of str to float
        Elemental mass fractions ``{symbol: w}``, each ``w >= 0``, summing to 1 within
        1e-3; they are renormalised to sum exactly to 1. Zero entries are dropped.

    Raises
    ------
    TransportError
        Unknown element symbol, negative or non-finite density or fraction, or
        fractions not summing to 1.
    """

    name: str
    density_g_cm3: float
    mass_fractions: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.density_g_cm3
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not math.isfinite(d) or d <= 0:
            raise TransportError(
                f"Material {self.name!r}: density_g_cm3 must be a finite number > 0, got {d!r}"
            )
        if not self.mass_fractions:
            raise TransportError(f"Material {self.name!r}: mass_fractions is empty; give {{symbol: w}}")
        fracs: dict[str, float] = {}
        for sym, w in self.mass_fractions.items():
            if sym not in _Z_OF:
                raise TransportError(
                    f"Material {self.name!r}: unknown element symbol {sym!r} in mass_fractions "
                    f"(valid: chemical symbols H..Fm, case-sensitive, e.g. 'O', 'Ca')"
                )
            w = float(w)
            if not math.isfinite(w) or w < 0:
                raise TransportError(
                    f"Material {self.name!r}: mass fraction of {sym} must be finite and >= 0, got {w!r}"
                )
            if w > 0:
                fracs[sym] = w
        total = sum(fracs.values())
        if abs(total - 1.0) > FRACTION_SUM_TOL:
            raise TransportError(
                f"Material {self.name!r}: mass fractions sum to {total:.6g}, must be 1 within "
                f"{FRACTION_SUM_TOL:g}"
            )
        fracs = {s: w / total for s, w in sorted(fracs.items(), key=lambda kv: _Z_OF[kv[0]])}
        object.__setattr__(self, "mass_fractions", fracs)
        object.__setattr__(self, "density_g_cm3", float(d))

    @property
    def elements(self) -> list[tuple[int, float]]:
        """``[(Z, mass fraction), ...]`` sorted by atomic number."""
        return [(_Z_OF[s], w) for s, w in self.mass_fractions.items()]

    def composition_hash(self) -> str:
        """Hex digest of the composition (not the name or density): a cache key for tables."""
        blob = json.dumps([[s, round(w, 12)] for s, w in self.mass_fractions.items()])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"name": self.name, "density_g_cm3": self.density_g_cm3,
                "mass_fractions": dict(self.mass_fractions)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Material":
        return cls(d["name"], d["density_g_cm3"], dict(d["mass_fractions"]))


def read_materials_csv(path: str | Path) -> dict[int, Material]:
    """Read a label → material table.

    Parameters
    ----------
    path : str or Path
        CSV with header ``label_id, tissue_name, density_g_cm3, <symbol>, <symbol>, ...``
        (the format of TG-195 ``case5_materials.csv``). Columns whose header is not a
        chemical symbol (e.g. ``voxel_count``, ``mass_g``) are ignored.

    Returns
    -------
    dict of int to Material
        Materials keyed by integer label id.

    Raises
    ------
    TransportError
        Missing columns, duplicate or non-integer label, or an invalid material
        (the message names the file, the row and the problem).
    """
    path = Path(path)
    if not path.is_file():
        raise TransportError(f"materials file {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        for req in ("label_id", "tissue_name", "density_g_cm3"):
            if req not in header:
                raise TransportError(f"materials file {str(path)!r}: missing column {req!r} (have {header})")
        elements = [h for h in header[3:] if h in _Z_OF]
        if not elements:
            raise TransportError(f"materials file {str(path)!r}: no element-symbol columns after density_g_cm3")
        out: dict[int, Material] = {}
        for row_no, raw in enumerate(reader, start=2):
            row = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k}
            try:
                label = int(row["label_id"])
                density = float(row["density_g_cm3"])
                fr = {s: float(row[s]) for s in elements if row.get(s) not in (None, "")}
            except (TypeError, ValueError) as exc:
                raise TransportError(f"materials file {str(path)!r} line {row_no}: {exc}") from None
            if label in out:
                raise TransportError(f"materials file {str(path)!r} line {row_no}: duplicate label_id {label}")
            try:
                out[label] = Material(row["tissue_name"], density, fr)
            except TransportError as exc:
                raise TransportError(f"materials file {str(path)!r} line {row_no}: {exc}") from None
    if not out:
        raise TransportError(f"materials file {str(path)!r} has no rows")
    return out
