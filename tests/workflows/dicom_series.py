"""Synthetic CT series written with pydicom, for the drift-monitoring tests (not a test module).

A series is ``shape = (z, y, x)`` slices of CT Image Storage, explicit VR little endian, 16-bit
unsigned stored values with ``RescaleSlope`` / ``RescaleIntercept``: air (−1000 HU) around a
body disk of radius ``0.35 x`` voxels whose HU are ``body_hu`` plus seeded Gaussian noise of
``noise_hu``; optionally a separate "couch" bar below the disk (``couch_hu``), which the body
mask must leave out. Load it from a test with :func:`load`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def load():
    """This module, imported by file path (the tests folders are not packages)."""
    spec = importlib.util.spec_from_file_location("dicom_series", Path(__file__))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def phantom_hu(shape=(4, 32, 32), *, body_hu=40.0, noise_hu=20.0, seed=0, couch_hu=None):
    """The HU volume (float64) and its body mask (the disk; the couch is not body)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    disk = (yy - (y - 1) / 2) ** 2 + (xx - (x - 1) / 2) ** 2 <= (0.35 * x) ** 2
    hu = np.full(shape, -1000.0) + rng.normal(0.0, 5.0, shape)
    body = np.broadcast_to(disk, shape)
    hu[body] = body_hu + rng.normal(0.0, noise_hu, int(body.sum()))
    if couch_hu is not None:
        hu[:, y - 2:, 2:x - 2] = couch_hu
    return hu, body.copy()


def write_ct_series(folder, *, manufacturer="ACME", model="Scan 1", kvp=120.0, kernel="B30f",
                    slice_thickness_mm=1.0, pixel_spacing_mm=(0.7, 0.7), body_hu=40.0, noise_hu=20.0,
                    seed=0, shape=(4, 32, 32), slope=1.0, intercept=-1024.0, couch_hu=None,
                    modality="CT", uid_tag="s", prefix=""):
    """Write one series into ``folder`` (one file per slice, ``<prefix>slice<k>.dcm``); returns the
    HU volume written (after rounding to stored integers), in slice-position order, and its body mask.

    ``manufacturer=None`` or ``kvp=None`` leaves that tag out. File ``k`` holds the slice at position
    ``z - 1 - k``: a reader that orders slices by file name gets them reversed."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu, body = phantom_hu(shape, body_hu=body_hu, noise_hu=noise_hu, seed=seed, couch_hu=couch_hu)
    stored = np.clip(np.round((hu - intercept) / slope), 0, 65535).astype(np.uint16)
    series_uid = generate_uid(entropy_srcs=[uid_tag, str(seed), "series"])
    study_uid = generate_uid(entropy_srcs=[uid_tag, str(seed), "study"])
    for k in range(shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_tag, str(seed), str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{prefix}slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.PatientID = f"SYN{seed:04d}"
        if manufacturer is not None:
            ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = model
        if kvp is not None:
            ds.KVP = f"{kvp:g}"
        ds.ConvolutionKernel = kernel
        ds.SliceThickness = f"{slice_thickness_mm:g}"
        ds.PixelSpacing = [f"{pixel_spacing_mm[0]:g}", f"{pixel_spacing_mm[1]:g}"]
        # slices written in reverse file order: the reader must sort by position, not by name
        ds.ImagePositionPatient = ["0", "0", f"{(shape[0] - 1 - k) * slice_thickness_mm:g}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.InstanceNumber = shape[0] - k
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = stored[shape[0] - 1 - k].tobytes()
        ds.save_as(folder / f"{prefix}slice{k:03d}.dcm", enforce_file_format=True)
    return stored.astype(np.float64) * slope + intercept, body


def default_levels(n, seed):
    """The body level (HU) of each of ``n`` scans of :func:`write_collection`: 40 + N(0, 10²), seeded."""
    return 40.0 + np.random.default_rng(seed).normal(0.0, 10.0, n)


def write_collection(root, manufacturers, *, body_hu=None, seed=0, uid_tag="c", **kw):
    """One series per entry of ``manufacturers`` under ``root/patient<i>/ct/``; body level of scan
    ``i`` is ``body_hu[i]`` (default :func:`default_levels`), its noise seed ``1000 seed + i``. The same
    ``seed`` with ``body_hu = default_levels(n, seed) + d`` (d a whole number of HU) writes the same
    scans with every body voxel ``d`` HU higher."""
    n = len(manufacturers)
    levels = body_hu if body_hu is not None else default_levels(n, seed)
    for i, man in enumerate(manufacturers):
        write_ct_series(Path(root) / f"patient{i:03d}" / "ct", manufacturer=man, model=f"{man} 64",
                        body_hu=float(levels[i]), seed=seed * 1000 + i, uid_tag=uid_tag, **kw)
    return Path(root)
