"""``digipat phantom``: build a stylised reference phantom, or turn a CT into a phantom.

Actions
-------
``digipat phantom build --age AGE [--sex male|female] [--voxel-mm S] --out DIR``
    The stylised ICRP reference phantom of :mod:`phantoms.stylized`; writes
    ``DIR/labels.nii.gz``, ``DIR/materials.csv``, ``DIR/organs.json`` and ``DIR/phantom.png``
    and prints each organ's mass against its ICRP Publication 89 reference.
``digipat phantom from-ct CT_IMAGE [--labels SEG --label-map TABLE] --age AGE --out DIR [--all-hu]``
    A phantom from a CT image (and optionally an organ segmentation) via
    :func:`phantoms.from_ct.phantom_from_ct`.

Wire into the ``digipat`` parser with :func:`add_parser`. Input errors are raised as
``ValueError`` subclasses (``digipat: error: ...``, exit status 1 from ``workflows.cli``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "cmd_phantom_build", "cmd_phantom_from_ct", "organ_table"]


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
    from phantoms.from_ct import phantom_from_ct

    out = Path(a.out)
    result = phantom_from_ct(a.ct_image, out, a.age, labels_path=a.labels, label_map_path=a.label_map,
                             assign_all_from_hu=a.all_hu)
    if not a.quiet:
        if isinstance(result, dict):
            for key, value in result.items():
                if isinstance(value, (str, Path, int, float)):
                    print(f"{key}: {value}")
        print(f"phantom written to {out}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phantom`` (actions ``build`` and ``from-ct``) on an argparse subparsers object.

    Parameters
    ----------
    subparsers
        The object returned by ``ArgumentParser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``phantom`` parser; each action sets ``func(args) -> int``.
    """
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
    f.add_argument("--label-map", metavar="TABLE", help="table naming the organ of each label id in SEG")
    f.add_argument("--age", required=True, metavar="AGE", help=f"reference age for the tissues: one of {ages}")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--all-hu", action="store_true",
                   help="assign every voxel's tissue from its CT number, even inside segmented organs")
    f.add_argument("--quiet", action="store_true", help="print nothing")
    f.set_defaults(func=cmd_phantom_from_ct)
    return p
