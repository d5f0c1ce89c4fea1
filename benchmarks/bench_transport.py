"""Histories per second of the Monte Carlo photon-transport engine.

Cases (EGSnrc on these machines, one core: (a) 6.9e5 /s, (b) 4.5e5 /s; see
``reference/README.md``):

(a) 60 keV pencil beam into a 20 cm water slab (20 layers of 1 cm, 2 m wide);
(b) the same beam into a 31 × 31 × 20 cm water box of 1 cm voxels;
(c) AAPM TG-195 Case 5 (voxel torso, 41.6 M voxels of 1 mm, air world), 120 kVp,
    one projection (θ = 0°, AP), K fluorescence on.

Each case runs once to compile (Numba caches the kernel), then on 1 and 2 threads;
printed: histories/s (transport only, source sampling included) and the speed-up.

Usage: ``python benchmarks/bench_transport.py [--histories N] [--case5-histories N]``

Histories per second are for the computed batches (per-batch tally reduction included:
for Case 5 every batch sums and squares 41.6 M voxel tallies, so large batches are used).
"""

from __future__ import annotations

import argparse
import os
import platform

import numba
import numpy as np

from physics.transport import Material, PencilBeam, Settings, VoxelPhantom, run

EGSNRC = {"pencil, 20 cm water slab": 6.9e5, "pencil, 31x31x20 1 cm voxel box": 4.5e5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--histories", type=int, default=2_000_000)
    ap.add_argument("--case5-histories", type=int, default=2_000_000)
    args = ap.parse_args()
    water = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})
    cases = {
        "pencil, 20 cm water slab": VoxelPhantom(np.zeros((20, 1, 1), np.int16), spacing_mm=(10, 2000, 2000)),
        "pencil, 31x31x20 1 cm voxel box": VoxelPhantom(np.zeros((20, 31, 31), np.int16),
                                                         spacing_mm=(10, 10, 10), origin_xyz_mm=(-150, -150, 5)),
    }
    src = PencilBeam((0.0, 0.0, -50.0), (0.0, 0.0, 1.0), 60.0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numba {numba.__version__}, max threads {numba.config.NUMBA_NUM_THREADS}")
    for name, ph in cases.items():
        run(ph, {0: water}, src, settings=Settings(histories_per_batch=1000, n_batches=1))  # compile
        rates = {}
        for th in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            res = run(ph, {0: water}, src, settings=Settings(histories_per_batch=args.histories // 4,
                                                             n_batches=4, seed=1, threads=th))
            rates[th] = res.histories_per_second
        line = ", ".join(f"{th} thread(s): {r:.3g} hist/s" for th, r in rates.items())
        speedup = rates.get(2, float("nan")) / rates[1]
        print(f"{name}: {line}; speed-up {speedup:.2f}; 1 thread vs EGSnrc {rates[1] / EGSNRC[name]:.2f}x")
    try:
        from phantoms import tg195
        ph, mats = tg195.case5_phantom()
    except (FileNotFoundError, OSError) as exc:
        print(f"TG-195 Case 5 skipped: {exc}")
        return
    src = tg195.case5_source(tg195.spectrum("120 kVp"), [0.0])
    run(ph, mats, src, settings=Settings(histories_per_batch=1000, n_batches=1))  # compile
    rates = {}
    for th in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        res = run(ph, mats, src, settings=Settings(histories_per_batch=args.case5_histories // 2, n_batches=2,
                                                   seed=1, threads=th))
        rates[th] = res.histories_per_second
    line = ", ".join(f"{th} thread(s): {r:.3g} hist/s" for th, r in rates.items())
    print(f"TG-195 Case 5, 120 kVp, 1 projection: {line}; speed-up {rates.get(2, float('nan')) / rates[1]:.2f}; "
          f"1 thread vs EGSnrc 1 cm water box {rates[1] / 4.5e5:.2f}x")


if __name__ == "__main__":
    main()
