"""``digipat dose``, ``digipat phantom`` and ``digipat ctdi``: the dose path's commands.

``digipat dose SCENARIO.toml --out DIR``
    Monte Carlo photon transport described by a scenario file (:mod:`workflows.dose.scenario`;
    a ``[source] type = "protocol"`` scenario gives organ doses of a CT scan,
    :mod:`workflows.dose.patient`); writes ``DIR/results.json`` and dose maps.
``digipat phantom build --age AGE [--sex male|female] [--voxel-mm S] --out DIR``
    The stylised ICRP reference phantom of :mod:`phantoms.stylized`; writes
    ``DIR/labels.nii.gz``, ``DIR/materials.csv``, ``DIR/organs.json`` and ``DIR/phantom.png``
    and prints each organ's mass against its ICRP Publication 89 reference.
``digipat phantom from-ct CT_IMAGE [--labels SEG --label-map TABLE|totalsegmentator | --atlas] --age AGE --out DIR [--all-hu]``
    A phantom from a CT image (and optionally an organ segmentation) via
    :func:`phantoms.from_ct.phantom_from_ct`.
``digipat ctdi PROTOCOL (--phantom-diameter-cm 16|32 | --free-in-air)``
    CTDI100, CTDIw and CTDIvol of a protocol (:mod:`workflows.dose.ctdi`).
``digipat ssde CT_IMAGE [--ctdivol MGY] [--phantom-diameter-cm 16|32] [--json]``
    Water-equivalent diameters and the size-specific dose estimate (:mod:`workflows.dose.ssde`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from workflows.dose.ctdi import CTDI_NAME, DEFAULT_HISTORIES, run_ctdi, summary_text
from workflows.dose.run import run_dose

__all__ = ["register", "organ_table"]


def register(sub) -> None:
    """Add ``dose``, ``phantom`` and ``ctdi`` to the ``digipat`` subparsers."""
    _add_dose(sub)
    _add_phantom(sub)
    _add_ctdi(sub)
    _add_ssde(sub)


def cmd_ssde(a: argparse.Namespace) -> int:
    """``digipat ssde CT``: water-equivalent diameters and SSDE (AAPM 204/220) of a CT. Returns 0."""
    from pipeline.image import read_image
    from workflows.dose.ssde import ssde

    img = read_image(a.ct_image)
    r = ssde(np.asarray(img.array, np.float32), img.spacing_mm, a.ctdivol, phantom_cm=a.phantom_diameter_cm)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    dw = [d for d in r["water_equivalent_diameter_cm"] if d > 0]
    print(f"water-equivalent diameter (AAPM 220): mean {r['mean_dw_cm']:.1f} cm, range {min(dw):.1f}-{max(dw):.1f} "
          f"cm over {len(dw)} slices; centre slice {r['centre_dw_cm']:.1f} cm")
    print(f"conversion factor f (AAPM 204, {a.phantom_diameter_cm} cm phantom): mean {r['mean_conversion_factor']:.3f}")
    if a.ctdivol is not None:
        print(f"SSDE {r['ssde_mGy']:.3g} mGy for CTDIvol {a.ctdivol:g} mGy")
    for note in r["notes"]:
        print(f"note: {note}")
    return 0


def _add_ssde(sub) -> None:
    c = sub.add_parser("ssde", help="size-specific dose estimate of a CT (AAPM Reports 204 and 220)",
                       description="Water-equivalent diameter of every axial slice of a CT (AAPM Report 220: the "
                                   "patient region above -500 HU, its attenuation as water) and the AAPM Report 204 "
                                   "conversion factor from CTDIvol to the size-specific dose estimate.")
    c.add_argument("ct_image", help="CT in HU: NIfTI, NRRD, MHA or a DICOM series folder")
    c.add_argument("--ctdivol", type=float, default=None, metavar="MGY", help="the scan's CTDIvol (mGy): print SSDE")
    c.add_argument("--phantom-diameter-cm", type=int, choices=(16, 32), default=32,
                   help="CTDI phantom the CTDIvol refers to (default 32)")
    c.add_argument("--json", action="store_true", help="print every number as JSON")
    c.set_defaults(func=cmd_ssde)


def cmd_dose(a: argparse.Namespace) -> int:
    out = Path(a.out)
    from workflows.study.cli import slurm_overrides

    if a.no_wait and a.executor != "slurm":
        raise ValueError("--no-wait applies to --executor slurm (a local run always finishes)")
    if a.tasks is not None and a.executor != "slurm":
        raise ValueError("--tasks splits the run into Slurm array tasks: it needs --executor slurm")
    results = run_dose(a.scenario, out, threads=a.threads, force=a.force, quiet=a.quiet or a.json,
                       executor=a.executor, tasks=a.tasks, slurm=slurm_overrides(a), wait=not a.no_wait)
    if a.executor == "slurm" and "submitted" in results:  # --no-wait: nothing merged yet
        if not a.quiet:
            print(f"submitted {len(results['submitted'])} task(s); run the same command again to merge "
                  f"(digipat jobs {out})")
        return 0
    if a.json:
        print(json.dumps(results, indent=2))
    elif not a.quiet and results.get("stage") == "patient_dose":
        unit = results["units"]["dose"]
        print(f"{'organ':<28} {'mass g':>9} {'dose':>10} {'±2σ':>9} {'/CTDIvol':>9}  ({unit})")
        for r in sorted(results["organs"], key=lambda r: -(r.get("dose_mGy") or r["dose_Gy_per_photon"])):
            d = r.get("dose_mGy", r["dose_Gy_per_photon"])
            s = r.get("dose_sigma_mGy", r["dose_sigma_Gy_per_photon"])
            pc = r.get("dose_per_ctdivol")
            print(f"{r['organ']:<28} {r['mass_g']:9.4g} {d:10.4g} {2 * s:9.2g} "
                  f"{pc if pc is not None else float('nan'):9.3g}{'  (σ > 10 %)' if r['sigma_flag'] else ''}")
        print(f"CTDIvol {results['ctdivol_mGy'] or float('nan'):.3g} mGy "
              f"({results['ctdi_phantom_diameter_cm']} cm phantom); effective dose "
              f"{results['effective_dose_mSv'] or float('nan'):.3g} ± "
              f"{2 * (results['effective_dose_sigma_mSv'] or float('nan')):.2g} mSv (2σ), covering "
              f"{results['effective_dose_detail']['weight_covered']:.2f} of Σw_T")
        print(f"results: {out / 'results.json'}")
    elif not a.quiet:
        for lab, r in results["labels"].items():
            print(f"label {lab:>4} {r['tissue_name']:<20} dose {r['dose_Gy_per_photon']:.4e} "
                  f"± {r['dose_sigma_Gy_per_photon'] or float('nan'):.2e} Gy/photon")
        print(f"results: {out / 'results.json'}")
    return 0


def _add_dose(sub) -> None:
    x = sub.add_parser("dose", help="Monte Carlo x-ray dose from a scenario file (TOML)",
                       description="Transport photons as described by SCENARIO (TOML: [phantom], [source], "
                                   "[physics], [run]) and write OUT/results.json (per label "
                                   "edep_eV_per_photon, edep_sigma_eV_per_photon, dose_Gy_per_photon; "
                                   "escaped energy; histories per second), OUT/dose.nii.gz and OUT/organs.csv.")
    x.add_argument("scenario", help="scenario file (.toml); relative paths in it are resolved against its folder")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--threads", type=int, help="Numba threads (default: [run] threads, else all cores)")
    x.add_argument("--force", action="store_true", help="rerun even if OUT holds a run of the same inputs")
    x.add_argument("--quiet", action="store_true", help="no progress lines")
    x.add_argument("--json", action="store_true", help="print results.json to standard output")
    x.add_argument("--tasks", type=int, metavar="N",
                   help="with --executor slurm: split the [run] batches into N array tasks (task k runs batches "
                        "k, k+N, ...; default one task per batch); the merge equals the local run")
    from workflows.study.cli import add_slurm_options

    add_slurm_options(x)
    x.set_defaults(func=cmd_dose)


def organ_table(ph) -> str:
    """A text table of a phantom's organs: label, tissue, mass (g), ICRP 89 reference (g), deviation (%).

    Parameters
    ----------
    ph : phantoms.stylized.ReferencePhantom

    Returns
    -------
    str
        One line per label, then composites and the whole body; ``-`` where there is no
        reference, ``*`` after organs excluded from the mass fit (see ``organs.json``).
    """
    from phantoms.stylized import EXCLUDED_FROM_MASS_CHECK

    def num(x):
        return f"{x:10.0f}" if x >= 1000 else f"{x:10.4g}"

    def ref(x):
        return num(x) if x is not None else f"{'-':>10}"

    def dev(x):
        return f"{x:+8.1f}" if x is not None else f"{'-':>8}"

    lines = [f"{'label':>5}  {'organ':<26}{'tissue':<18}{'mass g':>10}{'ICRP89 g':>10}{'dev %':>8}"]
    for k, e in sorted(ph.organs.items()):
        flag = " *" if e.name in EXCLUDED_FROM_MASS_CHECK else ""
        lines.append(f"{k:>5}  {e.name:<26}{e.tissue.name:<18}{num(e.mass_g)}{ref(e.reference_mass_g)}"
                     f"{dev(e.deviation_pct)}{flag}")
    for name, c in ph.composites.items():
        lines.append(f"{'':>5}  {name:<26}{'':<18}{num(c['mass_g'])}{ref(c['reference_mass_g'])}"
                     f"{dev(c['deviation_pct'])}")
    b = ph.body
    lines.append(f"{'':>5}  {'total body':<26}{'':<18}{num(b['mass_g'])}{ref(b['reference_mass_g'])}"
                 f"{dev(b['deviation_pct'])}")
    lines.append(f"height {b['height_cm']:.1f} cm (ICRP 89 {b['reference_height_cm']:g} cm); "
                 "* not fitted (see organs.json 'excluded_from_mass_check')")
    return "\n".join(lines) + "\n"


def cmd_phantom_build(a: argparse.Namespace) -> int:
    """Build, write and plot a stylised reference phantom; print its organ table. Returns 0."""
    from phantoms.stylized import build_reference_phantom, plot_phantom, write_phantom

    ph = build_reference_phantom(a.age, a.sex, a.voxel_mm)
    out = Path(a.out)
    paths = write_phantom(ph, out)
    if not a.no_plot:
        paths["figure"] = plot_phantom(ph, out / "phantom.png")
    if not a.quiet:
        print(f"stylised phantom {ph.age} {ph.sex}, {ph.voxel_mm:g} mm voxels, grid {ph.labels.shape} (z, y, x)")
        print(organ_table(ph), end="")
        for key, p in paths.items():
            print(f"{key}: {p}")
    return 0


def cmd_phantom_from_ct(a: argparse.Namespace) -> int:
    """Make a phantom from a CT image with :func:`phantoms.from_ct.phantom_from_ct`. Returns 0."""
    if a.label_map is not None and a.labels is None:
        raise ValueError("--label-map TABLE needs --labels SEG (the segmentation whose label ids the table names)")
    if a.atlas and a.labels is not None:
        raise ValueError("--atlas segments the organs itself: give it or --labels SEG, not both")
    from phantoms.from_ct import phantom_from_ct

    out = Path(a.out)
    labels, label_map = a.labels, a.label_map
    if a.atlas:
        from workflows.segment.atlas import atlas_segment

        seg = atlas_segment(a.ct_image, out / "atlas", a.age, a.sex, atlases=a.atlas_extra, quiet=a.quiet)
        labels, label_map = seg["files"]["labels"], seg["files"]["label_table"]
    result = phantom_from_ct(a.ct_image, out, a.age, labels_path=labels, label_map_path=label_map,
                             assign_all_from_hu=a.all_hu)
    if not a.quiet:
        if isinstance(result, dict):
            for key, value in result.items():
                if isinstance(value, (str, Path, int, float)):
                    print(f"{key}: {value}")
            cover = result.get("coverage")
            if cover:
                print("organs (mass g; cut = reaches the scan's ends or the field of view):")
                for r in result["organs"]:
                    if r.get("kind") == "organ":
                        cut = cover["organs"].get(r["name"], {}).get("cut_by") or []
                        print(f"  {r['name']:<30} {r['mass_g']:>10.1f}" + ("  cut by " + ", ".join(cut) if cut else ""))
                icrp = cover["icrp103"]
                print("ICRP 103 tissues in the CT, whole: " + (", ".join(icrp["whole"]) or "none"))
                print("  partly (cut off): " + (", ".join(icrp["partial"]) or "none"))
                print("  missing: " + (", ".join(icrp["missing"]) or "none"))
        print(f"phantom written to {out}")
    return 0


def _add_phantom(subparsers) -> None:
    from phantoms.stylized import DEFAULT_VOXEL_MM, SUPPORTED_AGES, VOXEL_MM_RANGE

    ages = ", ".join(SUPPORTED_AGES)
    p = subparsers.add_parser("phantom", help="build a reference phantom or a phantom from CT",
                              description="Voxel phantoms for CT dose: the stylised ICRP reference phantoms "
                                          "(build) or a phantom from a patient's CT (from-ct).")
    sub = p.add_subparsers(dest="phantom_action", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="stylised reference phantom of an ICRP reference age",
                       description="Build the stylised (ORNL-style) reference phantom of an age and sex with organ "
                                   "masses fitted to ICRP Publication 89, and write OUT/labels.nii.gz, "
                                   "OUT/materials.csv, OUT/organs.json and OUT/phantom.png.")
    b.add_argument("--age", required=True, metavar="AGE", help=f"reference age: one of {ages}")
    b.add_argument("--sex", default="male", metavar="SEX", help="male (default) or female")
    lo, hi = VOXEL_MM_RANGE
    defaults = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_VOXEL_MM.items())
    b.add_argument("--voxel-mm", type=float, default=None, metavar="S",
                   help=f"isotropic voxel size in mm, {lo:g} to {hi:g} (default by age: {defaults})")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--no-plot", action="store_true", help="do not draw OUT/phantom.png")
    b.add_argument("--quiet", action="store_true", help="print nothing")
    b.set_defaults(func=cmd_phantom_build)

    f = sub.add_parser("from-ct", help="phantom from a CT image (and an optional organ segmentation)",
                       description="Turn a CT image into a voxel phantom: tissues from CT numbers, organs from an "
                                   "optional segmentation; writes the phantom files to OUT.")
    f.add_argument("ct_image", help="CT image in HU: NIfTI, NRRD, MHA or a DICOM series folder")
    f.add_argument("--labels", metavar="SEG", help="organ segmentation (integer labels) on the CT grid")
    f.add_argument("--label-map", metavar="TABLE",
                   help="table naming the organ of each label id in SEG (CSV label_id,organ,tissue), or "
                        "'totalsegmentator': SEG holds TotalSegmentator's 117 'total' classes, mapped to ICRP "
                        "organs by the shipped table")
    f.add_argument("--age", required=True, metavar="AGE", help=f"reference age for the tissues: one of {ages}")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--atlas", action="store_true",
                   help="no segmentation at hand: segment the organs by registering the age- and sex-matched "
                        "reference phantom to the CT (digipat segment atlas; written to OUT/atlas/)")
    f.add_argument("--sex", default="male", choices=("male", "female"), help="with --atlas: the patient's sex")
    f.add_argument("--atlas-extra", action="append", default=[], metavar="AGE:SEX",
                   help="with --atlas: another atlas to fuse by majority vote (repeat)")
    f.add_argument("--all-hu", action="store_true",
                   help="assign every voxel's tissue from its CT number, even inside segmented organs")
    f.add_argument("--quiet", action="store_true", help="print nothing")
    f.set_defaults(func=cmd_phantom_from_ct)


def cmd_ctdi(a: argparse.Namespace) -> int:
    """``digipat ctdi``: run :func:`run_ctdi` and print the indices (or ctdi.json with --json)."""
    diameter = None if a.free_in_air else a.phantom_diameter_cm
    r = run_ctdi(a.protocol, diameter, histories=a.histories, seed=a.seed, threads=a.threads, out_dir=a.out,
                 force=a.force)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        sys.stdout.write(summary_text(r))
        if a.out:
            print(f"results: {Path(a.out) / CTDI_NAME}")
    return 0


def _add_ctdi(sub) -> None:
    c = sub.add_parser(
        "ctdi", help="CTDI100 / CTDIw / CTDIvol of a CT protocol in the 16 or 32 cm PMMA phantom (Monte Carlo)",
        description="Simulate one axial rotation of the PROTOCOL's beam around the 16-cm (head) or 32-cm (body) "
                    "PMMA CTDI phantom and print CTDI100 at the centre and periphery, CTDIw and CTDIvol per "
                    "source photon and per 100 mAs (tube output from the protocol's measured CTDIvol, else "
                    "from SpekPy). With --out, writes OUT/ctdi.json.")
    c.add_argument("protocol", help="protocol file (.toml; see workflows/dose/protocol.py)")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--phantom-diameter-cm", type=int, choices=(16, 32),
                   help="CTDI phantom: 16 (head) or 32 (body)")
    g.add_argument("--free-in-air", action="store_true", help="free-in-air CTDI100 (chamber on the axis, no phantom)")
    c.add_argument("--histories", type=int, default=DEFAULT_HISTORIES,
                   help=f"source photons to simulate (default {DEFAULT_HISTORIES})")
    c.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    c.add_argument("--threads", type=int, help="Numba threads (default: all cores)")
    c.add_argument("--out", help="output folder for ctdi.json")
    c.add_argument("--force", action="store_true", help="recompute even if OUT/ctdi.json has the same inputs")
    c.add_argument("--json", action="store_true", help="print ctdi.json to standard output")
    c.set_defaults(func=cmd_ctdi)
