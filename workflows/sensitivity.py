"""Sensitivity analysis helpers: local elasticities d ln Q / d ln x with confidence intervals.

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

__all__ = ["elasticity"]


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
