"""The built-in synthetic patient: a CT angiogram with known truth, written to a folder.

The patient is a coronary-sized vessel (radius 2 mm by default) with an optional stenosis,
imaged as a CT angiogram (lumen ~400 HU over 40 HU tissue, scanner blur, noise) by
:func:`phantoms.vessels.make_angiogram`, so every result of the vessel path can be compared
with the truth it was made from. ``digipat synth``, ``digipat demo``, synthetic study base
cases, tests and benchmarks all write it through :func:`write_synthetic_patient`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phantoms.vessels import Stenosis, VesselGeometryError, make_angiogram
from physics.atomic import write_json
from pipeline.image import write_image

__all__ = ["SIZES", "write_synthetic_patient"]

#: Image sizes of the synthetic patient: name -> ((nz, ny, nx), (dz, dy, dx) in mm).
SIZES = {
    "small": ((64, 40, 40), (0.5, 0.5, 0.5)),
    "medium": ((100, 64, 64), (0.4, 0.4, 0.4)),
    "large": ((256, 256, 256), (0.25, 0.25, 0.25)),
}


def write_synthetic_patient(out: str | Path, *, geometry: str = "straight", stenosis: float = 0.5,
                            radius_mm: float = 2.0, seed: int = 0, size: str = "medium") -> dict[str, Any]:
    """Write ``image.nii.gz``, ``truth_lumen.nii.gz`` and ``patient.json`` into ``out``.

    Parameters
    ----------
    out : path
        Output folder (created). When it already holds the same patient (same request),
        the files are kept (and with them the hashes that downstream caches depend on).
    geometry : {"straight", "curved", "bifurcation"}
        Vessel shape.
    stenosis : float
        Area reduction of the stenosis in [0, 0.95); 0 for none. Its length is 3 radii.
    radius_mm : float
        Lumen radius in mm.
    seed : int
        Seed of the image noise.
    size : {"small", "medium", "large"}
        Image grid, see :data:`SIZES`.

    Returns
    -------
    dict
        The contents of ``patient.json``: file paths, the request, the generator's
        parameters, centrelines (world mm) and radii (mm).

    Raises
    ------
    VesselGeometryError
        For an unknown size or a stenosis outside [0, 0.95).
    """
    if size not in SIZES:
        raise VesselGeometryError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not 0.0 <= stenosis < 0.95:
        raise VesselGeometryError(f"stenosis (area reduction) must be in [0, 0.95), got {stenosis}")
    shape, spacing = SIZES[size]
    request = {"geometry": geometry, "size": size, "radius_mm": radius_mm,
               "stenosis_area_reduction": stenosis, "seed": seed}
    out = Path(out)
    previous = out / "patient.json"
    if previous.exists() and (out / "image.nii.gz").exists() and (out / "truth_lumen.nii.gz").exists():
        info = json.loads(previous.read_text())
        if all(info.get(k) == v for k, v in request.items()):
            return info
    sten = Stenosis(area_reduction=stenosis, length_mm=6.0 * radius_mm / 2.0, position=0.5,
                    eccentricity=0.3) if stenosis > 0 else None
    ang = make_angiogram(geometry, shape_zyx=shape, spacing_mm=spacing, radius_mm=radius_mm,
                         stenosis=sten, seed=seed)
    write_image(ang.image, out / "image.nii.gz")
    write_image(ang.lumen, out / "truth_lumen.nii.gz")
    info = {
        "image": str(out / "image.nii.gz"),
        "truth_lumen": str(out / "truth_lumen.nii.gz"),
        **request,
        "generator_params": ang.params,
        "centrelines_xyz_mm": [c.tolist() for c in ang.centrelines_xyz_mm],
        "radii_mm": [r.tolist() for r in ang.radii_mm],
    }
    write_json(out / "patient.json", info)
    return info
