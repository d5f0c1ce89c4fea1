"""Agreement between methods or raters measuring the same quantity: Bland–Altman limits, ICC, Lin's CCC.

What it is for: is an automatic measurement (a thickness, a distance, a volume) interchangeable
with the manual one, and how consistent are raters? Input is a table of ``n`` subjects (rows)
by ``k`` methods or raters (columns), as a NumPy array or read from a CSV file
(:func:`read_table`).

Bland–Altman limits of agreement (Bland & Altman, *Lancet* 327 (1986) 307–310, section 5;
*Stat. Methods Med. Res.* 8 (1999) 135–160)
    ``d_i = a_i − b_i`` (first method minus second); bias ``d̄``; ``s`` the SD of the ``d_i``
    (divisor ``n − 1``); limits ``d̄ ± z s`` with ``z = 1.96`` (the 1986 paper used 2). The
    approximate 95 % confidence intervals use ``t``, the ``(1 + c)/2`` quantile of Student's t
    with ``n − 1`` degrees of freedom: ``d̄ ± t s/√n`` for the bias and
    ``limit ± t √(3 s²/n)`` for each limit. The percentage variant uses
    ``d_i = 100 (a_i − b_i) / ((a_i + b_i)/2)`` (Bland & Altman 1999, section 3.2).

Intraclass correlation (Shrout & Fleiss, *Psychol. Bull.* 86 (1979) 420–428; McGraw & Wong,
*Psychol. Methods* 1 (1996) 30–46)
    From the two-way ANOVA of the table: ``MSR`` (subjects, ``n − 1`` d.f.), ``MSC`` (raters,
    ``k − 1``), ``MSE`` (residual, ``(n − 1)(k − 1)``) and the one-way within-subject ``MSW``
    (``n (k − 1)``):

    * ICC(1,1) = (MSR − MSW) / (MSR + (k − 1) MSW)               one-way random
    * ICC(2,1) = (MSR − MSE) / (MSR + (k − 1) MSE + k (MSC − MSE)/n)
      two-way random, absolute agreement, single rater (McGraw & Wong's ICC(A,1))
    * ICC(3,1) = (MSR − MSE) / (MSR + (k − 1) MSE)
      two-way mixed, consistency, single rater (McGraw & Wong's ICC(C,1))
    * ICC(1,k), ICC(2,k), ICC(3,k): the same for the mean of the ``k`` raters.

    Confidence intervals are F-based: for ICC(1,·) and ICC(3,·) from ``F = MSR/MSW`` or
    ``MSR/MSE`` divided and multiplied by the F quantiles (Shrout & Fleiss, eqs. 6–7 and
    12–13); for ICC(2,1) with Satterthwaite's degrees of freedom ``ν`` (Shrout & Fleiss,
    eqs. 10–11; McGraw & Wong Table 7, case 2A). Average-rater bounds are the single-rater
    bounds stepped up by Spearman–Brown where Shrout & Fleiss do so (ICC(2,k)).

Concordance correlation (Lin, *Biometrics* 45 (1989) 255–268; correction 56 (2000) 324–325)
    ``ρc = 2 s_xy / (s_x² + s_y² + (x̄ − ȳ)²)`` with moments over ``n`` (not ``n − 1``).
    The confidence interval is on Fisher's ``z = atanh ρc`` with
    ``var z = [ (1 − r²) ρc² / ((1 − ρc²) r²) + 2 ρc³ (1 − ρc) u² / (r (1 − ρc²)²)
    − ρc⁴ u⁴ / (2 r² (1 − ρc²)²) ] / (n − 2)``, ``r`` Pearson's correlation and
    ``u = (x̄ − ȳ)/√(s_x s_y)``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["AgreementError", "BlandAltmanResult", "ICCResult", "CCCResult", "ICC_FORMS", "bland_altman",
           "two_way_anova", "intraclass_correlation", "concordance_correlation", "read_table", "Z95"]

#: The six Shrout & Fleiss forms (model, unit) that :func:`intraclass_correlation` computes.
ICC_FORMS = ("1,1", "2,1", "3,1", "1,k", "2,k", "3,k")

_ICC_DESCRIPTION = {
    "1,1": "one-way random effects, absolute agreement, single rater",
    "2,1": "two-way random effects, absolute agreement, single rater",
    "3,1": "two-way mixed effects, consistency, single rater",
    "1,k": "one-way random effects, absolute agreement, mean of k raters",
    "2,k": "two-way random effects, absolute agreement, mean of k raters",
    "3,k": "two-way mixed effects, consistency, mean of k raters",
}

#: 1.96: the two-sided 95 % normal quantile used for the limits of agreement.
Z95 = 1.959963984540054


class AgreementError(ValueError):
    """A table or parameter the agreement statistics cannot use (the message says which and why)."""


# --------------------------------------------------------------------------- validation
def _confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise AgreementError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    return c


def _vector(x, name: str, min_n: int) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise AgreementError(f"{name} must be numbers, got {x!r:.80}") from None
    if v.ndim != 1:
        raise AgreementError(f"{name} must be one measurement per subject (1-D), got shape {v.shape}")
    if v.size < min_n:
        raise AgreementError(f"{name} has {v.size} values; at least {min_n} subjects are needed")
    if not np.all(np.isfinite(v)):
        bad = np.flatnonzero(~np.isfinite(v))[:5].tolist()
        raise AgreementError(f"{name} has missing or non-finite values at rows {bad} (0-based): drop those subjects")
    return v


def _pair(a, b, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(a, "a", min_n), _vector(b, "b", min_n)
    if a.shape != b.shape:
        raise AgreementError(f"a has {a.size} values but b has {b.size}: give one pair per subject")
    return a, b


def _table(table, min_rows: int = 2) -> np.ndarray:
    try:
        t = np.asarray(table, dtype=float)
    except (TypeError, ValueError):
        raise AgreementError("the table must hold numbers (n subjects x k raters)") from None
    if t.ndim != 2:
        raise AgreementError(f"the table must be 2-D (n subjects x k raters), got shape {t.shape}")
    n, k = t.shape
    if k < 2:
        raise AgreementError(f"the table has {k} column(s); at least 2 raters or methods are needed")
    if n < min_rows:
        raise AgreementError(f"the table has {n} row(s); at least {min_rows} subjects are needed")
    if not np.all(np.isfinite(t)):
        rows = sorted(set(np.argwhere(~np.isfinite(t))[:, 0].tolist()))[:5]
        raise AgreementError(f"the table has missing or non-finite values in rows {rows} (0-based): "
                             "drop those subjects (ICC needs a complete table)")
    return t


# --------------------------------------------------------------------------- Bland–Altman
@dataclass
class BlandAltmanResult:
    """Bland–Altman limits of agreement of method ``a`` against ``b`` (differences ``a − b``).

    Units are those of the measurements (percent of the pair's mean if ``percent``).
    ``*_ci`` are ``(lower, upper)`` confidence intervals at ``confidence``.
    """

    n: int
    bias: float
    sd: float
    lower_limit: float
    upper_limit: float
    bias_ci: tuple
    lower_limit_ci: tuple
    upper_limit_ci: tuple
    se_bias: float
    se_limit: float
    t_quantile: float
    multiplier: float
    confidence: float
    percent: bool
    means: np.ndarray = field(repr=False)
    differences: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """Plain-Python dict of the statistics (without the per-subject arrays)."""
        return {
            "n": self.n, "bias": self.bias, "sd": self.sd,
            "lower_limit": self.lower_limit, "upper_limit": self.upper_limit,
            "bias_ci": list(self.bias_ci), "lower_limit_ci": list(self.lower_limit_ci),
            "upper_limit_ci": list(self.upper_limit_ci), "se_bias": self.se_bias, "se_limit": self.se_limit,
            "t_quantile": self.t_quantile, "multiplier": self.multiplier, "confidence": self.confidence,
            "percent": self.percent,
            "difference": "100 (a - b) / mean(a, b)" if self.percent else "a - b",
        }


def bland_altman(a, b, *, percent: bool = False, multiplier: float = Z95, confidence: float = 0.95
                 ) -> BlandAltmanResult:
    """Bias and limits of agreement of two methods, with their confidence intervals.

    Parameters
    ----------
    a, b : sequence of float, length n >= 2
        The two methods' measurements of the same ``n`` subjects (same units).
    percent : bool
        Use percentage differences ``100 (a − b) / ((a + b)/2)`` (when the spread of the
        differences grows with the size of the measurement). Every pair's mean must be non-zero.
    multiplier : float
        SDs from the bias to each limit: 1.96 (default) or 2 as in Bland & Altman (1986).
    confidence : float
        Level of the confidence intervals (default 0.95).

    Returns
    -------
    BlandAltmanResult
        ``bias``, ``sd``, the limits and their confidence intervals (see the module docstring
        for the formulas), plus the per-subject ``means`` and ``differences`` for a plot.
    """
    from scipy import stats

    x, y = _pair(a, b, 2)
    c = _confidence(confidence)
    if not (math.isfinite(multiplier) and multiplier > 0):
        raise AgreementError(f"multiplier must be a positive number of SDs (1.96 or 2), got {multiplier!r}")
    means = (x + y) / 2.0
    if percent:
        if np.any(means == 0):
            raise AgreementError("percentage differences need every pair's mean to be non-zero; "
                                 f"rows {np.flatnonzero(means == 0)[:5].tolist()} have mean 0")
        d = 100.0 * (x - y) / means
    else:
        d = x - y
    n = int(d.size)
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    t = float(stats.t.ppf(0.5 + c / 2.0, n - 1))
    se_bias = sd / math.sqrt(n)
    se_limit = math.sqrt(3.0 * sd * sd / n)
    lo, hi = bias - multiplier * sd, bias + multiplier * sd
    return BlandAltmanResult(
        n=n, bias=bias, sd=sd, lower_limit=lo, upper_limit=hi,
        bias_ci=(bias - t * se_bias, bias + t * se_bias),
        lower_limit_ci=(lo - t * se_limit, lo + t * se_limit),
        upper_limit_ci=(hi - t * se_limit, hi + t * se_limit),
        se_bias=se_bias, se_limit=se_limit, t_quantile=t, multiplier=float(multiplier), confidence=c,
        percent=bool(percent), means=means, differences=d,
    )


# --------------------------------------------------------------------------- ICC
def two_way_anova(table) -> dict:
    """Mean squares of the two-way ANOVA without replication of an ``n x k`` table.

    Returns
    -------
    dict
        ``n``, ``k``, ``ms_rows`` (between subjects, Shrout & Fleiss's BMS), ``ms_cols``
        (between raters, JMS), ``ms_error`` (residual, EMS), ``ms_within`` (one-way within
        subjects, WMS), and the degrees of freedom ``df_rows``, ``df_cols``, ``df_error``,
        ``df_within``.
    """
    t = _table(table)
    n, k = t.shape
    grand = t.mean()
    ss_rows = k * float(((t.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((t.mean(axis=0) - grand) ** 2).sum())
    ss_total = float(((t - grand) ** 2).sum())
    ss_error = max(ss_total - ss_rows - ss_cols, 0.0)
    return {
        "n": n, "k": k,
        "ms_rows": ss_rows / (n - 1), "ms_cols": ss_cols / (k - 1),
        "ms_error": ss_error / ((n - 1) * (k - 1)), "ms_within": (ss_cols + ss_error) / (n * (k - 1)),
        "df_rows": n - 1, "df_cols": k - 1, "df_error": (n - 1) * (k - 1), "df_within": n * (k - 1),
    }


@dataclass
class ICCResult:
    """An intraclass correlation with its F test and confidence interval (Shrout & Fleiss 1979)."""

    form: str
    description: str
    value: float
    ci_lower: float
    ci_upper: float
    confidence: float
    f_value: float
    df1: float
    df2: float
    p_value: float
    n_subjects: int
    k_raters: int

    def to_dict(self) -> dict:
        """Plain-Python dict, the form written as ``ICC(2,1)``."""
        return {"form": f"ICC({self.form})", "description": self.description, "value": self.value,
                "ci": [self.ci_lower, self.ci_upper], "confidence": self.confidence, "f_value": self.f_value,
                "df1": self.df1, "df2": self.df2, "p_value": self.p_value, "n_subjects": self.n_subjects,
                "k_raters": self.k_raters}


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def intraclass_correlation(table, form: str = "2,1", *, confidence: float = 0.95) -> ICCResult:
    """Intraclass correlation ICC(model, unit) of an ``n x k`` table with its F-based CI.

    Parameters
    ----------
    table : array-like, shape (n, k), n >= 2, k >= 2
        Rows are subjects, columns raters or methods; complete (no missing values).
    form : str
        One of ``"1,1"``, ``"2,1"``, ``"3,1"``, ``"1,k"``, ``"2,k"``, ``"3,k"`` (also accepted
        written as ``"ICC(2,1)"``). ``"2,1"``: two-way random, absolute agreement, single rater;
        ``"3,1"``: two-way mixed, consistency, single rater.
    confidence : float
        Level of the interval (default 0.95).

    Returns
    -------
    ICCResult
        The value (``nan`` when its denominator is 0, e.g. every rating equal), the F
        statistic, its degrees of freedom and one-sided p-value (H0: ICC = 0), and the interval.
    """
    from scipy import stats

    key = str(form).upper().replace("ICC", "").replace("(", "").replace(")", "").replace(" ", "").replace("K", "k")
    if key not in ICC_FORMS:
        raise AgreementError(f"form must be one of {', '.join(ICC_FORMS)} (Shrout & Fleiss model,unit); "
                             f"got {form!r}")
    c = _confidence(confidence)
    a = two_way_anova(table)
    n, k = a["n"], a["k"]
    msr, msc, mse, msw = a["ms_rows"], a["ms_cols"], a["ms_error"], a["ms_within"]
    q = 0.5 + c / 2.0
    model, unit = key.split(",")

    if model == "1":
        f, df1, df2 = _ratio(msr, msw), n - 1, n * (k - 1)
    else:
        f, df1, df2 = _ratio(msr, mse), n - 1, (n - 1) * (k - 1)
    p = float(stats.f.sf(f, df1, df2)) if math.isfinite(f) else float("nan")
    fl = f / stats.f.ppf(q, df1, df2)  # lower and upper F bounds (Shrout & Fleiss eqs. 6-7, 12-13)
    fu = f * stats.f.ppf(q, df2, df1)

    if model == "1":
        value = _ratio(msr - msw, msr + (k - 1) * msw) if unit == "1" else _ratio(msr - msw, msr)
    elif model == "3":
        value = _ratio(msr - mse, msr + (k - 1) * mse) if unit == "1" else _ratio(msr - mse, msr)
    else:
        value = (_ratio(msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n) if unit == "1"
                 else _ratio(msr - mse, msr + (msc - mse) / n))

    if model in ("1", "3"):
        if unit == "1":
            lo, hi = (fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1)
        else:
            lo, hi = 1 - 1 / fl, 1 - 1 / fu
    else:
        # Satterthwaite's degrees of freedom of the denominator (Shrout & Fleiss eq. 11), from ICC(2,1)
        rho = _ratio(msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n)
        fj = _ratio(msc, mse)
        nu = ((k - 1) * (n - 1) * (k * rho * fj + n * (1 + (k - 1) * rho) - k * rho) ** 2
              / ((n - 1) * k ** 2 * rho ** 2 * fj ** 2 + (n * (1 + (k - 1) * rho) - k * rho) ** 2))
        f_star_hi = stats.f.ppf(q, n - 1, nu)
        f_star_lo = stats.f.ppf(q, nu, n - 1)
        lo = _ratio(n * (msr - f_star_hi * mse), f_star_hi * (k * msc + (k * n - k - n) * mse) + n * msr)
        hi = _ratio(n * (f_star_lo * msr - mse), k * msc + (k * n - k - n) * mse + n * f_star_lo * msr)
        if unit == "k":  # Spearman-Brown step-up of the single-rater bounds
            lo, hi = k * lo / (1 + (k - 1) * lo), k * hi / (1 + (k - 1) * hi)
    return ICCResult(form=key, description=_ICC_DESCRIPTION[key], value=float(value), ci_lower=float(lo),
                     ci_upper=float(hi), confidence=c, f_value=float(f), df1=float(df1), df2=float(df2),
                     p_value=p, n_subjects=n, k_raters=k)


# --------------------------------------------------------------------------- Lin's CCC
@dataclass
class CCCResult:
    """Lin's concordance correlation coefficient of ``x`` and ``y`` with its Fisher-z interval."""

    value: float
    ci_lower: float
    ci_upper: float
    confidence: float
    pearson_r: float
    bias_correction: float
    location_shift: float
    scale_shift: float
    n: int

    def to_dict(self) -> dict:
        """Plain-Python dict."""
        return {"value": self.value, "ci": [self.ci_lower, self.ci_upper], "confidence": self.confidence,
                "pearson_r": self.pearson_r, "bias_correction_cb": self.bias_correction,
                "location_shift_u": self.location_shift, "scale_shift_v": self.scale_shift, "n": self.n}


def concordance_correlation(x, y, *, confidence: float = 0.95) -> CCCResult:
    """Lin's concordance correlation coefficient ρc with its confidence interval (Lin 1989, 2000).

    Parameters
    ----------
    x, y : sequence of float, length n >= 3
        Two methods' measurements of the same subjects.
    confidence : float
        Level of the interval (default 0.95).

    Returns
    -------
    CCCResult
        ``value`` = ρc = precision (Pearson ``r``) x accuracy (``bias_correction`` C_b);
        ``location_shift`` u = (x̄ − ȳ)/√(s_x s_y) and ``scale_shift`` v = s_x/s_y; the
        interval from Fisher's z (``(1, 1)`` when the two agree exactly).
    """
    from scipy import stats

    x, y = _pair(x, y, 3)
    c = _confidence(confidence)
    n = int(x.size)
    mx, my = float(x.mean()), float(y.mean())
    sx2, sy2 = float(((x - mx) ** 2).mean()), float(((y - my) ** 2).mean())
    if sx2 == 0 or sy2 == 0:
        raise AgreementError("a method's measurements are all equal: the concordance correlation is undefined")
    sxy = float(((x - mx) * (y - my)).mean())
    rc = 2.0 * sxy / (sx2 + sy2 + (mx - my) ** 2)
    r = sxy / math.sqrt(sx2 * sy2)
    u = (mx - my) / math.sqrt(math.sqrt(sx2 * sy2))
    if rc >= 1.0 - 1e-15:
        lo = hi = 1.0
    elif r == 0 or abs(rc) >= 1.0:
        lo = hi = float("nan")
    else:
        one = 1.0 - rc * rc
        var_z = ((1 - r * r) * rc * rc / (one * r * r) + 2 * rc ** 3 * (1 - rc) * u * u / (r * one * one)
                 - rc ** 4 * u ** 4 / (2 * r * r * one * one)) / (n - 2)
        z = math.atanh(rc)
        half = float(stats.norm.ppf(0.5 + c / 2.0)) * math.sqrt(max(var_z, 0.0))
        lo, hi = math.tanh(z - half), math.tanh(z + half)
    return CCCResult(value=float(rc), ci_lower=float(lo), ci_upper=float(hi), confidence=c, pearson_r=float(r),
                     bias_correction=float(rc / r) if r != 0 else float("nan"), location_shift=float(u),
                     scale_shift=float(math.sqrt(sx2 / sy2)), n=n)


# --------------------------------------------------------------------------- CSV
def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v


def read_table(path: str | os.PathLike, columns=None) -> tuple[list[str], np.ndarray]:
    """Read a table of measurements from a CSV file: rows = subjects, columns = raters or methods.

    The delimiter (comma, semicolon or tab) is detected; blank lines and lines starting with
    ``#`` are skipped. The first row is a header unless every cell in it is a number (then the
    columns are named by their 1-based numbers ``"1"``, ``"2"``, ...).

    Parameters
    ----------
    path : path
        The CSV file.
    columns : sequence of str, optional
        The columns to use, by header name or 1-based number (default: all). A subject-ID or
        other non-numeric column must be left out this way.

    Returns
    -------
    names : list of str
        The selected columns' names.
    values : ndarray, shape (n_subjects, n_columns)

    Raises
    ------
    AgreementError
        Missing or unreadable file, fewer than 2 columns, fewer than 3 subjects, an unknown
        column, a ragged row, or a cell that is not a finite number (the message names the row
        and column).
    """
    p = Path(path)
    if not p.is_file():
        raise AgreementError(f"table not found: {p} (give a CSV file: one row per subject, one column per method)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgreementError(f"cannot read table {p}: {exc}") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise AgreementError(f"table {p} is empty")
    sample = "\n".join(ln for _, ln in lines[:20])
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    rows = [(no, [cell.strip() for cell in cells])
            for (no, _), cells in zip(lines, csv.reader([ln for _, ln in lines], delimiter=delimiter))]
    width = len(rows[0][1])
    header_given = not all(_number(cell) is not None for cell in rows[0][1])
    if header_given:
        names = [cell or str(j + 1) for j, cell in enumerate(rows[0][1])]
        rows = rows[1:]
    else:
        names = [str(j + 1) for j in range(width)]
    for no, cells in rows:
        if len(cells) != width:
            raise AgreementError(f"{p} line {no} has {len(cells)} cells but the table has {width} columns")

    if columns is None:
        picked = list(range(width))
    else:
        picked = []
        for col in columns:
            col = str(col).strip()
            if col in names:
                picked.append(names.index(col))
            elif col.isdigit() and 1 <= int(col) <= width:
                picked.append(int(col) - 1)
            else:
                raise AgreementError(f"column {col!r} is not in {p}: its columns are {', '.join(names)} "
                                     f"(or give 1-based numbers 1..{width})")
    if len(picked) < 2:
        raise AgreementError(f"{p}: {len(picked)} column(s) selected ({', '.join(names[j] for j in picked)}); "
                             "agreement needs at least 2 columns, one per method or rater")
    if len(rows) < 3:
        raise AgreementError(f"{p} has {len(rows)} subject row(s); at least 3 are needed")
    values = np.empty((len(rows), len(picked)))
    for i, (no, cells) in enumerate(rows):
        for j, col in enumerate(picked):
            v = _number(cells[col])
            if v is None or not math.isfinite(v):
                what = "an empty cell" if cells[col] == "" else f"{cells[col]!r}, not a finite number"
                raise AgreementError(f"{p} line {no}, column {names[col]!r}: {what}. Every selected cell must be "
                                     "a number (leave out ID columns with --columns; drop incomplete subjects)")
            values[i, j] = v
    return [names[j] for j in picked], values
