"""Small helpers shared by the workflows: atomic JSON, hashing, provenance, stage caching.

Every stage of a workflow writes its artifacts under fixed names plus a stage record
``stages/<name>.json`` holding the hash of everything the stage depends on. A rerun with
the same inputs finds the record and its artifacts and skips the stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

SCHEMA_VERSION = "1.0"


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    with open(tmp, "w") as fh:
        json.dump(_finite(data), fh, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, p)
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    tmp.write_text(text)
    os.replace(tmp, p)
    return p


def _finite(obj):
    """Replace NaN/inf floats by None (strict JSON has no NaN); recurse into containers."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, or of every file below a folder (sorted by relative path)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def hash_params(*items: Any) -> str:
    """Stable SHA-256 of JSON-serialisable items."""
    text = json.dumps(items, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def versions() -> dict[str, str]:
    """Versions of the software that computed a result (for provenance)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("digipat", "numpy", "scipy", "scikit-image", "SimpleITK", "trimesh", "gmsh",
                 "meshio", "fenics-dolfinx", "dolfinx-solver-real", "petsc4py", "numba"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "versions": versions(),
        **extra,
    }


class Progress:
    """Prints ``[i/n] stage ... done in t s`` lines to stderr (quiet=True silences it)."""

    def __init__(self, n_stages: int, quiet: bool = False):
        self.n = n_stages
        self.i = 0
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def stage(self, name: str, fn: Callable[[], Any], *, skipped: bool = False) -> Any:
        self.i += 1
        prefix = f"[{self.i}/{self.n}] {name}"
        if skipped:
            self.say(f"{prefix}: up to date, skipped")
            return fn()
        self.say(f"{prefix} ...")
        t0 = time.perf_counter()
        out = fn()
        self.say(f"{prefix}: done in {time.perf_counter() - t0:.1f} s")
        return out


class StageCache:
    """Records of finished stages under ``out_dir/stages``: skip a stage whose inputs are unchanged."""

    def __init__(self, out_dir: Path, force: bool = False):
        self.dir = Path(out_dir) / "stages"
        self.force = force

    def done(self, name: str, key: str, artifacts: list[Path]) -> dict | None:
        """The stage's saved record if it finished with the same key and its artifacts exist."""
        rec = self.dir / f"{name}.json"
        if self.force or not rec.exists():
            return None
        try:
            data = json.loads(rec.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if data.get("key") != key or not all(Path(a).exists() for a in artifacts):
            return None
        return data

    def record(self, name: str, key: str, data: dict) -> None:
        write_json_atomic(self.dir / f"{name}.json", {"key": key, **data})

    def invalidate_from(self, names: list[str]) -> None:
        for n in names:
            (self.dir / f"{n}.json").unlink(missing_ok=True)
