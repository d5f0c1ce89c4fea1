"""``digipat measure thickness | distance | agreement | prevalence``: clinical measurements from the command line.

* ``thickness MASK [--label L] [--out DIR] [--json]``: local thickness map of a structure
  (:func:`pipeline.measure.local_thickness`, Hildebrand & Rüegsegger 1997); prints max, mean,
  median and percentiles in mm; ``DIR/thickness.nii.gz`` (the map, mm), ``DIR/thickness.json``
  and ``DIR/thickness_histogram.png``.
* ``distance MASK_A MASK_B [--label-a L] [--label-b L] [--out DIR] [--json]``: minimum distance
  in mm between two structures on the same grid and the two closest points, as array index
  ``(k, j, i)`` and world ``(x, y, z)`` mm (:func:`pipeline.measure.min_distance`);
  ``DIR/distance.json``.
* ``agreement TABLE.csv [--columns A,B,...] [--percent] [--out DIR] [--json]``: Bland–Altman bias
  and limits of agreement with their confidence intervals, ICC(2,1), ICC(3,1) and Lin's
  concordance correlation (:mod:`pipeline.agreement`); ``DIR/agreement.json`` and
  ``DIR/bland_altman.png``. Rows are subjects, columns methods or raters; Bland–Altman and
  Lin compare the first two selected columns (first minus second), the ICCs use all of them.
* ``prevalence --sensitivity S --specificity P [--prevalence p ...] [--own-prevalence p]
  [--out DIR] [--json]``: PPV and NPV at other prevalences (Bayes;
  :func:`pipeline.metrics.predictive_values_curve`); ``DIR/predictive_values.csv``,
  ``DIR/predictive_values.png`` and ``DIR/prevalence.json``.

Every input is read and checked, and every result (figures included) computed, before anything
is written; a command's files are then moved into ``DIR`` together, its JSON record last, so a
failed run leaves none of them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

__all__ = ["register", "MeasureCliError", "SCHEMA_VERSION", "FILES", "DEFAULT_PREVALENCES"]

SCHEMA_VERSION = "1.0"
FILES = {
    "thickness_map": "thickness.nii.gz", "thickness_record": "thickness.json",
    "thickness_histogram": "thickness_histogram.png",
    "distance_record": "distance.json",
    "agreement_record": "agreement.json", "bland_altman_plot": "bland_altman.png",
    "prevalence_record": "prevalence.json", "prevalence_table": "predictive_values.csv",
    "prevalence_plot": "predictive_values.png",
}
#: Prevalences tabulated by ``measure prevalence`` when none is given.
DEFAULT_PREVALENCES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5)


class MeasureCliError(ValueError):
    """Bad input to a ``digipat measure`` command."""


def register(sub) -> None:
    """Add ``measure`` (``thickness``, ``distance``, ``agreement``, ``prevalence``) to the ``digipat`` subparsers."""
    meas = sub.add_parser("measure", help="clinical measurements: thickness, distance, agreement, prevalence",
                          description="Measurements on segmentations (local thickness, minimum distance between "
                                      "structures) and their statistics (agreement between methods or raters; "
                                      "predictive values at other prevalences).")
    s = meas.add_subparsers(dest="measure_command", metavar="MEASURE_COMMAND")
    s.required = True

    p = s.add_parser("thickness", help="local thickness map of a structure (mm)",
                     description="Local thickness (Hildebrand & Rüegsegger 1997): at each voxel the diameter of the "
                                 "largest sphere inside the structure that contains it, in mm on the image's own "
                                 "grid (anisotropic voxels handled exactly). Prints max, mean, median and the 5th, "
                                 "25th, 75th and 95th percentiles.")
    p.add_argument("mask", help="mask or label map (NIfTI, NRRD, MHA or a DICOM series folder); non-zero = structure")
    p.add_argument("--label", type=int, default=None, help="use the voxels with this label (for a label map)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write DIR/thickness.nii.gz, DIR/thickness.json and DIR/thickness_histogram.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_thickness)

    p = s.add_parser("distance", help="minimum distance between two structures (mm) and the closest points",
                     description="Minimum distance between the boundary voxels of two structures on the same grid "
                                 "(k-d tree, mm with the voxel spacing); 0 if they overlap. The two closest voxels "
                                 "are given as array index (k, j, i) and world (x, y, z) mm.")
    p.add_argument("mask_a", help="first mask or label map")
    p.add_argument("mask_b", help="second mask or label map on the same grid (may be the same file with --label-b)")
    p.add_argument("--label-a", type=int, default=None, help="use this label of MASK_A")
    p.add_argument("--label-b", type=int, default=None, help="use this label of MASK_B")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/distance.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_distance)

    p = s.add_parser("agreement", help="Bland-Altman, ICC(2,1), ICC(3,1), Lin's CCC of a table of measurements",
                     description="Agreement between methods or raters. TABLE is a CSV file: one row per subject, "
                                 "one column per method or rater, with or without a header row. Bland-Altman "
                                 "and Lin's CCC compare the first two selected columns (first minus second); "
                                 "the ICCs use all selected columns.")
    p.add_argument("table", help="CSV file (comma, semicolon or tab separated)")
    p.add_argument("--columns", default=None, metavar="A,B[,C...]",
                   help="columns to use, by header name or 1-based number (default: all; leave out ID columns)")
    p.add_argument("--percent", action="store_true",
                   help="Bland-Altman on percentage differences 100 (A - B) / mean(A, B)")
    p.add_argument("--limits-sd", type=float, default=1.96,
                   help="SDs from the bias to each limit of agreement (default 1.96; Bland & Altman 1986 used 2)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the confidence intervals (default 0.95)")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/agreement.json and DIR/bland_altman.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_agreement)

    p = s.add_parser("prevalence", help="PPV and NPV of a classifier at other prevalences (table and plot)",
                     description="Positive and negative predictive values from sensitivity and specificity at "
                                 "other prevalences (Bayes). A segmentation's precision holds only at its own "
                                 "image's prevalence; this carries it elsewhere.")
    p.add_argument("--sensitivity", type=float, required=True, help="sensitivity (true-positive rate), 0..1")
    p.add_argument("--specificity", type=float, required=True, help="specificity (true-negative rate), 0..1")
    p.add_argument("--prevalence", type=float, nargs="+", action="extend", default=None, metavar="P",
                   help=f"prevalences to tabulate, in (0, 1) (default {' '.join(map(str, DEFAULT_PREVALENCES))})")
    p.add_argument("--own-prevalence", type=float, default=None, metavar="P",
                   help="the prevalence where sensitivity and specificity were measured (marked on the plot)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write DIR/predictive_values.csv, DIR/predictive_values.png and DIR/prevalence.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_prevalence)


# --------------------------------------------------------------------------- helpers
def _out_dir(out: str | None) -> Path | None:
    """The output folder, refused before any work if a file is in the way."""
    if out is None:
        return None
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise MeasureCliError(f"--out {p} is a file; give a new or existing folder")
    return p


def _load_mask(path: str, label: int | None, option: str):
    """``(Volume, bool mask)`` of one structure of a mask or label map, with clear errors."""
    import numpy as np

    from pipeline.image import read_image

    vol = read_image(path)
    arr = np.asarray(vol.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise MeasureCliError(f"{path} is not a mask or label map (it holds non-integer values); give a "
                                  "segmentation, e.g. from digipat segment predict")
    if label is None:
        present = np.unique(arr[arr != 0])
        if present.size == 0:
            raise MeasureCliError(f"{path} is empty: no non-zero voxel (nothing to measure)")
        if present.size > 1:
            shown = ", ".join(str(int(v)) for v in present[:10]) + (", ..." if present.size > 10 else "")
            raise MeasureCliError(f"{path} is a label map with labels {shown}: choose one with {option}")
        return vol, arr != 0
    mask = arr == label
    if not mask.any():
        present = np.unique(arr[arr != 0])
        shown = ", ".join(str(int(v)) for v in present[:10]) or "none"
        raise MeasureCliError(f"{path} has no voxel with label {label} (labels present: {shown})")
    return vol, mask


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float = 6.4, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def _write(out: Path, files: dict, record_name: str, record: dict) -> None:
    """Move ``files`` (name -> bytes or a Volume) and the JSON record into ``out`` together, the record last."""
    from physics.atomic import atomic_files, json_text, write_bytes, write_text
    from pipeline.image import Volume, write_image

    with atomic_files(out, last=record_name) as tmp:
        for name, content in files.items():
            if isinstance(content, Volume):
                write_image(content, tmp / name)
            elif isinstance(content, str):
                write_text(tmp / name, content)
            else:
                write_bytes(tmp / name, content)
        write_text(tmp / record_name, json_text(record))


def _record(kind: str, **fields) -> dict:
    from workflows.common import provenance

    return {"schema_version": SCHEMA_VERSION, "kind": kind, **fields, "provenance": provenance()}


def _print_json(record: dict) -> None:
    from physics.atomic import to_jsonable

    print(json.dumps(to_jsonable(record), indent=2))


# --------------------------------------------------------------------------- thickness
def _thickness_histogram(values, stats: dict, title: str) -> bytes:
    import numpy as np

    fig, ax = _figure()
    vals, counts = np.unique(values, return_counts=True)
    if vals.size <= 60:  # the map takes discrete values: one bar per value
        width = 0.8 * (np.min(np.diff(vals)) if vals.size > 1 else max(vals[0], 1e-3) * 0.1)
        ax.bar(vals, counts, width=width, color="tab:blue")
    else:
        ax.hist(values, bins=60, color="tab:blue")
    for key, style, label in (("median_mm", "-", "median"), ("p5_mm", ":", "5th / 95th percentile"),
                              ("p95_mm", ":", None)):
        ax.axvline(stats[key], color="k", linestyle=style, label=label)
    ax.set_xlabel("local thickness (mm)")
    ax.set_ylabel("voxels")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def cmd_thickness(a) -> int:
    """``digipat measure thickness``. Returns 0."""
    import numpy as np

    from pipeline.measure import local_thickness, thickness_statistics
    from workflows.common import hash_file

    out = _out_dir(a.out)
    vol, mask = _load_mask(a.mask, a.label, "--label")
    tmap = local_thickness(mask, spacing_mm=vol.spacing_mm)
    stats = thickness_statistics(tmap, spacing_mm=vol.spacing_mm)
    record = _record(
        "local_thickness", input=str(a.mask), label=a.label if a.label is not None else "non-zero",
        grid_shape_zyx=list(vol.shape), spacing_mm_zyx=list(vol.spacing_mm), statistics=stats,
        method="local thickness (Hildebrand & Rueegsegger 1997): diameter of the largest sphere inside the "
               "structure containing the voxel; exact Euclidean distances in mm on the image grid (no "
               "resampling); diameters between voxel centres (a slab n voxels thick reads n voxels for even n, "
               "n + 1 for odd n)",
        inputs_sha256=hash_file(a.mask),
    )
    if out is not None:
        record["files"] = {k: FILES[k] for k in ("thickness_map", "thickness_record", "thickness_histogram")}
        png = _thickness_histogram(tmap[tmap > 0], stats, f"local thickness: {Path(a.mask).name}")
        _write(out, {FILES["thickness_map"]: vol.with_array(tmap.astype(np.float32)),
                     FILES["thickness_histogram"]: png}, FILES["thickness_record"], record)
    if a.json:
        _print_json(record)
    else:
        dz, dy, dx = vol.spacing_mm
        print(f"local thickness of {a.mask}: {stats['n_voxels']} voxels, {stats['volume_mm3']:.1f} mm³ "
              f"(voxel {dz:g} x {dy:g} x {dx:g} mm, z y x)")
        for key, name in (("max_mm", "max"), ("mean_mm", "mean"), ("median_mm", "median"), ("p5_mm", "5th pct"),
                          ("p25_mm", "25th pct"), ("p75_mm", "75th pct"), ("p95_mm", "95th pct")):
            print(f"  {name:9s} {stats[key]:8.3f} mm")
        if out is not None:
            print(f"map: {out / FILES['thickness_map']}; record: {out / FILES['thickness_record']}")
    return 0


# --------------------------------------------------------------------------- distance
def _same_grid(va, vb, pa: str, pb: str) -> None:
    import numpy as np

    problems = []
    if va.shape != vb.shape:
        problems.append(f"shape {va.shape} vs {vb.shape}")
    if not np.allclose(va.spacing_mm, vb.spacing_mm, rtol=1e-5, atol=1e-6):
        problems.append(f"spacing {va.spacing_mm} vs {vb.spacing_mm} mm")
    if not np.allclose(va.origin_xyz_mm, vb.origin_xyz_mm, atol=1e-3):
        problems.append(f"origin {va.origin_xyz_mm} vs {vb.origin_xyz_mm} mm")
    if not np.allclose(va.direction_xyz, vb.direction_xyz, atol=1e-5):
        problems.append("direction matrices differ")
    if problems:
        raise MeasureCliError(f"{pa} and {pb} are not on the same grid ({'; '.join(problems)}): resample one onto "
                              "the other first")


def cmd_distance(a) -> int:
    """``digipat measure distance``. Returns 0."""
    from pipeline.measure import min_distance
    from workflows.common import hash_file

    out = _out_dir(a.out)
    va, ma = _load_mask(a.mask_a, a.label_a, "--label-a")
    vb, mb = _load_mask(a.mask_b, a.label_b, "--label-b")
    _same_grid(va, vb, a.mask_a, a.mask_b)
    r = min_distance(ma, mb, spacing_mm=va.spacing_mm, origin_xyz_mm=va.origin_xyz_mm, direction_xyz=va.direction_xyz)
    record = _record(
        "min_distance", input_a=str(a.mask_a), input_b=str(a.mask_b),
        label_a=a.label_a if a.label_a is not None else "non-zero",
        label_b=a.label_b if a.label_b is not None else "non-zero", **r.to_dict(),
        method="surface_distance_mm (report this one): between the structures' sub-voxel surfaces (each mask "
               "smoothed by a 1-voxel Gaussian, its 0.5 iso-surface by marching cubes, the smoothing's curvature "
               "shift added back; within half a voxel of the true gap on random sphere pairs); distance_mm: "
               "between the closest boundary voxel centres (k-d tree in mm), which lie inside the true surfaces, "
               "so it exceeds the gap by up to about one voxel along the line (voxel_along_line_mm) at each end",
        inputs_sha256=hash_file(a.mask_a) + hash_file(a.mask_b),
    )
    if out is not None:
        record["files"] = {"distance_record": FILES["distance_record"]}
        _write(out, {}, FILES["distance_record"], record)
    if a.json:
        _print_json(record)
    else:
        if r.overlap:
            print(f"the structures overlap: {r.overlap_voxels} voxels ({r.overlap_volume_mm3:.1f} mm³) are in both; "
                  "distance 0 mm")
        else:
            touch = " (adjacent voxels: the structures touch)" if r.touching else ""
            print(f"minimum distance {r.surface_distance_mm:.3f} mm{touch} (between the sub-voxel surfaces; "
                  f"{r.distance_mm:.3f} mm between boundary voxel centres; one voxel along this line is "
                  f"{r.voxel_along_line_mm:.3f} mm)")
            for name, xyz in (("A", r.surface_point_a_xyz_mm), ("B", r.surface_point_b_xyz_mm)):
                print(f"  {name} surface point: world (x, y, z) = ({xyz[0]:.2f}, {xyz[1]:.2f}, {xyz[2]:.2f}) mm")
        for name, idx, xyz in (("A", r.index_a, r.point_a_xyz_mm), ("B", r.index_b, r.point_b_xyz_mm)):
            print(f"  {name}: index (k, j, i) = {tuple(idx)}, world (x, y, z) = "
                  f"({xyz[0]:.2f}, {xyz[1]:.2f}, {xyz[2]:.2f}) mm")
    return 0


# --------------------------------------------------------------------------- agreement
def _bland_altman_plot(ba, name_a: str, name_b: str) -> bytes:
    fig, ax = _figure()
    ax.scatter(ba.means, ba.differences, s=18, color="tab:blue", zorder=3)
    lo_x, hi_x = float(ba.means.min()), float(ba.means.max())
    pad = 0.05 * (hi_x - lo_x or 1.0)
    for value, ci, style, label in ((ba.bias, ba.bias_ci, "-", "bias"),
                                    (ba.lower_limit, ba.lower_limit_ci, "--", "limits of agreement"),
                                    (ba.upper_limit, ba.upper_limit_ci, "--", None)):
        ax.axhline(value, color="k", linestyle=style, label=label)
        ax.axhspan(ci[0], ci[1], color="0.85", zorder=0)
        ax.annotate(f"{value:.3g}", (hi_x + pad, value), fontsize=8, va="bottom", ha="right")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xlabel(f"mean of {name_a} and {name_b}")
    ax.set_ylabel(f"100 ({name_a} - {name_b}) / mean (%)" if ba.percent else f"{name_a} - {name_b}")
    ax.set_title(f"Bland-Altman, n = {ba.n} (shaded: {100 * ba.confidence:g} % CIs)", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def cmd_agreement(a) -> int:
    """``digipat measure agreement``. Returns 0."""
    from pipeline.agreement import bland_altman, concordance_correlation, intraclass_correlation, read_table
    from workflows.common import hash_file

    out = _out_dir(a.out)
    columns = None
    if a.columns is not None:
        columns = [c for c in (t.strip() for t in a.columns.split(",")) if c]
        if not columns:
            raise MeasureCliError(f"--columns must name columns, e.g. A,B or 2,3; got {a.columns!r}")
    names, table = read_table(a.table, columns)
    ba = bland_altman(table[:, 0], table[:, 1], percent=a.percent, multiplier=a.limits_sd, confidence=a.confidence)
    ccc = concordance_correlation(table[:, 0], table[:, 1], confidence=a.confidence)
    iccs = {f"ICC({f})": intraclass_correlation(table, f, confidence=a.confidence) for f in ("2,1", "3,1")}
    record = _record(
        "agreement", input=str(a.table), columns=names, n_subjects=int(table.shape[0]),
        bland_altman={"method_a": names[0], "method_b": names[1], **ba.to_dict()},
        icc={k: v.to_dict() for k, v in iccs.items()},
        lin_ccc={"method_a": names[0], "method_b": names[1], **ccc.to_dict()},
        references={"bland_altman": "Bland & Altman, Lancet 1986; Stat Methods Med Res 1999",
                    "icc": "Shrout & Fleiss, Psychol Bull 1979; McGraw & Wong, Psychol Methods 1996",
                    "lin_ccc": "Lin, Biometrics 1989 (correction 2000)"},
        inputs_sha256=hash_file(a.table),
    )
    if out is not None:
        record["files"] = {k: FILES[k] for k in ("agreement_record", "bland_altman_plot")}
        _write(out, {FILES["bland_altman_plot"]: _bland_altman_plot(ba, names[0], names[1])},
               FILES["agreement_record"], record)
    if a.json:
        _print_json(record)
    else:
        pc = f"{100 * a.confidence:g} % CI"
        unit = " %" if a.percent else ""
        print(f"{table.shape[0]} subjects; columns {', '.join(names)}")
        print(f"Bland-Altman ({names[0]} - {names[1]}{', percent of the mean' if a.percent else ''}):")
        print(f"  bias        {ba.bias:10.4g}{unit}  ({pc} {ba.bias_ci[0]:.4g} to {ba.bias_ci[1]:.4g})")
        print(f"  SD of diff  {ba.sd:10.4g}{unit}")
        print(f"  lower limit {ba.lower_limit:10.4g}{unit}  ({pc} {ba.lower_limit_ci[0]:.4g} to "
              f"{ba.lower_limit_ci[1]:.4g})")
        print(f"  upper limit {ba.upper_limit:10.4g}{unit}  ({pc} {ba.upper_limit_ci[0]:.4g} to "
              f"{ba.upper_limit_ci[1]:.4g})")
        for key, r in iccs.items():
            print(f"{key:9s} {r.value:.3f} ({pc} {r.ci_lower:.3f} to {r.ci_upper:.3f}; F = {r.f_value:.3g}, "
                  f"p = {r.p_value:.2g}): {r.description}")
        print(f"Lin's CCC {ccc.value:.3f} ({pc} {ccc.ci_lower:.3f} to {ccc.ci_upper:.3f}); Pearson r "
              f"{ccc.pearson_r:.3f}, bias correction C_b {ccc.bias_correction:.3f}")
        if out is not None:
            print(f"record: {out / FILES['agreement_record']}; plot: {out / FILES['bland_altman_plot']}")
    return 0


# --------------------------------------------------------------------------- prevalence
def _prevalence_plot(sens: float, spec: float, marks, own) -> bytes:
    import numpy as np

    from pipeline.metrics import predictive_values_curve

    lo = min([1e-4] + [p / 2 for p in marks] + ([own / 2] if own else []))
    hi = max([1 - 1e-4] + [1 - (1 - p) / 2 for p in marks] + ([1 - (1 - own) / 2] if own else []))
    logit = np.linspace(np.log(lo / (1 - lo)), np.log(hi / (1 - hi)), 400)
    curve = predictive_values_curve(sens, spec, 1 / (1 + np.exp(-logit)))
    fig, ax = _figure()
    ax.plot(curve["prevalence"], curve["ppv"], color="tab:red", label="PPV (precision)")
    ax.plot(curve["prevalence"], curve["npv"], color="tab:blue", label="NPV")
    if marks:
        pts = predictive_values_curve(sens, spec, marks)
        ax.scatter(pts["prevalence"], pts["ppv"], color="tab:red", s=20, zorder=3)
        ax.scatter(pts["prevalence"], pts["npv"], color="tab:blue", s=20, zorder=3)
    if own is not None:
        ax.axvline(own, color="k", linestyle=":", label=f"own prevalence {own:g}")
    ax.set_xscale("logit")
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("prevalence")
    ax.set_ylabel("predictive value")
    ax.set_title(f"sensitivity {sens:g}, specificity {spec:g}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    return _png(fig)


def cmd_prevalence(a) -> int:
    """``digipat measure prevalence``. Returns 0."""
    from pipeline.metrics import npv_at_prevalence, precision_at_prevalence, predictive_values_curve

    out = _out_dir(a.out)
    prevalences = list(a.prevalence) if a.prevalence else list(DEFAULT_PREVALENCES)
    curve = predictive_values_curve(a.sensitivity, a.specificity, prevalences)  # validates all three
    own = None
    if a.own_prevalence is not None:
        if not 0.0 < a.own_prevalence < 1.0:
            raise MeasureCliError(f"--own-prevalence must be in (0, 1), got {a.own_prevalence!r}")
        own = {"prevalence": a.own_prevalence,
               "ppv": precision_at_prevalence(a.sensitivity, a.specificity, a.own_prevalence),
               "npv": npv_at_prevalence(a.sensitivity, a.specificity, a.own_prevalence)}
    rows = [{"prevalence": float(p), "ppv": float(q), "npv": float(n)}
            for p, q, n in zip(curve["prevalence"], curve["ppv"], curve["npv"])]
    record = _record("predictive_values", sensitivity=a.sensitivity, specificity=a.specificity, table=rows,
                     own_prevalence=own,
                     method="Bayes: PPV = sens p / (sens p + (1 - spec)(1 - p)), "
                            "NPV = spec (1 - p) / (spec (1 - p) + (1 - sens) p)")
    if out is not None:
        record["files"] = {k: FILES[k] for k in ("prevalence_record", "prevalence_table", "prevalence_plot")}
        csv_text = "prevalence,ppv,npv\n" + "".join(f"{r['prevalence']:.6g},{r['ppv']:.6g},{r['npv']:.6g}\n"
                                                    for r in rows)
        _write(out, {FILES["prevalence_table"]: csv_text,
                     FILES["prevalence_plot"]: _prevalence_plot(a.sensitivity, a.specificity, prevalences,
                                                                a.own_prevalence)},
               FILES["prevalence_record"], record)
    if a.json:
        _print_json(record)
    else:
        print(f"sensitivity {a.sensitivity:g}, specificity {a.specificity:g}")
        print(f"  {'prevalence':>10s} {'PPV':>8s} {'NPV':>8s}")
        for r in rows:
            print(f"  {r['prevalence']:10.4g} {r['ppv']:8.4f} {r['npv']:8.4f}")
        if own is not None:
            print(f"  at the own prevalence {own['prevalence']:g}: PPV {own['ppv']:.4f}, NPV {own['npv']:.4f}")
        if out is not None:
            print(f"table: {out / FILES['prevalence_table']}; plot: {out / FILES['prevalence_plot']}")
    return 0
