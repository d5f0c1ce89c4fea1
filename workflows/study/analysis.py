"""Sensitivity analysis: designs (OAT, Morris, Sobol, Monte Carlo) and their analysis.

- :func:`elasticity`: local elasticity d ln Q / d ln x with a confidence interval;
- :func:`sample_design`: the input samples of a design (SALib for Morris and Sobol/Saltelli,
  a seeded generator for Monte Carlo);
- :func:`sobol_indices` (first-order and total Sobol indices, bootstrap intervals, Saltelli
  2010 / Jansen estimators through SALib), :func:`morris_indices` (μ*, σ; Campolongo 2007);
- :func:`tornado` (low/high swing of each input in an OAT sweep), :func:`distribution`
  (output percentiles), :func:`flip_probability` (how often a decision differs from the
  nominal one, with a Wilson score interval).

For a quantity of interest Q computed at several values of an input x (e.g. pressure drop
at radius r + δ), the local elasticity is the slope of ln Q against ln x. It is fitted by
least squares; its confidence interval uses Student's t with n − 2 degrees of freedom on
the residual scatter (which holds the numerical noise of the runs: remeshing, Monte Carlo
σ), and, where each Q has its own standard error, the propagated error is added in
quadrature. Hagen–Poiseuille at fixed flow gives ΔP ∝ r⁻⁴: elasticity −4.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["elasticity", "sample_design", "salib_problem", "sobol_indices", "morris_indices", "tornado",
           "distribution", "flip_probability", "wilson_interval"]


def elasticity(x: Sequence[float], q: Sequence[float], q_sigma: Sequence[float] | None = None,
               confidence: float = 0.95) -> dict:
    """Slope of ln q against ln x, with a confidence interval.

    Parameters
    ----------
    x, q : sequences of positive numbers (same length >= 2)
        Input values (e.g. mean radius in mm) and quantities of interest.
    q_sigma : sequence, optional
        1σ of each q (numerical uncertainty), propagated as σ_ln q = σ / q.
    confidence : float
        Two-sided confidence level of the interval (0 < c < 1).

    Returns
    -------
    dict
        ``elasticity``, ``ci_low``, ``ci_high``, ``standard_error``, ``intercept``,
        ``residual_rms`` (in ln q) and ``n``.
    """
    from scipy import stats

    x = np.asarray(x, float).ravel()
    q = np.asarray(q, float).ravel()
    if x.size != q.size or x.size < 2:
        raise ValueError(f"x and q must have the same length >= 2, got {x.size} and {q.size}")
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(q)) or np.any(x <= 0) or np.any(q <= 0):
        raise ValueError("x and q must be finite and > 0 (elasticities are slopes in log-log)")
    if np.ptp(x) == 0:
        raise ValueError("x must take at least two different values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    lx, lq = np.log(x), np.log(q)
    A = np.stack([lx, np.ones_like(lx)], axis=1)
    coef, *_ = np.linalg.lstsq(A, lq, rcond=None)
    slope, icpt = float(coef[0]), float(coef[1])
    resid = lq - A @ coef
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    n = x.size
    var = 0.0
    dof = n - 2
    if dof > 0:
        var += float(np.sum(resid ** 2)) / dof / sxx
    if q_sigma is not None:
        sl = np.asarray(q_sigma, float).ravel() / q
        w = (lx - lx.mean()) / sxx
        var += float(np.sum((w * sl) ** 2))
    se = math.sqrt(var)
    tq = stats.t.ppf(0.5 + confidence / 2, dof) if dof > 0 else stats.norm.ppf(0.5 + confidence / 2)
    return {"elasticity": slope, "ci_low": slope - tq * se, "ci_high": slope + tq * se, "standard_error": se,
            "intercept": icpt, "residual_rms": float(np.sqrt(np.mean(resid ** 2))), "n": int(n),
            "confidence": confidence}


# ----------------------------------------------------------------------------- designs
def salib_problem(parameters: Sequence[dict]) -> dict:
    """SALib problem dict from study parameters (``name``, ``low``, ``high``, ``distribution``,
    and for ``normal`` ``mean`` and ``sd``). Morris needs bounds: a normal input screens over
    mean ± 2 sd (``morris_bounds``)."""
    names, bounds, dists, mb = [], [], [], []
    for p in parameters:
        names.append(p["name"])
        if p.get("distribution", "uniform") == "normal":
            bounds.append([float(p["mean"]), float(p["sd"])])
            dists.append("norm")
            m, sd = float(p["mean"]), float(p["sd"])
            mb.append([float(p.get("low", m - 2 * sd)), float(p.get("high", m + 2 * sd))])
        else:
            bounds.append([float(p["low"]), float(p["high"])])
            dists.append("unif")
            mb.append([float(p["low"]), float(p["high"])])
    return {"num_vars": len(names), "names": names, "bounds": bounds, "dists": dists, "morris_bounds": mb}


def sample_design(kind: str, parameters: Sequence[dict], n: int, seed: int, *, levels: int = 4) -> np.ndarray:
    """Input samples, shape (rows, len(parameters)), reproducible from ``seed``.

    ``sobol``: Saltelli's scheme without second order, ``n (D + 2)`` rows (``n`` a power of 2);
    ``morris``: ``n`` trajectories of ``D + 1`` points on a ``levels`` grid;
    ``montecarlo``: ``n`` independent draws from each input's distribution.
    """
    prob = salib_problem(parameters)
    d = prob["num_vars"]
    if d < 1:
        raise ValueError("a design needs at least one parameter")
    if kind == "sobol":
        from SALib.sample import sobol as ssob

        if n < 2 or n & (n - 1):
            raise ValueError(f"a Sobol design needs n = a power of 2 (>= 2), got {n}")
        sp = {k: prob[k] for k in ("num_vars", "names", "bounds", "dists")}
        return np.asarray(ssob.sample(sp, n, calc_second_order=False, scramble=True, seed=seed), float)
    if kind == "morris":
        from SALib.sample import morris as smor

        if d < 2:
            raise ValueError("a Morris design needs at least 2 parameters (use oat for one)")
        mp = {"num_vars": d, "names": prob["names"], "bounds": prob["morris_bounds"]}
        return np.asarray(smor.sample(mp, n, num_levels=levels, seed=seed), float)
    if kind == "montecarlo":
        rng = np.random.default_rng(seed)
        cols = []
        for (a, b), dist in zip(prob["bounds"], prob["dists"]):
            cols.append(rng.normal(a, b, n) if dist == "norm" else rng.uniform(a, b, n))
        return np.stack(cols, axis=1)
    raise ValueError(f"unknown design {kind!r} (sobol, morris, montecarlo)")


# ----------------------------------------------------------------------------- analysis
def sobol_indices(parameters: Sequence[dict], y: Sequence[float], *, n_bootstrap: int = 200, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    """First-order (S1) and total (ST) Sobol indices with bootstrap confidence half-widths.

    ``y`` are the outputs at the rows of ``sample_design("sobol", ...)`` in that order.
    """
    from SALib.analyze import sobol as asob

    prob = salib_problem(parameters)
    sp = {k: prob[k] for k in ("num_vars", "names", "bounds", "dists")}
    y = np.asarray(y, float)
    if not np.all(np.isfinite(y)):
        raise ValueError("Sobol analysis needs a finite output for every case")
    if np.ptp(y) == 0:
        z = [0.0] * prob["num_vars"]
        return {"names": prob["names"], "S1": z, "S1_conf": z, "ST": z, "ST_conf": z, "confidence": confidence,
                "n_bootstrap": n_bootstrap, "note": "the output did not vary"}
    r = asob.analyze(sp, y, calc_second_order=False, num_resamples=n_bootstrap, conf_level=confidence, seed=seed)
    return {"names": prob["names"], **{k: [float(v) for v in r[k]] for k in ("S1", "S1_conf", "ST", "ST_conf")},
            "confidence": confidence, "n_bootstrap": n_bootstrap}


def morris_indices(parameters: Sequence[dict], x: np.ndarray, y: Sequence[float], *, levels: int = 4,
                   n_bootstrap: int = 200, seed: int = 0, confidence: float = 0.95) -> dict:
    """Morris elementary-effect screening: μ* (mean |effect|, with bootstrap CI) and σ.

    Effects are Δy / Δx on the design's grid; an integer input rounded off the grid gets its
    effects scaled by the nominal step (a known bias; give it ``levels = high − low + 1``).
    """
    from SALib.analyze import morris as amor

    prob = salib_problem(parameters)
    mp = {"num_vars": prob["num_vars"], "names": prob["names"], "bounds": prob["morris_bounds"]}
    r = amor.analyze(mp, np.asarray(x, float), np.asarray(y, float), num_resamples=n_bootstrap,
                     conf_level=confidence, num_levels=levels, seed=seed)
    return {"names": prob["names"], **{k: [float(v) for v in r[k]] for k in ("mu", "mu_star", "mu_star_conf", "sigma")},
            "confidence": confidence}


def tornado(q_nominal: float, sweeps: dict[str, Sequence[tuple[float, float]]]) -> list[dict]:
    """Low/high-end output of each input's one-at-a-time sweep, largest swing first.

    ``sweeps`` maps a parameter name to its ``(value, q)`` pairs (the nominal point may be
    among them). The low and high ends are the smallest and largest values swept.
    """
    rows = []
    for name, pts in sweeps.items():
        pts = sorted((float(v), float(q)) for v, q in pts)
        if len(pts) < 1:
            continue
        (lo, qlo), (hi, qhi) = pts[0], pts[-1]
        rows.append({"parameter": name, "low": lo, "high": hi, "q_low": qlo, "q_high": qhi,
                     "q_nominal": float(q_nominal), "swing": abs(qhi - qlo),
                     "change_low_percent": 100 * (qlo / q_nominal - 1) if q_nominal else float("nan"),
                     "change_high_percent": 100 * (qhi / q_nominal - 1) if q_nominal else float("nan")})
    rows.sort(key=lambda r: -r["swing"])
    return rows


def distribution(values: Sequence[float | None]) -> dict:
    """Mean, standard deviation and the 2.5/50/97.5 percentiles of sampled outputs.

    ``None`` or non-finite values are failed cases: they are left out of the statistics and
    counted in ``n_failed`` (the statistics then describe the cases that succeeded, which is
    biased when failures cluster at one end, e.g. narrowed geometries that do not converge).
    """
    v = np.asarray([np.nan if x is None else x for x in values], float)
    n_failed = int(np.sum(~np.isfinite(v)))
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite outputs to summarise")
    p = np.percentile(v, [2.5, 50, 97.5])
    return {"n": int(v.size), "n_failed": n_failed, "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "p2_5": float(p[0]), "p50": float(p[1]), "p97_5": float(p[2]), "min": float(v.min()),
            "max": float(v.max()), "values": [float(x) for x in v]}


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (Wilson 1927)."""
    from scipy import stats

    if n <= 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    ph = k / n
    den = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / den
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (max(0.0, c - h), min(1.0, c + h))


def flip_probability(values: Sequence[float | None], q_nominal: float, *, below: float | None = None,
                     rel_change: float | None = None, sigma: Sequence[float] | None = None,
                     confidence: float = 0.95) -> dict:
    """Probability that the decision differs from the nominal case's.

    Give ``below`` for a threshold decision (e.g. FFR-like ratio < 0.80 means significant):
    a case flips when its decision differs from the nominal one. Give ``rel_change`` for a
    change decision (e.g. an organ dose moving by more than 10 %): a case flips when
    ``|q / q_nominal − 1| > rel_change``. With ``sigma`` (numerical 1σ of each case's change,
    e.g. Monte Carlo), ``n_beyond_noise`` counts only flips more than 2σ past the threshold.

    Failed cases (``None`` or non-finite values) carry no decision. They are counted in
    ``n_failed`` and enter the interval conservatively: ``ci_low`` is the Wilson lower limit
    with every failed case counted as not flipped, ``ci_high`` the Wilson upper limit with every
    failed case counted as a flip, both over all ``n_total`` cases; ``probability`` is the
    point estimate over the ``n`` cases that succeeded, and ``probability_bounds`` the range
    from "no failed case flips" to "every failed case flips".
    """
    v = np.asarray([np.nan if x is None else x for x in values], float)
    if (below is None) == (rel_change is None):
        raise ValueError("give exactly one of below= or rel_change=")
    ok = np.isfinite(v)
    if sigma is not None:
        sigma = np.asarray(sigma, float)[ok]
    n_failed = int(np.sum(~ok))
    v = v[ok]
    if rel_change is not None and not (math.isfinite(q_nominal) and q_nominal != 0):
        raise ValueError(f"a relative-change decision needs a finite, non-zero nominal value, got {q_nominal!r}")
    if below is not None:
        nominal_decision = bool(q_nominal < below)
        flipped = (v < below) != nominal_decision
        margin = np.abs(v - below)
        rule = f"< {below:g}"
    else:
        nominal_decision = False
        change = np.abs(v / q_nominal - 1.0)
        flipped = change > rel_change
        margin = np.abs(change - rel_change) * abs(q_nominal)
        rule = f"|change| > {100 * rel_change:g} %"
    k, n = int(flipped.sum()), int(v.size)
    n_total = n + n_failed
    lo = wilson_interval(k, n_total, confidence)[0]
    hi = wilson_interval(k + n_failed, n_total, confidence)[1]
    out = {"rule": rule, "probability": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": n,
           "n_flipped": k, "n_failed": n_failed, "n_total": n_total,
           "probability_bounds": [k / n_total if n_total else float("nan"),
                                  (k + n_failed) / n_total if n_total else float("nan")],
           "nominal_decision": nominal_decision, "confidence": confidence}
    if sigma is not None:
        s = np.asarray(sigma, float)
        out["n_beyond_noise"] = int(np.sum(flipped & (margin > 2 * s)))
    return out
