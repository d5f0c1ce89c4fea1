"""Checks shared by the TOML input files (dose scenario, CT protocol, patient-dose scenario).

:class:`Checks` binds the checks to one error class, so that each file raises its own
error type (``ScenarioError``, ``ProtocolError``) with the same wording: every message
names the section and key, e.g. ``"[tube] kvp must be > 0, got -1"``.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["Checks"]


class Checks:
    """Validation helpers raising ``error`` (a ``ValueError`` subclass)."""

    def __init__(self, error: type[ValueError]):
        self.error = error

    def load(self, path, what: str) -> tuple[dict, Path]:
        """Parse the TOML file ``path`` (``what`` names it in errors: "scenario file", ...)."""
        p = Path(path)
        if not p.is_file():
            raise self.error(f"{what} {str(p)!r} does not exist")
        try:
            with p.open("rb") as fh:
                return tomllib.load(fh), p
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise self.error(f"{what} {str(p)!r} is not valid TOML: {exc}") from None

    def read(self, path, what: str, parse: Callable[[dict, Path, Path], Any]) -> Any:
        """Load the TOML file ``path`` and return ``parse(data, its folder, path)``; errors name the file."""
        data, p = self.load(path, what)
        try:
            return parse(data, p.resolve().parent, p)
        except self.error as exc:
            raise self.error(f"{p.name}: {exc}") from None

    def number(self, sec: str, key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(f"[{sec}] {key} must be a finite number, got {v!r}")
        return float(v)

    def positive(self, sec: str, key: str, v: Any) -> float:
        x = self.number(sec, key, v)
        if x <= 0:
            raise self.error(f"[{sec}] {key} must be > 0, got {v!r}")
        return x

    def non_negative(self, sec: str, key: str, v: Any) -> float:
        x = self.number(sec, key, v)
        if x < 0:
            raise self.error(f"[{sec}] {key} must be >= 0, got {v!r}")
        return x

    def integer(self, sec: str, key: str, v: Any, minimum: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.error(f"[{sec}] {key} must be an integer >= {minimum}, got {v!r}")
        return v

    def table(self, data: Mapping, sec: str, required: bool = True) -> Mapping:
        t = data.get(sec)
        if t is None:
            if required:
                raise self.error(f"missing section [{sec}]")
            return {}
        if not isinstance(t, dict):
            raise self.error(f"[{sec}] must be a table (section), got {t!r}")
        return t

    def no_unknown(self, sec: str, table: Mapping, allowed) -> None:
        for k in table:
            if k not in allowed:
                raise self.error(f"[{sec}] unknown key {k!r} (valid keys: {', '.join(allowed)})")

    def require(self, sec: str, table: Mapping, key: str, hint: str = "") -> Any:
        if key not in table:
            raise self.error(f"[{sec}] missing key {key!r}{hint}")
        return table[key]
