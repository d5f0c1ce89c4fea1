"""The one atomic file writer of digipat: a result is either whole on disk or absent.

Every file digipat produces (JSON records, text, arrays, images, meshes, figures, cached
cross-section tables, Monte Carlo batch tallies) goes through this module. It lives in
``physics`` because ``physics`` is the bottom layer: ``pipeline``, ``phantoms`` and
``workflows`` may import it, and it imports nothing of theirs.

The recipe (POSIX ``rename(2)`` is atomic within one file system):

1. write into a temporary name *in the target folder* (same file system), whose name ends
   with the target's own name so that writers which infer the format from the extension
   (SimpleITK, matplotlib, meshio) see the right one;
2. ``fsync`` the file, ``rename`` it onto the target, ``fsync`` the folder;
3. on any failure remove the temporary file and re-raise: nothing half-written is left.

Multi-file formats (``.mhd`` + ``.zraw``, a mesh written as several files) are written whole
with :func:`atomic_files`: the writer fills a temporary folder beside the targets, and every
file in it is moved into place, the one the others point at last.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_files", "write_bytes", "write_text", "write_json", "write_npz", "save_figure",
           "json_text", "to_jsonable"]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and folders on some platforms) refuse fsync
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give a new file (0666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The temporary name is ``.tmp-<random>-<name>`` in the target folder (created when
    missing), so the extension is kept. On an exception inside the ``with`` block the
    temporary file is removed and the exception propagates; ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_path(out / "segmentation.nii.gz") as tmp:   # doctest: +SKIP
    ...     sitk.WriteImage(img, str(tmp))
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{target.name}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer produced no file for {target}")
        _fsync_path(tmp)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files
        os.replace(tmp, target)
        _fsync_path(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_files(folder: str | os.PathLike, *, last: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; its files are moved into ``folder`` on success.

    Use it for formats that are several files (``.mhd`` header + ``.zraw`` data, a mesh and
    its side files): write them into the yielded folder under their final names. After the
    block every file is fsynced and renamed into ``folder`` in sorted order, ``last`` (e.g. the
    header that names the data file) at the end, so a reader never finds a header whose data
    is missing. On failure the temporary folder is removed and nothing is moved.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target))
    try:
        yield tmp
        files = sorted((f for f in tmp.iterdir() if f.is_file()), key=lambda f: (f.name == last, f.name))
        for f in files:
            _fsync_path(f)
        for f in files:
            os.replace(f, target / f.name)
        _fsync_path(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars/arrays and paths turned into JSON types and NaN/inf into ``None``.

    Strict JSON has no NaN: a quantity that could not be computed is written as ``null``.
    """
    import numpy as np

    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def json_text(data: Any) -> str:
    """``data`` as strict, indented JSON text (see :func:`to_jsonable`), ending in a newline.

    Raises ``TypeError`` for an object JSON cannot hold, before anything is written.
    """
    return json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as strict JSON atomically (serialised first: a bad object writes nothing)."""
    return write_text(path, json_text(data))


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kw: Any) -> Path:
    """Save a Matplotlib figure atomically (``fig.savefig`` on a temporary path); PNG unless ``format`` is given.

    The figure is not closed (the caller owns it).
    """
    savefig_kw.setdefault("format", Path(path).suffix.lstrip(".").lower() or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kw)
    return Path(path)


def write_npz(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> Path:
    """Write NumPy arrays to a ``.npz`` file atomically (``compressed`` uses ``savez_compressed``)."""
    import numpy as np

    save: Callable = np.savez_compressed if compressed else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: NumPy adds no 2nd ".npz"
        save(fh, **arrays)
    return Path(path)
