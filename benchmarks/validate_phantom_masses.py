"""Organ and body masses of the stylised age phantoms against ICRP Publication 89.

For every age and sex this builds the reference phantom (``phantoms.stylized``), recomputes
each organ's mass from the label map (voxel count × voxel volume × the density the dose
engine gets) and compares it with ICRP 89, read straight from
``phantoms/data/icrp89_organ_masses.csv``. The organ sizes were fitted to these values, so
the organ columns verify the fit and its voxelisation; the body mass is not fitted directly
(the trunk width is, with skin at tissue density, before skin is density-scaled).

Prints one line per phantom (organs checked, worst organ, body mass) and the overall worst.
The same checks, with their tolerances (organs 2 %, body 3.5 %), are
``tests/phantoms/test_stylized.py::test_organ_masses_within_2_percent_of_icrp89`` and
``::test_body_mass_and_height_match_icrp89``.

Usage::

    python benchmarks/validate_phantom_masses.py [--voxel-mm MM]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from phantoms import stylized as S
from phantoms.tissues import AGES, SEXES, organ_masses

#: label name -> ICRP 89 keys summed for its reference
KEYS = {"cortical_bone": ("bone_cortical", "bone_trabecular"), "red_marrow": ("marrow_active",),
        "yellow_marrow": ("marrow_inactive",), "heart_wall": ("heart_tissue",), "oesophagus": ("oesophagus_wall",)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel-mm", type=float, default=None, help="voxel size (default: the builder's per age)")
    args = ap.parse_args()
    worst_organ, worst_body = (0.0, ""), (0.0, "")
    print(f"{'phantom':<14} {'voxel':>5} {'organs':>6}  {'worst organ':<26} {'dev %':>7}  {'body kg':>8} "
          f"{'ICRP kg':>7} {'dev %':>7} {'build s':>7}")
    for age in AGES:
        for sex in SEXES:
            t0 = time.perf_counter()
            ph = S.build_reference_phantom(age, sex, args.voxel_mm)
            dt = time.perf_counter() - t0
            ref = organ_masses(age, sex)  # ICRP 89 (phantoms/data/icrp89_organ_masses.csv)
            counts = np.bincount(ph.labels.array.ravel(), minlength=max(S.LABELS) + 1)
            dens = dict((k, t.density_g_cm3) for k, t in ph.materials())
            v_cm3 = ph.voxel_mm ** 3 / 1000.0
            masses = {d.name: counts[k] * v_cm3 * dens[k] for k, d in S.LABELS.items() if k != 0 and counts[k]}
            dev = {}
            for name, m in masses.items():
                if name in S.EXCLUDED_FROM_MASS_CHECK:
                    continue
                if name == "heart_contents":
                    r = ref["heart_with_blood"] - ref["heart_tissue"]
                else:
                    keys = KEYS.get(name, (name,))
                    if not all(k in ref for k in keys):
                        continue
                    r = sum(ref[k] for k in keys)
                if r > 0:
                    dev[name] = m / r - 1
            name = max(dev, key=lambda n: abs(dev[n]))
            body = sum(masses.values())
            body_dev = body / ref["total_body"] - 1
            print(f"{age + ' ' + sex:<14} {ph.voxel_mm:5.1f} {len(dev):6d}  {name:<26} {100 * dev[name]:+7.2f}  "
                  f"{body / 1000:8.2f} {ref['total_body'] / 1000:7.1f} {100 * body_dev:+7.2f} {dt:7.1f}")
            if abs(dev[name]) > abs(worst_organ[0]):
                worst_organ = (dev[name], f"{age} {sex} {name}")
            if abs(body_dev) > abs(worst_body[0]):
                worst_body = (body_dev, f"{age} {sex}")
    print(f"worst organ: {100 * worst_organ[0]:+.2f} % ({worst_organ[1]}); "
          f"worst body mass: {100 * worst_body[0]:+.2f} % ({worst_body[1]})")


if __name__ == "__main__":
    main()
