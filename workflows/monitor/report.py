"""The HTML report of a drift check (:func:`pipeline.drift.compare`): one self-contained page.

It opens with the verdict and the alerts (which test fired and why), then shows the pooled
body-HU histograms of the baseline and the new scans and the distributions of the per-scan
summaries the KS tests compare (PNG figures inlined as base64 data URIs, so the page needs no
other file), the category table of each header field (baseline and new counts, categories
new to the baseline marked), every test with its statistic, p-value and effect size, the
numeric header summaries, the notes and the scans left out.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from workflows.common import write_text_atomic

__all__ = ["render_report", "write_report", "histogram_figure_png"]

_esc = html.escape

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 1em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{padding:.8em 1em;border-radius:6px;font-weight:600} .ok{background:#e7f5e9;border:1px solid #7bc48a}
.drift{background:#fde8e8;border:1px solid #e07b7b} tr.alert td{background:#fde8e8} .new{color:#b00;font-weight:600}
figure{margin:1em 0} figcaption{font-size:.9em;color:#555} img{max-width:100%}
"""


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    return f"{v:.2g}" if 0 < abs(v) < 1e-3 else f"{v:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if i < len(row_classes) and row_classes[i] else ""
        cells = "".join(_cell(c) for c in r)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """HTML that is not escaped again."""


def _cell(c: Any) -> str:
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return f'<td class="num">{_esc(_fmt(c))}</td>'
    return f"<td>{c if isinstance(c, _Raw) else _esc(_fmt(c))}</td>"


def histogram_figure_png(check: Mapping[str, Any]) -> bytes:
    """PNG of the pooled body-HU histograms (left) and the empirical distributions of the per-scan
    summaries the KS tests compare (right), baseline against new."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    inten = check["intensity"]
    edges = np.asarray(inten["bin_edges_hu"], float)
    width = np.diff(edges)
    ks = [t for t in check["tests"] if t["kind"] == "intensity"]
    fig, axes = plt.subplots(1, 1 + len(ks), figsize=(4.2 * (1 + len(ks)), 3.4), constrained_layout=True)
    ax = axes[0]
    for key, label, colour in (("baseline_fraction", f"baseline ({check['n_baseline']} scans)", "#1f77b4"),
                               ("new_fraction", f"new ({check['n_new']} scans)", "#d62728")):
        dens = np.asarray([0.0 if v is None else v for v in inten[key]], float) / width
        ax.stairs(dens, edges, label=label, color=colour, linewidth=1.4)
    frac = np.asarray([0.0 if v is None else v for v in inten["baseline_fraction"]], float)
    frac_n = np.asarray([0.0 if v is None else v for v in inten["new_fraction"]], float)
    cdf = np.cumsum(frac + frac_n) / max(frac.sum() + frac_n.sum(), 1e-300)
    lo = edges[min(np.searchsorted(cdf, 0.002), edges.size - 2)]
    hi = edges[min(np.searchsorted(cdf, 0.998) + 1, edges.size - 1)]
    ax.set_xlim(lo - 20, hi + 20)
    ax.set_xlabel("HU inside the body mask")
    ax.set_ylabel("fraction per HU")
    w = inten.get("wasserstein_hu")
    ax.set_title(f"pooled histograms (Wasserstein {_fmt(w)} HU)", fontsize=10)
    ax.legend(fontsize=8)
    for ax, t in zip(axes[1:], ks):
        for key, colour in (("baseline_values", "#1f77b4"), ("new_values", "#d62728")):
            v = np.sort([x for x in t[key] if x is not None and math.isfinite(x)])
            if v.size:
                ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=colour,
                        label="baseline" if key.startswith("b") else "new")
        name = "median" if t["field"] == "median_hu" else "interquartile range"
        ax.set_xlabel(f"per-scan body-HU {name} (HU)")
        ax.set_ylabel("fraction of scans ≤")
        ax.set_title(f"KS D = {_fmt(t['statistic'])}, p = {_fmt(t['p_value'])}", fontsize=10)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_report(check: Mapping[str, Any], *, title: str = "Drift check") -> str:
    """The report page of a check result, as HTML text."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"]
    th = check["thresholds"]
    src = check.get("source") or "the new scans"
    parts.append(f"<p>{check['n_new']} new series ({_esc(str(src))}) against a baseline of {check['n_baseline']} "
                 f"series ({_esc(str(check.get('profile_source') or 'profile'))}). "
                 f"Family-wise alpha {_fmt(th['alpha'])} "
                 f"over {th['tests_with_p_value']} tests (Bonferroni: {_fmt(th['alpha_per_test'])} each); an alert "
                 f"needs a significant test and an effect: PSI ≥ {_fmt(th['psi'])} for header categories, pooled-"
                 f"histogram Wasserstein distance ≥ {_fmt(th['wasserstein_hu'])} HU for intensity.</p>")
    if check["alerts"]:
        items = "".join(f"<li><b>{_esc(a['field'])}</b> ({_esc(a['test'])}): {_esc(a['reason'])}</li>"
                        for a in check["alerts"])
        parts.append(f'<div class="verdict drift">DRIFT: {len(check["alerts"])} alert'
                     f'{"s" if len(check["alerts"]) != 1 else ""}<ul>{items}</ul></div>')
    else:
        parts.append('<div class="verdict ok">No drift: no test fired.</div>')
    if check.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in check["notes"]) + "</ul>")

    parts.append("<h2>Body intensity</h2>")
    try:
        png = base64.b64encode(histogram_figure_png(check)).decode("ascii")
        parts.append(f'<figure><img alt="baseline and new body-HU histograms" src="data:image/png;base64,{png}">'
                     "<figcaption>Left: pooled histograms of HU inside the body mask (each scan weighs the same), "
                     "baseline (blue) and new (red). Right: the per-scan summaries the Kolmogorov–Smirnov tests "
                     "compare, as empirical distribution functions; D is their largest vertical gap.</figcaption>"
                     "</figure>")
    except Exception as exc:  # a figure that cannot be drawn leaves a note, not a failed check  # noqa: BLE001
        parts.append(f"<p>(figure not drawn: {_esc(type(exc).__name__)}: {_esc(str(exc))})</p>")
    summ_rows = []
    for k, sb in check["intensity"]["baseline_summaries"].items():
        sn = check["intensity"]["new_summaries"][k]
        summ_rows.append([k, sb.get("p50"), sb.get("p05"), sb.get("p95"), sn.get("p50"), sn.get("p05"), sn.get("p95")])
    parts.append("<p>Per-scan summaries of body HU, across scans (median, 5th and 95th percentile):</p>"
                 + _table(["summary", "baseline median", "baseline p5", "baseline p95", "new median", "new p5",
                           "new p95"], summ_rows))

    parts.append("<h2>Tests</h2>")
    rows, classes = [], []
    for t in check["tests"]:
        effect = (f"PSI {_fmt(t['psi'])} ({t['psi_band']})" if t["kind"] == "categorical" else
                  f"W {_fmt(t['wasserstein_hu'])} HU" if t["kind"] == "intensity" else
                  f"median {_fmt(t['baseline_median'])} → {_fmt(t['new_median'])} mm")
        rows.append([t["field"], t["test"], t["statistic"], t["p_value"], effect, "ALERT" if t["alert"] else "",
                     t["reason"]])
        classes.append("alert" if t["alert"] else "")
    parts.append(_table(["field", "test", "statistic", "p-value", "effect size", "alert", "why"], rows, classes))

    parts.append("<h2>Header categories</h2>")
    for t in check["tests"]:
        if t["kind"] != "categorical":
            continue
        nb, nn = sum(t["baseline_counts"]), sum(t["new_counts"])
        crow = []
        for c, b, n in zip(t["categories"], t["baseline_counts"], t["new_counts"]):
            name = _Raw(f'{_esc(c)} <span class="new">(new)</span>') if c in t["new_categories"] else c
            crow.append([name, b, f"{100 * b / nb:.0f} %", n, f"{100 * n / nn:.0f} %"])
        parts.append(f"<h3>{_esc(t['field'])}{' — ALERT' if t['alert'] else ''}</h3>"
                     + _table(["category", "baseline", "baseline %", "new", "new %"], crow))

    parts.append("<h2>Numeric header fields</h2>")
    nrow = []
    for f, d in check["numeric"].items():
        b, n = d["baseline"], d["new"]
        nrow.append([f, b.get("n"), b.get("p50"), b.get("min"), b.get("max"), n.get("n"), n.get("p50"), n.get("min"),
                     n.get("max")])
    parts.append("<p>kVp in kV, slice thickness and in-plane pixel spacing (mean of row and column) in mm.</p>"
                 + _table(["field", "baseline n", "baseline median", "min", "max", "new n", "new median", "min", "max"],
                          nrow))
    if check.get("skipped"):
        parts.append("<h2>Left out</h2>" + _table(["path", "reason"], [[s["path"], s["reason"]]
                                                                       for s in check["skipped"]]))
    parts.append("<p style=\"color:#777;font-size:.85em\">digipat drift check, "
                 f"schema {_esc(check['schema_version'])}, "
                 f"{_esc(str(check.get('created', '')))}</p></body></html>\n")
    return "".join(parts)


def write_report(check: Mapping[str, Any], path: str | os.PathLike, *, title: str = "Drift check") -> Path:
    """Write :func:`render_report` to ``path`` atomically; returns the path."""
    return write_text_atomic(Path(path), render_report(check, title=title))
