"""Plumbing shared by every workflow: atomic writes, input hashes, provenance, the result cache.

Every stage of a workflow writes its artifacts under fixed names plus a JSON record holding
``inputs_sha256``, the hash of everything the result depends on (:data:`HASH_KEY`). A rerun
asks :class:`ResultCache` whether the record exists, carries the same hash and its artifacts
are on disk; if so the stage is skipped. That class is the one place deciding "already
computed", for flow stages, dose runs, CTDI, patient doses and study cases alike. Files are
written through :mod:`physics.atomic` (temporary file in the target folder, fsync, rename).
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
from typing import Any, Callable, Iterable

from physics.atomic import write_json, write_text

__all__ = ["SCHEMA_VERSION", "HASH_KEY", "ResultCache", "StageCache", "Progress", "hash_file", "hash_params",
           "provenance", "versions", "write_json_atomic", "write_text_atomic"]

SCHEMA_VERSION = "1.0"

#: The key under which every result record stores the SHA-256 of its inputs.
HASH_KEY = "inputs_sha256"

#: Atomic writers (see :mod:`physics.atomic`), under the names the workflows use.
write_json_atomic = write_json
write_text_atomic = write_text


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


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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


class ResultCache:
    """One result record and the inputs hash it must carry: "is this already computed?".

    Parameters
    ----------
    path : path
        The JSON record (e.g. ``OUT/results.json``), written last, atomically.
    key : str
        SHA-256 of everything the result depends on (:func:`hash_params`, :func:`hash_file`).
    artifacts : iterable of paths
        Files that must exist beside the record for it to count (e.g. ``dose.nii.gz``).
    force : bool
        Never reuse: :meth:`load` returns ``None``.

    Use::

        cache = ResultCache(out / "results.json", key, artifacts=[out / "dose.nii.gz"], force=force)
        if (old := cache.load()) is not None:
            return old
        cache.invalidate()          # a failure below leaves no stale record behind
        ...                         # compute, write artifacts
        return cache.save(record)   # adds inputs_sha256, writes atomically
    """

    def __init__(self, path: str | os.PathLike, key: str, *, artifacts: Iterable[str | os.PathLike] = (),
                 force: bool = False):
        self.path = Path(path)
        self.key = key
        self.artifacts = [Path(a) for a in artifacts]
        self.force = force

    def load(self) -> dict | None:
        """The saved record if it was computed from the same inputs and its artifacts exist, else ``None``."""
        if self.force or not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or data.get(HASH_KEY) != self.key:
            return None
        if not all(a.exists() for a in self.artifacts):
            return None
        return data

    def invalidate(self) -> None:
        """Remove the record (call before recomputing, so a failed run leaves no stale result)."""
        self.path.unlink(missing_ok=True)

    def save(self, record: dict) -> dict:
        """Write ``record`` with :data:`HASH_KEY` set (atomically) and return it."""
        record[HASH_KEY] = self.key
        write_json(self.path, record)
        return record


class StageCache:
    """Records of finished stages under ``out_dir/stages/<name>.json`` (a :class:`ResultCache` each)."""

    def __init__(self, out_dir: Path, force: bool = False):
        self.dir = Path(out_dir) / "stages"
        self.force = force

    def _cache(self, name: str, key: str, artifacts=()) -> ResultCache:
        return ResultCache(self.dir / f"{name}.json", key, artifacts=artifacts, force=self.force)

    def done(self, name: str, key: str, artifacts: list[Path]) -> dict | None:
        """The stage's saved record if it finished with the same key and its artifacts exist."""
        return self._cache(name, key, artifacts).load()

    def record(self, name: str, key: str, data: dict) -> None:
        self._cache(name, key).save(dict(data))

    def invalidate_from(self, names: list[str]) -> None:
        for n in names:
            (self.dir / f"{n}.json").unlink(missing_ok=True)
