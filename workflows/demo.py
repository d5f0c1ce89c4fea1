"""The built-in synthetic patient and the demo job (``digipat demo`` / ``make demo``).

The patient is a coronary-sized vessel (radius 2 mm) with a stenosis, imaged as a CT
angiogram (lumen ~400 HU over 40 HU tissue, scanner blur, noise) by
:func:`phantoms.vessels.make_angiogram`, so every result can be compared with known truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workflows._io import write_json_atomic
from workflows.vessel_flow import VesselFlowConfig, WorkflowError, run_vessel_flow

# image sizes of the synthetic patient: (shape z, y, x), spacing (dz, dy, dx) mm
SIZES = {
    "small": ((64, 40, 40), (0.5, 0.5, 0.5)),
    "medium": ((100, 64, 64), (0.4, 0.4, 0.4)),
    "large": ((256, 256, 256), (0.25, 0.25, 0.25)),
}


def write_synthetic_patient(out: Path, *, geometry: str = "straight", stenosis: float = 0.5,
                            radius_mm: float = 2.0, seed: int = 0, size: str = "medium") -> dict[str, Any]:
    """Write ``image.nii.gz``, ``truth_lumen.nii.gz`` and ``patient.json`` into ``out``."""
    from phantoms.vessels import Stenosis, make_angiogram
    from pipeline.image import write_image

    if size not in SIZES:
        raise WorkflowError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not 0.0 <= stenosis < 0.95:
        raise WorkflowError(f"stenosis (area reduction) must be in [0, 0.95), got {stenosis}")
    shape, spacing = SIZES[size]
    request = {"geometry": geometry, "size": size, "radius_mm": radius_mm,
               "stenosis_area_reduction": stenosis, "seed": seed}
    out = Path(out)
    previous = out / "patient.json"
    if previous.exists() and (out / "image.nii.gz").exists() and (out / "truth_lumen.nii.gz").exists():
        info = json.loads(previous.read_text())
        if all(info.get(k) == v for k, v in request.items()):
            return info  # same patient already written: keep the files (and their hashes)
    sten = Stenosis(area_reduction=stenosis, length_mm=6.0 * radius_mm / 2.0, position=0.5,
                    eccentricity=0.3) if stenosis > 0 else None
    ang = make_angiogram(geometry, shape_zyx=shape, spacing_mm=spacing, radius_mm=radius_mm,
                         stenosis=sten, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
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
    write_json_atomic(out / "patient.json", info)
    return info


def run_demo(out: Path, config: VesselFlowConfig | None = None, *, geometry: str = "straight",
             stenosis: float = 0.5, size: str = "medium", seed: int = 0, quiet: bool = False,
             force: bool = False) -> dict[str, Any]:
    """Synthetic patient → vessel flow. Writes ``out/patient/`` and ``out/flow/results.json``."""
    out = Path(out)
    info = write_synthetic_patient(out / "patient", geometry=geometry, stenosis=stenosis, seed=seed, size=size)
    extra = {k: info[k] for k in ("geometry", "size", "radius_mm", "stenosis_area_reduction", "seed")}
    return run_vessel_flow(info["image"], out / "flow", config or VesselFlowConfig(),
                           truth_path=info["truth_lumen"], quiet=quiet, force=force, extra=extra)
