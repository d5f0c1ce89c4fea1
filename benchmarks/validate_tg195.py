"""AAPM TG-195 CT validation (Cases 4.1, 4.2, 5) of the Monte Carlo engine, with a table.

Every value is compared with the mean of EGSnrc, Geant4, MCNP and PENELOPE
(``../shared/reference/tg195/``); a row passes when |deviation| ≤ tolerance + 3σ (our
Monte Carlo σ). Tolerances: 2 % (Case 4, Case 5 organs ≥ 100 cm³), 5 % (smaller organs),
at least twice the codes' own spread.

Usage::

    python benchmarks/validate_tg195.py [--case 4.1 4.2 5] [--h41 2e6] [--h42 2e7] [--h5 5e6] [--out DIR]

Writes ``DIR/tg195_validation.csv`` and ``.json`` (default ``bench_output/tg195``).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from phantoms import tg195


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="+", default=["4.1", "4.2", "5"], choices=["4.1", "4.2", "5"])
    ap.add_argument("--h41", type=float, default=2e6, help="histories per Case 4.1 configuration")
    ap.add_argument("--h42", type=float, default=2e7, help="histories per Case 4.2 configuration")
    ap.add_argument("--h5", type=float, default=1e7, help="histories per Case 5 projection")
    ap.add_argument("--out", default="bench_output/tg195")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, timing = [], {}
    geom = tg195.case4_phantom() if {"4.1", "4.2"} & set(args.case) else None
    if "4.1" in args.case:
        t = time.perf_counter()
        rows += tg195.run_case4_1(int(args.h41), geometry=geom)
        timing["4.1"] = time.perf_counter() - t
        print(f"Case 4.1 done in {timing['4.1']:.0f} s", flush=True)
    if "4.2" in args.case:
        t = time.perf_counter()
        rows += tg195.run_case4_2(int(args.h42), geometry=geom)
        timing["4.2"] = time.perf_counter() - t
        print(f"Case 4.2 done in {timing['4.2']:.0f} s", flush=True)
    if "5" in args.case:
        t = time.perf_counter()
        rows += tg195.run_case5(int(args.h5), progress=lambda s, a: print(f"  case 5 {s} {a}° done", flush=True))
        timing["5"] = time.perf_counter() - t
        print(f"Case 5 done in {timing['5']:.0f} s", flush=True)
    print(tg195.format_rows(rows))
    n_fail = sum(not r["pass"] for r in rows)
    print(f"{len(rows) - n_fail}/{len(rows)} within tolerance; timings (s): {timing}")
    with (out / "tg195_validation.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "tg195_validation.json").write_text(json.dumps({"rows": rows, "timing_s": timing,
                                                           "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
