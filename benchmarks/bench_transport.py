"""Histories per second of the Monte Carlo photon-transport engine: voxel patients against a water slab.

The baseline is measured in the same run: a 60 keV pencil beam into a 20 cm water slab (20
layers of 1 cm, 2 m wide; EGSnrc on these machines, one core: 6.9e5 /s). Then, each as a
helical CT scan (the packaged 120 kVp body protocol, ``workflows/data/protocol_example.toml``,
body bowtie, pitch 1, 40 mm collimation) over the trunk, organ doses only (``tally="labels"``):

* AAPM TG-195 Case 5's voxel torso (41.6 M voxels of 1 mm, half of them air, air world);
* the built-in adult male phantom (4 mm voxels);
* the built-in 5-year-old phantom (4 mm voxels).

For each case: histories/s on 1 and 2 threads (transport and source sampling; the run's
one-off set-up apart), the ratio to the water slab on as many threads (the goal: ≥ 1, a voxel
patient costs no more per history than a slab), and the 2-thread speed-up. The machine's
own parallel capacity is printed beside it: two independent 1-thread slab runs at the same
time (on a shared 2-vCPU machine two processes do not run twice as fast as one).

Last: the time to reach 1 % relative σ on the liver dose of an adult chest–abdomen–pelvis
scan on 2 threads, ``t(N) (σ_rel(N) / 0.01)²`` from a run of N histories.

Usage: ``python benchmarks/bench_transport.py [--histories N] [--liver-histories N] [--skip-case5]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from physics.transport import Material, PencilBeam, Settings, VoxelPhantom, run  # noqa: E402

WATER = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})
PROTOCOL = ROOT / "workflows" / "data" / "protocol_example.toml"


def slab_rate(histories: int, threads: int) -> float:
    ph = VoxelPhantom(np.zeros((20, 1, 1), np.int16), spacing_mm=(10, 2000, 2000))
    src = PencilBeam((0.0, 0.0, -50.0), (0.0, 0.0, 1.0), 60.0)
    run(ph, {0: WATER}, src, settings=Settings(1000, 1, threads=threads), tally="labels")  # compile
    r = run(ph, {0: WATER}, src, settings=Settings(histories // 4, 4, seed=1, threads=threads), tally="labels")
    return r.histories_per_second


def _two_processes(histories: int) -> float:
    """Combined rate of two 1-thread slab runs started together (the machine's parallel capacity)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_transport import slab_rate; "
            f"print(slab_rate({histories}, 1))")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def patient(kind: str):
    """(phantom, materials, protocol, labels by name) of a benchmark patient, scanned over its trunk."""
    from workflows.dose.protocol import read_protocol

    proto = read_protocol(PROTOCOL)
    if kind == "case5":
        from phantoms import tg195

        ph, mats = tg195.case5_phantom()
        dz = ph.spacing_mm[0] * float(np.asarray(ph.direction_xyz)[2, 2])
        z = [ph.origin_xyz_mm[2], ph.origin_xyz_mm[2] + (ph.shape[0] - 1) * dz]
        proto = dataclasses.replace(proto, z_start_mm=float(min(z)), z_end_mm=float(max(z)))
        return ph, mats, proto, {}
    from phantoms.stylized import build_reference_phantom

    ref = build_reference_phantom(kind, "male", 4.0)
    lab = np.asarray(ref.labels.array)
    mats = {k: Material(t.name, t.density_g_cm3, dict(t.mass_fractions)) for k, t in ref.materials()}
    ph = VoxelPhantom(lab, ref.labels.spacing_mm, ref.labels.origin_xyz_mm, ref.labels.direction_xyz,
                      world_material_id=0)
    proto = dataclasses.replace(proto, z_start_mm=0.0, z_end_mm=round(float(ref.body["trunk_height_cm"]) * 10, 1))
    names = {e.name: k for k, e in ref.organs.items()}
    return ph, mats, proto, names


def scan(ph, mats, proto, histories: int, threads: int, batches: int = 4):
    from workflows.dose.patient import run_scan

    run_scan(ph, mats, proto, {}, 2000, 2, 1, threads, tally="labels")  # compile, and the set-up cached
    t0 = time.perf_counter()
    res = run_scan(ph, mats, proto, {}, histories, batches, 1, threads, tally="labels")
    return res, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--histories", type=int, default=2_000_000)
    ap.add_argument("--liver-histories", type=int, default=4_000_000)
    ap.add_argument("--skip-case5", action="store_true")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()
    threads = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numba {numba.__version__}, max threads {numba.config.NUMBA_NUM_THREADS}")
    out: dict = {"slab": {th: slab_rate(args.histories, th) for th in threads}}
    slab = out["slab"]
    print("water slab (60 keV pencil, 20 cm): " + ", ".join(f"{th} thread(s) {r:.3g} /s" for th, r in slab.items())
          + (f"; speed-up {slab[2] / slab[1]:.2f}" if 2 in slab else "")
          + f"; 1 thread vs EGSnrc {slab[1] / 6.9e5:.2f}x")
    if 2 in slab:
        cap = _two_processes(args.histories)
        out["two_processes"] = cap
        print(f"machine: two 1-thread slab runs at once {cap:.3g} /s together, {cap / slab[1]:.2f}x one "
              "(the most two threads can give here)")
    cases = [("case5", "TG-195 Case 5 torso"), ("adult", "adult phantom, 4 mm"), ("5y", "5-year-old phantom, 4 mm")]
    for kind, label in cases:
        if kind == "case5" and args.skip_case5:
            continue
        try:
            ph, mats, proto, _ = patient(kind)
        except (FileNotFoundError, OSError) as exc:
            print(f"{label}: skipped ({exc})")
            continue
        rates = {th: scan(ph, mats, proto, args.histories, th)[0].histories_per_second for th in threads}
        out[kind] = rates
        parts = [f"{th} thread(s) {r:.3g} /s ({r / slab[th]:.2f} of the slab)" for th, r in rates.items()]
        sp = f"; speed-up {rates[2] / rates[1]:.2f}" if 2 in rates else ""
        print(f"{label}, helical 120 kVp: " + ", ".join(parts) + sp)
    # time to 1 % on the liver dose of an adult chest-abdomen-pelvis scan
    ph, mats, proto, names = patient("adult")
    res, wall = scan(ph, mats, proto, args.liver_histories, threads[-1], batches=10)
    row = next(r for r in res.label_table() if r["label"] == names["liver"])
    rel = row["dose_sigma_Gy_per_photon"] / row["dose_Gy_per_photon"]
    t1 = wall * (rel / 0.01) ** 2
    out["liver"] = {"histories": args.liver_histories, "sigma_rel": rel, "wall_s": wall, "time_to_1pct_s": t1}
    print(f"adult chest-abdomen-pelvis ({proto.z_end_mm - proto.z_start_mm:.0f} mm), {threads[-1]} thread(s): "
          f"liver σ {100 * rel:.2f} % after {args.liver_histories:.3g} photons in {wall:.1f} s -> "
          f"1 % in {t1:.1f} s ({args.liver_histories * (rel / 0.01) ** 2:.3g} photons)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
