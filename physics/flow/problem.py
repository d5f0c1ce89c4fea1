"""Validated description of a steady blood-flow problem.

A :class:`FlowProblem` says *what* to solve (inflow, outlet pressures or a
prescribed outlet flow split, flow model, blood properties, linear solver)
independently of the mesh; it is written to and read back from JSON through
:meth:`FlowProblem.to_dict` and :meth:`FlowProblem.from_dict`. The solver lives
in :mod:`physics.flow.solver`.

:func:`murray_fractions` gives the flow split of Murray's law, Q_i ∝ r_i³
(C. D. Murray, "The physiological principle of minimum work: I. The vascular
system and the cost of blood volume", Proc. Natl. Acad. Sci. USA 1926; 12:207),
for :attr:`FlowProblem.outlet_flow_fractions`.

Default blood properties (ρ = 1060 kg/m³, μ = 3.5 mPa·s, Newtonian) are the
usual large-artery values, e.g. Formaggia, Quarteroni & Veneziani,
*Cardiovascular Mathematics* (Springer 2009), ch. 1. The default proximal
pressure, 13 332 Pa = 100 mmHg, is a typical mean aortic pressure used for the
FFR-like ratio Pd/Pa (Pijls et al., N Engl J Med 1996; 334:1703).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "MODELS",
    "SOLVERS",
    "WALL",
    "INLET",
    "FIRST_OUTLET",
    "FLUID",
    "FlowError",
    "ConvergenceError",
    "Blood",
    "FlowProblem",
    "FRACTION_SUM_TOL",
    "murray_fractions",
]

#: Tolerance on the sum of :attr:`FlowProblem.outlet_flow_fractions` (which must be 1).
FRACTION_SUM_TOL = 1e-6

#: Facet tag of the vessel wall (no slip).
WALL = 1
#: Facet tag of the inlet (Dirichlet parabolic velocity).
INLET = 2
#: Outlets are tagged 3, 4, ...
FIRST_OUTLET = 3
#: Cell tag of the fluid domain.
FLUID = 1

#: Valid values of :attr:`FlowProblem.model`.
MODELS = ("stokes", "navier-stokes")
#: Valid values of :attr:`FlowProblem.solver`.
SOLVERS = ("direct", "iterative")


class FlowError(ValueError):
    """Invalid flow problem, mesh or tags."""


class ConvergenceError(FlowError):
    """The Newton or linear solve did not converge (the message says what to try)."""


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive(name: str, value: Any) -> None:
    if not _is_real(value) or value <= 0:
        raise FlowError(f"{name} must be a finite number > 0, got {value!r}")


def _check_tag(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlowError(f"{name} must be an integer facet tag >= 1, got {value!r}")


def _tag_key(name: str, key: Any) -> int:
    """A facet-tag dict key as an int: an int, or a string of one (JSON keys are strings)."""
    if isinstance(key, str):
        try:
            key = int(key.strip())
        except ValueError:
            raise FlowError(f"{name} key {key!r} is not an integer facet tag") from None
    _check_tag(f"{name} key", key)
    return key


def _tag_dict(name: str, value: Any, what: str) -> dict:
    """Check that ``value`` is a non-empty dict keyed by facet tags; return it with int keys."""
    if not isinstance(value, dict) or len(value) == 0:
        raise FlowError(f"{name} must be a non-empty dict {{tag: {what}}}, got {value!r}")
    out = {}
    for k, v in value.items():
        tag = _tag_key(name, k)
        if tag in out:
            raise FlowError(f"{name} gives tag {tag} twice (keys {list(value)})")
        out[tag] = v
    return out


def murray_fractions(radii_by_tag: dict[int, float]) -> dict[int, float]:
    """Outlet flow fractions of Murray's law, Q_i / Q = r_i³ / Σ_j r_j³.

    Murray (Proc. Natl. Acad. Sci. USA 1926; 12:207) showed that a vessel tree of
    least work (viscous dissipation plus the metabolic cost of blood volume) carries
    flows proportional to the cube of the radius. The result can be passed as
    :attr:`FlowProblem.outlet_flow_fractions`.

    Parameters
    ----------
    radii_by_tag : dict of int to float
        Outlet facet tag -> outlet radius (any one length unit for all, e.g. mm;
        only ratios matter), finite and > 0.

    Returns
    -------
    dict of int to float
        Outlet facet tag -> fraction of the inflow, summing to 1.

    Raises
    ------
    FlowError
        If ``radii_by_tag`` is empty, a key is not a facet tag or a radius is not
        a finite number > 0.
    """
    radii = _tag_dict("radii_by_tag", radii_by_tag, "radius")
    for tag, r in radii.items():
        if not _is_real(r) or r <= 0:
            raise FlowError(f"radii_by_tag[{tag}] must be a finite radius > 0, got {r!r}")
    cubes = {tag: float(r) ** 3 for tag, r in radii.items()}
    total = math.fsum(cubes.values())
    return {tag: c / total for tag, c in cubes.items()}


@dataclass
class Blood:
    """Newtonian blood.

    Parameters
    ----------
    density_kg_m3 : float
        Mass density ρ in kg/m³ (default 1060).
    viscosity_Pa_s : float
        Dynamic viscosity μ in Pa·s (default 3.5e-3).
    """

    density_kg_m3: float = 1060.0
    viscosity_Pa_s: float = 3.5e-3

    def __post_init__(self) -> None:
        _check_positive("Blood.density_kg_m3", self.density_kg_m3)
        _check_positive("Blood.viscosity_Pa_s", self.viscosity_Pa_s)
        self.density_kg_m3 = float(self.density_kg_m3)
        self.viscosity_Pa_s = float(self.viscosity_Pa_s)


@dataclass
class FlowProblem:
    """Boundary conditions, model and solver settings for a steady flow solve.

    Parameters
    ----------
    flow_rate_m3_s : float, optional
        Volumetric inflow Q in m³/s through the inlet. Exactly one of
        ``flow_rate_m3_s`` and ``mean_velocity_m_s`` must be given.
    mean_velocity_m_s : float, optional
        Mean inlet velocity U in m/s (Q = U·A with A the inlet area of the mesh).
    inlet_tag : int
        Facet tag of the inlet (default 2).
    outlet_tags : tuple of int, optional
        Facet tags of the outlets; ``None`` means every tag >= 3 present in the mesh.
    wall_tags : tuple of int
        Facet tags with no-slip (default ``(1,)``).
    outlet_pressures_Pa : dict of int to float, optional
        Mean normal traction (pressure) imposed on outlets, in Pa; outlets not
        listed get zero traction (do-nothing). Not combined with
        ``outlet_flow_fractions``.
    outlet_flow_fractions : dict of int to float, optional
        Prescribed flow split: outlet facet tag -> fraction of the inflow leaving
        through it (each > 0, summing to 1 within 1e-6; e.g. from
        :func:`murray_fractions`). At solve time the tags must be exactly the
        outlets solved. Every outlet but one gets a Poiseuille outflow profile
        rescaled to the flow fraction × Q (so those outlets must be planar); the
        outlet with the largest area (ties, areas within 1e-9 relative: lowest
        tag) keeps zero traction, which sets the pressure level, and its flow
        follows from mass conservation. The solver divides the fractions by their
        sum. Not combined with ``outlet_pressures_Pa``. ``None`` (default): every
        outlet is a traction (pressure) outlet and the split follows from the flow.
    model : {"stokes", "navier-stokes"}
        Flow model.
    blood : Blood
        Blood properties.
    proximal_pressure_Pa : float
        Aortic pressure Pa used for the FFR-like ratio (Pa − ΔP)/Pa, in Pa.
    solver : {"direct", "iterative"}
        "direct": MUMPS LU. "iterative": MINRES with a block preconditioner
        (GAMG on the velocity block, pressure mass matrix); Stokes only.
    petsc_options : dict, optional
        PETSc options that override the defaults (without prefix).
    newton_rtol : float
        Relative residual tolerance of Newton's method (Navier–Stokes).
    newton_max_iterations : int
        Maximum number of Newton iterations (Navier–Stokes).
    """

    flow_rate_m3_s: float | None = None
    mean_velocity_m_s: float | None = None
    inlet_tag: int = INLET
    outlet_tags: tuple[int, ...] | None = None
    wall_tags: tuple[int, ...] = (WALL,)
    outlet_pressures_Pa: dict[int, float] | None = None
    outlet_flow_fractions: dict[int, float] | None = None
    model: str = "stokes"
    blood: Blood = field(default_factory=Blood)
    proximal_pressure_Pa: float = 13332.0
    solver: str = "direct"
    petsc_options: dict | None = None
    newton_rtol: float = 1e-8
    newton_max_iterations: int = 25

    def __post_init__(self) -> None:
        given = [n for n in ("flow_rate_m3_s", "mean_velocity_m_s") if getattr(self, n) is not None]
        if len(given) != 1:
            raise FlowError(
                "exactly one of flow_rate_m3_s and mean_velocity_m_s must be given, got "
                f"flow_rate_m3_s={self.flow_rate_m3_s!r}, mean_velocity_m_s={self.mean_velocity_m_s!r}"
            )
        _check_positive(given[0], getattr(self, given[0]))
        setattr(self, given[0], float(getattr(self, given[0])))

        _check_tag("inlet_tag", self.inlet_tag)
        if isinstance(self.wall_tags, int) and not isinstance(self.wall_tags, bool):
            self.wall_tags = (self.wall_tags,)
        if not isinstance(self.wall_tags, (tuple, list)) or len(self.wall_tags) == 0:
            raise FlowError(f"wall_tags must be a non-empty tuple of facet tags, got {self.wall_tags!r}")
        for t in self.wall_tags:
            _check_tag("wall_tags", t)
        self.wall_tags = tuple(self.wall_tags)
        if self.inlet_tag in self.wall_tags:
            raise FlowError(f"inlet_tag={self.inlet_tag} must not be one of wall_tags={self.wall_tags}")

        if self.outlet_tags is not None:
            if isinstance(self.outlet_tags, int) and not isinstance(self.outlet_tags, bool):
                self.outlet_tags = (self.outlet_tags,)
            if not isinstance(self.outlet_tags, (tuple, list)) or len(self.outlet_tags) == 0:
                raise FlowError(
                    f"outlet_tags must be None or a non-empty tuple of facet tags, got {self.outlet_tags!r}"
                )
            for t in self.outlet_tags:
                _check_tag("outlet_tags", t)
            self.outlet_tags = tuple(self.outlet_tags)
            clash = set(self.outlet_tags) & (set(self.wall_tags) | {self.inlet_tag})
            if clash:
                raise FlowError(
                    f"outlet_tags={self.outlet_tags} overlap inlet_tag/wall_tags in {sorted(clash)}"
                )
            if len(set(self.outlet_tags)) != len(self.outlet_tags):
                raise FlowError(f"outlet_tags has repeated tags: {self.outlet_tags}")

        if self.outlet_pressures_Pa is not None:
            if not isinstance(self.outlet_pressures_Pa, dict):
                raise FlowError(
                    f"outlet_pressures_Pa must be a dict {{tag: pressure_Pa}} or None, "
                    f"got {self.outlet_pressures_Pa!r}"
                )
            clean = {}
            for k, v in self.outlet_pressures_Pa.items():
                try:
                    tag = int(k)
                except (TypeError, ValueError):
                    raise FlowError(f"outlet_pressures_Pa key {k!r} is not an integer facet tag") from None
                _check_tag("outlet_pressures_Pa key", tag)
                if not _is_real(v):
                    raise FlowError(f"outlet_pressures_Pa[{tag}] must be a finite number in Pa, got {v!r}")
                if self.outlet_tags is not None and tag not in self.outlet_tags:
                    raise FlowError(
                        f"outlet_pressures_Pa has tag {tag}, which is not in outlet_tags={self.outlet_tags}"
                    )
                if tag == self.inlet_tag or tag in self.wall_tags:
                    raise FlowError(f"outlet_pressures_Pa has tag {tag}, which is the inlet or a wall")
                clean[tag] = float(v)
            self.outlet_pressures_Pa = clean

        if self.outlet_flow_fractions is not None:
            self.outlet_flow_fractions = self._checked_fractions()

        if self.model not in MODELS:
            raise FlowError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.solver not in SOLVERS:
            raise FlowError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver == "iterative" and self.model != "stokes":
            raise FlowError(
                "solver='iterative' is only available for model='stokes' (without hypre, the "
                "iterative Navier-Stokes solve stalls); use solver='direct' for navier-stokes"
            )
        if isinstance(self.blood, dict):
            self.blood = Blood(**self.blood)
        if not isinstance(self.blood, Blood):
            raise FlowError(f"blood must be a Blood instance, got {self.blood!r}")
        _check_positive("proximal_pressure_Pa", self.proximal_pressure_Pa)
        self.proximal_pressure_Pa = float(self.proximal_pressure_Pa)
        if self.petsc_options is not None and not isinstance(self.petsc_options, dict):
            raise FlowError(f"petsc_options must be a dict or None, got {self.petsc_options!r}")
        if not _is_real(self.newton_rtol) or not 0 < self.newton_rtol < 1:
            raise FlowError(f"newton_rtol must be a number in (0, 1), got {self.newton_rtol!r}")
        if (
            isinstance(self.newton_max_iterations, bool)
            or not isinstance(self.newton_max_iterations, int)
            or self.newton_max_iterations < 1
        ):
            raise FlowError(
                f"newton_max_iterations must be an integer >= 1, got {self.newton_max_iterations!r}"
            )

    def _checked_fractions(self) -> dict[int, float]:
        """Validated ``outlet_flow_fractions`` with int keys and float values."""
        name = "outlet_flow_fractions"
        if self.outlet_pressures_Pa is not None:
            raise FlowError(
                f"{name} and outlet_pressures_Pa cannot both be given: drop outlet_pressures_Pa to "
                f"impose the flow split (the largest outlet then keeps zero traction and sets the "
                f"pressure level), or drop {name} to impose outlet pressures"
            )
        fractions = _tag_dict(name, self.outlet_flow_fractions, "fraction of the inflow")
        for tag, f in fractions.items():
            if not _is_real(f) or f <= 0:
                raise FlowError(f"{name}[{tag}] must be a finite fraction > 0, got {f!r}")
            if tag == self.inlet_tag or tag in self.wall_tags:
                raise FlowError(
                    f"{name} has tag {tag}, which is the inlet_tag={self.inlet_tag} or in wall_tags={self.wall_tags}"
                )
            if self.outlet_tags is not None and tag not in self.outlet_tags:
                raise FlowError(f"{name} has tag {tag}, which is not in outlet_tags={self.outlet_tags}")
        clean = {tag: float(f) for tag, f in fractions.items()}
        total = math.fsum(clean.values())
        if abs(total - 1.0) > FRACTION_SUM_TOL:
            raise FlowError(
                f"{name} must sum to 1 (within {FRACTION_SUM_TOL:g}), got sum {total:.10g} for {clean}"
            )
        return clean

    def to_dict(self) -> dict:
        """Return a JSON-ready dict (tag keys as strings); inverse of :meth:`from_dict`."""
        d = asdict(self)
        d["outlet_tags"] = None if self.outlet_tags is None else list(self.outlet_tags)
        d["wall_tags"] = list(self.wall_tags)
        if self.outlet_pressures_Pa is not None:
            d["outlet_pressures_Pa"] = {str(k): v for k, v in self.outlet_pressures_Pa.items()}
        if self.outlet_flow_fractions is not None:
            d["outlet_flow_fractions"] = {str(k): v for k, v in self.outlet_flow_fractions.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FlowProblem:
        """Build a problem from :meth:`to_dict` output; unknown keys raise :class:`FlowError`."""
        if not isinstance(d, dict):
            raise FlowError(f"FlowProblem.from_dict needs a dict, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise FlowError(f"unknown FlowProblem fields {sorted(unknown)}; valid: {sorted(known)}")
        kw = dict(d)
        if isinstance(kw.get("blood"), dict):
            kw["blood"] = Blood(**kw["blood"])
        for key in ("outlet_tags", "wall_tags"):
            if isinstance(kw.get(key), list):
                kw[key] = tuple(kw[key])
        return cls(**kw)
