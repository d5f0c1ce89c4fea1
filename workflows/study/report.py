"""The report of one or more sensitivity studies: a self-contained HTML page and its PDF.

The report answers, for each quantity of interest (QoI), *how much can this result be
trusted?* It opens with a bottom-line box (nominal value, the spread that plausible input
errors cause, the probability that a decision flips, the numerical uncertainty, in words),
then gives per study: question and context of use, the base case with its images, the
inputs with their ranges and where the ranges come from, nominal results, the output
against the radius on log–log axes with the fitted elasticity, tornado chart, Sobol and
Morris indices, output distribution, decision flips, organ-dose change per perturbation,
the case table, the numerical uncertainty (kept apart from the input uncertainty),
limitations and provenance (software versions, seeds, input hashes).

Each section appears only when the summary holds its data; a missing or unreadable image
or a figure that cannot be drawn leaves a note, never an exception. Figures are written to
``OUT/report_figures/`` and embedded in ``OUT/report.html`` as PNG data URIs, so the page
needs no other file; ``OUT/report.pdf`` is the same page printed on A4 by WeasyPrint.

Input: the study summary of :func:`workflows.study.runner.run_study` (``study.json``, schema 2.0;
a 1.0 summary of a one-parameter OAT study is upgraded on the fly).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from physics.atomic import atomic_path
from workflows.study import figures as sf
from workflows.common import write_text_atomic

__all__ = ["write_report", "write_study_report", "bottom_line", "format_number", "upgrade_summary", "embed_png"]

_esc = html.escape
MAX_CASE_ROWS = 30
MAX_CASE_QOIS = 6

_IMAGE_CAPTIONS = {
    "segmentation_overlay": "Segmentation of the base case: the lumen contour (red) on the CT in three planes "
                            "through the vessel; the ground truth (dashed) where it is known.",
    "mesh": "The tagged lumen surface of the base case, seen from both ends; the flat inlet and outlet caps "
            "are coloured.",
    "pressure_map": "Wall pressure of the base case (mmHg), seen from two sides.",
    "dose_map": "Dose of the base case over the anatomy (axial, coronal and sagittal planes).",
}
_PATHS = {"flow": "image → segmentation → surface → volume mesh → flow solve (pressure drop, FFR-like ratio)",
          "dose": "phantom → CT scan protocol → Monte Carlo photon transport → organ and effective dose"}


# ----------------------------------------------------------------------------- numbers
finite = sf.finite


def format_number(x: Any, sig: int = 4) -> str:
    """``x`` with ``sig`` significant figures: fixed notation from 1e-3 to 1e6, else
    scientific; ``"—"`` for None, NaN or non-numbers.

    >>> format_number(28.1), format_number(0.012345), format_number(1.5e-7)
    ('28.10', '0.01235', '1.500e-07')
    """
    if not finite(x):
        return "—"
    x = float(x)
    if x == 0:
        return "0"
    e = math.floor(math.log10(abs(x)))
    if -3 <= e < 6:
        s = f"{x:.{max(0, sig - 1 - e)}f}"
        # rounding may add a digit (9.9996 -> 10.000): re-round at the new exponent
        if len(s.replace("-", "").replace(".", "").lstrip("0")) > sig and "." in s:
            s = f"{x:.{max(0, sig - 2 - e)}f}"
        return s
    return f"{x:.{sig - 1}e}"


def _q(x: Any, qoi: str, mmhg: bool = False) -> str:
    """A QoI value with its unit (and, with ``mmhg``, the mmHg equivalent of a pressure in Pa)."""
    u = sf.qoi_unit(qoi)
    s = format_number(x) + (f" {u}" if u and finite(x) else "")
    if mmhg and u == "Pa" and finite(x) and "pressure" in qoi:
        s += f" ({format_number(float(x) / sf.PA_PER_MMHG)} mmHg)"
    return s


def _pct(x: Any, signed: bool = True, digits: int = 1) -> str:
    if not finite(x):
        return "—"
    return f"{float(x):+.{digits}f} %" if signed else f"{float(x):.{digits}f} %"


def _prob(p: Any) -> str:
    return "—" if not finite(p) else f"{100 * float(p):.0f} %"


# ----------------------------------------------------------------------------- schema
def upgrade_summary(summary: Mapping) -> dict:
    """A schema-2.0 view of a study summary; a 1.0 summary (one OAT parameter, ``cases`` with
    ``value`` and ``output``, a top-level ``elasticity``) is converted, a 2.0 one returned as a copy."""
    s = dict(summary)
    cases = s.get("cases") if isinstance(s.get("cases"), list) else []
    cases = [c for c in cases if isinstance(c, Mapping)]
    old = str(s.get("schema_version", "2")).startswith("1") or bool(cases and "value" in cases[0]
                                                                     and "params" not in cases[0])
    if not old:
        return _sanitise(s)
    design = dict(s.get("design") or {})
    par = design.get("parameter", "boundary_offset_mm")
    out = s.get("output", "output")
    new_cases = []
    for c in cases:
        v = c.get("value")
        new_cases.append({"id": c.get("id"), "params": {par: v}, "outputs": {out: c.get("output")}, "sigma": {},
                          "varied": par if finite(v) and float(v) != 0 else None, "results": c.get("results"),
                          "n_dofs": c.get("n_dofs")})
    vals = [float(c["value"]) for c in cases if finite(c.get("value"))]
    nom = min(cases, key=lambda c: abs(float(c["value"])) if finite(c.get("value")) else math.inf) if cases else {}
    s.update({
        "schema_version": "2.0 (upgraded from 1.0)",
        "path": s.get("path", "flow"),
        "outputs": [out],
        "parameters": [{"name": par, "nominal": 0.0, "low": min(vals, default=None), "high": max(vals, default=None),
                        "distribution": "uniform", "unit": "mm" if par.endswith("_mm") else "",
                        "description": "uniform wall offset along the surface normals" if par == "boundary_offset_mm"
                        else "", "origin": "the study file's design values"}],
        "nominal": {"id": nom.get("id"), "outputs": {out: nom.get("output")}, "sigma": {}},
        "cases": new_cases,
    })
    if "elasticity" in s:
        s["analysis"] = {out: {"elasticity": {**s["elasticity"], "parameter": par,
                                               "reference_radius_mm": s.get("reference_radius_mm")}}}
    s.setdefault("question", f"How much does {out} move when the reconstructed vessel wall is off by a fraction "
                             "of a millimetre, as segmentation errors are?")
    return _sanitise(s)


def _sanitise(s: dict) -> dict:
    """Drop parts of a summary whose type is wrong (a list where a dict belongs, a non-string
    QoI key), so that each section sees either well-typed data or nothing."""
    def as_dict(x):
        return dict(x) if isinstance(x, Mapping) else {}

    def dicts(x):
        return [dict(v) for v in x if isinstance(v, Mapping)] if isinstance(x, (list, tuple)) else []

    for k in ("design", "base", "numerical", "images", "provenance", "timings_s", "analysis"):
        if k in s:
            s[k] = as_dict(s[k])
    s["analysis"] = {str(q): as_dict(a) for q, a in s.get("analysis", {}).items()}
    num = s.get("numerical")
    if num:
        for k in ("mesh_relative_change", "mc_relative_sigma"):
            if k in num:
                num[k] = as_dict(num[k])
        if "mesh_convergence" in num:
            num["mesh_convergence"] = [{**r, "outputs": as_dict(r.get("outputs"))}
                                       for r in dicts(num["mesh_convergence"])]
    for a in s["analysis"].values():
        if "tornado" in a:
            a["tornado"] = dicts(a["tornado"])
        for k in ("elasticity", "sobol", "morris", "distribution", "flip"):
            if k in a and not isinstance(a[k], Mapping):
                del a[k]
        for k in ("sobol", "morris"):
            if k in a and not all(isinstance(a[k].get(f), (list, tuple, type(None))) for f in
                                  ("names", "S1", "S1_conf", "ST", "ST_conf", "mu_star", "mu_star_conf", "sigma")):
                del a[k]
    if "outputs" in s:
        qs = s["outputs"] if isinstance(s["outputs"], (list, tuple)) else []
        s["outputs"] = [q for q in qs if isinstance(q, str)]
    for k in ("name", "path", "output"):
        if k in s and not isinstance(s[k], str):
            s[k] = None if s[k] is None else str(s[k])
    s["parameters"] = [p for p in dicts(s.get("parameters")) if isinstance(p.get("name"), str)]
    cases = []
    for c in dicts(s.get("cases")):
        for k in ("params", "outputs", "sigma", "perturbation"):
            c[k] = as_dict(c.get(k))
        if not isinstance(c.get("varied"), str):
            c["varied"] = None
        cases.append(c)
    s["cases"] = cases
    nom = as_dict(s.get("nominal"))
    if nom:
        nom["outputs"], nom["sigma"] = as_dict(nom.get("outputs")), as_dict(nom.get("sigma"))
    s["nominal"] = nom
    if "limitations" in s and not isinstance(s["limitations"], (list, tuple, str)):
        s["limitations"] = []
    return s


def _qois(s: Mapping) -> list[str]:
    qs = list(s.get("outputs") or [])
    if not qs and s.get("output"):
        qs = [s["output"]]
    if not qs:
        qs = list(((s.get("nominal") or {}).get("outputs") or {}).keys())
    return [str(q) for q in qs]


def _analysis(s: Mapping, qoi: str) -> dict:
    a = (s.get("analysis") or {}).get(qoi)
    return a if isinstance(a, dict) else {}


def _rule(flip: Mapping, qoi: str) -> str:
    """The decision rule in words: ``"< 0.8"`` becomes ``"ffr_like < 0.8"``."""
    rule = str(flip.get("rule", "?")).strip()
    return f"{qoi} {rule}" if rule[:1] in "<>" else rule


def _threshold(rule: Any) -> float | None:
    """The threshold of a rule like ``"ffr_like < 0.8"`` or ``"< 0.8"`` (not of a % change rule)."""
    if not isinstance(rule, str) or "%" in rule:
        return None
    m = re.search(r"[<>]=?\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", rule)
    return float(m.group(1)) if m else None


# ----------------------------------------------------------------------------- bottom line
def bottom_line(summary: Mapping) -> list[dict]:
    """Per QoI: nominal value, input-driven spread, decision-flip probability, numerical
    uncertainty and a plain-words verdict.

    The spread is the 95 % range of sampled outputs where the study sampled its inputs, else
    the range over the one-at-a-time ends (tornado), else the range over all cases. The
    numerical uncertainty is the relative change on mesh refinement (flow) or twice the
    Monte Carlo relative σ of the nominal case (dose), whichever is larger.

    Returns
    -------
    list of dict
        ``qoi``, ``nominal``, ``low``, ``high``, ``spread_kind``, ``half_width_rel`` (largest
        relative departure from nominal), ``flip`` (the flip dict or None), ``numerical_rel``,
        ``numerical_kind``, ``level`` (``"ok"``, ``"warn"``, ``"bad"``), ``verdict`` (sentences)
        and ``short`` (a few words), plus ``spread_short``.
    """
    s = upgrade_summary(summary)
    q0s, sig0 = sf.nominal_case(s)
    num = s.get("numerical") or {}
    rows = []
    for q in _qois(s):
        a = _analysis(s, q)
        q0 = q0s.get(q)
        lo = hi = None
        kind = short = ""
        d = a.get("distribution") or {}
        torn = [r for r in a.get("tornado") or [] if finite(r.get("q_low")) and finite(r.get("q_high"))]
        cats = a.get("categories") if isinstance(a.get("categories"), Mapping) else {}
        for par, lst in cats.items():  # a parameter with named choices: its choices' outputs as the two ends
            qs = [float(r["q"]) for r in lst if isinstance(r, Mapping) and finite(r.get("q"))]
            if qs and finite(q0):
                torn.append({"parameter": par, "q_low": min(qs), "q_high": max(qs),
                             "swing": max(abs(v - float(q0)) for v in qs)})
        if finite(d.get("p2_5")) and finite(d.get("p97_5")):
            lo, hi = float(d["p2_5"]), float(d["p97_5"])
            kind, short = f"95 % range of {d.get('n', '?')} sampled inputs", f"95 % range, n = {d.get('n', '?')}"
        elif torn:
            ends = [float(r[k]) for r in torn for k in ("q_low", "q_high")] + ([float(q0)] if finite(q0) else [])
            lo, hi = min(ends), max(ends)
            top = max(torn, key=lambda r: r.get("swing", abs(r["q_high"] - r["q_low"])))["parameter"]
            kind = f"range over the one-at-a-time input ends (largest effect: {top})"
            short = f"one-at-a-time ends; largest: {top}"
        else:
            vals = [float(c["outputs"][q]) for c in s.get("cases") or []
                    if finite((c.get("outputs") or {}).get(q))]
            if len(vals) >= 2:
                lo, hi, kind = min(vals), max(vals), f"range over all {len(vals)} cases"
                short = kind
        h = None
        if lo is not None and finite(q0) and float(q0) != 0:
            h = max(abs(lo / float(q0) - 1), abs(hi / float(q0) - 1))
        # numerical uncertainty (relative)
        nums = []
        mrc = (num.get("mesh_relative_change") or {}).get(q)
        if finite(mrc):
            nums.append((abs(float(mrc)), "mesh refinement"))
        mcs = (num.get("mc_relative_sigma") or {}).get(q)
        if not finite(mcs) and finite(sig0.get(q)) and finite(q0) and float(q0) != 0:
            mcs = float(sig0[q]) / abs(float(q0))
        if finite(mcs):
            nums.append((2 * abs(float(mcs)), "Monte Carlo, 2σ"))
        u, ukind = (max(nums) if nums else (None, "not assessed"))
        flip = a.get("flip") if isinstance(a.get("flip"), dict) else None
        words, level = [], "ok"
        name = sf.qoi_label(q)
        if lo is not None:
            rel = (f" ({_pct(100 * (lo / float(q0) - 1))} to {_pct(100 * (hi / float(q0) - 1))})"
                   if finite(q0) and float(q0) != 0 else "")
            words.append(f"Plausible input errors move the {name} between {_q(lo, q)} and {_q(hi, q)}{rel}.")
        else:
            words.append(f"No input-driven spread of the {name} was computed.")
        if u is None:
            words.append("Its numerical uncertainty was not assessed.")
            level, num_short = "warn", "numerical error not assessed"
        elif h is None:
            words.append(f"Numerical uncertainty about {_pct(100 * u, False)} ({ukind}).")
            num_short = f"numerical error {_pct(100 * u, False)}"
        elif u <= h / 3:
            words.append(f"Numerical uncertainty ({_pct(100 * u, False)}, {ukind}) is small next to that spread.")
            num_short = "spread resolved: numerical error small"
        elif u < h:
            words.append(f"Numerical uncertainty ({_pct(100 * u, False)}, {ukind}) is a sizeable part of that "
                         "spread: read small differences with care.")
            level, num_short = "warn", "numerical error a sizeable part of the spread"
        else:
            words.append(f"Numerical uncertainty ({_pct(100 * u, False)}, {ukind}) is as large as the input-driven "
                         "spread: the sensitivity is not resolved (refine the mesh or run more histories).")
            level, num_short = "bad", "not resolved: numerical error ≥ spread"
        shorts = [num_short]
        if flip and finite(flip.get("probability")):
            p = float(flip["probability"])
            ci = (f"95 % CI {_prob(flip.get('ci_low'))}–{_prob(flip.get('ci_high'))}"
                  if finite(flip.get("ci_low")) and finite(flip.get("ci_high")) else "no CI")
            k_n = f"{flip.get('n_flipped', '?')} of {flip.get('n', '?')} cases"
            failed = int(flip.get("n_failed") or 0)
            if failed:
                ci += (f"; {failed} failed case(s) have no decision and count as flips in the upper "
                       "limit and as non-flips in the lower")
            if p == 0:
                words.append(f"The decision ({_rule(flip, q)}) did not change in any of {flip.get('n', '?')} "
                             f"cases ({ci}).")
                shorts.append("decision stable")
            else:
                words.append(f"The decision ({_rule(flip, q)}) changed in {_prob(p)} of cases ({k_n}; {ci}).")
                shorts.append(f"decision flips in {_prob(p)} of cases")
                level = "bad" if p >= 0.1 else ("warn" if level == "ok" else level)
        rows.append({"qoi": q, "nominal": float(q0) if finite(q0) else None, "low": lo, "high": hi,
                     "spread_kind": kind, "spread_short": short, "half_width_rel": h, "flip": flip, "numerical_rel": u,
                     "numerical_kind": ukind, "level": level, "verdict": " ".join(words),
                     "short": "; ".join(shorts)})
    return rows


# ----------------------------------------------------------------------------- figures
class _Figures:
    """Draws figures into ``OUT/report_figures`` and returns them as embedded ``<figure>`` HTML;
    a figure that cannot be drawn becomes a short note (and a warning)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / "report_figures"
        self.n = 0
        for old in self.dir.glob("*.png"):  # figures of an earlier report in this folder
            old.unlink()

    def draw(self, name: str, fn: Callable[..., Path], *args: Any, caption: str = "", how: str = "",
             **kw: Any) -> str:
        self.n += 1
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
        try:
            path = fn(*args, self.dir / f"{self.n:02d}_{slug}.png", **kw)
        except Exception as exc:  # noqa: BLE001 - a figure never stops the report
            warnings.warn(f"report figure {name!r} not drawn: {exc}", stacklevel=2)
            return f'<p class="note">Figure “{_esc(name)}” could not be drawn: {_esc(str(exc))}</p>'
        return embed_png(path, caption=caption, how=how, alt=name)


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
            ".gif": "image/gif"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def embed_png(path: str | os.PathLike, *, caption: str = "", how: str = "", alt: str = "") -> str:
    """An image file as a ``<figure>`` with its bytes inlined (data URI), caption and a
    "how to read this" sentence."""
    p = Path(path)
    cap = f"<figcaption>{_esc(caption)}" if caption else "<figcaption>"
    if how:
        cap += f' <span class="how">How to read this: {_esc(how)}</span>'
    cap += "</figcaption>"
    return f'<figure><img alt="{_esc(alt or p.stem)}" src="{_data_uri(p)}">{cap}</figure>'


# ----------------------------------------------------------------------------- html pieces
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are escaped unless they are ``_Raw``."""
    def cell(x, tag):
        return f"<{tag}>{x.html if isinstance(x, _Raw) else _esc(str(x))}</{tag}>"

    head = "".join(f"<th>{h.html if isinstance(h, _Raw) else _wbr(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Raw:
    def __init__(self, html_text: str):
        self.html = html_text


def _qname(q: str) -> _Raw:
    u = sf.qoi_unit(q)
    return _Raw(f"{_esc(sf.qoi_label(q))}{(' (' + _esc(u) + ')') if u else ''}<br><code>{_wbr(q)}</code>")


def _wbr(name: str) -> str:
    """Escaped identifier with line-break opportunities after ``_`` and ``.`` (narrow columns)."""
    return _esc(name).replace("_", "_<wbr>").replace(".", ".<wbr>")


def _paras(text: str) -> str:
    return "".join(f"<p>{_esc(p.strip())}</p>" for p in re.split(r"\n\s*\n", text) if p.strip())


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, Mapping):
        out = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, d)]


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "—"
    if finite(v) and not isinstance(v, str):
        return format_number(v) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        head = ", ".join(_value(x) for x in v[:8])
        return head + (f", … ({len(v)} values)" if len(v) > 8 else "")
    return str(v)


# ----------------------------------------------------------------------------- sections
def _study_sentence(s: dict, rows: Sequence[dict]) -> str:
    """Two or three plain sentences on one study: how far inputs move each result, whether the
    numerical error resolves that, and which decisions flip."""
    spreads, organ = [], []
    for r in rows:
        if r["half_width_rel"] is None:
            continue
        if r["qoi"].startswith(sf.ORGAN_PREFIX):
            organ.append(r)
        else:
            spreads.append(f"the {sf.qoi_label(r['qoi'])} by up to ±{100 * r['half_width_rel']:.1f} %")
    if organ:
        top = max(organ, key=lambda r: r["half_width_rel"])
        spreads.append(f"organ doses by up to ±{100 * top['half_width_rel']:.1f} % "
                       f"({sf.qoi_label(top['qoi'])})")
    out = []
    if spreads:
        out.append("Plausible input errors move " + ", ".join(spreads[:-1]) + (" and " if len(spreads) > 1 else "")
                   + spreads[-1] + ".")
    notok = [r for r in rows if r["numerical_rel"] is None or (r["half_width_rel"] is not None
                                                                and r["numerical_rel"] > r["half_width_rel"] / 3)]
    if rows and not notok:
        out.append("The numerical uncertainty is small next to these spreads.")
    elif notok:
        out.append("The numerical uncertainty is not assessed or not small for: "
                   + ", ".join(sf.qoi_label(r["qoi"]) for r in notok) + ".")
    flips = [r for r in rows if r["flip"] and finite(r["flip"].get("probability"))]
    moved = [r for r in flips if float(r["flip"]["probability"]) > 0]
    for r in moved:
        f = r["flip"]
        ci = (f" (95 % CI {_prob(f.get('ci_low'))}–{_prob(f.get('ci_high'))})"
              if finite(f.get("ci_low")) and finite(f.get("ci_high")) else "")
        rule = _rule(f, r["qoi"])
        if "%" in rule:
            what = f"the {sf.qoi_label(r['qoi'])} changes by {rule.replace('|change|', 'more than').replace('>', '')}"
            what = re.sub(r"\s+", " ", what)
        else:
            what = f"the decision “{rule}” flips"
        out.append(f"In {_prob(f['probability'])} of plausible cases{ci} {what}.")
    if flips and not moved:
        out.append("No decision changed in any case.")
    return " ".join(out)


def _bottom_line_html(studies: Sequence[tuple[str, dict]]) -> str:
    parts = []
    for sid, s in studies:
        try:
            rows = bottom_line(s)
        except Exception as exc:  # noqa: BLE001 - a malformed summary never stops the report
            warnings.warn(f"bottom line of study {s.get('name', sid)!r} not written: {type(exc).__name__}: {exc}",
                          stacklevel=2)
            parts.append(f'<p class="note">{_esc(str(s.get("name", sid)))}: the bottom line could not be computed '
                         f"({_esc(type(exc).__name__)}: {_esc(str(exc))}).</p>")
            continue
        design = (s.get("design") or {}).get("type")
        meta = ", ".join(str(x) for x in (s.get("path"), design, f"{len(s.get('cases') or [])} cases") if x)
        parts.append(f'<p class="blstudy"><a href="#{sid}"><b>{_esc(str(s.get("name", sid)))}</b></a> '
                     f"({_esc(meta)}). {_esc(_study_sentence(s, rows))}</p>")
        trs = []
        for r in rows:
            q = r["qoi"]
            spread = "—"
            if r["low"] is not None:
                spread = f"{format_number(r['low'])} – {_q(r['high'], q)}"
                if r["half_width_rel"] is not None and finite(r["nominal"]) and r["nominal"]:
                    spread += (f" ({_pct(100 * (r['low'] / r['nominal'] - 1), digits=0)} / "
                               f"{_pct(100 * (r['high'] / r['nominal'] - 1), digits=0)})")
                spread += f"; {r['spread_short']}"
            flip = r["flip"]
            fl = "—"
            if flip and finite(flip.get("probability")):
                fl = f"{_prob(flip['probability'])} ({flip.get('n_flipped', '?')}/{flip.get('n', '?')})"
                if flip.get("n_failed"):
                    fl += f", {flip['n_failed']} failed"
            nu = "not assessed" if r["numerical_rel"] is None else \
                f"{_pct(100 * r['numerical_rel'], False, 2)} ({r['numerical_kind']})"
            mark = {"ok": "●", "warn": "▲", "bad": "■"}[r["level"]]
            u = sf.qoi_unit(q)
            label = _Raw(f'<span title="{_esc(q)}">{_esc(sf.qoi_label(q))}{(" (" + _esc(u) + ")") if u else ""}</span>')
            trs.append([label, _q(r["nominal"], q), spread, fl, nu,
                        _Raw(f'<span class="lvl {r["level"]}">{mark}</span> {_esc(r["short"])}')])
        parts.append(_table(["quantity", "nominal", "input-driven spread", "decision flip", "numerical uncertainty",
                             "verdict"], trs, "bl"))
    return ('<section class="bottomline"><h2 id="bottom-line">Bottom line</h2>' + "".join(parts)
            + '<p class="how">How to read this: “input-driven spread” is how far a result moves over the '
            "plausible range of the inputs (segmentation and other geometric errors); “numerical uncertainty” is "
            "the error of the computation itself (mesh refinement, Monte Carlo noise, 2σ). A sensitivity can be "
            "trusted when the second is well below the first. ● nothing flagged; ▲ numerical error not assessed or "
            "a sizeable part of the spread, or a rare decision flip; ■ numerical error as large as the spread, or "
            "the decision flips in 10 % of cases or more.</p></section>")


def _question_html(s: dict) -> str:
    path = s.get("path")
    design = dict(s.get("design") or {})
    dtxt = ", ".join(f"{k} = {_value(v)}" for k, v in design.items() if k != "type")
    names = [p.get("name") for p in s.get("parameters") or []]
    out = "<h3>Question and context of use</h3>"
    out += _paras(str(s.get("question") or "No question was recorded with this study."))
    items = []
    if path:
        items.append(f"<li>Digital-patient path: <b>{_esc(str(path))}</b>"
                     f"{(' — ' + _esc(_PATHS[path])) if path in _PATHS else ''}.</li>")
    if design:
        items.append(f"<li>Design: <b>{_esc(str(design.get('type', '?')))}</b>"
                     f"{(' (' + _esc(dtxt) + ')') if dtxt else ''}"
                     f"; {len(s.get('cases') or [])} cases.</li>")
    if names:
        items.append(f"<li>Perturbed inputs: {', '.join('<code>' + _esc(str(n)) + '</code>' for n in names)}; "
                     "everything else held at the base case.</li>")
    qs = _qois(s)
    if qs:
        items.append(f"<li>Quantities of interest: {', '.join('<code>' + _esc(q) + '</code>' for q in qs)}.</li>")
    return out + (f"<ul>{''.join(items)}</ul>" if items else "")


def _base_html(s: dict) -> str:
    base = s.get("base") or {}
    imgs = s.get("images") or {}
    if not base and not imgs:
        return ""
    out = "<h3>Base case</h3>"
    if base:
        out += _table(["setting", "value"], [[k, _value(v)] for k, v in _flatten(base)], "kv")
    for key, path in imgs.items():
        if not path:
            continue
        p = Path(str(path))
        if not p.is_file():
            out += f'<p class="note">Image “{_esc(key)}” is missing ({_esc(str(p))}).</p>'
            continue
        try:
            out += embed_png(p, caption=_IMAGE_CAPTIONS.get(key, key.replace("_", " ")), alt=key)
        except OSError as exc:
            out += f'<p class="note">Image “{_esc(key)}” could not be read: {_esc(str(exc))}</p>'
    return out


def _inputs_html(s: dict) -> str:
    pars = s.get("parameters") or []
    if not pars:
        return ""
    rows = []
    for p in pars:
        u = p.get("unit", "")
        if p.get("categorical"):
            rng = "choices: " + ", ".join(str(v) for v in p.get("values") or [])
            rows.append([_Raw(f"<code>{_esc(str(p.get('name')))}</code>"), str(p.get("nominal")), rng, u,
                         p.get("description", ""), p.get("origin", "—")])
            continue
        if p.get("distribution") == "normal":
            rng = f"normal, mean {format_number(p.get('mean'))}, sd {format_number(p.get('sd'))}"
            if finite(p.get("low")) or finite(p.get("high")):
                rng += f" (range {format_number(p.get('low'))} to {format_number(p.get('high'))})"
        else:
            rng = f"{p.get('distribution', 'uniform')} [{format_number(p.get('low'))}, {format_number(p.get('high'))}]"
        rows.append([_Raw(f"<code>{_esc(str(p.get('name')))}</code>"), format_number(p.get("nominal")), rng, u,
                     p.get("description", ""), p.get("origin", "—")])
    return ("<h3>Inputs and their origin</h3>"
            + _table(["input", "nominal", "range / distribution", "unit", "what it is", "where the range comes from"],
                     rows))


def _nominal_html(s: dict) -> str:
    q0, sig = sf.nominal_case(s)
    qs = [q for q in _qois(s) if q in q0]
    if not qs:
        return ""
    rows = [[_qname(q), _q(q0[q], q, mmhg=True), _q(sig.get(q), q) if finite(sig.get(q)) else "—"] for q in qs]
    nid = (s.get("nominal") or {}).get("id")
    return (f"<h3>Nominal results</h3><p>The base case{(' (' + _esc(str(nid)) + ')') if nid else ''} with every "
            "input at its nominal value.</p>" + _table(["quantity", "nominal value", "Monte Carlo 1σ"], rows))


def _elasticity_html(s: dict, figs: _Figures, sid: str) -> str:
    out = ""
    for q in _qois(s):
        e = _analysis(s, q).get("elasticity")
        if not isinstance(e, dict) or not finite(e.get("elasticity")):
            continue
        el = float(e["elasticity"])
        out += figs.draw(f"{sid}_loglog_{q}", sf.loglog_png, s, q,
                         caption=f"{sf.qoi_label(q)} against the mean lumen radius.",
                         how="each dot is one case; the slope of the black line is the elasticity "
                             "d ln Q / d ln r (a slope of −4 means a 1 % larger radius lowers the output by about "
                             "4 %); the dashed line is Hagen–Poiseuille through the nominal case "
                             + ("(τ ∝ r⁻³)." if q.startswith("wss") else "(ΔP ∝ r⁻⁴)."))
        ci = (f" (95 % CI {float(e['ci_low']):.3f} to {float(e['ci_high']):.3f}"
              if finite(e.get("ci_low")) and finite(e.get("ci_high")) else " (no CI")
        ci += f"; n = {e.get('n', '?')}"
        if finite(e.get("reference_radius_mm")):
            ci += f"; reference radius r₀ = {format_number(e['reference_radius_mm'])} mm"
        if finite(e.get("residual_rms")):
            ci += f"; residual RMS {float(e['residual_rms']):.2g} in ln Q"
        out += (f"<p><b>Elasticity</b> d ln {_esc(q)} / d ln r = <b>{el:.3f}</b>{ci}). A radius error of 5 % "
                f"changes the {_esc(sf.qoi_label(q))} by about {100 * (1.05 ** el - 1):+.0f} % "
                f"(and −5 % by {100 * (0.95 ** el - 1):+.0f} %).</p>")
    return "<h3>Output against radius (log–log)</h3>" + out if out else ""


def _tornado_html(s: dict, figs: _Figures, sid: str, skip_organs: bool) -> str:
    units = {p.get("name"): p.get("unit", "") for p in s.get("parameters") or []}
    out, rows = "", []
    for q in _qois(s):
        t = _analysis(s, q).get("tornado")
        if not t:
            continue
        ordered = sf.tornado_order(t)
        for r in ordered:
            qn = r.get("q_nominal")
            sw = (100 * r["swing"] / abs(float(qn))) if finite(qn) and float(qn) != 0 else None
            rows.append([_qname(q), _Raw(f"<code>{_esc(str(r.get('parameter')))}</code>"),
                         f"{format_number(r.get('low'))} → {_q(r.get('q_low'), q)}",
                         f"{format_number(r.get('high'))} → {_q(r.get('q_high'), q)}",
                         _q(r["swing"], q), _pct(sw, False)])
        if skip_organs and q.startswith(sf.ORGAN_PREFIX):
            continue
        out += figs.draw(f"{sid}_tornado_{q}", sf.tornado_png, {"tornado": t}, q, units=units,
                         caption=f"Tornado chart of the {sf.qoi_label(q)}.",
                         how="each bar is one input moved alone from its nominal value to the low (blue) or high "
                             "(red) end of its range; the vertical line is the nominal result; the longest bars, "
                             "on top, are the inputs that matter most.")
    if not rows:
        return ""
    note = ("<p>Organ doses are charted together in the organ-dose section below.</p>" if skip_organs else "")
    return ("<h3>Tornado chart</h3>" + out + note
            + _table(["quantity", "input", "low end → output", "high end → output", "swing", "swing / nominal"],
                     rows))


def _sobol_html(s: dict, figs: _Figures, sid: str) -> str:
    out = ""
    for q in _qois(s):
        so = _analysis(s, q).get("sobol")
        if not isinstance(so, dict) or not so.get("names"):
            continue
        out += figs.draw(f"{sid}_sobol_{q}", sf.sobol_png, so, q, caption=f"Sobol indices of the {sf.qoi_label(q)}.",
                         how="S1 (blue) is the share of the output's variance caused by the input alone, ST (red) "
                             "including its interactions with the others; an input with ST near 0 can be fixed "
                             "at its nominal value; error bars are bootstrap confidence intervals.")
        rows = []
        for i, n in enumerate(so["names"]):
            def pm(k):
                v, c = (so.get(k) or [None] * (i + 1))[i], (so.get(k + "_conf") or [None] * (i + 1))[i]
                return f"{float(v):.3f} ± {float(c):.3f}" if finite(v) and finite(c) else format_number(v)
            rows.append([_Raw(f"<code>{_esc(str(n))}</code>"), pm("S1"), pm("ST")])
        conf = float(so["confidence"]) if finite(so.get("confidence")) else 0.95
        out += _table([f"input ({sf.qoi_label(q)})", f"S1 ± {100 * float(conf):.0f} % CI",
                       f"ST ± {100 * float(conf):.0f} % CI"], rows)
        if so.get("note"):
            out += f'<p class="note">{_esc(str(so["note"]))}</p>'
        confs = [float(c) for k in ("S1_conf", "ST_conf") for c in (so.get(k) or []) if finite(c)]
        if confs and max(confs) > 0.15:
            out += ('<p class="note"><b>Not resolved:</b> the confidence intervals are wider than ±0.15, so these '
                    "indices only hint at a ranking (the tornado chart is more reliable here). Raise "
                    "<code>[design] n</code> (a Sobol design costs n (D + 2) cases; n = 64 or more usually "
                    "resolves the indices to about ±0.1).</p>")
    return "<h3>Sobol indices</h3>" + out if out else ""


def _morris_html(s: dict) -> str:
    out = ""
    for q in _qois(s):
        m = _analysis(s, q).get("morris")
        if not isinstance(m, dict) or not m.get("names"):
            continue
        rows = []
        for i, n in enumerate(m["names"]):
            g = lambda k: (m.get(k) or [None] * (i + 1))[i]  # noqa: E731
            rows.append([_Raw(f"<code>{_esc(str(n))}</code>"), _q(g("mu_star"), q), _q(g("mu_star_conf"), q),
                         _q(g("sigma"), q)])
        out += _table([f"input ({sf.qoi_label(q)})", "μ* (mean |effect|)", "μ* CI half-width", "σ (interaction / "
                       "non-linearity)"], rows)
    if not out:
        return ""
    return ("<h3>Morris screening</h3><p class=\"how\">How to read this: μ* is the mean absolute change of the "
            "output when the input takes one step across its range; a large σ next to μ* means the effect depends "
            "on the other inputs or is non-linear.</p>" + out)


def _distribution_html(s: dict, figs: _Figures, sid: str) -> str:
    q0, _ = sf.nominal_case(s)
    out = ""
    for q in _qois(s):
        a = _analysis(s, q)
        d = a.get("distribution")
        if not isinstance(d, dict):
            continue
        thr = _threshold((a.get("flip") or {}).get("rule"))
        out += figs.draw(f"{sid}_distribution_{q}", sf.distribution_png, d, q, threshold=thr, nominal=q0.get(q),
                         caption=f"Distribution of the {sf.qoi_label(q)} over the sampled inputs"
                         + (f" ({d['n']} cases; {d['n_failed']} failed case(s) are not in it, so it may be biased "
                            "towards the inputs that succeed)." if d.get("n_failed") else f" ({d.get('n', '?')} cases)."),
                         how="the histogram counts the cases; the shaded band holds 95 % of them; the black line "
                             "is the nominal case" + ("; the red line is the decision threshold" if thr is not None
                                                      else "") + ".")
        out += (f"<p>{_esc(sf.qoi_label(q))}: mean {_q(d.get('mean'), q)}, sd {_q(d.get('sd'), q)}, median "
                f"{_q(d.get('p50'), q)}, 95 % range {_q(d.get('p2_5'), q)} to {_q(d.get('p97_5'), q)} "
                f"(n = {d.get('n', '?')}).</p>")
    return "<h3>Output distribution</h3>" + out if out else ""


def _flip_html(s: dict) -> str:
    rows = []
    for q in _qois(s):
        f = _analysis(s, q).get("flip")
        if not isinstance(f, dict):
            continue
        ci = (f"{_prob(f.get('ci_low'))} – {_prob(f.get('ci_high'))}"
              if finite(f.get("ci_low")) and finite(f.get("ci_high")) else "—")
        nd = f.get("nominal_decision")
        rows.append([_qname(q), _rule(f, q), "—" if nd is None else ("yes" if nd else "no"),
                     _prob(f.get("probability")), ci, f"{f.get('n_flipped', '?')} / {f.get('n', '?')}"
                     + (f" ({f['n_failed']} failed)" if f.get("n_failed") else ""),
                     f.get("n_beyond_noise", "—")])
    if not rows:
        return ""
    return ("<h3>Decision flip</h3><p class=\"how\">How to read this: the probability that a case with plausibly "
            "perturbed inputs reaches a different decision than the nominal case (Wilson 95 % interval); "
            "“beyond noise” counts only the flips more than 2σ (numerical) past the threshold.</p>"
            + _table(["quantity", "rule", "rule true at nominal", "P(flip)", "95 % CI", "flipped / cases",
                      "beyond noise"], rows))


def _organ_html(s: dict, figs: _Figures, sid: str) -> str:
    rows = sf.organ_dose_changes(s)
    if not rows:
        return ""
    fig = figs.draw(f"{sid}_organ_dose_change", sf.organ_dose_change_png, s,
                    caption="Change of each organ dose when one input is moved to the end of its range.",
                    how="one group of bars per perturbed input and end, one bar per organ; bars inside the "
                        "green ±10 % band do not change a dose decision; error bars are ±2σ of the Monte Carlo "
                        "noise of the change, so a bar whose error bar spans 0 is not a detectable change.")
    groups = list(dict.fromkeys((r["parameter"], r["end"], r["value"]) for r in rows))
    organs = list(dict.fromkeys(r["organ"] for r in rows))
    val = {(r["parameter"], r["end"], r["value"], r["organ"]): r for r in rows}
    body = []
    for o in organs:
        line = [o]
        for g in groups:
            r = val.get((*g, o))
            line.append("—" if r is None else f"{r['change_percent']:+.1f} ± {2 * r['sigma_percent']:.1f}")
        body.append(line)
    head = ["organ (change %, ± 2σ)"] + [f"{p} = {v}" if isinstance(v, str) else f"{p} {e} ({format_number(v)})"
                                         for p, e, v in groups]
    return "<h3>Organ-dose change per perturbation</h3>" + fig + _table(head, body, "small")


def _categories_html(s: dict) -> str:
    """Per parameter with named choices (e.g. organ_labels): for each choice and QoI organ the
    overlap with the nominal labels (Dice), the mass change and the dose change."""
    pars = [p for p in s.get("parameters") or [] if p.get("categorical")]
    if not pars:
        return ""
    q0, sig0 = sf.nominal_case(s)
    out = ""
    for p in pars:
        name = str(p.get("name"))
        cases = [c for c in s.get("cases") or [] if c.get("varied") == name]
        if not cases:
            continue
        rows = []
        for c in cases:
            choice = str((c.get("params") or {}).get(name))
            if c.get("error"):
                rows.append([choice, "—", "—", "—", "—", f"failed: {c['error']}"])
                continue
            tis = ((c.get("perturbation") or {}).get(name) or {}).get("tissues") or {}
            for q in _qois(s):
                v, v0 = (c.get("outputs") or {}).get(q), q0.get(q)
                t = tis.get(q[len(sf.ORGAN_PREFIX):], {}) if q.startswith(sf.ORGAN_PREFIX) else {}
                if finite(v) and finite(v0) and float(v0):
                    sv, s0 = (c.get("sigma") or {}).get(q), sig0.get(q)
                    rel = math.hypot(float(sv) / float(v) if finite(sv) and float(v) else 0.0,
                                     float(s0) / float(v0) if finite(s0) else 0.0)
                    ch = f"{100 * (float(v) / float(v0) - 1):+.1f} ± {200 * abs(float(v) / float(v0)) * rel:.1f}"
                else:
                    ch = "—"
                rows.append([choice, sf.qoi_label(q), format_number(t.get("dice_vs_nominal"), 3),
                             _pct(t.get("mass_change_percent")) if finite(t.get("mass_change_percent")) else "—",
                             ch, f"{_q(v, q)} (nominal {_q(v0, q)})" if finite(v) else "no value"])
        out += (f"<h3>{_esc(name)}: each choice against the nominal ({_esc(str(p.get('nominal')))})</h3>"
                "<p>Per organ: the overlap of the choice's organ with the nominal one (Dice), its mass change "
                "and the change of its dose (± 2σ Monte Carlo; the cases share their photons). A segmentation "
                "that differs (low Dice) can still give the same dose where the dose is uniform; a dose change "
                "beyond the decision band is the segmentation method's effect on this patient.</p>"
                + _table(["choice", "quantity", "Dice vs nominal", "mass change", "dose change % (± 2σ)",
                          "value"], rows, "small"))
    return out


def _cases_html(s: dict) -> str:
    cases = s.get("cases") or []
    if not cases:
        return ""
    pars = [p.get("name") for p in s.get("parameters") or []] or sorted(
        {k for c in cases for k in (c.get("params") or {})})
    qs = _qois(s)[:MAX_CASE_QOIS]
    q0, _ = sf.nominal_case(s)
    q1 = qs[0] if qs else None
    head = ["case", "varied"] + [str(p) for p in pars] + qs
    if q1 and finite(q0.get(q1)) and float(q0[q1]) != 0:
        head.append(f"Δ {q1}")
    rows = []
    for c in cases[:MAX_CASE_ROWS]:
        pr, ou = c.get("params") or {}, c.get("outputs") or {}
        r = [c.get("id", ""), c.get("varied") or "—"] + [pr[p] if isinstance(pr.get(p), str) else
                                                         format_number(pr.get(p)) for p in pars]
        r += [format_number(ou.get(q)) for q in qs]
        if len(head) > len(r):
            r.append(_pct(100 * (float(ou[q1]) / float(q0[q1]) - 1)) if finite(ou.get(q1)) else "—")
        rows.append(r)
    note = ""
    if len(cases) > MAX_CASE_ROWS or len(_qois(s)) > MAX_CASE_QOIS:
        note = (f'<p class="note">Shown: {min(len(cases), MAX_CASE_ROWS)} of {len(cases)} cases and '
                f"{len(qs)} of {len(_qois(s))} quantities; all are in study.json.</p>")
    return "<h3>Cases</h3>" + _table(head, rows, "small") + note


def _numerical_html(s: dict) -> str:
    num = s.get("numerical") or {}
    qs = _qois(s)
    out = ("<p>The numerical uncertainty is the error of the computation at fixed inputs (mesh resolution, "
           "Monte Carlo noise). It is kept apart from the input-driven spread above: a sensitivity is resolved "
           "only where it is well below that spread.</p>")
    conv = [r for r in num.get("mesh_convergence") or [] if isinstance(r, dict)]
    if conv:
        cq = [q for q in qs if any(finite((r.get("outputs") or {}).get(q)) for r in conv)]
        rows = [[format_number(r.get("cells_per_radius")), _value(r.get("n_dofs"))]
                + [format_number((r.get("outputs") or {}).get(q)) for q in cq] for r in conv]
        out += "<p>Mesh convergence of the nominal case:</p>" + _table(["cells per radius", "DOFs"] + cq, rows,
                                                                        "small")
    rel_rows = []
    for q in qs:
        m = (num.get("mesh_relative_change") or {}).get(q)
        c = (num.get("mc_relative_sigma") or {}).get(q)
        if finite(m) or finite(c):
            rel_rows.append([_qname(q), _pct(100 * float(m), False, 2) if finite(m) else "—",
                             _pct(100 * float(c), False, 2) if finite(c) else "—"])
    if rel_rows:
        out += _table(["quantity", "|Q_fine / Q − 1| (mesh)", "Monte Carlo σ / Q (nominal case)"], rel_rows)
    bl = [r for r in bottom_line(s) if r["numerical_rel"] is not None and r["half_width_rel"]]
    if bl:
        out += "<ul>" + "".join(
            f"<li>{_esc(sf.qoi_label(r['qoi']))}: numerical {_pct(100 * r['numerical_rel'], False, 2)} against an "
            f"input-driven spread of up to ±{100 * r['half_width_rel']:.1f} % "
            f"(ratio {r['numerical_rel'] / r['half_width_rel']:.2f}).</li>" for r in bl) + "</ul>"
    for q in qs:
        e = _analysis(s, q).get("elasticity")
        if isinstance(e, dict) and finite(e.get("residual_rms")):
            out += (f"<p>The scatter of the {_esc(sf.qoi_label(q))} cases about the fitted log–log line (residual "
                    f"RMS {float(e['residual_rms']):.2g} in ln Q) holds the remeshing noise; the confidence "
                    "interval of the elasticity includes it.</p>")
    if num.get("note"):
        out += _paras(str(num["note"]))
    if not conv and not rel_rows and not num.get("note"):
        out += '<p class="note">No numerical-uncertainty estimate was recorded with this study.</p>'
    return "<h3>Numerical uncertainty</h3>" + out


def _failed_html(s: dict) -> str:
    failed = s.get("failed_cases") or []
    if not isinstance(failed, list) or not failed:
        return ""
    rows = [[str(f.get("id", "?")), ", ".join(f"{k} = {v if isinstance(v, str) else format_number(v)}"
                                                    for k, v in (f.get("params") or {}).items()),
             str(f.get("error", ""))] for f in failed if isinstance(f, Mapping)]
    return ("<h3>Failed cases</h3><p class=\"note\">These cases did not finish (their inputs may lie outside "
            "what the model can solve); they are left out of every statistic above. "
            "<code>digipat study run STUDY --out DIR --retry-failed</code> runs them again.</p>"
            + _table(["case", "inputs", "error"], rows))


def _limitations_html(s: dict) -> str:
    lim = s.get("limitations") or []
    if isinstance(lim, str):
        lim = [lim]
    if not lim:
        return '<h3>Limitations</h3><p class="note">No limitations were recorded with this study.</p>'
    return "<h3>Limitations</h3><ul>" + "".join(f"<li>{_esc(str(x))}</li>" for x in lim) + "</ul>"


def _provenance_html(s: dict) -> str:
    prov = s.get("provenance") or {}
    out = "<h3>Provenance</h3>"
    seeds = [("design.seed", (s.get("design") or {}).get("seed"))] if "seed" in (s.get("design") or {}) else []
    seeds += [(f"seeds.{k}", v) for k, v in _flatten(prov.get("seeds") or {})]
    hashes = [(k, v) for k, v in _flatten(prov) if re.search(r"sha256|hash", k, re.I) and not k.startswith("seeds")]
    rows = [["seed", k, _value(v)] for k, v in seeds] + [["input hash", k, _Raw(f"<code>{_esc(str(v))}</code>")]
                                                           for k, v in hashes]
    if rows:
        out += _table(["kind", "key", "value"], rows, "kv")
    soft = prov.get("software") or prov.get("versions") or {}
    if isinstance(soft, Mapping) and soft:
        out += "<p>Software:</p>" + _table(["package", "version"], [[k, _value(v)] for k, v in soft.items()],
                                           "kv small")
    t = s.get("timings_s") or {}
    if isinstance(t, Mapping) and t:
        out += "<p>Timings: " + ", ".join(f"{_esc(str(k))} {format_number(v)} s" for k, v in t.items()) + ".</p>"
    out += "<pre>" + _esc(json.dumps(prov, indent=1, default=str, sort_keys=False)) + "</pre>"
    return out


_SECTIONS = [("Question and context of use", _question_html), ("Base case", _base_html),
             ("Inputs and their origin", _inputs_html), ("Nominal results", _nominal_html),
             ("Output against radius", "elasticity"), ("Tornado chart", "tornado"), ("Sobol indices", "sobol"),
             ("Morris screening", _morris_html), ("Output distribution", "distribution"),
             ("Decision flip", _flip_html), ("Organ-dose change", "organ"),
             ("Segmentation choices", _categories_html), ("Cases", _cases_html),
             ("Failed cases", _failed_html),
             ("Numerical uncertainty", _numerical_html), ("Limitations", _limitations_html),
             ("Provenance", _provenance_html)]


def _study_html(s: dict, sid: str, figs: _Figures, n_studies: int, index: int) -> str:
    try:
        organs = bool(sf.organ_dose_changes(s))
    except Exception:  # noqa: BLE001 - malformed cases: no organ chart, tornados drawn instead
        organs = False
    with_figs = {"elasticity": lambda x: _elasticity_html(x, figs, sid),
                 "tornado": lambda x: _tornado_html(x, figs, sid, skip_organs=organs),
                 "sobol": lambda x: _sobol_html(x, figs, sid),
                 "distribution": lambda x: _distribution_html(x, figs, sid),
                 "organ": lambda x: _organ_html(x, figs, sid)}
    parts = []
    for title, fn in _SECTIONS:
        fn = with_figs[fn] if isinstance(fn, str) else fn
        try:
            parts.append(fn(s))
        except Exception as exc:  # noqa: BLE001 - a malformed part of a summary never stops the report
            warnings.warn(f"report section {title!r} of study {s.get('name', sid)!r} not written: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            parts.append(f'<h3>{_esc(title)}</h3><p class="note">This section could not be written from the '
                         f"study summary ({_esc(type(exc).__name__)}: {_esc(str(exc))}).</p>")
    label = f"Study {index + 1}: " if n_studies > 1 else "Study: "
    return (f'<section class="study" id="{sid}"><h2>{_esc(label + str(s.get("name", sid)))}</h2>'
            + "".join(p for p in parts if p) + "</section>")


_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;max-width:960px;margin:1.5em auto;padding:0 1em;
 line-height:1.4;color:#222;font-size:15px}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.3em;border-bottom:2px solid #2f5597;padding-bottom:2px;
 margin-top:1.6em}h3{font-size:1.08em;margin:1.3em 0 .4em;color:#2f5597}
h2,h3{break-after:avoid;page-break-after:avoid}
table{border-collapse:collapse;margin:.4em 0 .8em;font-size:.86em}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eef1f6}tr{break-inside:avoid;page-break-inside:avoid}
table.small{font-size:.76em}table.kv td:first-child{white-space:nowrap}
figure{margin:.6em 0 1em;break-inside:avoid;page-break-inside:avoid}
img{max-width:100%;max-height:520px;width:auto;height:auto;display:block}
figcaption{font-size:.85em;color:#333;margin-top:.2em}.how{color:#555;font-style:italic}
p.how{font-size:.85em}.note{color:#8a5a00;font-size:.85em}
pre{background:#f4f4f4;padding:6px;font-size:.72em;white-space:pre-wrap;word-break:break-all}
code{font-size:.9em;color:#444}
.bottomline{border:2px solid #2f5597;background:#f3f7fd;padding:.3em .9em .6em;margin:1em 0}
.blstudy{margin:.5em 0 .2em}
.bottomline h2{border:none;margin-top:.3em}.bottomline table{font-size:.78em;background:#fff}
.lvl{font-weight:bold}.lvl.ok{color:#2e7d32}.lvl.warn{color:#c77700}.lvl.bad{color:#c62828}
.meta{color:#666;font-size:.8em}
.study+.study{break-before:page;page-break-before:always}
@page{size:A4;margin:14mm 12mm 16mm;@bottom-right{content:counter(page) " / " counter(pages);font-size:8pt;
 color:#777}}
@media print{body{font-size:10pt;max-width:none;margin:0;padding:0}img{max-height:105mm}}
"""


# ----------------------------------------------------------------------------- public API
def write_report(summaries: Sequence[Mapping], out_dir: str | os.PathLike, *, title: str,
                 intro: str | None = None, pdf: bool = True) -> dict:
    """Write one report for one or more studies: ``OUT/report.html`` and ``OUT/report.pdf``.

    Parameters
    ----------
    summaries : list of dict
        Study summaries (``study.json``, schema 2.0; 1.0 is upgraded), e.g. a flow study and a
        dose study of the same patient.
    out_dir : path
        Output folder; figures go to ``OUT/report_figures/`` and are embedded in the HTML.
    title : str
        Title of the report.
    intro : str, optional
        Free text shown under the title (paragraphs separated by blank lines).
    pdf : bool
        Also print the page to ``OUT/report.pdf`` with WeasyPrint. Where WeasyPrint is not
        installed or fails, a warning is issued and ``"pdf"`` is None; the HTML stands.

    Returns
    -------
    dict
        ``{"html": Path, "pdf": Path | None}``.

    Raises
    ------
    ValueError
        ``summaries`` is empty or holds something that is not a dict.
    """
    if isinstance(summaries, Mapping):
        summaries = [summaries]
    summaries = list(summaries or [])
    if not summaries:
        raise ValueError("write_report needs at least one study summary (got none)")
    bad = [i for i, s in enumerate(summaries) if not isinstance(s, Mapping)]
    if bad:
        raise ValueError(f"study summaries must be dicts (study.json); items {bad} are not")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = [(f"study-{i + 1}", upgrade_summary(s)) for i, s in enumerate(summaries)]
    figs = _Figures(out)
    body = [_study_html(s, sid, figs, len(studies), i) for i, (sid, s) in enumerate(studies)]
    toc = ""
    if len(studies) > 1:
        toc = "<p>Studies: " + "; ".join(f'<a href="#{sid}">{_esc(str(s.get("name", sid)))}</a>'
                                         for sid, s in studies) + ".</p>"
    try:
        from importlib.metadata import version

        dv = version("digipat")
    except Exception:  # noqa: BLE001
        dv = "unknown"
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n<h1>{_esc(title)}</h1>"
            f'<p class="meta">Written {made} by digipat {_esc(dv)} from {len(studies)} study '
            f"summar{'y' if len(studies) == 1 else 'ies'}.</p>"
            + (_paras(intro) if intro else "") + toc + _bottom_line_html(studies) + "\n".join(body)
            + "\n</body></html>\n")
    html_path = write_text_atomic(out / "report.html", text)
    pdf_path = _write_pdf(text, out / "report.pdf") if pdf else None
    return {"html": html_path, "pdf": pdf_path}


def _write_pdf(text: str, path: Path) -> Path | None:
    """Print the HTML to ``path`` (A4) with WeasyPrint through a temporary file and a rename."""
    try:
        import logging

        import weasyprint

        logging.getLogger("weasyprint").setLevel(logging.ERROR)
        logging.getLogger("fontTools").setLevel(logging.ERROR)
    except Exception as exc:  # noqa: BLE001 - ImportError or OSError (missing pango)
        warnings.warn(f"report.pdf not written: WeasyPrint is not usable ({exc}); report.html is complete",
                      stacklevel=3)
        return None
    try:
        with atomic_path(path) as tmp:
            weasyprint.HTML(string=text, base_url=str(path.parent)).write_pdf(str(tmp))
    except Exception as exc:  # noqa: BLE001 - the HTML is written; the PDF is a copy of it
        warnings.warn(f"report.pdf not written: WeasyPrint failed ({exc}); report.html is complete", stacklevel=3)
        return None
    return path


def write_study_report(summary: Mapping, out_dir: str | os.PathLike) -> Path:
    """Write the report of one study (``OUT/report.html`` and ``OUT/report.pdf``).

    Parameters
    ----------
    summary : dict
        The study summary (:func:`workflows.study.runner.run_study`, ``study.json``).
    out_dir : path
        The study's output folder.

    Returns
    -------
    Path
        The HTML report.
    """
    if not isinstance(summary, Mapping):
        raise ValueError(f"summary must be a study summary dict (study.json), got {type(summary).__name__}")
    name = summary.get("name") or "unnamed study"
    return write_report([summary], out_dir, title=f"Sensitivity study: {name}")["html"]
