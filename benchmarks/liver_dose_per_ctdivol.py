"""Liver dose per CTDIvol (32 cm phantom) of a CT scan over the liver, newborn to adult.

For each built-in stylised phantom (``phantoms/stylized.py``, male, ``--voxel-mm`` voxels)
the script runs ``digipat dose`` with a ``[source] type = "protocol"`` scenario
(``workflows/dose/patient.py``): the example body protocol
(``workflows/data/protocol_example.toml``: 120 kVp, 6 mm Al, body bowtie, 40 mm
collimation, pitch 1) without its tube-current modulation, the helical range set to the
phantom's liver (first to last slice holding liver voxels, rounded to mm). It prints the
liver dose per CTDIvol(32 cm) with its Monte Carlo σ (batch statistics; the CTDI run's σ
added in quadrature) for each age.

For comparison it also prints each phantom's water-equivalent size at the centre of the
liver (effective diameter √(AP × LAT) of the body outline, AAPM Report 204) and the size-
specific conversion factor of AAPM Report 204 for the 32 cm phantom,
f = 3.704369 exp(−0.03671937 D[cm]) (its exponential fit): an independent expectation of the
dose per CTDIvol at the centre of the scanned range, not of the organ dose (an organ at the
periphery or a partly covered one differs; so does a scan range shorter than the scatter
tails, which lowers the dose at its centre).

Run: ``.venv/bin/python benchmarks/liver_dose_per_ctdivol.py [--histories 2000000]``.
Writes ``OUT/liver_dose_per_ctdivol.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflows.common import write_json_atomic  # noqa: E402

AGES = ("newborn", "1y", "5y", "10y", "15y", "adult")
PROTOCOL = ROOT / "workflows" / "data" / "protocol_example.toml"


def liver_range_and_size(age: str, sex: str, voxel_mm: float) -> tuple[float, float, float]:
    """z range of the liver (mm, first and last slice centres holding liver) and the effective
    diameter √(AP × LAT) (cm) of the body outline on the slice at the liver's centre."""
    from phantoms.stylized import build_reference_phantom

    ph = build_reference_phantom(age, sex, voxel_mm)
    lab = np.asarray(ph.labels.array)
    k = np.nonzero(np.any(lab == ph.organ("liver").label, axis=(1, 2)))[0]
    dz, dy, dx = ph.labels.spacing_mm
    z0 = ph.labels.origin_xyz_mm[2]
    body = lab[(k.min() + k.max()) // 2] != 0  # label 0 is the air around the phantom
    ys, xs = np.nonzero(body)
    ap_mm = (ys.max() - ys.min() + 1) * dy
    lat_mm = (xs.max() - xs.min() + 1) * dx
    return float(z0 + k.min() * dz), float(z0 + k.max() * dz), math.sqrt(ap_mm * lat_mm) / 10.0


def main() -> int:
    from workflows.cli import main as digipat

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--histories", type=int, default=2_000_000, help="photons of each helical scan")
    ap.add_argument("--ctdi-histories", type=int, default=2_000_000, help="photons of each CTDI run")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--voxel-mm", type=float, default=5.0)
    ap.add_argument("--sex", default="male", choices=("male", "female"))
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--ages", nargs="+", default=list(AGES), choices=AGES)
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "liver_dose_per_ctdivol"))
    a = ap.parse_args()
    if a.histories % a.batches:
        ap.error("--histories must be a multiple of --batches")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"protocol: {PROTOCOL.name} without tube-current modulation, range = the liver; {a.sex} phantoms, "
          f"{a.voxel_mm:g} mm voxels; {a.histories:.2g} histories per scan, {a.ctdi_histories:.2g} per CTDI run")
    base = "\n".join(line for line in PROTOCOL.read_text().splitlines()
                     if not line.startswith("tube_current_modulation"))
    rows = []
    for age in a.ages:
        z0, z1, d_cm = liver_range_and_size(age, a.sex, a.voxel_mm)
        proto = out / f"protocol_{age}.toml"
        text = base.replace("z_start_mm = -150.0", f"z_start_mm = {round(z0)}.0")
        text = text.replace("z_end_mm = 150.0", f"z_end_mm = {round(z1)}.0")
        assert text != base, "protocol_example.toml's scan range lines changed: update this script"
        proto.write_text(text)
        scen = out / f"scenario_{age}.toml"
        scen.write_text(f'[phantom]\nbuiltin = "{age}"\nsex = "{a.sex}"\nvoxel_mm = {a.voxel_mm}\n'
                        f'[source]\ntype = "protocol"\nprotocol = "{proto.name}"\n'
                        f'[run]\nhistories = {a.histories}\nctdi_histories = {a.ctdi_histories}\n'
                        f'batches = {a.batches}\nseed = {a.seed}\n')
        t0 = time.perf_counter()
        if digipat(["dose", str(scen), "--out", str(out / age), "--quiet"]) != 0:
            return 1
        wall = time.perf_counter() - t0
        res = json.loads((out / age / "results.json").read_text())
        liver = {r["organ"]: r for r in res["organs"]}["liver"]
        ctdi = json.loads((out / age / "ctdi" / "ctdi.json").read_text())
        ratio = liver["dose_per_ctdivol"]
        rel_scan = liver["dose_per_ctdivol_sigma"] / ratio
        rel_ctdi = ctdi["ctdivol_sigma_Gy_per_photon"] / ctdi["ctdivol_Gy_per_photon"]
        sigma = ratio * math.hypot(rel_scan, rel_ctdi)
        ssde = 3.704369 * math.exp(-0.03671937 * d_cm)
        rows.append({"age": age, "z_start_mm": round(z0), "z_end_mm": round(z1), "effective_diameter_cm": d_cm,
                     "aapm204_factor_32cm": ssde, "liver_dose_per_ctdivol": ratio,
                     "liver_dose_per_ctdivol_sigma": sigma, "relative_sigma_scan": rel_scan,
                     "relative_sigma_ctdi": rel_ctdi, "ctdivol_mGy": res["ctdivol_mGy"], "wall_s": round(wall, 1)})
        print(f"{age:8s} liver z {round(z0):5d} .. {round(z1):5d} mm, D_eff {d_cm:5.1f} cm: liver dose / CTDIvol "
              f"{ratio:.3f} ± {sigma:.3f} (1σ; scan {rel_scan:.1%}, CTDI {rel_ctdi:.1%})   "
              f"AAPM 204 f(D_eff) {ssde:.2f}   ({wall:.0f} s)", flush=True)
    write_json_atomic(out / "liver_dose_per_ctdivol.json",
                      {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                       "histories": a.histories, "ctdi_histories": a.ctdi_histories, "voxel_mm": a.voxel_mm,
                       "sex": a.sex, "seed": a.seed, "rows": rows})
    print(f"written: {out / 'liver_dose_per_ctdivol.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
