"""Shared pytest fixtures for digipat.

Shared reference data (numbers from established codes: EGSnrc, the TG-195 four-code
means, published spectra) lives outside the repository, at ``<repo root>/../shared/reference``
(:data:`SHARED_REFERENCE`). In CI it is there and the tests that need it run; elsewhere
they skip with a message naming the missing path. Ask for it through the
``shared_reference`` fixture: ``shared_reference("tg195", "case5_materials.csv")``
returns the path or skips the test (or, from a module-scoped fixture, the module).
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# Numba: cache compiled kernels between test runs.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".venv", "numba_cache"))

# h5py before dolfinx in one process (see physics/flow/__init__.py)
import h5py  # noqa: E402,F401

#: Repository root (the parent of ``tests/``).
ROOT = Path(__file__).resolve().parents[1]
#: Folder of the shared reference data, relative to the repository root.
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"


def require_shared(*parts: str) -> Path:
    """Path of ``SHARED_REFERENCE/<parts>``; skips the calling test when it does not exist.

    The skip message names the missing path, so a run outside CI says what it did not check.
    """
    path = SHARED_REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared reference data not found: {path} (expected at <repository root>/../shared/reference; "
                    "present in CI)")
    return path


@pytest.fixture(scope="session")
def shared_reference():
    """:func:`require_shared`: call it with the path parts below ``shared/reference``."""
    return require_shared


def run_test_module_under_mpi(tmp_path: Path, script_template: str, test_file: str, *args: str,
                              n: int = 2) -> dict:
    """Run ``script_template`` (formatted with ``test_file``) under ``mpiexec -n n``; return its JSON output.

    The script gets the output path as ``sys.argv[1]`` (then ``args``) and writes JSON there on rank 0.
    """
    import json
    import subprocess
    import sys

    script = tmp_path / "run_under_mpi.py"
    script.write_text(script_template.format(test_file=str(Path(test_file).resolve())))
    out = tmp_path / "out.json"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([str(mpiexec), "-n", str(n), sys.executable, str(script), str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def run_under_mpi(tmp_path):
    """``run_under_mpi(script_template, test_file, *args, n=2)``: see :func:`run_test_module_under_mpi`."""
    return lambda template, test_file, *args, n=2: run_test_module_under_mpi(tmp_path, template, test_file, *args, n=n)


def _write_dicom_series(folder, vol, modality: str = "CT"):
    """Write a Volume as a DICOM series (one file per slice) with SimpleITK."""
    import SimpleITK as sitk

    from pipeline.image import to_sitk

    img = to_sitk(vol)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        sl.SetMetaData("0020|000e", series_uid)
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0008|0060", modality)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


@pytest.fixture
def write_dicom_series():
    """``write_dicom_series(folder, volume, modality="CT")``: a Volume as a DICOM series, one file per slice."""
    return _write_dicom_series


@pytest.fixture
def body_ct_protocol():
    """:func:`_body_ct_protocol`, for tests that write CT protocol files."""
    return _body_ct_protocol


def _body_ct_protocol(z_start_mm: float, z_end_mm: float) -> str:
    """A 120 kVp helical body protocol (body bowtie, 6 mm Al, 40 mm collimation, pitch 1, 200 mAs)
    over ``[z_start_mm, z_end_mm]``, as protocol TOML text."""
    return f"""
[scanner]
bowtie = "body"
[tube]
kvp = 120.0
filtration_mm = {{Al = 6.0}}
mAs_per_rotation = 200.0
[scan]
collimation_mm = 40.0
pitch = 1.0
z_start_mm = {z_start_mm}
z_end_mm = {z_end_mm}
"""
