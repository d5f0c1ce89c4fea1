"""Mesh convergence of the pressure drop on the vessel path, with Richardson extrapolation.

The image is the benchmark's synthetic CT angiogram (``benchmarks/bench_vessel_flow.py``:
a straight 2 mm vessel with a 50 % area stenosis, ``--size large`` = 256³ voxels of
0.25 mm). The whole path (segmentation, surface, gmsh mesh, steady Stokes at 1 ml/s) runs
once per mesh resolution ``cells_per_radius`` (element size = local radius / that number;
default 3, 4, 5 and 6.5), and the script prints ΔP and the DOFs of each level.

Richardson extrapolation (Roache 1998, *Verification and Validation in Computational
Science and Engineering*; Celik et al. 2008, J. Fluids Eng. 130, 078001). On unstructured
meshes the representative cell size is h = N^(-1/3), N the number of DOFs. With ΔP(h) =
ΔP∞ + C h^p on three levels h1 > h2 > h3 the observed order p solves

    (ΔP1 − ΔP2) / (ΔP2 − ΔP3) = (h1^p − h2^p) / (h2^p − h3^p),

then C = (ΔP1 − ΔP2) / (h1^p − h2^p) and ΔP∞ = ΔP3 − C h3^p. The script uses the three
finest levels, and prints the three coarsest and a least-squares fit over all levels for
comparison (each level is remeshed, so ΔP carries some meshing noise and the observed order
moves between triplets: the spread of the three ΔP∞ is part of the answer). It reports how
far the default resolution (``VesselFlowConfig().cells_per_radius``) is from ΔP∞, and the
grid convergence index of the finest pair (safety factor 1.25).

Run: ``.venv/bin/python benchmarks/mesh_convergence.py`` (the 256³ image: several minutes
per fine level on 2 cores) or ``--size small`` (64 × 40 × 40 voxels of 0.5 mm, about a
minute in all) for a quick check. Writes ``OUT/mesh_convergence.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phantoms.synthetic_patient import SIZES, write_synthetic_patient  # noqa: E402
from workflows.common import write_json_atomic  # noqa: E402
from workflows.flow.vessel_flow import VesselFlowConfig, run_vessel_flow  # noqa: E402


def observed_order(h, f) -> tuple[float, float]:
    """Observed order p and extrapolated value from three levels ``h`` (coarse → fine) and ``f``.

    Returns (nan, nan) when the three values do not converge monotonically (no real p).
    """
    from scipy.optimize import brentq

    (h1, h2, h3), (f1, f2, f3) = h, f
    if (f1 - f2) * (f2 - f3) <= 0:
        return math.nan, math.nan
    ratio = (f1 - f2) / (f2 - f3)

    def g(p):
        return (h1 ** p - h2 ** p) / (h2 ** p - h3 ** p) - ratio

    lo, hi = 0.05, 12.0
    if g(lo) * g(hi) > 0:
        return math.nan, math.nan
    p = brentq(g, lo, hi, xtol=1e-12)
    c = (f1 - f2) / (h1 ** p - h2 ** p)
    return p, f3 - c * h3 ** p


def least_squares_order(h, f) -> tuple[float, float]:
    """Order p and limit of ΔP = ΔP∞ + C h^p fitted to every level by least squares (for each p
    the best ΔP∞ and C are linear; p minimises the residual on [0.5, 6]). (nan, nan) without
    at least 4 levels."""
    import numpy as np
    from scipy.optimize import minimize_scalar

    h, f = np.asarray(h, float), np.asarray(f, float)
    if h.size < 4:
        return math.nan, math.nan

    def fit(p):
        a = np.stack([np.ones_like(h), h ** p], axis=1)
        coef, *_ = np.linalg.lstsq(a, f, rcond=None)
        return coef, float(np.sum((a @ coef - f) ** 2))

    p = minimize_scalar(lambda q: fit(q)[1], bounds=(0.5, 6.0), method="bounded").x
    return float(p), float(fit(p)[0][0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="large", choices=sorted(SIZES),
                    help="synthetic image (default large: 256³, 0.25 mm, as bench_vessel_flow.py)")
    ap.add_argument("--cells-per-radius", type=float, nargs="+", default=[3.0, 4.0, 5.0, 6.5],
                    help="mesh resolutions, coarse to fine (at least 3)")
    ap.add_argument("--flow-rate-ml-s", type=float, default=1.0)
    ap.add_argument("--stenosis", type=float, default=0.5, help="area reduction (default 0.5)")
    ap.add_argument("--np", type=int, default=2, help="MPI ranks of the solve (default 2)")
    ap.add_argument("--solver", choices=("auto", "direct", "iterative"), default="auto",
                    help="auto: MUMPS up to the default resolution, MINRES + GAMG above (memory)")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "mesh_convergence"))
    a = ap.parse_args()
    cells = sorted(a.cells_per_radius)
    if len(cells) < 3:
        ap.error("--cells-per-radius needs at least 3 values")
    default_c = VesselFlowConfig().cells_per_radius
    out = Path(a.out)
    shape, spacing = SIZES[a.size]
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"image: synthetic straight vessel, r = 2 mm, {100 * a.stenosis:.0f} % stenosis, {a.size} "
          f"({shape[2]} x {shape[1]} x {shape[0]} voxels of {spacing[0]} mm); Stokes, {a.flow_rate_ml_s} ml/s, "
          f"{a.np} rank(s); default cells_per_radius = {default_c:g}")
    info = write_synthetic_patient(out / "patient", geometry="straight", stenosis=a.stenosis, size=a.size)

    rows = []
    for c in cells:
        solver = a.solver if a.solver != "auto" else ("direct" if c <= default_c else "iterative")
        cfg = VesselFlowConfig(flow_rate_ml_s=a.flow_rate_ml_s, model="stokes", cells_per_radius=c,
                               solver=solver, n_procs=a.np, write_fields=False)
        t0 = time.perf_counter()
        res = run_vessel_flow(info["image"], out / f"cells{c:g}", cfg, quiet=True)
        wall = time.perf_counter() - t0
        rows.append({"cells_per_radius": c, "n_dofs": int(res["n_dofs"]), "pressure_drop_Pa": res["pressure_drop_Pa"],
                     "solver": solver, "wall_s": round(wall, 1), "h": res["n_dofs"] ** (-1.0 / 3.0)})
        print(f"cells/radius {c:4g}: {res['n_dofs']:8d} DOFs  dP {res['pressure_drop_Pa']:.4f} Pa  "
              f"({solver}, {wall:.0f} s)", flush=True)

    h = [r["h"] for r in rows]
    f = [r["pressure_drop_Pa"] for r in rows]
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "size": a.size,
              "stenosis": a.stenosis, "flow_rate_ml_s": a.flow_rate_ml_s, "levels": rows,
              "default_cells_per_radius": default_c}
    p, f_inf = observed_order(h[-3:], f[-3:])
    p_c, f_inf_c = observed_order(h[:3], f[:3])
    p_ls, f_inf_ls = least_squares_order(h, f)
    report["richardson"] = {"levels": "three finest", "order": p, "pressure_drop_Pa": f_inf,
                            "coarsest_three": {"order": p_c, "pressure_drop_Pa": f_inf_c},
                            "least_squares_all": {"order": p_ls, "pressure_drop_Pa": f_inf_ls}}
    print(f"\nRichardson (h = DOFs^(-1/3)), three finest levels: observed order {p:.2f}, "
          f"dP extrapolated {f_inf:.4f} Pa")
    print(f"Richardson, three coarsest levels:                observed order {p_c:.2f}, "
          f"dP extrapolated {f_inf_c:.4f} Pa")
    if math.isfinite(p_ls):
        print(f"{f'least squares over all {len(rows)} levels:':50s}observed order {p_ls:.2f}, "
              f"dP extrapolated {f_inf_ls:.4f} Pa")
    spread = [v for v in (f_inf, f_inf_c, f_inf_ls) if math.isfinite(v)]
    d = [r for r in rows if r["cells_per_radius"] == default_c]
    if d and len(spread) > 1:
        dev = [d[0]["pressure_drop_Pa"] / v - 1 for v in spread]
        report["default_rel_to_extrapolated_range"] = [min(dev), max(dev)]
        print(f"default ({default_c:g} cells per radius) vs these extrapolations: {min(dev):+.2%} to {max(dev):+.2%}")
    if math.isfinite(p):
        r21 = h[-2] / h[-1]
        gci = 1.25 * abs(f[-1] / f[-2] - 1) / (r21 ** p - 1)
        report["richardson"]["gci_finest"] = gci
        print(f"grid convergence index of the finest level: {gci:.2%}")
        for r in rows:
            r["rel_to_extrapolated"] = r["pressure_drop_Pa"] / f_inf - 1
            print(f"  cells/radius {r['cells_per_radius']:4g}: {r['rel_to_extrapolated']:+.2%} from extrapolated")
        if d:
            report["default_rel_to_extrapolated"] = d[0]["rel_to_extrapolated"]
            print(f"default ({default_c:g} cells per radius): {d[0]['rel_to_extrapolated']:+.2%} from converged")
    else:
        print("the levels do not converge monotonically: no Richardson extrapolation")
    write_json_atomic(out / "mesh_convergence.json", report)
    print(f"written: {out / 'mesh_convergence.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
