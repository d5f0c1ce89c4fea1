"""The photon-transport engine against EGSnrc: 60 keV pencil beam into 20 cm of water.

Reference: EGSnrc (egs++ tutor7pp, kerma mode), 1e7 histories, energy deposited in twenty
1 cm layers and the fractions of the incident energy deposited and leaving through the
front and back faces (``../shared/reference/egsnrc_water_slab_60keV_kerma.csv`` and its
README). This script runs the same problem with ``physics.transport`` and prints, per
layer, our value, the relative deviation, the combined 1σ (ours and EGSnrc's) and the
deviation in units of that σ, then the worst layer and the three energy fractions.

The checks that ``make validate`` applies to these numbers (same problem, seed 17) are in
``tests/physics/test_transport_engine.py::test_egsnrc_water_slab_full``: every layer within
3σ + 0.2 %, the three fractions within 0.1 % absolute. This script marks each line with them.

Usage::

    python benchmarks/validate_egsnrc_slab.py [--histories 1e7] [--seed 17]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from physics.transport import Material, PencilBeam, Settings, VoxelPhantom, run

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "egsnrc_water_slab_60keV_kerma.csv"
#: EGSnrc's energy balance (README of the reference folder): fraction of the incident energy.
EGSNRC_FRACTIONS = {"deposited": (0.68218, 0.0), "front (-z)": (0.24251, 0.00012), "back (+z)": (0.07531, 0.00008)}
WATER = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})  # EGSnrc's water


def run_slab(histories: int, seed: int, n_batches: int = 20):
    """Run the 20-layer water slab; returns (edep, sigma) in eV per photon and the result."""
    ph = VoxelPhantom(np.zeros((20, 1, 1), np.int16), spacing_mm=(10.0, 2000.0, 2000.0))
    src = PencilBeam((0.0, 0.0, -50.0), (0.0, 0.0, 1.0), 60.0)
    res = run(ph, {0: WATER}, src,
              settings=Settings(histories_per_batch=histories // n_batches, n_batches=n_batches, seed=seed))
    return res.edep_eV_per_photon.ravel(), res.edep_sigma_eV_per_photon.ravel(), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--histories", type=float, default=1e7)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    if not REFERENCE.is_file():
        raise SystemExit(f"EGSnrc reference not found: {REFERENCE}")
    ref = np.loadtxt(REFERENCE, delimiter=",", skiprows=1)
    r, rs = ref[:, 2] * 1e6, ref[:, 3] * 1e6
    t0 = time.perf_counter()
    m, s, res = run_slab(int(args.histories), args.seed)
    wall = time.perf_counter() - t0
    print(f"{res.histories:.3g} histories, seed {args.seed}, {wall:.1f} s on "
          f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)")
    dev = m / r - 1
    sig = np.hypot(s, rs) / r
    print(f"{'layer cm':>9} {'ours eV':>10} {'EGSnrc eV':>10} {'dev %':>7} {'sigma %':>8} {'dev/sigma':>9}  ok")
    for i in range(20):
        ok = "yes" if abs(dev[i]) <= 3 * sig[i] + 0.002 else "NO"
        print(f"{i:>4}-{i + 1:<4} {m[i]:10.3f} {r[i]:10.3f} {100 * dev[i]:+7.3f} {100 * sig[i]:8.3f} "
              f"{dev[i] / sig[i]:+9.2f}  {ok}")
    k = int(np.argmax(np.abs(dev)))
    z = dev / sig
    n_out = int(np.sum(np.abs(dev) > 3 * sig + 0.002))
    print(f"layers within 3 sigma + 0.2 %: {20 - n_out}/20")
    print(f"worst layer: {k}-{k + 1} cm, {100 * dev[k]:+.3f} % (combined 1 sigma {100 * sig[k]:.3f} %); "
          f"largest |dev|/sigma {np.max(np.abs(z)):.2f}; chi2/20 = {np.sum(z ** 2) / 20:.2f}")
    e0 = 60e3
    ours = {"deposited": (res.label_edep_eV_per_photon[0] / e0, res.label_edep_sigma_eV_per_photon[0] / e0),
            "front (-z)": tuple(v / e0 for v in res.escape("-z")),
            "back (+z)": tuple(v / e0 for v in res.escape("+z"))}
    for name, (v, sv) in ours.items():
        rv, rsv = EGSNRC_FRACTIONS[name]
        ok = "yes" if abs(v - rv) <= 0.001 else "NO"
        print(f"{name:<11} ours {v:.5f} ± {sv:.5f}  EGSnrc {rv:.5f}  "
              f"difference {100 * (v - rv):+.3f} % absolute  {ok}")
    print(f"energy balance error {res.energy_balance_error:.1e}")


if __name__ == "__main__":
    main()
