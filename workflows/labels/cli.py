"""``digipat labels instances | pq``: semantic, instance and panoptic label maps from the command line.

* ``instances MAP --things 2,3 --out DIR``: the connected components of each thing class
  (:func:`pipeline.labels.semantic_to_panoptic`) written as ``DIR/instances.nii.gz`` (one label
  per object, 1..N), ``DIR/panoptic.nii.gz`` (``class * 1000 + instance``) and
  ``DIR/instances.json`` (per-segment table, counts per class, connectivity, encoding).
* ``pq PRED TRUTH``: panoptic quality (PQ, SQ, RQ) per class and averaged
  (:func:`pipeline.labels.panoptic_quality`), printed, as JSON (``--json``) or to a file (``--out``).

Every input is checked before anything is written; the three files of ``instances`` are moved
into ``DIR`` together at the end (``instances.json`` last), so a failed run leaves none of them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["register", "LabelsCliError", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1.0"
FILES = {"instances": "instances.nii.gz", "panoptic": "panoptic.nii.gz", "record": "instances.json"}
_SHOWN = 20  # segments printed by ``instances``


class LabelsCliError(ValueError):
    """Bad input to a ``digipat labels`` command."""


def register(sub) -> None:
    """Add ``labels`` (``instances``, ``pq``) to the ``digipat`` subparsers."""
    lab = sub.add_parser("labels", help="semantic / instance / panoptic label maps; panoptic quality",
                         description="Split the thing classes of a semantic map into objects (connected "
                                     "components), write instance and panoptic maps with a per-object table, "
                                     "and score panoptic maps (PQ, SQ, RQ; Kirillov et al. 2019).")
    s = lab.add_subparsers(dest="labels_command", metavar="LABELS_COMMAND")
    s.required = True

    p = s.add_parser("instances", help="objects of a semantic map: instance and panoptic maps, table",
                     description="Connected components of each thing class. Writes DIR/instances.nii.gz, "
                                 "DIR/panoptic.nii.gz (class * label_divisor + instance; stuff classes keep "
                                 "instance 0; 0 = void) and DIR/instances.json.")
    p.add_argument("map", help="semantic label map (integer classes, 0 = background): NIfTI, NRRD or MHA")
    p.add_argument("--things", required=True,
                   help="comma-separated thing classes to split into objects, e.g. 2,3 (other classes are stuff)")
    p.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                   help="neighbours that connect voxels: 6 faces, 18 + edges, 26 + vertices (default 26)")
    p.add_argument("--max-neighbour-distance-mm", type=float, default=None, metavar="D",
                   help="spacing-aware connectivity: also drop neighbours whose centres are farther than D mm "
                        "(face neighbours are always kept); e.g. the slice thickness keeps diagonal "
                        "neighbours within a slice and drops those across slices")
    p.add_argument("--min-volume-mm3", type=float, default=0.0, metavar="V",
                   help="drop objects smaller than V mm³ (they become 0 in both maps; default 0)")
    p.add_argument("--label-divisor", type=int, default=1000,
                   help="panoptic id = class * divisor + instance (default 1000)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_instances)

    p = s.add_parser("pq", help="panoptic quality of a predicted panoptic map against a true one",
                     description="PQ = SQ x RQ per class (segments match at IoU > 0.5; truth label 0 is void) and "
                                 "the means over all classes, thing classes and stuff classes.")
    p.add_argument("pred", help="predicted panoptic map (class * label_divisor + instance)")
    p.add_argument("truth", help="true panoptic map on the same grid (0 = void)")
    p.add_argument("--things", default=None,
                   help="comma-separated thing classes (default: classes with a non-zero instance id); "
                        "listed classes absent from both maps are reported as NaN")
    p.add_argument("--label-divisor", type=int, default=1000, help="panoptic divisor (default 1000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the result to this JSON file")
    p.set_defaults(func=cmd_pq)


def _classes(text: str, option: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        out = []
    if not out or any(c < 1 for c in out):
        raise LabelsCliError(f"{option} must be comma-separated positive class labels such as 2,3; got {text!r}")
    return sorted(set(out))


def _read_map(path: str, what: str):
    """Read a label map and check it holds whole non-negative numbers."""
    import numpy as np

    from pipeline.image import read_image

    vol = read_image(path)
    arr = np.asarray(vol.array)
    if np.issubdtype(arr.dtype, np.floating):
        frac = ~np.isfinite(arr) | (arr != np.round(arr))
        if frac.any():
            raise LabelsCliError(f"{path} is not an integer label map ({int(frac.sum())} voxels hold fractional "
                                 f"values such as {arr[frac].flat[0]}): give the {what}, not an intensity or "
                                 "probability image")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise LabelsCliError(f"{path} holds {arr.dtype} values, not integer labels: give the {what}")
    if arr.min() < 0:
        raise LabelsCliError(f"{path} holds negative labels (minimum {arr.min()}): give the {what} (labels >= 0)")
    return vol


def _same_grid(a, b, name_a: str, name_b: str) -> None:
    import numpy as np

    if a.shape != b.shape:
        raise LabelsCliError(f"{name_a} {a.shape} and {name_b} {b.shape} are not on the same grid "
                             "(shape z, y, x): resample one onto the other first")
    if not np.allclose(a.spacing_mm, b.spacing_mm, rtol=1e-4, atol=1e-6):
        raise LabelsCliError(f"{name_a} has spacing {a.spacing_mm} mm but {name_b} has {b.spacing_mm} mm: "
                             "they are not on the same grid; resample one onto the other first")
    if not (np.allclose(a.origin_xyz_mm, b.origin_xyz_mm, atol=1e-3)
            and np.allclose(a.direction_xyz, b.direction_xyz, atol=1e-4)):
        raise LabelsCliError(f"{name_a} and {name_b} are placed differently in the world (origin "
                             f"{a.origin_xyz_mm} vs {b.origin_xyz_mm} mm, or direction): resample one onto the other")


def cmd_instances(a) -> int:
    """``digipat labels instances``: objects of a semantic map (see the module docstring). Returns 0."""
    import numpy as np

    from physics.atomic import atomic_files
    from pipeline.image import write_image
    from pipeline.labels import (neighbour_structure, panoptic_to_instances, semantic_to_panoptic,
                                 segment_table)
    from workflows.common import hash_file, provenance, write_json_atomic

    things = _classes(a.things, "--things")
    vol = _read_map(a.map, "semantic label map")
    sem = np.asarray(vol.array).astype(np.int64)
    present = sorted(int(c) for c in np.unique(sem) if c != 0)
    missing = [c for c in things if c not in present]
    if missing:
        raise LabelsCliError(f"--things {a.things}: class(es) {missing} not present in {a.map}, which holds classes "
                             f"{present or 'none (all 0)'}; list thing classes the map contains")
    structure = neighbour_structure(a.connectivity, spacing_mm=vol.spacing_mm,
                                    max_neighbour_distance_mm=a.max_neighbour_distance_mm)
    pan = semantic_to_panoptic(sem, things=things, spacing_mm=vol.spacing_mm, connectivity=a.connectivity,
                               max_neighbour_distance_mm=a.max_neighbour_distance_mm,
                               min_volume_mm3=a.min_volume_mm3, label_divisor=a.label_divisor)
    inst = panoptic_to_instances(pan, label_divisor=a.label_divisor)
    rows = segment_table(pan, spacing_mm=vol.spacing_mm, origin_xyz_mm=vol.origin_xyz_mm,
                         direction_xyz=vol.direction_xyz, label_divisor=a.label_divisor)
    voxel_mm3 = vol.voxel_volume_mm3
    counts = {}
    for c in present:
        mine = [r for r in rows if r["class"] == c]
        removed = int(np.count_nonzero((sem == c) & (pan == 0)))
        counts[str(c)] = {"kind": "thing" if c in things else "stuff",
                          "instances": sum(r["kind"] == "thing" for r in mine),
                          "voxels": sum(r["voxels"] for r in mine),
                          "volume_mm3": sum(r["volume_mm3"] for r in mine),
                          "removed_voxels": removed, "removed_volume_mm3": removed * voxel_mm3}
    out = Path(a.out)
    record = {
        "schema_version": SCHEMA_VERSION,
        "input": {"path": str(a.map), "sha256": hash_file(a.map)},
        "grid": {"shape_zyx": list(vol.shape), "spacing_mm_zyx": list(vol.spacing_mm),
                 "origin_xyz_mm": list(vol.origin_xyz_mm), "direction_xyz": vol.direction_xyz.tolist()},
        "connectivity": {"neighbours": a.connectivity, "max_neighbour_distance_mm": a.max_neighbour_distance_mm,
                         "neighbours_used": int(structure.sum()) - 1,
                         "offsets_zyx": (np.argwhere(structure) - 1).tolist()},
        "min_volume_mm3": a.min_volume_mm3,
        "encoding": {"label_divisor": a.label_divisor,
                     "panoptic": f"class * {a.label_divisor} + instance",
                     "stuff_instance": 0, "void": 0,
                     "instance_map": "1..N over all thing objects in order of panoptic id; stuff and void 0"},
        "things": things,
        "stuff": [c for c in present if c not in things],
        "counts_per_class": counts,
        "instances": [r for r in rows if r["kind"] == "thing"],
        "stuff_segments": [r for r in rows if r["kind"] == "stuff"],
        "files": {k: str(out / v) for k, v in FILES.items()},
        "provenance": provenance(),
    }
    with atomic_files(out, last=FILES["record"]) as tmp:
        write_image(vol.with_array(inst.astype(np.int32)), tmp / FILES["instances"])
        write_image(vol.with_array(pan.astype(np.int32)), tmp / FILES["panoptic"])
        write_json_atomic(tmp / FILES["record"], record)
    if not a.quiet:
        print(_instances_text(record))
    return 0


def _instances_text(record: dict) -> str:
    c = record["connectivity"]
    lines = [f"connectivity {c['neighbours']}"
             + (f", neighbours within {c['max_neighbour_distance_mm']:g} mm ({c['neighbours_used']} used)"
                if c["max_neighbour_distance_mm"] is not None else "")
             + f"; panoptic = {record['encoding']['panoptic']}",
             f"{'class':>6} {'kind':>6} {'objects':>8} {'volume_mm3':>12} {'removed_mm3':>12}"]
    for k, v in record["counts_per_class"].items():
        n = v["instances"] if v["kind"] == "thing" else "-"
        lines.append(f"{k:>6} {v['kind']:>6} {n:>8} {v['volume_mm3']:12.1f} {v['removed_volume_mm3']:12.1f}")
    inst = record["instances"]
    if inst:
        lines.append(f"{'label':>6} {'segment':>8} {'class':>6} {'voxels':>8} {'volume_mm3':>12} {'eq_diam_mm':>10}  "
                     "centroid x, y, z (mm)")
        for r in inst[:_SHOWN]:
            x, y, z = r["centroid_world_xyz_mm"]
            lines.append(f"{r['instance_label']:>6} {r['segment_id']:>8} {r['class']:>6} {r['voxels']:>8} "
                         f"{r['volume_mm3']:12.1f} {r['equivalent_diameter_mm']:10.2f}  {x:.1f}, {y:.1f}, {z:.1f}")
        if len(inst) > _SHOWN:
            lines.append(f"... {len(inst) - _SHOWN} more objects in {record['files']['record']}")
    lines.append("wrote " + ", ".join(record["files"].values()))
    return "\n".join(lines)


def cmd_pq(a) -> int:
    """``digipat labels pq``: panoptic quality of PRED against TRUTH. Returns 0."""
    import numpy as np

    from physics.atomic import json_text
    from pipeline.labels import panoptic_quality
    from workflows.common import hash_file, write_json_atomic

    if a.out is not None and Path(a.out).is_dir():
        raise LabelsCliError(f"--out {a.out} is a folder: give a file name such as {Path(a.out) / 'pq.json'}")
    things = None if a.things is None else _classes(a.things, "--things")
    pred = _read_map(a.pred, "predicted panoptic map")
    truth = _read_map(a.truth, "true panoptic map")
    _same_grid(pred, truth, a.pred, a.truth)
    res = panoptic_quality(np.asarray(pred.array), np.asarray(truth.array), things=things,
                           label_divisor=a.label_divisor)
    record = {"schema_version": SCHEMA_VERSION,
              "inputs": {"pred": {"path": str(a.pred), "sha256": hash_file(a.pred)},
                         "truth": {"path": str(a.truth), "sha256": hash_file(a.truth)}},
              "reference": "Kirillov et al., Panoptic Segmentation, CVPR 2019",
              **res.to_dict()}
    if a.out is not None:
        write_json_atomic(a.out, record)
    if a.json:
        print(json_text(record), end="")
        return 0
    lines = [f"{'class':>8} {'kind':>6} {'PQ':>7} {'SQ':>7} {'RQ':>7} {'TP':>5} {'FP':>5} {'FN':>5}"]
    for c, v in record["per_class"].items():
        lines.append(f"{c:>8} {v['kind']:>6} {_num(v['pq'])} {_num(v['sq'])} {_num(v['rq'])} "
                     f"{v['tp']:>5} {v['fp']:>5} {v['fn']:>5}")
    for kind in ("all", "things", "stuff"):
        v = record[kind]
        lines.append(f"{kind:>8} {'':>6} {_num(v['pq'])} {_num(v['sq'])} {_num(v['rq'])}  ({v['n_classes']} classes)")
    if a.out is not None:
        lines.append(f"wrote {a.out}")
    print("\n".join(lines))
    return 0


def _num(x: float) -> str:
    return f"{x:7.4f}" if x == x else f"{'nan':>7}"
