"""The `Volume` type and all image reading and writing.

Conventions (the only place in digipat that converts to and from SimpleITK):

* ``Volume.array`` is indexed ``[k, j, i]`` = ``[z, y, x]`` (NumPy order, the last axis
  varies fastest in memory).
* ``Volume.spacing_mm`` is in the same array-axis order, ``(dz, dy, dx)`` in millimetres,
  so it can be passed straight to any ``spacing=`` argument of scikit-image / SciPy.
* World (physical, patient) coordinates are ``(x, y, z)`` in millimetres, in the LPS
  frame of DICOM / ITK. ``origin_xyz_mm`` is the world position of the centre of voxel
  ``[0, 0, 0]``; ``direction_xyz`` is the 3x3 ITK direction matrix whose *columns* are
  the world directions of increasing ``i`` (x index), ``j`` and ``k``.
* Points handed between stages (seed points, centrelines, surfaces, meshes) are world
  ``(x, y, z)`` in mm. ``index_to_world`` / ``world_to_index`` translate.

SimpleITK orders everything ``(x, y, z)``: ``GetSpacing()`` is ``(dx, dy, dz)`` and
``GetArrayFromImage`` returns ``[z, y, x]``. :func:`to_sitk` and :func:`from_sitk` are the one
place where that reversal happens (other modules call them, never SimpleITK's array functions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from physics.atomic import atomic_files

__all__ = ["Volume", "ImageError", "read_image", "write_image", "dicom_modality", "to_sitk", "from_sitk",
           "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


class ImageError(ValueError):
    """A file or array that cannot be used as an image (the message says why and what to do)."""


def _as_triplet(value, name: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=float).ravel()
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ImageError(f"{name} must be three finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass
class Volume:
    """A 3-D image: voxel array plus its placement in the world.

    Parameters
    ----------
    array : ndarray, shape (nz, ny, nx)
        Voxel values (HU for CT, integer labels for segmentations).
    spacing_mm : tuple of 3 floats
        Voxel size along the array axes, ``(dz, dy, dx)`` in mm.
    origin_xyz_mm : tuple of 3 floats
        World position (x, y, z) in mm of the centre of voxel ``[0, 0, 0]``.
    direction_xyz : ndarray, shape (3, 3)
        ITK direction cosines; column ``c`` is the world direction of index axis
        ``c`` in (i, j, k) = (x, y, z) order.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_xyz_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_xyz: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ImageError(
                f"a Volume needs a 3-D array (z, y, x); got {self.array.ndim}-D with shape "
                f"{self.array.shape}. A single slice or a 2-D image cannot be used: provide "
                "a 3-D volume (a DICOM series folder, NIfTI, NRRD or MHA)."
            )
        self.spacing_mm = _as_triplet(self.spacing_mm, "spacing_mm")
        if min(self.spacing_mm) <= 0:
            raise ImageError(f"spacing_mm must be positive, got {self.spacing_mm}")
        self.origin_xyz_mm = _as_triplet(self.origin_xyz_mm, "origin_xyz_mm")
        d = np.asarray(self.direction_xyz, dtype=float)
        if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ImageError(f"direction_xyz must be an orthonormal 3x3 matrix, got {d.tolist()}")
        self.direction_xyz = d

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous array index ``(k, j, i, 1)`` to world ``(x, y, z, 1)`` mm."""
        a = np.eye(4)
        dz, dy, dx = self.spacing_mm
        # world = origin + D @ diag(dx, dy, dz) @ (i, j, k); reorder columns to take (k, j, i)
        m = self.direction_xyz @ np.diag([dx, dy, dz])
        a[:3, :3] = m[:, ::-1]
        a[:3, 3] = self.origin_xyz_mm
        return a

    def index_to_world(self, index_zyx) -> np.ndarray:
        """World (x, y, z) mm of (possibly fractional) array indices, shape (..., 3) in (k, j, i)."""
        idx = np.asarray(index_zyx, dtype=float)
        a = self.affine
        return idx @ a[:3, :3].T + a[:3, 3]

    def world_to_index(self, xyz_mm) -> np.ndarray:
        """Fractional array index (k, j, i) of world points (x, y, z) mm, shape (..., 3)."""
        p = np.asarray(xyz_mm, dtype=float)
        a = self.affine
        return (p - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume on the same grid holding ``array`` (same shape required)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ImageError(f"array shape {array.shape} differs from the grid {self.array.shape}")
        return Volume(array, self.spacing_mm, self.origin_xyz_mm, self.direction_xyz.copy())

    def crop(self, lo, hi) -> "Volume":
        """The sub-volume of array indices ``lo`` to ``hi`` (exclusive, z y x; clipped to the grid), in place in the world."""
        lo = np.maximum(np.asarray(lo, dtype=int), 0)
        hi = np.minimum(np.asarray(hi, dtype=int), self.shape)
        if np.any(hi <= lo):
            raise ImageError(f"crop {lo.tolist()}..{hi.tolist()} is empty on the grid {self.shape}")
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        return Volume(self.array[sl], self.spacing_mm, tuple(self.index_to_world(lo.astype(float))),
                      self.direction_xyz.copy())

    def mask_box(self, margin_voxels: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Index bounds (lo, hi exclusive) of the non-zero voxels plus a margin, clipped to the grid."""
        idx = np.argwhere(np.asarray(self.array) != 0)
        if len(idx) == 0:
            raise ImageError("the volume has no non-zero voxel to bound")
        lo = np.maximum(idx.min(axis=0) - int(margin_voxels), 0)
        hi = np.minimum(idx.max(axis=0) + 1 + int(margin_voxels), self.shape)
        return lo, hi


# --------------------------------------------------------------------- SimpleITK
def to_sitk(vol: Volume):
    import SimpleITK as sitk

    arr = vol.array
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(reversed(vol.spacing_mm)))  # (dx, dy, dz)
    img.SetOrigin(vol.origin_xyz_mm)
    img.SetDirection(tuple(vol.direction_xyz.ravel()))
    return img


def from_sitk(img) -> Volume:
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise ImageError(
            f"expected a 3-D image, got {img.GetDimension()}-D with size {img.GetSize()}: "
            "provide a 3-D volume or a DICOM series folder with several slices"
        )
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    arr = sitk.GetArrayFromImage(img)
    return Volume(
        arr,
        spacing_mm=tuple(reversed(img.GetSpacing())),
        origin_xyz_mm=img.GetOrigin(),
        direction_xyz=np.asarray(img.GetDirection(), dtype=float).reshape(3, 3),
    )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUPPORTED_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _series_files(folder: Path) -> tuple[str, ...]:
    """The files of the DICOM series in ``folder`` with the most slices (empty when there is none)."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in ids), key=len, default=())


def read_image(path: str | os.PathLike, *, allow_singleton_axes: bool = False) -> Volume:
    """Read a 3-D image: NIfTI, NRRD, MHA/MHD, or a DICOM series (folder or one of its files).

    Parameters
    ----------
    path : path
        The file, or the folder of a DICOM series.
    allow_singleton_axes : bool
        Accept a 3-D grid with axes one voxel long (e.g. a 1 x 1 x 20 label map: a laterally
        infinite slab for dose, the textbook geometry). A CT image to segment needs three
        axes longer than one voxel, so the default refuses such grids as "2-D".

    Raises
    ------
    ImageError
        The path does not exist, cannot be read, or is not a 3-D scalar image.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise ImageError(f"image not found: {p} (check the path; DICOM series are given as a folder)")
    try:
        if p.is_dir():
            files = _series_files(p)
            if not files:
                raise ImageError(f"no DICOM series found in folder {p}")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(p))
    except ImageError:
        raise
    except RuntimeError as exc:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise ImageError(
            f"cannot read image {p}: {first}. Supported: {', '.join(SUPPORTED_SUFFIXES)} "
            "or a folder holding one DICOM series"
        ) from None
    if img.GetDimension() == 2 or (img.GetDimension() == 3 and min(img.GetSize()) == 1 and not allow_singleton_axes):
        raise ImageError(
            f"{p} is a 2-D image (size {img.GetSize()}); digipat needs a 3-D volume: give the "
            "folder of the whole DICOM series or a 3-D NIfTI/NRRD/MHA file"
        )
    return from_sitk(img)


def write_image(vol: Volume, path: str | os.PathLike) -> Path:
    """Write a Volume atomically (temporary file, then rename). Format from the suffix.

    DICOM output is not supported (write NIfTI, NRRD or MHA instead).
    """
    import SimpleITK as sitk

    p = Path(path)
    suffix = _suffix(p)
    if suffix not in (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"):
        raise ImageError(f"cannot write {p}: use one of .nii, .nii.gz, .nrrd, .mha")
    # Written whole: ``.mhd`` is a header plus a ``.zraw`` data file it names, so every
    # format is written into a temporary folder and moved into place, the header last.
    with atomic_files(p.parent, last=p.name) as tmp:
        sitk.WriteImage(to_sitk(vol), str(tmp / p.name), True)
    return p


def dicom_modality(path: str | os.PathLike) -> str | None:
    """The DICOM Modality tag (0008,0060) of an image file or series folder, as ``"ct"`` / ``"mr"``.

    ``None`` when the path is not DICOM, has no Modality tag, or holds another modality
    (the caller then falls back to the value range, see
    :func:`pipeline.segment.classical.detect_modality`).
    """
    import SimpleITK as sitk

    p = Path(path)
    try:
        if p.is_dir():  # the series read_image reads
            files = _series_files(p)
            if not files:
                return None
            first = files[0]
        else:
            first = str(p)
        reader = sitk.ImageFileReader()
        reader.SetFileName(first)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0008|0060"):
            return None
        value = reader.GetMetaData("0008|0060").strip().upper()
    except RuntimeError:
        return None
    return {"CT": "ct", "MR": "mr"}.get(value)
